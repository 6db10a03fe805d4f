// The serving core on the bundled stories260K: concurrent requests decoded together in one
// batch with the same tokens as alone, n choices, the prefix cache reported as OpenAI does,
// a storm of cancels that leaks no blocks, and /metrics.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bundledModelPath } from '../src/args.ts';
import { loadLocalModel, type LoadedModel } from '../src/backend.ts';
import { startChatServer, type ChatServer } from '../src/server.ts';
import { postJsonTo } from './http-client.ts';

const MODEL = 'stories260K';
const PARALLEL = 4;
const user = (content: string) => [{ role: 'user' as const, content }];

let loaded: LoadedModel;
let srv: ChatServer;

beforeAll(async () => {
  loaded = await loadLocalModel(bundledModelPath(), { dtype: 'auto', modelId: MODEL, maxContext: 512, parallel: PARALLEL, log: () => {} });
  srv = await startChatServer({ modelId: MODEL, port: 0, maxQueue: 64 });
  srv.setModel({ model: loaded.pipe });
});

afterAll(async () => {
  await srv?.close();
  loaded?.pipe.dispose();
});

const post = (path: string, body: unknown, signal?: AbortSignal) => postJsonTo(srv.url + path, body, signal);

/** The value of a Prometheus sample line `name{labels} value`. */
async function metric(name: string): Promise<number> {
  const text = await (await fetch(`${srv.url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(name + ' ') || l.startsWith(name + '{'));
  if (!line) throw new Error(`no ${name} in /metrics:\n${text}`);
  return Number(line.split(' ').at(-1));
}

const PROMPTS = [[1, 403, 407, 261], [1, 320, 279, 356], [1, 412, 270, 266, 319], [1, 365, 104], [1, 306, 4], [1, 449, 13, 8]];

describe('continuous batching in serve', () => {
  it('concurrent greedy requests run in shared steps and give the tokens each gives alone', async () => {
    const body = (prompt: number[]) => ({ model: MODEL, prompt, max_tokens: 40, temperature: 0, ignore_eos: true, return_token_ids: true });
    const alone: number[][] = [];
    for (const p of PROMPTS) alone.push((await post('/v1/completions', body(p))).json.choices[0].token_ids);
    const steps0 = await metric('webgpu_chat:engine_steps_total');
    const together = await Promise.all(PROMPTS.map((p) => post('/v1/completions', body(p))));
    const steps = (await metric('webgpu_chat:engine_steps_total')) - steps0;
    expect(together.map((r) => r.json.choices[0].token_ids)).toEqual(alone);
    // 6 requests of 40 tokens, at most 4 at a time: well under the 240 steps of one-by-one decoding.
    expect(steps).toBeLessThan(120);
  });

  it('n choices: greedy ones agree, seeded sampled ones differ and repeat', async () => {
    const greedy = await post('/v1/chat/completions', { model: MODEL, messages: user('Once upon a time'), max_tokens: 12, temperature: 0, n: 3 });
    expect(greedy.status).toBe(200);
    expect(greedy.json.choices.map((c: any) => c.index)).toEqual([0, 1, 2]);
    expect(new Set(greedy.json.choices.map((c: any) => c.message.content)).size).toBe(1);
    expect(greedy.json.usage.completion_tokens).toBe(36);
    const sampled = { model: MODEL, messages: user('The dog'), max_tokens: 16, temperature: 1.2, seed: 5, n: 3 };
    const a = await post('/v1/chat/completions', sampled);
    const b = await post('/v1/chat/completions', sampled);
    const texts = a.json.choices.map((c: any) => c.message.content);
    expect(new Set(texts).size).toBeGreaterThan(1);
    expect(b.json.choices.map((c: any) => c.message.content)).toEqual(texts);
    const completions = await post('/v1/completions', { model: MODEL, prompt: ['Once upon', 'The cat'], max_tokens: 4, temperature: 0, n: 2 });
    expect(completions.json.choices.map((c: any) => c.index)).toEqual([0, 1, 2, 3]);
    expect(completions.json.choices[0].text).toBe(completions.json.choices[1].text);
  });

  it('a conversation resent with one more turn reuses its cached blocks (usage.prompt_tokens_details.cached_tokens)', async () => {
    const first = user('Lily went to the park with her mom. She saw a big dog and a small cat.');
    const r1 = await post('/v1/chat/completions', { model: MODEL, messages: first, max_tokens: 20, temperature: 0 });
    const hits0 = await metric('webgpu_chat:prefix_cache_hits_total');
    const second = [...first, { role: 'assistant', content: r1.json.choices[0].message.content }, { role: 'user', content: 'What did Lily do next?' }];
    const r2 = await post('/v1/chat/completions', { model: MODEL, messages: second, max_tokens: 5, temperature: 0 });
    const cached = r2.json.usage.prompt_tokens_details.cached_tokens;
    expect(cached).toBeGreaterThanOrEqual(r1.json.usage.prompt_tokens);
    expect(cached).toBeLessThan(r2.json.usage.prompt_tokens);
    expect((await metric('webgpu_chat:prefix_cache_hits_total')) - hits0).toBe(cached);
  });

  it('a storm of cancels mid-prefill and mid-decode leaks no blocks and changes no other stream', async () => {
    const steady = { model: MODEL, prompt: PROMPTS[0], max_tokens: 60, temperature: 0, ignore_eos: true, return_token_ids: true };
    const want = (await post('/v1/completions', steady)).json.choices[0].token_ids;
    const survivor = post('/v1/completions', steady);
    const storm = Array.from({ length: 24 }, async (_, i) => {
      const ac = new AbortController();
      setTimeout(() => ac.abort(), 5 + ((i * 37) % 120));
      await post('/v1/completions', { model: MODEL, prompt: PROMPTS[i % PROMPTS.length], max_tokens: 200, temperature: 0, ignore_eos: true, stream: i % 2 === 0 }, ac.signal).catch(() => undefined);
    });
    await Promise.all(storm);
    expect((await survivor).json.choices[0].token_ids).toEqual(want);
    for (let i = 0; i < 200 && (srv.stats()!.running > 0 || srv.stats()!.waiting > 0); i++) await new Promise((r) => setTimeout(r, 20));
    const s = srv.stats()!;
    expect(s.running + s.waiting).toBe(0);
    // Every block still in use is held by a finished sequence kept for prefix reuse.
    expect(s.kvBlocksUsed).toBe(s.kvBlocksCached);
  });

  it('/metrics is Prometheus text with the serving counters and latency histograms', async () => {
    const res = await fetch(`${srv.url}/metrics`);
    expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    const text = await res.text();
    for (const name of ['num_requests_running', 'num_requests_waiting', 'prompt_tokens_total', 'generation_tokens_total', 'prefix_cache_hit_rate', 'kv_cache_usage_perc']) {
      expect(text).toMatch(new RegExp(`^# TYPE webgpu_chat:${name} (gauge|counter)$`, 'm'));
    }
    expect(text).toMatch(/^webgpu_chat:kv_cache_blocks\{state="free"\} \d+$/m);
    expect(text).toMatch(/^webgpu_chat:time_to_first_token_seconds_bucket\{le="\+Inf"\} [1-9]\d*$/m);
    expect(text).toMatch(/^webgpu_chat:inter_token_latency_seconds_count [1-9]\d*$/m);
    expect(text).toMatch(/^webgpu_chat:request_success_total\{finished_reason="length"\} [1-9]\d*$/m);
    expect(await metric('webgpu_chat:generation_tokens_total')).toBeGreaterThan(200);
  });
});

