import { describe, expect, it } from 'vitest';
import { readBuffer } from '../src/buffers.ts';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16, type WeightDtype } from '../src/dtype.ts';
import { blobSource } from '../src/files.ts';
import { openCheckpoint, type Checkpoint, type SafetensorsDtype } from '../src/safetensors.ts';
import { writeSafetensors, type TensorToWrite } from '../src/safetensors-writer.ts';
import { READ_PIECE_BYTES, UploadProgress, destroyTensor, uploadF32, uploadTensor, type GpuTensor } from '../src/upload.ts';
import type { LoadProgress } from '../src/types.ts';
import { randomArray, testGpu } from './harness.ts';
import { tileRows, tiledRows } from '../src/tiles.ts';

async function checkpointOf(tensors: TensorToWrite[]): Promise<Checkpoint> {
  return openCheckpoint(blobSource(new Map([['model.safetensors', new Blob([writeSafetensors(tensors)])]]), 'test-model'));
}

/** Values that exercise rounding ties, subnormals, overflow and non-finite inputs. */
function specialValues(): Float32Array {
  const bits = new Uint32Array([
    0x00000000, 0x80000000, 0x3f800000, 0xbf800000,
    0x3f808000, // 1 + 2^-8: bf16 tie, rounds down to even
    0x3f818000, // 1 + 3·2^-8: bf16 tie, rounds up to even
    0x3f800fff, 0x3f801000, 0x3f803000, // f16 below tie, tie to even, tie up
    0x00000001, 0x33800000, 0x33c00000, // f32 subnormal, f16 min subnormal, 1.5× it
    0x477fe000, 0x477ff000, 0x47800000, // 65504 (f16 max), its tie (→ inf), 65536
    0x7f7fffff, 0x7f800000, 0xff800000, 0x7fc00000, 0x7f800001,
  ]);
  return new Float32Array(bits.buffer);
}

const SRC: Record<WeightDtype, SafetensorsDtype> = { f32: 'F32', f16: 'F16', bf16: 'BF16' };
const encode: Record<WeightDtype, (x: number) => number> = { f32: (x) => x, f16: f32ToF16, bf16: f32ToBf16 };
const decode: Record<WeightDtype, (h: number) => number> = { f32: (x) => x, f16: f16ToF32, bf16: bf16ToF32 };

/** Source data in `dtype` and the f32 values it holds. */
function sourceData(values: Float32Array, dtype: WeightDtype): { data: ArrayBufferView; held: Float32Array } {
  if (dtype === 'f32') return { data: values, held: values };
  const h = new Uint16Array(values.length).map((_, i) => encode[dtype](values[i]!));
  return { data: h, held: new Float32Array(values.length).map((_, i) => decode[dtype](h[i]!)) };
}

/** Bit patterns the GPU should hold after converting `held` (exact f32 values) to `to`. */
function expectedBits(held: Float32Array, to: WeightDtype): Uint32Array | Uint16Array {
  if (to === 'f32') return new Uint32Array(held.buffer.slice(held.byteOffset, held.byteOffset + held.byteLength));
  return new Uint16Array(held.length).map((_, i) => encode[to](held[i]!));
}

async function readTensor(device: GPUDevice, t: GpuTensor, elemsPerRow: number): Promise<Uint32Array | Uint16Array> {
  const per = t.dtype === 'f32' ? 4 : 2;
  const parts: Uint8Array[] = [];
  for (const c of t.chunks) parts.push(new Uint8Array(await readBuffer(device, c.buffer, c.rows * elemsPerRow * per)));
  const all = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  let o = 0;
  for (const p of parts) {
    all.set(p, o);
    o += p.length;
  }
  return per === 4 ? new Uint32Array(all.buffer) : new Uint16Array(all.buffer);
}

function expectSameBits(got: Uint32Array | Uint16Array, want: Uint32Array | Uint16Array, dtype: WeightDtype, what: string): void {
  expect(got.length, what).toBe(want.length);
  const isNaN = (b: number) => (dtype === 'f32' ? (b & 0x7fffffff) > 0x7f800000 : dtype === 'bf16' ? (b & 0x7fff) > 0x7f80 : (b & 0x7fff) > 0x7c00);
  for (let i = 0; i < want.length; i++) {
    if (isNaN(want[i]!)) expect(isNaN(got[i]!), `${what}[${i}] NaN`).toBe(true);
    else if (got[i] !== want[i]) expect(got[i]!.toString(16), `${what}[${i}]`).toBe(want[i]!.toString(16));
  }
}

