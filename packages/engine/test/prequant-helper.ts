// Packs known int4 weights in GPTQ's and AWQ's published layouts (written from the formats'
// definitions: AutoGPTQ's QuantLinear.pack and AutoAWQ's WQLinear_GEMM.from_linear), and writes
// model folders holding them, beside a dense twin whose weights are the exact dequantized values.
import { mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { f16ToF32, f32ToF16 } from '../src/dtype.ts';
import { directorySource } from '../src/files.ts';
import { openCheckpoint } from '../src/safetensors.ts';
import { writeSafetensors, type TensorToWrite } from '../src/safetensors-writer.ts';
import { rng } from './harness.ts';

/** Known integers of one layer W [N, K]: q[n * K + k] in 0..15, zero[g * N + n], scale bits (f16) [g * N + n]. */
export interface Int4Layer {
  N: number;
  K: number;
  G: number;
  q: Uint8Array;
  zero: Uint8Array;
  scale: Uint16Array;
  /** Group of each input column (act-order when not k / G). */
  gIdx: Int32Array;
}

export function randomInt4Layer(N: number, K: number, G: number, seed: number, opts: { actOrder?: boolean; sym?: boolean } = {}): Int4Layer {
  const r = rng(seed);
  const groups = K / G;
  const q = Uint8Array.from({ length: N * K }, () => Math.floor(r() * 16));
  const zero = Uint8Array.from({ length: groups * N }, () => (opts.sym ? 8 : 1 + Math.floor(r() * 15)));
  const scale = Uint16Array.from({ length: groups * N }, () => f32ToF16(0.005 + 0.02 * r()));
  const gIdx = Int32Array.from({ length: K }, (_, k) => Math.floor(k / G));
  if (opts.actOrder) {
    for (let i = K - 1; i > 0; i--) {
      const j = Math.floor(r() * (i + 1));
      [gIdx[i], gIdx[j]] = [gIdx[j]!, gIdx[i]!];
    }
  }
  return { N, K, G, q, zero, scale, gIdx };
}

/** W [N, K] as f32: scale * (q - zero), exactly what a correct reader computes. */
export function dequantInt4(l: Int4Layer): Float32Array {
  const w = new Float32Array(l.N * l.K);
  for (let n = 0; n < l.N; n++) {
    for (let k = 0; k < l.K; k++) {
      const g = l.gIdx[k]!;
      w[n * l.K + k] = f16ToF32(l.scale[g * l.N + n]!) * (l.q[n * l.K + k]! - l.zero[g * l.N + n]!);
    }
  }
  return w;
}

/** GPTQ ('gptq' checkpoint format, zeros stored minus one): qweight [K/8, N], qzeros [groups, N/8], scales, g_idx. */
export function packGptq(l: Int4Layer, prefix: string): TensorToWrite[] {
  const { N, K } = l;
  const groups = K / l.G;
  const qweight = new Uint32Array((K / 8) * N);
  for (let k = 0; k < K; k++) for (let n = 0; n < N; n++) qweight[(k >> 3) * N + n]! |= l.q[n * K + k]! << (4 * (k % 8));
  const qzeros = new Uint32Array(groups * (N / 8));
  for (let g = 0; g < groups; g++) for (let n = 0; n < N; n++) qzeros[g * (N / 8) + (n >> 3)]! |= (l.zero[g * N + n]! - 1) << (4 * (n % 8));
  return [
    { name: `${prefix}.qweight`, dtype: 'I32', shape: [K / 8, N], data: qweight },
    { name: `${prefix}.qzeros`, dtype: 'I32', shape: [groups, N / 8], data: qzeros },
    { name: `${prefix}.scales`, dtype: 'F16', shape: [groups, N], data: l.scale },
    { name: `${prefix}.g_idx`, dtype: 'I32', shape: [K], data: l.gIdx },
  ];
}

const AWQ_PACK_ORDER = [0, 2, 4, 6, 1, 3, 5, 7];

/** AWQ GEMM: qweight [K, N/8] and qzeros [groups, N/8], nibble i holding column 8c + order[i]; scales. */
export function packAwq(l: Int4Layer, prefix: string): TensorToWrite[] {
  const { N, K } = l;
  const groups = K / l.G;
  const nw = N / 8;
  const qweight = new Uint32Array(K * nw);
  const qzeros = new Uint32Array(groups * nw);
  for (let c = 0; c < nw; c++) {
    for (let i = 0; i < 8; i++) {
      const n = 8 * c + AWQ_PACK_ORDER[i]!;
      for (let k = 0; k < K; k++) qweight[k * nw + c]! |= l.q[n * K + k]! << (4 * i);
      for (let g = 0; g < groups; g++) qzeros[g * nw + c]! |= l.zero[g * N + n]! << (4 * i);
    }
  }
  return [
    { name: `${prefix}.qweight`, dtype: 'I32', shape: [K, nw], data: qweight },
    { name: `${prefix}.qzeros`, dtype: 'I32', shape: [groups, nw], data: qzeros },
    { name: `${prefix}.scales`, dtype: 'F16', shape: [groups, N], data: l.scale },
  ];
}

const LINEAR = /^model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight$/;

/**
 * From a generated f32 model folder, writes a GPTQ or AWQ folder (every decoder linear replaced by
 * random known int4 values in that layout) and its dense twin (the same values dequantized, f32).
 */
export async function writePrequantPair(
  denseDir: string,
  method: 'gptq' | 'awq',
  G: number,
  opts: { actOrder?: boolean; sym?: boolean; seed?: number } = {},
): Promise<{ quantDir: string; dequantDir: string }> {
  const ckpt = await openCheckpoint(directorySource(denseDir));
  const config = JSON.parse((await directorySource(denseDir).text('config.json'))!) as Record<string, unknown>;
  const quant: TensorToWrite[] = [];
  const dense: TensorToWrite[] = [];
  let seed = opts.seed ?? 1;
  for (const [name, info] of ckpt.tensors) {
    const data = await ckpt.read(name);
    const copy = { name, dtype: info.dtype, shape: info.shape, data: data.slice() };
    if (!LINEAR.test(name)) {
      quant.push(copy);
      dense.push(copy);
      continue;
    }
    const [N, K] = info.shape as [number, number];
    const layer = randomInt4Layer(N, K, G, seed++, opts);
    const prefix = name.replace(/\.weight$/, '');
    quant.push(...(method === 'gptq' ? packGptq(layer, prefix) : packAwq(layer, prefix)));
    dense.push({ name, dtype: 'F32', shape: [N, K], data: dequantInt4(layer) });
  }
  const base = join(tmpdir(), `wgc-${method}-${process.pid}-${Math.floor(Math.random() * 1e9)}`);
  const quantDir = join(base, 'quant');
  const dequantDir = join(base, 'dense');
  const qc =
    method === 'gptq'
      ? { quant_method: 'gptq', bits: 4, group_size: G, desc_act: !!opts.actOrder, sym: !!opts.sym, checkpoint_format: 'gptq' }
      : { quant_method: 'awq', bits: 4, group_size: G, zero_point: true, version: 'gemm' };
  for (const [dir, tensors, cfg] of [
    [quantDir, quant, { ...config, quantization_config: qc }],
    [dequantDir, dense, config],
  ] as const) {
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'config.json'), JSON.stringify(cfg));
    writeFileSync(join(dir, 'model.safetensors'), writeSafetensors(tensors, { format: 'pt' }));
  }
  return { quantDir, dequantDir };
}
