// Writes small generated model folders (real config.json field names, seeded random
// weights, real safetensors) for tests that must not depend on Python.

import { mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encode16 } from '../src/dtype.ts';
import { writeSafetensors, type TensorToWrite } from '../src/safetensors-writer.ts';
import { rng } from './harness.ts';

export interface GeneratedModelOptions {
  modelType?: 'llama' | 'qwen2' | 'qwen3' | 'mistral';
  dtype?: 'float32' | 'bfloat16' | 'float16';
  seed?: number;
  /** config.json overrides. */
  config?: Record<string, unknown>;
  dir?: string;
  /** Standard deviation-ish scale of the random matrices. */
  scale?: number;
}

export function generatedConfig(o: GeneratedModelOptions = {}): Record<string, unknown> {
  const type = o.modelType ?? 'llama';
  const arch = { llama: 'LlamaForCausalLM', qwen2: 'Qwen2ForCausalLM', qwen3: 'Qwen3ForCausalLM', mistral: 'MistralForCausalLM' }[type];
  return {
    architectures: [arch],
    model_type: type,
    hidden_size: 64,
    intermediate_size: 96,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    ...(type === 'qwen3' ? { head_dim: 24 } : {}),
    vocab_size: 311,
    rms_norm_eps: 1e-6,
    rope_theta: 10000,
    max_position_embeddings: 512,
    tie_word_embeddings: type !== 'llama',
    torch_dtype: o.dtype ?? 'float32',
    bos_token_id: 1,
    eos_token_id: 2,
    ...o.config,
  };
}

/** Writes the folder and returns its path. */
export function writeGeneratedModel(o: GeneratedModelOptions = {}): string {
  const cfg = generatedConfig(o);
  const type = cfg.model_type as string;
  const dtype = (cfg.torch_dtype as string) ?? 'float32';
  const r = rng(o.seed ?? 1);
  const scale = o.scale ?? 0.15;
  const h = cfg.hidden_size as number;
  const nH = cfg.num_attention_heads as number;
  const nKv = cfg.num_key_value_heads as number;
  const hd = (cfg.head_dim as number | undefined) ?? h / nH;
  const I = cfg.intermediate_size as number;
  const vocab = cfg.vocab_size as number;
  const qkvBias = type === 'qwen2' || cfg.attention_bias === true;
  const tensors: TensorToWrite[] = [];
  const add = (name: string, shape: number[], kind: 'matrix' | 'norm' | 'bias') => {
    const n = shape.reduce((a, b) => a * b, 1);
    const v = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      const u = r() * 2 - 1;
      v[i] = kind === 'norm' ? 1 + 0.1 * u : kind === 'bias' ? 0.05 * u : scale * u * Math.sqrt(3);
    }
    if (dtype === 'float32') tensors.push({ name, dtype: 'F32', shape, data: v });
    else {
      const bits = encode16(v, dtype === 'bfloat16' ? 'bf16' : 'f16').subarray(0, n);
      tensors.push({ name, dtype: dtype === 'bfloat16' ? 'BF16' : 'F16', shape, data: bits });
    }
  };
  add('model.embed_tokens.weight', [vocab, h], 'matrix');
  for (let l = 0; l < (cfg.num_hidden_layers as number); l++) {
    const p = `model.layers.${l}.`;
    add(`${p}input_layernorm.weight`, [h], 'norm');
    add(`${p}self_attn.q_proj.weight`, [nH * hd, h], 'matrix');
    add(`${p}self_attn.k_proj.weight`, [nKv * hd, h], 'matrix');
    add(`${p}self_attn.v_proj.weight`, [nKv * hd, h], 'matrix');
    if (qkvBias) {
      add(`${p}self_attn.q_proj.bias`, [nH * hd], 'bias');
      add(`${p}self_attn.k_proj.bias`, [nKv * hd], 'bias');
      add(`${p}self_attn.v_proj.bias`, [nKv * hd], 'bias');
    }
    if (type === 'llama' && cfg.attention_bias === true) add(`${p}self_attn.o_proj.bias`, [h], 'bias');
    if (type === 'qwen3') {
      add(`${p}self_attn.q_norm.weight`, [hd], 'norm');
      add(`${p}self_attn.k_norm.weight`, [hd], 'norm');
    }
    add(`${p}self_attn.o_proj.weight`, [h, nH * hd], 'matrix');
    add(`${p}post_attention_layernorm.weight`, [h], 'norm');
    add(`${p}mlp.gate_proj.weight`, [I, h], 'matrix');
    add(`${p}mlp.up_proj.weight`, [I, h], 'matrix');
    add(`${p}mlp.down_proj.weight`, [h, I], 'matrix');
  }
  add('model.norm.weight', [h], 'norm');
  if (cfg.tie_word_embeddings !== true) add('lm_head.weight', [vocab, h], 'matrix');

  const dir = o.dir ?? join(tmpdir(), `wgc-model-${type}-${dtype}-${o.seed ?? 1}-${process.pid}-${Math.floor(r() * 1e9)}`);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'config.json'), JSON.stringify(cfg, null, 2));
  writeFileSync(join(dir, 'model.safetensors'), writeSafetensors(tensors, { format: 'pt' }));
  return dir;
}
