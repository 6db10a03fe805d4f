// Quantized uploads in row tiles (src/quant-upload.ts with tiled = true): each chunk's words and
// scales equal tileRows of the row-major upload's, and a tiled GPTQ act-order layer computes the
// same as its row-major twin through the software kernels.
import { describe, expect, it } from 'vitest';
import { bufferFrom, readF32, readU32, storageUsage } from '../src/buffers.ts';
import { f32ToF16 } from '../src/dtype.ts';
import { blobSource } from '../src/files.ts';
import { createLinear, type LinearWeight } from '../src/ops/linear.ts';
import { type PrequantConfig, type QuantSpec, QuantError, groupsPerRow, rowWords } from '../src/quant.ts';
import { type QuantUpload, quantRowsPerChunk, uploadPrequantized, uploadQuantized } from '../src/quant-upload.ts';
import { openCheckpoint, type Checkpoint } from '../src/safetensors.ts';
import { writeSafetensors, type TensorToWrite } from '../src/safetensors-writer.ts';
import { tileRows, tiledRows } from '../src/tiles.ts';
import { READ_PIECE_BYTES } from '../src/upload.ts';
import { randomArray, testGpu } from './harness.ts';
import { packAwq, packGptq, randomInt4Layer } from './prequant-helper.ts';
import { opContext } from './weights-helper.ts';

async function checkpointOf(tensors: TensorToWrite[]): Promise<Checkpoint> {
  return openCheckpoint(blobSource(new Map([['model.safetensors', new Blob([writeSafetensors(tensors)])]]), 'test-model'));
}

/** Checks every chunk of `tiled` against tileRows of the same chunk of `plain`. */
async function expectTiledTwin(device: GPUDevice, plain: QuantUpload, tiled: QuantUpload, spec: QuantSpec, K: number): Promise<void> {
  const rw = rowWords(spec, K);
  const groups = groupsPerRow(spec, K);
  expect(tiled.weight.tiled).toBe(true);
  expect(plain.weight.tiled).toBeUndefined();
  expect(tiled.weight.chunks.map((c) => [c.rowStart, c.rows])).toEqual(plain.weight.chunks.map((c) => [c.rowStart, c.rows]));
  for (const [i, c] of tiled.weight.chunks.entries()) {
    const p = plain.weight.chunks[i]!;
    expect(c.buffer.size).toBe(tiledRows(c.rows) * rw * 4);
    expect(c.scales!.size).toBe(tiledRows(c.rows) * groups * 4);
    const words = await readU32(device, p.buffer, p.rows * rw);
    const scales = await readU32(device, p.scales!, p.rows * groups);
    expect(await readU32(device, c.buffer)).toEqual(tileRows(words, c.rows, rw / 4, 4));
    expect(await readU32(device, c.scales!)).toEqual(tileRows(scales, c.rows, groups, 1));
  }
}

