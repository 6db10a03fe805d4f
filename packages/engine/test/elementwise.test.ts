import { describe, expect, it } from 'vitest';
import { bufferFrom, emptyBuffer, readF32 } from '../src/buffers.ts';
import type { OpContext } from '../src/ops/context.ts';
import { createAdd, createCopy, createScaleCap, createSiluMul, ElementwiseError } from '../src/ops/elementwise.ts';
import { expectClose, kernels, randomArray, testGpu } from './harness.ts';

async function context(): Promise<OpContext> {
  const gpu = await testGpu();
  return { device: gpu.device, kernels: kernels(gpu), variant: 'software', f16: gpu.hasF16, subgroups: gpu.hasSubgroups, limits: gpu.info.limits };
}

function submit(ctx: OpContext, f: (pass: GPUComputePassEncoder) => void): void {
  const enc = ctx.device.createCommandEncoder();
  const pass = enc.beginComputePass();
  f(pass);
  pass.end();
  ctx.device.queue.submit([enc.finish()]);
}

const silu = (x: number) => x / (1 + Math.exp(-x));
/** HF's gelu_pytorch_tanh. */
const geluTanh = (x: number) => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));

describe('elementwise', () => {
  for (const [rows, cols] of [[1, 4864], [3, 37], [5, 1], [130, 515]] as const) {
    it(`silu(gate) * up for ${rows}x${cols}, separate and fused gate/up`, async () => {
      const ctx = await context();
      const gate = randomArray(rows * cols, rows + cols, 12);
      const up = randomArray(rows * cols, rows * cols, 3);
      const want = new Float64Array(rows * cols).map((_, i) => silu(gate[i]!) * up[i]!);
      const out = emptyBuffer(ctx.device, rows * cols * 4);
      const sep = createSiluMul(ctx, cols, { gate: bufferFrom(ctx.device, gate), up: bufferFrom(ctx.device, up) }, out);
      expect(() => submit(ctx, (p) => sep.encode(p, rows + 1))).toThrow(ElementwiseError);
      submit(ctx, (p) => sep.encode(p, rows));
      expectClose(await readF32(ctx.device, out, rows * cols), want, { relL2: 1e-6, maxAbs: 1e-5 }, 'separate');

      const fusedData = new Float32Array(rows * 2 * cols);
      for (let r = 0; r < rows; r++) {
        fusedData.set(gate.subarray(r * cols, (r + 1) * cols), r * 2 * cols);
        fusedData.set(up.subarray(r * cols, (r + 1) * cols), r * 2 * cols + cols);
      }
      const out2 = emptyBuffer(ctx.device, rows * cols * 4);
      const fused = createSiluMul(ctx, cols, { gateUp: bufferFrom(ctx.device, fusedData) }, out2);
      submit(ctx, (p) => fused.encode(p, rows));
      expectClose(await readF32(ctx.device, out2), want, { relL2: 1e-6, maxAbs: 1e-5 }, 'fused');
    });
  }

  for (const n of [1, 7, 896, 100003]) {
    it(`residual add and copy with offsets, ${n} elements`, async () => {
      const ctx = await context();
      const a = randomArray(n + 3, n, 5);
      const b = randomArray(n + 3, n + 1, 5);
      const aBuf = bufferFrom(ctx.device, a);
      const add = createAdd(ctx, aBuf, bufferFrom(ctx.device, b));
      submit(ctx, (p) => add.encode(p, n));
      const want = Float64Array.from(a);
      for (let i = 0; i < n; i++) want[i] = Math.fround(a[i]! + b[i]!);
      expectClose(await readF32(ctx.device, aBuf), want, { relL2: 0, maxAbs: 0 }, 'add');

      const dst = bufferFrom(ctx.device, new Float32Array(n + 5).fill(-1));
      const copy = createCopy(ctx, bufferFrom(ctx.device, b), dst);
      const count = Math.max(1, n - 1);
      submit(ctx, (p) => copy.encode(p, count, Math.min(1, n - 1) + 2, 4));
      const wantCopy = new Float64Array(n + 5).fill(-1);
      for (let i = 0; i < count; i++) wantCopy[4 + i] = b[Math.min(1, n - 1) + 2 + i]!;
      expectClose(await readF32(ctx.device, dst), wantCopy, { relL2: 0, maxAbs: 0 }, 'copy');
      expect(() => copy.encode(ctx.device.createCommandEncoder().beginComputePass(), n + 3, 1)).toThrow(/past a buffer/);
    });
  }

  for (const [rows, cols] of [[1, 4864], [3, 37], [130, 515]] as const) {
    it(`gelu_tanh(gate) * up (GeGLU) for ${rows}x${cols}, with gates far past tanh's saturation`, async () => {
      const ctx = await context();
      const gate = randomArray(rows * cols, rows + cols, 12);
      gate[0] = 40;
      gate[rows * cols - 1] = -40;
      const up = randomArray(rows * cols, rows * cols, 3);
      const want = new Float64Array(rows * cols).map((_, i) => geluTanh(gate[i]!) * up[i]!);
      const out = emptyBuffer(ctx.device, rows * cols * 4);
      const op = createSiluMul(ctx, cols, { gate: bufferFrom(ctx.device, gate), up: bufferFrom(ctx.device, up) }, out, 'gelu_tanh');
      submit(ctx, (p) => op.encode(p, rows));
      expectClose(await readF32(ctx.device, out, rows * cols), want, { relL2: 1e-6, maxAbs: 1e-5 }, 'gelu');
    });
  }

  for (const n of [1, 7, 896, 100003]) {
    it(`scaled residual add, in-place scale and soft-cap, ${n} elements`, async () => {
      const ctx = await context();
      const a = randomArray(n + 3, n, 20);
      const b = randomArray(n + 3, n + 1, 5);
      const aBuf = bufferFrom(ctx.device, a);
      const add = createAdd(ctx, aBuf, bufferFrom(ctx.device, b), 0.22);
      submit(ctx, (p) => add.encode(p, n));
      const added = Float64Array.from(a, (x, i) => (i < n ? x + 0.22 * b[i]! : x));
      expectClose(await readF32(ctx.device, aBuf), added, { relL2: 1e-7, maxAbs: 1e-5 }, 'scaled add');

      const x = bufferFrom(ctx.device, a);
      submit(ctx, (p) => createScaleCap(ctx, x, { scale: 0.25 }).encode(p, n));
      expectClose(await readF32(ctx.device, x), Float64Array.from(a, (v, i) => (i < n ? v * 0.25 : v)), { relL2: 1e-7, maxAbs: 1e-6 }, 'scale');
      // Values up to ±20 against a cap of 3: most saturate, and overflow-prone exp(2x) must not give NaN.
      const y = bufferFrom(ctx.device, a);
      submit(ctx, (p) => createScaleCap(ctx, y, { scale: 2, cap: 3 }).encode(p, n));
      expectClose(await readF32(ctx.device, y), Float64Array.from(a, (v, i) => (i < n ? 3 * Math.tanh((2 * v) / 3) : v)), { relL2: 1e-6, maxAbs: 1e-5 }, 'cap');
      expect(() => createScaleCap(ctx, y, { cap: -1 })).toThrow(ElementwiseError);
    });
  }
});
