// Parity with Hugging Face Transformers, the definition of right: for each family,
// Transformers builds a scaled-down model from the real config class with seeded
// weights and saves it; both it (PyTorch, CPU, eager attention) and our engine run the
// same few hundred token ids. Top-1 must agree at every position, log-probabilities
// within f32 error, and 64 greedy tokens after the prompt must be identical.
import { afterAll, describe, it } from 'vitest';
import { loadModel } from '../src/model.ts';
import type { Model } from '../src/types.ts';
import { testGpu } from './harness.ts';
import { expectParity } from './parity-check.ts';
import {
  makeReferenceModel,
  pythonAvailable,
  type ReferenceDtype,
  type ReferenceFamily,
} from './transformers-reference.ts';

interface Case {
  name: string;
  family: ReferenceFamily;
  dtype?: ReferenceDtype;
  config?: Record<string, unknown>;
}

// Configs that stress the code: head_dim ≠ hidden/heads, odd vocabularies, one KV head,
// GQA ratios 1/2/7, rope_theta and every rope_scaling type, tied and untied embeddings.
const CASES: Case[] = [
  { name: 'llama, GQA 2, untied', family: 'llama' },
  {
    name: 'llama 3 rope scaling, GQA 7, one KV head, tied',
    family: 'llama',
    config: {
      hidden_size: 112,
      num_attention_heads: 7,
      num_key_value_heads: 1,
      vocab_size: 509,
      tie_word_embeddings: true,
      rope_theta: 500000,
      rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 64 },
    },
  },
  { name: 'qwen2, biases, GQA 1, tied, theta 1e6', family: 'qwen2', config: { num_key_value_heads: 4, tie_word_embeddings: true, rope_theta: 1000000, vocab_size: 1001 } },
  { name: 'qwen2, yarn scaling', family: 'qwen2', config: { rope_scaling: { rope_type: 'yarn', factor: 4, original_max_position_embeddings: 128 } } },
  { name: 'qwen3, head_dim 32 ≠ hidden/heads, linear scaling, tied', family: 'qwen3', config: { head_dim: 32, tie_word_embeddings: true, rope_scaling: { rope_type: 'linear', factor: 2 } } },
  { name: 'mistral, sliding window 48', family: 'mistral', config: { sliding_window: 48 } },
  { name: 'qwen3, bf16 checkpoint', family: 'qwen3', dtype: 'bfloat16' },
];

const python = pythonAvailable();
const models: Model[] = [];
afterAll(() => models.forEach((m) => m.dispose()));

describe.skipIf(!python.ok)('parity with Transformers', () => {
  for (const [i, c] of CASES.entries()) {
    it(c.name, async () => {
      const dir = await makeReferenceModel({ family: c.family, seed: 100 + i, dtype: c.dtype ?? 'float32', ...(c.config ? { config: c.config } : {}) });
      const model = await loadModel(dir, { gpu: await testGpu() });
      models.push(model);
      await expectParity(c.name, model, dir, 7 + i);
    });
  }
});

if (!python.ok) {
  describe('parity with Transformers', () => {
    it.skip(`skipped: ${python.reason}`, () => {});
  });
}
