import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { createReplyParser, detectReplyFormat, type ParsedToolCall, type ReplyFormat, type ReplyPiece } from '../src/index.ts';
import { hasPython, loadTokenizer, pythonReference } from './fixtures.ts';

interface Parsed {
  content: string;
  reasoning: string;
  calls: ParsedToolCall[];
}

function collect(pieces: ReplyPiece[], into: Parsed = { content: '', reasoning: '', calls: [] }): Parsed {
  for (const p of pieces) {
    if (p.kind === 'tool_call') into.calls.push(p.call);
    else if (p.kind === 'content') into.content += p.text;
    else into.reasoning += p.text;
  }
  return into;
}

/** Parses `text` fed in pieces cut at `cuts` (sorted offsets). */
function parse(format: ReplyFormat, text: string, prompt = '', cuts: number[] = [], tools = true): Parsed {
  const parser = createReplyParser(format, prompt, { tools });
  const out: Parsed = { content: '', reasoning: '', calls: [] };
  let from = 0;
  for (const c of [...cuts, text.length]) {
    collect(parser.push(text.slice(from, c)), out);
    from = c;
  }
  return collect(parser.end(), out);
}

/** Every way of streaming a reply gives what parsing it whole gives: per character, and random cuts. */
function expectStreamsAlike(format: ReplyFormat, text: string, prompt = '', tools = true): Parsed {
  const whole = parse(format, text, prompt, [], tools);
  expect(parse(format, text, prompt, Array.from({ length: text.length }, (_, i) => i), tools), 'per character').toEqual(whole);
  let seed = text.length;
  for (let trial = 0; trial < 5; trial++) {
    const cuts: number[] = [];
    for (let i = 0; i < text.length; i++) {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      if (seed % 4 === 0) cuts.push(i);
    }
    expect(parse(format, text, prompt, cuts, tools), `cuts ${cuts.join(',')}`).toEqual(whole);
  }
  return whole;
}

const call = (name: string, args: unknown): ParsedToolCall => ({ name, arguments: JSON.stringify(args) });

const HERMES: ReplyFormat = { toolCalls: 'hermes', thinking: { open: '<think>', close: '</think>' }, keepSpecialTokens: false };
const QWEN_PROMPT = '<|im_start|>user\nWeather?<|im_end|>\n<|im_start|>assistant\n';

// Replies as Qwen3 writes them (its template's tool-call instructions), and broken ones.
const QWEN_REPLIES = [
  '<think>\nLet me think.\n</think>\n\nHello there!',
  '<think>\nNeed the weather.\n</think>\n\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich"}}\n</tool_call>',
  'Sure.\n<tool_call>\n{"name": "a", "arguments": {}}\n</tool_call>\n<tool_call>\n{"name": "b", "arguments": {"x": [1, {"y": "}"}]}}\n</tool_call>',
  'Plain answer with a < sign and <tool and <think nothing.',
  '<think>\n\n</think>\n\nShort.',
  '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Bern", "days": 3, "units": null}}\n</tool_call>',
];

