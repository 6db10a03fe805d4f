// Linear layer y[t, n] (+)= sum_k x[t, k] * W[n, k] (+ bias[n]) for every weight format: f32, bf16,
// f16, q8 and q4 (load-time quantization, GPTQ and AWQ repacks). A format is a descriptor
// (ops/linear-formats.ts: its kernels' defines, extra bindings and params, stored bytes, x paths,
// an optional prepass over x); this one build/dispatch/encode path serves them all. W is split
// by rows into chunks that each fit one storage binding; each shape dispatches once per chunk.
// Two shapes: the matvec (kernels/matvec*.wgsl) for one token, and on the software variant for
// steps of up to MATVEC_MAX_TOKENS tokens (a decode step over several sequences), its threads
// looping over the tokens, which sums every token's outputs in the same order as a one-token step,
// so a row's output does not depend on how many rows share its step; the matmul
// (kernels/matmul*.wgsl) for more. What happens to the output columns (split to several outputs,
// gated, RMSNorm applied) is ops/linear-epilogue.ts.

import { type Constants, type Defines, type Kernel, grid } from '../kernel.ts';
import { type OpContext, ParamsBuffer } from './context.ts';
import { linearEpilogue } from './linear-epilogue.ts';
import { UNIFORM_X_BYTES, weightFormat } from './linear-formats.ts';
import { type LinearOp, type LinearOptions, type LinearOutput, type LinearWeight, type WeightChunk, LinearError } from './linear-types.ts';

export { LinearError, type LinearOp, type LinearOptions, type LinearOutput, type LinearWeight, type WeightChunk } from './linear-types.ts';
export { checkWeight, storedBytes, storedRows, weightDefines } from './linear-formats.ts';

const MATVEC_SOFTWARE_WG = 64;
/**
 * Most tokens one software matvec dispatch runs (its override TB, at most the kernels' TMAX = 8);
 * steps of 2..this many tokens use the matvec rather than the matmul (measured with
 * bench/src/batch-steps.ts).
 */
export const MATVEC_MAX_TOKENS = 8;
const MATMUL_SOFTWARE_WG = 64;
const MATMUL_SOFTWARE_TOKENS = 4; // tokens per thread in the matmul kernels' storage shape
const MATMUL_SGX_TOKENS = 16; // tokens per thread in their subgroup-x shape
const MATMUL_GPU_TILE = 64;
const MATMUL_XU_TOKENS = 16; // tokens per thread (and per uniform window) in their XU shape
const UNIFORM_OFFSET_ALIGN = 256;

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
function xWindow(x: GPUBuffer, K: number, t0: number, maxTokens: number): number | undefined {
  const align = (b: number) => Math.floor(b / UNIFORM_OFFSET_ALIGN) * UNIFORM_OFFSET_ALIGN;
  const start = Math.min(align(t0 * K * 4), align(x.size - UNIFORM_X_BYTES));
  const end = Math.min(t0 + MATMUL_XU_TOKENS, maxTokens) * K * 4;
  return start >= 0 && end <= start + UNIFORM_X_BYTES ? start : undefined;
}

/** x can be bound as a 64 KiB uniform window. */
function uniformCapable(x: GPUBuffer): boolean {
  return (x.usage & GPUBufferUsage.UNIFORM) !== 0 && x.size >= UNIFORM_X_BYTES;
}

/** Every group of 16 of maxTokens tokens of x [tokens, K] fits a uniform window. */
function xWindowsFit(x: GPUBuffer, K: number, maxTokens: number): boolean {
  const groups = Math.ceil(maxTokens / MATMUL_XU_TOKENS);
  return Array.from({ length: groups }, (_, g) => xWindow(x, K, g * MATMUL_XU_TOKENS, maxTokens)).every((s) => s !== undefined);
}

