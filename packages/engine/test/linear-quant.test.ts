// The fused dequant kernels (matvec_q, matmul_q) against a float64 reference on the weights as
// stored (src/quant.ts's dequantize), for both formats, both variants, on adapters with and
// without shader-f16, with row chunks, bias, accumulate, a partial last group, and column permutation,
// and on the software variant with words and scales in row tiles (src/tiles.ts).
import { describe, expect, it } from 'vitest';
import { bufferFrom, readF32, storageUsage } from '../src/buffers.ts';
import { requestGpu, type Gpu } from '../src/device.ts';
import type { Variant } from '../src/ops/context.ts';
import { createLinear, LinearError, MATVEC_MAX_TOKENS, type LinearWeight } from '../src/ops/linear.ts';
import type { QuantFormat } from '../src/quant.ts';
import { expectClose, randomArray, rng, testGpu } from './harness.ts';
import { aloneAndTogether, makeQuantWeight, opContext } from './weights-helper.ts';

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
  G?: number;
  split?: number[];
  bias?: boolean;
  acc?: boolean;
  perm?: boolean;
  /** Software variant: force the prefill's x through uniform windows (true) or storage (false). */
  xu?: boolean;
  /** Software variant: force the decode's x through a uniform buffer (true) or storage (false). */
  uniformX?: boolean;
  /** Software variant only: words and scales in row tiles. */
  tiled?: boolean;
  /** Software variant: force x through subgroup broadcasts (decode and prefill) on or off. */
  sgx?: boolean;
  /** Software variant only: force the matvec for T > 1 (its threads loop over the tokens, 8 per dispatch). */
  matvec?: boolean;
}

