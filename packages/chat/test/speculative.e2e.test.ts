// Assisted generation on WebGPU: greedy output identical to the target's own greedy
// decoding (stories260K with truncated-layer drafts, generated model pairs), the loop's
// stop strings / EOS / budgets / streaming unchanged, and on a tiny vocabulary the
// sampled tokens' distribution equal to the target's.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadModel, ModelLoadError, directorySource, type Model, type Session } from '@webgpu-chat/engine';
import { openCheckpoint, parseConfig } from '@webgpu-chat/engine/internal';
import { writeGeneratedModel, expectClose, testGpu, readTensors, referenceForward } from '@webgpu-chat/engine/testing';
import {
  Assistant,
  ChatTokenizer,
  DraftModelError,
  pipeline,
  probabilityOf,
  resolveGenerationConfig,
  Generator,
  distributionFromLogits,
  type GenerationConfig,
  type TextGenerationPipeline,
} from '../src/index.ts';
import { repoRoot } from './fixtures.ts';

const STORIES = join(repoRoot, 'models', 'stories260K');
const hasStories = existsSync(join(STORIES, 'model.safetensors'));

const models: Model[] = [];
const pipes: TextGenerationPipeline[] = [];
afterAll(() => {
  pipes.forEach((p) => p.dispose());
  models.forEach((m) => m.dispose());
});

async function load(dir: string, numLayers?: number): Promise<Model> {
  const m = await loadModel(dir, { gpu: await testGpu(), dtype: 'f32', maxContext: 256, ...(numLayers ? { numLayers } : {}) });
  models.push(m);
  return m;
}

