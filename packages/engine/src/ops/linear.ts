// Linear layer y[t, n] (+)= sum_k x[t, k] * W[n, k] (+ bias[n]) with W in f32/bf16/f16, split by
// rows into chunks that each fit one storage binding. One token uses kernels/matvec.wgsl (decode),
// several use kernels/matmul.wgsl (prefill); each dispatches once per chunk. On the software variant
// steps of up to MATVEC_MAX_TOKENS tokens (a decode step over several sequences) use the matvec
// too, its threads looping over the tokens, which sums every token's outputs in the same order as
// a one-token step: a row's output does not depend on how many rows share its step. What happens to the
// output columns (split to several outputs, gated, RMSNorm applied) is ops/linear-epilogue.ts.

import { BYTES_PER_ELEMENT, type WeightDtype } from '../dtype.ts';
import { type Constants, type Defines, type Kernel, grid } from '../kernel.ts';
import { type OpContext, ParamsBuffer } from './context.ts';
import type { QuantSpec } from '../quant.ts';
import { checkQuantWeight, createQuantLinear } from './linear-quant.ts';
import { type LinearOutput, linearEpilogue } from './linear-epilogue.ts';
import { tiledRows } from '../tiles.ts';

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
   * Use one kernel family whatever the token count (tests, benchmarks, batch invariance). 'matvec'
   * on the software variant runs any count in dispatches of up to MATVEC_MAX_TOKENS tokens (each
   * token summed as in a one-token step); on the GPU variant it runs one token only.
   */
  force?: 'matvec' | 'matmul';
  /**
   * Read x for the matvec through a uniform binding (faster for 16-bit weights on lavapipe).
   * Default: when the variant is 'software', K % 8 == 0, K <= 16384, and x was created with
   * UNIFORM usage and holds at least 64 KiB (the binding always spans 64 KiB).
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
   * 1.3-1.5x prefill against the uniform windows). Default: when the variant is 'software',
   * K % 8 == 0, the device has subgroups of exactly 8 and neither uniformX (matvec) nor
   * matmulUniformX (matmul) is asked for.
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

export class LinearError extends Error {
  override name = 'LinearError';
}

export const UNIFORM_X_BYTES = 65536;
const MATVEC_SOFTWARE_WG = 64;
/**
 * Most tokens one software matvec dispatch runs (its override TB, at most the kernels' TMAX = 8);
 * steps of 2..this many tokens use the matvec rather than the matmul (measured with
 * bench/src/batch-steps.ts).
 */
export const MATVEC_MAX_TOKENS = 8;
const MATMUL_SOFTWARE_WG = 64;
const MATMUL_SOFTWARE_TOKENS = 4; // tokens per thread in matmul.wgsl's software shape
const MATMUL_SGX_TOKENS = 16; // tokens per thread in its subgroup-x shape
const MATMUL_GPU_TILE = 64;
export const MATMUL_XU_TOKENS = 16; // tokens per thread (and per uniform window) in the matmul kernels' XU shape
const UNIFORM_OFFSET_ALIGN = 256;

/** Checks a chunked weight: chunks in order, no gaps, each buffer large enough. */
export function checkWeight(w: LinearWeight, what = 'weight'): void {
  if (w.quant) return checkQuantWeight(w, what);
  if (!(w.dtype in BYTES_PER_ELEMENT)) throw new LinearError(`${what}: unknown dtype '${w.dtype}'`);
  if (!(Number.isInteger(w.rows) && w.rows > 0 && Number.isInteger(w.cols) && w.cols > 0)) {
    throw new LinearError(`${what}: bad shape [${w.rows}, ${w.cols}]`);
  }
  if (w.tiled && w.cols % 8 !== 0) throw new LinearError(`${what}: tiled weights need cols % 8 == 0, got ${w.cols}`);
  let next = 0;
  for (const [i, c] of w.chunks.entries()) {
    if (c.rowStart !== next || !(Number.isInteger(c.rows) && c.rows > 0)) {
      throw new LinearError(`${what}: chunk ${i} covers rows [${c.rowStart}, ${c.rowStart + c.rows}), expected to start at ${next}`);
    }
    const bytes = storedBytes(w, c);
    if (c.buffer.size < bytes) throw new LinearError(`${what}: chunk ${i} buffer has ${c.buffer.size} bytes, needs ${bytes}`);
    next += c.rows;
  }
  if (next !== w.rows) throw new LinearError(`${what}: chunks cover ${next} rows of ${w.rows}`);
}