interface XPathsPossible {
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
function chooseXPaths(opts: LinearOptions, can: XPathsPossible): { xu: boolean; sgx: boolean; mmXu: boolean; mmSgx: boolean } {
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
  const format = weightFormat(w, 'linear');
  const K = w.cols;
  const maxTokens = opts.maxTokens ?? 1;
  if (!(Number.isInteger(maxTokens) && maxTokens > 0)) throw new LinearError(`linear: bad maxTokens ${maxTokens}`);
  if (x.size < maxTokens * K * 4) throw new LinearError(`linear: x has ${x.size} bytes, needs ${maxTokens * K * 4} for ${maxTokens} x ${K} f32`);
  const gpu = ctx.variant === 'gpu';
  if (w.tiled && gpu) throw new LinearError(`linear: tiled ${w.quant ? 'quantized' : 'dense'} weights are for the software variant`);
  const epilogue = linearEpilogue(w, y, opts, maxTokens, gpu);
  const matvecGpu = epilogue.matvecGpu;
  const prepass = format.prepass?.(ctx, x, maxTokens);
  const xk = prepass?.x ?? x; // the x the kernels read

  const { xu, sgx, mmXu, mmSgx } = chooseXPaths(opts, {
    uniform: !gpu && format.uniformX.ok && uniformCapable(xk),
    matmulUniform: !gpu && K % 4 === 0 && uniformCapable(xk) && xWindowsFit(xk, K, maxTokens),
    subgroup: !gpu && format.subgroupX.ok && ctx.subgroups && ctx.subgroupSize === 8,
    needs: { uniform: format.uniformX.needs, matmulUniform: 'K % 4 == 0, K <= 1020', subgroup: format.subgroupX.needs },
  });
  const common: Defines = { ...format.defines, ...epilogue.defines, GPU: gpu, TILED: !!w.tiled };

  // tb, mvXu: the matvec's tokens per dispatch and whether its x is the uniform window. With
  // subgroups, 5..8 tokens whose rows of x are whole vec4s load x a token per lane (SGXT: 1.3x
  // the 8-token matvec on lavapipe).
  const build = (shape: 'matvec' | 'matmul', tb = 1, mvXu = xu): Dispatch[] => {
    let defines: Defines;
    let constants: Constants;
    let entry = 'main';
    if (shape === 'matvec') {
      const sgxt = sgx && tb > 4 && K % 4 === 0;
      defines = { ...common, ...format.shapeDefines(shape, { gpu, sgx, xu: mvXu }), XU: mvXu, SGX: sgx && !sgxt, SGXT: sgxt, SUBGROUPS: sgx };
      constants = { ...format.constants, ...epilogue.constants, ...(gpu ? matvecGpu : { WG: MATVEC_SOFTWARE_WG, ...(tb > 1 ? { TB: tb } : {}) }) };
    } else {
      defines = { ...common, ...format.shapeDefines(shape, { gpu, sgx: mmSgx, xu: mmXu }), SUBGROUPS: mmSgx };
      constants = { ...format.constants, ...epilogue.constants, ...(gpu ? {} : { WG: MATMUL_SOFTWARE_WG }) };
      entry = gpu ? 'tile' : mmSgx ? 'sgx' : mmXu ? 'xu' : 'rows';
    }
    const kernel = ctx.kernels.get(format.families[shape], defines, constants, entry);
    const dispatch = (c: WeightChunk, xResource: GPUBufferBinding): Dispatch => {
      const params = new ParamsBuffer(ctx.device, kernel);
      const entries: GPUBindGroupEntry[] = [
        { binding: 0, resource: { buffer: params.buffer } },
        ...format.bindings(c),
        { binding: 2, resource: xResource },
        ...epilogue.entries,
      ];
      const group = ctx.device.createBindGroup({ layout: kernel.pipeline.getBindGroupLayout(0), entries, label: kernel.key });
      return { kernel, params, group, rows: c.rows, rowStart: c.rowStart };
    };
    if (shape === 'matmul' && mmXu) {
      // Per chunk, one dispatch per group of 16 tokens, each with its own window of x.
      return w.chunks.flatMap((c) =>
        Array.from({ length: Math.ceil(maxTokens / MATMUL_XU_TOKENS) }, (_, g) => {
          const tokenBase = g * MATMUL_XU_TOKENS;
          const xOffset = xWindow(xk, K, tokenBase, maxTokens)!;
          return { ...dispatch(c, { buffer: xk, offset: xOffset, size: UNIFORM_X_BYTES }), tokenBase, xOffset };
        }),
      );
    }
    return w.chunks.map((c) => dispatch(c, shape === 'matvec' && mvXu ? { buffer: xk, size: UNIFORM_X_BYTES } : { buffer: xk }));
  };

  const force = opts.force;
  const matvec = force !== 'matmul' ? build('matvec') : undefined;
  const matmul = force !== 'matvec' && (maxTokens > 1 || force === 'matmul') ? build('matmul') : undefined;
  const maxDim = ctx.limits.maxComputeWorkgroupsPerDimension;
  // The software matvec runs several tokens a dispatch where the format's kernels can read their rows of x.
  const multiTokens = !gpu && (sgx || format.matvecTokens.ok);
  // Its dispatches of tb tokens from token t0, built on first use.
  const multi = new Map<string, Dispatch[]>();
  const matvecAt = (tb: number, t0: number): Dispatch[] => {
    if (tb === 1 && t0 === 0) return matvec!;
    const key = `${tb}@${t0}`;
    let ds = multi.get(key);
    if (!ds) multi.set(key, (ds = build('matvec', tb, xu && ((t0 + tb - 1) * K + format.xSpan) * 4 <= UNIFORM_X_BYTES)));
    return ds;
  };
  // Every linear kernel has the same Params (kernels/linear_io.wgsl).
  const run = (pass: GPUComputePassEncoder, d: Dispatch, step: { tokens: number; tokenBase: number; xBase: number }, x: number, y = 1) => {
    d.params.set({ K, rows: d.rows, colOffset: d.rowStart, groups: format.groups, ...step, ...epilogue.params });
    pass.setPipeline(d.kernel.pipeline);
    pass.setBindGroup(0, d.group);
    pass.dispatchWorkgroups(x, y);
  };

  return {
    encode(pass, tokens) {
      if (!(Number.isInteger(tokens) && tokens >= 1 && tokens <= maxTokens)) {
        throw new LinearError(`linear: tokens ${tokens} outside 1..${maxTokens}`);
      }
      prepass?.encode(pass, tokens);
      if (matvec && (tokens === 1 || !matmul || (multiTokens && tokens <= MATVEC_MAX_TOKENS))) {
        if (tokens !== 1 && !multiTokens) {
          throw new LinearError(`linear: built with force 'matvec', cannot run ${tokens} tokens (${gpu ? 'gpu variant' : format.matvecTokens.needs})`);
        }
        for (let t0 = 0; t0 < tokens; t0 += MATVEC_MAX_TOKENS) {
          for (const d of matvecAt(Math.min(MATVEC_MAX_TOKENS, tokens - t0), t0)) {
            const groups = gpu ? Math.ceil(d.rows / matvecGpu.RPW) : Math.ceil(d.rows / 4 / MATVEC_SOFTWARE_WG);
            run(pass, d, { tokens, tokenBase: t0, xBase: 0 }, ...grid(groups, maxDim));
          }
        }
        return;
      }
      for (const d of matmul!) {
        if (mmXu) {
          const tokenBase = d.tokenBase!;
          if (tokenBase >= tokens) continue;
          const xBase = (tokenBase * K * 4 - d.xOffset!) / 16;
          run(pass, d, { tokens, tokenBase, xBase }, ...grid(Math.ceil(d.rows / 4 / MATMUL_SOFTWARE_WG), maxDim));
          continue;
        }
        const [gx, gy] = gpu
          ? [Math.ceil(d.rows / MATMUL_GPU_TILE), Math.ceil(tokens / MATMUL_GPU_TILE)]
          : [Math.ceil(d.rows / 4 / MATMUL_SOFTWARE_WG), Math.ceil(tokens / (mmSgx ? MATMUL_SGX_TOKENS : MATMUL_SOFTWARE_TOKENS))];
        if (gx > maxDim || gy > maxDim) throw new LinearError(`linear: ${d.rows} rows x ${tokens} tokens exceed the dispatch limit`);
        run(pass, d, { tokens, tokenBase: 0, xBase: 0 }, gx, gy);
      }
    },
    destroy() {
      for (const d of [...(matvec ?? []), ...(matmul ?? []), ...[...multi.values()].flat()]) d.params.destroy();
      prepass?.destroy();
    },
  };
}
