// A model family: everything that makes it differ from the shared decoder (transformer.ts), in
// one file per family in this folder: how its config.json reads (including which block
// variations it uses, ModelConfig.block), its checkpoint's tensor names, and load-time
// checkpoint fix-ups. The registry below lists the families; ALIASES maps model types that are
// another family under a new name.
import { ConfigError, type ModelConfig, type RawConfig } from '../config.ts';
import type { MoeTensorNames } from '../moe-weights.ts';
import type { Checkpoint } from '../safetensors.ts';
import { type LayerTensors, llamaLayerTensors } from './tensors.ts';
import { llama } from './llama.ts';
import { qwen2 } from './qwen2.ts';
import { qwen3 } from './qwen3.ts';
import { mixtral } from './mixtral.ts';
import { qwen2_moe } from './qwen2_moe.ts';
import { qwen3_moe } from './qwen3_moe.ts';
import { gpt_oss } from './gpt_oss.ts';
import { phi3 } from './phi3.ts';
import { gemma2 } from './gemma2.ts';
import { gemma3 } from './gemma3.ts';
import { smollm3 } from './smollm3.ts';
import { granite } from './granite.ts';
import { olmo2 } from './olmo2.ts';

export interface Family {
  /** config.json `model_type` values this family reads. */
  modelTypes: string[];
  parseConfig(raw: RawConfig): ModelConfig;
  /** Checkpoint names of layer i's tensors by role; default: Llama's (tensors.ts). */
  layerTensors?(i: number, c: ModelConfig): LayerTensors;
  /** Names of a sparse layer's experts and router (MoE families). */
  moeTensors?(i: number, c: ModelConfig): MoeTensorNames;
  /**
   * Load-time checkpoint fix-ups (mlx-lm's `sanitize`): a view of the checkpoint that names
   * tensors as layerTensors expects, e.g. the parts of a fused projection. Runs before any check.
   */
  sanitize?(ckpt: Checkpoint, c: ModelConfig): Checkpoint;
}

const FAMILIES: Family[] = [llama, qwen2, qwen3, mixtral, qwen2_moe, qwen3_moe, gpt_oss, phi3, gemma2, gemma3, smollm3, granite, olmo2];

/** Model types that are another family's under a new name (same config fields, tensors and blocks). */
const ALIASES: Record<string, string> = {
  mistral: 'llama',
};

export function supportedModelTypes(): string[] {
  return [...FAMILIES.flatMap((f) => f.modelTypes), ...Object.keys(ALIASES)].sort();
}

function lookup(type: unknown): Family | undefined {
  const name = typeof type === 'string' ? (ALIASES[type] ?? type) : undefined;
  return FAMILIES.find((f) => name !== undefined && f.modelTypes.includes(name));
}

export function familyFor(raw: RawConfig): Family {
  const family = lookup(raw.model_type);
  if (!family)
    throw new ConfigError(
      `unsupported model_type ${JSON.stringify(raw.model_type)} (architectures: ${JSON.stringify(raw.architectures ?? [])}); supported: ${supportedModelTypes().join(', ')}`,
    );
  return family;
}

/** The family of a parsed config (its model_type was checked when it was parsed). */
export function familyOf(c: ModelConfig): Family {
  const family = lookup(c.model_type);
  if (!family) throw new ConfigError(`unsupported model_type ${JSON.stringify(c.model_type)}`);
  return family;
}

export function parseConfig(raw: RawConfig): ModelConfig {
  return familyFor(raw).parseConfig(raw);
}

export function layerTensors(c: ModelConfig, i: number): LayerTensors {
  const f = familyOf(c);
  return f.layerTensors ? f.layerTensors(i, c) : llamaLayerTensors(i, c);
}