/** Bytes a dense weight's chunk occupies: its rows (padded to whole tiles when tiled). */
export function storedBytes(w: Pick<LinearWeight, 'dtype' | 'cols' | 'tiled'>, c: Pick<WeightChunk, 'rows'>): number {
  return chunkBytes(w.dtype, (w.tiled ? tiledRows(c.rows) : c.rows) * w.cols);
}

/** Bytes a chunk of `elements` weights occupies (16-bit formats padded to whole u32s). */
export function chunkBytes(dtype: WeightDtype, elements: number): number {
  return dtype === 'f32' ? elements * 4 : Math.ceil(elements / 2) * 4;
}

export function weightDefines(dtype: WeightDtype): Defines {
  return { W16: dtype !== 'f32', WBF16: dtype === 'bf16', WF16: dtype === 'f16' };
}

interface Dispatch {
  kernel: Kernel;
  params: ParamsBuffer;
  group: GPUBindGroup;
  rows: number;
  rowStart: number;
  /** XU matmul: the dispatch's first token and its x window's byte offset. */
  tokenBase?: number;
  xOffset?: number;
}

/** Where the uniform window of x for tokens [t0, t0 + 16) starts (bytes), or undefined if they do not fit one. */
export function xWindow(x: GPUBuffer, K: number, t0: number, maxTokens: number): number | undefined {
  const align = (b: number) => Math.floor(b / UNIFORM_OFFSET_ALIGN) * UNIFORM_OFFSET_ALIGN;
  const start = Math.min(align(t0 * K * 4), align(x.size - UNIFORM_X_BYTES));
  const end = Math.min(t0 + MATMUL_XU_TOKENS, maxTokens) * K * 4;
  return start >= 0 && end <= start + UNIFORM_X_BYTES ? start : undefined;
}

/** x can be bound as a 64 KiB uniform window. */
export function uniformCapable(x: GPUBuffer): boolean {
  return (x.usage & GPUBufferUsage.UNIFORM) !== 0 && x.size >= UNIFORM_X_BYTES;
}

/** Every group of 16 of maxTokens tokens of x [tokens, K] fits a uniform window. */
export function xWindowsFit(x: GPUBuffer, K: number, maxTokens: number): boolean {
  const groups = Math.ceil(maxTokens / MATMUL_XU_TOKENS);
  return Array.from({ length: groups }, (_, g) => xWindow(x, K, g * MATMUL_XU_TOKENS, maxTokens)).every((s) => s !== undefined);
}

export interface XPathsPossible {
  uniform: boolean;
  matmulUniform: boolean;
  subgroup: boolean;
  /** What each path needs of the weight's shape, for the error when a forced one cannot run. */
  needs: { uniform: string; matmulUniform: string; subgroup: string };
}

/**
 * How the matvec and the matmul read x (LinearOptions): through subgroup broadcasts where
 * possible, else uniform windows, else storage; an option forces a path or throws why it cannot.
 */
export function chooseXPaths(opts: LinearOptions, can: XPathsPossible): { xu: boolean; sgx: boolean; mmXu: boolean; mmSgx: boolean } {
  const refuse = (what: string, needs: string, more: string) => {
    throw new LinearError(`linear: ${what} needs the software variant, ${needs}${more}`);
  };
  const window = ' and x with UNIFORM usage and >= 64 KiB';
  if (opts.uniformX && !can.uniform) refuse('uniformX', can.needs.uniform, window);
  if (opts.matmulUniformX && !can.matmulUniform) refuse('matmulUniformX', can.needs.matmulUniform, window);
  if (opts.subgroupX && !can.subgroup) refuse('subgroupX', can.needs.subgroup, ' and subgroups of exactly 8');
  if (opts.subgroupX && (opts.uniformX || opts.matmulUniformX)) throw new LinearError('linear: subgroupX excludes uniformX and matmulUniformX');
  const sgx = opts.subgroupX ?? (can.subgroup && !opts.uniformX);
  const mmSgx = opts.subgroupX ?? (can.subgroup && !opts.matmulUniformX);
  return { sgx, xu: !sgx && (opts.uniformX ?? can.uniform), mmSgx, mmXu: !mmSgx && (opts.matmulUniformX ?? can.matmulUniform) };
}

