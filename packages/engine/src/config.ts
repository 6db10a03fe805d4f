// config.json → the engine's hyper-parameters. Field names follow config.json; values
// that are derived (head_dim, kv heads, per-layer sliding windows) are computed here once.

import type { WeightDtype } from './dtype.ts';
import type { GateActivation } from './ops/elementwise.ts';
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
  /** How each decoder block is put together on the shared building blocks (transformer.ts). */
  block: BlockSpec;
  /** Per layer: the sliding window in tokens, or 0 for full attention. */
  layer_windows: number[];
  /** Per layer: its RoPE (Gemma 3: another base on sliding layers), or null for none (SmolLM3's no_rope_layers). */
  layer_ropes: (ParsedRope | null)[];
  /** The checkpoint's dtype (torch_dtype / dtype), f32 when absent. */
  dtype: WeightDtype;
  bos_token_id: number | number[] | undefined;
  eos_token_id: number | number[] | undefined;
  /** A learned per-head logit in each attention softmax's denominator (GPT-OSS `sinks`). */
  attention_sinks: boolean;
  /** Mixture-of-experts MLPs (Mixtral, Qwen2/3-MoE, GPT-OSS); absent for dense models. */
  moe?: MoeConfig;
}

/**
 * The block variations a family declares (models/<family>.ts); parseCommonConfig's defaults
 * are Llama's block.
 */
export interface BlockSpec {
  /**
   * Where RMSNorms sit: 'pre' (Llama: on the input of attention and of the MLP), 'sandwich'
   * (Gemma 2/3: on the input and on the output of each, before the residual add), 'post'
   * (OLMo 2: only on the outputs).
   */
  norms: 'pre' | 'sandwich' | 'post';
  /** Norm weights are stored as w - 1 and applied as (1 + w) (Gemma); 1 is added at load. */
  normPlusOne: boolean;
  /** The gate's activation in the gated MLP. */
  activation: GateActivation;
  /** RMSNorm on q and k before RoPE: per head (Qwen3, Gemma 3), over the whole projection (OLMo 2), or none. */
  qkNorm: 'none' | 'head' | 'projection';
  /** Multiplies the embeddings (Gemma: sqrt(hidden_size); Granite: embedding_multiplier); 1: none. */
  embeddingScale: number;
  /** Multiplies each attention and MLP output before it joins the residual (Granite residual_multiplier); 1: none. */
  residualScale: number;
  /** Multiplies q·k: 1/sqrt(head_dim) by default (Gemma: query_pre_attn_scalar^-0.5; Granite: attention_multiplier). */
  attentionScale: number;
  /** Attention scores become cap · tanh(s / cap) (Gemma 2 attn_logit_softcapping); 0: none. */
  attentionSoftcap: number;
  /** Logits are divided by this (Granite logits_scaling); 1: none. */
  logitsDivisor: number;
  /** Logits become cap · tanh(x / cap) (Gemma 2 final_logit_softcapping); 0: none. */
  finalLogitSoftcap: number;
}

/** How a family's MoE layers route and what their checkpoint holds (see ops/moe.ts). */
export interface MoeConfig {
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

/** A positive finite number from config.json, or `fallback` when the field is absent or null. */
export function positive(raw: RawConfig, key: string, fallback: number): number {
  const v = num(raw, key, fallback);
  if (!(v > 0)) throw new ConfigError(`config.json: '${key}' must be a positive number, got ${v}`);
  return v;
}

/** HF activation names (ACT2FN) → the gated MLP's activation. */
const ACTIVATIONS: Record<string, GateActivation> = {
  silu: 'silu',
  swish: 'silu',
  gelu_pytorch_tanh: 'gelu_tanh',
  gelu_new: 'gelu_tanh',
  gelu_fast: 'gelu_tanh',
};

/** The gated MLP's activation named by hidden_act (or Gemma's hidden_activation). */
export function parseActivation(raw: RawConfig): GateActivation {
  const act = raw.hidden_act ?? raw.hidden_activation ?? 'silu';
  const known = typeof act === 'string' ? ACTIVATIONS[act] : undefined;
  if (!known) throw new ConfigError(`config.json: unsupported hidden_act ${JSON.stringify(act)} (supported: ${Object.keys(ACTIVATIONS).join(', ')})`);
  return known;
}

/** The parts every dense family shares; a family passes what differs (its block variations in `block`). */
export function parseCommonConfig(raw: RawConfig, family: { attentionBias?: boolean; block?: Partial<BlockSpec>; rope?: ParsedRope }): ModelConfig {
  const hidden = positiveInt(raw, 'hidden_size');
  const heads = positiveInt(raw, 'num_attention_heads');
  const kvHeads = positiveInt(raw, 'num_key_value_heads', heads);
  if (heads % kvHeads !== 0) throw new ConfigError(`config.json: num_attention_heads (${heads}) is not a multiple of num_key_value_heads (${kvHeads})`);
  const headDim = positiveInt(raw, 'head_dim', hidden / heads);
  const layers = positiveInt(raw, 'num_hidden_layers');
  const llamaBias = raw.attention_bias === true;
  const rope = family.rope ?? parseRopeScaling(raw);
  const block: BlockSpec = {
    norms: 'pre',
    normPlusOne: false,
    activation: parseActivation(raw),
    qkNorm: 'none',
    embeddingScale: 1,
    residualScale: 1,
    attentionScale: 1 / Math.sqrt(headDim),
    attentionSoftcap: 0,
    logitsDivisor: 1,
    finalLogitSoftcap: 0,
    ...family.block,
  };
  if (block.norms !== 'pre' && block.residualScale !== 1)
    throw new ConfigError(`config.json: a ${String(raw.model_type)} block with norms on its outputs and a residual multiplier is not supported`);
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
    rope,
    max_position_embeddings: positiveInt(raw, 'max_position_embeddings', 2048),
    tie_word_embeddings: raw.tie_word_embeddings === true,
    attention_bias: family.attentionBias ?? llamaBias,
    o_proj_bias: family.attentionBias === undefined && llamaBias,
    mlp_bias: raw.mlp_bias === true,
    block,
    layer_windows: layerWindows(raw, layers),
    layer_ropes: new Array<ParsedRope | null>(layers).fill(rope),
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
export function layerWindows(raw: RawConfig, layers: number): number[] {
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
