import { describe, it } from 'vitest';
import { bindGroup, dispatch, grid, uniformBuffer } from '../src/kernel.ts';
import { bufferFrom, emptyBuffer, readF32 } from '../src/buffers.ts';
import { expectClose, kernels, randomArray, testGpu } from './harness.ts';

function rmsnormRef(x: Float32Array, w: Float32Array, rows: number, cols: number, eps: number): Float64Array {
  const y = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    let s = 0;
    for (let i = 0; i < cols; i++) s += x[r * cols + i]! ** 2;
    const scale = 1 / Math.sqrt(s / cols + eps);
    for (let i = 0; i < cols; i++) y[r * cols + i] = x[r * cols + i]! * scale * w[i]!;
  }
  return y;
}

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
      expectClose(await readF32(gpu.device, y), rmsnormRef(x, w, rows, cols, eps), { relL2: 1e-6, maxAbs: 1e-5 });
    });
  }
});