describe('numLayers load option', () => {
  it('runs only the first layers, then the final norm and LM head', async () => {
    const dir = writeGeneratedModel({ modelType: 'qwen3', seed: 21, config: { num_hidden_layers: 3 } });
    const m = await load(dir, 2);
    expect(m.info.config.num_hidden_layers).toBe(2);
    const cfg = parseConfig(JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')));
    const tokens = [1, 5, 77, 300, 12];
    const want = referenceForward({ ...cfg, num_hidden_layers: 2, layer_windows: cfg.layer_windows.slice(0, 2) }, await readTensors(await openCheckpoint(directorySource(dir))), tokens);
    const s = m.createSession();
    s.forward(tokens, { allLogits: true });
    for (let t = 0; t < tokens.length; t++) expectClose(await s.logits(t), want[t]!, { relL2: 2e-5 }, `position ${t}`);
    // argmax and topK of an earlier row, as the verification step reads them.
    const row2 = await s.logits(2);
    expect(await s.argmax(2)).toBe(row2.indexOf(Math.max(...row2)));
    expect((await s.topK(3, 2)).ids[0]).toBe(await s.argmax(2));
    await expect(s.argmax(9)).rejects.toThrow(/not kept/);
    s.dispose();
    await expect(loadModel(dir, { gpu: await testGpu(), numLayers: 4 })).rejects.toThrow(ModelLoadError);
  });
});

describe.skipIf(!hasStories)('greedy assisted generation equals plain greedy: stories260K', () => {
  const prompts = ['Once upon a time', 'The little dog', 'Lily and Ben went to the park. They', 'One day, a bird'];

  it('with 1- and 3-layer drafts, on several prompts, token for token', async () => {
    const target = await pipeline('text-generation', STORIES, { maxContext: 256 });
    const draft1 = await pipeline('text-generation', STORIES, { maxContext: 256, numLayers: 1 });
    const draft3 = await pipeline('text-generation', STORIES, { maxContext: 256, numLayers: 3 });
    pipes.push(target, draft1, draft3);
    for (const prompt of prompts) {
      const [{ generated_text: plain }] = await target(prompt, { max_new_tokens: 60 });
      const plainStats = target.lastStats!;
      for (const [draft, schedule] of [[draft1, 'heuristic'], [draft3, 'constant']] as const) {
        const [{ generated_text: spec }] = await target(prompt, { max_new_tokens: 60, assistant_model: draft, num_assistant_tokens: 5, num_assistant_tokens_schedule: schedule });
        const s = target.lastStats!;
        expect(spec, `${prompt} / ${schedule}`).toBe(plain);
        expect(s.newTokens).toBe(plainStats.newTokens);
        expect(s.finishReason).toBe(plainStats.finishReason);
        expect(s.speculative!.steps).toBeGreaterThan(0);
        expect(s.speculative!.acceptedTokens).toBe(Math.round(s.speculative!.acceptanceRate * s.speculative!.draftedTokens));
      }
    }
  });

  it('stop strings, streaming, budgets and multi-turn KV reuse behave as in plain decoding', async () => {
    const target = await pipeline('text-generation', STORIES, { maxContext: 256, templateFallback: 'plain' });
    const plainPipe = await pipeline('text-generation', STORIES, { maxContext: 256, templateFallback: 'plain' });
    pipes.push(target, plainPipe);
    const draft = STORIES; // a path: loaded once by the target pipeline (the same weights: accepts nearly all)
    const base: GenerationConfig = { max_new_tokens: 40 };
    const [{ generated_text: plain }] = await plainPipe('Once upon a time', base);
    const cut = plain.indexOf('.');
    expect(cut).toBeGreaterThan(0);
    const [{ generated_text: stopped }] = await target('Once upon a time', { ...base, stop: ['.'], assistant_model: draft });
    expect(stopped).toBe(plain.slice(0, cut));
    expect(target.lastStats!.finishReason).toBe('stop');
    expect(target.lastStats!.speculative!.acceptanceRate).toBeGreaterThan(0.9);

    for (const n of [1, 2, 7]) {
      const [{ generated_text: short }] = await target('Once upon a time', { max_new_tokens: n, assistant_model: draft, num_assistant_tokens: 4 });
      expect(target.lastStats!.newTokens).toBe(n);
      const [{ generated_text: want }] = await plainPipe('Once upon a time', { max_new_tokens: n });
      expect(short).toBe(want);
    }

    let streamed = '';
    for await (const e of target.stream('Once upon a time', { ...base, assistant_model: draft })) streamed += e.delta;
    expect(streamed).toBe(plain);

    // Two turns: the second reuses at least the first's cache (all but its last token), as plain
    // decoding does; a longer cached sequence (the streamed reply above) may share more.
    const chat = [{ role: 'user' as const, content: 'Once upon a time' }];
    const [{ generated_text: t1 }] = await target(chat, { max_new_tokens: 24, assistant_model: draft });
    const s1 = target.lastStats!;
    const chat2 = [...t1, { role: 'user' as const, content: ' The next day' }];
    const [{ generated_text: t2 }] = await target(chat2, { max_new_tokens: 24, assistant_model: draft });
    expect(target.lastStats!.reusedTokens).toBeGreaterThanOrEqual(s1.promptTokens + s1.newTokens - 1);
    const [{ generated_text: want2 }] = await plainPipe(chat2, { max_new_tokens: 24 });
    expect(t2.at(-1)).toEqual(want2.at(-1));

    // Seeded sampling is reproducible with a schedule that does not carry over between calls.
    const sampled = { max_new_tokens: 20, do_sample: true, top_k: 40, temperature: 1.2, seed: 11, assistant_model: draft, num_assistant_tokens_schedule: 'heuristic_transient' as const };
    const [{ generated_text: a }] = await target('Once upon a time', sampled);
    const [{ generated_text: b }] = await target('Once upon a time', sampled);
    expect(a).toBe(b);
  });

  it('assistant_confidence_threshold stops a draft after a token the draft was unsure of', async () => {
    const target = await pipeline('text-generation', STORIES, { maxContext: 256 });
    const draft = await pipeline('text-generation', STORIES, { maxContext: 256, numLayers: 1 });
    pipes.push(target, draft);
    const base = { max_new_tokens: 40, assistant_model: draft, num_assistant_tokens: 6, num_assistant_tokens_schedule: 'constant' as const };
    const [{ generated_text: plain }] = await target('Once upon a time', { max_new_tokens: 40 });
    const perStep = async (threshold: number) => {
      const [{ generated_text: out }] = await target('Once upon a time', { ...base, assistant_confidence_threshold: threshold });
      expect(out).toBe(plain);
      const s = target.lastStats!.speculative!;
      return s.draftedTokens / s.steps;
    };
    // 0: every draft runs to its length (but the budget); 1: a draft stops after its first
    // token unless the draft gave it probability 1 (in f32).
    const [none, some, all] = [await perStep(0), await perStep(0.6), await perStep(1)];
    expect(none).toBeGreaterThan(4);
    expect(all).toBeLessThan(1.5);
    expect(some).toBeGreaterThan(all);
    expect(some).toBeLessThan(none);
  });

  it('refuses a draft with another vocabulary', async () => {
    const target = await pipeline('text-generation', STORIES, { maxContext: 256 });
    pipes.push(target);
    const other = await load(writeGeneratedModel({ seed: 3 })); // vocab 311
    await expect(target('Once', { max_new_tokens: 3, assistant_model: other })).rejects.toThrow(DraftModelError);
  });
});

describe.skipIf(!hasStories)('greedy assisted generation equals plain greedy: generated models', () => {
  const cases = [
    { name: 'qwen3 target, its own first layer as draft', target: { modelType: 'qwen3' as const, seed: 31 }, draftLayers: 1 },
    { name: 'llama target, an unrelated llama draft', target: { modelType: 'llama' as const, seed: 32 }, draft: { modelType: 'llama' as const, seed: 33, config: { num_hidden_layers: 1 } } },
    { name: 'mistral target (sliding window), qwen2 draft', target: { modelType: 'mistral' as const, seed: 34, config: { sliding_window: 6 } }, draft: { modelType: 'qwen2' as const, seed: 35 } },
  ];
  for (const c of cases) {
    it(c.name, async () => {
      // The stories tokenizer (512 tokens) gives the loop its EOS and detokenizer.
      const tokenizer = await ChatTokenizer.load(directorySource(STORIES));
      const config = { vocab_size: 512, num_hidden_layers: 4, ...(c.target.config ?? {}) };
      const dir = writeGeneratedModel({ ...c.target, scale: 0.4, config });
      const target = await load(dir);
      const draft = c.draft ? await load(writeGeneratedModel({ ...c.draft, scale: 0.4, config: { vocab_size: 512, ...c.draft.config } })) : await load(dir, c.draftLayers);
      const batch = target.createBatch({ maxSequences: 4, maxContext: 256, kvTokens: 512 });
      const gen = new Generator(batch, tokenizer, 512, { maxParallel: 2 });
      const assistant = Assistant.open({ model: target, maxContext: 256, tokenizer }, { model: draft });
      const prompts = [[1, 40, 41], [1, 300, 7, 99, 12, 5], [1, 2]];
      for (const prompt of prompts) {
        for (const k of [1, 3, 8]) {
          const flags = resolveGenerationConfig({ max_new_tokens: 30, num_assistant_tokens: k, num_assistant_tokens_schedule: 'constant' });
          const plain = await gen.generate({ promptIds: prompt, config: flags }).result;
          const spec = await gen.generate({ promptIds: prompt, config: flags, assistant }).result;
          expect(spec.tokenIds, `prompt ${prompt}, K=${k}`).toEqual(plain.tokenIds);
          expect(spec.stats.speculative!.draftedTokens).toBeGreaterThan(0);
        }
      }
      // Two assisted generations at once share the draft: each rolls its cache back to its own sequence.
      const shared = resolveGenerationConfig({ max_new_tokens: 30, num_assistant_tokens: 3 });
      const alone = await Promise.all(prompts.slice(0, 2).map((p) => gen.generate({ promptIds: p, config: shared }).result));
      const together = await Promise.all(prompts.slice(0, 2).map((p) => gen.generate({ promptIds: p, config: shared, assistant }).result));
      expect(together.map((r) => r.tokenIds)).toEqual(alone.map((r) => r.tokenIds));
      assistant.dispose();
      gen.dispose();
      batch.dispose();
    });
  }
});

describe('sampled assisted generation follows the target distribution (vocabulary 12)', () => {
  it('first two tokens: chi-square against the exact target probabilities', async () => {
    const V = 12;
    const small = { vocab_size: V, hidden_size: 32, intermediate_size: 48, num_attention_heads: 2, num_key_value_heads: 1 };
    const target = await load(writeGeneratedModel({ seed: 41, scale: 1.2, config: small }));
    const draft = await load(writeGeneratedModel({ seed: 42, scale: 1.2, config: { ...small, num_hidden_layers: 1 } }));
    const flags = resolveGenerationConfig({ do_sample: true, temperature: 0.8, top_k: 8, top_p: 0.95, num_assistant_tokens: 2, num_assistant_tokens_schedule: 'constant' });
    // Assistant.open and the loop read nothing else of a tokenizer when the draft has none and no text is wanted.
    const tokenizer = { eos: undefined, decode: () => '' } as unknown as ChatTokenizer;
    const session: Session = target.createSession();
    const batch = target.createBatch({ maxSequences: 4, maxContext: 256, kvTokens: 256 });
    const gen = new Generator(batch, tokenizer, V, { maxParallel: 1 });
    const assistant = Assistant.open({ model: target, maxContext: 256, tokenizer }, { model: draft });
    const prompt = [3, 7];

    // Exact joint probabilities of the first two tokens under the target with these warpers.
    const rowAfter = async (ids: number[]) => {
      session.truncate(0);
      session.forward(ids);
      return distributionFromLogits(await session.logits(), flags);
    };
    const p0 = await rowAfter(prompt);
    const exact = new Array(V * V).fill(0);
    for (let a = 0; a < V; a++) {
      const pa = probabilityOf(p0, a);
      if (pa === 0) continue;
      const p1 = await rowAfter([...prompt, a]);
      for (let b = 0; b < V; b++) exact[a * V + b] = pa * probabilityOf(p1, b);
    }

    const N = 800;
    const counts = new Array(V * V).fill(0);
    for (let s = 0; s < N; s++) {
      const r = await gen.generate({ promptIds: prompt, config: { ...flags, max_new_tokens: 2, seed: 1000 + s }, ignoreEos: true, assistant }).result;
      counts[r.tokenIds[0]! * V + r.tokenIds[1]!]++;
    }
    // Pool cells expected below 5 into one, then Pearson's chi-square at the 0.999 level.
    let stat = 0;
    let df = -1;
    let poolE = 0;
    let poolO = 0;
    exact.forEach((pr, i) => {
      if (pr === 0) return expect(counts[i], `impossible pair ${i}`).toBe(0);
      const e = pr * N;
      if (e < 5) {
        poolE += e;
        poolO += counts[i]!;
        return;
      }
      stat += (counts[i]! - e) ** 2 / e;
      df++;
    });
    if (poolE > 0) {
      stat += (poolO - poolE) ** 2 / poolE;
      df++;
    }
    const critical = df * (1 - 2 / (9 * df) + 3.09 * Math.sqrt(2 / (9 * df))) ** 3;
    expect(stat, `chi-square ${stat.toFixed(1)} with ${df} df`).toBeLessThan(critical);
    assistant.dispose();
    gen.dispose();
    batch.dispose();
    session.dispose();
  });
});
