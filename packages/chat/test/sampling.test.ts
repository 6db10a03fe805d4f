import { describe, expect, it } from 'vitest';
import type { TopK } from '@webgpu-chat/engine';
import {
  applyRepetitionPenalty,
  argmax,
  distributionFromLogits,
  GenerationConfigError,
  parseGenerationConfigJson,
  readPath,
  resolveGenerationConfig,
  sampleFromLogits,
  sampleFromTopK,
  SeededRandom,
  TRANSFORMERS_DEFAULTS,
  type SamplingParams,
} from '../src/index.ts';

function randomLogits(n: number, seed: number, scale = 4): Float32Array {
  const r = new SeededRandom(seed);
  return Float32Array.from({ length: n }, () => (r.next() * 2 - 1) * scale);
}

const sampling = (p: Partial<SamplingParams>): SamplingParams => ({ ...TRANSFORMERS_DEFAULTS, do_sample: true, top_k: 0, ...p });

/** The k best ids of a row, as the GPU reduction returns them. */
function topKOf(logits: Float32Array, k: number): TopK {
  const ids = Int32Array.from(logits.keys()).sort((a, b) => logits[b]! - logits[a]!).slice(0, k);
  let m = -Infinity;
  for (const l of logits) m = Math.max(m, l);
  let s = 0;
  for (const l of logits) s += Math.exp(l - m);
  return { ids, logits: Float32Array.from(ids, (i) => logits[i]!), logSumExp: m + Math.log(s) };
}

describe('generation config', () => {
  it('rejects out-of-range flags with named errors', () => {
    const bad: [object, RegExp][] = [
      [{ temperature: -0.1 }, /temperature must be a finite number >= 0/],
      [{ top_p: 0 }, /top_p must be in \(0, 1\]/],
      [{ top_p: 1.5 }, /top_p must be in \(0, 1\]/],
      [{ top_k: -1 }, /top_k must be an integer >= 0/],
      [{ top_k: 2.5 }, /top_k must be an integer/],
      [{ min_p: 1.1 }, /min_p must be in \[0, 1\]/],
      [{ repetition_penalty: 0 }, /repetition_penalty must be > 0/],
      [{ max_new_tokens: -1 }, /max_new_tokens must be an integer >= 0/],
      [{ stop: [''] }, /stop must be a list of non-empty strings/],
      [{ eos_token_id: [-3] }, /eos_token_id/],
    ];
    for (const [cfg, msg] of bad) {
      expect(() => resolveGenerationConfig(cfg)).toThrow(GenerationConfigError);
      expect(() => resolveGenerationConfig(cfg)).toThrow(msg);
    }
  });

  it('layers Transformers defaults < generation_config.json < call, merging EOS ids', () => {
    const file = parseGenerationConfigJson({ do_sample: true, temperature: 0.6, top_k: 20, top_p: null, eos_token_id: [151645, 151643], max_length: 9999 });
    expect(file).toEqual({ do_sample: true, temperature: 0.6, top_k: 20, eos_token_id: [151645, 151643] });
    const r = resolveGenerationConfig(file, { temperature: 0.9, eos_token_id: 7, max_new_tokens: 5 });
    expect(r).toMatchObject({ do_sample: true, temperature: 0.9, top_k: 20, top_p: 1, min_p: 0, repetition_penalty: 1, max_new_tokens: 5, eos_token_id: [151645, 151643, 7] });
    expect(resolveGenerationConfig()).toMatchObject({ do_sample: false, temperature: 1, top_k: 50, top_p: 1 });
  });

  it('reads back only what the flags need', () => {
    expect(readPath(resolveGenerationConfig(), 151936)).toBe('argmax');
    expect(readPath(resolveGenerationConfig({ do_sample: true, temperature: 0 }), 151936)).toBe('argmax');
    expect(readPath(resolveGenerationConfig({ do_sample: true, top_k: 40 }), 151936)).toBe('topk');
    expect(readPath(resolveGenerationConfig({ do_sample: true, top_k: 0 }), 151936)).toBe('logits');
    expect(readPath(resolveGenerationConfig({ do_sample: true, top_k: 1000 }), 151936)).toBe('logits');
    expect(readPath(resolveGenerationConfig({ repetition_penalty: 1.1 }), 151936)).toBe('logits');
  });
});

