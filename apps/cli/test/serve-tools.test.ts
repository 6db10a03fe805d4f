// Tool calls through the server, end to end: a scripted model (the chat package's Batch
// double, answering with a fixed reply after each prompt) with Qwen3's real tokenizer and
// chat template, read by the official OpenAI client. The replies are what Qwen3 writes when
// it calls tools; the tests check what comes out of the wire (tool_calls, reasoning_content,
// deltas, finish reasons, the prompt the tools render into) and the 400s.
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ChatTemplates, createTextGenerationPipeline, type ChatTokenizer, type Message, type TextGenerationPipeline } from '@webgpu-chat/chat';
import { FakeBatch, fakeModel, loadTokenizer, testTemplate, type TokenizerName } from '@webgpu-chat/chat/testing';
import { startChatServer, type ChatServer } from '../src/server.ts';
import { postJsonTo } from './http-client.ts';

const MODEL = 'scripted-qwen3';
const WEATHER = { type: 'function', function: { name: 'get_weather', description: 'Weather in a city', parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } } } as const;
const TIME = { type: 'function', function: { name: 'get_time', parameters: { type: 'object', properties: { zone: { type: 'string' } } } } } as const;

/** What the scripted model answers to a user message containing the key. */
const SCRIPTS: Record<string, string> = {
  weather: '<think>\nNeed the weather.\n</think>\n\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich"}}\n</tool_call>',
  both: 'Checking both.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {"zone": "Europe/Oslo"}}\n</tool_call>',
  broken: 'Let me try.\n<tool_call>\n{"name": "get_weather", "arguments": {city: Oslo}}\n</tool_call>',
  result: '<think>\nThe tool said 21.\n</think>\n\nIt is 21 °C in Zürich.',
};

let tok: ChatTokenizer;
let pipe: TextGenerationPipeline;
let plainPipe: TextGenerationPipeline;
let srv: ChatServer;
let plainSrv: ChatServer;
let client: OpenAI;

/** The scripted next token: the reply chosen by the last user message, after the last assistant header. */
function scriptedRule(t: ChatTokenizer): (cached: readonly number[]) => number {
  const header = t.encode('<|im_start|>assistant\n', { addSpecialTokens: false });
  const eos = t.eos!.id;
  const replies = new Map<string, number[]>(Object.entries(SCRIPTS).map(([k, v]) => [k, [...t.encode(v, { addSpecialTokens: false }), eos]]));
  return (cached) => {
    let at = -1;
    for (let i = cached.length - header.length; i >= 0 && at < 0; i--) if (header.every((h, j) => cached[i + j] === h)) at = i;
    if (at < 0) return eos;
    const prompt = t.decode(cached.slice(0, at));
    const lastUser = prompt.slice(prompt.lastIndexOf('<|im_start|>user'));
    const key = [...replies.keys()].find((k) => lastUser.includes(k) && !(k === 'weather' && prompt.includes('<tool_response>')));
    const reply = replies.get(prompt.includes('<tool_response>') ? 'result' : (key ?? 'weather'))!;
    return reply[cached.length - at - header.length] ?? eos;
  };
}

beforeAll(async () => {
  tok = await loadTokenizer('qwen3');
  const batch = new FakeBatch(scriptedRule(tok), tok.vocabSize, 2048, 8);
  pipe = createTextGenerationPipeline(fakeModel(batch), { tokenizer: tok, templates: ChatTemplates.fromConfig(tok.config), generationConfig: {} }, { maxParallel: 4 });
  srv = await startChatServer({ modelId: MODEL, port: 0 });
  srv.setModel({ model: pipe });
  client = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: 'none', maxRetries: 0 });
  // A template that writes no tools (offering tools to it is refused) but reads reasoning_effort, as GPT-OSS's does.
  const plainBatch = new FakeBatch(() => tok.eos!.id, tok.vocabSize, 512, 4);
  const plainTemplate = '{% for m in messages %}{{ m.content }}{% endfor %}{% if reasoning_effort is defined %}|effort={{ reasoning_effort }}{% endif %}';
  plainPipe = createTextGenerationPipeline(fakeModel(plainBatch), { tokenizer: tok, templates: new ChatTemplates({ default: plainTemplate }), generationConfig: {} });
  plainSrv = await startChatServer({ modelId: MODEL, port: 0 });
  plainSrv.setModel({ model: plainPipe });
});

