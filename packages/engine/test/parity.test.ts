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
  // Prompt and greedy tokens cross original_max_position_embeddings, where LongRoPE switches to its long factors.
  {
    name: 'phi3, fused qkv/gate_up, longrope, partial rotary 0.75',
    family: 'phi3',
    config: {
      max_position_embeddings: 1024,
      original_max_position_embeddings: 256,
      partial_rotary_factor: 0.75,
      rope_scaling: { rope_type: 'longrope', short_factor: [1.0, 1.1, 1.3, 1.7, 2.0, 2.5], long_factor: [1.0, 1.5, 2.5, 4.0, 6.0, 8.0] },
    },
  },
  { name: 'phi3, sliding window 40, tied, bf16', family: 'phi3', dtype: 'bfloat16', config: { sliding_window: 40, tie_word_embeddings: true, num_key_value_heads: 1 } },
  // Caps small enough to bite on these weights; 3 layers: sliding, full, sliding.
  {
    name: 'gemma2, soft-capping, sliding window 32, query_pre_attn_scalar 24',
    family: 'gemma2',
    config: { num_hidden_layers: 3, sliding_window: 32, attn_logit_softcapping: 2.5, final_logit_softcapping: 5.5, query_pre_attn_scalar: 24 },
  },
  {
    name: 'gemma3_text, local:global RoPE with linear scaling on global layers',
    family: 'gemma3_text',
    config: {
      num_hidden_layers: 4,
      layer_types: ['sliding_attention', 'sliding_attention', 'full_attention', 'sliding_attention'],
      sliding_window: 40,
      query_pre_attn_scalar: 32,
      rope_parameters: { sliding_attention: { rope_type: 'default', rope_theta: 10000 }, full_attention: { rope_type: 'linear', factor: 4, rope_theta: 1000000 } },
    },
  },
  { name: 'smollm3, no RoPE on layer 1', family: 'smollm3', config: { num_hidden_layers: 3, no_rope_layers: [1, 0, 1] } },
  {
    name: 'granite, embedding/residual/attention multipliers, logits scaling',
    family: 'granite',
    config: { embedding_multiplier: 3.0, residual_multiplier: 0.5, attention_multiplier: 0.1, logits_scaling: 4.0 },
  },
  { name: 'olmo2, post-norms, q/k norm over the projection', family: 'olmo2' },
  { name: 'olmo2, bf16, GQA 4', family: 'olmo2', dtype: 'bfloat16', config: { num_attention_heads: 8, num_key_value_heads: 2, head_dim: 8 } },
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
