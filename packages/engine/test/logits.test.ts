import { describe, expect, it } from 'vitest';
import { bufferFrom, readF32 } from '../src/buffers.ts';
import type { Variant } from '../src/ops/context.ts';
import { createLogitsReducer, LogitsError, parseRows, rowResultWords, type ReducedRow } from '../src/ops/logits.ts';
import { rng, testGpu } from './harness.ts';
import { opContext } from './weights-helper.ts';

/** Logits with ties at the top and elsewhere, -Infinity entries, and a few negative-only stretches. */
function logitsRow(n: number, seed: number): Float32Array {
  const r = rng(seed);
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) x[i] = Math.fround((r() * 2 - 1) * 12);
  for (let i = 0; i < Math.max(3, n / 50); i++) x[Math.floor(r() * n)] = -Infinity;
  // Repeated values: the maximum three times, and a run of equal values around the top-40 cut.
  const top = 30;
  for (const i of [Math.floor(n / 2), Math.floor(n / 3), n - 1]) x[i] = top;
  for (let j = 0; j < 60; j++) x[Math.floor(r() * n)] = 11.5;
  return x;
}

function topRef(x: Float32Array, k: number): { ids: number[]; lse: number } {
  const ids = Array.from(x.keys()).sort((a, b) => x[b]! - x[a]! || a - b || 0);
  // -Infinity - -Infinity is NaN: order those by index.
  ids.sort((a, b) => (x[a] === x[b] ? a - b : x[b]! > x[a]! ? 1 : -1));
  let m = -Infinity;
  for (const v of x) m = Math.max(m, v);
  let s = 0;
  for (const v of x) s += Math.exp(v - m);
  return { ids: ids.slice(0, k), lse: m + Math.log(s) };
}

async function submit(device: GPUDevice, f: (pass: GPUComputePassEncoder) => void): Promise<void> {
  const enc = device.createCommandEncoder();
  const pass = enc.beginComputePass();
  f(pass);
  pass.end();
  device.queue.submit([enc.finish()]);
}

