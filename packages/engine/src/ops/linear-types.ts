// The linear op's types, shared by the op (ops/linear.ts), its weight formats
// (ops/linear-formats.ts) and its epilogue (ops/linear-epilogue.ts); this module imports none of them.

import type { WeightDtype } from '../dtype.ts';
import type { QuantSpec } from '../quant.ts';

/** Rows [rowStart, rowStart + rows) of a weight, packed from the buffer's own element 0. */
export interface WeightChunk {
  buffer: GPUBuffer;
  rowStart: number;
  rows: number;
  /** Quantized weights only: [rows, groups] u32 scale words (src/quant.ts). */
  scales?: GPUBuffer;
}

/** A [rows, cols] row-major weight (N x K for a linear layer), bf16/f16 packed two per u32. */
export interface LinearWeight {
  dtype: WeightDtype;
  rows: number;
  cols: number;
  /** In row order, covering rows 0 .. rows-1 without gaps. */
  chunks: WeightChunk[];
  /**
   * Each chunk's rows are in row tiles (src/tiles.ts; the software kernels' layout, cols % 8 == 0)
   * rather than row-major, padded to whole tiles.
   */
  tiled?: boolean;
  /** f32 [rows], added to every output row. */
  bias?: GPUBuffer;
  /**
   * Set for q8/q4 weights (chunks hold packed words and scales, src/quant.ts; `dtype` is then the
   * checkpoint's and unused by the kernels). `perm` (u32 [cols]): the weight's columns are stored in
   * this order (GPTQ act-order), so x[perm[j]] meets column j.
   */
  quant?: QuantSpec & { perm?: GPUBuffer };
  /**
   * Rows stacked from several weights (src/fuse.ts), written to one output each: [q, k, v] widths
   * of a fused attention input projection.
   */
  split?: [number, number, number];
  /**
   * Gate and up rows interleaved in blocks of this many rows (gate rows, then the same up rows;
   * src/fuse.ts); the op writes silu(gate) * up, rows / 2 columns.
   */
  glu?: number;
}

export interface LinearOptions {
  /** y += x W^T (+ bias) instead of y = ..., to fuse a residual add. */
  accumulate?: boolean;
  /** Most tokens one encode may run (x and y must hold that many rows). Default 1. */
  maxTokens?: number;
  /**
   * Use one kernel shape whatever the token count (tests, benchmarks, batch invariance). 'matvec'
   * on the software variant runs any count in dispatches of up to MATVEC_MAX_TOKENS tokens (each
   * token summed as in a one-token step); on the GPU variant it runs one token only.
   */
  force?: 'matvec' | 'matmul';
  /**
   * Read x for the matvec through a uniform binding (faster for 16-bit weights on lavapipe).
   * Default: when the variant is 'software', the format's row of x fits 64 KiB (K <= 16384; dense
   * weights also need K % 8 == 0), and x was created with UNIFORM usage and holds at least 64 KiB
   * (the binding always spans 64 KiB).
   */
  uniformX?: boolean;
  /**
   * Read x for the matmul through 64 KiB uniform windows of 16 tokens each (2x faster on lavapipe).
   * Default: when the variant is 'software', K % 4 == 0, 16 tokens of x plus the 256-byte binding
   * alignment fit 64 KiB (K <= 1020), and x was created with UNIFORM usage and holds at least 64 KiB.
   */
  matmulUniformX?: boolean;
  /**
   * Read x through subgroup broadcasts (kernels/subgroup_x.wgsl; on lavapipe +10% decode and
   * 1.3-1.5x prefill against the uniform windows). Default: when the variant is 'software', the
   * device has subgroups of exactly 8, dense weights have K % 8 == 0, and neither uniformX (matvec)
   * nor matmulUniformX (matmul) is asked for.
   */
  subgroupX?: boolean;
  /**
   * GPU variant: x is the residual stream and the RMSNorm before this layer (weight [K], eps) is
   * applied inside the kernel, saving the norm's own dispatch and pass over memory.
   */
  norm?: { weight: GPUBuffer; eps: number };
}

export interface LinearOp {
  /** Records y = x W^T for the first `tokens` rows of x into `pass`. */
  encode(pass: GPUComputePassEncoder, tokens: number): void;
  destroy(): void;
}

/** The outputs of a weight for up to maxTokens tokens: one buffer, or one per part of a stacked weight. */
export type LinearOutput = GPUBuffer | readonly GPUBuffer[];

export class LinearError extends Error {
  override name = 'LinearError';
}
