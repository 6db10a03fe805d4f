// Qwen3-MoE: Qwen3's attention (q/k RMSNorm) with Qwen2-MoE's router (softmax over all
// experts, then top-k, renormalised when norm_topk_prob) and no shared expert.
import { parseCommonConfig } from '../config.ts';
import type { Family } from './family.ts';
import { qwenMoe, qwenMoeTensors } from './qwen2_moe.ts';

export const qwen3_moe: Family = {
  modelTypes: ['qwen3_moe'],
  parseConfig: (raw) => {
    const c = parseCommonConfig(raw, { block: { qkNorm: 'head' } });
    c.moe = qwenMoe(raw, c, 0);
    return c;
  },
  moeTensors: qwenMoeTensors,
};
