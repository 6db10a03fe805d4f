// Prompt lookup on WebGPU: greedy output token for token the model's own plain greedy output
// (stories260K through the pipeline, generated llama / qwen2 / qwen3 / mistral models through
// the loop), with drafts of several lengths, a logits processor applied to verified rows, and
// the log-probabilities of accepted tokens equal to plain decoding's.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { directorySource, loadModel, type Model } from '@webgpu-chat/engine';
import { writeGeneratedModel } from '../../engine/test/generated-model.ts';
import { testGpu } from '../../engine/test/harness.ts';
import { ChatTokenizer, Generator, pipeline, resolveGenerationConfig, type GenerationConfig, type LogitsProcessor, type TextGenerationPipeline } from '../src/index.ts';
import { repoRoot } from './fixtures.ts';

const STORIES = join(repoRoot, 'models', 'stories260K');
const hasStories = existsSync(join(STORIES, 'model.safetensors'));

const models: Model[] = [];
const pipes: TextGenerationPipeline[] = [];
afterAll(() => {
  pipes.forEach((p) => p.dispose());
  models.forEach((m) => m.dispose());
});

describe.skipIf(!hasStories)('greedy prompt lookup equals plain greedy: stories260K', () => {
  it('on open and input-grounded prompts, for several draft lengths and schedules', async () => {
    const target = await pipeline('text-generation', STORIES, { maxContext: 512 });
    pipes.push(target);
    const [{ generated_text: story }] = await target('Once upon a time', { max_new_tokens: 60 });
    const prompts = ['Once upon a time', 'Lily and Ben went to the park. They', `Once upon a time${story}\nOnce upon a time${story}\nOnce upon a time`];
    for (const prompt of prompts) {
      const [{ generated_text: plain }] = await target(prompt, { max_new_tokens: 60 });
      const plainStats = target.lastStats!;
      const flags: GenerationConfig[] = [
        { prompt_lookup_num_tokens: 1, num_assistant_tokens_schedule: 'constant' },
        { prompt_lookup_num_tokens: 5, max_matching_ngram_size: 3, num_assistant_tokens_schedule: 'constant' },
        { prompt_lookup_num_tokens: 12, num_assistant_tokens_schedule: 'constant' },
        { prompt_lookup_num_tokens: 10 },
      ];
      for (const f of flags) {
        const [{ generated_text: out }] = await target(prompt, { max_new_tokens: 60, ...f });
        const s = target.lastStats!;
        expect(out, `${prompt.slice(0, 20)} / ${JSON.stringify(f)}`).toBe(plain);
        expect(s.newTokens).toBe(plainStats.newTokens);
        expect(s.finishReason).toBe(plainStats.finishReason);
        if (f.num_assistant_tokens_schedule === 'constant') expect(s.speculative!.draftedTokens).toBeGreaterThan(0);
      }
    }
  }, 240_000);
});

describe.skipIf(!hasStories)('greedy prompt lookup equals plain greedy: generated models', () => {
  const families = [
    { modelType: 'llama' as const, seed: 51 },
    { modelType: 'qwen2' as const, seed: 52 },
    { modelType: 'qwen3' as const, seed: 53 },
    { modelType: 'mistral' as const, seed: 54, config: { sliding_window: 6 } },
  ];
  for (const f of families) {
    it(`${f.modelType}: tokens, and with a logits processor and log-probabilities`, async () => {
      // The stories tokenizer (512 tokens) gives the loop its EOS and detokenizer.
      const tokenizer = await ChatTokenizer.load(directorySource(STORIES));
      const dir = writeGeneratedModel({ ...f, scale: 0.4, config: { vocab_size: 512, num_hidden_layers: 3, ...(f.config ?? {}) } });
      const target = await loadModel(dir, { gpu: await testGpu(), dtype: 'f32', maxContext: 256 });
      models.push(target);
      const batch = target.createBatch({ maxSequences: 4, maxContext: 256, kvTokens: 512 });
      const gen = new Generator(batch, tokenizer, 512, { maxParallel: 1 });
      // Repeated spans, so lookup finds matches in the prompt; the rest comes from the reply.
      const prompts = [
        [1, 40, 41, 42, 43, 44, 40, 41, 42, 43, 44, 40, 41],
        [1, 300, 7, 99, 12, 5, 300, 7],
        [1, 2],
      ];
      // Pushes token 3 up at every third position: the processor changes which drafts survive.
      const processor: LogitsProcessor = (logits, previous) => {
        if (previous.length % 3 === 0) logits[3] = logits[3]! + 50;
      };
      let drafted = 0;
      for (const prompt of prompts) {
        const plain = await gen.generate({ promptIds: prompt, config: resolveGenerationConfig({ max_new_tokens: 30 }), logprobs: 2 }).result;
        const plainProcessed = await gen.generate({ promptIds: prompt, config: resolveGenerationConfig({ max_new_tokens: 30 }), logitsProcessor: processor }).result;
        for (const k of [1, 3, 7]) {
          const config = resolveGenerationConfig({ max_new_tokens: 30, prompt_lookup_num_tokens: k, max_matching_ngram_size: 2, num_assistant_tokens_schedule: 'constant' });
          const r = await gen.generate({ promptIds: prompt, config, logprobs: 2 }).result;
          expect(r.tokenIds, `prompt ${prompt}, K=${k}`).toEqual(plain.tokenIds);
          r.logprobs.forEach((l, i) => {
            expect(l.logprob).toBeCloseTo(plain.logprobs[i]!.logprob, 4);
            expect(l.top.map(([id]) => id)).toEqual(plain.logprobs[i]!.top.map(([id]) => id));
          });
          drafted += r.stats.speculative!.draftedTokens;
          const processed = await gen.generate({ promptIds: prompt, config, logitsProcessor: processor }).result;
          expect(processed.tokenIds, `processed: prompt ${prompt}, K=${k}`).toEqual(plainProcessed.tokenIds);
        }
      }
      expect(drafted).toBeGreaterThan(0);
      gen.dispose();
      batch.dispose();
    }, 120_000);
  }
});
