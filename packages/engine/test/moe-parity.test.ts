// Parity with Hugging Face Transformers for the mixture-of-experts families, as
// parity.test.ts does for the dense ones: Transformers builds a scaled-down model of each
// family (real config class, seeded weights), and both it and our engine run the same
// prompt. Top-1 must agree at every position, log-probabilities within f32 error, and 64
// greedy tokens must be identical. GPT-OSS is also compared with its experts packed into
// MXFP4 as published, loaded by Transformers from that same checkpoint: Transformers 5.18
// on a CPU dequantizes MXFP4 to bf16 experts (exact: every e2m1 x 2^k value fits bf16) and
// then runs them in bf16, so the reference takes the experts Transformers dequantized,
// widened to f32, and runs them in f32 as our engine does.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { directorySource } from '../src/files.ts';
import { loadModel } from '../src/model.ts';
import { dequantizeMxfp4, quantizeMxfp4 } from '../src/mxfp4.ts';
import { openCheckpoint } from '../src/safetensors.ts';
import { writeSafetensors, type TensorToWrite } from '../src/safetensors-writer.ts';
import type { Model } from '../src/types.ts';
import { rng, testGpu } from './harness.ts';
import { REPO_ROOT } from './paths.ts';
import { makeReferenceModel, pythonAvailable, type ReferenceFamily } from './transformers-reference.ts';
import { expectParity } from './parity-check.ts';

interface Case {
  name: string;
  family: ReferenceFamily;
  config?: Record<string, unknown>;
  mxfp4?: boolean;
}

// Sizes where 2I ≠ hidden, so a transposed or interleaved expert weight cannot pass.
const CASES: Case[] = [
  { name: 'mixtral, 4 experts top-2', family: 'mixtral', config: { intermediate_size: 48 } },
  { name: 'qwen2_moe, shared expert, 6 experts top-2, no renormalisation', family: 'qwen2_moe', config: { num_experts: 6 } },
  {
    name: 'qwen3_moe, 8 experts top-3, norm_topk_prob, dense layer 0 (mlp_only_layers)',
    family: 'qwen3_moe',
    config: { num_experts: 8, num_experts_per_tok: 3, norm_topk_prob: true, mlp_only_layers: [0] },
  },
  { name: 'gpt_oss, sinks, sliding window 48, YaRN, biases', family: 'gpt_oss', config: { intermediate_size: 64, sliding_window: 48 } },
  { name: 'gpt_oss, MXFP4 experts', family: 'gpt_oss', config: { intermediate_size: 64, sliding_window: 48 }, mxfp4: true },
];

const python = pythonAvailable();
const models: Model[] = [];
afterAll(() => models.forEach((m) => m.dispose()));

/**
 * Rewrites a GPT-OSS folder with its experts in the published MXFP4 layout: gate_up_proj
 * [E, hidden, 2I] and down_proj [E, I, hidden] (input-major) become `*_blocks` / `*_scales`
 * of the output-major [E, 2I, hidden] and [E, hidden, I]. Transformers needs `dequantize`
 * to load MXFP4 on a CPU without the accelerate package; it dequantizes the same blocks.
 */
