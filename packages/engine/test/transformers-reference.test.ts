// Tests the Transformers reference tooling itself, without our engine: the model
// folders make_model.py writes, the logits logits.py returns, and compareLogprobs.
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { rng } from './harness.ts';
import {
  compareLogprobs, makeReferenceModel, pythonAvailable, referenceLogits, type ReferenceLogits,
} from './transformers-reference.ts';

/** Same cap as the safetensors reference implementation (MAX_HEADER_SIZE). */
const MAX_HEADER_BYTES = 100_000_000;

interface TensorInfo {
  dtype: string;
  shape: number[];
  data_offsets: [number, number];
}

/** Parsed here rather than with our loader, so the tooling test does not depend on the engine. */
function safetensorsHeader(file: string): Record<string, TensorInfo> {
  const bytes = readFileSync(file);
  const n = Number(bytes.readBigUInt64LE(0));
  if (n > MAX_HEADER_BYTES || 8 + n > bytes.byteLength) throw new Error(`${file}: bad header length ${n}`);
  const header = JSON.parse(bytes.subarray(8, 8 + n).toString('utf8')) as Record<string, TensorInfo>;
  delete header.__metadata__;
  return header;
}

function logSumExp(a: Float32Array, start: number, n: number): number {
  let max = -Infinity;
  for (let i = 0; i < n; i++) max = Math.max(max, a[start + i]!);
  let s = 0;
  for (let i = 0; i < n; i++) s += Math.exp(a[start + i]! - max);
  return max + Math.log(s);
}

function row(ref: ReferenceLogits, t: number): Float32Array {
  return ref.logprobs.subarray(t * ref.vocab, (t + 1) * ref.vocab);
}

function synthetic(rows: number[][]): ReferenceLogits {
  const vocab = rows[0]!.length;
  const logprobs = new Float32Array(rows.flat());
  const argmax = rows.map((r) => r.indexOf(Math.max(...r)));
  return { positions: rows.length, vocab, topIds: [], topLogprobs: [], argmax, logprobs };
}

describe('compareLogprobs', () => {
  it('treats raw logits and log-probabilities alike and measures KL(ref || ours)', () => {
    const p = [0.5, 0.25, 0.25];
    const q = [0.25, 0.5, 0.25];
    const ref = synthetic([p.map(Math.log), q.map(Math.log)]);
    // Raw logits: the log-probabilities shifted by an arbitrary per-row constant.
    const same = compareLogprobs([...p.map((x) => Math.log(x) + 3), ...q.map((x) => Math.log(x) - 7)], ref);
    expect(same.meanKL).toBeCloseTo(0, 6);
    expect(same.maxAbsErrTop20).toBeLessThan(1e-6);
    expect(same.top1Agreement).toBe(1);
    expect(same.firstMismatch).toBeNull();

    const swapped = compareLogprobs([...q.map(Math.log), ...p.map(Math.log)], ref);
    const kl = 0.5 * Math.log(2) + 0.25 * Math.log(0.5); // KL(p || q) = KL(q || p) here
    expect(swapped.maxKL).toBeCloseTo(kl, 6);
    expect(swapped.meanKL).toBeCloseTo(kl, 6);
    expect(swapped.maxAbsErrTop20).toBeCloseTo(Math.log(2), 6);
    expect(swapped.top1Agreement).toBe(0);
    expect(swapped.firstMismatch).toBe(0);
  });

  it('leaves near-ties out of top-1 agreement when asked, and never hides NaN', () => {
    const ref = synthetic([[0, -0.01, -5], [0, -3, -5]]);
    const ours = [-0.01, 0, -5, 0, -3, -5];
    expect(compareLogprobs(ours, ref).firstMismatch).toBe(0);
    const r = compareLogprobs(ours, ref, { minMargin: 0.1 });
    expect(r.compared).toBe(1);
    expect(r.top1Agreement).toBe(1);
    expect(r.firstMismatch).toBeNull();
    const nan = compareLogprobs([0, -3, NaN, 0, -3, -5], ref);
    expect(nan.meanKL).toBeNaN();
    expect(nan.maxAbsErrTop20).toBeNaN();
    expect(() => compareLogprobs([0, 1], ref)).toThrow(/expected 2 positions x 3 vocab/);
  });
});

