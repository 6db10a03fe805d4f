// Qwen2 / Qwen2.5: biases on the q/k/v projections (not on o_proj); sliding windows
// only on the layers its config names.
import { parseCommonConfig } from '../config.ts';
import type { Family } from './family.ts';

export const qwen2: Family = {
  modelTypes: ['qwen2'],
  parseConfig: (raw) => parseCommonConfig(raw, { attentionBias: raw.attention_bias !== false }),
};
