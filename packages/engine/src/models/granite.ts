// Granite 3.x: Llama's block with four multipliers: embeddings times embedding_multiplier,
// each attention and MLP output times residual_multiplier before the residual add, q·k times
// attention_multiplier (instead of 1/sqrt(head_dim)) and the logits divided by logits_scaling.
// Each defaults to GraniteConfig's 1.0.
import { parseCommonConfig, positive } from '../config.ts';
import type { Family } from './family.ts';

export const granite: Family = {
  modelTypes: ['granite'],
  parseConfig: (raw) =>
    parseCommonConfig(raw, {
      block: {
        embeddingScale: positive(raw, 'embedding_multiplier', 1),
        residualScale: positive(raw, 'residual_multiplier', 1),
        attentionScale: positive(raw, 'attention_multiplier', 1),
        logitsDivisor: positive(raw, 'logits_scaling', 1),
      },
    }),
};
