// Qwen2-MoE (Qwen1.5-MoE): Qwen2's attention (q/k/v biases per qkv_bias) and, on the layers
// that decoder_sparse_step / mlp_only_layers make sparse, a softmax-then-top-k router over
// mlp.experts.N plus an always-on shared expert scaled by sigmoid(shared_expert_gate · x).
// Other layers keep a dense MLP of intermediate_size.
import { type ModelConfig, type RawConfig, checkMoeConfig, num, parseCommonConfig, positiveInt } from '../config.ts';
import type { Family } from './family.ts';
import type { MoeTensorNames } from '../moe-weights.ts';

/** Which layers are sparse, as Qwen2/3-MoE's decoder layers decide it. */
export function qwenSparseLayers(raw: RawConfig, layers: number, experts: number): boolean[] {
  const step = positiveInt(raw, 'decoder_sparse_step', 1);
  const only = Array.isArray(raw.mlp_only_layers) ? (raw.mlp_only_layers as number[]) : [];
  return Array.from({ length: layers }, (_, i) => !only.includes(i) && experts > 0 && (i + 1) % step === 0);
}

/** The MoE fields Qwen2-MoE and Qwen3-MoE share (num_experts, or num_local_experts as Transformers 5 also writes). */
export function qwenMoe(raw: RawConfig, c: ModelConfig, sharedExpert: number) {
  const experts = positiveInt(raw, raw.num_experts !== undefined ? 'num_experts' : 'num_local_experts');
  return checkMoeConfig(
    {
      num_experts: experts,
      num_experts_per_tok: positiveInt(raw, 'num_experts_per_tok'),
      expert_intermediate_size: positiveInt(raw, 'moe_intermediate_size'),
      routing: 'softmax_topk',
      norm_topk_prob: raw.norm_topk_prob === true,
      gpt_oss_experts: false,
      swiglu_limit: 0,
      shared_expert_intermediate_size: sharedExpert,
      sparse_layers: qwenSparseLayers(raw, c.num_hidden_layers, experts),
      mxfp4: false,
    },
    c.num_hidden_layers,
  );
}

/** Qwen2/3-MoE expert names: mlp.experts.N.*_proj, and Qwen2-MoE's shared expert with its gate. */
export function qwenMoeTensors(i: number, c: ModelConfig): MoeTensorNames {
  const p = `model.layers.${i}.mlp.`;
  return {
    router: [`${p}gate.weight`, undefined],
    perExpert: (e) => [`${p}experts.${e}.gate_proj.weight`, `${p}experts.${e}.up_proj.weight`, `${p}experts.${e}.down_proj.weight`],
    ...(c.moe!.shared_expert_intermediate_size > 0
      ? { shared: { gate: `${p}shared_expert.gate_proj.weight`, up: `${p}shared_expert.up_proj.weight`, down: `${p}shared_expert.down_proj.weight`, gateLogit: `${p}shared_expert_gate.weight` } }
      : {}),
  };
}

export const qwen2_moe: Family = {
  modelTypes: ['qwen2_moe'],
  parseConfig: (raw) => {
    const c = parseCommonConfig(raw, { attentionBias: raw.qkv_bias !== false });
    c.moe = qwenMoe(raw, c, num(raw, 'shared_expert_intermediate_size', 0));
    return c;
  },
  moeTensors: qwenMoeTensors,
};
