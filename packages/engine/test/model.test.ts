// The whole decoder on generated models of each family against the float64 TypeScript
// forward pass (ours, so a wiring check; the independent checks are the Transformers
// parity tests and the stories260K transcript), plus the session's cache behaviour.
import { afterAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../src/models/family.ts';
import { loadModel } from '../src/model.ts';
import { directorySource } from '../src/files.ts';
import { openCheckpoint } from '../src/safetensors.ts';
import type { Model } from '../src/types.ts';
import { writeGeneratedModel } from './generated-model.ts';
import { expectClose, testGpu } from './harness.ts';
import { readTensors, referenceForward } from './reference-model.ts';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

const PROMPT = [1, 17, 250, 3, 99, 42, 42, 7, 310, 5, 64, 128, 200, 11];

async function reference(dir: string, tokens: number[]) {
  const cfg = parseConfig(JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')));
  return referenceForward(cfg, await readTensors(await openCheckpoint(directorySource(dir))), tokens);
}

const models: Model[] = [];
afterAll(() => models.forEach((m) => m.dispose()));

describe('decoder vs float64 reference', () => {
  const cases = [
    { modelType: 'llama' as const },
    { modelType: 'qwen2' as const },
    { modelType: 'qwen3' as const },
    { modelType: 'mistral' as const, config: { sliding_window: 5 } },
    { modelType: 'llama' as const, config: { num_key_value_heads: 1, attention_bias: true, rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 64 } } },
  ];
  // Both kernel variants run on this adapter: the GPU one folds the RMSNorms into the stacked
  // q|k|v, gate|up and LM head ops, the software one keeps them apart.
  for (const variant of ['software', 'gpu'] as const)
  for (const [i, c] of cases.entries()) {
    it(`${c.modelType} #${i} (${variant} kernels): prefill logits and step-by-step decode match`, async () => {
      const dir = writeGeneratedModel({ ...c, seed: 10 + i });
      const gpu = await testGpu();
      const model = await loadModel(dir, { gpu, dtype: 'f32', variant });
      models.push(model);
      const want = await reference(dir, PROMPT);
      const s = model.createSession();
      s.forward(PROMPT, { allLogits: true });
      for (let t = 0; t < PROMPT.length; t++) expectClose(await s.logits(t), want[t]!, { relL2: 2e-5 }, `position ${t}`);
      s.truncate(0);
      for (let t = 0; t < PROMPT.length; t++) {
        s.forward([PROMPT[t]!]);
        expectClose(await s.logits(), want[t]!, { relL2: 2e-5 }, `decode position ${t}`);
      }
      s.dispose();
    });
  }

  it('bf16 weights: logits match the reference on the same rounded weights', async () => {
    const dir = writeGeneratedModel({ modelType: 'qwen2', dtype: 'bfloat16', seed: 3 });
    const gpu = await testGpu();
    const model = await loadModel(dir, { gpu });
    models.push(model);
    expect(model.info.dtype).toBe('bf16');
    const want = await reference(dir, PROMPT);
    const s = model.createSession();
    s.forward(PROMPT);
    expectClose(await s.logits(), want[PROMPT.length - 1]!, { relL2: 2e-5 });
  });
});

describe('session', () => {
  it('argmax and topK agree with the logits row; truncate reuses a prefix', async () => {
    const dir = writeGeneratedModel({ modelType: 'llama', seed: 5 });
    const gpu = await testGpu();
    const model = await loadModel(dir, { gpu });
    models.push(model);
    const s = model.createSession();
    s.forward(PROMPT);
    const row = await s.logits();
    const best = row.indexOf(Math.max(...row));
    s.truncate(PROMPT.length - 1);
    s.forward(PROMPT.slice(-1));
    expect(await s.argmax()).toBe(best);
    const top = await s.topK(5);
    expect(top.ids[0]).toBe(best);
    const sorted = [...row].sort((a, b) => b - a);
    expectClose(top.logits, sorted.slice(0, 5), { relL2: 1e-6 });
    const lse = Math.log(row.reduce((a, v) => a + Math.exp(v - sorted[0]!), 0)) + sorted[0]!;
    expect(Math.abs(top.logSumExp - lse)).toBeLessThan(1e-4);
  });

  it('rejects out-of-vocabulary ids and context overflow with clear errors', async () => {
    const dir = writeGeneratedModel({ modelType: 'llama', seed: 6 });
    const gpu = await testGpu();
    const model = await loadModel(dir, { gpu, maxContext: 16 });
    models.push(model);
    const s = model.createSession();
    expect(() => s.forward([5000])).toThrow(/outside the vocabulary/);
    expect(() => s.forward(new Array(17).fill(1))).toThrow(/exceed the context of 16/);
  });
});
