// Builds chunked weights and OpContexts for the op tests and benchmarks (no vitest import, so
// scripts outside the test runner can use it too).
import type { Gpu } from '../src/device.ts';
import { BYTES_PER_ELEMENT, encode16, type WeightDtype } from '../src/dtype.ts';
import { tileRows } from '../src/tiles.ts';
import { bufferFrom } from '../src/buffers.ts';
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
