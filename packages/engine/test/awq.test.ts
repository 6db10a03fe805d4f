// AWQ int4 (GEMM layout, nibble order [0, 2, 4, 6, 1, 3, 5, 7]): known integers packed in the
// published layout come back exactly from our repacking; an AWQ model folder gives the logits of
// its dequantized dense twin; bad tensors and configs give named errors.
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { AWQ_ORDER, repackAwq } from '../src/awq.ts';
import { f16ToF32 } from '../src/dtype.ts';
import { loadModel } from '../src/model.ts';
import { groupScale, readQuantizationConfig, storedInt, type PrequantConfig } from '../src/quant.ts';
import { writeGeneratedModel } from './generated-model.ts';
import { expectClose, testGpu } from './harness.ts';
import { packAwq, randomInt4Layer, writePrequantPair, type Int4Layer } from './prequant-helper.ts';

const cfg = (o: Partial<PrequantConfig> = {}): PrequantConfig => ({ method: 'awq', bits: 4, groupSize: 32, descAct: false, sym: false, zeroOffset: 0, ...o });

function tensorsOf(l: Int4Layer) {
  const [qw, qz, sc] = packAwq(l, 'x');
  return {
    qweight: qw!.data as Uint32Array, qweightShape: qw!.shape,
    qzeros: qz!.data as Uint32Array, qzerosShape: qz!.shape,
    scales: sc!.data as Uint16Array, scalesShape: sc!.shape,
  };
}

const dirs: string[] = [];
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

describe('AWQ int4 (GEMM)', () => {
  it('the pack order is the published one', () => {
    expect([...AWQ_ORDER]).toEqual([0, 2, 4, 6, 1, 3, 5, 7]);
    // Column 1 of a word sits in nibble 4 (bits 16..19), column 4 in nibble 2.
    const l = randomInt4Layer(8, 32, 32, 9);
    l.q.fill(0);
    l.q[1 * 32 + 0] = 5;
    l.q[4 * 32 + 0] = 9;
    const t = tensorsOf(l);
    expect(t.qweight[0]).toBe((5 << 16) | (9 << 8));
  });

  it('packed integers, zeros and scales come back exactly', () => {
    const l = randomInt4Layer(48, 128, 32, 1);
    const r = repackAwq(tensorsOf(l), l.N, l.K, cfg());
    const spec = { format: 'q4' as const, groupSize: 32 };
    let bad = 0;
    for (let n = 0; n < l.N; n++) {
      for (let k = 0; k < l.K; k++) {
        const g = Math.floor(k / 32);
        const s = groupScale(spec, r.scales, l.K, n, g);
        if (storedInt(spec, r.words, l.K, n, k) !== l.q[n * l.K + k] || s.zero !== l.zero[g * l.N + n] || s.scale !== f16ToF32(l.scale[g * l.N + n]!)) bad++;
      }
    }
    expect(bad).toBe(0);
  });

  it('bad input: shapes, group sizes', () => {
    const l = randomInt4Layer(16, 64, 32, 4);
    const t = tensorsOf(l);
    expect(() => repackAwq({ ...t, qweightShape: [8, 16] }, 16, 64, cfg())).toThrow(/qweight has shape \[8,16\], expected \[64, 2\]/);
    expect(() => repackAwq({ ...t, qzerosShape: [1, 2] }, 16, 64, cfg())).toThrow(/qzeros has shape/);
    expect(() => repackAwq({ ...t, scalesShape: [2, 8] }, 16, 64, cfg())).toThrow(/scales has shape/);
    expect(() => repackAwq(t, 16, 64, cfg({ groupSize: 128 }))).toThrow(/group_size 128 does not divide the input dimension 64/);
    expect(() => repackAwq(t, 12, 64, cfg())).toThrow(/divisible by 8/);
  });

  it('quantization_config: only version gemm with zero points', () => {
    expect(readQuantizationConfig({ quantization_config: { quant_method: 'awq', bits: 4, group_size: 128, zero_point: true, version: 'gemm' } })).toMatchObject({ method: 'awq', groupSize: 128 });
    expect(() => readQuantizationConfig({ quantization_config: { quant_method: 'awq', bits: 4, version: 'gemv' } })).toThrow(/AWQ version 'gemv' is not supported/);
    expect(() => readQuantizationConfig({ quantization_config: { quant_method: 'awq', bits: 3, version: 'gemm' } })).toThrow(/bits 3 are not supported/);
  });

  it('an AWQ model folder gives the logits of its dequantized twin', async () => {
    const gpu = await testGpu();
    const gen = writeGeneratedModel({ modelType: 'qwen2', seed: 7 });
    dirs.push(gen);
    const { quantDir, dequantDir } = await writePrequantPair(gen, 'awq', 32, { seed: 21 });
    dirs.push(join(quantDir, '..'));
    const tokens = [1, 17, 42, 99, 5, 230, 7];
    const logits = async (dir: string) => {
      const m = await loadModel(dir, { gpu, dtype: 'f32' });
      const s = m.createSession();
      s.forward(tokens.slice(0, 6));
      const a = await s.logits();
      s.forward([tokens[6]!]);
      const b = await s.logits();
      const info = m.info;
      m.dispose();
      return { a, b, info };
    };
    const q = await logits(quantDir);
    const d = await logits(dequantDir);
    expect(q.info.quantization?.method).toBe('awq');
    expect(q.info.weightBytes).toBeLessThan(d.info.weightBytes);
    expectClose(q.a, d.a, { relL2: 1e-4 }, 'prefill logits');
    expectClose(q.b, d.b, { relL2: 1e-4 }, 'decode logits');
  });
});
