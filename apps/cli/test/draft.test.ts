// Quantization and speculative decoding through the CLI's backends and `serve`, in-process
// on the bundled stories260K: !status reports how the weights are held; a greedy reply with a
// draft (self-q4, or a folder) equals the reply without one; serve --draft likewise.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bundledModelPath } from '../src/args.ts';
import { disposeLoaded, healthFields, LocalBackend, loadLocalModel, RemoteBackend, type LoadedModel } from '../src/backend.ts';
import { startChatServer, type ChatServer, type RequestDone } from '../src/server.ts';
import { ChatSession, formatTurn } from '../src/session.ts';

const MODEL = 'stories260K';
const GREEDY_20 = ', there was a little girl named Lily. She loved to play outsid';
const PROMPT = 'Once upon a time';
const quiet = { log: () => {} };

async function reply(session: ChatSession, prompt = PROMPT): Promise<string> {
  let text = '';
  await session.reply(prompt, (p) => (text += p.kind === 'content' ? p.text : ''), new AbortController().signal);
  return text;
}

describe('chat backend: --quantize and --draft', () => {
  const opened: LocalBackend[] = [];
  afterAll(async () => {
    for (const b of opened) await b.dispose();
  });
  const open = async (opts: { quantize?: 'q8' | 'q4'; draft?: string } = {}) => {
    const b = new LocalBackend(await loadLocalModel(bundledModelPath(), { dtype: 'auto', modelId: MODEL, maxContext: 256, ...opts, ...quiet }));
    opened.push(b);
    return b;
  };

  it('!status shows the quantization, resident bytes by format and bytes read per token', async () => {
    const b = await open({ quantize: 'q8' });
    const s = new ChatSession(b, { flags: { max_new_tokens: 20 } });
    const info = b.loaded.pipe.model.info;
    const status = ((await s.command('!status')) as { output: string }).output;
    expect(status).toMatch(/^quantize: q8 \(8-bit, group 32\)$/m);
    expect(status).toMatch(/^weights: +f32 [\d.]+ KiB, q8 [\d.]+ KiB, other [\d.]+ KiB; [\d.]+ KiB read per token$/m);
    expect(status).toMatch(/^draft: +none$/m);
    expect(Object.keys(info.weightBytesByFormat ?? {})).toEqual(['f32', 'q8', 'other']);
    expect(healthFields(b.loaded)).toMatchObject({ quantization: 'q8 (8-bit, group 32)', weight_bytes_by_format: info.weightBytesByFormat, bytes_per_token: info.bytesPerToken });
    // q8 keeps the f32 model's 20-token greedy reply on this model.
    expect(await reply(s)).toBe(GREEDY_20);
  });

  it('a greedy reply with --draft self-q4 equals the reply without a draft, and reports acceptance', async () => {
    const b = await open({ draft: 'self-q4' });
    const s = new ChatSession(b, { flags: { max_new_tokens: 20, do_sample: false } });
    expect(await reply(s)).toBe(GREEDY_20);
    const t = s.lastTurn!;
    expect(t.newTokens).toBe(20);
    expect(t.speculative!.steps).toBeGreaterThan(0);
    expect(t.speculative!.acceptanceRate).toBeGreaterThan(0);
    expect(formatTurn(t)).toMatch(/TTFT \d+ ms, draft acceptance \d+% \([\d.]+ accepted per step of [\d.]+ drafted, \d+ steps\)\) \[max_new_tokens reached\]$/);
    expect(((await s.command('!status')) as { output: string }).output).toMatch(/^draft: +self-q4: this model's weights in q4 \(4-bit, group 32\)$/m);
  });

  it('!set draft=FOLDER and draft=none switch speculative decoding on and off; flags set the draft length', async () => {
    const b = await open();
    const s = new ChatSession(b, { flags: { max_new_tokens: 20, do_sample: false } });
    const set = ((await s.command(`!set draft=${bundledModelPath()} num_assistant_tokens=3 num_assistant_tokens_schedule=constant`)) as { output: string }).output;
    expect(set).toContain('loaded: replies are decoded speculatively');
    expect(set).toContain('num_assistant_tokens=3 num_assistant_tokens_schedule=constant');
    expect(await reply(s)).toBe(GREEDY_20);
    const spec = s.lastTurn!.speculative!;
    // The same weights as the target: every drafted token is accepted, 3 per step.
    expect(spec.acceptanceRate).toBe(1);
    expect(spec.finalNumAssistantTokens).toBe(3);
    expect(spec.meanAcceptedTokens).toBe(3);

    await s.command('!clear');
    expect(((await s.command('!set draft=none')) as { output: string }).output).toMatch(/dropped: plain decoding/);
    expect(await reply(s)).toBe(GREEDY_20);
    expect(s.lastTurn!.speculative).toBeUndefined();
    await expect(s.command('!set draft=/no/such/folder')).rejects.toThrow();
    await expect(s.command('!set num_assistant_tokens_schedule=sometimes')).rejects.toThrow(/expected constant, heuristic, heuristic_transient/);
  });
});

