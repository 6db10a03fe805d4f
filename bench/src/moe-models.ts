// The MoE bench models (pnpm bench --moe): a Mixtral-shaped and a Qwen3-MoE-shaped model,
// scaled to fit this machine, with the real config.json fields and per-expert tensor names
// and seeded random bf16 weights, written once into .cache/bench/. Their rows show decode
// bytes following the active experts, not the resident ones.

import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeSafetensors, type TensorToWrite } from '@webgpu-chat/engine/internal';
import { rng } from '@webgpu-chat/engine/testing';
import { cachedBenchModels } from './engine-run.ts';

/** Mixtral-8x7B's layout (8 experts, top-2, GQA 4:1) at a quarter of its width and 4 layers. */
export const MIXTRAL_SHAPED = {
  architectures: ['MixtralForCausalLM'],
  model_type: 'mixtral',
  hidden_size: 1024,
  intermediate_size: 3584,
  num_hidden_layers: 4,
  num_attention_heads: 16,
  num_key_value_heads: 4,
  head_dim: 64,
  num_local_experts: 8,
  num_experts_per_tok: 2,
  vocab_size: 32000,
  max_position_embeddings: 4096,
  rms_norm_eps: 1e-5,
  rope_theta: 1000000.0,
  tie_word_embeddings: false,
  torch_dtype: 'bfloat16',
  bos_token_id: 1,
  eos_token_id: 2,
};

/** Qwen3-30B-A3B's layout (128 experts, top-8, q/k norm) at half its width, 64 experts and 4 layers. */
export const QWEN3_MOE_SHAPED = {
  architectures: ['Qwen3MoeForCausalLM'],
  model_type: 'qwen3_moe',
  hidden_size: 1024,
  intermediate_size: 3072,
  moe_intermediate_size: 384,
  num_hidden_layers: 4,
  num_attention_heads: 16,
  num_key_value_heads: 4,
  head_dim: 64,
  num_experts: 64,
  num_experts_per_tok: 8,
  norm_topk_prob: true,
  decoder_sparse_step: 1,
  mlp_only_layers: [],
  vocab_size: 32000,
  max_position_embeddings: 4096,
  rms_norm_eps: 1e-6,
  rope_theta: 1000000.0,
  tie_word_embeddings: false,
  torch_dtype: 'bfloat16',
  bos_token_id: 1,
  eos_token_id: 2,
};

/** One of the shapes above, or a smaller model with the same fields (tests). */
export type MoeShape = typeof MIXTRAL_SHAPED | typeof QWEN3_MOE_SHAPED;

/** Random bf16 bits: offset + uniform in [-scale, scale), truncated to bf16 (rounding does not matter here). */
export function randomBf16(n: number, r: () => number, scale: number, offset = 0): Uint16Array {
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  const out = new Uint16Array(n);
  for (let i = 0; i < n; i++) {
    f[0] = offset + (r() * 2 - 1) * scale;
    out[i] = u[0]! >>> 16;
  }
  return out;
}

export function writeMoeModel(cfg: MoeShape, dir: string, seed = 1): void {
  const r = rng(seed);
  const h = cfg.hidden_size;
  const hd = cfg.head_dim;
  const tensors: TensorToWrite[] = [];
  const matrix = (name: string, shape: number[], scale = 0.03) => tensors.push({ name, dtype: 'BF16', shape, data: randomBf16(shape[0]! * shape[1]!, r, scale) });
  const norm = (name: string, n: number) => tensors.push({ name, dtype: 'BF16', shape: [n], data: randomBf16(n, r, 0.1, 1) });
  const qwen = cfg.model_type === 'qwen3_moe';
  const E = qwen ? (cfg as typeof QWEN3_MOE_SHAPED).num_experts : (cfg as typeof MIXTRAL_SHAPED).num_local_experts;
  const I = qwen ? (cfg as typeof QWEN3_MOE_SHAPED).moe_intermediate_size : cfg.intermediate_size;
  matrix('model.embed_tokens.weight', [cfg.vocab_size, h]);
  for (let l = 0; l < cfg.num_hidden_layers; l++) {
    const p = `model.layers.${l}.`;
    norm(`${p}input_layernorm.weight`, h);
    norm(`${p}post_attention_layernorm.weight`, h);
    matrix(`${p}self_attn.q_proj.weight`, [cfg.num_attention_heads * hd, h]);
    matrix(`${p}self_attn.k_proj.weight`, [cfg.num_key_value_heads * hd, h]);
    matrix(`${p}self_attn.v_proj.weight`, [cfg.num_key_value_heads * hd, h]);
    matrix(`${p}self_attn.o_proj.weight`, [h, cfg.num_attention_heads * hd]);
    if (qwen) {
      norm(`${p}self_attn.q_norm.weight`, hd);
      norm(`${p}self_attn.k_norm.weight`, hd);
    }
    const moe = qwen ? `${p}mlp.` : `${p}block_sparse_moe.`;
    matrix(`${moe}gate.weight`, [E, h], 0.3);
    for (let e = 0; e < E; e++) {
      const [g, u, d] = qwen ? ['gate_proj', 'up_proj', 'down_proj'] : ['w1', 'w3', 'w2'];
      matrix(`${moe}experts.${e}.${g}.weight`, [I, h]);
      matrix(`${moe}experts.${e}.${u}.weight`, [I, h]);
      matrix(`${moe}experts.${e}.${d}.weight`, [h, I]);
    }
  }
  norm('model.norm.weight', h);
  matrix('lm_head.weight', [cfg.vocab_size, h]);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'model.safetensors'), writeSafetensors(tensors, { format: 'pt' }));
  writeFileSync(join(dir, 'config.json'), JSON.stringify(cfg, null, 2));
}

/** The bench folders, written on first use: Mixtral-shaped, then Qwen3-MoE-shaped. */
export function moeBenchModels(): string[] {
  return cachedBenchModels([['mixtral-shaped-bf16', MIXTRAL_SHAPED], ['qwen3-moe-shaped-bf16', QWEN3_MOE_SHAPED]] as const, writeMoeModel);
}

