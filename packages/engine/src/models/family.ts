// A model family: how its config.json reads and how its checkpoint names map onto
// the shared decoder's weights (transformer.ts). One file per family in this folder.
import { ConfigError, type ModelConfig, type RawConfig } from '../config.ts';
import { llama } from './llama.ts';
import { mistral } from './mistral.ts';
import { qwen2 } from './qwen2.ts';
import { qwen3 } from './qwen3.ts';
import { mixtral } from './mixtral.ts';
import { qwen2_moe } from './qwen2_moe.ts';
import { qwen3_moe } from './qwen3_moe.ts';
import { gpt_oss } from './gpt_oss.ts';

export interface Family {
  /** config.json `model_type` values this family reads. */
  modelTypes: string[];
  parseConfig(raw: RawConfig): ModelConfig;
}

const FAMILIES: Family[] = [llama, mistral, qwen2, qwen3, mixtral, qwen2_moe, qwen3_moe, gpt_oss];

export function supportedModelTypes(): string[] {
  return FAMILIES.flatMap((f) => f.modelTypes);
}

export function familyFor(raw: RawConfig): Family {
  const type = raw.model_type;
  const family = FAMILIES.find((f) => f.modelTypes.includes(type as string));
  if (!family)
    throw new ConfigError(
      `unsupported model_type ${JSON.stringify(type)} (architectures: ${JSON.stringify(raw.architectures ?? [])}); supported: ${supportedModelTypes().join(', ')}`,
    );
  return family;
}

export function parseConfig(raw: RawConfig): ModelConfig {
  return familyFor(raw).parseConfig(raw);
}
