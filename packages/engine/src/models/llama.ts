// Llama (Llama 2/3.x, SmolLM2, TinyLlama; Mistral by alias): the plain decoder, Llama's
// tensor names (tensors.ts). attention_bias and mlp_bias are read from the config; Llama 3's
// rope scaling and Mistral's sliding window come with the config too.
import { parseCommonConfig } from '../config.ts';
import type { Family } from './family.ts';

export const llama: Family = {
  modelTypes: ['llama'],
  parseConfig: (raw) => parseCommonConfig(raw, {}),
};
