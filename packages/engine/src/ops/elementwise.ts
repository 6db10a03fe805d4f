// Elementwise ops (kernels/elementwise.wgsl): the gated-MLP product, residual add, copy, and
// an in-place scale with optional soft-capping.

import { bindGroup, dispatch, grid, type Kernel } from '../kernel.ts';
import { type OpContext, ParamsBuffer } from './context.ts';

export class ElementwiseError extends Error {
  override name = 'ElementwiseError';
}

/** gate and up as two [rows, cols] buffers, or one fused [rows, 2 * cols] buffer with gate in the first half. */
export type GateUp = { gate: GPUBuffer; up: GPUBuffer } | { gateUp: GPUBuffer };

/** The gate's activation in a gated MLP: SiLU (SwiGLU) or GELU's tanh approximation (GeGLU, HF `gelu_pytorch_tanh`). */
export type GateActivation = 'silu' | 'gelu_tanh';

export interface SiluMulOp {
  /** out[0..rows) = act(gate) * up. */
  encode(pass: GPUComputePassEncoder, rows: number): void;
  destroy(): void;
}

export interface AddOp {
  /** a[0..count) += scale * b[0..count). */
  encode(pass: GPUComputePassEncoder, count: number): void;
  destroy(): void;
}

export interface CopyOp {
  /** dst[dstOffset + i] = src[srcOffset + i] for i < count (offsets and count in f32 elements). */
  encode(pass: GPUComputePassEncoder, count: number, srcOffset?: number, dstOffset?: number): void;
  destroy(): void;
}

const WG = 64;

function launch(ctx: OpContext, pass: GPUComputePassEncoder, kernel: Kernel, group: GPUBindGroup, threads: number): void {
  dispatch(pass, kernel, group, ...grid(Math.ceil(threads / WG), ctx.limits.maxComputeWorkgroupsPerDimension));
}

function checkCount(n: number, max: number, what: string): void {
  if (!(Number.isInteger(n) && n >= 1 && n <= max)) throw new ElementwiseError(`${what} ${n} outside 1..${max}`);
}

export interface ScaleCapOp {
  /** a[0..count) = cap · tanh(a · scale / cap), or a · scale without a cap. */
  encode(pass: GPUComputePassEncoder, count: number): void;
  destroy(): void;
}

/** out: [maxRows, cols] f32; maxRows is the most rows that gate, up and out all hold. */
export function createSiluMul(ctx: OpContext, cols: number, input: GateUp, out: GPUBuffer, activation: GateActivation = 'silu'): SiluMulOp {
  const kernel = ctx.kernels.get('elementwise', { GELU_TANH: activation === 'gelu_tanh' }, { WG }, 'siluMul');
  const params = new ParamsBuffer(ctx.device, kernel);
  if (!(Number.isInteger(cols) && cols >= 1)) throw new ElementwiseError(`cols ${cols} must be a positive integer`);
  const fused = 'gateUp' in input;
  const gate = fused ? input.gateUp : input.gate;
  const up = fused ? input.gateUp : input.up;
  const stride = fused ? 2 * cols : cols;
  const maxRows = Math.floor(Math.min(out.size / cols, gate.size / stride, up.size / stride) / 4);
  if (maxRows < 1) throw new ElementwiseError(`gate/up/out buffers hold no row of ${cols} values`);
  const group = bindGroup(ctx.device, kernel, [params.buffer, gate, up, out]);
  return {
    encode(pass, rows) {
      checkCount(rows, maxRows, 'rows');
      params.set({ rows, cols, gateStride: stride, gateOffset: 0, upStride: stride, upOffset: fused ? cols : 0 });
      launch(ctx, pass, kernel, group, rows * cols);
    },
    destroy: () => params.destroy(),
  };
}

/** a += scale * b elementwise; a and b must be different buffers. */
export function createAdd(ctx: OpContext, a: GPUBuffer, b: GPUBuffer, scale = 1): AddOp {
  if (a === b) throw new ElementwiseError('add: a and b must be different buffers');
  if (!Number.isFinite(scale)) throw new ElementwiseError(`add: scale ${scale} must be a finite number`);
  const kernel = ctx.kernels.get('elementwise', {}, { WG }, 'add');
  const params = new ParamsBuffer(ctx.device, kernel);
  const max = Math.floor(Math.min(a.size, b.size) / 4);
  const group = bindGroup(ctx.device, kernel, [params.buffer, a, b]);
  return {
    encode(pass, count) {
      checkCount(count, max, 'count');
      params.set({ count, scale });
      launch(ctx, pass, kernel, group, count);
    },
    destroy: () => params.destroy(),
  };
}

/** a = cap · tanh(a · scale / cap) in place (cap 0: a · scale), e.g. scaled embeddings or soft-capped logits. */
export function createScaleCap(ctx: OpContext, a: GPUBuffer, opts: { scale?: number; cap?: number }): ScaleCapOp {
  const scale = opts.scale ?? 1;
  const cap = opts.cap ?? 0;
  if (!Number.isFinite(scale)) throw new ElementwiseError(`scale ${scale} must be a finite number`);
  if (!(Number.isFinite(cap) && cap >= 0)) throw new ElementwiseError(`cap ${cap} must be a non-negative number`);
  const kernel = ctx.kernels.get('elementwise', {}, { WG }, 'scaleCap');
  const params = new ParamsBuffer(ctx.device, kernel);
  const group = bindGroup(ctx.device, kernel, [params.buffer, a]);
  const max = Math.floor(a.size / 4);
  return {
    encode(pass, count) {
      checkCount(count, max, 'count');
      params.set({ count, scale, cap });
      launch(ctx, pass, kernel, group, count);
    },
    destroy: () => params.destroy(),
  };
}

/** Copies f32 ranges from src to dst (different buffers) inside a compute pass. */
export function createCopy(ctx: OpContext, src: GPUBuffer, dst: GPUBuffer): CopyOp {
  if (src === dst) throw new ElementwiseError('copy: src and dst must be different buffers');
  const kernel = ctx.kernels.get('elementwise', {}, { WG }, 'copy');
  const params = new ParamsBuffer(ctx.device, kernel);
  const group = bindGroup(ctx.device, kernel, [params.buffer, src, dst]);
  return {
    encode(pass, count, srcOffset = 0, dstOffset = 0) {
      checkCount(count, Math.floor(src.size / 4), 'count');
      if (srcOffset + count > src.size / 4 || dstOffset + count > dst.size / 4)
        throw new ElementwiseError(`copy of ${count} at ${srcOffset} -> ${dstOffset} runs past a buffer`);
      params.set({ count, srcOffset, dstOffset });
      launch(ctx, pass, kernel, group, count);
    },
    destroy: () => params.destroy(),
  };
}
