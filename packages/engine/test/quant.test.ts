// Host quantizers (src/quant.ts): layout sizes, exact round trips of representable values, error
// bounds of the q8/q4 formats, and bad specs.
import { describe, expect, it } from 'vitest';
import { dequantize, groupScale, quantize, quantBytes, QuantError, rowWords, storedInt, checkSpec } from '../src/quant.ts';
import { randomArray } from './harness.ts';

describe('quant formats', () => {
  it('layout: rows padded to whole groups, words and scales per row', () => {
    expect(rowWords({ format: 'q8', groupSize: 32 }, 172)).toBe(48); // 6 groups x 32 / 4
    expect(rowWords({ format: 'q4', groupSize: 32 }, 172)).toBe(24);
    expect(quantBytes({ format: 'q4', groupSize: 32 }, 10, 64)).toBe(10 * (8 + 2) * 4);
    expect(() => checkSpec({ format: 'q4', groupSize: 48 })).toThrow(QuantError);
    expect(() => checkSpec({ format: 'q3' as 'q4', groupSize: 32 })).toThrow(/supported: q8, q4/);
  });

  it('q8 stores int8 values on its grid exactly', () => {
    const K = 64;
    const w = new Float32Array(2 * K);
    for (let i = 0; i < w.length; i++) w[i] = ((i * 37) % 255) - 127; // integers in [-127, 127], max |w| = 127 per group
    for (let g = 0; g < 4; g++) w[g * 32] = 127;
    const spec = { format: 'q8' as const, groupSize: 32, symmetric: true };
    const q = quantize(w, 2, K, spec);
    expect(groupScale(spec, q.scales, K, 0, 0).scale).toBe(1);
    for (let k = 0; k < K; k++) expect(storedInt(spec, q.words, K, 1, k)).toBe(w[K + k]);
    expect(Array.from(dequantize(spec, q, 2, K))).toEqual(Array.from(w));
  });

  // q4 symmetric (q4_0-style, s = extreme / -8) clamps the opposite extreme at +7 steps: up to one step of error there.
  for (const [format, symmetric, steps] of [['q8', true, 0.5], ['q4', false, 0.5], ['q4', true, 1]] as const) {
    it(`${format} ${symmetric ? 'symmetric' : 'asymmetric'}: error within ${steps} step of each group's scale, K % 32 != 0 included`, () => {
      const rows = 7;
      const K = 172;
      const w = randomArray(rows * K, 5, 0.8);
      const spec = { format, groupSize: 32, symmetric };
      const q = quantize(w, rows, K, spec);
      const d = dequantize(spec, q, rows, K);
      for (let r = 0; r < rows; r++) {
        for (let g = 0; g * 32 < K; g++) {
          const scale = Math.abs(groupScale(spec, q.scales, K, r, g).scale);
          let range = 0;
          for (let k = g * 32; k < Math.min(K, g * 32 + 32); k++) range = Math.max(range, Math.abs(w[r * K + k]!));
          // The step is the scale; the scale is the group's range over the levels (f16-rounded for q4).
          expect(scale).toBeLessThanOrEqual(range * (symmetric ? (format === 'q8' ? 1 / 127 : 1 / 8) : 2 / 15) * 1.001);
          for (let k = g * 32; k < Math.min(K, g * 32 + 32); k++) {
            expect(Math.abs(d[r * K + k]! - w[r * K + k]!)).toBeLessThanOrEqual(scale * steps * 1.0001 + 1e-7);
          }
        }
      }
    });
  }
});