const cases: Case[] = [
  { N: 1, K: 32, T: 1 },
  { N: 37, K: 64, T: 1, bias: true },
  { N: 37, K: 64, T: 7, bias: true },
  { N: 70, K: 172, T: 1, acc: true }, // stories260K's down_proj: a partial last group
  { N: 70, K: 172, T: 33, acc: true },
  { N: 131, K: 96, T: 1, split: [43, 61, 27] },
  { N: 131, K: 96, T: 9, split: [43, 61, 27], bias: true },
  { N: 64, K: 256, T: 1, G: 128 },
  { N: 64, K: 256, T: 5, G: 64, acc: true },
  { N: 45, K: 128, T: 1, perm: true, bias: true },
  { N: 45, K: 128, T: 6, perm: true },
  { N: 300, K: 40, T: 1 },
  // The storage-x matmul (xu: false, sgx: false) and the uniform-x one (XU), which the software
  // variant picks for K % 4 == 0, K <= 1020 where subgroups are not 8 wide:
  { N: 37, K: 64, T: 7, bias: true, xu: false, sgx: false },
  { N: 70, K: 172, T: 33, acc: true, xu: false, sgx: false },
  { N: 45, K: 128, T: 6, perm: true, xu: false, sgx: false },
  { N: 67, K: 96, T: 16, bias: true, xu: true }, // exactly one window
  { N: 131, K: 96, T: 40, split: [43, 61, 27], acc: true, xu: true }, // three windows, the last partial
  { N: 21, K: 1020, T: 20, xu: true }, // K at the limit (16 tokens fill 64 KiB less 256 B), partial last group
  { N: 9, K: 1020, T: 35, G: 128, perm: true, xu: true },
  { N: 33, K: 236, T: 18, G: 64, xu: true }, // q4: the partial last group ends mid-word
  { N: 13, K: 66, T: 5 }, // K % 4 != 0: storage x
  { N: 37, K: 64, T: 1, uniformX: false, sgx: false },
  // Row tiles: partial last tile, several chunks (each tiled on its own), both x paths of both
  // kernels, bias, accumulate, partial last group (TAIL), column permutation.
  { N: 1, K: 32, T: 1, tiled: true },
  { N: 37, K: 64, T: 1, bias: true, tiled: true },
  { N: 37, K: 64, T: 1, bias: true, uniformX: false, sgx: false, tiled: true },
  { N: 37, K: 64, T: 7, bias: true, xu: false, sgx: false, tiled: true },
  { N: 70, K: 172, T: 1, acc: true, tiled: true },
  { N: 70, K: 172, T: 1, acc: true, uniformX: false, sgx: false, tiled: true },
  { N: 70, K: 172, T: 33, acc: true, xu: false, sgx: false, tiled: true },
  { N: 70, K: 172, T: 33, acc: true, xu: true, tiled: true },
  { N: 131, K: 96, T: 1, split: [43, 61, 27], tiled: true },
  { N: 131, K: 96, T: 40, split: [43, 61, 27], acc: true, xu: true, tiled: true },
  { N: 131, K: 96, T: 9, split: [64, 67], bias: true, xu: false, sgx: false, tiled: true },
  { N: 300, K: 40, T: 1, split: [96, 204], tiled: true },
  { N: 64, K: 256, T: 1, G: 128, tiled: true },
  { N: 64, K: 256, T: 5, G: 64, acc: true, xu: false, sgx: false, tiled: true },
  { N: 45, K: 128, T: 1, perm: true, bias: true, tiled: true },
  { N: 45, K: 128, T: 6, perm: true, xu: false, sgx: false, tiled: true },
  { N: 9, K: 1020, T: 35, G: 128, perm: true, xu: true, tiled: true },
  { N: 33, K: 236, T: 18, G: 64, xu: true, tiled: true },
  { N: 13, K: 66, T: 1, tiled: true },
  { N: 13, K: 66, T: 5, tiled: true },
  // x through subgroup broadcasts (the software default where subgroups have 8 lanes): partial
  // last group, K % 8 != 0, chunks, permutation, tiles.
  { N: 70, K: 172, T: 1, acc: true, sgx: true },
  { N: 13, K: 66, T: 1, bias: true, sgx: true },
  { N: 131, K: 96, T: 1, split: [43, 61, 27], sgx: true, tiled: true },
  { N: 45, K: 128, T: 1, perm: true, bias: true, sgx: true, tiled: true },
  { N: 64, K: 256, T: 1, G: 128, sgx: true },
  { N: 64, K: 256, T: 1, G: 128, sgx: false },
  // The prefill through subgroup broadcasts, 16 tokens per thread: one whole token group, a lone
  // token in the last group, chunks, tiles, partial last group (q4: ending mid-word), K % 8 != 0,
  // permutation, bias, accumulate, fewer rows than a subgroup covers.
  { N: 67, K: 96, T: 16, bias: true, sgx: true },
  { N: 131, K: 96, T: 17, split: [43, 61, 27], acc: true, sgx: true },
  { N: 131, K: 96, T: 33, split: [64, 67], bias: true, sgx: true, tiled: true },
  { N: 70, K: 172, T: 33, acc: true, sgx: true },
  { N: 70, K: 172, T: 70, acc: true, sgx: true, tiled: true },
  { N: 33, K: 236, T: 18, G: 64, bias: true, sgx: true },
  { N: 33, K: 236, T: 70, G: 64, sgx: true, tiled: true },
  { N: 13, K: 66, T: 17, acc: true, sgx: true },
  { N: 45, K: 128, T: 33, perm: true, bias: true, sgx: true },
  { N: 45, K: 128, T: 16, perm: true, acc: true, sgx: true, tiled: true },
  { N: 300, K: 40, T: 70, split: [96, 204], bias: true, sgx: true, tiled: true },
  { N: 64, K: 256, T: 17, G: 128, split: [32, 32], acc: true, sgx: true },
  { N: 9, K: 1020, T: 35, G: 128, perm: true, sgx: true },
  // The software matvec over several tokens (decode steps over several sequences; longer steps in
  // dispatches of 8 tokens): partial last group (q4: mid-word), K % 8 != 0 (subgroup x only:
  // without it, rows of x need K % 4 == 0), chunks, tiles, permutation (GPTQ act-order), G = 128,
  // all three x paths, bias, accumulate.
  { N: 37, K: 64, T: 2, bias: true, matvec: true },
  { N: 70, K: 172, T: 3, acc: true, sgx: true, matvec: true },
  { N: 70, K: 172, T: 5, acc: true, sgx: false, uniformX: false, tiled: true, matvec: true },
  { N: 70, K: 172, T: 8, bias: true, uniformX: true, matvec: true },
  { N: 13, K: 66, T: 5, bias: true, sgx: true, matvec: true },
  { N: 131, K: 96, T: 8, split: [43, 61, 27], tiled: true, matvec: true },
  { N: 131, K: 96, T: 3, split: [43, 61, 27], sgx: false, matvec: true },
  { N: 64, K: 256, T: 5, G: 128, acc: true, tiled: true, matvec: true },
  { N: 45, K: 128, T: 5, perm: true, bias: true, tiled: true, matvec: true },
  { N: 45, K: 128, T: 8, perm: true, sgx: false, matvec: true },
  { N: 33, K: 236, T: 2, G: 64, sgx: false, matvec: true },
  { N: 33, K: 236, T: 19, G: 64, bias: true, tiled: true, matvec: true }, // 8 + 8 + 3 tokens
  { N: 9, K: 1020, T: 11, G: 128, perm: true, uniformX: true, matvec: true }, // the window holds token 0 only: storage
];

