// Qwen3: per-head RMSNorm on q and k before RoPE (q_norm, k_norm), no q/k/v biases
// unless attention_bias says so, and a head_dim independent of hidden_size / heads.
import { parseCommonConfig } from '../config.ts';
import type { Family } from './family.ts';

export const qwen3: Family = {
  modelTypes: ['qwen3'],
  parseConfig: (raw) => parseCommonConfig(raw, { block: { qkNorm: 'head' } }),
};
