// Streams checkpoint tensors into GPU storage buffers, converting dtype on the way.
//
// A matrix larger than one storage binding is split by rows into chunks, each its own
// buffer: every chunk but the last holds `rowsPerChunk` rows, so a kernel finds row r in
// chunk floor(r / rowsPerChunk). 16-bit targets (f16, bf16) stay packed two per u32, as
// the shaders unpack them. Bytes are read in pieces of READ_PIECE_BYTES and converted
// straight into the buffer's mapped range, so JS never holds a whole tensor.
// Safetensors and WebGPU buffers are both little-endian, as are typed arrays on every
// platform WebGPU runs on, so typed-array views read and write the bytes directly.

import { storageUsage } from './buffers.ts';
import { BYTES_PER_ELEMENT, f16ToF32, f32ToF16, type WeightDtype } from './dtype.ts';
import { elementCount, type Checkpoint, type SafetensorsDtype, type TensorInfo } from './safetensors.ts';
import type { LoadProgress } from './types.ts';
import { TILE_ROWS, tileRows, tiledRows } from './tiles.ts';

export class UploadError extends Error {
  override name = 'UploadError';
}

/** Source bytes read per request: bounds JS memory and sets the progress granularity. */
export const READ_PIECE_BYTES = 16 * 2 ** 20;

export interface TensorChunk {
  buffer: GPUBuffer;
  /** First row (along the tensor's first dimension) held by this buffer, and how many. */
  rowStart: number;
  rows: number;
}

export interface GpuTensor {
  name: string;
  dtype: WeightDtype;
  shape: number[];
  /** Rows in every chunk but the last (a 1-D tensor is one row). */
  rowsPerChunk: number;
  chunks: TensorChunk[];
  /** Bytes of GPU memory the chunks take. */
  bytes: number;
  /** Each chunk is in row tiles (src/tiles.ts), padded to whole tiles. */
  tiled: boolean;
}

export interface UploadOptions {
  /** The dtype the GPU buffers hold. */
  dtype: WeightDtype;
  /** Most bytes one buffer may hold; default device.limits.maxStorageBufferBindingSize. */
  maxBindingSize?: number;
  /** Default device.limits.maxBufferSize. */
  maxBufferSize?: number;
  /** Chunks hold a multiple of this many rows (e.g. a kernel's rows per workgroup); default 1. */
  rowsPerChunkMultiple?: number;
  /**
   * Store each chunk in row tiles (src/tiles.ts, the software linear kernels' layout) when the
   * tensor is a matrix with cols % 8 == 0; GpuTensor.tiled says whether it was.
   */
  tiled?: boolean;
  progress?: UploadProgress;
  label?: string;
}

/** Sums bytes and tensors uploaded across many uploadTensor calls into LoadProgress reports. */
export class UploadProgress {
  private loadedBytes = 0;
  private loadedTensors = 0;
  readonly totalBytes: number;
  readonly totalTensors: number;

  /** `names`: every tensor the load will upload, so totals are known from the start. */
  constructor(checkpoint: Checkpoint, names: Iterable<string>, private readonly onProgress: (p: LoadProgress) => void) {
    let bytes = 0;
    let count = 0;
    for (const n of names) {
      const t = checkpoint.get(n);
      bytes += t.end - t.start;
      count++;
    }
    this.totalBytes = bytes;
    this.totalTensors = count;
  }

  /** Records `bytes` of source data read from `file`; `tensorDone` when a tensor is finished. */
  add(file: string, bytes: number, tensorDone: boolean): void {
    this.loadedBytes += bytes;
    if (tensorDone) this.loadedTensors++;
    this.onProgress({
      loadedBytes: this.loadedBytes,
      totalBytes: this.totalBytes,
      loadedTensors: this.loadedTensors,
      totalTensors: this.totalTensors,
      file,
    });
  }
}

const SOURCE: Partial<Record<SafetensorsDtype, WeightDtype>> = { F32: 'f32', F16: 'f16', BF16: 'bf16' };

function sizeText(n: number): string {
  return n >= 2 ** 20 ? `${(n / 2 ** 20).toFixed(1)} MiB` : `${n} bytes`;
}

let f16Table: Float32Array | undefined;
/** All 65536 f16 values as f32: one lookup per element instead of bit twiddling. */
function f16ToF32Table(): Float32Array {
  if (!f16Table) {
    f16Table = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) f16Table[h] = f16ToF32(h);
  }
  return f16Table;
}

