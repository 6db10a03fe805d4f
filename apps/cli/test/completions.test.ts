// The token-level API of `serve`: /v1/completions (token-id prompts, echo, logprobs,
// vLLM's return_token_ids / return_tokens_as_token_ids), chat logprobs, /tokenize,
// /detokenize, /apply-template and their 400s, on the bundled stories260K through the
// openai client and raw requests; then log-probabilities against Transformers on
// generated models of each family (given stories260K's tokenizer, vocab 512).
import { cpSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bundledModelPath } from '../src/args.ts';
import { loadLocalModel, type LoadedModel } from '../src/backend.ts';
import { startChatServer, type ChatServer } from '../src/server.ts';
import { postJsonTo } from './http-client.ts';
import { makeReferenceModel, pythonAvailable, referenceLogits, type ReferenceFamily } from '@webgpu-chat/engine/testing';

const MODEL = 'stories260K';
const GREEDY_20 = ', there was a little girl named Lily. She loved to play outsid';

interface Served {
  srv: ChatServer;
  loaded: LoadedModel;
}

async function serve(path: string, modelId: string): Promise<Served> {
  const srv = await startChatServer({ modelId, port: 0 });
  const loaded = await loadLocalModel(path, { dtype: 'f32', modelId, maxContext: 512, log: () => {} });
  srv.setModel({ model: loaded.pipe });
  return { srv, loaded };
}

async function stop(s: Served | undefined): Promise<void> {
  await s?.srv.close();
  s?.loaded.pipe.dispose();
}

const post = (s: Served, path: string, body: unknown) => postJsonTo(s.srv.url + path, body);

let stories: Served;
let client: OpenAI;

beforeAll(async () => {
  stories = await serve(bundledModelPath(), MODEL);
  client = new OpenAI({ baseURL: `${stories.srv.url}/v1`, apiKey: 'unused', maxRetries: 0 });
});
afterAll(() => stop(stories));

const ids = async (content: string, add_special = true): Promise<number[]> => (await post(stories, '/tokenize', { content, add_special })).json.tokens;

