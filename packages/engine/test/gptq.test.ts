// GPTQ int4: known integers packed in the published layout come back exactly from our repacking,
// for desc_act false and true and sym; a GPTQ model folder gives the logits of its dequantized
// dense twin; bad tensors and configs give named errors.
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { f16ToF32 } from '../src/dtype.ts';
import { repackGptq } from '../src/gptq.ts';
import { loadModel } from '../src/model.ts';
import { groupScale, QuantError, readQuantizationConfig, storedInt, type PrequantConfig } from '../src/quant.ts';
import { writeGeneratedModel } from './generated-model.ts';
import { expectClose, testGpu } from './harness.ts';
import { packGptq, randomInt4Layer, writePrequantPair, type Int4Layer } from './prequant-helper.ts';

const cfg = (o: Partial<PrequantConfig> = {}): PrequantConfig => ({ method: 'gptq', bits: 4, groupSize: 32, descAct: false, sym: false, zeroOffset: 1, ...o });

function tensorsOf(l: Int4Layer) {
  const [qw, qz, sc, gi] = packGptq(l, 'x');
  return {
    qweight: qw!.data as Uint32Array, qweightShape: qw!.shape,
    qzeros: qz!.data as Uint32Array, qzerosShape: qz!.shape,
    scales: sc!.data as Uint16Array, scalesShape: sc!.shape,
    gIdx: gi!.data as Int32Array,
  };
}

/** Every (n, k): the integer, zero and scale our layout holds equal the ones packed. */
function expectExact(l: Int4Layer, c: PrequantConfig) {
  const r = repackGptq(tensorsOf(l), l.N, l.K, c);
  const spec = { format: 'q4' as const, groupSize: r.groupSize };
  let bad = 0;
  for (let n = 0; n < l.N; n++) {
    for (let j = 0; j < l.K; j++) {
      const k = r.perm ? r.perm[j]! : j;
      const g = l.gIdx[k]!;
      const s = groupScale(spec, r.scales, l.K, n, Math.floor(j / r.groupSize));
      if (storedInt(spec, r.words, l.K, n, j) !== l.q[n * l.K + k] || s.zero !== l.zero[g * l.N + n] || s.scale !== f16ToF32(l.scale[g * l.N + n]!)) bad++;
    }
  }
  expect(bad).toBe(0);
  return r;
}

const dirs: string[] = [];
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

