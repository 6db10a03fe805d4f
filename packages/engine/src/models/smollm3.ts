// SmolLM3: Llama's block, with RoPE left out on the layers no_rope_layers marks 0 (by default
// every no_rope_layer_interval-th layer), and tied embeddings unless config.json says otherwise.
import { ConfigError, parseCommonConfig, positiveInt } from '../config.ts';
import type { Family } from './family.ts';

export const smollm3: Family = {
  modelTypes: ['smollm3'],
  parseConfig: (raw) => {
    const c = parseCommonConfig(raw, {});
    const layers = c.num_hidden_layers;
    const interval = positiveInt(raw, 'no_rope_layer_interval', 4);
    const useRope = raw.no_rope_layers ?? Array.from({ length: layers }, (_, i) => ((i + 1) % interval !== 0 ? 1 : 0));
    if (!Array.isArray(useRope) || useRope.length !== layers || !useRope.every((v) => v === 0 || v === 1))
      throw new ConfigError(`config.json: no_rope_layers must list 0 or 1 for each of the ${layers} layers`);
    c.layer_ropes = useRope.map((v) => (v ? c.rope : null));
    c.tie_word_embeddings = raw.tie_word_embeddings !== false;
    return c;
  },
};