const py = pythonAvailable();
const suite = py.ok ? describe : describe.skip;

suite(`Transformers reference tooling${py.ok ? '' : ` (skipped: ${py.reason})`}`, () => {
  const prompt = [1, 5, 17, 42, 99, 200, 310, 7, 8, 9, 10, 11, 3, 4, 250, 251];
  let llama: string;
  let qwen3: string;
  let sharded: string;
  // Shared by two tests: each Python run costs seconds of torch import.
  let qwen3F32: Promise<ReferenceLogits> | undefined;
  const qwen3Logits = () => (qwen3F32 ??= referenceLogits(qwen3, prompt, { dtype: 'float32' }));

  beforeAll(async () => {
    [llama, qwen3, sharded] = await Promise.all([
      makeReferenceModel({ family: 'llama', seed: 1, dtype: 'float32', config: { tie_word_embeddings: false } }),
      makeReferenceModel({ family: 'qwen3', seed: 2, dtype: 'bfloat16', config: { tie_word_embeddings: true } }),
      makeReferenceModel({ family: 'llama', seed: 3, dtype: 'float16', config: { num_hidden_layers: 3 }, maxShardSize: '40KB' }),
    ]);
  });

  it('writes a real HF folder: config, generation config and float32 weights with HF names', async () => {
    const config = JSON.parse(readFileSync(path.join(llama, 'config.json'), 'utf8')) as Record<string, unknown>;
    expect(config).toMatchObject({
      model_type: 'llama', architectures: ['LlamaForCausalLM'], dtype: 'float32', tie_word_embeddings: false,
      hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, vocab_size: 311,
    });
    expect(existsSync(path.join(llama, 'generation_config.json'))).toBe(true);
    const h = safetensorsHeader(path.join(llama, 'model.safetensors'));
    expect(new Set(Object.values(h).map((t) => t.dtype))).toEqual(new Set(['F32']));
    expect(h['model.embed_tokens.weight']!.shape).toEqual([311, 64]);
    expect(h['lm_head.weight']!.shape).toEqual([311, 64]);
    expect(h['model.layers.1.self_attn.q_proj.weight']!.shape).toEqual([64, 64]);
    expect(h['model.layers.1.self_attn.k_proj.weight']!.shape).toEqual([32, 64]);
    expect(h['model.layers.0.mlp.down_proj.weight']!.shape).toEqual([64, 96]);
    expect(h['model.layers.2.input_layernorm.weight']).toBeUndefined();
    // The same options give the same folder, without running Python again.
    expect(await makeReferenceModel({ family: 'llama', seed: 1, dtype: 'float32', config: { tie_word_embeddings: false } })).toBe(llama);
  });

  it('writes bfloat16 qwen3 with tied embeddings and q/k norms', () => {
    const config = JSON.parse(readFileSync(path.join(qwen3, 'config.json'), 'utf8')) as Record<string, unknown>;
    expect(config).toMatchObject({ model_type: 'qwen3', dtype: 'bfloat16', tie_word_embeddings: true });
    const h = safetensorsHeader(path.join(qwen3, 'model.safetensors'));
    expect(new Set(Object.values(h).map((t) => t.dtype))).toEqual(new Set(['BF16']));
    expect(h['lm_head.weight']).toBeUndefined();
    expect(h['model.layers.0.self_attn.q_norm.weight']!.shape).toEqual([16]);
    expect(h['model.layers.0.self_attn.k_norm.weight']!.shape).toEqual([16]);
  });

  it('shards float16 weights over several files listed by the index', () => {
    expect(existsSync(path.join(sharded, 'model.safetensors'))).toBe(false);
    const index = JSON.parse(readFileSync(path.join(sharded, 'model.safetensors.index.json'), 'utf8')) as { weight_map: Record<string, string> };
    const shards = [...new Set(Object.values(index.weight_map))];
    expect(shards.length).toBeGreaterThan(2);
    const inShards: string[] = [];
    for (const s of shards) {
      const h = safetensorsHeader(path.join(sharded, s));
      for (const [name, t] of Object.entries(h)) {
        expect(t.dtype).toBe('F16');
        expect(index.weight_map[name]).toBe(s);
        inShards.push(name);
      }
    }
    expect(inShards.sort()).toEqual(Object.keys(index.weight_map).sort());
    expect(inShards).toContain('model.layers.2.mlp.up_proj.weight');
  });

  it('returns normalised log-probabilities, consistent top-k, and a greedy chain of argmaxes', async () => {
    const n = 6;
    const ref = await referenceLogits(llama, prompt, { greedy: n });
    const T = prompt.length;
    expect(ref.positions).toBe(T);
    expect(ref.vocab).toBe(311);
    expect(ref.logprobs.length).toBe(T * 311);
    expect(ref.topIds.length).toBe(T);
    expect(ref.argmax.length).toBe(T);
    let separated = 0;
    for (let t = 0; t < T; t++) {
      expect(Math.abs(logSumExp(ref.logprobs, t * 311, 311))).toBeLessThan(1e-5);
      const r = row(ref, t);
      expect(ref.topIds[t]!.length).toBe(20);
      expect(ref.topIds[t]![0]).toBe(ref.argmax[t]);
      for (let j = 0; j < 20; j++) {
        expect(ref.topLogprobs[t]![j]).toBeCloseTo(r[ref.topIds[t]![j]!]!, 6);
        if (j > 0) expect(ref.topLogprobs[t]![j]!).toBeLessThanOrEqual(ref.topLogprobs[t]![j - 1]!);
      }
      if (ref.topLogprobs[t]![0]! - ref.topLogprobs[t]![1]! > 0.05) separated++;
    }
    // The seeded init must give logits with a clear winner, or parity tests prove nothing.
    expect(separated).toBeGreaterThanOrEqual(T / 2);

    const greedy = ref.greedy!;
    expect(greedy.length).toBe(n);
    expect(greedy[0]).toBe(ref.argmax[T - 1]);
    // Re-running prompt + greedy[0..n-2] in one pass: each argmax is the next greedy
    // token (cached decode = full prefill), and the prompt rows are unchanged (causality).
    const ext = await referenceLogits(llama, [...prompt, ...greedy.slice(0, -1)], { topk: 5 });
    expect(ext.topIds[0]!.length).toBe(5);
    expect(ext.argmax.slice(T - 1)).toEqual(greedy);
    const prefix = compareLogprobs(ext.logprobs.subarray(0, T * 311), ref);
    expect(prefix.maxAbsErrTop20).toBeLessThan(1e-4);
  });

  it('scores the reference against itself as exact and a perturbed copy as measurably off', async () => {
    const ref = await qwen3Logits();
    const self = compareLogprobs(ref.logprobs, ref);
    expect(self).toEqual({ top1Agreement: 1, compared: prompt.length, maxAbsErrTop20: 0, meanKL: 0, maxKL: 0, firstMismatch: null });

    const r = rng(7);
    const noisy = ref.logprobs.map((x) => x + (r() - 0.5) * 0.2);
    const off = compareLogprobs(noisy, ref);
    expect(off.meanKL).toBeGreaterThan(1e-4);
    expect(off.maxKL).toBeGreaterThanOrEqual(off.meanKL);
    expect(off.maxAbsErrTop20).toBeGreaterThan(0.01);

    // Lifting one token above the winner at position 3 is reported as the first mismatch.
    const lifted = ref.logprobs.slice();
    const t = 3;
    const loser = ref.topIds[t]![1]!;
    lifted[t * ref.vocab + loser] = ref.topLogprobs[t]![0]! + 1;
    const miss = compareLogprobs(lifted, ref);
    expect(miss.firstMismatch).toBe(t);
    expect(miss.top1Agreement).toBeCloseTo(1 - 1 / prompt.length, 12);
  });

  it('runs the model in bfloat16 when asked, close to but not equal to float32', async () => {
    const [f32, bf16] = await Promise.all([qwen3Logits(), referenceLogits(qwen3, prompt, { dtype: 'bfloat16' })]);
    const c = compareLogprobs(bf16.logprobs, f32);
    expect(c.meanKL).toBeGreaterThan(0);
    expect(c.meanKL).toBeLessThan(0.05);
  });

  it('surfaces Python errors with their message', async () => {
    await expect(referenceLogits(llama, [1, 2, 311])).rejects.toThrow(/token 2 is 311, not an integer id in \[0, 311\)/);
  });
});
