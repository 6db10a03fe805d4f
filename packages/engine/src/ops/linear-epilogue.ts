// What a linear op does with its output columns (kernels/linear_store.wgsl), shared by the dense
// and quantized ops: plain (with bias and accumulate), SPLIT (a stacked q|k|v weight writes three
// outputs), GLU (interleaved gate and up rows write silu(gate) * up), and on the GPU variant NORM
// (the RMSNorm that precedes the layer, applied inside the kernel to the residual stream).

import type { Constants, Defines } from '../kernel.ts';
import { type LinearOptions, type LinearOutput, type LinearWeight, LinearError } from './linear-types.ts';

/** Rows per gate (then up) block of a fused gate/up weight, by kernel variant (src/fuse.ts). */
export const GLU_BLOCK = { software: 2, gpu: 16 } as const;

/** The GPU matvec's shape (kernels/matvec_rows.wgsl); a gated one's workgroup holds a whole block of gate rows and their up rows. */
const MATVEC_GPU = { TPR: 32, RPW: 8 };
const MATVEC_GPU_GLU = { TPR: 8, RPW: 32 };

/** Whether the RMSNorm before `w` can run inside its op (LinearOptions.norm): the GPU kernels, K % 8 == 0, no act-order permutation. */
export function normFolds(gpu: boolean, w: LinearWeight): boolean {
  return gpu && w.cols % 8 === 0 && !w.quant?.perm;
}

export interface Epilogue {
  defines: Defines;
  constants: Constants;
  /** Params the epilogue reads (every linear kernel's Params has them). */
  params: { N: number; n0: number; n1: number; eps: number };
  /** Bind group entries for y, the other outputs, bias and gamma. */
  entries: GPUBindGroupEntry[];
  /** The GPU matvec's threads per row and rows per workgroup. */
  matvecGpu: { TPR: number; RPW: number };
}

export function linearEpilogue(w: LinearWeight, y: LinearOutput, opts: LinearOptions, maxTokens: number, gpu: boolean): Epilogue {
  const N = w.rows;
  const K = w.cols;
  const outs = Array.isArray(y) ? (y as readonly GPUBuffer[]) : [y as GPUBuffer];
  const split = w.split;
  const glu = w.glu;
  const norm = opts.norm;
  if (split && glu) throw new LinearError('linear: a weight is either split or glu');
  if ((split || glu) && opts.accumulate) throw new LinearError(`linear: accumulate cannot combine with a ${split ? 'split' : 'glu'} weight`);
  if (split) {
    if (split.length !== 3 || split.some((n) => !(Number.isInteger(n) && n > 0)) || split[0] + split[1] + split[2] !== N)
      throw new LinearError(`linear: split [${split}] must be three positive widths adding up to the weight's ${N} rows`);
    if (outs.length !== 3) throw new LinearError(`linear: a split weight writes 3 outputs, got ${outs.length}`);
  } else if (outs.length !== 1) {
    throw new LinearError(`linear: ${outs.length} outputs for a weight that writes one`);
  }
  const widths = split ?? [glu ? N / 2 : N];
  outs.forEach((b, i) => {
    const need = maxTokens * widths[i]! * 4;
    if (b.size < need) throw new LinearError(`linear: output ${i} has ${b.size} bytes, needs ${need} for ${maxTokens} x ${widths[i]} f32`);
  });
  const variant = gpu ? 'gpu' : 'software';
  if (glu !== undefined) {
    if (glu !== GLU_BLOCK[variant]) throw new LinearError(`linear: a glu weight for the ${variant} variant has blocks of ${GLU_BLOCK[variant]} rows, got ${glu}`);
    if (N % (2 * glu) !== 0) throw new LinearError(`linear: a glu weight's ${N} rows are not whole blocks of ${2 * glu}`);
    const bad = w.chunks.find((c) => c.rowStart % (2 * glu) !== 0);
    if (bad) throw new LinearError(`linear: a glu weight's chunk starts at row ${bad.rowStart}, inside a block of ${2 * glu} rows`);
  }
  if (norm) {
    if (!normFolds(gpu, w)) {
      throw new LinearError(
        !gpu
          ? 'linear: norm is for the gpu variant (the software kernels keep the RMSNorm as its own op)'
          : w.quant?.perm
            ? 'linear: norm cannot combine with a column-permuted (act-order) weight'
            : `linear: norm needs K % 8 == 0, got ${K}`,
      );
    }
    if (norm.weight.size < K * 4) throw new LinearError(`linear: the norm weight has ${norm.weight.size} bytes, needs ${K * 4}`);
  }
  if (w.bias && w.bias.size < N * 4) throw new LinearError(`linear: bias has ${w.bias.size} bytes, needs ${N * 4}`);

  const entries: GPUBindGroupEntry[] = [{ binding: 3, resource: { buffer: outs[0]! } }];
  if (split) entries.push({ binding: 6, resource: { buffer: outs[1]! } }, { binding: 7, resource: { buffer: outs[2]! } });
  if (w.bias) entries.push({ binding: 4, resource: { buffer: w.bias } });
  if (norm) entries.push({ binding: 8, resource: { buffer: norm.weight } });
  return {
    defines: { BIAS: !!w.bias, ACC: !!opts.accumulate, SPLIT: !!split, GLU: glu !== undefined, NORM: !!norm },
    constants: glu !== undefined ? { GB: glu } : {},
    params: { N, n0: split?.[0] ?? 0, n1: split?.[1] ?? 0, eps: norm?.eps ?? 0 },
    entries,
    matvecGpu: glu !== undefined ? MATVEC_GPU_GLU : MATVEC_GPU,
  };
}
