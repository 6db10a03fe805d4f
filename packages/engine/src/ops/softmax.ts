// Row-wise softmax (kernels/softmax.wgsl).

import { bindGroup, dispatch, grid } from '../kernel.ts';
import { type OpContext, ParamsBuffer } from './context.ts';

export class SoftmaxError extends Error {
  override name = 'SoftmaxError';
}

export interface SoftmaxOp {
  /** y[0..rows) = softmax(x[0..rows)) over each row of cols. */
  encode(pass: GPUComputePassEncoder, rows: number): void;
  destroy(): void;
}

const WG_SOFTWARE = 64;
const WG_GPU = 256;
// On a CPU-backed adapter a thread per row avoids barriers, but a single long row (a
// vocabulary) then runs on one lane: measured 9x slower than a workgroup at 151936 columns.
const SOFTWARE_MAX_COLS = 2048;

/** x, y: [maxRows, cols] f32, different buffers; maxRows is read from x's size. */
export function createSoftmax(ctx: OpContext, cols: number, x: GPUBuffer, y: GPUBuffer): SoftmaxOp {
  if (x === y) throw new SoftmaxError('softmax: x and y must be different buffers');
  if (!(Number.isInteger(cols) && cols >= 1)) throw new SoftmaxError(`cols ${cols} must be a positive integer`);
  const maxRows = Math.floor(x.size / (cols * 4));
  if (y.size < maxRows * cols * 4) throw new SoftmaxError('y is smaller than x');
  const software = ctx.variant === 'software' && cols <= SOFTWARE_MAX_COLS;
  const wg = software ? WG_SOFTWARE : WG_GPU;
  const kernel = ctx.kernels.get('softmax', { SOFTMAX_SW: software }, { WG: wg });
  const params = new ParamsBuffer(ctx.device, kernel);
  const group = bindGroup(ctx.device, kernel, [params.buffer, x, y]);
  return {
    encode(pass, rows) {
      if (!(Number.isInteger(rows) && rows >= 1 && rows <= maxRows)) throw new SoftmaxError(`rows ${rows} outside 1..${maxRows}`);
      params.set({ rows, cols });
      const workgroups = software ? Math.ceil(rows / wg) : rows;
      dispatch(pass, kernel, group, ...grid(workgroups, ctx.limits.maxComputeWorkgroupsPerDimension));
    },
    destroy: () => params.destroy(),
  };
}
