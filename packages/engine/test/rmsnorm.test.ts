import { describe, it } from 'vitest';
import { bindGroup, dispatch, grid, uniformBuffer } from '../src/kernel.ts';
import { bufferFrom, emptyBuffer, readF32 } from '../src/buffers.ts';
import { expectClose, kernels, randomArray, rmsNormRef, testGpu } from './harness.ts';
import { createRmsNorm } from '../src/ops/norm.ts';

describe('rmsnorm', () => {
  for (const [rows, cols] of [[1, 896], [7, 130], [33, 64], [3, 1]] as const) {
    it(`matches the float64 reference for ${rows}x${cols}`, async () => {
      const gpu = await testGpu();
      const k = kernels(gpu).get('rmsnorm');
      const x = randomArray(rows * cols, rows * 31 + cols, 3);
      const w = randomArray(cols, cols, 1);
      const y = emptyBuffer(gpu.device, rows * cols * 4);
      const eps = 1e-6;
      const group = bindGroup(gpu.device, k, [
        uniformBuffer(gpu.device, k, { rows, cols, eps }),
        bufferFrom(gpu.device, x),
        bufferFrom(gpu.device, w),
        y,
      ]);
      const enc = gpu.device.createCommandEncoder();
      const pass = enc.beginComputePass();
      dispatch(pass, k, group, ...grid(rows));
      pass.end();
      gpu.device.queue.submit([enc.finish()]);
      expectClose(await readF32(gpu.device, y), rmsNormRef(x, w, rows, cols, eps), { relL2: 1e-6, maxAbs: 1e-5 });
    });
  }

  it('accumulates into y (a post-norm joining the residual)', async () => {
    const gpu = await testGpu();
    const ctx = { device: gpu.device, kernels: kernels(gpu), variant: 'software' as const, f16: gpu.hasF16, subgroups: gpu.hasSubgroups, limits: gpu.info.limits };
    const [rows, cols] = [5, 130];
    const x = randomArray(rows * cols, 17, 3);
    const w = randomArray(cols, 18, 1);
    const y0 = randomArray(rows * cols, 19, 2);
    const y = bufferFrom(gpu.device, y0);
    const op = createRmsNorm(ctx, bufferFrom(gpu.device, x), bufferFrom(gpu.device, w), y, cols, 1e-6, { accumulate: true });
    const enc = gpu.device.createCommandEncoder();
    const pass = enc.beginComputePass();
    op.encode(pass, rows);
    pass.end();
    gpu.device.queue.submit([enc.finish()]);
    const normed = rmsNormRef(x, w, rows, cols, 1e-6);
    expectClose(await readF32(gpu.device, y), Float64Array.from(normed, (v, i) => v + y0[i]!), { relL2: 1e-6, maxAbs: 1e-5 });
  });
});
