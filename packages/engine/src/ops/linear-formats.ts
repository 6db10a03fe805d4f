// Weight formats of the linear op: what one format's kernels need, as one descriptor, so every
// format shares the op's build, dispatch and encode path (ops/linear.ts). A format names its
// kernel families and their defines and constants (the WGSL side is one dequantisation snippet
// each: kernels/unpack16.wgsl for bf16/f16, dequant_q8.wgsl and dequant_q4.wgsl), its bindings
// beyond x and the outputs, its groups per row, the bytes a chunk stores, the x paths its kernels
// can take, and an optional prepass over x (GPTQ act-order's column gather). A new quantized
// format (a k-quant, fp8, MXFP4 for dense layers) is one descriptor here plus one dequant snippet
// the q kernels include under its define.

import { BYTES_PER_ELEMENT, type WeightDtype } from '../dtype.ts';
import type { Constants, Defines } from '../kernel.ts';
import { storageUsage } from '../buffers.ts';
import { type QuantSpec, checkSpec, groupsPerRow, quantBytes, rowWords } from '../quant.ts';
import { tiledRows } from '../tiles.ts';
import { type OpContext, ParamsBuffer } from './context.ts';
import { type LinearWeight, type WeightChunk, LinearError } from './linear-types.ts';

/** Bytes of the 64 KiB uniform window x is read through on the software variant. */
export const UNIFORM_X_BYTES = 65536;
const GATHER_WG = 64;

/** Whether a format's kernels can take an x path, and what it needs of the weight when they cannot. */
export interface XPath {
  ok: boolean;
  needs: string;
}

/** A pass over x before the product, writing the x the kernels read. */
export interface Prepass {
  x: GPUBuffer;
  encode(pass: GPUComputePassEncoder, tokens: number): void;
  destroy(): void;
}

export interface WeightFormat {
  /** Kernel families of the two shapes: one token (and on software, up to 8), and many. */
  families: { matvec: string; matmul: string };
  /** Defines and override constants of every kernel of the format. */
  defines: Defines;
  constants: Constants;
  /** Quantization groups per row (Params.groups of kernels/linear_io.wgsl; 0 for dense formats). */
  groups: number;
  /** Values of a row of x the matvec reads: K, or K padded to whole quantization groups. */
  xSpan: number;
  /** Software x paths: subgroup broadcasts and (matvec) the uniform window, as far as the weight allows. */
  subgroupX: XPath;
  uniformX: XPath;
  /** Whether the software matvec can run several tokens a dispatch without subgroup x. */
  matvecTokens: XPath;
  /**
   * Defines a shape's kernels take from the format and the x path: the dense kernels' vector loads,
   * and the dense matmul's x path (its entry points share one set of bindings per path; matmul_q's
   * entry points take theirs by name).
   */
  shapeDefines(shape: 'matvec' | 'matmul', path: { gpu: boolean; sgx: boolean; xu: boolean }): Defines;
  /** A chunk's bindings: the weight (binding 1) and any more (scales, binding 5). */
  bindings(c: WeightChunk): GPUBindGroupEntry[];
  prepass?(ctx: OpContext, x: GPUBuffer, maxTokens: number): Prepass;
}

/** Bytes a chunk of `elements` weights occupies (16-bit formats padded to whole u32s). */
function chunkBytes(dtype: WeightDtype, elements: number): number {
  return dtype === 'f32' ? elements * 4 : Math.ceil(elements / 2) * 4;
}

/** Rows a chunk stores: its own, padded to whole tiles when the weight is tiled. */
export function storedRows(w: Pick<LinearWeight, 'tiled'>, c: Pick<WeightChunk, 'rows'>): number {
  return w.tiled ? tiledRows(c.rows) : c.rows;
}

/**
 * Bytes a weight's chunk occupies: its rows (padded to whole tiles when tiled) as dense elements,
 * or, quantized, as packed words and scale words. What the loader plans (load-plan.ts) and what
 * the buffers it creates hold.
 */
