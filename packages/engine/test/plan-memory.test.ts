// planMemory counts each weight in the format it is loaded in: the decoder's linear layers
// quantized (q8: 1.125 B/weight with its f32 scale per 32; q4: 0.625 B/weight with its f16
// scale and zero per 32; GPTQ int4 per its group size, plus the act-order permutation), so a
// quantized model that fits is not refused.
import { afterAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../src/models/family.ts';
import { loadModel, ModelLoadError, planMemory } from '../src/model.ts';
import { planLoad } from '../src/load-plan.ts';
import type { Model } from '../src/types.ts';
import { generatedConfig, writeGeneratedModel } from './generated-model.ts';
import { testGpu } from './harness.ts';

// hidden 64, 4 heads of 16, 2 KV heads, intermediate 80 (down_proj's K=80 pads to 96), 2 layers.
const OPTIONS = { modelType: 'llama' as const, config: { intermediate_size: 80 } };
const config = parseConfig(generatedConfig(OPTIONS));

/** The decoder's linear layers per layer as [N, K]. */
const LINEARS: [number, number][] = [
  [64, 64], // q
  [32, 64], // k
  [32, 64], // v
  [64, 64], // o
  [80, 64], // gate
  [80, 64], // up
  [64, 80], // down
];
/** The same, as loaded: q|k|v and gate|up stacked into one matrix each (src/fuse.ts). */
const STACKED: [number, number][] = [
  [128, 64], // q|k|v
  [64, 64], // o
  [160, 64], // gate|up
  [64, 80], // down
];
const pad32 = (k: number) => Math.ceil(k / 32) * 32;
const dense = planMemory(config, 'f32', 128);
const sum = (f: (n: number, k: number) => number, linears = LINEARS) => config.num_hidden_layers * linears.reduce((s, [n, k]) => s + f(n, k), 0);

describe('planMemory', () => {

  it('counts q8 and q4 linear layers at 1.125 and 0.625 bytes per (padded) weight', () => {
    const denseLinear = sum((n, k) => 4 * n * k);
    for (const [format, perWeight] of [['q8', 1.125], ['q4', 0.625]] as const) {
      const plan = planMemory(config, 'f32', 128, { quantize: format });
      const quantized = sum((n, k) => perWeight * n * pad32(k));
      expect(plan.quantizedBytes).toBe(quantized);
      expect(plan.weightBytes).toBe(dense.weightBytes - denseLinear + quantized);
      expect(plan.kvBytes).toBe(dense.kvBytes);
      expect(plan.total).toBe(plan.weightBytes + plan.kvBytes + plan.activationBytes);
    }
    expect(dense.quantizedBytes).toBe(0);
  });

  it('counts the software kernels\' row tiles: rows padded to whole tiles of 32, once per stacked matrix', () => {
    const tiled = planMemory(config, 'f32', 128, { quantize: 'q4', tiles: true });
    expect(tiled.quantizedBytes).toBe(sum((n, k) => 0.625 * pad32(n) * pad32(k), STACKED));
    const denseTiled = planMemory(config, 'f32', 128, { tiles: true });
    expect(denseTiled.weightBytes - dense.weightBytes).toBe(sum((n, k) => 4 * (pad32(n) - n) * k, STACKED) + (config.tie_word_embeddings ? 0 : 4 * (pad32(config.vocab_size) - config.vocab_size) * config.hidden_size));
  });

  it('counts GPTQ int4 by its group size, with the act-order permutation', () => {
    const prequant = { method: 'gptq' as const, bits: 4 as const, groupSize: 32, descAct: true, sym: true, zeroOffset: 1 };
    const plan = planMemory(config, 'bf16', 128, { prequant });
    expect(plan.quantizedBytes).toBe(sum((n, k) => 0.625 * n * pad32(k) + 4 * k));
    // Layers the checkpoint left unquantized keep the load dtype.
    const partial = planMemory(config, 'bf16', 128, { prequant, isPrequantized: (p) => !p.endsWith('down_proj') });
    expect(partial.quantizedBytes).toBe(plan.quantizedBytes - config.num_hidden_layers * (0.625 * 64 * 96 + 4 * 80));
    expect(partial.weightBytes - plan.weightBytes).toBe(config.num_hidden_layers * (2 * 64 * 80 - (0.625 * 64 * 96 + 4 * 80)));
  });

  it('stacks what fuse.ts would stack: act-order layers stay apart, layers whose g_idx is the stored order do not', () => {
    const prequant = { method: 'gptq' as const, bits: 4 as const, groupSize: 32, descAct: true, sym: true, zeroOffset: 1 };
    const permuted = planLoad(config, 'bf16', { prequant, tiles: true });
    expect(permuted.layers[0]!.qkv).toBeUndefined();
    expect(permuted.layers[0]!.gateUp).toBeUndefined();
    expect(permuted.quantizedBytes).toBe(sum((n, k) => 0.625 * pad32(n) * pad32(k) + 4 * k));
    const inOrder = planLoad(config, 'bf16', { prequant, tiles: true, isPermuted: () => false });
    expect(inOrder.layers[0]!.qkv?.parts.map((p) => p.role)).toEqual(['q', 'k', 'v']);
    expect(inOrder.layers[0]!.gateUp?.how).toEqual({ kind: 'glu', block: 2 });
    expect(inOrder.quantizedBytes).toBe(sum((n, k) => 0.625 * pad32(n) * pad32(k), STACKED));
  });
});

describe('loadModel memory check', () => {
  const models: Model[] = [];
  afterAll(() => models.forEach((m) => m.dispose()));

  it('loads a q4 model that fits only quantized, and its resident q4 bytes are the planned ones', async () => {
    const dir = writeGeneratedModel({ ...OPTIONS, seed: 4 });
    const gpu = await testGpu();
    const q4 = planMemory(config, 'f32', 128, { quantize: 'q4', tiles: gpu.info.isSoftware });
    const budget = q4.total + 1024;
    expect(budget).toBeLessThan(dense.total);
    await expect(loadModel(dir, { gpu, dtype: 'f32', maxContext: 128, maxMemoryBytes: budget })).rejects.toThrow(ModelLoadError);
    const model = await loadModel(dir, { gpu, dtype: 'f32', maxContext: 128, maxMemoryBytes: budget, quantize: 'q4' });
    models.push(model);
    expect(model.info.weightBytesByFormat?.q4).toBe(q4.quantizedBytes);
    // The loader executes the plan the check sums: every resident byte was planned.
    expect(model.info.weightBytes).toBe(q4.weightBytes);
    expect(model.info.quantization).toEqual({ method: 'q4', bits: 4, groupSize: 32 });
    // An untied LM head is read every step; the embedding table is not.
    expect(model.info.bytesPerToken).toBe(q4.weightBytes - config.vocab_size * config.hidden_size * 4);
  });

});
