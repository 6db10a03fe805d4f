// The OpenAI-compatible server on loopback, driven by the official `openai` client and by
// raw requests, over the real engine on the bundled stories260K model.
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bundledModelPath } from '../src/args.ts';
import { loadLocalModel, type LoadedModel } from '../src/backend.ts';
import { startChatServer, type ChatServer } from '../src/server.ts';
import { fetchReply, postJsonTo } from './http-client.ts';

const MODEL = 'stories260K';
const GREEDY_20 = ', there was a little girl named Lily. She loved to play outsid';

let loaded: LoadedModel;
let srv: ChatServer;
let client: OpenAI;
const done: { id: string; finishReason: string; completionTokens: number }[] = [];

const raw = (path: string, init: RequestInit = {}) => fetchReply(srv.url + path, init);
const post = (body: unknown) => postJsonTo(`${srv.url}/v1/chat/completions`, body);

const user = (content: string) => [{ role: 'user' as const, content }];

beforeAll(async () => {
  srv = await startChatServer({ modelId: MODEL, port: 0, onRequestDone: (e) => done.push(e) });
  // Listening before the model is there: /health says so.
  const early = await raw('/health');
  expect(early).toMatchObject({ status: 503, json: { status: 'loading' } });
  expect((await post({ model: MODEL, messages: user('hi') })).status).toBe(503);
  loaded = await loadLocalModel(bundledModelPath(), { dtype: 'auto', modelId: MODEL, maxContext: 512, log: () => {} });
  srv.setModel({ model: loaded.pipe, health: { dtype: loaded.pipe.model.info.dtype, max_context: loaded.maxContext } });
  client = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: 'unused', maxRetries: 0 });
});

afterAll(async () => {
  await srv?.close();
  loaded?.pipe.dispose();
});