async function gpuWithoutF16(): Promise<Gpu> {
  return requestGpu({ disableFeatures: ['shader-f16'] });
}

describe('quantized linear (matvec_q, matmul_q)', () => {
  for (const f16 of [true, false]) {
    for (const variant of ['software', 'gpu'] as Variant[]) {
      for (const format of ['q8', 'q4'] as QuantFormat[]) {
        for (const c of cases) {
          if (!f16 && variant === 'gpu') continue;
          // The kernels take no f16 path, so tiles are checked once, on the software variant.
          if (c.tiled && (variant === 'gpu' || !f16)) continue;
          if ((c.uniformX !== undefined || c.sgx !== undefined || c.matvec) && variant === 'gpu') continue;
          const { N, K, T } = c;
          const G = c.G ?? 32;
          const soft = variant === 'software';
          const desc = `${f16 ? '' : 'no-f16 '}${variant} ${format} G=${G} N=${N} K=${K} T=${T}${c.split ? ` chunks=${c.split.join('/')}` : ''}${c.bias ? ' bias' : ''}${c.acc ? ' accumulate' : ''}${c.perm ? ' permuted' : ''}${c.xu !== undefined && soft ? ` matmulUniformX=${c.xu}` : ''}${c.uniformX !== undefined ? ` uniformX=${c.uniformX}` : ''}${c.tiled ? ' tiled' : ''}${c.sgx !== undefined ? ` subgroupX=${c.sgx}` : ''}${c.matvec ? ' matvec' : ''}`;
          it(`matches the float64 reference: ${desc}`, async ({ skip }) => {
            const gpu = f16 ? await testGpu() : await gpuWithoutF16();
            if (c.sgx && !(gpu.hasSubgroups && gpu.subgroupSize === 8)) skip('the adapter has no subgroups of exactly 8');
            if (!f16) expect(gpu.hasF16).toBe(false);
            const ctx = opContext(gpu, variant);
            const seed = N * 1000 + K * 10 + T + (format === 'q4' ? 7 : 0);
            const wf = randomArray(N * K, seed, 0.5);
            const { weight, deq } = makeQuantWeight(gpu.device, wf, N, K, { format, groupSize: G, symmetric: format === 'q8' }, c.split, c.tiled);
            const x = randomArray(T * K, seed + 1, 1);
            let xRef = x;
            if (c.perm) {
              // Column j of the stored weight meets x[perm[j]]: the reference permutes x the same way.
              const r = rng(seed + 5);
              const perm = Uint32Array.from({ length: K }, (_, i) => i);
              for (let i = K - 1; i > 0; i--) {
                const j = Math.floor(r() * (i + 1));
                [perm[i], perm[j]] = [perm[j]!, perm[i]!];
              }
              weight.quant!.perm = bufferFrom(gpu.device, perm);
              xRef = new Float32Array(T * K);
              for (let t = 0; t < T; t++) for (let j = 0; j < K; j++) xRef[t * K + j] = x[t * K + perm[j]!]!;
            }
            const bias = c.bias ? randomArray(N, seed + 2, 1) : undefined;
            if (bias) weight.bias = bufferFrom(gpu.device, bias);
            const y0 = c.acc ? randomArray(T * N, seed + 3, 1) : undefined;
            // Rounded up to 256 bytes so the last uniform window of x can end at the buffer's end.
            const xBuf = gpu.device.createBuffer({ size: Math.max(Math.ceil((T * K * 4) / 256) * 256, 65536), usage: storageUsage() | GPUBufferUsage.UNIFORM, mappedAtCreation: true });
            new Float32Array(xBuf.getMappedRange(), 0, T * K).set(x);
            xBuf.unmap();
            const yBuf = bufferFrom(gpu.device, y0 ?? new Float32Array(T * N));
            const op = createLinear(ctx, weight, xBuf, yBuf, {
              maxTokens: T,
              ...(c.acc ? { accumulate: true } : {}),
              ...(c.xu !== undefined && soft ? { matmulUniformX: c.xu } : {}),
              ...(c.uniformX !== undefined ? { uniformX: c.uniformX } : {}),
              ...(c.sgx !== undefined ? { subgroupX: c.sgx } : {}),
              ...(c.matvec ? { force: 'matvec' as const } : {}),
            });
            const enc = gpu.device.createCommandEncoder();
            const pass = enc.beginComputePass();
            op.encode(pass, T);
            pass.end();
            gpu.device.queue.submit([enc.finish()]);
            const got = await readF32(gpu.device, yBuf, T * N);
            expectClose(got, linearRef(xRef, deq, T, N, K, bias, y0), { relL2: 1e-5 }, desc);
            op.destroy();
          });
        }
      }
    }
  }

  // Each row of a decode step over several sequences is summed as in a one-row step (matvec_q's
  // software threads loop over the tokens inside the loop over groups): the same bits alone or
  // batched, for steps of up to MATVEC_MAX_TOKENS rows by default and longer ones under force
  // 'matvec'. GPTQ and AWQ weights are repacked into q4 (src/gptq.ts, src/awq.ts), act-order ones
  // with a column permutation (perm).
  const bitCases: { N: number; K: number; T: number; G?: number; tiled?: boolean; sgx?: boolean; uniformX?: boolean; perm?: boolean; split?: number[]; force?: boolean }[] = [
    { N: 70, K: 172, T: 5 },
    { N: 70, K: 172, T: 5, sgx: false, tiled: true },
    { N: 70, K: 172, T: 3, uniformX: true },
    { N: 131, K: 96, T: 5, split: [64, 67], tiled: true },
    { N: 13, K: 66, T: 5 }, // K % 8 != 0 through subgroup x
    { N: 45, K: 128, T: 5, perm: true, G: 128, tiled: true },
    { N: 45, K: 256, T: MATVEC_MAX_TOKENS, G: 64, tiled: true },
    { N: 45, K: 256, T: 11, tiled: true, force: true },
  ];
  for (const format of ['q8', 'q4'] as QuantFormat[]) {
    for (const c of bitCases) {
      const G = c.G ?? 32;
      const desc = `${format} G=${G} N=${c.N} K=${c.K} T=${c.T}${c.tiled ? ' tiled' : ''}${c.split ? ` chunks=${c.split.join('/')}` : ''}${c.perm ? ' permuted' : ''}${c.sgx === false ? ' no-subgroup-x' : ''}${c.uniformX ? ' uniform-x' : ''}${c.force ? " force 'matvec'" : ''}`;
      it(`software: each row's outputs are the same bits alone and in a step of several rows: ${desc}`, async () => {
        const gpu = await testGpu();
        const ctx = opContext(gpu, 'software');
        const { N, K, T } = c;
        const seed = N * 31 + K + T;
        const { weight } = makeQuantWeight(gpu.device, randomArray(N * K, seed, 0.5), N, K, { format, groupSize: G, symmetric: format === 'q8' }, c.split, c.tiled);
        weight.bias = bufferFrom(gpu.device, randomArray(N, seed + 1));
        if (c.perm) {
          const r = rng(seed + 5);
          const perm = Uint32Array.from({ length: K }, (_, i) => i).sort(() => r() - 0.5);
          weight.quant!.perm = bufferFrom(gpu.device, perm);
        }
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

  it('refuses a quantized weight without scales, or with too few bytes', async () => {
    const gpu = await testGpu();
    const ctx = opContext(gpu, 'software');
    const { weight } = makeQuantWeight(gpu.device, randomArray(8 * 64, 1), 8, 64, { format: 'q4', groupSize: 32, symmetric: false });
    const x = bufferFrom(gpu.device, new Float32Array(64));
    const y = bufferFrom(gpu.device, new Float32Array(8));
    const noScales: LinearWeight = { ...weight, chunks: [{ ...weight.chunks[0]!, scales: undefined }] };
    expect(() => createLinear(ctx, noScales, x, y)).toThrow(/no scales buffer/);
    const short: LinearWeight = { ...weight, cols: 128 };
    expect(() => createLinear(ctx, short, x, y)).toThrow(LinearError);
    const badGroup: LinearWeight = { ...weight, quant: { format: 'q4', groupSize: 48 } };
    expect(() => createLinear(ctx, badGroup, x, y)).toThrow(/multiple of 32/);
  });

  it('refuses subgroupX together with matmulUniformX', async ({ skip }) => {
    const gpu = await testGpu();
    if (!(gpu.hasSubgroups && gpu.subgroupSize === 8)) skip('the adapter has no subgroups of exactly 8');
    const { weight } = makeQuantWeight(gpu.device, randomArray(8 * 64, 1), 8, 64, { format: 'q8', groupSize: 32, symmetric: true });
    const x = gpu.device.createBuffer({ size: 65536, usage: storageUsage() | GPUBufferUsage.UNIFORM });
    const y = bufferFrom(gpu.device, new Float32Array(8 * 4));
    expect(() => createLinear(opContext(gpu, 'software'), weight, x, y, { maxTokens: 4, subgroupX: true, matmulUniformX: true })).toThrow(/subgroupX excludes uniformX and matmulUniformX/);
  });

  it('refuses tiled quantized weights on the gpu variant, and tiled chunks without their padding rows', async () => {
    const gpu = await testGpu();
    const x = bufferFrom(gpu.device, new Float32Array(64));
    const y = bufferFrom(gpu.device, new Float32Array(37));
    const spec = { format: 'q8', groupSize: 32, symmetric: true } as const;
    const { weight } = makeQuantWeight(gpu.device, randomArray(37 * 64, 1), 37, 64, spec, [37], true);
    expect(() => createLinear(opContext(gpu, 'gpu'), weight, x, y)).toThrow(/tiled quantized weights are for the software variant/);
    // Row-major buffers hold 37 rows; tiled, the chunk needs 64.
    const { weight: rowMajor } = makeQuantWeight(gpu.device, randomArray(37 * 64, 1), 37, 64, spec);
    expect(() => createLinear(opContext(gpu, 'software'), { ...rowMajor, tiled: true }, x, y)).toThrow(/needs 4096 \(tiled\)/);
    const scalesShort: LinearWeight = { ...weight, chunks: [{ ...weight.chunks[0]!, scales: rowMajor.chunks[0]!.scales }] };
    expect(() => createLinear(opContext(gpu, 'software'), scalesShort, x, y)).toThrow(/bytes of scales, needs 512 \(tiled\)/);
  });
});