describe('uploadTensor', () => {
  const dtypes: WeightDtype[] = ['f32', 'f16', 'bf16'];
  for (const from of dtypes) {
    for (const to of dtypes) {
      it(`converts ${SRC[from]} to ${to} on the way to the GPU (whole and split into chunks)`, async () => {
        const { device } = await testGpu();
        const rows = 9;
        const cols = 13; // odd: 16-bit chunks end mid-u32
        const values = new Float32Array(rows * cols);
        values.set(randomArray(rows * cols, 7, 300));
        values.set(specialValues(), 3);
        const { data, held } = sourceData(values, from);
        const ck = await checkpointOf([{ name: 'w', dtype: SRC[from], shape: [rows, cols], data }]);
        const want = expectedBits(held, to);
        for (const maxBindingSize of [1 << 20, 64]) {
          const t = await uploadTensor(device, ck, 'w', { dtype: to, maxBindingSize });
          expect(t.dtype).toBe(to);
          expect(t.shape).toEqual([rows, cols]);
          if (maxBindingSize === 64) {
            const per = to === 'f32' ? 4 : 2;
            expect(t.rowsPerChunk).toBe(Math.floor(64 / (cols * per)));
            expect(t.chunks.length).toBe(Math.ceil(rows / t.rowsPerChunk));
            for (const c of t.chunks) expect(c.buffer.size).toBeLessThanOrEqual(64);
          } else {
            expect(t.chunks.length).toBe(1);
          }
          expectSameBits(await readTensor(device, t, cols), want, to, `${from}→${to} limit ${maxBindingSize}`);
          destroyTensor(t);
        }
      });
    }
  }

  it('splits by rows in multiples, reports progress and keeps rows in order', async () => {
    const { device } = await testGpu();
    const values = randomArray(100 * 10, 3);
    const ck = await checkpointOf([
      { name: 'm', dtype: 'F32', shape: [100, 10], data: values },
      { name: 'n', dtype: 'F32', shape: [10], data: values.subarray(0, 10) },
    ]);
    const reports: LoadProgress[] = [];
    const progress = new UploadProgress(ck, ['m', 'n'], (p) => reports.push(p));
    const t = await uploadTensor(device, ck, 'm', { dtype: 'f32', maxBindingSize: 1024, rowsPerChunkMultiple: 8, progress });
    expect(t.rowsPerChunk).toBe(24);
    expect(t.chunks.map((c) => [c.rowStart, c.rows])).toEqual([[0, 24], [24, 24], [48, 24], [72, 24], [96, 4]]);
    expect(new Float32Array((await readTensor(device, t, 10)).buffer)).toEqual(values);
    expect((await uploadTensor(device, ck, 'm', { dtype: 'f32', maxBindingSize: 1024 })).rowsPerChunk).toBe(25);
    expect((await uploadTensor(device, ck, 'm', { dtype: 'f32', maxBindingSize: 1 << 20, maxBufferSize: 2000 })).rowsPerChunk).toBe(50);
    const norm = await uploadF32(device, ck, 'n', { progress });
    expect(new Float32Array(await readBuffer(device, norm))).toEqual(values.subarray(0, 10));
    const last = reports[reports.length - 1]!;
    expect(last).toEqual({ loadedBytes: 4040, totalBytes: 4040, loadedTensors: 2, totalTensors: 2, file: 'model.safetensors' });
    // One report per chunk of 'm' (one read each), the last of them finishing the tensor.
    expect(reports.map((r) => [r.loadedBytes, r.loadedTensors])).toEqual([[960, 0], [1920, 0], [2880, 0], [3840, 0], [4000, 1], [4040, 2]]);
  });

  it('stores row tiles when asked, each chunk tiled from its own first row and padded to whole tiles', async () => {
    const { device } = await testGpu();
    const [rows, cols] = [75, 16];
    const values = randomArray(rows * cols, 4);
    const ck = await checkpointOf([
      { name: 'm', dtype: 'F32', shape: [rows, cols], data: values },
      { name: 'odd', dtype: 'F32', shape: [5, 12], data: values.subarray(0, 60) },
    ]);
    for (const dtype of ['f32', 'bf16'] as const) {
      const t = await uploadTensor(device, ck, 'm', { dtype, maxBindingSize: 64 * cols * 4, tiled: true });
      expect(t.tiled).toBe(true);
      // Whole tiles per chunk but the last: f32 rows of 64 bytes give 64-row chunks under 4 KiB.
      expect(t.chunks.map((c) => c.rows)).toEqual(dtype === 'f32' ? [64, 11] : [75]);
      const rowBytes = cols * (dtype === 'f32' ? 4 : 2);
      for (const c of t.chunks) {
        const rowMajor = expectedBits(values.subarray(c.rowStart * cols, (c.rowStart + c.rows) * cols), dtype);
        const words = new Uint32Array(rowMajor.buffer, rowMajor.byteOffset, (c.rows * rowBytes) / 4);
        expect(c.buffer.size).toBe(tiledRows(c.rows) * rowBytes);
        expect(c.buffer.size).toBeLessThanOrEqual(64 * cols * 4);
        expect(new Uint32Array(await readBuffer(device, c.buffer))).toEqual(tileRows(words, c.rows, rowBytes / 16, 4));
      }
      destroyTensor(t);
    }
    const odd = await uploadTensor(device, ck, 'odd', { dtype: 'f32', tiled: true });
    expect(odd.tiled).toBe(false);
  });

  it('names the tensor, its size and the limit when it cannot be split to fit', async () => {
    const { device } = await testGpu();
    const ck = await checkpointOf([
      { name: 'wide', dtype: 'F32', shape: [4, 300], data: new Float32Array(1200) },
      { name: 'long', dtype: 'F32', shape: [300], data: new Float32Array(300) },
      { name: 'ints', dtype: 'I8', shape: [4], data: new Int8Array(4) },
    ]);
    await expect(uploadTensor(device, ck, 'wide', { dtype: 'f32', maxBindingSize: 1024 })).rejects.toThrow(
      /tensor 'wide' \[4,300\] is 4800 bytes as f32, more than the 1024 bytes one GPU buffer may bind, and one row is 1200 bytes/,
    );
    await expect(uploadTensor(device, ck, 'wide', { dtype: 'bf16', maxBindingSize: 1024, rowsPerChunkMultiple: 2 })).rejects.toThrow(
      /one row is 600 bytes and chunks need multiples of 2 rows/,
    );
    await expect(uploadTensor(device, ck, 'long', { dtype: 'f32', maxBindingSize: 1024 })).rejects.toThrow(/tensor 'long' \[300\] is 1200 bytes.*1-D and cannot be split/);
    await expect(uploadTensor(device, ck, 'ints', { dtype: 'f32' })).rejects.toThrow(/tensor 'ints' has dtype I8, which cannot be converted to f32/);
  });

  it('allocates and frees a few hundred MiB across many submissions', async () => {
    const { device } = await testGpu();
    const rows = 2048;
    const cols = 2560; // 20 MiB of f32: more than one READ_PIECE_BYTES read per chunk
    expect(rows * cols * 4).toBeGreaterThan(READ_PIECE_BYTES);
    const values = randomArray(rows * cols, 11);
    const ck = await checkpointOf([{ name: 'big', dtype: 'F32', shape: [rows, cols], data: values }]);
    let uploaded = 0;
    for (let i = 0; i < 16; i++) {
      const dtype: WeightDtype = i % 4 === 3 ? 'bf16' : 'f32';
      const t = await uploadTensor(device, ck, 'big', { dtype, maxBindingSize: 8 * 2 ** 20 });
      uploaded += t.bytes;
      // One element from the start and the end of every chunk, each read its own submission.
      for (const c of t.chunks) {
        for (const e of [0, c.rows * cols - 1]) {
          const src = values[c.rowStart * cols + e]!;
          if (dtype === 'f32') {
            expect(new Float32Array(await readBuffer(device, c.buffer, 4, e * 4))[0]).toBe(src);
          } else {
            const word = new Uint16Array(await readBuffer(device, c.buffer, 4, Math.floor(e / 2) * 4));
            expect(word[e % 2]).toBe(f32ToBf16(src));
          }
        }
      }
      destroyTensor(t);
    }
    expect(uploaded).toBeGreaterThan(250 * 2 ** 20);
    // The device still works after all of it.
    const t = await uploadTensor(device, ck, 'big', { dtype: 'f32', maxBindingSize: 64 * 2 ** 20 });
    expect(new Float32Array(await readBuffer(device, t.chunks[0]!.buffer, 16, (rows * cols - 4) * 4))).toEqual(values.subarray(rows * cols - 4));
    destroyTensor(t);
  });
});