afterAll(async () => {
  await srv?.close();
  await plainSrv?.close();
  pipe?.dispose();
  plainPipe?.dispose();
});

const post = (body: unknown, url = srv.url) => postJsonTo(`${url}/v1/chat/completions`, body);
const ask = (content: string) => [{ role: 'user' as const, content }];

describe('serve: tool calls', () => {
  it('renders the tools into the prompt and returns the call, the reasoning and finish_reason "tool_calls"', async () => {
    const r = await client.chat.completions.create({ model: MODEL, messages: ask('weather in Zürich?'), tools: [WEATHER, TIME] });
    const choice = r.choices[0]!;
    expect(choice.finish_reason).toBe('tool_calls');
    expect(choice.message.content).toBeNull();
    expect((choice.message as unknown as { reasoning_content: string }).reasoning_content).toBe('Need the weather.');
    expect(choice.message.tool_calls).toHaveLength(1);
    const call = choice.message.tool_calls![0]! as OpenAI.ChatCompletionMessageFunctionToolCall;
    expect(call.id).toMatch(/^call_[A-Za-z0-9]{24}$/);
    expect(call.type).toBe('function');
    expect(call.function.name).toBe('get_weather');
    expect(JSON.parse(call.function.arguments)).toEqual({ city: 'Zürich' });
    const without = await client.chat.completions.create({ model: MODEL, messages: ask('weather in Zürich?') });
    const rendered = tok.encode(pipe.renderPrompt(ask('weather in Zürich?'), { tools: [WEATHER, TIME] }).text, { addSpecialTokens: false });
    expect(r.usage!.prompt_tokens).toBe(rendered.length);
    expect(r.usage!.prompt_tokens).toBeGreaterThan(without.usage!.prompt_tokens + 50);
    // Without tools the markup is the model's text, not a call; the reasoning is still split out.
    expect(without.choices[0]!.message.content).toContain('<tool_call>');
    expect(without.choices[0]!.message.tool_calls).toBeUndefined();
    expect(without.choices[0]!.finish_reason).toBe('stop');
  });

  it('streams reasoning and content deltas and each call whole with its index; markup never reaches content', async () => {
    const stream = await client.chat.completions.create({ model: MODEL, messages: ask('both please'), tools: [WEATHER, TIME], stream: true });
    const deltas: OpenAI.ChatCompletionChunk.Choice.Delta[] = [];
    let finish: string | null = null;
    for await (const c of stream) {
      if (!c.choices[0]) continue;
      deltas.push(c.choices[0].delta);
      finish = c.choices[0].finish_reason ?? finish;
    }
    expect(finish).toBe('tool_calls');
    const content = deltas.map((d) => d.content ?? '').join('');
    expect(content).toBe('Checking both.');
    const calls = deltas.flatMap((d) => d.tool_calls ?? []);
    expect(calls.map((c) => [c.index, c.function?.name, JSON.parse(c.function!.arguments!)])).toEqual([
      [0, 'get_weather', { city: 'Oslo' }],
      [1, 'get_time', { zone: 'Europe/Oslo' }],
    ]);
    expect(new Set(calls.map((c) => c.id)).size).toBe(2);

    const one = await client.chat.completions.create({ model: MODEL, messages: ask('both please'), tools: [WEATHER, TIME], parallel_tool_calls: false });
    expect(one.choices[0]!.message.tool_calls!.map((c) => (c as OpenAI.ChatCompletionMessageFunctionToolCall).function.name)).toEqual(['get_weather']);
  });

  it('gives a malformed call back as content with finish_reason "stop"; tool_choice "none" renders no tools', async () => {
    const r = await client.chat.completions.create({ model: MODEL, messages: ask('broken'), tools: [WEATHER] });
    expect(r.choices[0]!.finish_reason).toBe('stop');
    expect(r.choices[0]!.message.tool_calls).toBeUndefined();
    expect(r.choices[0]!.message.content).toBe(SCRIPTS.broken);
    const none = await client.chat.completions.create({ model: MODEL, messages: ask('weather'), tools: [WEATHER], tool_choice: 'none' });
    const plain = await client.chat.completions.create({ model: MODEL, messages: ask('weather') });
    expect(none.usage!.prompt_tokens).toBe(plain.usage!.prompt_tokens);
    expect(none.choices[0]!.message.tool_calls).toBeUndefined();
  });

  it('takes the calls and results back in the history (OpenAI shape) and answers from them', async () => {
    const first = await client.chat.completions.create({ model: MODEL, messages: ask('weather in Zürich?'), tools: [WEATHER] });
    const call = first.choices[0]!.message.tool_calls![0]!;
    const history: OpenAI.ChatCompletionMessageParam[] = [...ask('weather in Zürich?'), { role: 'assistant', content: null, tool_calls: [call] }, { role: 'tool', tool_call_id: call.id, content: '{"temp_c": 21}' }];
    const r = await client.chat.completions.create({ model: MODEL, messages: history, tools: [WEATHER] });
    expect(r.choices[0]!.message.content).toBe('It is 21 °C in Zürich.');
    expect(r.choices[0]!.finish_reason).toBe('stop');
    const applied = await postJsonTo(`${srv.url}/apply-template`, { messages: history, tools: [WEATHER] });
    expect(applied.status).toBe(200);
    expect(applied.json.prompt).toContain('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich"}}\n</tool_call>');
    expect(applied.json.prompt).toContain('<tool_response>\n{"temp_c": 21}\n</tool_response>');
  });

  it('refuses malformed tools, unknown tool_choice names, deprecated functions, and tools a template cannot render (400 naming the field)', async () => {
    const cases: [unknown, string, RegExp][] = [
      [{ tools: [{ type: 'function', function: { name: 'has space' } }] }, 'tools', /tools\[0\]\.function\.name/],
      [{ tools: [{ type: 'retrieval' }] }, 'tools', /tools\[0\]\.type must be "function"/],
      [{ tools: { a: 1 } }, 'tools', /tools must be a list/],
      [{ tools: [WEATHER], tool_choice: { type: 'function', function: { name: 'nope' } } }, 'tool_choice', /'nope', which is not among the tools \(get_weather\)/],
      [{ tools: [WEATHER], tool_choice: 'sometimes' }, 'tool_choice', /tool_choice must be/],
      [{ functions: [{ name: 'x' }] }, 'functions', /use 'tools'/],
      [{ tools: [WEATHER], parallel_tool_calls: 'yes' }, 'parallel_tool_calls', /must be a boolean/],
      [{ tools: [WEATHER], tool_choice: 'required', response_format: { type: 'json_object' } }, 'response_format', /cannot be combined with a required tool call/],
      [{ tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object', properties: { n: { type: 'number', multipleOf: 2 } } } } }], tool_choice: 'required' }, 'tools', /multipleOf/],
      [{ messages: [{ role: 'assistant', content: null, tool_calls: [{ type: 'function', function: { name: 'get_weather', arguments: '{oops' } }] }, ...ask('x')] }, 'messages', /not valid JSON/],
    ];
    for (const [extra, param, message] of cases) {
      const r = await post({ model: MODEL, messages: ask('weather'), ...(extra as object) });
      expect(r.status, JSON.stringify(extra)).toBe(400);
      expect(r.json.error.message, JSON.stringify(extra)).toMatch(message);
      if (param !== 'messages') expect(r.json.error.param).toBe(param);
    }
    const r = await post({ model: MODEL, messages: ask('weather'), tools: [WEATHER] }, plainSrv.url);
    expect(r.status).toBe(400);
    expect(r.json.error.param).toBe('tools');
    expect(r.json.error.message).toMatch(/does not write tools into the prompt/);
  });

  it('passes reasoning_effort to a template that reads it, and refuses it elsewhere', async () => {
    const r = await post({ model: MODEL, messages: ask('weather'), reasoning_effort: 'low' }, plainSrv.url);
    expect(r.status).toBe(200);
    expect(r.json.usage.prompt_tokens).toBe(tok.encode('weather|effort=low', { addSpecialTokens: false }).length);
    const qwen = await post({ model: MODEL, messages: ask('weather'), reasoning_effort: 'low' });
    expect(qwen.status).toBe(400);
    expect(qwen.json.error).toMatchObject({ param: 'reasoning_effort', code: 'unsupported_parameter' });
    expect((await post({ model: MODEL, messages: ask('weather'), reasoning_effort: 'max' }, plainSrv.url)).json.error.param).toBe('reasoning_effort');
  });
});

/**
 * A server over a model scripted per prompt: `script` registers the reply the model gives
 * after the prompt a chat renders to (the longest registered prompt a sequence starts with wins).
 */
async function scriptedServer(tokenizer: TokenizerName, template: string) {
  const t = await loadTokenizer(tokenizer);
  const eos = t.eos!.id;
  const replies: { prompt: number[]; reply: number[] }[] = [];
  const rule = (cached: readonly number[]) => {
    let best: (typeof replies)[number] | undefined;
    for (const r of replies) if (r.prompt.length <= cached.length && (!best || r.prompt.length > best.prompt.length) && r.prompt.every((id, i) => cached[i] === id)) best = r;
    return best?.reply[cached.length - best.prompt.length] ?? eos;
  };
  const p = createTextGenerationPipeline(fakeModel(new FakeBatch(rule, t.vocabSize, 4096, 8)), { tokenizer: t, templates: new ChatTemplates({ default: template }), generationConfig: {} }, { maxParallel: 2 });
  const s = await startChatServer({ modelId: MODEL, port: 0 });
  s.setModel({ model: p });
  return {
    client: new OpenAI({ baseURL: `${s.url}/v1`, apiKey: 'none', maxRetries: 0 }),
    script(messages: Message[], tools: unknown[], reply: string) {
      const prompt = t.encode(p.renderPrompt(messages, { tools }).text, { addSpecialTokens: false });
      replies.push({ prompt, reply: [...t.encode(reply, { addSpecialTokens: false }), eos] });
    },
    async close() {
      await s.close();
      p.dispose();
    },
  };
}


/** A harmony-style template (GPT-OSS's channels and recipients), small enough to read. */
const HARMONY_TEMPLATE =
  '{% for m in messages %}{% if m.role == "assistant" and m.tool_calls %}{% for c in m.tool_calls %}<|start|>assistant<|channel|>commentary to=functions.{{ c.function.name }} <|constrain|>json<|message|>{{ c.function.arguments|tojson }}<|call|>{% endfor %}' +
  '{% elif m.role == "assistant" %}<|start|>assistant<|channel|>final<|message|>{{ m.content }}<|end|>{% elif m.role == "tool" %}<|start|>functions.x to=assistant<|channel|>commentary<|message|>{{ m.content }}<|end|>' +
  '{% else %}<|start|>{{ m.role }}<|message|>{{ m.content }}<|end|>{% endif %}{% endfor %}{% if tools %}<|start|>developer<|message|>{{ tools|tojson }}<|end|>{% endif %}{% if add_generation_prompt %}<|start|>assistant{% endif %}';

const FAMILIES = [
  { syntax: 'Hermes / Qwen', tokenizer: 'qwen3', template: () => String(ChatTemplates.fromConfig(tok.config).templates.default), reply: 'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich"}}\n</tool_call>', content: 'Let me look.', reasoning: '' },
  { syntax: 'Llama 3.1 JSON', tokenizer: 'llama3_1', template: () => testTemplate('llama3_1-tools'), reply: '{"name": "get_weather", "parameters": {"city": "Zürich"}}', content: '', reasoning: '' },
  { syntax: 'Mistral [TOOL_CALLS]', tokenizer: 'llama2', template: () => testTemplate('mistral-tools'), reply: '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Zürich"}}]', content: '', reasoning: '' },
  {
    syntax: 'GPT-OSS harmony',
    tokenizer: 'qwen3',
    template: () => HARMONY_TEMPLATE,
    reply: '<|channel|>analysis<|message|>The user wants weather.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city":"Zürich"}',
    content: '',
    reasoning: 'The user wants weather.',
  },
] as const;

describe.each(FAMILIES)('serve: $syntax tool calls through the wire', (f) => {
  let server: Awaited<ReturnType<typeof scriptedServer>>;
  const chat: OpenAI.ChatCompletionMessageParam[] & Message[] = [{ role: 'user', content: 'Weather in Zürich?' }];
  beforeAll(async () => {
    server = await scriptedServer(f.tokenizer, f.template());
    server.script(chat, [WEATHER], f.reply);
  });
  afterAll(() => server?.close());

  it('returns the call, whole or streamed, and takes it back with its result', async () => {
    const r = await server.client.chat.completions.create({ model: MODEL, messages: chat, tools: [WEATHER] });
    const m = r.choices[0]!.message;
    expect(r.choices[0]!.finish_reason).toBe('tool_calls');
    expect(m.content).toBe(f.content || null);
    expect((m as { reasoning_content?: string }).reasoning_content ?? '').toBe(f.reasoning);
    const call = m.tool_calls![0] as OpenAI.ChatCompletionMessageFunctionToolCall;
    expect([call.function.name, JSON.parse(call.function.arguments)]).toEqual(['get_weather', { city: 'Zürich' }]);

    const stream = await server.client.chat.completions.create({ model: MODEL, messages: chat, tools: [WEATHER], stream: true });
    let content = '';
    let reasoning = '';
    const calls: OpenAI.ChatCompletionChunk.Choice.Delta.ToolCall[] = [];
    for await (const c of stream) {
      const d = c.choices[0]?.delta as (OpenAI.ChatCompletionChunk.Choice.Delta & { reasoning_content?: string }) | undefined;
      content += d?.content ?? '';
      reasoning += d?.reasoning_content ?? '';
      calls.push(...(d?.tool_calls ?? []));
    }
    expect([content, reasoning]).toEqual([f.content, f.reasoning]);
    expect(calls.map((c) => [c.index, c.function?.name, JSON.parse(c.function!.arguments!)])).toEqual([[0, 'get_weather', { city: 'Zürich' }]]);

    // Mistral's template insists on 9-character call ids: the ids made for it fit.
    const history: OpenAI.ChatCompletionMessageParam[] = [...chat, { role: 'assistant', content: null, tool_calls: [call] }, { role: 'tool', tool_call_id: call.id, content: '21' }];
    // The chat as the server reads it: a call-only turn has empty content.
    server.script([...chat, { role: 'assistant', content: '', tool_calls: [call] }, { role: 'tool', tool_call_id: call.id, content: '21' }], [WEATHER], 'It is 21 degrees.');
    const answer = await server.client.chat.completions.create({ model: MODEL, messages: history, tools: [WEATHER] });
    expect(answer.choices[0]!.message.content).toBe('It is 21 degrees.');
    expect(answer.choices[0]!.finish_reason).toBe('stop');
  });

  it('holds the reply to a valid call under tool_choice "required" or a named function (constrained decoding)', async () => {
    // An unscripted prompt: the model would end at once; the constraint writes a call anyway.
    const forced = [{ role: 'user' as const, content: 'Anything.' }];
    const city = { type: 'function' as const, function: { name: 'get_weather', parameters: { type: 'object', properties: { city: { enum: ['Oslo', 'Bern'] } }, required: ['city'], additionalProperties: false } } };
    const zone = { type: 'function' as const, function: { name: 'get_time', parameters: { type: 'object', properties: { utc: { type: 'boolean' } }, required: ['utc'], additionalProperties: false } } };
    const several = f.syntax !== 'GPT-OSS harmony';
    for (const [tools, choice, names] of [
      [[city, zone], { type: 'function', function: { name: 'get_time' } }, ['get_time']],
      [several ? [city, zone] : [city], 'required', several ? ['get_weather', 'get_time'] : ['get_weather']],
    ] as const) {
      for (const stream of [false, true]) {
        // One call: a model that never closes a list would write MAX_FORCED_CALLS of them. The
        // scripted model favours the lowest allowed id, a tab: up to 12 between JSON tokens.
        const body = { model: MODEL, messages: forced, tools: [...tools], tool_choice: choice, parallel_tool_calls: false, max_tokens: 400 } as OpenAI.ChatCompletionCreateParams;
        let got: { name: string; arguments: string }[];
        let finish: string | null | undefined;
        if (stream) {
          got = [];
          for await (const c of await server.client.chat.completions.create({ ...body, stream: true })) {
            for (const t of c.choices[0]?.delta.tool_calls ?? []) got.push({ name: t.function!.name!, arguments: t.function!.arguments! });
            finish = c.choices[0]?.finish_reason ?? finish;
          }
        } else {
          const r = await server.client.chat.completions.create({ ...body, stream: false });
          got = (r.choices[0]!.message.tool_calls ?? []).map((c) => (c as OpenAI.ChatCompletionMessageFunctionToolCall).function);
          finish = r.choices[0]!.finish_reason;
        }
        expect(finish, JSON.stringify(choice)).toBe('tool_calls');
        expect(got.length).toBeGreaterThan(0);
        for (const c of got) {
          expect(names).toContain(c.name);
          const args = JSON.parse(c.arguments) as Record<string, unknown>;
          if (c.name === 'get_weather') expect(['Oslo', 'Bern']).toContain(args.city);
          else expect(typeof args.utc).toBe('boolean');
          expect(Object.keys(args)).toHaveLength(1);
        }
      }
    }
  });
});
