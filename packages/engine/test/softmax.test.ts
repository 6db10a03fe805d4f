import { describe, it } from 'vitest';
import { bufferFrom, emptyBuffer, readF32 } from '../src/buffers.ts';
import type { OpContext, Variant } from '../src/ops/context.ts';
import { createSoftmax } from '../src/ops/softmax.ts';
import { expectClose, kernels, randomArray, testGpu } from './harness.ts';

async function context(variant: Variant): Promise<OpContext> {
  const gpu = await testGpu();
  return { device: gpu.device, kernels: kernels(gpu), variant, f16: gpu.hasF16, subgroups: gpu.hasSubgroups, limits: gpu.info.limits };
}

function softmaxRef(x: Float32Array, rows: number, cols: number): Float64Array {
  const y = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    let m = -Infinity;
    for (let i = 0; i < cols; i++) m = Math.max(m, x[r * cols + i]!);
    let s = 0;
    for (let i = 0; i < cols; i++) s += y[r * cols + i] = Math.exp(x[r * cols + i]! - m);
    for (let i = 0; i < cols; i++) y[r * cols + i]! /= s;
  }
  return y;
}

for (const variant of ['software', 'gpu'] as const) {
  describe(`softmax (${variant})`, () => {
    // Scale 100: exp without subtracting the row max would overflow f32.
    for (const [rows, cols, scale] of [[1, 151936, 10], [2, 2048, 30], [7, 37, 100], [3, 1, 100], [33, 1000, 100], [70, 65, 1]] as const) {
      it(`${rows}x${cols}, values up to ±${scale}`, async () => {
        const ctx = await context(variant);
        const x = randomArray(rows * cols, rows * 7 + cols, scale);
        const y = emptyBuffer(ctx.device, rows * cols * 4);
        const op = createSoftmax(ctx, cols, bufferFrom(ctx.device, x), y);
        const enc = ctx.device.createCommandEncoder();
        const pass = enc.beginComputePass();
        op.encode(pass, rows);
        pass.end();
        ctx.device.queue.submit([enc.finish()]);
        expectClose(await readF32(ctx.device, y), softmaxRef(x, rows, cols), { relL2: 1e-5, maxAbs: 1e-6 });
      });
    }
  });
}
