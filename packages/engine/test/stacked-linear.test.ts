// Stacked projections (src/fuse.ts) through the linear epilogues (kernels/linear_store.wgsl):
// q|k|v written to three outputs, gate|up written as silu(gate) * up, and on the GPU variant the
// RMSNorm applied inside the op (LinearOptions.norm). Each case builds the parts as separate
// weights, stacks them on the GPU and checks the op against a float64 reference computed from the
// parts: dense (f32, bf16) and quantized (q8, q4) weights, both variants, row tiles, decode and
// prefill, bias, and several chunks on both sides of the stacking.
import { describe, expect, it } from 'vitest';
import { bufferFrom, readF32, storageUsage } from '../src/buffers.ts';
import { roundTo, type WeightDtype } from '../src/dtype.ts';
import { stackRefusal, stackWeights, type Stacking } from '../src/fuse.ts';
import type { Variant } from '../src/ops/context.ts';
import { createLinear, LinearError, storedRows, type LinearWeight } from '../src/ops/linear.ts';
import { GLU_BLOCK } from '../src/ops/linear-epilogue.ts';
import { groupsPerRow, rowWords } from '../src/quant.ts';
import { expectClose, kernels, randomArray, rmsNormRef, testGpu } from './harness.ts';
import { aloneAndTogether, makeQuantWeight, makeWeight, opContext } from './weights-helper.ts';

type Format = WeightDtype | 'q8' | 'q4';

/** A weight [rows, K] in `format`, chunked by `split`, and the values its kernels multiply by. */
function part(device: GPUDevice, format: Format, rows: number, K: number, seed: number, tiled: boolean, split?: number[]): { w: LinearWeight; ref: Float64Array } {
  const values = randomArray(rows * K, seed, 0.5);
  if (format === 'q8' || format === 'q4') {
    const { weight, deq } = makeQuantWeight(device, values, rows, K, { format, groupSize: 32, symmetric: format === 'q8' }, split, tiled);
    return { w: weight, ref: deq };
  }
  return { w: makeWeight(device, values, rows, K, format, split, tiled), ref: roundTo(values, format) };
}

/** y [T, N] = x W^T + bias in float64. */
function linearRef(x: ArrayLike<number>, w: Float64Array, T: number, N: number, K: number, bias?: Float32Array): Float64Array {
  const y = new Float64Array(T * N);
  for (let t = 0; t < T; t++) {
    for (let n = 0; n < N; n++) {
      let s = bias?.[n] ?? 0;
      for (let k = 0; k < K; k++) s += x[t * K + k]! * w[n * K + k]!;
      y[t * N + n] = s;
    }
  }
  return y;
}

const silu = (g: number) => g / (1 + Math.exp(-g));

interface Case {
  kind: Stacking['kind'] | 'plain';
  /** Rows of each part: [q, k, v], [intermediate] (gate and up), or [N] for a plain weight. */
  rows: number[];
  K: number;
  T: number;
  bias?: boolean;
  /** GPU variant: the RMSNorm inside the op. */
  norm?: boolean;
  /** Software variant: parts and the stacked weight in row tiles. */
  tiled?: boolean;
  /** Row chunks of the first part, and the stacked weight's binding limit in rows of packed weights. */
  partSplit?: number[];
  stackedChunkRows?: number;
  /** Software variant only: force the matvec for T > 1 (its threads loop over the tokens). */
  matvec?: boolean;
}

const cases: Case[] = [
  { kind: 'split', rows: [37, 19, 19], K: 72, T: 1 },
  { kind: 'split', rows: [37, 19, 19], K: 72, T: 21, bias: true },
  { kind: 'split', rows: [40, 8, 8], K: 64, T: 1, tiled: true, bias: true },
  { kind: 'split', rows: [40, 8, 8], K: 64, T: 35, tiled: true },
  { kind: 'split', rows: [37, 19, 19], K: 72, T: 21, partSplit: [20, 17], stackedChunkRows: 32 },
  { kind: 'split', rows: [37, 19, 19], K: 72, T: 1, tiled: true, partSplit: [32, 5], stackedChunkRows: 32 },
  { kind: 'glu', rows: [48], K: 40, T: 1 },
  { kind: 'glu', rows: [48], K: 40, T: 19, bias: true },
  { kind: 'glu', rows: [48], K: 36, T: 19 },
  { kind: 'glu', rows: [48], K: 64, T: 1, tiled: true, bias: true },
  { kind: 'glu', rows: [48], K: 64, T: 33, tiled: true },
  { kind: 'glu', rows: [64], K: 40, T: 19, partSplit: [32, 32], stackedChunkRows: 32 },
  { kind: 'glu', rows: [64], K: 40, T: 1, tiled: true, partSplit: [32, 32], stackedChunkRows: 64 },
  { kind: 'plain', rows: [37], K: 64, T: 1, norm: true },
  { kind: 'plain', rows: [37], K: 64, T: 21, norm: true, bias: true },
  { kind: 'split', rows: [37, 19, 19], K: 72, T: 1, norm: true },
  { kind: 'split', rows: [37, 19, 19], K: 72, T: 70, norm: true, bias: true },
  { kind: 'glu', rows: [48], K: 40, T: 1, norm: true },
  { kind: 'glu', rows: [48], K: 40, T: 19, norm: true, bias: true },
  // The software matvec over several tokens (decode steps over several sequences), which the op
  // picks for 2..8 tokens; 19 tokens run as 8 + 8 + 3.
  { kind: 'split', rows: [37, 19, 19], K: 72, T: 2, bias: true, matvec: true },
  { kind: 'split', rows: [37, 19, 19], K: 72, T: 5, tiled: true, partSplit: [32, 5], stackedChunkRows: 32, matvec: true },
  { kind: 'split', rows: [40, 8, 8], K: 64, T: 19, tiled: true, matvec: true },
  { kind: 'glu', rows: [48], K: 40, T: 3, bias: true, matvec: true },
  { kind: 'glu', rows: [48], K: 36, T: 8, matvec: true },
  { kind: 'glu', rows: [64], K: 40, T: 5, tiled: true, partSplit: [32, 32], stackedChunkRows: 32, matvec: true },
];