describe('quantized uploads in row tiles', () => {
  // 65606 rows of K = 64 are two reads (READ_PIECE_BYTES / (K * 4) = 65536 rows), the second
  // ending in a partial tile; K = 100 leaves a partial last group.
  for (const [format, rows, K, G] of [['q8', 65606, 64, 32], ['q4', 65606, 64, 32], ['q4', 75, 100, 32], ['q8', 5, 256, 128]] as const) {
    it(`uploadQuantized(tiled) stores tileRows of the row-major words and scales: ${format} ${rows}x${K} G=${G}`, async () => {
      if (rows > 65536) expect(READ_PIECE_BYTES / (K * 4)).toBeLessThan(rows);
      const { device } = await testGpu();
      const values = randomArray(rows * K, rows + K, 1);
      const data = new Uint16Array(values.length).map((_, i) => f32ToF16(values[i]!));
      const ckpt = await checkpointOf([{ name: 'w', dtype: 'F16', shape: [rows, K], data }]);
      const spec = { format, groupSize: G, symmetric: format === 'q8' };
      const plain = await uploadQuantized(device, ckpt, 'w', spec);
      const tiled = await uploadQuantized(device, ckpt, 'w', spec, undefined, true);
      await expectTiledTwin(device, plain, tiled, spec, K);
      expect(tiled.bytes).toBe(tiled.buffers.reduce((s, b) => s + b.size, 0));
      for (const b of [...plain.buffers, ...tiled.buffers]) b.destroy();
    });
  }

  for (const method of ['gptq', 'awq'] as const) {
    it(`uploadPrequantized(tiled) ${method}${method === 'gptq' ? ' act-order' : ''}: tiled buffers, and the same outputs as row-major`, async () => {
      const gpu = await testGpu();
      const { device } = gpu;
      const [N, K, G] = [72, 128, 32];
      const layer = randomInt4Layer(N, K, G, 11, { actOrder: method === 'gptq' });
      const ckpt = await checkpointOf(method === 'gptq' ? packGptq(layer, 'l') : packAwq(layer, 'l'));
      const cfg: PrequantConfig = { method, bits: 4, groupSize: G, descAct: method === 'gptq', sym: false, zeroOffset: method === 'gptq' ? 1 : 0 };
      const plain = await uploadPrequantized(device, ckpt, 'l', N, K, cfg);
      const tiled = await uploadPrequantized(device, ckpt, 'l', N, K, cfg, undefined, true);
      const spec: QuantSpec = { format: 'q4', groupSize: G };
      await expectTiledTwin(device, plain, tiled, spec, K);
      if (method === 'gptq') expect(tiled.weight.quant!.perm).toBeDefined();

      // Decode (matvec_q) and prefill (matmul_q) through the column gather, both layouts.
      const T = 5;
      const ctx = opContext(gpu, 'software');
      const x = device.createBuffer({ size: 65536, usage: storageUsage() | GPUBufferUsage.UNIFORM, mappedAtCreation: true });
      new Float32Array(x.getMappedRange(), 0, T * K).set(randomArray(T * K, 3, 1));
      x.unmap();
      const run = async (u: QuantUpload, tokens: number) => {
        const y = bufferFrom(device, new Float32Array(T * N));
        const w: LinearWeight = { dtype: 'f32', ...u.weight };
        const op = createLinear(ctx, w, x, y, { maxTokens: T });
        const enc = device.createCommandEncoder();
        const pass = enc.beginComputePass();
        op.encode(pass, tokens);
        pass.end();
        device.queue.submit([enc.finish()]);
        const out = await readF32(device, y, tokens * N);
        op.destroy();
        y.destroy();
        return out;
      };
      for (const tokens of [1, T]) {
        const want = await run(plain, tokens);
        expect(want.some((v) => v !== 0)).toBe(true);
        // Same sums in the same order: equal to the last bit.
        expect(await run(tiled, tokens)).toEqual(want);
      }
      for (const b of [...plain.buffers, ...tiled.buffers]) b.destroy();
    });
  }

  it('quantRowsPerChunk keeps tiled chunks in whole tiles within the binding limit', () => {
    const spec: QuantSpec = { format: 'q4', groupSize: 32 };
    const K = 896;
    const rowBytes = rowWords(spec, K) * 4; // 448
    const limit = 100 * rowBytes + 17;
    expect(quantRowsPerChunk(limit, spec, K, 1000)).toBe(100);
    const per = quantRowsPerChunk(limit, spec, K, 1000, true);
    expect(per).toBe(96);
    expect(tiledRows(per) * rowBytes).toBeLessThanOrEqual(limit);
    // A short weight is one chunk, padded to a tile that still fits.
    expect(quantRowsPerChunk(limit, spec, K, 40, true)).toBe(40);
    expect(() => quantRowsPerChunk(31 * rowBytes, spec, K, 1, true)).toThrow(QuantError);
    expect(quantRowsPerChunk(31 * rowBytes, spec, K, 1)).toBe(1);
  });
});
