// The MoE block (ops/moe.ts: routing, grouping, expert kernels, combine) against a float64
// reference, for every routing rule and weight format, decode (one token) and prefill,
// experts split over several buffers, ties in the router, and bad shapes.
import { describe, expect, it } from 'vitest';
import { bufferFrom, emptyBuffer, readF32 } from '../src/buffers.ts';
import { encode16, roundTo, type WeightDtype } from '../src/dtype.ts';
import { dequantizeMxfp4, quantizeMxfp4 } from '../src/mxfp4.ts';
import { type ExpertWeights, type MoeOptions, type MoeWeights, MoeError, createMoe, createMoeScratch } from '../src/ops/moe.ts';
import { mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { loadModel, planMemory } from '../src/model.ts';
import { writeSafetensors } from '../src/safetensors-writer.ts';
import { expectClose, randomArray, testGpu } from './harness.ts';
import { makeWeight, opContext } from './weights-helper.ts';

type Format = WeightDtype | 'mxfp4';

interface Host {
  router: Float32Array; // [E, H]
  routerBias?: Float32Array; // [E]
  gateUp: Float64Array; // [E, 2I, H] as the GPU sees it
  down: Float64Array; // [E, H, I]
  gateUpBias?: Float32Array; // [E, 2I]
  downBias?: Float32Array; // [E, H]
  shared?: { gate: Float32Array; up: Float32Array; down: Float32Array; gateLogit: Float32Array };
}

/** Stacked experts in `format`, split into chunks of the given expert counts. */
function experts(device: GPUDevice, w: Float32Array, E: number, rows: number, cols: number, format: Format, split: number[]): { gpu: ExpertWeights; seen: Float64Array } {
  const per = rows * cols;
  const seen = new Float64Array(E * per);
  const chunks = [];
  let start = 0;
  for (const n of split) {
    const part = w.subarray(start * per, (start + n) * per);
    if (format === 'mxfp4') {
      const q = quantizeMxfp4(part, n * rows, cols);
      seen.set(dequantizeMxfp4(q.blocks, q.scales, n * rows, cols), start * per);
      chunks.push({ buffer: bufferFrom(device, q.blocks), scales: bufferFrom(device, q.scales), expertStart: start, experts: n });
    } else {
      seen.set(roundTo(part, format), start * per);
      chunks.push({ buffer: bufferFrom(device, format === 'f32' ? part : encode16(part, format)), expertStart: start, experts: n });
    }
    start += n;
  }
  return { gpu: { format, experts: E, rows, cols, chunks }, seen };
}

const silu = (v: number) => v / (1 + Math.exp(-v));

function reference(o: MoeOptions, h: Host, x: Float32Array, residual: Float32Array, T: number): Float64Array {
  const { hidden: H, experts: E, k, intermediate: I } = o;
  const out = Float64Array.from(residual);
  for (let t = 0; t < T; t++) {
    const xr = x.subarray(t * H, (t + 1) * H);
    const logits = Array.from({ length: E }, (_, e) => {
      let s = h.routerBias?.[e] ?? 0;
      for (let c = 0; c < H; c++) s += h.router[e * H + c]! * xr[c]!;
      return s;
    });
    const order = [...logits.keys()].sort((a, b) => logits[b]! - logits[a]! || a - b).slice(0, k);
    let weights: number[];
    if (o.routing === 'topk_softmax') {
      const ex = order.map((e) => Math.exp(logits[e]! - logits[order[0]!]!));
      const sum = ex.reduce((a, b) => a + b, 0);
      weights = ex.map((v) => v / sum);
    } else {
      const max = Math.max(...logits);
      const all = logits.reduce((a, v) => a + Math.exp(v - max), 0);
      weights = order.map((e) => Math.exp(logits[e]! - max) / all);
      if (o.normTopk) {
        const sum = weights.reduce((a, b) => a + b, 0);
        weights = weights.map((v) => v / sum);
      }
    }
    order.forEach((e, j) => {
      const act = new Float64Array(I);
      for (let r = 0; r < I; r++) {
        let g = h.gateUpBias?.[e * 2 * I + r] ?? 0;
        let u = h.gateUpBias?.[e * 2 * I + I + r] ?? 0;
        for (let c = 0; c < H; c++) {
          g += h.gateUp[(e * 2 * I + r) * H + c]! * xr[c]!;
          u += h.gateUp[(e * 2 * I + I + r) * H + c]! * xr[c]!;
        }
        if (o.gptOss) {
          const gc = Math.min(g, o.gptOss.limit);
          const uc = Math.min(Math.max(u, -o.gptOss.limit), o.gptOss.limit);
          act[r] = (uc + 1) * gc / (1 + Math.exp(-o.gptOss.alpha * gc));
        } else act[r] = silu(g) * u;
      }
      for (let n = 0; n < H; n++) {
        let s = h.downBias?.[e * H + n] ?? 0;
        for (let r = 0; r < I; r++) s += h.down[(e * H + n) * I + r]! * act[r]!;
        out[t * H + n] += s * weights[j]!;
      }
    });
    if (h.shared) {
      const Is = o.sharedIntermediate;
      const a = new Float64Array(Is);
      for (let r = 0; r < Is; r++) {
        let g = 0;
        let u = 0;
        for (let c = 0; c < H; c++) {
          g += h.shared.gate[r * H + c]! * xr[c]!;
          u += h.shared.up[r * H + c]! * xr[c]!;
        }
        a[r] = silu(g) * u;
      }
      let gl = 0;
      for (let c = 0; c < H; c++) gl += h.shared.gateLogit[c]! * xr[c]!;
      const gate = 1 / (1 + Math.exp(-gl));
      for (let n = 0; n < H; n++) {
        let s = 0;
        for (let r = 0; r < Is; r++) s += h.shared.down[n * Is + r]! * a[r]!;
        out[t * H + n] += gate * s;
      }
    }
  }
  return out;
}

interface Case {
  name: string;
  format: Format;
  routing: MoeOptions['routing'];
  normTopk?: boolean;
  gptOss?: boolean;
  E: number;
  k: number;
  H: number;
  I: number;
  shared?: number;
  split?: number[];
  /** Router weights all zero: every logit ties. */
  ties?: boolean;
}

const CASES: Case[] = [
  { name: 'mixtral routing f32, experts in 2 buffers', format: 'f32', routing: 'topk_softmax', E: 4, k: 2, H: 64, I: 32, split: [1, 3] },
  { name: 'qwen routing bf16, shared expert', format: 'bf16', routing: 'softmax_topk', E: 6, k: 2, H: 48, I: 24, shared: 40 },
  { name: 'qwen routing f16, norm_topk_prob, k = E', format: 'f16', routing: 'softmax_topk', normTopk: true, E: 3, k: 3, H: 32, I: 16 },
  { name: 'gpt-oss MXFP4, biases, clamped SwiGLU, 3 buffers', format: 'mxfp4', routing: 'topk_softmax', gptOss: true, E: 5, k: 2, H: 64, I: 64, split: [2, 2, 1] },
  { name: 'router ties pick the lowest experts', format: 'f32', routing: 'softmax_topk', E: 8, k: 3, H: 32, I: 16, ties: true },
];

describe('moe block', () => {
  for (const c of CASES) {
    for (const T of [1, 7]) {
      it(`${c.name}, ${T} token(s)`, async () => {
        const gpu = await testGpu();
        const ctx = opContext(gpu, 'software');
        const dev = gpu.device;
        const { E, k, H, I } = c;
        const seed = E * 100 + H + T;
        const o: MoeOptions = {
          hidden: H, experts: E, k, intermediate: I, routing: c.routing, normTopk: !!c.normTopk,
          ...(c.gptOss ? { gptOss: { alpha: 1.702, limit: 1.5 } } : {}),
          sharedIntermediate: c.shared ?? 0, maxTokens: 8,
        };
        const routerW = c.ties ? new Float32Array(E * H) : randomArray(E * H, seed, 0.5);
        const gu = experts(dev, randomArray(E * 2 * I * H, seed + 1, 0.3), E, 2 * I, H, c.format, c.split ?? [E]);
        const dn = experts(dev, randomArray(E * H * I, seed + 2, 0.3), E, H, I, c.format, c.split ?? [E]);
        const host: Host = { router: routerW, gateUp: gu.seen, down: dn.seen };
        const routerDtype = c.format === 'mxfp4' ? 'f32' : c.format;
        if (c.gptOss) {
          host.routerBias = randomArray(E, seed + 3, 0.2);
          host.gateUpBias = randomArray(E * 2 * I, seed + 4, 0.2);
          host.downBias = randomArray(E * H, seed + 5, 0.2);
          gu.gpu.bias = bufferFrom(dev, host.gateUpBias);
          dn.gpu.bias = bufferFrom(dev, host.downBias);
        }
        const router = makeWeight(dev, routerW, E, H, routerDtype);
        if (host.routerBias) router.bias = bufferFrom(dev, host.routerBias);
        host.router = Float32Array.from(roundTo(routerW, routerDtype));
        const w: MoeWeights = { router, gateUp: gu.gpu, down: dn.gpu };
        if (c.shared) {
          const Is = c.shared;
          const s = { gate: randomArray(Is * H, seed + 6, 0.3), up: randomArray(Is * H, seed + 7, 0.3), down: randomArray(H * Is, seed + 8, 0.3), gateLogit: randomArray(H, seed + 9, 0.3) };
          host.shared = s;
          w.shared = { gate: makeWeight(dev, s.gate, Is, H, 'f32'), up: makeWeight(dev, s.up, Is, H, 'f32'), down: makeWeight(dev, s.down, H, Is, 'f32'), gateLogit: makeWeight(dev, s.gateLogit, 1, H, 'f32') };
        }
        const x = randomArray(8 * H, seed + 10, 1);
        const residual = randomArray(8 * H, seed + 11, 1);
        const xBuf = bufferFrom(dev, x);
        const hidden = bufferFrom(dev, residual);
        const scratch = createMoeScratch(dev, o);
        const op = createMoe(ctx, w, scratch, xBuf, hidden);
        const enc = dev.createCommandEncoder();
        const pass = enc.beginComputePass();
        op.encode(pass, T);
        pass.end();
        dev.queue.submit([enc.finish()]);
        const got = await readF32(dev, hidden, T * H);
        expectClose(got, reference(o, host, x, residual, T).subarray(0, T * H), { relL2: 1e-5, maxAbs: 1e-4 }, c.name);
        op.destroy();
        scratch.destroy();
      });
    }
  }

  it('refuses k larger than the number of experts, and mismatched expert shapes', async () => {
    const gpu = await testGpu();
    const dev = gpu.device;
    const base: MoeOptions = { hidden: 32, experts: 4, k: 5, intermediate: 16, routing: 'topk_softmax', normTopk: true, sharedIntermediate: 0, maxTokens: 2 };
    expect(() => createMoeScratch(dev, base)).toThrow(MoeError);
    expect(() => createMoeScratch(dev, base)).toThrow(/experts per token 5 outside 1\.\.4/);
    const o = { ...base, k: 2 };
    const scratch = createMoeScratch(dev, o);
    const gu = experts(dev, randomArray(4 * 32 * 32, 1), 4, 32, 32, 'f32', [4]).gpu;
    const dn = experts(dev, randomArray(4 * 32 * 8, 2), 4, 32, 8, 'f32', [4]).gpu; // I = 8, not 16
    const w: MoeWeights = { router: makeWeight(dev, randomArray(4 * 32, 3), 4, 32, 'f32'), gateUp: gu, down: dn };
    expect(() => createMoe(opContext(gpu, 'software'), w, scratch, emptyBuffer(dev, 2 * 32 * 4), emptyBuffer(dev, 2 * 32 * 4))).toThrow(/down experts: experts \[4, 32, 8\], expected \[4, 32, 16\]/);
    scratch.destroy();
  });
});

/** A one-layer Mixtral folder (2 experts) with the given tensors left out or reshaped. */
function tinyMixtral(name: string, opts: { drop?: string; reshape?: [string, number[]]; config?: Record<string, unknown> } = {}): string {
  const H = 32;
  const I = 16;
  const shapes: [string, number[]][] = [
    ['model.embed_tokens.weight', [16, H]], ['lm_head.weight', [16, H]], ['model.norm.weight', [H]],
    ['model.layers.0.input_layernorm.weight', [H]], ['model.layers.0.post_attention_layernorm.weight', [H]],
    ['model.layers.0.self_attn.q_proj.weight', [H, H]], ['model.layers.0.self_attn.k_proj.weight', [H, H]],
    ['model.layers.0.self_attn.v_proj.weight', [H, H]], ['model.layers.0.self_attn.o_proj.weight', [H, H]],
    ['model.layers.0.block_sparse_moe.gate.weight', [2, H]],
  ];
  for (const e of [0, 1]) {
    const p = `model.layers.0.block_sparse_moe.experts.${e}.`;
    shapes.push([`${p}w1.weight`, [I, H]], [`${p}w3.weight`, [I, H]], [`${p}w2.weight`, [H, I]]);
  }
  const tensors = shapes
    .filter(([n]) => n !== opts.drop)
    .map(([n, shape]) => {
      const sh = opts.reshape?.[0] === n ? opts.reshape[1] : shape;
      return { name: n, dtype: 'F32' as const, shape: sh, data: randomArray(sh.reduce((a, b) => a * b, 1), 1) };
    });
  const dir = path.join(tmpdir(), `wgc-moe-bad-${name}-${process.pid}`);
  mkdirSync(dir, { recursive: true });
  const config = {
    architectures: ['MixtralForCausalLM'], model_type: 'mixtral', hidden_size: H, intermediate_size: I, num_hidden_layers: 1,
    num_attention_heads: 4, num_key_value_heads: 4, num_local_experts: 2, num_experts_per_tok: 1, vocab_size: 16,
    max_position_embeddings: 64, rms_norm_eps: 1e-5, rope_theta: 10000, torch_dtype: 'float32', ...opts.config,
  };
  writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
  writeFileSync(path.join(dir, 'model.safetensors'), writeSafetensors(tensors));
  return dir;
}

describe('moe checkpoints', () => {
  it('loads a well-formed one and names what is wrong with bad ones', async () => {
    const gpu = await testGpu();
    const ok = await loadModel(tinyMixtral('ok'), { gpu });
    // Every resident byte was planned; a decode step reads all but the embedding table and one of the two experts.
    expect(ok.info.weightBytes).toBe(planMemory(ok.info.config, ok.info.dtype, 64, { tiles: ok.info.variant === 'software' }).weightBytes);
    const [H, I] = [32, 16]; // tinyMixtral's hidden and expert sizes, in f32
    expect(ok.info.bytesPerToken).toBe(ok.info.weightBytes - 16 * H * 4 - (2 * 3 * I * H * 4) / 2);
    ok.dispose();
    await expect(loadModel(tinyMixtral('missing', { drop: 'model.layers.0.block_sparse_moe.experts.1.w2.weight' }), { gpu })).rejects.toThrow(
      /lacks 1 tensor\(s\) the config needs, e\.g\. model\.layers\.0\.block_sparse_moe\.experts\.1\.w2\.weight/,
    );
    await expect(loadModel(tinyMixtral('shape', { reshape: ['model.layers.0.block_sparse_moe.experts.0.w1.weight', [8, 32]] }), { gpu })).rejects.toThrow(
      /experts\.0\.w1\.weight has shape \[8,32\] but config\.json implies \[16,32\]/,
    );
    await expect(loadModel(tinyMixtral('k', { config: { num_experts_per_tok: 3 } }), { gpu })).rejects.toThrow(/num_experts_per_tok \(3\) is larger than the number of experts \(2\)/);
  });
});