describe('reply parsing: Hermes / Qwen', () => {
  it('splits thinking, content and calls, however the text streams', () => {
    expect(expectStreamsAlike(HERMES, QWEN_REPLIES[0]!, QWEN_PROMPT)).toEqual({ content: 'Hello there!', reasoning: 'Let me think.', calls: [] });
    expect(expectStreamsAlike(HERMES, QWEN_REPLIES[1]!, QWEN_PROMPT)).toEqual({ content: '', reasoning: 'Need the weather.', calls: [call('get_weather', { city: 'Zürich' })] });
    expect(expectStreamsAlike(HERMES, QWEN_REPLIES[2]!, QWEN_PROMPT)).toEqual({ content: 'Sure.', reasoning: '', calls: [call('a', {}), call('b', { x: [1, { y: '}' }] })] });
    expect(expectStreamsAlike(HERMES, QWEN_REPLIES[3]!, QWEN_PROMPT).content).toBe(QWEN_REPLIES[3]);
  });

  it('gives a malformed or unfinished call back as content', () => {
    const bad = 'Calling.\n<tool_call>\n{"name": "a", "arguments": {bad json}\n</tool_call>';
    expect(expectStreamsAlike(HERMES, bad)).toEqual({ content: bad, reasoning: '', calls: [] });
    const noName = '<tool_call>\n{"arguments": {}}\n</tool_call>';
    expect(expectStreamsAlike(HERMES, noName).content).toBe(noName);
    const cut = 'Ok <tool_call>\n{"name": "a", "argum';
    expect(expectStreamsAlike(HERMES, cut)).toEqual({ content: cut, reasoning: '', calls: [] });
  });

  it('starts inside a thinking block a prompt opened, and leaves calls alone without tools', () => {
    expect(parse(HERMES, 'Hmm.\n</think>\n\nYes.', `${QWEN_PROMPT}<think>\n`)).toEqual({ content: 'Yes.', reasoning: 'Hmm.', calls: [] });
    const r = parse(HERMES, QWEN_REPLIES[1]!, QWEN_PROMPT, [], false);
    expect(r.calls).toEqual([]);
    expect(r.content).toContain('<tool_call>');
  });

  it('reads the format off the chat template', async () => {
    const qwen = await loadTokenizer('qwen3');
    expect(detectReplyFormat(qwen.config.chat_template as string, qwen)).toEqual(HERMES);
    const llama = await loadTokenizer('llama3_1');
    const llamaTools = readFileSync(new URL('./templates/llama3_1-tools.jinja', import.meta.url), 'utf8');
    // This Llama 3 vocabulary predates <|python_tag|> (3.1's), so the marker is plain text here.
    expect(detectReplyFormat(llamaTools, llama)).toEqual({ toolCalls: 'llama3_json', thinking: undefined, keepSpecialTokens: false });
    const mistral = readFileSync(new URL('./templates/mistral-tools.jinja', import.meta.url), 'utf8');
    expect(detectReplyFormat(mistral, llama).toolCalls).toBe('mistral');
    expect(detectReplyFormat('{{ messages }}', llama)).toEqual({ toolCalls: undefined, thinking: undefined, keepSpecialTokens: false });
    expect(detectReplyFormat('{{ messages }}', llama, 'mistral').toolCalls).toBe('mistral');
    expect(detectReplyFormat('{{ "<|tool_call|>" }}{{ tools }}', llama).toolCalls).toBe('granite');
  });
});

describe.skipIf(!hasPython)('reply parsing: as transformers serve parses Qwen replies', () => {
  it('matches parse_response on recorded replies', () => {
    const ref = pythonReference(QWEN_REPLIES.map((text) => ({ tokenizer: 'qwen3' as const, op: 'parse_response' as const, text: `${text}<|im_end|>`, prefix: QWEN_PROMPT })));
    QWEN_REPLIES.forEach((text, i) => {
      const want = ref[i]!.parsed!;
      expect(ref[i]!.error, text).toBeUndefined();
      const got = parse(HERMES, text, QWEN_PROMPT);
      expect(got.content, text).toBe(want.content ?? '');
      expect(got.reasoning, text).toBe(want.thinking ?? '');
      expect(got.calls, text).toEqual((want.tool_calls ?? []).map((c) => call(c.function.name, c.function.arguments)));
    });
  });
});

describe('reply parsing: Llama 3.1 JSON calls', () => {
  const LLAMA: ReplyFormat = { toolCalls: 'llama3_json', thinking: undefined, keepSpecialTokens: false };
  it('reads bare JSON calls, several separated by ";", and <|python_tag|> calls', () => {
    expect(expectStreamsAlike(LLAMA, '{"name": "get_weather", "parameters": {"city": "Paris"}}')).toEqual({ content: '', reasoning: '', calls: [call('get_weather', { city: 'Paris' })] });
    expect(expectStreamsAlike(LLAMA, ' {"name": "a", "parameters": {}}; {"name": "b", "parameters": {"q": "x;y"}}').calls).toEqual([call('a', {}), call('b', { q: 'x;y' })]);
    expect(expectStreamsAlike(LLAMA, '<|python_tag|>{"name": "search", "parameters": {"query": "tides"}}').calls).toEqual([call('search', { query: 'tides' })]);
  });
  it('keeps JSON that is not a call, and prose, as content', () => {
    for (const text of ['{"answer": 42}', 'The JSON is {"name": "x"}.', '{"name": "a", "parameters": {"unclosed":']) {
      expect(expectStreamsAlike(LLAMA, text)).toEqual({ content: text, reasoning: '', calls: [] });
    }
  });
});