describe('serve with the openai client', () => {
  it('binds loopback and reports health and models', async () => {
    expect(srv.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(await raw('/health')).toMatchObject({ status: 200, json: { status: 'ok', model: MODEL, dtype: 'f32', max_context: 512 } });
    const models = await client.models.list();
    expect(models.data.map((m) => m.id)).toEqual([MODEL]);
    expect((await client.models.retrieve(MODEL)).id).toBe(MODEL);
  });

  it('non-streaming: greedy reply, finish_reason and usage', async () => {
    const r = await client.chat.completions.create({ model: MODEL, messages: user('Once upon a time'), max_tokens: 20, temperature: 0 });
    expect(r.object).toBe('chat.completion');
    expect(r.id).toMatch(/^chatcmpl-/);
    expect(r.choices).toHaveLength(1);
    expect(r.choices[0]!.message).toMatchObject({ role: 'assistant', content: GREEDY_20 });
    expect(r.choices[0]!.finish_reason).toBe('length');
    expect(r.usage).toMatchObject({ prompt_tokens: 5, completion_tokens: 20, total_tokens: 25 });
  });

  it('streaming: same text, one id, finish_reason on the last choice chunk, usage chunk, [DONE]', async () => {
    const stream = await client.chat.completions.create({
      model: MODEL,
      messages: user('Once upon a time'),
      max_completion_tokens: 20,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    const chunks = [];
    for await (const c of stream) chunks.push(c);
    expect(new Set(chunks.map((c) => c.id)).size).toBe(1);
    expect(chunks[0]!.choices[0]!.delta.role).toBe('assistant');
    const withChoices = chunks.filter((c) => c.choices.length > 0);
    expect(withChoices.map((c) => c.choices[0]!.delta.content ?? '').join('')).toBe(GREEDY_20);
    expect(withChoices.slice(0, -1).every((c) => c.choices[0]!.finish_reason === null)).toBe(true);
    expect(withChoices.at(-1)!.choices[0]!.finish_reason).toBe('length');
    expect(chunks.at(-1)!.choices).toEqual([]);
    expect(chunks.at(-1)!.usage).toMatchObject({ prompt_tokens: 5, completion_tokens: 20, total_tokens: 25 });

    const sse = await post({ model: MODEL, messages: user('Once upon a time'), max_tokens: 3, stream: true });
    expect(sse.status).toBe(200);
    expect(sse.text.endsWith('data: [DONE]\n\n')).toBe(true);
    expect(sse.text).not.toContain('"usage"');
  });

  it('stop strings cut the reply and finish with "stop"', async () => {
    const r = await client.chat.completions.create({ model: MODEL, messages: user('Once upon a time'), max_tokens: 40, temperature: 0, stop: '.' });
    expect(r.choices[0]!.message.content).toBe(', there was a little girl named Lily');
    expect(r.choices[0]!.finish_reason).toBe('stop');
    const list = await client.chat.completions.create({ model: MODEL, messages: user('Once upon a time'), max_tokens: 40, temperature: 0, stop: ['zzz', ' girl'] });
    expect(list.choices[0]!.message.content).toBe(', there was a little');
  });

  it('seeded sampling repeats; top_k/min_p are accepted', async () => {
    const req = { model: MODEL, messages: user('The dog'), max_tokens: 15, temperature: 1.1, top_p: 0.95, top_k: 40, min_p: 0.02, seed: 7 } as const;
    const a = await client.chat.completions.create(req as OpenAI.ChatCompletionCreateParamsNonStreaming);
    const b = await client.chat.completions.create(req as OpenAI.ChatCompletionCreateParamsNonStreaming);
    expect(a.choices[0]!.message.content).toBe(b.choices[0]!.message.content);
  });

  it('concurrent streams are queued and never mix tokens', async () => {
    const prompts = ['Once upon a time', 'The cat', 'Lily and Ben', 'One day'];
    const sequential: string[] = [];
    for (const p of prompts) {
      const r = await client.chat.completions.create({ model: MODEL, messages: user(p), max_tokens: 25, temperature: 0 });
      sequential.push(r.choices[0]!.message.content!);
    }
    const concurrent = await Promise.all(
      prompts.map(async (p) => {
        const s = await client.chat.completions.create({ model: MODEL, messages: user(p), max_tokens: 25, temperature: 0, stream: true });
        let text = '';
        const ids = new Set<string>();
        for await (const c of s) {
          ids.add(c.id);
          text += c.choices[0]?.delta.content ?? '';
        }
        expect(ids.size).toBe(1);
        return text;
      }),
    );
    expect(concurrent).toEqual(sequential);
    expect(new Set(sequential).size).toBe(prompts.length);
  });

  it('a client disconnect cancels its generation and frees the slot', async () => {
    const ac = new AbortController();
    const stream = await client.chat.completions.create(
      { model: MODEL, messages: user('Once upon a time'), max_tokens: 400, temperature: 0, stream: true },
      { signal: ac.signal },
    );
    const before = done.length;
    let pieces = 0;
    for await (const c of stream) {
      if (c.choices[0]?.delta.content && ++pieces === 3) {
        ac.abort();
        break;
      }
    }
    expect(pieces).toBe(3);
    // The next request is served at once, and the cancelled one ended early as an abort.
    const r = await client.chat.completions.create({ model: MODEL, messages: user('Once upon a time'), max_tokens: 5, temperature: 0 });
    expect(r.choices[0]!.finish_reason).toBe('length');
    const cancelled = done.slice(before).find((e) => e.finishReason === 'abort');
    expect(cancelled).toBeDefined();
    expect(cancelled!.completionTokens).toBeLessThan(400);
    expect((srv.stats()?.running ?? 0) > 0).toBe(false);
  });
});

describe('serve: invalid requests get OpenAI error JSON', () => {
  const shape = (j: any) => expect(Object.keys(j.error).sort()).toEqual(['code', 'message', 'param', 'type']);

  it.each([
    ['a non-JSON body', '{"model": "stories260K", messages: oops', 400, null, /not valid JSON/],
    ['a JSON array', '[1, 2]', 400, null, /must be a JSON object/],
    ['missing messages', { model: MODEL }, 400, 'messages', /'messages' must be a non-empty array/],
    ['a bad role', { model: MODEL, messages: [{ role: 'wizard', content: 'hi' }] }, 400, 'messages[0].role', /role must be one of/],
    ['content that is not text', { model: MODEL, messages: [{ role: 'user', content: 5 }] }, 400, 'messages[0].content', /string or a list of text parts/],
    ['n=17', { model: MODEL, messages: user('hi'), n: 17 }, 400, 'n', /'n' must be an integer in \[1, 16\]/],
    ['temperature 3', { model: MODEL, messages: user('hi'), temperature: 3 }, 400, 'temperature', /'temperature' must be a number in \[0, 2\]/],
    ['max_tokens 0', { model: MODEL, messages: user('hi'), max_tokens: 0 }, 400, 'max_tokens', /max_tokens/],
    ['a bad stop', { model: MODEL, messages: user('hi'), stop: [1] }, 400, 'stop', /'stop' must be/],
    ['an unknown model', { model: 'gpt-4o', messages: user('hi') }, 404, 'model', /'gpt-4o' does not exist/],
  ])('%s', async (_what, body, status, param, message) => {
    const r = await post(body);
    expect(r.status).toBe(status);
    shape(r.json);
    expect(r.json.error.param).toBe(param);
    expect(r.json.error.message).toMatch(message);
  });

  it('a prompt beyond the context is 400 context_length_exceeded', async () => {
    const r = await post({ model: MODEL, messages: user('Once upon a time there was a cat. '.repeat(80)) });
    expect(r.status).toBe(400);
    expect(r.json.error).toMatchObject({ code: 'context_length_exceeded', param: 'messages' });
    expect(r.json.error.message).toMatch(/maximum context length is 512 tokens/);
  });

  it('a huge body is 413 without being read', async () => {
    const r = await post({ model: MODEL, messages: user('x'.repeat(5 * 2 ** 20)) });
    expect(r.status).toBe(413);
    expect(r.json.error.code).toBe('request_too_large');
  });

  it('unknown routes are 404, wrong methods 405', async () => {
    expect((await raw('/v1/nothing')).status).toBe(404);
    expect((await raw('/v1/chat/completions')).status).toBe(405);
  });

  it('the openai client surfaces these as APIError with the status', async () => {
    const e = await client.chat.completions.create({ model: MODEL, messages: user('hi'), n: 17 }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(OpenAI.BadRequestError);
    expect((e as InstanceType<typeof OpenAI.APIError>).status).toBe(400);
  });
});

describe('serve: API key and a full queue', () => {
  it('checks the Bearer key', async () => {
    const keyed = await startChatServer({ modelId: MODEL, port: 0, apiKey: 'sk-test' });
    keyed.setModel({ model: loaded.pipe });
    try {
      const bad = new OpenAI({ baseURL: `${keyed.url}/v1`, apiKey: 'sk-wrong', maxRetries: 0 });
      const e = await bad.models.list().catch((x: unknown) => x);
      expect(e).toBeInstanceOf(OpenAI.AuthenticationError);
      const none = await fetch(`${keyed.url}/v1/models`);
      expect(none.status).toBe(401);
      expect(((await none.json()) as any).error.code).toBe('invalid_api_key');
      expect((await fetch(`${keyed.url}/health`)).status).toBe(200);
      const good = new OpenAI({ baseURL: `${keyed.url}/v1`, apiKey: 'sk-test', maxRetries: 0 });
      const r = await good.chat.completions.create({ model: MODEL, messages: user('Once upon a time'), max_tokens: 20, temperature: 0 });
      expect(r.choices[0]!.message.content).toBe(GREEDY_20);
    } finally {
      await keyed.close();
    }
  });

  it('answers 503 when the queue is full', async () => {
    const small = await startChatServer({ modelId: MODEL, port: 0, maxQueue: 1 });
    small.setModel({ model: loaded.pipe });
    try {
      const body = (n: number) => JSON.stringify({ model: MODEL, messages: user('Once upon a time'), max_tokens: n, temperature: 0 });
      const req = (n: number) => fetch(`${small.url}/v1/chat/completions`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: body(n) });
      const running = req(300);
      while ((small.stats()?.running ?? 0) === 0) await new Promise((r) => setTimeout(r, 5));
      const waiting = req(5);
      while ((small.stats()?.waiting ?? 0) < 1) await new Promise((r) => setTimeout(r, 5));
      const rejected = await req(5);
      expect(rejected.status).toBe(503);
      expect(((await rejected.json()) as any).error).toMatchObject({ type: 'overloaded_error', code: 'server_overloaded' });
      expect((await running).status).toBe(200);
      expect((await waiting).status).toBe(200);
    } finally {
      await small.close();
    }
  });
});