describe('completions on stories260K', () => {
  it('a string prompt generates what the chat route does, greedy', async () => {
    const r = await client.completions.create({ model: MODEL, prompt: 'Once upon a time', max_tokens: 20, temperature: 0 });
    expect(r.object).toBe('text_completion');
    expect(r.id).toMatch(/^cmpl-/);
    expect(r.choices[0]!.text).toBe(GREEDY_20);
    expect(r.choices[0]!.finish_reason).toBe('length');
    expect(r.usage).toMatchObject({ prompt_tokens: 5, completion_tokens: 20, total_tokens: 25 });
  });

  it('token-id prompts, several per request, with return_token_ids', async () => {
    const prompt = await ids('Once upon a time');
    expect(prompt[0]).toBe(1);
    const r = await post(stories, '/v1/completions', { model: MODEL, prompt: [prompt, 'Once upon a time'], max_tokens: 6, temperature: 0, return_token_ids: true });
    expect(r.status).toBe(200);
    const [a, b] = r.json.choices;
    expect([a.index, b.index]).toEqual([0, 1]);
    expect(a.text).toBe(b.text);
    expect(a.prompt_token_ids).toEqual(prompt);
    expect(a.token_ids).toHaveLength(6);
    expect((await post(stories, '/detokenize', { tokens: a.token_ids })).json.content).toBe(a.text);
    expect(r.json.usage).toMatchObject({ prompt_tokens: 10, completion_tokens: 12, total_tokens: 22 });
  });

  it('generated logprobs equal the echo scores of the same sequence (openai client)', async () => {
    const prompt = await ids('The dog ran to the');
    const gen = await client.completions.create({ model: MODEL, prompt, max_tokens: 10, temperature: 0, logprobs: 5, return_token_ids: true } as never) as unknown as OpenAI.Completion & { choices: { token_ids: number[] }[] };
    const lp = gen.choices[0]!.logprobs!;
    expect(lp.tokens).toHaveLength(10);
    expect(lp.tokens!.join('')).toBe(gen.choices[0]!.text);
    for (const [i, top] of lp.top_logprobs!.entries()) {
      // Greedy: the chosen token is the best, so it leads its alternatives.
      expect(Math.max(...Object.values(top))).toBe(lp.token_logprobs![i]);
      expect(Object.keys(top).length).toBe(5);
    }
    const all = [...prompt, ...gen.choices[0]!.token_ids];
    const echo = await client.completions.create({ model: MODEL, prompt: all, max_tokens: 0, echo: true, logprobs: 5 });
    const e = echo.choices[0]!.logprobs!;
    expect(e.tokens).toHaveLength(all.length);
    expect(e.token_logprobs![0]).toBeNull();
    expect(e.top_logprobs![0]).toBeNull();
    expect(echo.choices[0]!.text).toBe('The dog ran to the' + gen.choices[0]!.text);
    expect(e.text_offset!.slice(0, 3)).toEqual([0, 0, 3]);
    for (let i = 0; i < 10; i++) {
      expect(e.token_logprobs![prompt.length + i]).toBeCloseTo(lp.token_logprobs![i]!, 5);
      expect(Object.keys(e.top_logprobs![prompt.length + i]!)).toEqual(Object.keys(lp.top_logprobs![i]!));
    }
    expect(echo.usage?.completion_tokens).toBe(0);
  });

  it('return_tokens_as_token_ids, logprobs 0 and 20, a sampled token outside the top', async () => {
    const prompt = await ids('Lily');
    const r = await post(stories, '/v1/completions', { prompt, max_tokens: 0, echo: true, logprobs: 20, return_tokens_as_token_ids: true });
    const lp = r.json.choices[0].logprobs;
    expect(lp.tokens).toEqual(prompt.map((t) => `token_id:${t}`));
    expect(Object.keys(lp.top_logprobs[1]).length).toBeGreaterThanOrEqual(20);
    for (const k of Object.keys(lp.top_logprobs[1])) expect(k).toMatch(/^token_id:\d+$/);
    const probs = Object.values(lp.top_logprobs[1] as Record<string, number>).map(Math.exp);
    expect(probs.reduce((a, b) => a + b, 0)).toBeLessThanOrEqual(1 + 1e-5);
    // Sampling at high temperature picks unlikely tokens: logprobs 0 still reports the chosen one.
    const s = await post(stories, '/v1/completions', { prompt, max_tokens: 12, temperature: 2, top_k: 0, seed: 3, logprobs: 0, return_tokens_as_token_ids: true });
    const sl = s.json.choices[0].logprobs;
    for (const [i, top] of (sl.top_logprobs as Record<string, number>[]).entries()) expect(top[sl.tokens[i]]).toBe(sl.token_logprobs[i]);
    const again = await post(stories, '/v1/completions', { prompt, max_tokens: 12, temperature: 2, top_k: 0, seed: 3 });
    expect(again.json.choices[0].text).toBe(s.json.choices[0].text);
  });

  it('streams the same text and logprobs, ending in finish_reason, usage and [DONE]', async () => {
    const body = { model: MODEL, prompt: 'Once upon a time', max_tokens: 12, temperature: 0, logprobs: 2 };
    const whole = (await post(stories, '/v1/completions', body)).json;
    const stream = await client.completions.create({ ...body, stream: true, stream_options: { include_usage: true } });
    let text = '';
    const lps: number[] = [];
    const chunks = [];
    for await (const c of stream) {
      chunks.push(c);
      for (const ch of c.choices) {
        text += ch.text;
        lps.push(...((ch.logprobs?.token_logprobs ?? []) as number[]));
      }
    }
    expect(text).toBe(whole.choices[0].text);
    // The prompt's KV cache is reused here (only its last position is recomputed): f32 rounding differs.
    expect(lps).toHaveLength(12);
    lps.forEach((lp, i) => expect(lp).toBeCloseTo(whole.choices[0].logprobs.token_logprobs[i], 4));
    expect(new Set(chunks.map((c) => c.id)).size).toBe(1);
    expect(chunks.at(-2)!.choices[0]!.finish_reason).toBe('length');
    expect(chunks.at(-1)!.usage).toMatchObject({ prompt_tokens: 5, completion_tokens: 12, total_tokens: 17 });
  });

  it('stop strings end with finish_reason stop; the text continues the prompt', async () => {
    const r = await client.completions.create({ model: MODEL, prompt: 'Once upon a time', max_tokens: 40, temperature: 0, stop: ['Lily'], ignore_eos: true } as never) as unknown as OpenAI.Completion;
    expect(r.choices[0]!.text).toBe(', there was a little girl named ');
    expect(r.choices[0]!.finish_reason).toBe('stop');
    const park = await client.completions.create({ model: MODEL, prompt: 'The dog ran to the', max_tokens: 3, temperature: 0 });
    expect(park.choices[0]!.text).toBe(' park');
  });

  it('chat completions with logprobs: true and top_logprobs (OpenAI chat shape)', async () => {
    const r = await client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'Once upon a time' }], max_tokens: 8, temperature: 0, logprobs: true, top_logprobs: 3 });
    const c = r.choices[0]!;
    expect(c.message.content).toBe(GREEDY_20.slice(0, c.message.content!.length));
    expect(c.logprobs!.content).toHaveLength(8);
    expect(c.logprobs!.content!.map((t) => t.token).join('')).toBe(c.message.content);
    for (const t of c.logprobs!.content!) {
      expect(t.top_logprobs).toHaveLength(3);
      expect(t.top_logprobs[0]!.logprob).toBe(t.logprob);
      expect(t.bytes).toEqual(Array.from(Buffer.from(t.token)));
    }
    const s = await client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'Once upon a time' }], max_tokens: 8, temperature: 0, logprobs: true, stream: true });
    const streamed = [];
    for await (const ch of s) streamed.push(...(ch.choices[0]?.logprobs?.content ?? []));
    expect(streamed.map((t) => t.token)).toEqual(c.logprobs!.content!.map((t) => t.token));
    streamed.forEach((t, i) => expect(t.logprob).toBeCloseTo(c.logprobs!.content![i]!.logprob, 4));
  });

  it('/tokenize, /detokenize and /apply-template', async () => {
    const t = await post(stories, '/tokenize', { content: 'Hello world' });
    expect(t.status).toBe(200);
    expect(t.json.tokens[0]).not.toBe(1);
    const withBos = await ids('Hello world');
    expect(withBos).toEqual([1, ...t.json.tokens]);
    expect((await post(stories, '/detokenize', { tokens: t.json.tokens })).json).toEqual({ content: 'Hello world' });
    const a = await post(stories, '/apply-template', { messages: [{ role: 'user', content: 'Hi' }, { role: 'assistant', content: ' there' }], add_generation_prompt: true });
    // stories260K has no chat template: the plain fallback joins the contents.
    expect(a.json).toEqual({ prompt: 'Hi there' });
  });

  it('malformed requests get 400s in OpenAI error JSON', async () => {
    const bad: [string, unknown, string | null][] = [
      ['/v1/completions', { prompt: 'x', logprobs: 21 }, 'logprobs'],
      ['/v1/completions', { prompt: [1, 512] }, 'prompt'],
      ['/v1/completions', { prompt: [[1, 2], [3, -1]] }, 'prompt[1]'],
      ['/v1/completions', { prompt: 'x', max_tokens: 600 }, 'prompt'],
      ['/v1/completions', { prompt: 'x', max_tokens: 0 }, 'max_tokens'],
      ['/v1/completions', { prompt: [] }, 'prompt'],
      ['/v1/completions', { prompt: 5 }, 'prompt'],
      ['/v1/completions', { prompt: 'x', echo: 'yes' }, 'echo'],
      ['/v1/completions', { prompt: 'x', n: 17 }, 'n'],
      ['/v1/completions', { prompt: 'x', ignore_eos: 1 }, 'ignore_eos'],
      ['/v1/completions', [1, 2], null],
      ['/v1/completions', 'not json', null],
      ['/v1/chat/completions', { messages: [{ role: 'user', content: 'x' }], logprobs: true, top_logprobs: 21 }, 'top_logprobs'],
      ['/v1/chat/completions', { messages: [{ role: 'user', content: 'x' }], top_logprobs: 2 }, 'top_logprobs'],
      ['/tokenize', { content: 5 }, 'content'],
      ['/detokenize', { tokens: [1, 99999] }, 'tokens'],
      ['/apply-template', { messages: 'hi' }, 'messages'],
    ];
    for (const [path, body, param] of bad) {
      const r = await post(stories, path, body);
      expect(r.status, `${path} ${JSON.stringify(body)}`).toBe(400);
      expect(r.json.error).toMatchObject({ type: 'invalid_request_error', param });
    }
    const ctx = await post(stories, '/v1/completions', { prompt: 'x', max_tokens: 600 });
    expect(ctx.json.error.code).toBe('context_length_exceeded');
    expect(ctx.json.error.message).toMatch(/maximum context length is 512 tokens/);
    // The server still serves after all of them.
    expect((await client.completions.create({ model: MODEL, prompt: [1], max_tokens: 1 })).choices).toHaveLength(1);
  });
});

