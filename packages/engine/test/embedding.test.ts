import { describe, expect, it } from 'vitest';
import { bufferFrom, readF32 } from '../src/buffers.ts';
import { roundTo, type WeightDtype } from '../src/dtype.ts';
import { createEmbedding, EmbeddingError } from '../src/ops/embedding.ts';
import { expectClose, randomArray, testGpu } from './harness.ts';
import { makeWeight, opContext } from './weights-helper.ts';

describe('embedding', () => {
  const cases = [
    { V: 11, C: 7, split: [11], ids: [0, 10, 3, 3, 11, 0xffffffff, 5] },
    { V: 50, C: 33, split: [7, 20, 23], ids: [6, 7, 26, 27, 49, 50, 1000, 0, 13] },
    { V: 9, C: 1, split: [4, 5], ids: [8, 3, 4, 9] },
    { V: 64, C: 130, split: [33, 31], ids: [32, 33, 63] },
    // row tiles (a tied LM head's layout): partial last tiles, rows of every lane and tile
    { V: 70, C: 16, split: [70], ids: [0, 3, 4, 31, 32, 33, 63, 69, 70], tiled: true },
    { V: 50, C: 40, split: [7, 20, 23], ids: [6, 7, 26, 27, 49, 50, 0, 13], tiled: true },
  ];
  for (const dtype of ['f32', 'bf16', 'f16'] as WeightDtype[]) {
    for (const { V, C, split, ids, tiled } of cases) {
      it(`${dtype} ${V}x${C} in chunks ${split.join('/')}${tiled ? ' tiled' : ''}: rows by id, zeros for ids >= ${V}`, async () => {
        const gpu = await testGpu();
        const ctx = opContext(gpu, 'software');
        const e = randomArray(V * C, V * C, 2);
        const table = makeWeight(gpu.device, e, V, C, dtype, split, tiled);
        const T = ids.length;
        // Start from garbage so rows left unwritten would show.
        const out = bufferFrom(gpu.device, randomArray(T * C, 5, 100));
        const op = createEmbedding(ctx, table, bufferFrom(gpu.device, new Uint32Array(ids)), out, { maxTokens: T });
        const enc = gpu.device.createCommandEncoder();
        const pass = enc.beginComputePass();
        op.encode(pass, T);
        pass.end();
        gpu.device.queue.submit([enc.finish()]);
        const stored = roundTo(e, dtype);
        const want = new Float64Array(T * C);
        ids.forEach((id, t) => {
          if (id < V) want.set(stored.subarray(id * C, (id + 1) * C), t * C);
        });
        const got = await readF32(gpu.device, out, T * C);
        expectClose(got, want, { relL2: 0, maxAbs: 0 });
        op.destroy();
      });
    }
  }

  it('rejects buffers too small for maxTokens', async () => {
    const gpu = await testGpu();
    const ctx = opContext(gpu, 'software');
    const table = makeWeight(gpu.device, randomArray(8, 1), 4, 2, 'f32');
    const ids = bufferFrom(gpu.device, new Uint32Array(2));
    const out = bufferFrom(gpu.device, new Float32Array(4));
    expect(() => createEmbedding(ctx, table, ids, out, { maxTokens: 3 })).toThrow(EmbeddingError);
  });
});
