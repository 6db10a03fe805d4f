// Builds chunked weights and OpContexts for the op tests and benchmarks (no vitest import, so
// scripts outside the test runner can use it too).
import type { Gpu } from '../src/device.ts';
import { BYTES_PER_ELEMENT, encode16, type WeightDtype } from '../src/dtype.ts';
import { tileRows } from '../src/tiles.ts';
import { bufferFrom, readF32 } from '../src/buffers.ts';
import type { OpContext, Variant } from '../src/ops/context.ts';
import type { LinearWeight } from '../src/ops/linear.ts';
import { KernelCache } from '../src/kernel.ts';
import { dequantize, groupsPerRow, quantize, rowWords, type QuantFormat } from '../src/quant.ts';

const caches = new WeakMap<GPUDevice, KernelCache>();

export function opContext(gpu: Gpu, variant: Variant): OpContext {
  let kernels = caches.get(gpu.device);
  if (!kernels) caches.set(gpu.device, (kernels = new KernelCache(gpu.device)));
  return {
    device: gpu.device,
    kernels,
    variant,
    f16: gpu.hasF16,
    subgroups: gpu.hasSubgroups,
    ...(gpu.subgroupSize ? { subgroupSize: gpu.subgroupSize } : {}),
    limits: gpu.info.limits,
  };
}

/**
 * Uploads W [rows, cols] in `dtype`, split into chunks of the given row counts (default one chunk),
 * each chunk in row tiles when `tiled` (src/tiles.ts).
 */
export function makeWeight(device: GPUDevice, w: Float32Array, rows: number, cols: number, dtype: WeightDtype, split: number[] = [rows], tiled = false): LinearWeight {
  const chunks = [];
  let rowStart = 0;
  for (const n of split) {
    const part = w.subarray(rowStart * cols, (rowStart + n) * cols);
    const data = dtype === 'f32' ? part : encode16(part, dtype);
    const words = new Uint32Array(data.buffer, data.byteOffset, data.byteLength / 4);
    const buffer = bufferFrom(device, tiled ? tileRows(words, n, (cols * BYTES_PER_ELEMENT[dtype]) / 16, 4) : data);
    chunks.push({ buffer, rowStart, rows: n });
    rowStart += n;
  }
  return { dtype, rows, cols, chunks, ...(tiled ? { tiled } : {}) };
}

/**
 * Quantizes W [rows, cols] on the host and uploads it in chunks of the given row counts, each
 * chunk's words (vec4 units) and scales (word units) in row tiles when `tiled`.
 */
export function makeQuantWeight(
  device: GPUDevice,
  w: Float32Array,
  rows: number,
  cols: number,
  spec: { format: QuantFormat; groupSize: number; symmetric: boolean },
  split: number[] = [rows],
  tiled = false,
): { weight: LinearWeight; deq: Float64Array } {
  const q = quantize(w, rows, cols, spec);
  const rw = rowWords(spec, cols);
  const groups = groupsPerRow(spec, cols);
  const chunks = [];
  let rowStart = 0;
  for (const n of split) {
    const words = q.words.subarray(rowStart * rw, (rowStart + n) * rw);
    const scales = q.scales.subarray(rowStart * groups, (rowStart + n) * groups);
    chunks.push({
      buffer: bufferFrom(device, tiled ? tileRows(words, n, rw / 4, 4) : words),
      scales: bufferFrom(device, tiled ? tileRows(scales, n, groups, 1) : scales),
      rowStart,
      rows: n,
    });
    rowStart += n;
  }
  const quant = { format: spec.format, groupSize: spec.groupSize };
  return { weight: { dtype: 'f32', rows, cols, chunks, quant, ...(tiled ? { tiled } : {}) }, deq: dequantize(spec, q, rows, cols) };
}

/**
 * Batch invariance of a linear op, as Float32 bits: the outputs (one per width: a plain weight's
 * or a split weight's three) of T tokens run in one encode, and of each token run alone (its row
 * of x as token 0 of a one-token encode). `build` makes the op on the x buffer and outputs given.
 */
export async function aloneAndTogether(
  device: GPUDevice,
  build: (x: GPUBuffer, outs: GPUBuffer[]) => { encode(pass: GPUComputePassEncoder, tokens: number): void; destroy(): void },
  x: Float32Array,
  K: number,
  T: number,
  widths: number[],
): Promise<{ together: Uint32Array[]; alone: Uint32Array[] }> {
  const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
  const xBuf = device.createBuffer({ size: Math.max(65536, Math.ceil((T * K * 4) / 256) * 256), usage: usage | GPUBufferUsage.UNIFORM });
  const outs = widths.map((n) => device.createBuffer({ size: T * n * 4, usage }));
  const op = build(xBuf, outs);
  const run = async (rows: Float32Array, tokens: number): Promise<Uint32Array[]> => {
    device.queue.writeBuffer(xBuf, 0, rows.buffer, rows.byteOffset, rows.byteLength);
    const enc = device.createCommandEncoder();
    const pass = enc.beginComputePass();
    op.encode(pass, tokens);
    pass.end();
    device.queue.submit([enc.finish()]);
    return Promise.all(outs.map(async (b, i) => new Uint32Array((await readF32(device, b, tokens * widths[i]!)).buffer)));
  };
  const together = await run(x, T);
  const alone = widths.map((n) => new Uint32Array(T * n));
  for (let t = 0; t < T; t++) {
    const r = await run(x.subarray(t * K, (t + 1) * K), 1);
    r.forEach((a, i) => alone[i]!.set(a, t * widths[i]!));
  }
  op.destroy();
  [xBuf, ...outs].forEach((b) => b.destroy());
  return { together, alone };
}
