// How long Dawn's polling spins before it falls back to a 1 ms timer, from the waits seen so far.
import { describe, expect, it } from 'vitest';
import { MAX_SPIN_MS, SPIN_MS, spinBudget } from '../src/dawn-polling.ts';

describe('spinBudget', () => {
  it('spins through waits that are typically short, with room for a slower one', () => {
    expect(spinBudget(0.2)).toBe(SPIN_MS);
    expect(spinBudget(2)).toBeCloseTo(3);
    expect(spinBudget(MAX_SPIN_MS)).toBe(MAX_SPIN_MS);
  });

  it('spins only SPIN_MS when waits are long, leaving the cores to a CPU adapter', () => {
    expect(spinBudget(MAX_SPIN_MS + 0.1)).toBe(SPIN_MS);
    expect(spinBudget(150)).toBe(SPIN_MS);
  });
});
