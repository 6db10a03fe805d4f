// Builds chunked weights and OpContexts for the op tests and benchmarks (no vitest import, so
// scripts outside the test runner can use it too).
import type { Gpu } from '../src/device.ts';
import { BYTES_PER_ELEMENT, encode16, type WeightDtype } from '../src/dtype.ts';
import { tileRows } from '../src/tiles.ts';
import { bufferFrom } from '../src/buffers.ts';
import type { OpContext, Variant } from '../src/ops/context.ts';
import type { LinearWeight } from '../src/ops/linear.ts';
import { KernelCache } from '../src/kernel.ts';

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