/** y: one [maxTokens, N] f32 buffer, or for a split weight one per part ([maxTokens, width]). */
export function createLinear(ctx: OpContext, w: LinearWeight, x: GPUBuffer, y: LinearOutput, opts: LinearOptions = {}): LinearOp {
  if (w.quant) return createQuantLinear(ctx, w, x, y, opts);
  checkWeight(w, 'linear');
  const K = w.cols;
  const maxTokens = opts.maxTokens ?? 1;
  if (!(Number.isInteger(maxTokens) && maxTokens > 0)) throw new LinearError(`linear: bad maxTokens ${maxTokens}`);
  if (x.size < maxTokens * K * 4) throw new LinearError(`linear: x has ${x.size} bytes, needs ${maxTokens * K * 4} for ${maxTokens} x ${K} f32`);
  const gpu = ctx.variant === 'gpu';
  const epilogue = linearEpilogue(w, y, opts, maxTokens, gpu);
  const vec8 = K % 8 === 0; // matvec's loads: 8 weights
  const vec4 = K % 4 === 0; // software matmul's loads: 4 weights
  if (w.tiled && gpu) throw new LinearError('linear: tiled weights are for the software variant');
  const common: Defines = { ...weightDefines(w.dtype), ...epilogue.defines, GPU: gpu, TILED: !!w.tiled };
  const matvecGpu = epilogue.matvecGpu;

  const { xu, sgx, mmXu, mmSgx } = chooseXPaths(opts, {
    uniform: !gpu && vec8 && K * 4 <= UNIFORM_X_BYTES && uniformCapable(x),
    matmulUniform: !gpu && vec4 && uniformCapable(x) && xWindowsFit(x, K, maxTokens),
    subgroup: !gpu && vec8 && ctx.subgroups && ctx.subgroupSize === 8,
    needs: {
      uniform: 'K % 8 == 0, K <= 16384',
      matmulUniform: 'K % 4 == 0, K <= 1020',
      subgroup: 'K % 8 == 0',
    },
  });

  // tb, mvXu: the matvec's tokens per dispatch and whether its x is the uniform window. With
  // subgroups, 5..8 tokens load x a token per lane (SGXT: 1.3x the 8-token matvec on lavapipe).
  const build = (family: 'matvec' | 'matmul', tb = 1, mvXu = xu): Dispatch[] => {
    const defines: Defines =
      family === 'matvec'
        ? { ...common, VEC: vec8, XU: mvXu, SGX: sgx && tb <= 4, SGXT: sgx && tb > 4, SUBGROUPS: sgx }
        : { ...common, VEC: vec4 && !gpu && !mmSgx, XU: mmXu, SGX: mmSgx, SUBGROUPS: mmSgx };
    const constants: Constants = {
      ...epilogue.constants,
      ...(family === 'matvec' ? (gpu ? matvecGpu : { WG: MATVEC_SOFTWARE_WG, ...(tb > 1 ? { TB: tb } : {}) }) : gpu ? {} : { WG: MATMUL_SOFTWARE_WG }),
    };
    const kernel = ctx.kernels.get(family, defines, constants);
    const dispatch = (c: WeightChunk, xResource: GPUBufferBinding): Dispatch => {
      const entries: GPUBindGroupEntry[] = [
        { binding: 1, resource: { buffer: c.buffer, size: storedBytes(w, c) } },
        { binding: 2, resource: xResource },
        ...epilogue.entries,
      ];
      const params = new ParamsBuffer(ctx.device, kernel);
      entries.push({ binding: 0, resource: { buffer: params.buffer } });
      const group = ctx.device.createBindGroup({ layout: kernel.pipeline.getBindGroupLayout(0), entries, label: kernel.key });
      return { kernel, params, group, rows: c.rows, rowStart: c.rowStart };
    };
    if (family === 'matmul' && mmXu) {
      // Per chunk, one dispatch per group of 16 tokens, each with its own window of x.
      return w.chunks.flatMap((c) =>
        Array.from({ length: Math.ceil(maxTokens / MATMUL_XU_TOKENS) }, (_, g) => {
          const tokenBase = g * MATMUL_XU_TOKENS;
          const xOffset = xWindow(x, K, tokenBase, maxTokens)!;
          return { ...dispatch(c, { buffer: x, offset: xOffset, size: UNIFORM_X_BYTES }), tokenBase, xOffset };
        }),
      );
    }
    return w.chunks.map((c) => dispatch(c, family === 'matvec' && mvXu ? { buffer: x, size: UNIFORM_X_BYTES } : { buffer: x }));
  };

  const force = opts.force;
  const matvec = force !== 'matmul' ? build('matvec') : undefined;
  const matmul = force !== 'matvec' && (maxTokens > 1 || force === 'matmul') ? build('matmul') : undefined;
  const maxDim = ctx.limits.maxComputeWorkgroupsPerDimension;
  // Software matvec dispatches of tb tokens from token t0, built on first use.
  const multi = new Map<string, Dispatch[]>();
  const matvecAt = (tb: number, t0: number): Dispatch[] => {
    if (tb === 1 && t0 === 0) return matvec!;
    const key = `${tb}@${t0}`;
    let ds = multi.get(key);
    if (!ds) multi.set(key, (ds = build('matvec', tb, xu && (t0 + tb) * K * 4 <= UNIFORM_X_BYTES)));
    return ds;
  };

  return {
    encode(pass, tokens) {
      if (!(Number.isInteger(tokens) && tokens >= 1 && tokens <= maxTokens)) {
        throw new LinearError(`linear: tokens ${tokens} outside 1..${maxTokens}`);
      }
      let rowStart = 0;
      if (matvec && (tokens === 1 || !matmul || (!gpu && tokens <= MATVEC_MAX_TOKENS))) {
        if (tokens !== 1 && gpu) throw new LinearError(`linear: built with force 'matvec', cannot run ${tokens} tokens on the gpu variant`);
        for (let t0 = 0; t0 < tokens; t0 += MATVEC_MAX_TOKENS) {
          for (const d of matvecAt(Math.min(MATVEC_MAX_TOKENS, tokens - t0), t0)) {
            d.params.set({ K, rows: d.rows, colOffset: d.rowStart, tokenBase: t0, ...epilogue.params });
            const groups = gpu ? Math.ceil(d.rows / matvecGpu.RPW) : Math.ceil(d.rows / 4 / MATVEC_SOFTWARE_WG);
            pass.setPipeline(d.kernel.pipeline);
            pass.setBindGroup(0, d.group);
            pass.dispatchWorkgroups(...grid(groups, maxDim));
          }
        }
        return;
      }
      if (mmXu) {
        for (const d of matmul!) {
          const tokenBase = d.tokenBase!;
          if (tokenBase >= tokens) continue;
          const xBase = (tokenBase * K * 4 - d.xOffset!) / 16;
          d.params.set({ K, rows: d.rows, colOffset: d.rowStart, tokens, tokenBase, xBase, ...epilogue.params });
          pass.setPipeline(d.kernel.pipeline);
          pass.setBindGroup(0, d.group);
          pass.dispatchWorkgroups(...grid(Math.ceil(d.rows / 4 / MATMUL_SOFTWARE_WG), maxDim));
        }
        return;
      }
      for (const d of matmul!) {
        d.params.set({ K, rows: d.rows, colOffset: rowStart, tokens, tokenBase: 0, xBase: 0, ...epilogue.params });
        const [gx, gy] = gpu
          ? [Math.ceil(d.rows / MATMUL_GPU_TILE), Math.ceil(tokens / MATMUL_GPU_TILE)]
          : [Math.ceil(d.rows / 4 / MATMUL_SOFTWARE_WG), Math.ceil(tokens / (mmSgx ? MATMUL_SGX_TOKENS : MATMUL_SOFTWARE_TOKENS))];
        if (gx > maxDim || gy > maxDim) throw new LinearError(`linear: ${d.rows} rows x ${tokens} tokens exceed the dispatch limit`);
        pass.setPipeline(d.kernel.pipeline);
        pass.setBindGroup(0, d.group);
        pass.dispatchWorkgroups(gx, gy);
        rowStart += d.rows;
      }
    },
    destroy() {
      for (const d of [...(matvec ?? []), ...(matmul ?? []), ...[...multi.values()].flat()]) d.params.destroy();
    },
  };
}
