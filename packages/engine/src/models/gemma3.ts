// Gemma 3 text (gemma3_text, and the language model of gemma3 image-text checkpoints):
// Gemma 2's block with per-head q/k RMSNorm (as (1 + w)) and no soft-capping by default, and
// a local:global pattern: sliding layers use RoPE with rope_local_base_freq and no scaling,
// full (global) layers rope_theta with the config's scaling. A gemma3 checkpoint's text config
// sits under text_config (fields it leaves out take Gemma3TextConfig's defaults) and its
// language model's tensors under language_model.model. (or model.language_model. as
// Transformers 5 saves them); the vision tower is not read.
import { replaceTensors } from '../checkpoint-view.ts';
import { ConfigError, type RawConfig, num, parseCommonConfig } from '../config.ts';
import { parseRopeScaling, type ParsedRope } from '../rope-frequencies.ts';
import type { Family } from './family.ts';
import { gemmaActivation, gemmaBlock, gemmaLayerTensors, withLayerTypes } from './gemma2.ts';
import { EMBED } from './tensors.ts';

/** Gemma3TextConfig's defaults (Transformers 5), for the fields a text_config leaves out. */
const TEXT_DEFAULTS: RawConfig = {
  vocab_size: 262208,
  hidden_size: 2304,
  intermediate_size: 9216,
  num_hidden_layers: 26,
  num_attention_heads: 8,
  num_key_value_heads: 4,
  head_dim: 256,
  hidden_activation: 'gelu_pytorch_tanh',
  max_position_embeddings: 131072,
  rms_norm_eps: 1e-6,
  rope_theta: 1_000_000,
  rope_local_base_freq: 10_000,
  query_pre_attn_scalar: 256,
  sliding_window: 4096,
  sliding_window_pattern: 6,
  tie_word_embeddings: true,
};

/** The text model's config: text_config of a gemma3 config (with its dtype), or the config itself. */
function textConfig(raw: RawConfig): RawConfig {
  if (raw.model_type !== 'gemma3') return { ...TEXT_DEFAULTS, ...raw };
  const text = raw.text_config;
  if (typeof text !== 'object' || text === null) throw new ConfigError('config.json: a gemma3 config needs a text_config object');
  const dtype = raw.torch_dtype ?? raw.dtype;
  return { ...TEXT_DEFAULTS, ...(dtype !== undefined ? { torch_dtype: dtype } : {}), ...(text as RawConfig), model_type: 'gemma3' };
}

/** Global (full) and local (sliding) RoPE: per layer type in rope_parameters, or rope_theta + rope_scaling and rope_local_base_freq. */
function ropes(raw: RawConfig): { global: ParsedRope; local: ParsedRope } {
  const rp = raw.rope_parameters;
  if (typeof rp === 'object' && rp !== null && 'full_attention' in rp)
    return { global: parseRopeScaling(raw, 'full_attention'), local: parseRopeScaling(raw, 'sliding_attention') };
  return { global: parseRopeScaling(raw), local: { ropeTheta: num(raw, 'rope_local_base_freq'), scaling: { type: 'default' } } };
}

/** Checkpoint prefixes of a gemma3 image-text model's language model. */
const LANGUAGE_PREFIXES = ['language_model.model.', 'model.language_model.'];

export const gemma3: Family = {
  modelTypes: ['gemma3_text', 'gemma3'],
  parseConfig: (raw) => {
    const text = textConfig(raw);
    const r = withLayerTypes(gemmaActivation(text), num(text, 'sliding_window_pattern'));
    const { global, local } = ropes(r);
    const c = parseCommonConfig(r, { block: { ...gemmaBlock(r), qkNorm: 'head' }, rope: global });
    c.tie_word_embeddings = r.tie_word_embeddings !== false;
    c.layer_ropes = (r.layer_types as string[]).map((t) => (t === 'sliding_attention' ? local : global));
    return c;
  },
  layerTensors: gemmaLayerTensors,
  sanitize(ckpt, c) {
    if (c.model_type !== 'gemma3' || ckpt.has(EMBED)) return ckpt;
    const prefix = LANGUAGE_PREFIXES.find((p) => ckpt.has(`${p}embed_tokens.weight`));
    if (!prefix) throw new ConfigError(`${ckpt.source.name}: no language model tensors (${LANGUAGE_PREFIXES.map((p) => `${p}embed_tokens.weight`).join(' or ')}) in this gemma3 checkpoint`);
    const text = [...ckpt.tensors.keys()].filter((n) => n.startsWith(prefix)).map((n): [string, { from: string }] => [`model.${n.slice(prefix.length)}`, { from: n }]);
    const head = ['language_model.lm_head.weight', 'lm_head.weight'].filter((n) => ckpt.has(n)).map((n): [string, { from: string }] => ['lm_head.weight', { from: n }]);
    // Everything else (vision tower, projector) belongs to the image side.
    return replaceTensors(ckpt, new Set(ckpt.tensors.keys()), [...text, ...head.slice(0, 1)]);
  },
};
