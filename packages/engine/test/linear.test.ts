import { describe, expect, it } from 'vitest';
import { bufferFrom, readF32, storageUsage } from '../src/buffers.ts';
import { roundTo, type WeightDtype } from '../src/dtype.ts';
import type { Variant } from '../src/ops/context.ts';
import { createLinear, LinearError, MATVEC_MAX_TOKENS } from '../src/ops/linear.ts';
import { expectClose, randomArray, testGpu } from './harness.ts';
import { aloneAndTogether, makeWeight, opContext } from './weights-helper.ts';

/** float64 reference on the weights as stored: y[t, n] = y0[t, n] + sum_k x[t, k] W[n, k] + bias[n]. */
function linearRef(x: Float32Array, w: Float64Array, T: number, N: number, K: number, bias?: Float32Array, y0?: Float32Array): Float64Array {
  const y = new Float64Array(T * N);
  for (let t = 0; t < T; t++) {
    for (let n = 0; n < N; n++) {
      let s = (bias?.[n] ?? 0) + (y0?.[t * N + n] ?? 0);
      for (let k = 0; k < K; k++) s += x[t * K + k]! * w[n * K + k]!;
      y[t * N + n] = s;
    }
  }
  return y;
}

interface Case {
  N: number;
  K: number;
  T: number;
  split?: number[];
  bias?: boolean;
  acc?: boolean;
  uniformX?: boolean;
  /** Software variant only: weights in row tiles (src/tiles.ts); K % 8 == 0. */
  tiled?: boolean;
  /** Forces x through subgroup broadcasts on or off (default: on where the device allows). */
  sgx?: boolean;
  /** Software variant only: force the matvec for T > 1 (its threads loop over the tokens, 8 per dispatch). */
  matvec?: boolean;
}

const cases: Case[] = [
  { N: 1, K: 1, T: 1 },
  { N: 5, K: 1, T: 7 },
  { N: 37, K: 13, T: 1 },
  { N: 37, K: 13, T: 7, bias: true },
  { N: 70, K: 64, T: 1, bias: true, acc: true },
  { N: 70, K: 64, T: 33, acc: true },
  { N: 131, K: 96, T: 1, split: [43, 61, 27] },
  { N: 131, K: 96, T: 33, split: [43, 61, 27], bias: true },
  { N: 67, K: 29, T: 7, split: [3, 64] },
  { N: 67, K: 29, T: 1, split: [3, 64], acc: true },
  { N: 300, K: 200, T: 1, uniformX: true, bias: true },
  { N: 129, K: 72, T: 70 },
  { N: 45, K: 36, T: 33, split: [22, 23], bias: true },
  { N: 45, K: 36, T: 1, acc: true },
  // uniform x with several tokens: the matmul's 16-token windows (one, several, shifted to fit x)
  { N: 70, K: 64, T: 33, uniformX: true, acc: true },
  { N: 131, K: 96, T: 35, split: [43, 61, 27], uniformX: true, bias: true },
  { N: 37, K: 516, T: 70, uniformX: true },
  { N: 9, K: 1020, T: 17, uniformX: true },
  // row tiles: partial last tile, several chunks (each tiled on its own), uniform x, bias, accumulate
  { N: 1, K: 8, T: 1, tiled: true },
  { N: 37, K: 16, T: 1, tiled: true, bias: true },
  { N: 70, K: 64, T: 33, tiled: true, acc: true },
  { N: 131, K: 96, T: 1, split: [43, 61, 27], tiled: true, uniformX: true },
  { N: 131, K: 96, T: 35, split: [43, 61, 27], tiled: true, uniformX: true, bias: true },
  { N: 100, K: 200, T: 7, split: [64, 36], tiled: true, acc: true },
  { N: 33, K: 1016, T: 17, tiled: true, uniformX: true },
  // x through subgroup broadcasts (software, subgroups of 8) and the same shapes without
  { N: 70, K: 64, T: 1, bias: true, acc: true, sgx: true },
  { N: 70, K: 64, T: 1, bias: true, acc: true, sgx: false },
  { N: 131, K: 96, T: 1, split: [43, 61, 27], sgx: true },
  { N: 131, K: 96, T: 1, split: [43, 61, 27], sgx: false },
  { N: 37, K: 16, T: 1, tiled: true, bias: true, sgx: true },
  { N: 37, K: 16, T: 1, tiled: true, bias: true, sgx: false },
  { N: 100, K: 200, T: 1, split: [64, 36], tiled: true, acc: true, sgx: true },
  { N: 70, K: 64, T: 33, acc: true, sgx: true },
  { N: 70, K: 64, T: 33, acc: true, sgx: false },
  { N: 131, K: 96, T: 35, split: [43, 61, 27], tiled: true, bias: true, sgx: true },
  { N: 131, K: 96, T: 35, split: [43, 61, 27], tiled: true, bias: true, sgx: false },
  { N: 9, K: 1016, T: 70, tiled: true, sgx: true },
  { N: 45, K: 40, T: 16, bias: true, sgx: true },
  { N: 45, K: 40, T: 17, bias: true, sgx: false },
  // The software matvec over several tokens (a decode step over several sequences, and longer steps
  // in dispatches of 8 tokens): rows not whole tiles or subgroups, K % 8 != 0 (one weight at a
  // time), chunks, tiles, all three x paths, bias, accumulate.
  { N: 37, K: 13, T: 2, bias: true, matvec: true },
  { N: 5, K: 1, T: 3, matvec: true },
  { N: 67, K: 29, T: 5, split: [3, 64], acc: true, matvec: true },
  { N: 70, K: 64, T: 8, bias: true, acc: true, sgx: true, matvec: true },
  { N: 67, K: 40, T: 6, split: [3, 64], bias: true, sgx: true, matvec: true }, // x a token per lane (SGXT)
  { N: 37, K: 16, T: 5, tiled: true, acc: true, sgx: true, matvec: true },
  { N: 37, K: 16, T: 4, tiled: true, acc: true, sgx: true, matvec: true }, // x a value per lane (SGX)
  { N: 70, K: 64, T: 8, bias: true, acc: true, sgx: false, matvec: true },
  { N: 131, K: 96, T: 3, split: [43, 61, 27], tiled: true, sgx: true, matvec: true },
  { N: 131, K: 96, T: 5, split: [43, 61, 27], tiled: true, sgx: false, matvec: true },
  { N: 100, K: 200, T: 2, split: [64, 36], tiled: true, acc: true, uniformX: true, matvec: true },
  { N: 300, K: 200, T: 8, uniformX: true, bias: true, matvec: true },
  { N: 33, K: 1016, T: 5, tiled: true, uniformX: true, matvec: true }, // 5 rows of x overflow the 64 KiB window: storage
  { N: 131, K: 96, T: 19, split: [43, 61, 27], tiled: true, bias: true, matvec: true }, // 8 + 8 + 3 tokens
  { N: 45, K: 40, T: 11, acc: true, sgx: false, matvec: true },
  { N: 37, K: 13, T: 9, matvec: true },
];

