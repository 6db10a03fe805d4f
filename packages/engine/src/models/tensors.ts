// Checkpoint tensor names by role: what weights.ts loads and what the decoder block
// (transformer.ts) does with it. Llama's names are the default; a family that names or
// places things otherwise returns its own LayerTensors (models/<family>.ts).
import type { ModelConfig } from '../config.ts';

/** The linear layers of a dense block. */
export type LinearRole = 'q' | 'k' | 'v' | 'o' | 'gate' | 'up' | 'down';

export interface LayerTensors {
  /** RMSNorm on attention's input (Llama input_layernorm); absent in post-norm blocks. */
  attnNorm?: string;
  /** RMSNorm on attention's output before the residual add (Gemma 2/3, OLMo 2 post_attention_layernorm). */
  attnOutNorm?: string;
  /** RMSNorm on the MLP's input (Llama post_attention_layernorm, Gemma pre_feedforward_layernorm). */
  mlpNorm?: string;
  /** RMSNorm on the MLP's output before the residual add (post_feedforward_layernorm). */
  mlpOutNorm?: string;
  /** q/k RMSNorm weights: [head_dim] per head, or the whole projection's width (ModelConfig.block.qkNorm). */
  qNorm?: string;
  kNorm?: string;
  /** [heads] attention sink logits (GPT-OSS). */
  sinks?: string;
  /** Weight and optional bias of each linear layer the block has (a sparse layer has no gate/up/down). */
  linear: Partial<Record<LinearRole, [string, string | undefined]>>;
}

/** Tensors outside the layers. */
export const EMBED = 'model.embed_tokens.weight';
export const FINAL_NORM = 'model.norm.weight';
export const LM_HEAD = 'lm_head.weight';

/** Llama's layer names; `dense` false leaves out the MLP (a sparse layer's experts are named by the family). */
export function llamaLayerTensors(i: number, c: ModelConfig): LayerTensors {
  const p = `model.layers.${i}.`;
  const bias = (name: string, has: boolean) => (has ? `${p}${name}.bias` : undefined);
  const dense = !c.moe?.sparse_layers[i];
  const qk = c.block.qkNorm !== 'none';
  return {
    attnNorm: `${p}input_layernorm.weight`,
    mlpNorm: `${p}post_attention_layernorm.weight`,
    ...(qk ? { qNorm: `${p}self_attn.q_norm.weight`, kNorm: `${p}self_attn.k_norm.weight` } : {}),
    ...(c.attention_sinks ? { sinks: `${p}self_attn.sinks` } : {}),
    linear: {
      q: [`${p}self_attn.q_proj.weight`, bias('self_attn.q_proj', c.attention_bias)],
      k: [`${p}self_attn.k_proj.weight`, bias('self_attn.k_proj', c.attention_bias)],
      v: [`${p}self_attn.v_proj.weight`, bias('self_attn.v_proj', c.attention_bias)],
      o: [`${p}self_attn.o_proj.weight`, bias('self_attn.o_proj', c.o_proj_bias)],
      ...(dense
        ? {
            gate: [`${p}mlp.gate_proj.weight`, bias('mlp.gate_proj', c.mlp_bias)],
            up: [`${p}mlp.up_proj.weight`, bias('mlp.up_proj', c.mlp_bias)],
            down: [`${p}mlp.down_proj.weight`, bias('mlp.down_proj', c.mlp_bias)],
          }
        : {}),
    },
  };
}
