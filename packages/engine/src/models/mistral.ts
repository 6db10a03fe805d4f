// Mistral: Llama's blocks with a sliding window over every layer when `sliding_window` is set.
import { parseCommonConfig } from '../config.ts';
import type { Family } from './family.ts';

export const mistral: Family = {
  modelTypes: ['mistral'],
  parseConfig: (raw) => parseCommonConfig(raw, {}),
};