/** Converts `count` elements of `src` (aligned bytes of dtype `from`) into `dst` at element `at`. */
function convert(src: Uint8Array, from: WeightDtype, dst: ArrayBuffer, to: WeightDtype, at: number, count: number): void {
  if (from === to) {
    const n = BYTES_PER_ELEMENT[to];
    new Uint8Array(dst, at * n, count * n).set(src.subarray(0, count * n));
    return;
  }
  // Widen to f32 bits first (exact for f16/bf16), then narrow if the target is 16-bit.
  let bits: Uint32Array;
  if (from === 'f32') {
    bits = new Uint32Array(src.buffer, src.byteOffset, count);
  } else {
    const h = new Uint16Array(src.buffer, src.byteOffset, count);
    const out = to === 'f32' ? new Uint32Array(dst, at * 4, count) : new Uint32Array(count);
    if (from === 'bf16') {
      for (let i = 0; i < count; i++) out[i] = h[i]! << 16;
    } else {
      const table = new Uint32Array(f16ToF32Table().buffer);
      for (let i = 0; i < count; i++) out[i] = table[h[i]!]!;
    }
    if (to === 'f32') return;
    bits = out;
  }
  if (to === 'f32') {
    new Uint32Array(dst, at * 4, count).set(bits);
  } else if (to === 'bf16') {
    const out = new Uint16Array(dst, at * 2, count);
    for (let i = 0; i < count; i++) {
      const b = bits[i]!;
      // Round to nearest even; NaN keeps a quiet-NaN payload bit so it cannot round to Inf.
      out[i] = (b & 0x7fffffff) > 0x7f800000 ? (b >>> 16) | 0x40 : (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;
    }
  } else {
    const out = new Uint16Array(dst, at * 2, count);
    const f = new Float32Array(bits.buffer, bits.byteOffset, count);
    for (let i = 0; i < count; i++) out[i] = f32ToF16(f[i]!);
  }
}

function lcm(a: number, b: number): number {
  const gcd = (x: number, y: number): number => (y ? gcd(y, x % y) : x);
  return (a / gcd(a, b)) * b;
}

/** Rows along the first dimension and elements per row (a scalar or 1-D tensor is one row). */
function rowsCols(shape: readonly number[]): [number, number] {
  return shape.length >= 2 ? [shape[0]!, elementCount(shape.slice(1))] : [1, elementCount(shape)];
}

/** Whether a tensor asked for in row tiles gets them: matrices whose rows are whole 8-column units. */
export function tilesFit(shape: readonly number[], tiled: boolean): boolean {
  return tiled && shape.length === 2 && shape[1]! % 8 === 0;
}

/** Plans the chunks of `info` for a target dtype and limit, or throws why it cannot be split. */
export function planChunks(info: TensorInfo, dtype: WeightDtype, limit: number, rowsPerChunkMultiple = 1): { rowsPerChunk: number; count: number } {
  const [rows, cols] = rowsCols(info.shape);
  const usable = Math.floor(limit / 4) * 4;
  const total = rows * cols * BYTES_PER_ELEMENT[dtype];
  if (total <= usable) return { rowsPerChunk: rows, count: 1 };
  const rowBytes = cols * BYTES_PER_ELEMENT[dtype];
  const m = Math.max(1, Math.floor(rowsPerChunkMultiple));
  const rowsPerChunk = Math.floor(Math.floor(usable / rowBytes) / m) * m;
  if (info.shape.length < 2 || rowsPerChunk === 0) {
    const unit = info.shape.length < 2 ? 'it is 1-D and cannot be split' : `one row is ${sizeText(rowBytes)}${m > 1 ? ` and chunks need multiples of ${m} rows` : ''}`;
    throw new UploadError(
      `tensor '${info.name}' ${JSON.stringify(info.shape)} is ${sizeText(total)} as ${dtype}, more than the ${sizeText(usable)} one GPU buffer may bind, and ${unit}`,
    );
  }
  return { rowsPerChunk, count: Math.ceil(rows / rowsPerChunk) };
}

/**
 * Uploads one tensor as storage buffer(s) of `opts.dtype`, split by rows to fit the binding limit.
 * Accepts F32, F16 and BF16 checkpoint tensors.
 */
export async function uploadTensor(device: GPUDevice, checkpoint: Checkpoint, name: string, opts: UploadOptions): Promise<GpuTensor> {
  const info = checkpoint.get(name);
  const from = SOURCE[info.dtype];
  if (!from) {
    throw new UploadError(`tensor '${name}' has dtype ${info.dtype}, which cannot be converted to ${opts.dtype} (only F32, F16 and BF16 can)`);
  }
  const limit = Math.min(opts.maxBindingSize ?? device.limits.maxStorageBufferBindingSize, opts.maxBufferSize ?? device.limits.maxBufferSize);
  const [rows, cols] = rowsCols(info.shape);
  const rowBytes = cols * BYTES_PER_ELEMENT[opts.dtype];
  const tiled = tilesFit(info.shape, !!opts.tiled);
  // Tiled chunks hold whole tiles but the last, planned on the rows padded to whole tiles, so the
  // padding is the same as tiling the whole tensor (what the load plan counts, load-plan.ts).
  const planned = tiled ? { ...info, shape: [tiledRows(rows), cols] } : info;
  const multiple = tiled ? lcm(opts.rowsPerChunkMultiple ?? 1, TILE_ROWS) : opts.rowsPerChunkMultiple;
  const { rowsPerChunk, count } = planChunks(planned, opts.dtype, limit, multiple);
  const srcBytes = BYTES_PER_ELEMENT[from];
  // Whole rows are not needed per read, only an even element count (16-bit pairs stay in one u32).
  const pieceElems = Math.max(2, Math.floor(READ_PIECE_BYTES / srcBytes / 2) * 2);
  const chunks: TensorChunk[] = [];
  let gpuBytes = 0;
  try {
    for (let c = 0; c < count; c++) {
      const rowStart = c * rowsPerChunk;
      const chunkRows = Math.min(rowsPerChunk, rows - rowStart);
      const elems = chunkRows * cols;
      const size = Math.max(4, Math.ceil(((tiled ? tiledRows(chunkRows) * cols : elems) * BYTES_PER_ELEMENT[opts.dtype]) / 4) * 4);
      const label = `${opts.label ?? name}${count > 1 ? ` [rows ${rowStart}..${rowStart + chunkRows})` : ''}`;
      const buffer = device.createBuffer({ size, usage: storageUsage(), mappedAtCreation: true, label });
      chunks.push({ buffer, rowStart, rows: chunkRows });
      gpuBytes += size;
      // Tiles are arranged from the whole chunk, converted row-major first.
      const mapped = tiled ? new ArrayBuffer(elems * BYTES_PER_ELEMENT[opts.dtype]) : buffer.getMappedRange();
      const first = rowStart * cols;
      for (let e = 0; e < elems; e += pieceElems) {
        const n = Math.min(pieceElems, elems - e);
        let bytes = await checkpoint.read(name, (first + e) * srcBytes, (first + e + n) * srcBytes);
        if (bytes.byteOffset % 4) bytes = bytes.slice();
        convert(bytes, from, mapped, opts.dtype, e, n);
        const last = c === count - 1 && e + n >= elems;
        opts.progress?.add(info.file, bytes.length, last);
      }
      if (tiled) tileRows(new Uint32Array(mapped), chunkRows, rowBytes / 16, 4, new Uint32Array(buffer.getMappedRange()));
      buffer.unmap();
    }
    if (rows * cols === 0) opts.progress?.add(info.file, 0, true);
  } catch (e) {
    for (const ch of chunks) ch.buffer.destroy();
    throw e;
  }
  return { name, dtype: opts.dtype, shape: [...info.shape], rowsPerChunk, chunks, bytes: gpuBytes, tiled };
}

/** Uploads a small tensor (norm weight, bias) as one f32 buffer. */
export async function uploadF32(device: GPUDevice, checkpoint: Checkpoint, name: string, opts: { progress?: UploadProgress; label?: string } = {}): Promise<GPUBuffer> {
  const info = checkpoint.get(name);
  const bytes = elementCount(info.shape) * 4;
  const limit = Math.min(device.limits.maxStorageBufferBindingSize, device.limits.maxBufferSize);
  if (bytes > limit) {
    throw new UploadError(`tensor '${name}' ${JSON.stringify(info.shape)} is ${sizeText(bytes)} as f32, more than the ${sizeText(limit)} one GPU buffer may bind; use uploadTensor to split it`);
  }
  const t = await uploadTensor(device, checkpoint, name, { ...opts, dtype: 'f32', maxBindingSize: limit });
  return t.chunks[0]!.buffer;
}

export function destroyTensor(t: GpuTensor): void {
  for (const c of t.chunks) c.buffer.destroy();
}