describe('reply parsing: Mistral [TOOL_CALLS]', () => {
  const MISTRAL: ReplyFormat = { toolCalls: 'mistral', thinking: undefined, keepSpecialTokens: true };
  it('reads the JSON list (v3) and the name[ARGS] form (v11+)', () => {
    expect(expectStreamsAlike(MISTRAL, '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Lyon"}}, {"name": "get_time", "arguments": {}}]')).toEqual({
      content: '',
      reasoning: '',
      calls: [call('get_weather', { city: 'Lyon' }), call('get_time', {})],
    });
    expect(expectStreamsAlike(MISTRAL, 'Checking.[TOOL_CALLS]get_weather[ARGS]{"city": "Nice"}[TOOL_CALLS]get_time[ARGS]{}')).toEqual({
      content: 'Checking.',
      reasoning: '',
      calls: [call('get_weather', { city: 'Nice' }), call('get_time', {})],
    });
  });
  it('gives a malformed list back as content', () => {
    const bad = '[TOOL_CALLS][{"name": "x", "arguments": 5}]';
    expect(expectStreamsAlike(MISTRAL, bad).content).toBe(bad);
  });
});

describe('reply parsing: Granite <|tool_call|>', () => {
  const GRANITE: ReplyFormat = { toolCalls: 'granite', thinking: undefined, keepSpecialTokens: true };
  it('reads the JSON list after the marker, and gives anything else back as content', () => {
    expect(expectStreamsAlike(GRANITE, '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Boston"}}, {"name": "get_time", "arguments": {}}]')).toEqual({
      content: '',
      reasoning: '',
      calls: [call('get_weather', { city: 'Boston' }), call('get_time', {})],
    });
    for (const bad of ['<|tool_call|>[]', '<|tool_call|>{"name": "x", "arguments": {}}', '<|tool_call|>[{"name": "x", "arguments": {}}']) {
      expect(expectStreamsAlike(GRANITE, bad).content).toBe(bad);
    }
  });
});

describe('reply parsing: GPT-OSS harmony', () => {
  const HARMONY: ReplyFormat = { toolCalls: 'harmony', thinking: undefined, keepSpecialTokens: true };
  const PROMPT = '<|start|>user<|message|>Weather in Oslo?<|end|><|start|>assistant';
  it('reads analysis as reasoning, final as content, and calls to functions.*', () => {
    expect(expectStreamsAlike(HARMONY, '<|channel|>analysis<|message|>User wants weather.<|end|><|start|>assistant<|channel|>final<|message|>It is sunny.', PROMPT)).toEqual({
      content: 'It is sunny.',
      reasoning: 'User wants weather.',
      calls: [],
    });
    expect(expectStreamsAlike(HARMONY, '<|channel|>analysis<|message|>Call the tool.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city":"Oslo"}', PROMPT)).toEqual({
      content: '',
      reasoning: 'Call the tool.',
      calls: [call('get_weather', { city: 'Oslo' })],
    });
    // The recipient may also sit in the role part of the header.
    expect(expectStreamsAlike(HARMONY, ' to=functions.get_time<|channel|>commentary json<|message|>{}', PROMPT).calls).toEqual([call('get_time', {})]);
  });
  it('gives a call whose arguments are not JSON back as content, and shows calls as content without tools', () => {
    expect(expectStreamsAlike(HARMONY, '<|channel|>commentary to=functions.f <|constrain|>json<|message|>{oops', PROMPT)).toEqual({ content: '{oops', reasoning: '', calls: [] });
    expect(parse(HARMONY, '<|channel|>commentary to=functions.f<|message|>{}', PROMPT, [], false)).toEqual({ content: '{}', reasoning: '', calls: [] });
    // Text with no header at all is content; a reply cut off inside a header shows nothing.
    expect(expectStreamsAlike(HARMONY, 'Plain words.', PROMPT)).toEqual({ content: 'Plain words.', reasoning: '', calls: [] });
    expect(expectStreamsAlike(HARMONY, '<|channel|>analy', PROMPT)).toEqual({ content: '', reasoning: '', calls: [] });
  });
});