describe('logits reductions', () => {
  for (const variant of ['software', 'gpu'] as Variant[]) {
    for (const V of [511, 32001, 151936]) {
      it(`${variant}: argmax and top-k (k = 1, 5, 40, 256) match the reference for vocab ${V}`, async () => {
        const gpu = await testGpu();
        const ctx = opContext(gpu, variant);
        const x = logitsRow(V, V);
        // Two rows in one buffer: the reduction must read the second.
        const both = new Float32Array(2 * V).fill(100);
        both.set(x, V);
        const red = createLogitsReducer(ctx, bufferFrom(gpu.device, both), V);
        const ref = topRef(x, 256);
        await submit(gpu.device, (p) => red.encodeArgmax(p, V));
        expect(await red.readArgmax()).toBe(ref.ids[0]);
        for (const k of [1, 5, 40, 256]) {
          await submit(gpu.device, (p) => red.encodeTopK(p, k, V));
          const got = await red.readTopK();
          expect(Array.from(got.ids), `top-${k} ids`).toEqual(ref.ids.slice(0, k));
          expect(Array.from(got.logits), `top-${k} logits`).toEqual(ref.ids.slice(0, k).map((i) => x[i]!));
          expect(Math.abs(got.logSumExp - ref.lse), 'logSumExp').toBeLessThanOrEqual(2e-5 * Math.abs(ref.lse));
          expect(await red.readArgmax()).toBe(ref.ids[0]);
        }
        red.destroy();
      });
    }
  }

  for (const variant of ['software', 'gpu'] as Variant[]) {
    it(`${variant}: several rows without top-k in one pass (argmax, logSumExp, target logits) match the reference, and with top-k per row`, async () => {
      const gpu = await testGpu();
      const ctx = opContext(gpu, variant);
      for (const V of [7, 511, 8193, 151936]) {
        const R = 5;
        const rows = Array.from({ length: R }, (_, r) => logitsRow(V, 31 * V + r));
        rows[3]!.fill(-Infinity)[V >> 1] = -4; // all -Infinity but one
        const all = new Float32Array(R * V);
        rows.forEach((x, r) => all.set(x, r * V));
        const red = createLogitsReducer(ctx, bufferFrom(gpu.device, all), V);
        // Out of order, one row twice, targets on some.
        const asked: ReducedRow[] = [4, 0, 3, 2, 0].map((r, i) => (i % 2 === 0 ? { offset: r * V, target: (r * 37 + 5) % V } : { offset: r * V }));
        for (const k of [0, 3]) {
          const bytes = asked.length * rowResultWords(k) * 4;
          const out = gpu.device.createBuffer({ size: bytes + 64, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC });
          const enc = gpu.device.createCommandEncoder();
          red.encodeRows(enc, k, asked, out, 64);
          gpu.device.queue.submit([enc.finish()]);
          const words = new Uint32Array((await readF32(gpu.device, out, 16 + bytes / 4)).buffer).slice(16);
          parseRows(words, k, asked).forEach((got, i) => {
            const x = rows[asked[i]!.offset / V]!;
            const ref = topRef(x, Math.max(k, 1));
            expect(got.argmax, `vocab ${V} k ${k} row ${i} argmax`).toBe(ref.ids[0]);
            expect(Math.abs(got.logSumExp - ref.lse), `vocab ${V} k ${k} row ${i} logSumExp`).toBeLessThanOrEqual(2e-5 * Math.max(1, Math.abs(ref.lse)));
            const t = asked[i]!.target;
            if (t === undefined) expect(got.targetLogit).toBeNaN();
            else expect(got.targetLogit).toBe(x[t]);
            if (k > 0) expect(Array.from(got.ids)).toEqual(ref.ids.slice(0, k));
          });
          out.destroy();
        }
        red.destroy();
      }
    });
  }

  it('handles rows of equal values (more than the prefilter holds) and rows that are all -Infinity but one', async () => {
    const gpu = await testGpu();
    const ctx = opContext(gpu, 'software');
    const V = 1000;
    const flat = new Float32Array(V).fill(-2.5);
    const red = createLogitsReducer(ctx, bufferFrom(gpu.device, flat), V);
    await submit(gpu.device, (p) => red.encodeTopK(p, 40));
    const got = await red.readTopK();
    expect(Array.from(got.ids)).toEqual(Array.from({ length: 40 }, (_, i) => i));
    expect(got.logSumExp).toBeCloseTo(-2.5 + Math.log(V), 4);

    // More elements at the floor than the prefilter list holds: the selection reads the whole row.
    const wide = new Float32Array(40000).fill(1);
    wide[39999] = 2;
    const redWide = createLogitsReducer(ctx, bufferFrom(gpu.device, wide), wide.length);
    await submit(gpu.device, (p) => redWide.encodeTopK(p, 40));
    expect(Array.from((await redWide.readTopK()).ids)).toEqual([39999, ...Array.from({ length: 39 }, (_, i) => i)]);

    const spike = new Float32Array(V).fill(-Infinity);
    spike[777] = 3;
    const red2 = createLogitsReducer(ctx, bufferFrom(gpu.device, spike), V);
    await submit(gpu.device, (p) => red2.encodeTopK(p, 5));
    const got2 = await red2.readTopK();
    expect(Array.from(got2.ids)).toEqual([777, 0, 1, 2, 3]);
    expect(Array.from(got2.logits)).toEqual([3, -Infinity, -Infinity, -Infinity, -Infinity]);
    expect(got2.logSumExp).toBe(3);
  });

  it('rejects bad k, vocab and row offsets with a LogitsError', async () => {
    const gpu = await testGpu();
    const ctx = opContext(gpu, 'software');
    const buf = bufferFrom(gpu.device, new Float32Array(100));
    expect(() => createLogitsReducer(ctx, buf, 101)).toThrow(LogitsError);
    const red = createLogitsReducer(ctx, buf, 50);
    const enc = gpu.device.createCommandEncoder();
    const pass = enc.beginComputePass();
    expect(() => red.encodeTopK(pass, 51)).toThrow(LogitsError);
    expect(() => red.encodeTopK(pass, 0)).toThrow(LogitsError);
    expect(() => red.encodeArgmax(pass, 51)).toThrow(LogitsError);
    pass.end();
    await expect(red.readTopK()).rejects.toThrow(LogitsError);
  });

  it('times argmax and top-40 on a 151936 row against reading the row back (printed)', async () => {
    const gpu = await testGpu();
    const V = 151936;
    const row = logitsRow(V, 1);
    const buf = bufferFrom(gpu.device, row);
    const want = topRef(row, 40).ids;
    const reps = 20;
    const time = async (f: () => Promise<unknown>) => {
      await f();
      const t0 = performance.now();
      for (let i = 0; i < reps; i++) await f();
      return ((performance.now() - t0) / reps).toFixed(2);
    };
    const lines = [`whole-row readF32: ${await time(() => readF32(gpu.device, buf, V))} ms`];
    for (const variant of ['software', 'gpu'] as Variant[]) {
      const red = createLogitsReducer(opContext(gpu, variant), buf, V);
      const argmax = await time(async () => {
        await submit(gpu.device, (p) => red.encodeArgmax(p));
        return red.readArgmax();
      });
      const top40 = await time(async () => {
        await submit(gpu.device, (p) => red.encodeTopK(p, 40));
        return red.readTopK();
      });
      expect(await red.readArgmax()).toBe(want[0]);
      expect(Array.from((await red.readTopK()).ids)).toEqual(want);
      lines.push(`${variant}: argmax ${argmax} ms, top-40 ${top40} ms`);
      red.destroy();
    }
    console.log(`logits reductions over ${V} (incl. submit + read back):\n  ${lines.join('\n  ')}`);
  });
});
