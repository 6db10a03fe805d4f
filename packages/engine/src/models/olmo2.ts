// OLMo 2: norms after attention and after the MLP (post_attention_layernorm,
// post_feedforward_layernorm), applied to each output before the residual add and none on
// their inputs, and RMSNorm on q and k over the whole projection (before RoPE).
import { parseCommonConfig } from '../config.ts';
import type { Family } from './family.ts';
import { llamaLayerTensors } from './tensors.ts';

export const olmo2: Family = {
  modelTypes: ['olmo2'],
  parseConfig: (raw) => parseCommonConfig(raw, { block: { norms: 'post', qkNorm: 'projection' } }),
  layerTensors: (i, c) => {
    const { linear, qNorm, kNorm } = llamaLayerTensors(i, c);
    const p = `model.layers.${i}.`;
    return { linear, qNorm: qNorm!, kNorm: kNorm!, attnOutNorm: `${p}post_attention_layernorm.weight`, mlpOutNorm: `${p}post_feedforward_layernorm.weight` };
  },
};
