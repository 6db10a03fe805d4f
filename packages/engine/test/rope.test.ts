import { describe, expect, it } from 'vitest';
import { bufferFrom, readF32 } from '../src/buffers.ts';
import { createRope, RopeError } from '../src/ops/rope.ts';
import type { OpContext } from '../src/ops/context.ts';
import { ropeInvFreq, type RopeFrequencies } from '../src/rope-frequencies.ts';
import { expectClose, kernels, randomArray, testGpu } from './harness.ts';

async function context(): Promise<OpContext> {
  const gpu = await testGpu();
  return { device: gpu.device, kernels: kernels(gpu), variant: 'software', f16: gpu.hasF16, subgroups: gpu.hasSubgroups, limits: gpu.info.limits };
}

/** Positions start.. of T tokens. */
const consecutive = (T: number, start: number) => Uint32Array.from({ length: T }, (_, t) => start + t);

// HF in f32: angle = f32(pos) * invFreq (one f32 rounding), then cos/sin of that angle.
function ropeRef(x: Float32Array, heads: number, headDim: number, positions: Uint32Array, f: RopeFrequencies): Float64Array {
  const half = f.invFreq.length;
  const y = Float64Array.from(x);
  for (let t = 0; t < positions.length; t++) {
    for (let i = 0; i < half; i++) {
      const angle = Math.fround(positions[t]! * f.invFreq[i]!);
      const c = Math.cos(angle) * f.attentionScaling;
      const s = Math.sin(angle) * f.attentionScaling;
      for (let h = 0; h < heads; h++) {
        const b = (t * heads + h) * headDim + i;
        y[b] = x[b]! * c - x[b + half]! * s;
        y[b + half] = x[b + half]! * c + x[b]! * s;
      }
    }
  }
  return y;
}

describe('rope', () => {
  const cases = [
    { nHeads: 14, nKvHeads: 2, headDim: 64, partial: 1, theta: 1e6, T: 5, startPos: 0 },
    { nHeads: 14, nKvHeads: 2, headDim: 64, partial: 1, theta: 1e6, T: 37, startPos: 20 },
    { nHeads: 8, nKvHeads: 1, headDim: 48, partial: 1, theta: 10000, T: 1, startPos: 4095 },
    { nHeads: 4, nKvHeads: 2, headDim: 80, partial: 0.5, theta: 10000, T: 7, startPos: 3 },
    { nHeads: 3, nKvHeads: 3, headDim: 128, partial: 1, theta: 500000, T: 3, startPos: 131000 },
  ];
  for (const c of cases) {
    it(`matches HF's f32 angles for ${JSON.stringify(c)}`, async () => {
      const ctx = await context();
      const f = ropeInvFreq({ headDim: c.headDim, ropeTheta: c.theta, partialRotaryFactor: c.partial, maxPositionEmbeddings: 4096 });
      const q = randomArray(c.T * c.nHeads * c.headDim, c.T * 7 + c.headDim, 2);
      const k = randomArray(c.T * c.nKvHeads * c.headDim, c.T * 11 + c.headDim, 2);
      const qBuf = bufferFrom(ctx.device, q);
      const kBuf = bufferFrom(ctx.device, k);
      const positions = consecutive(c.T, c.startPos);
      const op = createRope(ctx, { nHeads: c.nHeads, nKvHeads: c.nKvHeads, headDim: c.headDim, frequencies: f }, qBuf, kBuf, bufferFrom(ctx.device, positions));
      const enc = ctx.device.createCommandEncoder();
      const pass = enc.beginComputePass();
      op.encode(pass, c.T);
      pass.end();
      ctx.device.queue.submit([enc.finish()]);
      const tol = { relL2: 1e-6, maxAbs: 2e-6 };
      expectClose(await readF32(ctx.device, qBuf), ropeRef(q, c.nHeads, c.headDim, positions, f), tol, 'q');
      expectClose(await readF32(ctx.device, kBuf), ropeRef(k, c.nKvHeads, c.headDim, positions, f), tol, 'k');
      op.destroy();
    });
  }

  it('rotates each token at its own position (tokens of several sequences in one step)', async () => {
    const ctx = await context();
    const f = ropeInvFreq({ headDim: 48, ropeTheta: 10000, maxPositionEmbeddings: 4096 });
    // A decode token at 300, a prefill chunk at 0..6, decode tokens at 17 and 0.
    const positions = Uint32Array.from([300, 0, 1, 2, 3, 4, 5, 6, 17, 0]);
    const T = positions.length;
    const q = randomArray(T * 6 * 48, 21, 2);
    const k = randomArray(T * 2 * 48, 22, 2);
    const qBuf = bufferFrom(ctx.device, q);
    const kBuf = bufferFrom(ctx.device, k);
    const op = createRope(ctx, { nHeads: 6, nKvHeads: 2, headDim: 48, frequencies: f }, qBuf, kBuf, bufferFrom(ctx.device, positions));
    const enc = ctx.device.createCommandEncoder();
    const pass = enc.beginComputePass();
    op.encode(pass, T);
    pass.end();
    ctx.device.queue.submit([enc.finish()]);
    expectClose(await readF32(ctx.device, qBuf), ropeRef(q, 6, 48, positions, f), { relL2: 1e-6, maxAbs: 2e-6 }, 'q');
    expectClose(await readF32(ctx.device, kBuf), ropeRef(k, 2, 48, positions, f), { relL2: 1e-6, maxAbs: 2e-6 }, 'k');
    op.destroy();
  });

  it('applies the attention scaling and new frequencies after setFrequencies', async () => {
    const ctx = await context();
    const yarn = ropeInvFreq({
      headDim: 64,
      ropeTheta: 1e6,
      maxPositionEmbeddings: 131072,
      scaling: { type: 'yarn', factor: 4, originalMaxPositionEmbeddings: 32768 },
    });
    expect(yarn.attentionScaling).toBeGreaterThan(1.1);
    const plain = ropeInvFreq({ headDim: 64, ropeTheta: 1e6, maxPositionEmbeddings: 4096 });
    const T = 4;
    const q = randomArray(T * 2 * 64, 5);
    const k = randomArray(T * 64, 6);
    const qBuf = bufferFrom(ctx.device, q);
    const kBuf = bufferFrom(ctx.device, k);
    const positions = consecutive(T, 40000);
    const op = createRope(ctx, { nHeads: 2, nKvHeads: 1, headDim: 64, frequencies: plain }, qBuf, kBuf, bufferFrom(ctx.device, positions));
    op.setFrequencies(yarn);
    const enc = ctx.device.createCommandEncoder();
    const pass = enc.beginComputePass();
    op.encode(pass, T);
    pass.end();
    ctx.device.queue.submit([enc.finish()]);
    expectClose(await readF32(ctx.device, qBuf), ropeRef(q, 2, 64, positions, yarn), { relL2: 1e-6, maxAbs: 3e-6 }, 'q');
    expectClose(await readF32(ctx.device, kBuf), ropeRef(k, 1, 64, positions, yarn), { relL2: 1e-6, maxAbs: 3e-6 }, 'k');
    expect(() => op.encode(ctx.device.createCommandEncoder().beginComputePass(), T + 1)).toThrow(RopeError);
    op.destroy();
  });
});