describe('GPTQ int4', () => {
  it('desc_act false: packed integers, zeros and scales come back exactly, columns in order', () => {
    const r = expectExact(randomInt4Layer(48, 128, 32, 1), cfg());
    expect(r.perm).toBeUndefined();
  });
  it('desc_act true: act-order g_idx gives a column permutation and exact values', () => {
    const r = expectExact(randomInt4Layer(40, 256, 64, 2, { actOrder: true }), cfg({ descAct: true, groupSize: 64 }));
    expect(r.perm).toBeDefined();
  });
  it('sym and group_size -1 (one group per row)', () => {
    expectExact(randomInt4Layer(16, 96, 96, 3, { sym: true }), cfg({ sym: true, groupSize: -1 }));
  });

  it('bad input: shapes, group sizes, g_idx', () => {
    const l = randomInt4Layer(16, 64, 32, 4);
    const t = tensorsOf(l);
    expect(() => repackGptq({ ...t, qweightShape: [64, 16] }, 16, 64, cfg())).toThrow(/qweight has shape \[64,16\], expected \[8, 16\]/);
    expect(() => repackGptq({ ...t, qzerosShape: [2, 1] }, 16, 64, cfg())).toThrow(/qzeros has shape/);
    expect(() => repackGptq({ ...t, scalesShape: [1, 16] }, 16, 64, cfg())).toThrow(/scales has shape/);
    expect(() => repackGptq(t, 16, 64, cfg({ groupSize: 48 }))).toThrow(/group_size 48 does not divide the input dimension 64/);
    expect(() => repackGptq(t, 16, 64, cfg({ groupSize: 16 }))).toThrow(/not a multiple of 32/);
    expect(() => repackGptq({ ...t, gIdx: t.gIdx.map(() => 0) }, 16, 64, cfg())).toThrow(/group 0 has 64 columns/);
    expect(() => repackGptq({ ...t, gIdx: t.gIdx.subarray(1) }, 16, 64, cfg())).toThrow(/g_idx has 63 entries/);
  });

  it('quantization_config: unsupported methods and bit widths name what is supported', () => {
    expect(readQuantizationConfig({})).toBeUndefined();
    expect(readQuantizationConfig({ quantization_config: { quant_method: 'gptq', bits: 4, group_size: 128, desc_act: true } })).toMatchObject({ method: 'gptq', descAct: true, zeroOffset: 1 });
    expect(() => readQuantizationConfig({ quantization_config: { quant_method: 'gptq', bits: 8, group_size: 128 } })).toThrow(/bits 8 are not supported; supported: quant_method 'gptq' \(bits 4\)/);
    expect(() => readQuantizationConfig({ quantization_config: { quant_method: 'bitsandbytes', load_in_4bit: true } })).toThrow(QuantError);
    expect(() => readQuantizationConfig({ quantization_config: { quant_method: 'gptq', bits: 4, group_size: 0 } })).toThrow(/group_size/);
  });

  for (const actOrder of [false, true]) {
    it(`a GPTQ model folder (desc_act ${actOrder}) gives the logits of its dequantized twin`, async () => {
      const gpu = await testGpu();
      const gen = writeGeneratedModel({ modelType: 'qwen2', seed: 5 });
      dirs.push(gen);
      const { quantDir, dequantDir } = await writePrequantPair(gen, 'gptq', 32, { actOrder, seed: actOrder ? 11 : 12 });
      dirs.push(join(quantDir, '..'));
      const tokens = [1, 17, 42, 99, 5, 230, 7, 64];
      const logits = async (dir: string) => {
        const m = await loadModel(dir, { gpu, dtype: 'f32' });
        const s = m.createSession();
        s.forward(tokens.slice(0, 6)); // prefill: matmul_q
        const a = await s.logits();
        s.forward([tokens[6]!]); // decode: matvec_q
        const b = await s.logits();
        const info = m.info;
        m.dispose();
        return { a, b, info };
      };
      const q = await logits(quantDir);
      const d = await logits(dequantDir);
      expect(q.info.quantization).toEqual({ method: 'gptq', bits: 4, groupSize: 32 });
      expect(q.info.weightBytesByFormat!.gptq).toBeGreaterThan(0);
      expectClose(q.a, d.a, { relL2: 1e-4 }, 'prefill logits');
      expectClose(q.b, d.b, { relL2: 1e-4 }, 'decode logits');
    });
  }

  it('a GPTQ folder missing qzeros, or loaded with quantize, fails with a clear error', async () => {
    const gpu = await testGpu();
    const gen = writeGeneratedModel({ modelType: 'qwen2', seed: 6 });
    dirs.push(gen);
    const { quantDir } = await writePrequantPair(gen, 'gptq', 32);
    dirs.push(join(quantDir, '..'));
    await expect(loadModel(quantDir, { gpu, quantize: 'q8' })).rejects.toThrow(/already quantized \(gptq\)/);
    const { openCheckpoint } = await import('../src/safetensors.ts');
    const { directorySource } = await import('../src/files.ts');
    const { writeSafetensors } = await import('../src/safetensors-writer.ts');
    const { writeFileSync } = await import('node:fs');
    const ck = await openCheckpoint(directorySource(quantDir));
    const kept = [];
    for (const [name, info] of ck.tensors) if (name !== 'model.layers.0.mlp.up_proj.qzeros') kept.push({ name, dtype: info.dtype, shape: info.shape, data: (await ck.read(name)).slice() });
    writeFileSync(join(quantDir, 'model.safetensors'), writeSafetensors(kept));
    await expect(loadModel(quantDir, { gpu })).rejects.toThrow(/model\.layers\.0\.mlp\.up_proj\.qzeros/);
  });
});