describe('sampler', () => {
  const V = 1000;

  it('top_k and top_p never pick outside the allowed set', () => {
    const logits = randomLogits(V, 1);
    const order = Int32Array.from(logits.keys()).sort((a, b) => logits[b]! - logits[a]!);
    const top10 = new Set(order.slice(0, 10));
    const rng = new SeededRandom(2);
    for (let i = 0; i < 3000; i++) expect(top10.has(sampleFromLogits(logits, sampling({ top_k: 10 }), rng))).toBe(true);
    // top_p: the smallest head of the sorted distribution whose mass reaches top_p.
    const p = distributionFromLogits(logits, sampling({}));
    let mass = 0;
    let n = 0;
    while (mass < 0.3) mass += p.probs[n++]!;
    const nucleus = new Set(p.ids.slice(0, n));
    for (let i = 0; i < 3000; i++) expect(nucleus.has(sampleFromLogits(logits, sampling({ top_p: 0.3 }), rng))).toBe(true);
    expect(distributionFromLogits(logits, sampling({ top_p: 0.3 })).ids.length).toBe(n);
  });

  it('a row masked to -Infinity keeps only the unmasked tokens, with or without top_k', () => {
    const logits = new Float32Array(V).fill(-Infinity);
    logits[7] = 0.5;
    logits[300] = -2;
    logits[999] = 1;
    for (const top_k of [0, 2, 50]) {
      const d = distributionFromLogits(logits, sampling({ top_k }));
      expect(Array.from(d.ids)).toEqual(top_k === 2 ? [999, 7] : [999, 7, 300]);
      expect(d.probs.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 12);
    }
  });

  it('min_p drops tokens below min_p times the top probability', () => {
    const logits = new Float32Array([0, Math.log(0.5), Math.log(0.09), Math.log(0.11)]);
    const d = distributionFromLogits(logits, sampling({ min_p: 0.1 }));
    expect([...d.ids]).toEqual([0, 1, 3]);
  });

  it('temperature -> 0 equals greedy', () => {
    for (let seed = 0; seed < 20; seed++) {
      const logits = randomLogits(V, seed);
      const greedy = argmax(logits);
      expect(sampleFromLogits(logits, sampling({ temperature: 0 }), new SeededRandom(seed))).toBe(greedy);
      // A temperature small against the gap between the two best logits leaves only the best.
      const gap = logits[greedy]! - Math.max(...logits.filter((_, i) => i !== greedy));
      expect(sampleFromLogits(logits, sampling({ temperature: gap / 50 }), new SeededRandom(seed))).toBe(greedy);
      expect(sampleFromLogits(logits, { ...sampling({}), do_sample: false }, new SeededRandom(seed))).toBe(greedy);
    }
  });

  it('the same seed gives the same draws, another seed other draws', () => {
    const logits = randomLogits(V, 3, 2);
    const run = (seed: number) => {
      const rng = new SeededRandom(seed);
      return Array.from({ length: 50 }, () => sampleFromLogits(logits, sampling({ top_k: 100, temperature: 1.3 }), rng));
    };
    expect(run(42)).toEqual(run(42));
    expect(run(42)).not.toEqual(run(43));
  });

  it('draws follow softmax(logits / T): every frequency within 5 standard errors', () => {
    const logits = randomLogits(8, 9, 1.5);
    const T = 0.8;
    const w = Array.from(logits, (l) => Math.exp(l / T));
    const z = w.reduce((a, b) => a + b);
    const N = 40000;
    const counts = new Array(8).fill(0);
    const rng = new SeededRandom(5);
    for (let i = 0; i < N; i++) counts[sampleFromLogits(logits, sampling({ temperature: T }), rng)]++;
    for (let i = 0; i < 8; i++) {
      const p = w[i]! / z;
      expect(Math.abs(counts[i] / N - p)).toBeLessThan(5 * Math.sqrt((p * (1 - p)) / N) + 1e-9);
    }
  });

  it('the GPU top-k path draws exactly what the full-row path draws', () => {
    const logits = randomLogits(5000, 11);
    const p = sampling({ top_k: 40, top_p: 0.9, min_p: 0.05, temperature: 0.7 });
    const a = new SeededRandom(8);
    const b = new SeededRandom(8);
    const top = topKOf(logits, 40);
    for (let i = 0; i < 500; i++) expect(sampleFromTopK(top, p, a)).toBe(sampleFromLogits(logits, p, b));
  });

  it('repetition_penalty divides positive and multiplies negative logits of seen tokens', () => {
    const l = new Float32Array([2, -2, 1, 3]);
    applyRepetitionPenalty(l, [0, 1, 1], 2);
    expect([...l]).toEqual([1, -4, 1, 3]);
    // Greedy with a penalty can change the choice.
    expect(sampleFromLogits(new Float32Array([3, 2.9]), { ...sampling({}), do_sample: false, repetition_penalty: 1.5 }, new SeededRandom(1), [0])).toBe(1);
  });
});
