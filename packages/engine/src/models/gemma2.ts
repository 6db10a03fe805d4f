// Gemma 2: RMSNorm applied as (1 + w), norms on the input and on the output of both attention
// and the MLP (input_layernorm, post_attention_layernorm, pre_/post_feedforward_layernorm),
// GeGLU with GELU's tanh approximation, embeddings times sqrt(hidden_size), q·k scaled by
// query_pre_attn_scalar^-0.5, attention scores and final logits soft-capped, and sliding-window
// layers alternating with full ones (sliding first) where config.json has no layer_types.
import { type ModelConfig, type RawConfig, num, parseCommonConfig, positiveInt } from '../config.ts';
import type { Family } from './family.ts';
import { type LayerTensors, llamaLayerTensors } from './tensors.ts';

/** Gemma 2 and 3 prefer hidden_activation (hidden_act is Gemma 1's and may say "gelu"). */
export function gemmaActivation(raw: RawConfig): RawConfig {
  return { ...raw, hidden_act: raw.hidden_activation ?? raw.hidden_act ?? 'gelu_pytorch_tanh' };
}

/** Layer types from `pattern`: every pattern-th layer full, the others sliding, unless layer_types is given. */
export function withLayerTypes(raw: RawConfig, pattern: number): RawConfig {
  if (Array.isArray(raw.layer_types)) return raw;
  const layers = positiveInt(raw, 'num_hidden_layers');
  return { ...raw, layer_types: Array.from({ length: layers }, (_, i) => ((i + 1) % pattern ? 'sliding_attention' : 'full_attention')) };
}

/** The block parts Gemma 2 and 3 share. */
export function gemmaBlock(raw: RawConfig) {
  return {
    norms: 'sandwich' as const,
    normPlusOne: true,
    embeddingScale: Math.fround(Math.sqrt(positiveInt(raw, 'hidden_size'))),
    attentionScale: 1 / Math.sqrt(num(raw, 'query_pre_attn_scalar', 256)),
    attentionSoftcap: num(raw, 'attn_logit_softcapping', 0),
    finalLogitSoftcap: num(raw, 'final_logit_softcapping', 0),
  };
}

/** Gemma's four norms around attention and the MLP. */
export function gemmaLayerTensors(i: number, c: ModelConfig): LayerTensors {
  const p = `model.layers.${i}.`;
  return {
    ...llamaLayerTensors(i, c),
    attnNorm: `${p}input_layernorm.weight`,
    attnOutNorm: `${p}post_attention_layernorm.weight`,
    mlpNorm: `${p}pre_feedforward_layernorm.weight`,
    mlpOutNorm: `${p}post_feedforward_layernorm.weight`,
  };
}

export const gemma2: Family = {
  modelTypes: ['gemma2'],
  parseConfig: (raw) => {
    const r = withLayerTypes(gemmaActivation(raw), 2);
    const c = parseCommonConfig(r, { block: gemmaBlock(r) });
    c.tie_word_embeddings = raw.tie_word_embeddings !== false;
    return c;
  },
  layerTensors: gemmaLayerTensors,
};
