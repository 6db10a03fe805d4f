// GPT-OSS: biases on q/k/v/o, a learned per-head attention sink, sliding and full attention
// alternating by layer_types, YaRN RoPE, and a sparse MLP on every layer: a router with a
// bias, top-k then softmax over the picked logits, and experts with biases and a clamped
// SwiGLU, stored stacked (mlp.experts.gate_up_proj with gate/up interleaved, down_proj),
// in MXFP4 as published (quantization_config.quant_method "mxfp4") or in floats.
import { ConfigError, checkMoeConfig, num, parseCommonConfig, positiveInt } from '../config.ts';
import type { Family } from './family.ts';

export const gpt_oss: Family = {
  modelTypes: ['gpt_oss'],
  parseConfig: (raw) => {
    const c = parseCommonConfig(raw, {});
    c.attention_bias = raw.attention_bias !== false;
    c.o_proj_bias = c.attention_bias;
    c.attention_sinks = true;
    const q = raw.quantization_config as { quant_method?: unknown } | undefined;
    if (q && q.quant_method !== 'mxfp4')
      throw new ConfigError(`config.json: gpt_oss quantization_config.quant_method ${JSON.stringify(q.quant_method)} is not supported (supported: mxfp4)`);
    c.moe = checkMoeConfig(
      {
        num_experts: positiveInt(raw, 'num_local_experts'),
        num_experts_per_tok: positiveInt(raw, raw.num_experts_per_tok !== undefined ? 'num_experts_per_tok' : 'experts_per_token'),
        expert_intermediate_size: c.intermediate_size,
        routing: 'topk_softmax',
        norm_topk_prob: true,
        gpt_oss_experts: true,
        swiglu_limit: num(raw, 'swiglu_limit', 7.0),
        shared_expert_intermediate_size: 0,
        sparse_layers: new Array<boolean>(c.num_hidden_layers).fill(true),
        mxfp4: q !== undefined,
      },
      c.num_hidden_layers,
    );
    return c;
  },
  moeTensors: (i) => {
    const p = `model.layers.${i}.mlp.`;
    return {
      router: [`${p}router.weight`, `${p}router.bias`],
      stacked: { gateUp: `${p}experts.gate_up_proj`, down: `${p}experts.down_proj`, gateUpBias: `${p}experts.gate_up_proj_bias`, downBias: `${p}experts.down_proj_bias` },
    };
  },
};