const python = pythonAvailable();
const FAMILIES: ReferenceFamily[] = ['llama', 'qwen2', 'qwen3', 'mistral', 'phi3', 'gemma2', 'gemma3_text', 'smollm3', 'granite', 'olmo2'];

describe.skipIf(!python.ok)('completions logprobs agree with Transformers', () => {
  for (const [i, family] of FAMILIES.entries()) {
    it(`${family}: echo + max_tokens 0 + logprobs 20, then greedy tokens with logprobs`, async () => {
      const ref = await makeReferenceModel({ family, seed: 300 + i, dtype: 'float32', config: { vocab_size: 512 } });
      // The reference folder is shared: give a copy stories260K's tokenizer.
      const dir = mkdtempSync(join(tmpdir(), `wgc-completions-${family}-`));
      let s: Served | undefined;
      try {
        cpSync(ref, dir, { recursive: true });
        for (const f of ['tokenizer.json', 'tokenizer_config.json']) cpSync(join(bundledModelPath(), f), join(dir, f));
        s = await serve(dir, family);
        let seed = 17 + i;
        const prompt = Array.from({ length: 90 }, () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31), 3 + (seed % 509)));
        const echo = (await post(s, '/v1/completions', { prompt, max_tokens: 0, echo: true, logprobs: 20, return_tokens_as_token_ids: true })).json.choices[0].logprobs;
        const gen = (await post(s, '/v1/completions', { prompt, max_tokens: 8, temperature: 0, ignore_eos: true, logprobs: 20, return_token_ids: true, return_tokens_as_token_ids: true })).json.choices[0];
        const all = [...prompt, ...gen.token_ids];
        const want = await referenceLogits(dir, all, { topk: 20 });
        // Our positions: the echo's (position t predicts all[t + 1]) then the generated ones.
        const ours: { logprob: number; top: Record<string, number> }[] = [];
        for (let t = 1; t < prompt.length; t++) ours.push({ logprob: echo.token_logprobs[t], top: echo.top_logprobs[t] });
        for (let g = 0; g < 8; g++) ours.push({ logprob: gen.logprobs.token_logprobs[g], top: gen.logprobs.top_logprobs[g] });
        let maxErr = 0;
        for (const [t, o] of ours.entries()) {
          const refTop = want.topIds[t]!;
          const refLp = want.topLogprobs[t]!;
          maxErr = Math.max(maxErr, Math.abs(o.logprob - want.logprobs[t * want.vocab + all[t + 1]!]!));
          // Same top-1 (where the reference's top two are not a near tie).
          if (refLp[0]! - refLp[1]! > 1e-4) expect(Math.max(...Object.values(o.top))).toBe(o.top[`token_id:${refTop[0]}`]);
          for (const [j, id] of refTop.entries()) {
            const got = o.top[`token_id:${id}`];
            if (got !== undefined) maxErr = Math.max(maxErr, Math.abs(got - refLp[j]!));
            else expect(refLp[j]! - refLp[19]!).toBeLessThan(1e-4); // only a tie at the cut may differ
          }
        }
        // Greedy generation follows the reference's argmax.
        expect(gen.token_ids).toEqual(want.argmax.slice(prompt.length - 1, prompt.length + 7));
        console.log(`${family}: max |Δlogprob| over the top 20 at ${ours.length} positions: ${maxErr.toExponential(2)}`);
        expect(maxErr).toBeLessThan(1e-4);
      } finally {
        await stop(s);
        rmSync(dir, { recursive: true, force: true });
      }
    });
  }
});