describe('every request field is honoured or refused by name', () => {
  it.each([
    ['tools, to a model without a chat template', { tools: [{ type: 'function', function: { name: 'f', parameters: {} } }] }, 'tools', 'unsupported_parameter'],
    ['tool_choice "required" without tools', { tool_choice: 'required' }, 'tool_choice', null],
    ['reasoning_effort', { reasoning_effort: 'low' }, 'reasoning_effort', 'unsupported_parameter'],
    ['audio modalities', { modalities: ['text', 'audio'] }, 'modalities', 'unsupported_parameter'],
    ['prediction', { prediction: { type: 'content', content: 'x' } }, 'prediction', 'unsupported_parameter'],
    ['an unknown field', { temprature: 0.5 }, 'temprature', 'unknown_parameter'],
    ['a logit_bias out of range', { logit_bias: { '5': 300 } }, 'logit_bias', null],
    ['a logit_bias outside the vocabulary', { logit_bias: { '999999': 1 } }, 'logit_bias', 'invalid_token_id'],
  ])('chat: %s is a 400 naming it', async (_what, extra, param, code) => {
    const r = await post('/v1/chat/completions', { model: MODEL, messages: user('hi'), max_tokens: 2, ...extra });
    expect(r.status).toBe(400);
    expect(r.json.error).toMatchObject({ param, ...(code ? { code } : {}) });
  });

  it('an assistant message with tool_calls is refused by a model without a chat template, not rendered without them', async () => {
    const messages = [...user('hi'), { role: 'assistant', content: null, tool_calls: [{ id: 'c1', type: 'function', function: { name: 'f', arguments: '{}' } }] }];
    const r = await post('/v1/chat/completions', { model: MODEL, messages, max_tokens: 2 });
    expect(r.status).toBe(400);
    expect(r.json.error.message).toMatch(/no chat template to write tool calls with/);
  });

  it('completions: suffix and unknown fields are refused; neutral fields (user, metadata) and text response_format are accepted', async () => {
    expect((await post('/v1/completions', { model: MODEL, prompt: 'Once', suffix: 'end' })).json.error.param).toBe('suffix');
    expect((await post('/v1/completions', { model: MODEL, prompt: 'Once', frobnicate: 1 })).json.error.code).toBe('unknown_parameter');
    const ok = await post('/v1/chat/completions', { model: MODEL, messages: user('hi'), max_tokens: 2, user: 'u1', metadata: { a: 'b' }, store: false, response_format: { type: 'text' }, parallel_tool_calls: false, tools: null });
    expect(ok.status).toBe(200);
  });

  it('logit_bias and presence/frequency penalties change the tokens as OpenAI defines them', async () => {
    const body = { model: MODEL, prompt: [1, 403, 407, 261], max_tokens: 12, temperature: 0, ignore_eos: true, return_token_ids: true };
    const plain: number[] = (await post('/v1/completions', body)).json.choices[0].token_ids;
    const banned = await post('/v1/completions', { ...body, logit_bias: { [plain[0]!]: -100 } });
    expect(banned.json.choices[0].token_ids[0]).not.toBe(plain[0]);
    const forced = await post('/v1/completions', { ...body, logit_bias: { '300': 100 } });
    expect(forced.json.choices[0].token_ids).toEqual(new Array(12).fill(300));
    // Penalties on the reply's own tokens: a greedy story repeats fewer of them.
    const long = { ...body, max_tokens: 60 };
    const repeats = (ids: number[]) => ids.length - new Set(ids).size;
    const free: number[] = (await post('/v1/completions', long)).json.choices[0].token_ids;
    const penalised: number[] = (await post('/v1/completions', { ...long, frequency_penalty: 2, presence_penalty: 2 })).json.choices[0].token_ids;
    expect(penalised.slice(0, 1)).toEqual(free.slice(0, 1));
    expect(repeats(penalised)).toBeLessThan(repeats(free));
  });
});
