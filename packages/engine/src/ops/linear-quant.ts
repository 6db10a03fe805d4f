// Linear layer over q8/q4 weights (src/quant.ts layout): y[t, n] (+)= sum_k x[t, k] W[n, k] (+ bias[n])
// with W dequantized inside the kernels (kernels/matvec_q.wgsl for one token, and on the software
// variant for up to MATVEC_MAX_TOKENS tokens, each summed as it would be alone, when subgroups read
// x or K % 4 == 0; kernels/matmul_q.wgsl for more), never expanded to full precision. createLinear comes here when a weight has `quant`.
// Activation-order GPTQ weights carry a column permutation: x is gathered through it first
// (kernels/gather_cols.wgsl) into a buffer this op owns. Tiled weights (`w.tiled`: words and scales
// of each chunk in row tiles, src/tiles.ts) are for the software kernels only.

import { groupsPerRow, rowWords, checkSpec } from '../quant.ts';
import { type Constants, type Defines, grid } from '../kernel.ts';
import { storageUsage } from '../buffers.ts';
import { tiledRows } from '../tiles.ts';
import { type OpContext, ParamsBuffer } from './context.ts';
import { type LinearOutput, linearEpilogue } from './linear-epilogue.ts';
import {
  type LinearOp,
  type LinearOptions,
  type LinearWeight,
  type WeightChunk,
  LinearError,
  MATMUL_XU_TOKENS,
  MATVEC_MAX_TOKENS,
  UNIFORM_X_BYTES,
  chooseXPaths,
  uniformCapable,
  xWindow,
  xWindowsFit,
} from './linear.ts';

const MATVEC_SOFTWARE_WG = 64;
const MATMUL_SOFTWARE_WG = 64;
const MATMUL_SOFTWARE_TOKENS = 4; // tokens per thread in matmul_q.wgsl's storage shape
const MATMUL_SGX_TOKENS = 16; // tokens per thread in its subgroup-x shape
const MATMUL_GPU_TILE = 64;
const GATHER_WG = 64;

/** Rows a chunk's words and scales hold: its own, padded to whole tiles when the weight is tiled. */
export function quantStoredRows(w: Pick<LinearWeight, 'tiled'>, c: Pick<WeightChunk, 'rows'>): number {
  return w.tiled ? tiledRows(c.rows) : c.rows;
}

/** Checks a quantized weight: spec, chunks in order without gaps, words and scales large enough. */
export function checkQuantWeight(w: LinearWeight, what = 'weight'): void {
  const q = w.quant;
  if (!q) throw new LinearError(`${what}: not a quantized weight`);
  checkSpec(q, what);
  if (!(Number.isInteger(w.rows) && w.rows > 0 && Number.isInteger(w.cols) && w.cols > 0)) {
    throw new LinearError(`${what}: bad shape [${w.rows}, ${w.cols}]`);
  }
  const rw = rowWords(q, w.cols);
  const groups = groupsPerRow(q, w.cols);
  let next = 0;
  for (const [i, c] of w.chunks.entries()) {
    if (c.rowStart !== next || !(Number.isInteger(c.rows) && c.rows > 0)) {
      throw new LinearError(`${what}: chunk ${i} covers rows [${c.rowStart}, ${c.rowStart + c.rows}), expected to start at ${next}`);
    }
    const stored = quantStoredRows(w, c);
    const tiles = w.tiled ? ' (tiled)' : '';
    if (c.buffer.size < stored * rw * 4) throw new LinearError(`${what}: chunk ${i} has ${c.buffer.size} bytes of ${q.format} weights, needs ${stored * rw * 4}${tiles}`);
    if (!c.scales) throw new LinearError(`${what}: chunk ${i} has no scales buffer`);
    if (c.scales.size < stored * groups * 4) throw new LinearError(`${what}: chunk ${i} has ${c.scales.size} bytes of scales, needs ${stored * groups * 4}${tiles}`);
    next += c.rows;
  }
  if (next !== w.rows) throw new LinearError(`${what}: chunks cover ${next} rows of ${w.rows}`);
  if (q.perm && q.perm.size < w.cols * 4) throw new LinearError(`${what}: column permutation has ${q.perm.size} bytes, needs ${w.cols * 4}`);
}

interface Dispatch {
  params: ParamsBuffer;
  group: GPUBindGroup;
  rows: number;
  rowStart: number;
  /** XU matmul: the dispatch's first token and its x window's byte offset. */
  tokenBase?: number;
  xOffset?: number;
}

