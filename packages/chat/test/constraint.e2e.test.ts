// Constrained decoding end to end on WebGPU: random-weight generated models with real
// tokenizers (Qwen3's 151K byte-level vocabulary, stories260K's 512 SentencePiece pieces)
// through the pipeline and its generation loop, greedy and sampled, streamed and not,
// one sequence and several in one batch. Every reply must parse and validate (Ajv).
import { cpSync } from 'node:fs';
import { join } from 'node:path';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeGeneratedModel } from '../../engine/test/generated-model.ts';
import { testGpu } from '../../engine/test/harness.ts';
import { compileConstraint, pipeline, resolveGenerationConfig, type GenerateOptions, type ResponseFormat, type TextGenerationPipeline } from '../src/index.ts';
import { repoRoot, tokenizerFolder } from './fixtures.ts';
import { SCHEMAS } from './schemas.ts';

const ajv = new Ajv2020({ strict: false });

/** A generated model folder with a real tokenizer's files copied in. */
function modelWithTokenizer(kind: 'qwen3' | 'stories'): string {
  const dir =
    kind === 'qwen3'
      ? writeGeneratedModel({ modelType: 'qwen3', seed: 41, config: { vocab_size: 151936, num_hidden_layers: 1, eos_token_id: 151645 } })
      : writeGeneratedModel({ modelType: 'llama', seed: 42, config: { vocab_size: 512 } });
  const from = kind === 'qwen3' ? tokenizerFolder('qwen3') : join(repoRoot, 'models', 'stories260K');
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) cpSync(join(from, f), join(dir, f));
  return dir;
}

const schemaFormat = (name: string): ResponseFormat => ({ type: 'json_schema', json_schema: { name, schema: SCHEMAS[name]!, strict: true } });

describe.each(['qwen3', 'stories'] as const)('constrained replies from a random %s-vocabulary model', (kind) => {
  let pipe: TextGenerationPipeline;
  beforeAll(async () => {
    pipe = await pipeline('text-generation', modelWithTokenizer(kind), { gpu: await testGpu(), dtype: 'f32', maxContext: 512, maxParallel: 2, templateFallback: 'plain' });
  }, 120_000);
  afterAll(() => pipe?.dispose());

  const check = (text: string, schema: string) => {
    const value: unknown = JSON.parse(text);
    expect(ajv.validate(SCHEMAS[schema] as object, value), `${text}: ${ajv.errorsText(ajv.errors)}`).toBe(true);
  };

  it.each(Object.keys(SCHEMAS))('schema %s: greedy and sampled, streamed and not, end with EOS and validate', async (schema) => {
    const base: GenerateOptions = { max_new_tokens: 400, response_format: schemaFormat(schema) };
    for (const opts of [{ do_sample: false }, { do_sample: true, temperature: 1, top_k: 0, seed: 1 }, { do_sample: true, temperature: 0.8, top_k: 40, top_p: 0.9, seed: 2 }]) {
      const [{ generated_text: text }] = await pipe('Reply in JSON:', { ...base, ...opts });
      expect(pipe.lastStats!.finishReason, text).toBe('stop');
      check(text, schema);
      let streamed = '';
      for await (const e of pipe.stream('Reply in JSON:', { ...base, ...opts })) streamed += e.delta;
      expect(streamed).toBe(text);
    }
  }, 300_000);

  it('json_object, and two constrained sequences in one batch', async () => {
    const [{ generated_text: obj }] = await pipe('Reply in JSON:', { max_new_tokens: 300, response_format: { type: 'json_object' } });
    // A random model may fill a string past the budget: what came is an object's start.
    if (pipe.lastStats!.finishReason === 'stop') expect(JSON.parse(obj)).toBeTypeOf('object');
    else expect(obj.trimStart().startsWith('{')).toBe(true);

    const outs = await pipe(['Reply in JSON:', 'Another one:'], { max_new_tokens: 400, do_sample: true, seed: 5, response_format: schemaFormat('nested') });
    for (const [{ generated_text: text }] of outs) check(text, 'nested');
  }, 300_000);

  it('refuses a constraint beside a draft model, and a constraint for another vocabulary', async () => {
    await expect(pipe('x', { response_format: { type: 'json_object' }, assistant_model: pipe })).rejects.toThrow(/cannot be combined with a draft model/);
    const other = await compileConstraint({ schema: true }, pipe.tokenizer, pipe.model.info.vocabSize + 1);
    expect(() => pipe.generator.generate({ promptIds: [1, 2], config: resolveGenerationConfig({ max_new_tokens: 2 }), constraint: other })).toThrow(/compiled for/);
    other.dispose();
  });
});