describe('linear', () => {
  for (const variant of ['software', 'gpu'] as Variant[]) {
    for (const dtype of ['f32', 'bf16', 'f16'] as WeightDtype[]) {
      for (const c of cases) {
        if ((c.uniformX || c.tiled || c.sgx !== undefined || c.matvec) && variant === 'gpu') continue;
        const { N, K, T } = c;
        const desc = `${variant} ${dtype} N=${N} K=${K} T=${T}${c.split ? ` chunks=${c.split.join('/')}` : ''}${c.bias ? ' bias' : ''}${c.acc ? ' accumulate' : ''}${c.uniformX ? ' uniform-x' : ''}${c.tiled ? ' tiled' : ''}${c.sgx === undefined ? '' : c.sgx ? ' subgroup-x' : ' no-subgroup-x'}${c.matvec ? ' matvec' : ''}`;
        it(`matches the float64 reference: ${desc}`, async ({ skip }) => {
          const gpu = await testGpu();
          if (c.sgx && !(gpu.hasSubgroups && gpu.subgroupSize === 8)) skip('the adapter has no subgroups of exactly 8');
          const ctx = opContext(gpu, variant);
          const seed = N * 1000 + K * 10 + T;
          const wf = randomArray(N * K, seed, 0.5);
          const weight = makeWeight(gpu.device, wf, N, K, dtype, c.split, c.tiled);
          const bias = c.bias ? randomArray(N, seed + 1) : undefined;
          if (bias) weight.bias = bufferFrom(gpu.device, bias);
          const x = randomArray(T * K, seed + 2, 2);
          const y0 = randomArray(T * N, seed + 3);
          const xBuf = c.uniformX
            ? gpu.device.createBuffer({ size: Math.max(65536, Math.ceil(x.byteLength / 256) * 256), usage: storageUsage() | GPUBufferUsage.UNIFORM })
            : bufferFrom(gpu.device, x);
          if (c.uniformX) gpu.device.queue.writeBuffer(xBuf, 0, x.buffer, x.byteOffset, x.byteLength);
          const yBuf = bufferFrom(gpu.device, y0);
          const op = createLinear(ctx, weight, xBuf, yBuf, {
            maxTokens: T,
            ...(c.acc ? { accumulate: true } : {}),
            ...(c.uniformX ? (T === 1 || c.matvec ? { uniformX: true } : { matmulUniformX: true }) : {}),
            ...(c.sgx !== undefined ? { subgroupX: c.sgx } : {}),
            ...(c.matvec ? { force: 'matvec' as const } : {}),
          });
          const enc = gpu.device.createCommandEncoder();
          const pass = enc.beginComputePass();
          op.encode(pass, T);
          pass.end();
          gpu.device.queue.submit([enc.finish()]);
          const want = linearRef(x, roundTo(wf, dtype), T, N, K, bias, c.acc ? y0 : undefined);
          expectClose(await readF32(gpu.device, yBuf, T * N), want, { relL2: 1e-5 }, desc);
          op.destroy();
        });
      }
    }
  }

  // A decode step over several sequences sums each row's outputs exactly as a one-row step does
  // (the software matvec loops over the tokens inside its loop over K), so a row's output is the
  // same bits alone or beside others: steps of up to MATVEC_MAX_TOKENS rows by default, longer ones
  // under force 'matvec' (batchInvariant).
  const bitCases: { N: number; K: number; T: number; tiled?: boolean; sgx?: boolean; uniformX?: boolean; split?: number[]; force?: boolean }[] = [
    { N: 70, K: 64, T: 5 }, // subgroups: x a token per lane (SGXT) in the step, a value per lane alone
    { N: 70, K: 64, T: 4 }, // x a value per lane in both
    { N: 70, K: 64, T: 5, sgx: false },
    { N: 70, K: 64, T: 3, uniformX: true },
    { N: 131, K: 96, T: 5, tiled: true, split: [64, 67] },
    { N: 37, K: 13, T: 5 }, // K % 8 != 0: one weight at a time
    { N: 45, K: 200, T: MATVEC_MAX_TOKENS, tiled: true },
    { N: 45, K: 200, T: 11, tiled: true, force: true },
  ];
  for (const dtype of ['f32', 'bf16', 'f16'] as WeightDtype[]) {
    for (const c of bitCases) {
      const desc = `${dtype} N=${c.N} K=${c.K} T=${c.T}${c.tiled ? ' tiled' : ''}${c.split ? ` chunks=${c.split.join('/')}` : ''}${c.sgx === false ? ' no-subgroup-x' : ''}${c.uniformX ? ' uniform-x' : ''}${c.force ? " force 'matvec'" : ''}`;
      it(`software: each row's outputs are the same bits alone and in a step of several rows: ${desc}`, async () => {
        const gpu = await testGpu();
        const ctx = opContext(gpu, 'software');
        const { N, K, T } = c;
        const seed = N * 31 + K + T;
        const weight = makeWeight(gpu.device, randomArray(N * K, seed, 0.5), N, K, dtype, c.split, c.tiled);
        weight.bias = bufferFrom(gpu.device, randomArray(N, seed + 1));
        const x = randomArray(T * K, seed + 2, 2);
        const { together, alone } = await aloneAndTogether(
          gpu.device,
          (xBuf, [y]) =>
            createLinear(ctx, weight, xBuf, y!, {
              maxTokens: T,
              ...(c.sgx === false ? { subgroupX: false } : {}),
              ...(c.uniformX ? { uniformX: true } : {}),
              ...(c.force ? { force: 'matvec' as const } : {}),
            }),
          x,
          K,
          T,
          [N],
        );
        expect(together[0]).toEqual(alone[0]);
      });
    }
  }

  it('runs both kernels on one op: matvec for 1 token, matmul for more', async () => {
    const gpu = await testGpu();
    const ctx = opContext(gpu, 'software');
    const [N, K, T] = [40, 16, 5];
    const wf = randomArray(N * K, 9);
    const x = randomArray(T * K, 10);
    const xBuf = bufferFrom(gpu.device, x);
    const yBuf = bufferFrom(gpu.device, new Float32Array(T * N));
    const op = createLinear(ctx, makeWeight(gpu.device, wf, N, K, 'bf16', [24, 16]), xBuf, yBuf, { maxTokens: T });
    const w = roundTo(wf, 'bf16');
    for (const tokens of [T, 1]) {
      const enc = gpu.device.createCommandEncoder();
      const pass = enc.beginComputePass();
      op.encode(pass, tokens);
      pass.end();
      gpu.device.queue.submit([enc.finish()]);
      expectClose(await readF32(gpu.device, yBuf, tokens * N), linearRef(x, w, tokens, N, K), { relL2: 1e-5 }, `${tokens} tokens`);
    }
  });

  it('rejects bad shapes with a LinearError', async () => {
    const gpu = await testGpu();
    const ctx = opContext(gpu, 'software');
    const w = makeWeight(gpu.device, randomArray(8 * 4, 1), 8, 4, 'f32', [3, 5]);
    const x = bufferFrom(gpu.device, new Float32Array(8));
    const y = bufferFrom(gpu.device, new Float32Array(16));
    expect(() => createLinear(ctx, { ...w, chunks: [w.chunks[1]!] }, x, y)).toThrow(LinearError);
    expect(() => createLinear(ctx, w, x, y, { maxTokens: 3 })).toThrow(LinearError);
    expect(() => createLinear(ctx, w, x, y, { maxTokens: 2, matmulUniformX: true })).toThrow(LinearError);
    expect(() => createLinear(ctx, { ...w, tiled: true }, x, y)).toThrow(/cols % 8 == 0/);
    const tiled = makeWeight(gpu.device, randomArray(8 * 8, 2), 8, 8, 'f32', [8], true);
    expect(() => createLinear(opContext(gpu, 'gpu'), tiled, x, y)).toThrow(/software variant/);
    const op = createLinear(ctx, w, x, y, { maxTokens: 2 });
    const pass = gpu.device.createCommandEncoder().beginComputePass();
    expect(() => op.encode(pass, 3)).toThrow(LinearError);
    pass.end();
  });
});