describe('stacked linear weights and their epilogues', () => {
  for (const variant of ['software', 'gpu'] as Variant[]) {
    for (const format of ['f32', 'bf16', 'q8', 'q4'] as Format[]) {
      for (const c of cases) {
        if (c.norm && variant === 'software') continue;
        if ((c.tiled || c.matvec) && variant === 'gpu') continue;
        const desc = `${variant} ${format} ${c.kind} rows=${c.rows.join('/')} K=${c.K} T=${c.T}${c.bias ? ' bias' : ''}${c.norm ? ' norm' : ''}${c.tiled ? ' tiled' : ''}${c.partSplit ? ` part chunks ${c.partSplit.join('/')}` : ''}${c.stackedChunkRows ? ` stacked chunks of ${c.stackedChunkRows}` : ''}${c.matvec ? ' matvec' : ''}`;
        it(`matches the float64 reference: ${desc}`, async () => {
          const gpu = await testGpu();
          const ctx = opContext(gpu, variant);
          const { K, T } = c;
          const seed = c.rows[0]! * 131 + K * 7 + T + format.length;
          const partRows = c.kind === 'glu' ? [c.rows[0]!, c.rows[0]!] : c.rows;
          const parts = partRows.map((n, i) => part(gpu.device, format, n, K, seed + 10 * i, !!c.tiled, i === 0 ? c.partSplit : undefined));
          const biases = c.bias ? partRows.map((n, i) => randomArray(n, seed + 10 * i + 1, 1)) : undefined;
          parts.forEach((p, i) => biases && (p.w.bias = bufferFrom(gpu.device, biases[i]!)));
          const how: Stacking | undefined = c.kind === 'split' ? { kind: 'split' } : c.kind === 'glu' ? { kind: 'glu', block: GLU_BLOCK[variant] } : undefined;
          let weight = parts[0]!.w;
          if (how) {
            const w0 = parts[0]!.w;
            const planeRowBytes = w0.quant ? rowWords(w0.quant, K) * 4 : (K * (format === 'f32' ? 4 : 2));
            weight = stackWeights(gpu.device, kernels(gpu), parts.map((p) => p.w), how, c.stackedChunkRows ? { maxBindingBytes: c.stackedChunkRows * planeRowBytes } : {});
            if (c.stackedChunkRows) expect(weight.chunks.length).toBeGreaterThan(1);
          }
          const x = randomArray(T * K, seed + 5, 2);
          const gamma = c.norm ? randomArray(K, seed + 6, 1) : undefined;
          const eps = 1e-5;
          const xRef = gamma ? rmsNormRef(x, gamma, T, K, eps) : x;
          const xBuf = gpu.device.createBuffer({ size: Math.max(65536, Math.ceil(x.byteLength / 256) * 256), usage: storageUsage() | GPUBufferUsage.UNIFORM });
          gpu.device.queue.writeBuffer(xBuf, 0, x.buffer, x.byteOffset, x.byteLength);
          const wants = parts.map((p, i) => linearRef(xRef, p.ref, T, partRows[i]!, K, biases?.[i]));
          let outs: GPUBuffer[];
          let expected: Float64Array[];
          if (c.kind === 'glu') {
            const I = partRows[0]!;
            const act = new Float64Array(T * I);
            for (let e = 0; e < T * I; e++) act[e] = silu(wants[0]![e]!) * wants[1]![e]!;
            outs = [gpu.device.createBuffer({ size: T * I * 4, usage: storageUsage() })];
            expected = [act];
          } else {
            outs = partRows.map((n) => gpu.device.createBuffer({ size: T * n * 4, usage: storageUsage() }));
            expected = wants;
          }
          const op = createLinear(ctx, weight, xBuf, c.kind === 'split' ? outs : outs[0]!, {
            maxTokens: T,
            ...(gamma ? { norm: { weight: bufferFrom(gpu.device, gamma), eps } } : {}),
            ...(c.matvec ? { force: 'matvec' as const } : {}),
          });
          const enc = gpu.device.createCommandEncoder();
          const pass = enc.beginComputePass();
          op.encode(pass, T);
          pass.end();
          gpu.device.queue.submit([enc.finish()]);
          for (const [i, b] of outs.entries()) {
            expectClose(await readF32(gpu.device, b, expected[i]!.length), expected[i]!, { relL2: 1e-5 }, `${desc}, output ${i}`);
          }
          op.destroy();
        });
      }
    }
  }

  // The q|k|v split and the gate|up GLU of a decode step over 5 sequences: each row's outputs the
  // same bits as in a one-row step (software matvec, every format).
  for (const format of ['f32', 'bf16', 'q8', 'q4'] as Format[]) {
    for (const kind of ['split', 'glu'] as const) {
      it(`software: each row's ${kind} outputs are the same bits alone and in a step of 5 rows: ${format}`, async () => {
        const gpu = await testGpu();
        const ctx = opContext(gpu, 'software');
        const [K, T] = [72, 5];
        const partRows = kind === 'glu' ? [48, 48] : [37, 19, 19];
        const parts = partRows.map((n, i) => part(gpu.device, format, n, K, 700 + 10 * i, true).w);
        const how: Stacking = kind === 'split' ? { kind: 'split' } : { kind: 'glu', block: GLU_BLOCK.software };
        const weight = stackWeights(gpu.device, kernels(gpu), parts, how);
        const widths = kind === 'glu' ? [48] : partRows;
        const x = randomArray(T * K, 77, 2);
        const { together, alone } = await aloneAndTogether(gpu.device, (xBuf, outs) => createLinear(ctx, weight, xBuf, kind === 'split' ? outs : outs[0]!, { maxTokens: T }), x, K, T, widths);
        together.forEach((t, i) => expect(t, `output ${i}`).toEqual(alone[i]));
      });
    }
  }

  it('stacked buffers hold exactly the parts: their sizes follow the stacked rows', async () => {
    const gpu = await testGpu();
    const parts = [37, 19, 19].map((n, i) => part(gpu.device, 'q4', n, 72, 50 + i, true).w);
    const w = stackWeights(gpu.device, kernels(gpu), parts, { kind: 'split' });
    expect(w.rows).toBe(75);
    expect(w.split).toEqual([37, 19, 19]);
    const c = w.chunks[0]!;
    expect(c.buffer.size).toBe(storedRows(w, c) * rowWords(w.quant!, 72) * 4);
    expect(c.scales!.size).toBe(storedRows(w, c) * groupsPerRow(w.quant!, 72) * 4);
  });

  it('refuses what cannot be stacked, and epilogues that cannot combine', async () => {
    const gpu = await testGpu();
    const f32 = (n: number, K = 16) => part(gpu.device, 'f32', n, K, n, false).w;
    expect(stackRefusal([f32(8), f32(8, 24), f32(8)], { kind: 'split' })).toMatch(/columns/);
    expect(stackRefusal([f32(8), f32(8)], { kind: 'split' })).toMatch(/3 weights/);
    expect(stackRefusal([f32(8), f32(16)], { kind: 'glu', block: 2 })).toMatch(/gate has 8 rows and up 16/);
    expect(stackRefusal([f32(6), f32(6)], { kind: 'glu', block: 4 })).toMatch(/whole blocks/);
    expect(stackRefusal([f32(8), part(gpu.device, 'q8', 8, 16, 3, false).w], { kind: 'glu', block: 2 })).toMatch(/formats/);
    expect(stackRefusal([part(gpu.device, 'bf16', 8, 15, 4, false).w, part(gpu.device, 'bf16', 8, 15, 5, false).w], { kind: 'glu', block: 2 })).toMatch(/whole words/);
    const withBias = f32(8);
    withBias.bias = bufferFrom(gpu.device, new Float32Array(8));
    expect(stackRefusal([withBias, f32(8), f32(8)], { kind: 'split' })).toMatch(/bias/);

    const glu = stackWeights(gpu.device, kernels(gpu), [f32(8), f32(8)], { kind: 'glu', block: 2 });
    const x = bufferFrom(gpu.device, new Float32Array(16));
    const y = bufferFrom(gpu.device, new Float32Array(64));
    const sw = opContext(gpu, 'software');
    expect(() => createLinear(sw, glu, x, y, { accumulate: true })).toThrow(/accumulate cannot combine/);
    expect(() => createLinear(opContext(gpu, 'gpu'), glu, x, y)).toThrow(/blocks of 16 rows/);
    expect(() => createLinear(sw, f32(8), x, y, { norm: { weight: x, eps: 1e-6 } })).toThrow(/norm is for the gpu variant/);
    const qkv = stackWeights(gpu.device, kernels(gpu), [f32(8), f32(4), f32(4)], { kind: 'split' });
    expect(() => createLinear(sw, qkv, x, y)).toThrow(/writes 3 outputs/);
    expect(() => createLinear(sw, qkv, x, [y, y, bufferFrom(gpu.device, new Float32Array(2))])).toThrow(LinearError);
  });
});
