// scoreTokens against whole logits rows read back from a second session: the GPU
// reductions (top-k, logSumExp, target logit per row, several rows per read-back) must
// give the same log-probabilities, whatever the chunking and context split.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadModel } from '../src/model.ts';
import { scoreTokens, ScoringError, type TokenScore } from '../src/scoring.ts';
import type { Model } from '../src/types.ts';
import { writeGeneratedModel } from './generated-model.ts';
import { rng, testGpu } from './harness.ts';

const VOCAB = 311;
const N = 150;
const K = 7;
let model: Model;
const tokens: number[] = [];
/** Whole rows of log-probabilities (float64), per position. */
const rows: Float64Array[] = [];

beforeAll(async () => {
  model = await loadModel(writeGeneratedModel({ modelType: 'qwen2', seed: 77 }), { gpu: await testGpu(), dtype: 'f32' });
  const r = rng(5);
  for (let i = 0; i < N; i++) tokens.push(Math.floor(r() * VOCAB));
  const s = model.createSession();
  for (let at = 0; at < N; at += 64) {
    const piece = tokens.slice(at, at + 64);
    s.forward(piece, { allLogits: true });
    for (let j = 0; j < piece.length; j++) {
      const x = await s.logits(at + j);
      let m = -Infinity;
      for (const v of x) m = Math.max(m, v);
      let sum = 0;
      for (const v of x) sum += Math.exp(v - m);
      const lse = m + Math.log(sum);
      rows.push(Float64Array.from(x, (v) => v - lse));
    }
  }
  s.dispose();
});

afterAll(() => model?.dispose());

function expectMatchesRows(got: TokenScore[], from: number, k: number): void {
  expect(got).toHaveLength(N - from);
  let maxErr = 0;
  for (const [j, g] of got.entries()) {
    const row = rows[from + j - 1]!;
    const t = tokens[from + j]!;
    maxErr = Math.max(maxErr, Math.abs(g.logprob - row[t]!));
    const order = Array.from(row.keys()).sort((a, b) => row[b]! - row[a]! || a - b);
    expect(g.greedy).toBe(order[0] === t);
    expect(Array.from(g.topIds)).toEqual(order.slice(0, k));
    g.topLogprobs.forEach((lp, i) => (maxErr = Math.max(maxErr, Math.abs(lp - row[order[i]!]!))));
  }
  expect(maxErr).toBeLessThan(2e-5);
}

describe('scoreTokens', () => {
  it('matches full-row log-softmax: every token from the second, top-k per position', async () => {
    const s = model.createSession();
    const progress: number[] = [];
    const got = await scoreTokens(s, tokens, { topK: K, onProgress: (done, total) => progress.push(done / total) });
    expectMatchesRows(got, 1, K);
    expect(progress.at(-1)).toBe(1);
    expect(progress.length).toBe(3);
    // The session holds the sequence and keeps the last position's logits for generation.
    expect(s.length).toBe(N);
    const last = rows[N - 1]!;
    expect(await s.argmax()).toBe(Array.from(last.keys()).sort((a, b) => last[b]! - last[a]! || a - b)[0]);
    s.dispose();
  });

  it('gives the same scores with context tokens, small chunks and k = 0', async () => {
    const s = model.createSession();
    const got = await scoreTokens(s, tokens, { from: 70, chunk: 9 });
    expectMatchesRows(got, 70, 0);
    s.dispose();
  });

  it('continues what the session already holds', async () => {
    const s = model.createSession();
    s.forward(tokens.slice(0, 30));
    const got = await scoreTokens(s, tokens.slice(30), { topK: 3 });
    expectMatchesRows(got, 31, 3);
    s.dispose();
  });

  it('rejects bad arguments with named errors', async () => {
    const s = model.createSession();
    await expect(scoreTokens(s, [])).rejects.toThrow(ScoringError);
    await expect(scoreTokens(s, [1, 2], { from: 0 })).rejects.toThrow(/from must be/);
    await expect(scoreTokens(s, [1, 2], { topK: 257 })).rejects.toThrow(/topK must be/);
    await expect(scoreTokens(s, [1, 2], { chunk: 65 })).rejects.toThrow(/chunk must be/);
    await expect(scoreTokens(s, [1, VOCAB])).rejects.toThrow(/outside the vocabulary/);
    await expect(s.reduceRows([0], 0, [VOCAB + 3])).rejects.toThrow(RangeError);
    s.dispose();
  });
});