async function packMxfp4(dir: string): Promise<string> {
  const out = `${dir}-mxfp4`;
  mkdirSync(out, { recursive: true });
  const ckpt = await openCheckpoint(directorySource(dir));
  const tensors: TensorToWrite[] = [];
  for (const [name, info] of ckpt.tensors) {
    const bytes = (await ckpt.read(name)).slice();
    if (!/experts\.(gate_up_proj|down_proj)$/.test(name)) {
      tensors.push({ name, dtype: info.dtype, shape: info.shape, data: bytes });
      continue;
    }
    if (info.dtype !== 'F32') throw new Error(`${name}: expected F32`);
    const [E, K, N] = info.shape as [number, number, number];
    const src = new Float32Array(bytes.buffer, bytes.byteOffset, E * K * N);
    const t = new Float32Array(E * N * K);
    for (let e = 0; e < E; e++) for (let k = 0; k < K; k++) for (let n = 0; n < N; n++) t[(e * N + n) * K + k] = src[(e * K + k) * N + n]!;
    const q = quantizeMxfp4(t, E * N, K);
    tensors.push({ name: `${name}_blocks`, dtype: 'U8', shape: [E, N, K / 32, 16], data: q.blocks });
    tensors.push({ name: `${name}_scales`, dtype: 'U8', shape: [E, N, K / 32], data: q.scales });
  }
  const cfg = JSON.parse(readFileSync(path.join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
  cfg.quantization_config = { quant_method: 'mxfp4', dequantize: true, modules_to_not_convert: ['model.layers.*.self_attn', 'model.layers.*.mlp.router', 'model.embed_tokens', 'lm_head'] };
  writeFileSync(path.join(out, 'config.json'), JSON.stringify(cfg, null, 2));
  writeFileSync(path.join(out, 'model.safetensors'), writeSafetensors(tensors, { format: 'pt' }));
  return out;
}

// Loads an MXFP4 folder in Transformers and saves every parameter as f32 (the experts as
// Transformers dequantized them) beside the config without its quantization_config.
const DEQUANTIZE_PY = `
import json, os, sys, torch, transformers, safetensors.torch as st
src, out = sys.argv[1], sys.argv[2]
m = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
os.makedirs(out, exist_ok=True)
st.save_file({k: v.detach().float().contiguous() for k, v in m.named_parameters()}, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
cfg = json.load(open(os.path.join(src, "config.json")))
del cfg["quantization_config"]
json.dump(cfg, open(os.path.join(out, "config.json"), "w"))
`;

function transformersDequantized(mxfp4Dir: string): string {
  const out = `${mxfp4Dir}-hf-dequantized`;
  if (existsSync(path.join(out, 'config.json'))) return out;
  const py = process.env.REFERENCE_PYTHON ?? path.join(REPO_ROOT, '.venv', 'bin', 'python');
  execFileSync(py, ['-c', DEQUANTIZE_PY, mxfp4Dir, out], { env: { ...process.env, HF_HUB_OFFLINE: '1', TRANSFORMERS_OFFLINE: '1', OMP_NUM_THREADS: '1' }, stdio: ['ignore', 'ignore', 'pipe'], timeout: 300_000 });
  return out;
}

/** Transformers' dequantized experts equal ours, bit for bit (our layout is output-major). */
async function expectSameDequantization(mxfp4Dir: string, hfDir: string): Promise<void> {
  const ours = await openCheckpoint(directorySource(mxfp4Dir));
  const hf = await openCheckpoint(directorySource(hfDir));
  let checked = 0;
  for (const name of ours.tensors.keys()) {
    if (!name.endsWith('_blocks')) continue;
    const base = name.slice(0, -'_blocks'.length);
    const [E, N, G] = ours.get(name).shape as [number, number, number];
    const K = G * 32;
    const deq = dequantizeMxfp4((await ours.read(name)).slice(), (await ours.read(`${base}_scales`)).slice(), E * N, K);
    const ref = new Float32Array((await hf.read(base)).slice().buffer); // [E, K, N]
    for (let e = 0; e < E; e++)
      for (let n = 0; n < N; n++)
        for (let k = 0; k < K; k++) if (deq[(e * N + n) * K + k] !== ref[(e * K + k) * N + n]) throw new Error(`${base}[${e}, ${k}, ${n}]: ours ${deq[(e * N + n) * K + k]}, Transformers ${ref[(e * K + k) * N + n]}`);
    checked++;
  }
  expect(checked).toBeGreaterThan(0);
}

describe.skipIf(!python.ok)('MoE parity with Transformers', () => {
  for (const [i, c] of CASES.entries()) {
    it(c.name, async () => {
      let dir = await makeReferenceModel({ family: c.family, seed: 300 + i, dtype: 'float32', ...(c.config ? { config: c.config } : {}) });
      let refDir = dir;
      if (c.mxfp4) {
        dir = await packMxfp4(dir);
        refDir = transformersDequantized(dir);
        await expectSameDequantization(dir, refDir);
      }
      const model = await loadModel(dir, { gpu: await testGpu() });
      models.push(model);
      await expectParity(c.name, model, refDir, 11 + i);
    });
  }
});

if (!python.ok) {
  describe('MoE parity with Transformers', () => {
    it.skip(`skipped: ${python.reason}`, () => {});
  });
}
