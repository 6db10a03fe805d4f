// Speculative sampling on the CPU: the acceptance rule over explicit target/draft
// distributions must reproduce the target's distribution exactly (checked by a
// chi-square test over many seeded draws), with the same warpers on both sides.
import { describe, expect, it } from 'vitest';
import {
  checkSameTokenizer,
  distributionFromLogits,
  DraftModelError,
  draw,
  nextNumAssistantTokens,
  pointMass,
  probabilityOf,
  residualDistribution,
  resolveGenerationConfig,
  SeededRandom,
  verifyDraft,
  type Distribution,
  type SamplingParams,
} from '../src/index.ts';
import { loadTokenizer } from './fixtures.ts';

const V = 6;

/** A Markov "model": logits of the next token given the previous one, from a seeded table. */
function markov(seed: number, spread: number): (prev: number) => Float32Array {
  const rng = new SeededRandom(seed);
  const table = Array.from({ length: V }, () => Float32Array.from({ length: V }, () => (rng.next() * 2 - 1) * spread));
  return (prev) => Float32Array.from(table[prev]!);
}

/**
 * Tokens `count` of speculative generation after `start`: the draft proposes K tokens from
 * q, verifyDraft keeps a prefix and adds one of the target's, repeatedly.
 */
async function speculative(p: (prev: number) => Distribution, q: (prev: number) => Distribution, start: number, count: number, K: number, rng: SeededRandom): Promise<number[]> {
  const out: number[] = [];
  let last = start;
  while (out.length < count) {
    const drafted: number[] = [];
    const qs: Distribution[] = [];
    let prev = last;
    for (let i = 0; i < K; i++) {
      const d = q(prev);
      qs.push(d);
      prev = draw(d, rng);
      drafted.push(prev);
    }
    const v = await verifyDraft(drafted, qs, (i) => p(i === 0 ? last : drafted[i - 1]!), rng);
    out.push(...drafted.slice(0, v.accepted), v.token);
    last = out[out.length - 1]!;
  }
  return out.slice(0, count);
}

/** Pearson's chi-square of observed counts against expected probabilities (cells with p = 0 must be empty). */
function chiSquare(counts: number[], probs: number[], n: number): { stat: number; df: number } {
  let stat = 0;
  let df = -1;
  probs.forEach((pr, i) => {
    if (pr === 0) {
      if (counts[i]! > 0) stat = Infinity;
      return;
    }
    const e = pr * n;
    stat += (counts[i]! - e) ** 2 / e;
    df++;
  });
  return { stat, df };
}

/** The 0.999 quantile of chi-square with df degrees of freedom (Wilson-Hilferty). */
function chiSquareCritical(df: number): number {
  const z = 3.09;
  return df * (1 - 2 / (9 * df) + z * Math.sqrt(2 / (9 * df))) ** 3;
}

