// config.json → the engine's hyper-parameters. Field names follow config.json; values
// that are derived (head_dim, kv heads, per-layer sliding windows) are computed here once.

import type { WeightDtype } from './dtype.ts';
import { type ParsedRope, parseRopeScaling } from './rope-frequencies.ts';

export class ConfigError extends Error {
  override name = 'ConfigError';
}

export interface ModelConfig {
  model_type: string;
  architectures: string[];
  hidden_size: number;
  intermediate_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  num_key_value_heads: number;
  head_dim: number;
  vocab_size: number;
  rms_norm_eps: number;
  /** rope_theta and the scaling rule, from rope_scaling or rope_parameters. */
  rope: ParsedRope;
  max_position_embeddings: number;
  tie_word_embeddings: boolean;
  /** q/k/v projections carry biases (Qwen2; Llama's attention_bias). */
  attention_bias: boolean;
  /** o_proj carries a bias too (Llama's attention_bias covers all four). */
  o_proj_bias: boolean;
  mlp_bias: boolean;
  /** Per-head RMSNorm on q and k before RoPE (Qwen3). */
  qk_norm: boolean;
  hidden_act: string;
  /** Per layer: the sliding window in tokens, or 0 for full attention. */
  layer_windows: number[];
  /** The checkpoint's dtype (torch_dtype / dtype), f32 when absent. */
  dtype: WeightDtype;
  bos_token_id: number | number[] | undefined;
  eos_token_id: number | number[] | undefined;
  /** A learned per-head logit in each attention softmax's denominator (GPT-OSS `sinks`). */
  attention_sinks: boolean;
  /** Mixture-of-experts MLPs (Mixtral, Qwen2/3-MoE, GPT-OSS); absent for dense models. */
  moe?: MoeConfig;
}

/** How a family's MoE layers route and what their checkpoint holds (see ops/moe.ts). */
export interface MoeConfig {
  /** Checkpoint naming: Mixtral's block_sparse_moe.experts.N.w1/w2/w3, Qwen's mlp.experts.N.*_proj, GPT-OSS's stacked mlp.experts.*. */
  layout: 'mixtral' | 'qwen' | 'gpt_oss';
  num_experts: number;
  num_experts_per_tok: number;
  /** Rows of each expert's gate and up projections. */
  expert_intermediate_size: number;
  /** 'topk_softmax': softmax over the k best logits (Mixtral, GPT-OSS); 'softmax_topk': softmax over all, then the k best (Qwen). */
  routing: 'topk_softmax' | 'softmax_topk';
  /** With softmax_topk: renormalise the k probabilities to sum to 1. */
  norm_topk_prob: boolean;
  /** GPT-OSS: router bias, expert biases, and the clamped SwiGLU (up + 1) * gate * sigmoid(alpha * gate). */
  gpt_oss_experts: boolean;
  swiglu_limit: number;
  /** Qwen2-MoE's always-on expert with a sigmoid gate; 0 when there is none. */
  shared_expert_intermediate_size: number;
  /** Per layer: true where the MLP is the sparse block (Qwen's mlp_only_layers / decoder_sparse_step). */
  sparse_layers: boolean[];
  /** GPT-OSS experts stored as MXFP4 (`*_blocks` e2m1 nibbles, `*_scales` e8m0 per 32 values). */
  mxfp4: boolean;
}

/** Checks what every MoE config must satisfy; families fill in the rest. */
export function checkMoeConfig(m: MoeConfig, layers: number): MoeConfig {
  const { num_experts: e, num_experts_per_tok: k } = m;
  if (!(Number.isInteger(e) && e >= 1)) throw new ConfigError(`config.json: the number of experts must be a positive integer, got ${e}`);
  if (!(Number.isInteger(k) && k >= 1)) throw new ConfigError(`config.json: 'num_experts_per_tok' must be a positive integer, got ${k}`);
  if (k > e) throw new ConfigError(`config.json: num_experts_per_tok (${k}) is larger than the number of experts (${e})`);
  if (!(Number.isInteger(m.expert_intermediate_size) && m.expert_intermediate_size >= 1))
    throw new ConfigError(`config.json: expert intermediate size must be a positive integer, got ${m.expert_intermediate_size}`);
  if (m.sparse_layers.length !== layers) throw new ConfigError(`config.json: ${m.sparse_layers.length} sparse-layer flags for ${layers} layers`);
  return m;
}

export type RawConfig = Record<string, unknown>;

