// The bench models of the families whose blocks differ from the dense bench model's
// (pnpm bench, "Other families"): a Gemma 3 270M-shaped model (its real config: sandwich norms,
// GeGLU, q/k norms, 5 sliding layers to 1 global, a 262144-token tied vocabulary) and a
// Phi-3-mini-shaped one (its real config, but 4 of its 32 layers: fused qkv_proj and
// gate_up_proj on disk, as published). Seeded random bf16 weights; tensor names and shapes are
// the ones the engine's family file expects (expectedTensors), with Phi-3's projections fused.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expectedTensors, parseConfig, writeSafetensors, type TensorToWrite } from '@webgpu-chat/engine/internal';
import { rng } from '@webgpu-chat/engine/testing';
import { cachedBenchModels } from './engine-run.ts';
import { randomBf16 } from './moe-models.ts';

/** google/gemma-3-270m's config.json (the fields the engine reads). */
export const GEMMA3_270M = {
  architectures: ['Gemma3ForCausalLM'],
  model_type: 'gemma3_text',
  hidden_size: 640,
  intermediate_size: 2048,
  num_hidden_layers: 18,
  num_attention_heads: 4,
  num_key_value_heads: 1,
  head_dim: 256,
  vocab_size: 262144,
  max_position_embeddings: 32768,
  rms_norm_eps: 1e-6,
  hidden_activation: 'gelu_pytorch_tanh',
  query_pre_attn_scalar: 256,
  sliding_window: 512,
  layer_types: Array.from({ length: 18 }, (_, i) => ((i + 1) % 6 ? 'sliding_attention' : 'full_attention')),
  rope_theta: 1000000,
  rope_local_base_freq: 10000,
  tie_word_embeddings: true,
  torch_dtype: 'bfloat16',
  bos_token_id: 2,
  eos_token_id: 1,
};

/** microsoft/Phi-3-mini-4k-instruct's config.json with 4 of its 32 layers. */
export const PHI3_MINI_4_LAYERS = {
  architectures: ['Phi3ForCausalLM'],
  model_type: 'phi3',
  hidden_size: 3072,
  intermediate_size: 8192,
  num_hidden_layers: 4,
  num_attention_heads: 32,
  num_key_value_heads: 32,
  vocab_size: 32064,
  max_position_embeddings: 4096,
  original_max_position_embeddings: 4096,
  rms_norm_eps: 1e-5,
  hidden_act: 'silu',
  rope_theta: 10000,
  sliding_window: 2047,
  tie_word_embeddings: false,
  torch_dtype: 'bfloat16',
  bos_token_id: 1,
  eos_token_id: 32000,
};

type FamilyShape = typeof GEMMA3_270M | typeof PHI3_MINI_4_LAYERS;

export function writeFamilyModel(cfg: FamilyShape, dir: string, seed = 1): void {
  const r = rng(seed);
  const c = parseConfig(cfg);
  const tensors = new Map<string, TensorToWrite>();
  for (const [name, shape] of expectedTensors(c)) {
    const n = shape.reduce((a, b) => a * b, 1);
    // Gemma stores norms as w - 1.
    const data = shape.length === 1 ? randomBf16(n, r, 0.1, c.block.normPlusOne ? 0 : 1) : randomBf16(n, r, 0.03);
    tensors.set(name, { name, dtype: 'BF16', shape, data });
  }
  if (cfg.model_type === 'phi3') {
    // As Phi-3 checkpoints are published: q|k|v and gate|up saved as one tensor each.
    const fuse = (parts: string[], to: string) => {
      const ts = parts.map((p) => tensors.get(p)!);
      const data = new Uint16Array(ts.reduce((s, t) => s + t.data.byteLength / 2, 0));
      let at = 0;
      for (const t of ts) {
        data.set(t.data as Uint16Array, at);
        at += t.data.byteLength / 2;
        tensors.delete(t.name);
      }
      tensors.set(to, { name: to, dtype: 'BF16', shape: [ts.reduce((s, t) => s + t.shape[0]!, 0), ts[0]!.shape[1]!], data });
    };
    for (let l = 0; l < c.num_hidden_layers; l++) {
      const p = `model.layers.${l}.`;
      fuse(['q', 'k', 'v'].map((x) => `${p}self_attn.${x}_proj.weight`), `${p}self_attn.qkv_proj.weight`);
      fuse(['gate', 'up'].map((x) => `${p}mlp.${x}_proj.weight`), `${p}mlp.gate_up_proj.weight`);
    }
  }
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'model.safetensors'), writeSafetensors([...tensors.values()], { format: 'pt' }));
  writeFileSync(join(dir, 'config.json'), JSON.stringify(cfg, null, 2));
}

/** The bench folders, written on first use: Gemma 3 270M-shaped, then Phi-3-mini-shaped. */
export function familyBenchModels(): string[] {
  return cachedBenchModels([['gemma3-270m-shaped-bf16', GEMMA3_270M], ['phi3-mini-4-layers-shaped-bf16', PHI3_MINI_4_LAYERS]] as const, writeFamilyModel);
}