describe('serve --quantize q8 --draft self-q4', () => {
  let loaded: LoadedModel;
  let srv: ChatServer;
  const done: RequestDone[] = [];

  beforeAll(async () => {
    loaded = await loadLocalModel(bundledModelPath(), { dtype: 'auto', modelId: MODEL, maxContext: 256, quantize: 'q8', draft: 'self-q4', ...quiet });
    srv = await startChatServer({ modelId: MODEL, port: 0, onRequestDone: (e) => done.push(e) });
    srv.setModel({ model: loaded.pipe, health: healthFields(loaded), assistant: loaded.draft!.pipe });
  });
  afterAll(async () => {
    await srv?.close();
    if (loaded) disposeLoaded(loaded);
  });

  const chat = async (body: Record<string, unknown>) => {
    const res = await fetch(`${srv.url}/v1/chat/completions`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
    return { status: res.status, json: (await res.json()) as { choices: { message: { content: string } }[]; error?: { message: string } } };
  };

  it('gives the same greedy text as without a draft, reports the draft in /health and acceptance to the log hook', async () => {
    const health = await (await fetch(`${srv.url}/health`)).json();
    const info = loaded.pipe.model.info;
    expect(health).toMatchObject({
      status: 'ok',
      draft: 'self-q4',
      dtype: 'f32',
      max_context: 256,
      quantization: 'q8 (8-bit, group 32)',
      weight_bytes_by_format: info.weightBytesByFormat,
      bytes_per_token: info.bytesPerToken,
    });
    // chat --url shows the same in !status.
    const remote = new ChatSession(await RemoteBackend.connect(srv.url, undefined));
    const status = ((await remote.command('!status')) as { output: string }).output;
    expect(status).toMatch(/^quantize: q8 \(8-bit, group 32\)$/m);
    expect(status).toMatch(/^weights: +f32 [\d.]+ KiB, q8 [\d.]+ KiB, other [\d.]+ KiB; [\d.]+ KiB read per token$/m);
    expect(status).toMatch(/^draft: +self-q4 \(chosen by serve --draft\)$/m);
    await expect(remote.command('!set draft=none')).rejects.toThrow(/serve MODEL --draft/);

    const r = await chat({ model: MODEL, messages: [{ role: 'user', content: PROMPT }], max_tokens: 20, temperature: 0, num_assistant_tokens: 4 });
    expect(r.status).toBe(200);
    expect(r.json.choices[0]!.message.content).toBe(GREEDY_20);
    // The OpenAI shape is unchanged: acceptance goes to the server's log line.
    expect(Object.keys(r.json).sort()).toEqual(['choices', 'created', 'id', 'model', 'object', 'system_fingerprint', 'usage']);
    const last = done.at(-1)!;
    expect(last.stats?.speculative?.steps).toBeGreaterThan(0);
    expect(last.stats?.speculative?.acceptanceRate).toBeGreaterThan(0);
  });

  it('rejects a bad draft length with a 400', async () => {
    const r = await chat({ model: MODEL, messages: [{ role: 'user', content: PROMPT }], num_assistant_tokens: 0 });
    expect(r.status).toBe(400);
    expect(r.json.error!.message).toMatch(/num_assistant_tokens/);
  });
});

describe('prompt lookup through chat and serve', () => {
  let loaded: LoadedModel;
  let srv: ChatServer;
  const done: RequestDone[] = [];

  beforeAll(async () => {
    loaded = await loadLocalModel(bundledModelPath(), { dtype: 'auto', modelId: MODEL, maxContext: 256, ...quiet });
    srv = await startChatServer({ modelId: MODEL, port: 0, onRequestDone: (e) => done.push(e) });
    srv.setModel({ model: loaded.pipe, health: healthFields(loaded), defaults: { prompt_lookup_num_tokens: 8 } });
  });
  afterAll(async () => {
    await srv?.close();
    if (loaded) disposeLoaded(loaded);
  });

  it('!set prompt_lookup_num_tokens gives the same greedy reply with drafts; a draft model beside it is refused by name', async () => {
    const s = new ChatSession(new LocalBackend(loaded), { flags: { max_new_tokens: 20, do_sample: false } });
    expect(((await s.command('!set prompt_lookup_num_tokens=8 max_matching_ngram_size=3')) as { output: string }).output).toContain('prompt_lookup_num_tokens=8 max_matching_ngram_size=3');
    expect(await reply(s)).toBe(GREEDY_20);
    expect(s.lastTurn!.speculative).toBeDefined();
    await expect(s.command('!set draft=self-q4')).rejects.toThrow(/draft=self-q4 and prompt_lookup_num_tokens=8 cannot both be on/);
    await expect(s.command('!set prompt_lookup_num_tokens=-1')).rejects.toThrow(/prompt_lookup_num_tokens: expected an integer in 0\.\.63/);
    await s.command('!set prompt_lookup_num_tokens=0');
    await s.command('!clear');
    expect(await reply(s)).toBe(GREEDY_20);
    expect(s.lastTurn!.speculative).toBeUndefined();
  });

  const post = async (path: string, body: Record<string, unknown>) => {
    const res = await fetch(`${srv.url}${path}`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
    return { status: res.status, json: (await res.json()) as { choices: { text: string; logprobs: { token_logprobs: number[]; top_logprobs: Record<string, number>[] } }[]; error?: { message: string; param: string } } };
  };

  it('serve: the server default and request fields turn it on and off; text, logprobs and finish are those of plain decoding', async () => {
    // The prompt holds a story the model's reply repeats.
    const story = 'Once upon a time, there was a little girl named Lily. She loved to play outside in the sun.';
    const body = { model: MODEL, prompt: `${story}\n${story}\nOnce upon a time`, max_tokens: 24, temperature: 0, logprobs: 3 };
    const plain = await post('/v1/completions', { ...body, prompt_lookup_num_tokens: 0 });
    expect(plain.status).toBe(200);
    expect(done.at(-1)!.stats?.speculative).toBeUndefined();
    for (const extra of [{}, { prompt_lookup_num_tokens: 4, max_matching_ngram_size: 1 }, { logit_bias: { '5': 0.5 }, presence_penalty: 0 }]) {
      const r = await post('/v1/completions', { ...body, ...extra });
      expect(r.status, JSON.stringify(r.json.error)).toBe(200);
      const spec = done.at(-1)!.stats!.speculative!;
      expect(spec.steps).toBeGreaterThan(0);
      if (!('logit_bias' in extra)) {
        expect(r.json.choices[0]!.text).toBe(plain.json.choices[0]!.text);
        const [a, b] = [r.json.choices[0]!.logprobs, plain.json.choices[0]!.logprobs];
        expect(a.top_logprobs).toEqual(b.top_logprobs.map((m) => expect.objectContaining(Object.fromEntries(Object.keys(m).map((k) => [k, expect.closeTo(m[k]!, 4)])))));
        a.token_logprobs.forEach((l, i) => expect(l).toBeCloseTo(b.token_logprobs[i]!, 4));
        expect(spec.acceptedTokens).toBeGreaterThan(0);
      }
    }
    const chat = await post('/v1/chat/completions', { model: MODEL, messages: [{ role: 'user', content: PROMPT }], max_tokens: 20, temperature: 0 });
    expect((chat.json as unknown as { choices: { message: { content: string } }[] }).choices[0]!.message.content).toBe(GREEDY_20);
    expect(done.at(-1)!.stats?.speculative).toBeDefined();
    for (const [field, value] of [['prompt_lookup_num_tokens', -1], ['prompt_lookup_num_tokens', 1.5], ['max_matching_ngram_size', 0], ['assistant_confidence_threshold', 2]] as const) {
      const bad = await post('/v1/completions', { ...body, [field]: value });
      expect(bad.status).toBe(400);
      expect(bad.json.error!.param).toBe(field);
    }
  });
});