export function createQuantLinear(ctx: OpContext, w: LinearWeight, x: GPUBuffer, y: LinearOutput, opts: LinearOptions = {}): LinearOp {
  checkQuantWeight(w, 'linear');
  const q = w.quant!;
  const K = w.cols;
  const groups = groupsPerRow(q, K);
  const maxTokens = opts.maxTokens ?? 1;
  if (!(Number.isInteger(maxTokens) && maxTokens > 0)) throw new LinearError(`linear: bad maxTokens ${maxTokens}`);
  if (x.size < maxTokens * K * 4) throw new LinearError(`linear: x has ${x.size} bytes, needs ${maxTokens * K * 4} for ${maxTokens} x ${K} f32`);
  const gpu = ctx.variant === 'gpu';
  const epilogue = linearEpilogue(w, y, opts, maxTokens, gpu);
  const matvecGpu = epilogue.matvecGpu;
  if (w.tiled && gpu) throw new LinearError('linear: tiled quantized weights are for the software variant');

  // The permuted copy of x is made uniform-capable so the software kernels can still read it as
  // one; its size is rounded to the 256-byte binding alignment so the last window can end there.
  let gather: { params: ParamsBuffer; group: GPUBindGroup; kernel: ReturnType<OpContext['kernels']['get']> } | undefined;
  let xq = x;
  if (q.perm) {
    xq = ctx.device.createBuffer({ size: Math.max(Math.ceil((maxTokens * K * 4) / 256) * 256, UNIFORM_X_BYTES), usage: storageUsage() | GPUBufferUsage.UNIFORM, label: 'x permuted' });
    const kernel = ctx.kernels.get('gather_cols', {}, { WG: GATHER_WG });
    const params = new ParamsBuffer(ctx.device, kernel, { K });
    const group = ctx.device.createBindGroup({
      layout: kernel.pipeline.getBindGroupLayout(0),
      entries: [
        { binding: 0, resource: { buffer: params.buffer } },
        { binding: 1, resource: { buffer: q.perm } },
        { binding: 2, resource: { buffer: x } },
        { binding: 3, resource: { buffer: xq } },
      ],
      label: kernel.key,
    });
    gather = { params, group, kernel };
  }

  const padded = groups * q.groupSize;
  const { xu, sgx, mmXu, mmSgx } = chooseXPaths(opts, {
    uniform: !gpu && padded * 4 <= UNIFORM_X_BYTES && uniformCapable(xq),
    matmulUniform: !gpu && K % 4 === 0 && uniformCapable(xq) && xWindowsFit(xq, K, maxTokens),
    subgroup: !gpu && ctx.subgroups && ctx.subgroupSize === 8,
    needs: {
      uniform: `K padded to groups (${padded}) <= 16384`,
      matmulUniform: 'K % 4 == 0, K <= 1020',
      subgroup: 'nothing more of the weight',
    },
  });
  const common: Defines = { Q4: q.format === 'q4', TAIL: K % q.groupSize !== 0, ...epilogue.defines, GPU: gpu, TILED: !!w.tiled };

  // tb, mvXu: the matvec's tokens per dispatch and whether its x is the uniform window.
  const build = (family: 'matvec_q' | 'matmul_q', tb = 1, mvXu = xu): { kernel: ReturnType<OpContext['kernels']['get']>; parts: Dispatch[] } => {
    // With subgroups, 5..8 tokens load x a token per lane where its rows are whole vec4s (SGXT).
    const sgxt = family === 'matvec_q' && sgx && tb > 4 && K % 4 === 0;
    const defines: Defines =
      family === 'matvec_q' ? { ...common, XU: mvXu, SGX: sgx && !sgxt, SGXT: sgxt, SUBGROUPS: sgx } : { ...common, XU: mmXu, SGX: mmSgx, SUBGROUPS: mmSgx };
    const constants: Constants = { G: q.groupSize, ...epilogue.constants };
    if (family === 'matvec_q') Object.assign(constants, gpu ? matvecGpu : { WG: MATVEC_SOFTWARE_WG, ...(tb > 1 ? { TB: tb } : {}) });
    else if (!gpu) constants.WG = MATMUL_SOFTWARE_WG;
    const kernel = ctx.kernels.get(family, defines, constants);
    const dispatch = (c: WeightChunk, xResource: GPUBufferBinding): Dispatch => {
      const entries: GPUBindGroupEntry[] = [
        { binding: 1, resource: { buffer: c.buffer, size: quantStoredRows(w, c) * rowWords(q, K) * 4 } },
        { binding: 2, resource: xResource },
        { binding: 5, resource: { buffer: c.scales!, size: quantStoredRows(w, c) * groups * 4 } },
        ...epilogue.entries,
      ];
      const params = new ParamsBuffer(ctx.device, kernel);
      entries.push({ binding: 0, resource: { buffer: params.buffer } });
      const group = ctx.device.createBindGroup({ layout: kernel.pipeline.getBindGroupLayout(0), entries, label: kernel.key });
      return { params, group, rows: c.rows, rowStart: c.rowStart };
    };
    if (family === 'matmul_q' && mmXu) {
      // Per chunk, one dispatch per group of 16 tokens, each with its own window of x.
      const parts = w.chunks.flatMap((c) =>
        Array.from({ length: Math.ceil(maxTokens / MATMUL_XU_TOKENS) }, (_, g) => {
          const tokenBase = g * MATMUL_XU_TOKENS;
          const xOffset = xWindow(xq, K, tokenBase, maxTokens)!;
          return { ...dispatch(c, { buffer: xq, offset: xOffset, size: UNIFORM_X_BYTES }), tokenBase, xOffset };
        }),
      );
      return { kernel, parts };
    }
    const parts = w.chunks.map((c) => dispatch(c, family === 'matvec_q' && mvXu ? { buffer: xq, size: UNIFORM_X_BYTES } : { buffer: xq }));
    return { kernel, parts };
  };

  const force = opts.force;
  const matvec = force !== 'matmul' ? build('matvec_q') : undefined;
  const matmul = force !== 'matvec' && (maxTokens > 1 || force === 'matmul') ? build('matmul_q') : undefined;
  const maxDim = ctx.limits.maxComputeWorkgroupsPerDimension;
  // The software matvec runs several tokens where it can read their rows of x (matvec_q.wgsl).
  const multiTokens = !gpu && (sgx || K % 4 === 0);
  // Its dispatches of tb tokens from token t0, built on first use.
  const multi = new Map<string, { kernel: ReturnType<OpContext['kernels']['get']>; parts: Dispatch[] }>();
  const matvecAt = (tb: number, t0: number) => {
    if (tb === 1 && t0 === 0) return matvec!;
    const key = `${tb}@${t0}`;
    let m = multi.get(key);
    if (!m) multi.set(key, (m = build('matvec_q', tb, xu && ((t0 + tb - 1) * K + padded) * 4 <= UNIFORM_X_BYTES)));
    return m;
  };

  return {
    encode(pass, tokens) {
      if (!(Number.isInteger(tokens) && tokens >= 1 && tokens <= maxTokens)) {
        throw new LinearError(`linear: tokens ${tokens} outside 1..${maxTokens}`);
      }
      if (gather) {
        if (tokens > maxDim) throw new LinearError(`linear: ${tokens} tokens exceed the dispatch limit of the column gather`);
        gather.params.set({ K });
        pass.setPipeline(gather.kernel.pipeline);
        pass.setBindGroup(0, gather.group);
        pass.dispatchWorkgroups(Math.ceil(K / GATHER_WG), tokens);
      }
      let rowStart = 0;
      if (matvec && (tokens === 1 || !matmul || (multiTokens && tokens <= MATVEC_MAX_TOKENS))) {
        if (tokens !== 1 && !multiTokens) {
          throw new LinearError(`linear: built with force 'matvec', cannot run ${tokens} tokens (${gpu ? 'gpu variant' : 'K % 4 != 0 without subgroup x'})`);
        }
        for (let t0 = 0; t0 < tokens; t0 += MATVEC_MAX_TOKENS) {
          const m = matvecAt(Math.min(MATVEC_MAX_TOKENS, tokens - t0), t0);
          pass.setPipeline(m.kernel.pipeline);
          for (const d of m.parts) {
            d.params.set({ K, rows: d.rows, colOffset: d.rowStart, groups, tokenBase: t0, ...epilogue.params });
            const wgs = gpu ? Math.ceil(d.rows / matvecGpu.RPW) : Math.ceil(d.rows / 4 / MATVEC_SOFTWARE_WG);
            pass.setBindGroup(0, d.group);
            pass.dispatchWorkgroups(...grid(wgs, maxDim));
          }
        }
        return;
      }
      pass.setPipeline(matmul!.kernel.pipeline);
      if (mmXu) {
        for (const d of matmul!.parts) {
          const tokenBase = d.tokenBase!;
          if (tokenBase >= tokens) continue;
          const xBase = (tokenBase * K * 4 - d.xOffset!) / 16;
          d.params.set({ K, rows: d.rows, colOffset: d.rowStart, tokens, groups, tokenBase, xBase, ...epilogue.params });
          pass.setBindGroup(0, d.group);
          pass.dispatchWorkgroups(...grid(Math.ceil(d.rows / 4 / MATMUL_SOFTWARE_WG), maxDim));
        }
        return;
      }
      for (const d of matmul!.parts) {
        d.params.set({ K, rows: d.rows, colOffset: rowStart, tokens, groups, tokenBase: 0, xBase: 0, ...epilogue.params });
        const [gx, gy] = gpu
          ? [Math.ceil(d.rows / MATMUL_GPU_TILE), Math.ceil(tokens / MATMUL_GPU_TILE)]
          : [Math.ceil(d.rows / 4 / MATMUL_SOFTWARE_WG), Math.ceil(tokens / (mmSgx ? MATMUL_SGX_TOKENS : MATMUL_SOFTWARE_TOKENS))];
        if (gx > maxDim || gy > maxDim) throw new LinearError(`linear: ${d.rows} rows x ${tokens} tokens exceed the dispatch limit`);
        pass.setBindGroup(0, d.group);
        pass.dispatchWorkgroups(gx, gy);
        rowStart += d.rows;
      }
    },
    destroy() {
      for (const d of [...(matvec?.parts ?? []), ...(matmul?.parts ?? []), ...[...multi.values()].flatMap((m) => m.parts)]) d.params.destroy();
      if (gather) {
        gather.params.destroy();
        xq.destroy();
      }
    },
  };
}
