// End to end on the bundled stories260K model (a real Llama-architecture checkpoint with
// a SentencePiece tokenizer and no chat template) through the engine on WebGPU.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { pipeline, type Message, type TextGenerationPipeline } from '../src/index.ts';
import { repoRoot } from './fixtures.ts';

const MODEL = join(repoRoot, 'models', 'stories260K');

describe.skipIf(!existsSync(join(MODEL, 'model.safetensors')))('pipeline on stories260K', () => {
  const pipes: TextGenerationPipeline[] = [];
  const open = async () => {
    const p = await pipeline('text-generation', MODEL, { templateFallback: 'plain', maxContext: 256 });
    pipes.push(p);
    return p;
  };
  afterAll(() => pipes.forEach((p) => p.dispose()));

  it('multi-turn: reuses the KV cache and replies exactly as a fresh run of the whole prompt', async () => {
    const pipe = await open();
    const chat: Message[] = [{ role: 'user', content: 'Once upon a time' }];
    const [{ generated_text: turn1 }] = await pipe(chat, { max_new_tokens: 24 });
    const s1 = pipe.lastStats!;
    expect(turn1[1]!.role).toBe('assistant');
    expect(turn1[1]!.content.length).toBeGreaterThan(20);
    expect(s1).toMatchObject({ promptTokens: 5, reusedTokens: 0, newTokens: 24, finishReason: 'length' });

    const chat2 = [...turn1, { role: 'user' as const, content: ' The next day' }];
    const [{ generated_text: turn2 }] = await pipe(chat2, { max_new_tokens: 24 });
    const s2 = pipe.lastStats!;
    // Turn 1's prompt and reply (all but the last sampled token) were already in the cache.
    expect(s2.reusedTokens).toBe(s1.promptTokens + s1.newTokens - 1);

    const fresh = await open();
    const [{ generated_text: again }] = await fresh(chat2, { max_new_tokens: 24 });
    expect(fresh.lastStats!.reusedTokens).toBe(0);
    expect(again.at(-1)).toEqual(turn2.at(-1));
  });

  it('string prompts, stop strings and seeded sampling', async () => {
    const pipe = await open();
    const [{ generated_text: greedy }] = await pipe('Once upon a time', { max_new_tokens: 30 });
    const cut = greedy.indexOf('.');
    expect(cut).toBeGreaterThan(0);
    const [{ generated_text: stopped }] = await pipe('Once upon a time', { max_new_tokens: 30, stop: ['.'] });
    expect(stopped).toBe(greedy.slice(0, cut));
    expect(pipe.lastStats!.finishReason).toBe('stop');
    const opts = { max_new_tokens: 20, do_sample: true, top_k: 40, temperature: 1.2, seed: 11 };
    const [{ generated_text: a }] = await pipe('Once upon a time', opts);
    const [{ generated_text: b }] = await pipe('Once upon a time', opts);
    expect(a).toBe(b);
    let streamed = '';
    for await (const e of pipe.stream('Once upon a time', opts)) streamed += e.delta;
    expect(streamed).toBe(a);
  });
});
