// Mixtral: Mistral's attention with a sparse MLP on every layer. The router picks
// num_experts_per_tok of num_local_experts and weighs them by a softmax over the picked
// logits; experts are SwiGLU MLPs saved per expert as block_sparse_moe.experts.N.w1/w3/w2.
import { checkMoeConfig, parseCommonConfig, positiveInt } from '../config.ts';
import type { Family } from './family.ts';

export const mixtral: Family = {
  modelTypes: ['mixtral'],
  parseConfig: (raw) => {
    const c = parseCommonConfig(raw, {});
    c.moe = checkMoeConfig(
      {
        num_experts: positiveInt(raw, 'num_local_experts'),
        num_experts_per_tok: positiveInt(raw, 'num_experts_per_tok'),
        expert_intermediate_size: c.intermediate_size,
        routing: 'topk_softmax',
        norm_topk_prob: true,
        gpt_oss_experts: false,
        swiglu_limit: 0,
        shared_expert_intermediate_size: 0,
        sparse_layers: new Array<boolean>(c.num_hidden_layers).fill(true),
        mxfp4: false,
      },
      c.num_hidden_layers,
    );
    return c;
  },
  moeTensors: (i) => {
    const p = `model.layers.${i}.block_sparse_moe.`;
    return {
      router: [`${p}gate.weight`, undefined],
      perExpert: (e) => [`${p}experts.${e}.w1.weight`, `${p}experts.${e}.w3.weight`, `${p}experts.${e}.w2.weight`],
    };
  },
};
