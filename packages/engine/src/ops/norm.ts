// RMSNorm over rows of `cols` floats (kernels/rmsnorm.wgsl).
import { bindGroup, dispatch, grid } from '../kernel.ts';
import { type OpContext, ParamsBuffer } from './context.ts';

export interface RmsNormOp {
  encode(pass: GPUComputePassEncoder, rows: number): void;
  destroy(): void;
}

/**
 * y[r] = rmsnorm(x[r]) * w for r < rows (with accumulate: y[r] += it); x and y are distinct
 * f32 buffers, w is f32 [cols].
 */
export function createRmsNorm(ctx: OpContext, x: GPUBuffer, w: GPUBuffer, y: GPUBuffer, cols: number, eps: number, opts: { accumulate?: boolean } = {}): RmsNormOp {
  const wg = ctx.variant === 'software' ? 8 : 64;
  const kernel = ctx.kernels.get('rmsnorm', opts.accumulate ? { ACCUMULATE: true } : {}, { WG: wg });
  const params = new ParamsBuffer(ctx.device, kernel);
  const group = bindGroup(ctx.device, kernel, [params.buffer, x, w, y]);
  return {
    encode(pass, rows) {
      params.set({ rows, cols, eps });
      dispatch(pass, kernel, group, ...grid(rows, ctx.limits.maxComputeWorkgroupsPerDimension));
    },
    destroy: () => params.destroy(),
  };
}
