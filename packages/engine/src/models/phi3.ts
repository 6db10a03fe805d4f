// Phi-3 / Phi-3.5 / Phi-4-mini: Llama's block with q, k and v saved as one fused qkv_proj and
// gate and up as one gate_up_proj (gate rows first); both are split into row ranges at load
// (sanitize), so they load, quantize and stack like Llama's. LongRoPE with short and long
// factors and partial_rotary_factor come with the config (rope-frequencies.ts); sliding_window,
// where set, applies to every layer.
import { replaceTensors } from '../checkpoint-view.ts';
import { ConfigError, parseCommonConfig } from '../config.ts';
import type { Family } from './family.ts';

export const phi3: Family = {
  modelTypes: ['phi3'],
  parseConfig: (raw) => parseCommonConfig(raw, {}),
  sanitize(ckpt, c) {
    const qDim = c.num_attention_heads * c.head_dim;
    const kvDim = c.num_key_value_heads * c.head_dim;
    const fused = new Set<string>();
    const parts: [string, { from: string; rows: [number, number] }][] = [];
    for (let i = 0; i < c.num_hidden_layers; i++) {
      const p = `model.layers.${i}.`;
      for (const name of [`${p}self_attn.qkv_proj`, `${p}mlp.gate_up_proj`])
        if (ckpt.has(`${name}.qweight`)) throw new ConfigError(`${ckpt.source.name}: a quantized fused ${name} (GPTQ/AWQ) is not supported for phi3`);
      const qkv = `${p}self_attn.qkv_proj.weight`;
      const gateUp = `${p}mlp.gate_up_proj.weight`;
      // A checkpoint that already saves the parts apart reads as Llama's.
      if (!ckpt.has(qkv) && !ckpt.has(gateUp)) continue;
      fused.add(qkv).add(gateUp);
      const I = c.intermediate_size;
      parts.push(
        [`${p}self_attn.q_proj.weight`, { from: qkv, rows: [0, qDim] }],
        [`${p}self_attn.k_proj.weight`, { from: qkv, rows: [qDim, qDim + kvDim] }],
        [`${p}self_attn.v_proj.weight`, { from: qkv, rows: [qDim + kvDim, qDim + 2 * kvDim] }],
        [`${p}mlp.gate_proj.weight`, { from: gateUp, rows: [0, I] }],
        [`${p}mlp.up_proj.weight`, { from: gateUp, rows: [I, 2 * I] }],
      );
    }
    for (const [, { from, rows }] of parts) {
      const got = ckpt.get(from).shape[0];
      const want = from.endsWith('qkv_proj.weight') ? qDim + 2 * kvDim : 2 * c.intermediate_size;
      if (got !== want) throw new ConfigError(`tensor ${from} has ${got} rows but config.json implies ${want} (needed to split it at row ${rows[0]})`);
    }
    return replaceTensors(ckpt, fused, parts);
  },
};
