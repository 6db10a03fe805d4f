// Llama (Llama 2/3.x, SmolLM2, TinyLlama): the plain decoder. attention_bias and
// mlp_bias are read from the config; Llama 3's rope scaling comes with the config too.
import { parseCommonConfig } from '../config.ts';
import type { Family } from './family.ts';

export const llama: Family = {
  modelTypes: ['llama'],
  parseConfig: (raw) => parseCommonConfig(raw, {}),
};