export function storedBytes(w: Pick<LinearWeight, 'dtype' | 'cols' | 'tiled'> & { quant?: QuantSpec | undefined }, c: Pick<WeightChunk, 'rows'>): number {
  if (w.quant) return quantBytes(w.quant, storedRows(w, c), w.cols);
  return chunkBytes(w.dtype, storedRows(w, c) * w.cols);
}

export function weightDefines(dtype: WeightDtype): Defines {
  return { W16: dtype !== 'f32', WBF16: dtype === 'bf16', WF16: dtype === 'f16' };
}

/**
 * Checks a chunked weight (chunks in order without gaps, each buffer large enough) and returns
 * its format.
 */
export function weightFormat(w: LinearWeight, what = 'weight'): WeightFormat {
  if (w.quant) checkSpec(w.quant, what);
  else if (!(w.dtype in BYTES_PER_ELEMENT)) throw new LinearError(`${what}: unknown dtype '${w.dtype}'`);
  if (!(Number.isInteger(w.rows) && w.rows > 0 && Number.isInteger(w.cols) && w.cols > 0)) {
    throw new LinearError(`${what}: bad shape [${w.rows}, ${w.cols}]`);
  }
  if (w.tiled && !w.quant && w.cols % 8 !== 0) throw new LinearError(`${what}: tiled weights need cols % 8 == 0, got ${w.cols}`);
  const format = w.quant ? quantFormat(w, what) : denseFormat(w, what);
  let next = 0;
  for (const [i, c] of w.chunks.entries()) {
    if (c.rowStart !== next || !(Number.isInteger(c.rows) && c.rows > 0)) {
      throw new LinearError(`${what}: chunk ${i} covers rows [${c.rowStart}, ${c.rowStart + c.rows}), expected to start at ${next}`);
    }
    format.checkChunk(c, i);
    next += c.rows;
  }
  if (next !== w.rows) throw new LinearError(`${what}: chunks cover ${next} rows of ${w.rows}`);
  return format;
}

/** Checks a chunked weight: chunks in order, no gaps, each buffer large enough. */
export function checkWeight(w: LinearWeight, what = 'weight'): void {
  weightFormat(w, what);
}

type CheckedFormat = WeightFormat & { checkChunk(c: WeightChunk, i: number): void };

/** f32, bf16 or f16 (16-bit weights packed two per u32, unpacked by kernels/unpack16.wgsl). */
function denseFormat(w: LinearWeight, what: string): CheckedFormat {
  const K = w.cols;
  const vec8 = K % 8 === 0; // the matvec's loads: 8 weights
  return {
    families: { matvec: 'matvec', matmul: 'matmul' },
    defines: weightDefines(w.dtype),
    constants: {},
    groups: 0,
    xSpan: K,
    subgroupX: { ok: vec8, needs: 'K % 8 == 0' },
    uniformX: { ok: vec8 && K * 4 <= UNIFORM_X_BYTES, needs: 'K % 8 == 0, K <= 16384' },
    matvecTokens: { ok: true, needs: '' },
    shapeDefines: (shape, { gpu, sgx, xu }) => (shape === 'matvec' ? { VEC: vec8 } : { VEC: K % 4 === 0 && !gpu && !sgx, XU: xu, SGX: sgx }),
    bindings: (c) => [{ binding: 1, resource: { buffer: c.buffer, size: storedBytes(w, c) } }],
    checkChunk(c, i) {
      const bytes = storedBytes(w, c);
      if (c.buffer.size < bytes) throw new LinearError(`${what}: chunk ${i} buffer has ${c.buffer.size} bytes, needs ${bytes}`);
    },
  };
}

/**
 * q8 / q4 in src/quant.ts's layout (words and per-group scale words; load-time quantization and
 * the GPTQ / AWQ repacks alike), dequantized inside the kernels (kernels/dequant_q8.wgsl, dequant_q4.wgsl).
 */