export function num(raw: RawConfig, key: string, fallback?: number): number {
  const v = raw[key];
  if (v === undefined || v === null) {
    if (fallback !== undefined) return fallback;
    throw new ConfigError(`config.json: missing '${key}'`);
  }
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new ConfigError(`config.json: '${key}' must be a number, got ${JSON.stringify(v)}`);
  return v;
}

export function positiveInt(raw: RawConfig, key: string, fallback?: number): number {
  const v = num(raw, key, fallback);
  if (!Number.isInteger(v) || v <= 0) throw new ConfigError(`config.json: '${key}' must be a positive integer, got ${v}`);
  return v;
}

export function parseDtype(v: unknown): WeightDtype {
  switch (v) {
    case undefined:
    case null:
    case 'float32':
    case 'float':
      return 'f32';
    case 'bfloat16':
      return 'bf16';
    case 'float16':
    case 'half':
      return 'f16';
    default:
      throw new ConfigError(`config.json: unsupported torch_dtype ${JSON.stringify(v)} (supported: float32, bfloat16, float16)`);
  }
}

/** The parts every dense family shares; a family passes what differs. */
export function parseCommonConfig(raw: RawConfig, family: { attentionBias?: boolean; qkNorm?: boolean }): ModelConfig {
  const hidden = positiveInt(raw, 'hidden_size');
  const heads = positiveInt(raw, 'num_attention_heads');
  const kvHeads = positiveInt(raw, 'num_key_value_heads', heads);
  if (heads % kvHeads !== 0) throw new ConfigError(`config.json: num_attention_heads (${heads}) is not a multiple of num_key_value_heads (${kvHeads})`);
  const headDim = positiveInt(raw, 'head_dim', hidden / heads);
  const layers = positiveInt(raw, 'num_hidden_layers');
  const act = (raw.hidden_act ?? raw.hidden_activation ?? 'silu') as string;
  if (act !== 'silu' && act !== 'swish') throw new ConfigError(`config.json: unsupported hidden_act '${act}' (supported: silu)`);
  const llamaBias = raw.attention_bias === true;
  return {
    model_type: String(raw.model_type),
    architectures: (raw.architectures as string[] | undefined) ?? [],
    hidden_size: hidden,
    intermediate_size: positiveInt(raw, 'intermediate_size'),
    num_hidden_layers: layers,
    num_attention_heads: heads,
    num_key_value_heads: kvHeads,
    head_dim: headDim,
    vocab_size: positiveInt(raw, 'vocab_size'),
    rms_norm_eps: num(raw, 'rms_norm_eps', 1e-6),
    rope: parseRopeScaling(raw),
    max_position_embeddings: positiveInt(raw, 'max_position_embeddings', 2048),
    tie_word_embeddings: raw.tie_word_embeddings === true,
    attention_bias: family.attentionBias ?? llamaBias,
    o_proj_bias: family.attentionBias === undefined && llamaBias,
    mlp_bias: raw.mlp_bias === true,
    qk_norm: family.qkNorm ?? false,
    hidden_act: 'silu',
    layer_windows: layerWindows(raw, layers),
    dtype: parseDtype(raw.torch_dtype ?? raw.dtype),
    bos_token_id: raw.bos_token_id as number | number[] | undefined,
    eos_token_id: raw.eos_token_id as number | number[] | undefined,
    attention_sinks: false,
  };
}

/**
 * Which layers use a sliding window. Newer configs list `layer_types`; older Qwen2 ones
 * use `use_sliding_window` + `max_window_layers` (layers from that index on slide);
 * Mistral slides on every layer when `sliding_window` is set.
 */
function layerWindows(raw: RawConfig, layers: number): number[] {
  const window = typeof raw.sliding_window === 'number' ? raw.sliding_window : 0;
  const types = raw.layer_types as string[] | undefined;
  if (Array.isArray(types)) {
    if (types.length !== layers) throw new ConfigError(`config.json: layer_types has ${types.length} entries for ${layers} layers`);
    return types.map((t) => (t === 'sliding_attention' ? window : 0));
  }
  if (!window) return new Array(layers).fill(0);
  if (raw.use_sliding_window === false) return new Array(layers).fill(0);
  if (raw.use_sliding_window === true) {
    const from = typeof raw.max_window_layers === 'number' ? raw.max_window_layers : 0;
    return Array.from({ length: layers }, (_, i) => (i >= from ? window : 0));
  }
  return new Array(layers).fill(window);
}