describe('verifyDraft: speculative sampling', () => {
  const settings: [string, Partial<SamplingParams>][] = [
    ['temperature 1', {}],
    ['temperature 0.7, top_k 4', { temperature: 0.7, top_k: 4 }],
    ['temperature 1.3, top_p 0.8', { temperature: 1.3, top_p: 0.8 }],
    ['top_k 3, top_p 0.9, min_p 0.05', { top_k: 3, top_p: 0.9, min_p: 0.05 }],
  ];
  for (const [name, flags] of settings) {
    it(`two-token output follows the target exactly (${name})`, async () => {
      const params = resolveGenerationConfig({ do_sample: true, top_k: 0, ...flags });
      const target = markov(1, 2);
      const draft = markov(2, 2);
      const p = (prev: number) => distributionFromLogits(target(prev), params);
      const q = (prev: number) => distributionFromLogits(draft(prev), params);
      const start = 0;
      // Exact target joint distribution of the first two tokens.
      const exact = new Array(V * V).fill(0);
      const p0 = p(start);
      for (let a = 0; a < V; a++) for (let b = 0; b < V; b++) exact[a * V + b] = probabilityOf(p0, a) * probabilityOf(p(a), b);
      const draftJoint = new Array(V * V).fill(0);
      const q0 = q(start);
      for (let a = 0; a < V; a++) for (let b = 0; b < V; b++) draftJoint[a * V + b] = probabilityOf(q0, a) * probabilityOf(q(a), b);

      const N = 20000;
      const rng = new SeededRandom(1234);
      for (const K of [1, 3]) {
        const counts = new Array(V * V).fill(0);
        for (let s = 0; s < N; s++) {
          const [a, b] = await speculative(p, q, start, 2, K, rng);
          counts[a! * V + b!]++;
        }
        const { stat, df } = chiSquare(counts, exact, N);
        expect(stat, `K=${K}: chi-square ${stat.toFixed(1)} with ${df} df`).toBeLessThan(chiSquareCritical(df));
        // The test has power: the draft's own distribution is far from the target's.
        const tv = 0.5 * exact.reduce((s, e, i) => s + Math.abs(e - draftJoint[i]!), 0);
        expect(tv).toBeGreaterThan(0.2);
        // Accepting every draft token would be caught: those counts are the draft's distribution.
        const naive = new Array(V * V).fill(0);
        for (let s = 0; s < 2000; s++) {
          const a = draw(q(start), rng);
          naive[a * V + draw(q(a), rng)]++;
        }
        expect(chiSquare(naive, exact, 2000).stat).toBeGreaterThan(chiSquareCritical(df));
      }
    });
  }

  it('greedy is the point-mass case: keeps drafts while they are the argmax, then the argmax', async () => {
    const rng = new SeededRandom(5);
    const targetArgmax = [4, 7, 9, 1];
    const t = (i: number) => pointMass(targetArgmax[i]!);
    expect(await verifyDraft([4, 7, 2], [4, 7, 2].map(pointMass), t, rng)).toEqual({ accepted: 2, token: 9 });
    expect(await verifyDraft([3, 7, 9], [3, 7, 9].map(pointMass), t, rng)).toEqual({ accepted: 0, token: 4 });
    expect(await verifyDraft([4, 7, 9], [4, 7, 9].map(pointMass), t, rng)).toEqual({ accepted: 3, token: 1 });
    expect(await verifyDraft([], [], t, rng)).toEqual({ accepted: 0, token: 4 });
  });

  it('reads target rows lazily, stopping at the first rejection', async () => {
    const asked: number[] = [];
    const t = (i: number) => (asked.push(i), pointMass(0));
    await verifyDraft([0, 5, 0, 0], [0, 5, 0, 0].map(pointMass), t, new SeededRandom(1));
    expect(asked).toEqual([0, 1]);
  });

  it('residual: normalize(max(0, p - q)), or p when p <= q everywhere', () => {
    const p: Distribution = { ids: Int32Array.of(0, 1, 2), probs: Float64Array.of(0.5, 0.3, 0.2) };
    const q: Distribution = { ids: Int32Array.of(1, 0, 3), probs: Float64Array.of(0.6, 0.2, 0.2) };
    const r = residualDistribution(p, q);
    expect(Array.from(r.ids)).toEqual([0, 2]);
    expect(r.probs[0]).toBeCloseTo(0.3 / 0.5);
    expect(r.probs[1]).toBeCloseTo(0.2 / 0.5);
    expect(residualDistribution(p, p)).toBe(p);
  });
});

describe('draft length schedule and draft checks', () => {
  it("Transformers' heuristic: +2 on full acceptance, -1 otherwise, at least 1", () => {
    expect(nextNumAssistantTokens(20, 20, 20)).toBe(22);
    expect(nextNumAssistantTokens(20, 20, 19)).toBe(19);
    expect(nextNumAssistantTokens(1, 1, 0)).toBe(1);
    expect(nextNumAssistantTokens(62, 62, 62)).toBe(63);
  });

  it('validates num_assistant_tokens and its schedule', () => {
    expect(resolveGenerationConfig()).toMatchObject({ num_assistant_tokens: 20, num_assistant_tokens_schedule: 'measured' });
    expect(() => resolveGenerationConfig({ num_assistant_tokens: 0 })).toThrow(/num_assistant_tokens must be an integer in 1..63/);
    expect(() => resolveGenerationConfig({ num_assistant_tokens: 64 })).toThrow(/1..63/);
    expect(() => resolveGenerationConfig({ num_assistant_tokens_schedule: 'fast' as never })).toThrow(/num_assistant_tokens_schedule must be one of/);
  });

  it('a draft must share the tokenizer', async () => {
    const llama2 = await loadTokenizer('llama2');
    const qwen3 = await loadTokenizer('qwen3');
    expect(() => checkSameTokenizer({ vocabSize: 32000, tokenizer: llama2 }, { vocabSize: 32000, tokenizer: llama2 })).not.toThrow();
    expect(() => checkSameTokenizer({ vocabSize: 32000, tokenizer: llama2 }, { vocabSize: 151936, tokenizer: qwen3 })).toThrow(DraftModelError);
    expect(() => checkSameTokenizer({ vocabSize: 151936, tokenizer: llama2 }, { vocabSize: 151936, tokenizer: qwen3 })).toThrow(/tokenizer has 151669 tokens|token 0 is/);
    expect(() => checkSameTokenizer({ vocabSize: 311, eosTokenId: 2, bosTokenId: 1 }, { vocabSize: 311, eosTokenId: [2, 7], bosTokenId: 1 })).toThrow(/eos_token_id/);
  });
});