function quantFormat(w: LinearWeight, what: string): CheckedFormat {
  const q = w.quant!;
  const K = w.cols;
  const groups = groupsPerRow(q, K);
  const words = rowWords(q, K);
  const span = groups * q.groupSize;
  const tiles = w.tiled ? ' (tiled)' : '';
  if (q.perm && q.perm.size < K * 4) throw new LinearError(`${what}: column permutation has ${q.perm.size} bytes, needs ${K * 4}`);
  return {
    families: { matvec: 'matvec_q', matmul: 'matmul_q' },
    defines: { Q4: q.format === 'q4', TAIL: K % q.groupSize !== 0 },
    constants: { G: q.groupSize },
    groups,
    xSpan: span,
    subgroupX: { ok: true, needs: 'nothing more of the weight' },
    uniformX: { ok: span * 4 <= UNIFORM_X_BYTES, needs: `K padded to groups (${span}) <= 16384` },
    matvecTokens: { ok: K % 4 === 0, needs: 'K % 4 != 0 without subgroup x' },
    shapeDefines: () => ({}),
    bindings: (c) => [
      { binding: 1, resource: { buffer: c.buffer, size: storedRows(w, c) * words * 4 } },
      { binding: 5, resource: { buffer: c.scales!, size: storedRows(w, c) * groups * 4 } },
    ],
    checkChunk(c, i) {
      const stored = storedRows(w, c);
      if (c.buffer.size < stored * words * 4) throw new LinearError(`${what}: chunk ${i} has ${c.buffer.size} bytes of ${q.format} weights, needs ${stored * words * 4}${tiles}`);
      if (!c.scales) throw new LinearError(`${what}: chunk ${i} has no scales buffer`);
      if (c.scales.size < stored * groups * 4) throw new LinearError(`${what}: chunk ${i} has ${c.scales.size} bytes of scales, needs ${stored * groups * 4}${tiles}`);
    },
    prepass: q.perm ? (ctx, x, maxTokens) => columnGather(ctx, q.perm!, x, K, maxTokens) : undefined,
  };
}

/**
 * x gathered through an act-order column permutation (kernels/gather_cols.wgsl) into a buffer the
 * op owns. It is made uniform-capable so the software kernels can still read it as one; its size
 * is rounded to the 256-byte binding alignment so the last window can end there.
 */
function columnGather(ctx: OpContext, perm: GPUBuffer, x: GPUBuffer, K: number, maxTokens: number): Prepass {
  const xq = ctx.device.createBuffer({ size: Math.max(Math.ceil((maxTokens * K * 4) / 256) * 256, UNIFORM_X_BYTES), usage: storageUsage() | GPUBufferUsage.UNIFORM, label: 'x permuted' });
  const kernel = ctx.kernels.get('gather_cols', {}, { WG: GATHER_WG });
  const params = new ParamsBuffer(ctx.device, kernel, { K });
  const group = ctx.device.createBindGroup({
    layout: kernel.pipeline.getBindGroupLayout(0),
    entries: [
      { binding: 0, resource: { buffer: params.buffer } },
      { binding: 1, resource: { buffer: perm } },
      { binding: 2, resource: { buffer: x } },
      { binding: 3, resource: { buffer: xq } },
    ],
    label: kernel.key,
  });
  const maxDim = ctx.limits.maxComputeWorkgroupsPerDimension;
  return {
    x: xq,
    encode(pass, tokens) {
      if (tokens > maxDim) throw new LinearError(`linear: ${tokens} tokens exceed the dispatch limit of the column gather`);
      params.set({ K });
      pass.setPipeline(kernel.pipeline);
      pass.setBindGroup(0, group);
      pass.dispatchWorkgroups(Math.ceil(K / GATHER_WG), tokens);
    },
    destroy() {
      params.destroy();
      xq.destroy();
    },
  };
}
