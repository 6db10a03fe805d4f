import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CHAT_HELP, GENERATION_FLAGS, SERVE_HELP, UsageError, bundledModelPath, parseChatArgs, parseGenerationFlags, parseServeArgs } from '../src/args.ts';
import { flagsToRequest, modelIdOf, type ChatBackend, type TurnStats } from '../src/backend.ts';
import { ChatSession, formatTurn } from '../src/session.ts';
import type { Message, ReplyPiece, ResponseFormat } from '@webgpu-chat/chat';
import { schemaFileFormat } from '../src/chat-format.ts';
import type { ReplyOptions } from '../src/backend.ts';

describe('generation flags', () => {
  it('parses Transformers names and values, Python booleans included', () => {
    expect(
      parseGenerationFlags(['do_sample=False', 'max_new_tokens=10', 'temperature=0.7', 'top_p=0.9', 'top_k=50', 'min_p=0.05', 'repetition_penalty=1.1', 'seed=0']),
    ).toEqual({ do_sample: false, max_new_tokens: 10, temperature: 0.7, top_p: 0.9, top_k: 50, min_p: 0.05, repetition_penalty: 1.1, seed: 0 });
    expect(parseGenerationFlags(['do_sample=true'], { seed: 3 })).toEqual({ do_sample: true, seed: 3 });
  });

  it('rejects unknown keys, listing every valid one', () => {
    const e = (() => {
      try {
        parseGenerationFlags(['max_length=5']);
      } catch (x) {
        return x as Error;
      }
    })();
    expect(e).toBeInstanceOf(UsageError);
    expect(e!.message).toMatch(/unknown generation flag 'max_length'/);
    for (const k of GENERATION_FLAGS) expect(e!.message).toContain(k);
  });

  it.each([
    ['do_sample=maybe', /invalid value 'maybe' for do_sample: expected true or false/],
    ['max_new_tokens=0', /max_new_tokens: expected an integer >= 1/],
    ['max_new_tokens=2.5', /max_new_tokens: expected an integer >= 1/],
    ['temperature=-1', /temperature: expected a number >= 0/],
    ['temperature=abc', /temperature/],
    ['top_p=1.5', /top_p: expected a number in \[0, 1\]/],
    ['top_k=-3', /top_k: expected an integer >= 0/],
    ['repetition_penalty=0', /repetition_penalty: expected a number > 0/],
    ['seed=', /invalid value '' for seed/],
    ['=3', /expected key=value/],
  ])('rejects %s', (pair, msg) => {
    expect(() => parseGenerationFlags([pair])).toThrow(msg);
  });
});

describe('parseChatArgs', () => {
  it('reads MODEL, key=value pairs and options in any order', () => {
    expect(
      parseChatArgs(['Qwen/Qwen2.5-0.5B-Instruct', 'do_sample=false', '--system', 'Be brief.', '--dtype=f16', 'max_new_tokens=10', '--max-context', '2048', '--json', '--prompt', 'Hi']),
    ).toEqual({
      model: 'Qwen/Qwen2.5-0.5B-Instruct',
      generation: { do_sample: false, max_new_tokens: 10 },
      system: 'Be brief.',
      dtype: 'f16',
      maxContext: 2048,
      json: true,
      prompt: 'Hi',
      help: false,
    });
    expect(parseChatArgs([])).toEqual({ generation: {}, dtype: 'auto', json: false, help: false });
    expect(parseChatArgs(['--url', 'http://127.0.0.1:8000/']).url).toBe('http://127.0.0.1:8000');
    expect(parseChatArgs(['-h']).help).toBe(true);
  });

  it('gives clear errors', () => {
    expect(() => parseChatArgs(['--dtype', 'int3'])).toThrow(/--dtype expects one of auto, f32, f16, bf16, got 'int3'/);
    expect(() => parseChatArgs(['--max-context', 'lots'])).toThrow(/--max-context expects an integer >= 1/);
    expect(() => parseChatArgs(['--url', 'ftp://x'])).toThrow(/--url expects an http\(s\) URL/);
    expect(() => parseChatArgs(['--frobnicate'])).toThrow(/unknown option '--frobnicate'/);
    expect(() => parseChatArgs(['a/b', 'c/d'])).toThrow(/unexpected argument 'c\/d'/);
    expect(() => parseChatArgs(['--system'])).toThrow(/--system needs a value/);
    expect(() => parseChatArgs(['--quantize', 'q2'])).toThrow(/--quantize expects one of q8, q4, got 'q2'/);
    expect(() => parseChatArgs(['--draft'])).toThrow(/--draft expects a model folder or Hub id sharing the tokenizer, self-q4, got ''/);
    expect(() => parseChatArgs(['draft='])).toThrow(/draft needs a value/);
  });

  it('reads --quantize, --draft (or draft=MODEL) and the draft-length flags', () => {
    expect(parseChatArgs(['m', '--quantize', 'q4', '--draft', 'self-q4', 'num_assistant_tokens=5', 'num_assistant_tokens_schedule=constant'])).toEqual({
      model: 'm',
      generation: { num_assistant_tokens: 5, num_assistant_tokens_schedule: 'constant' },
      dtype: 'auto',
      quantize: 'q4',
      draft: 'self-q4',
      json: false,
      help: false,
    });
    expect(parseChatArgs(['m', 'draft=org/tiny@v1', '--quantize=q8'])).toMatchObject({ draft: 'org/tiny@v1', quantize: 'q8', generation: {} });
    expect(parseChatArgs(['m', '--draft', 'x', 'draft=none']).draft).toBeUndefined();
    expect(() => parseGenerationFlags(['num_assistant_tokens=0'])).toThrow(/num_assistant_tokens: expected an integer in 1\.\.63/);
    expect(() => parseGenerationFlags(['num_assistant_tokens=64'])).toThrow(/expected an integer in 1\.\.63/);
    expect(() => parseGenerationFlags(['num_assistant_tokens_schedule=fast'])).toThrow(/expected constant, heuristic, heuristic_transient/);
    expect(() => parseGenerationFlags(['nope=1'])).toThrow(/draft \(a model folder or Hub id sharing the tokenizer, self-q4, or none\)/);
  });

  it('reads prompt lookup flags, refuses bad sizes and a draft model beside them', () => {
    expect(parseChatArgs(['m', 'prompt_lookup_num_tokens=10', 'max_matching_ngram_size=3', 'assistant_confidence_threshold=0.2', 'num_assistant_tokens_schedule=measured']).generation).toEqual({
      prompt_lookup_num_tokens: 10,
      max_matching_ngram_size: 3,
      assistant_confidence_threshold: 0.2,
      num_assistant_tokens_schedule: 'measured',
    });
    expect(parseGenerationFlags(['prompt_lookup_num_tokens=0'])).toEqual({ prompt_lookup_num_tokens: 0 });
    for (const bad of ['-1', '2.5', '64', 'ten']) expect(() => parseGenerationFlags([`prompt_lookup_num_tokens=${bad}`])).toThrow(/prompt_lookup_num_tokens: expected an integer in 0\.\.63 \(0: off\)/);
    for (const bad of ['0', '1.5', '33']) expect(() => parseGenerationFlags([`max_matching_ngram_size=${bad}`])).toThrow(/max_matching_ngram_size: expected an integer in 1\.\.32/);
    expect(() => parseGenerationFlags(['assistant_confidence_threshold=1.5'])).toThrow(/assistant_confidence_threshold: expected a number in \[0, 1\]/);
    expect(() => parseChatArgs(['m', '--draft', 'self-q4', 'prompt_lookup_num_tokens=5'])).toThrow(/draft=self-q4 and prompt_lookup_num_tokens=5 cannot both be on/);
    expect(parseChatArgs(['m', '--draft', 'self-q4', 'prompt_lookup_num_tokens=0']).draft).toBe('self-q4');

    expect(parseServeArgs(['m', '--prompt-lookup-num-tokens', '10', '--max-matching-ngram-size=3']).lookup).toEqual({ prompt_lookup_num_tokens: 10, max_matching_ngram_size: 3 });
    expect(parseServeArgs(['m']).lookup).toBeUndefined();
    expect(() => parseServeArgs(['m', '--prompt-lookup-num-tokens', '0'])).toThrow(/--prompt-lookup-num-tokens expects an integer >= 1, got '0'/);
    expect(() => parseServeArgs(['m', '--prompt-lookup-num-tokens', '64'])).toThrow(/--prompt-lookup-num-tokens expects 1..63, got 64/);
    expect(() => parseServeArgs(['m', '--max-matching-ngram-size', '2'])).toThrow(/--max-matching-ngram-size needs --prompt-lookup-num-tokens/);
    expect(() => parseServeArgs(['m', '--draft', 'self-q4', '--prompt-lookup-num-tokens', '8'])).toThrow(/--draft and --prompt-lookup-num-tokens cannot both be on/);
  });

  it('help lists every flag, option and command', () => {
    for (const k of [...GENERATION_FLAGS, 'draft=', '--system', '--dtype', '--quantize q8|q4', '--draft MODEL', 'self-q4', '--max-context', '--json', '--json-schema FILE', 'response_format=json|text|FILE', '--url', '--prompt', '--help', '!help', '!clear', '!save', '!load', '!set', '!status', '!system', '!exit']) {
      expect(CHAT_HELP).toContain(k);
    }
    for (const k of ['--host', '--port', '--api-key', '--dtype', '--quantize q8|q4', '--draft MODEL', 'self-q4', '--max-queue', '/v1/completions', '/tokenize', '--prompt-lookup-num-tokens', '--max-matching-ngram-size']) expect(SERVE_HELP).toContain(k);
  });

  it('the bundled model path points at models/stories260K', () => {
    expect(readFileSync(join(bundledModelPath(), 'config.json'), 'utf8')).toContain('"llama"');
  });
});

describe('parseServeArgs', () => {
  it('defaults to loopback and reads the options', () => {
    expect(parseServeArgs([])).toEqual({ dtype: 'auto', host: '127.0.0.1', port: 8000, parallel: 8, maxQueue: 16, corsOrigins: [], shutdownTimeout: 20, constraintTimeout: 30, constraintWorkers: 2, warmup: true, help: false });
    expect(
      parseServeArgs(['m', '--host', '0.0.0.0', '--port', '0', '--api-key', 'k', '--max-queue', '2', '--parallel', '3', '--dtype', 'bf16', '--cors-origins', 'https://a.example, http://localhost:5173', '--shutdown-timeout', '5', '--constraint-timeout', '7', '--constraint-workers', '3', '--no-warmup']),
    ).toEqual({
      model: 'm',
      dtype: 'bf16',
      host: '0.0.0.0',
      port: 0,
      apiKey: 'k',
      parallel: 3,
      maxQueue: 2,
      corsOrigins: ['https://a.example', 'http://localhost:5173'],
      shutdownTimeout: 5,
      constraintTimeout: 7,
      constraintWorkers: 3,
      warmup: false,
      help: false,
    });
    expect(parseServeArgs(['--cors-origins', '*']).corsOrigins).toEqual(['*']);
    expect(() => parseServeArgs(['--parallel', '0'])).toThrow(/--parallel expects an integer >= 1/);
    expect(() => parseServeArgs(['--parallel', '65'])).toThrow(/--parallel expects 1..64/);
    expect(() => parseServeArgs(['--cors-origins', 'page.example/path'])).toThrow(/--cors-origins: 'page.example\/path' is not an origin/);
    expect(() => parseServeArgs(['--port', '70000'])).toThrow(/--port expects 0..65535/);
    expect(() => parseServeArgs(['--constraint-timeout', '0'])).toThrow(/--constraint-timeout expects an integer >= 1/);
    expect(parseServeArgs(['m', '--quantize', 'q8', '--draft', 'org/draft'])).toMatchObject({ model: 'm', quantize: 'q8', draft: 'org/draft' });
    expect(() => parseServeArgs(['--draft', 'none'])).toThrow(/--draft expects/);
  });
});

describe('backend helpers', () => {
  it('names models by repo id or folder name', () => {
    expect(modelIdOf('Qwen/Qwen2.5-0.5B-Instruct@main')).toBe('Qwen/Qwen2.5-0.5B-Instruct@main');
    expect(modelIdOf('/work/models/stories260K/')).toBe('stories260K');
    expect(modelIdOf('./models/x')).toBe('x');
  });

  it('maps Transformers flags onto OpenAI request fields', () => {
    expect(flagsToRequest({ do_sample: false, temperature: 0.7, max_new_tokens: 5, top_k: 3 })).toEqual({ temperature: 0, max_tokens: 5, top_k: 3 });
    expect(flagsToRequest({ do_sample: true })).toEqual({ temperature: 1 });
    expect(flagsToRequest({ temperature: 0.5, seed: 1, min_p: 0.1 })).toEqual({ temperature: 0.5, seed: 1, min_p: 0.1 });
    expect(flagsToRequest({ prompt_lookup_num_tokens: 8, max_matching_ngram_size: 3, assistant_confidence_threshold: 0.3 })).toEqual({ prompt_lookup_num_tokens: 8, max_matching_ngram_size: 3, assistant_confidence_threshold: 0.3 });
    expect(flagsToRequest({ num_assistant_tokens: 4, num_assistant_tokens_schedule: 'constant' })).toEqual({ num_assistant_tokens: 4, num_assistant_tokens_schedule: 'constant' });
  });
});

/** Echoes the last user message back, one word per piece. */
class EchoBackend implements ChatBackend {
  readonly modelId = 'echo';
  lastTurn: TurnStats | undefined;
  seen: Message[][] = [];
  formats: (ResponseFormat | undefined)[] = [];
  async *stream(messages: Message[], _flags?: unknown, _signal?: unknown, opts: ReplyOptions = {}): AsyncIterable<ReplyPiece> {
    this.seen.push(messages);
    this.formats.push(opts.responseFormat);
    const words = messages.at(-1)!.content.split(' ');
    for (const w of words) yield { kind: 'content', text: w + ' ' };
    this.lastTurn = { promptTokens: 7, newTokens: words.length, seconds: 0.5, tokensPerSecond: 4, timeToFirstTokenMs: 12, finishReason: 'stop' };
  }
  async status() {
    return { model: 'echo', where: 'in-process', maxContext: 100, dtype: 'bf16', quantization: 'q4 (4-bit, group 32)', bytesByFormat: { bf16: 2048, q4: 3 * 2 ** 20 }, bytesPerToken: 5 * 2 ** 20 };
  }
  drafts: (string | undefined)[] = [];
  async setDraft(spec: string | undefined) {
    if (spec === 'missing') throw new Error('no such model');
    this.drafts.push(spec);
    return spec ? `Draft ${spec} loaded.` : 'No draft.';
  }
  async dispose() {}
}

describe('ChatSession commands', () => {
  it('!set, !system, !status, !save, !clear, !load, !exit', async () => {
    const b = new EchoBackend();
    const s = new ChatSession(b, { flags: { max_new_tokens: 5 } });
    expect(await s.command('hello')).toEqual({ notACommand: true });
    expect(await s.command('!set temperature=0.5 do_sample=true')).toEqual({ output: 'settings: do_sample=true max_new_tokens=5 temperature=0.5' });
    await expect(s.command('!set nope=1')).rejects.toThrow(/unknown generation flag 'nope'/);
    await s.command('!system Be nice.');
    let out = '';
    await s.reply('a b c', (p) => (out += p.kind === 'content' ? p.text : ''), new AbortController().signal);
    expect(out).toBe('a b c ');
    expect(b.seen[0]).toEqual([{ role: 'system', content: 'Be nice.' }, { role: 'user', content: 'a b c' }]);
    const status = ((await s.command('!status')) as { output: string }).output;
    expect(status).toContain('context:  10 tokens used of 100');
    expect(status).toContain('settings: do_sample=true max_new_tokens=5 temperature=0.5');
    expect(status).toContain('last:     3 tokens in 0.50 s (4.0 tokens/s, TTFT 12 ms)');
    expect(status).toContain('quantize: q4 (4-bit, group 32)\nweights:  bf16 2.0 KiB, q4 3.0 MiB; 5.0 MiB read per token\ndraft:    none');

    const path = join(mkdtempSync(join(tmpdir(), 'chatsave-')), 'c.json');
    expect(await s.command(`!save ${path}`)).toEqual({ output: `Saved to ${path}` });
    const saved = JSON.parse(readFileSync(path, 'utf8'));
    expect(saved.messages).toHaveLength(3);
    expect(saved.settings.generation).toEqual({ max_new_tokens: 5, temperature: 0.5, do_sample: true });

    await s.command('!clear');
    expect(s.turns).toEqual([]);
    const fresh = new ChatSession(b);
    await fresh.command(`!load ${path}`);
    expect(fresh.messages).toEqual(saved.messages);
    expect(fresh.flags).toEqual(saved.settings.generation);
    writeFileSync(path, '{"messages": 3}');
    await expect(fresh.command(`!load ${path}`)).rejects.toThrow(/expected a file written by !save/);
    await expect(s.command('!bogus')).rejects.toThrow(/unknown command '!bogus'/);
    expect(await s.command('!exit')).toEqual({ exit: true });

    // draft= is a session setting beside the flags; a bad flag loads no draft, a failed load changes no flag.
    expect(await s.command('!set draft=org/tiny top_k=5')).toEqual({ output: 'Draft org/tiny loaded.\nsettings: do_sample=true max_new_tokens=5 temperature=0.5 top_k=5' });
    await expect(s.command('!set draft=other top_k=-1')).rejects.toThrow(/top_k/);
    await expect(s.command('!set draft=missing top_k=7')).rejects.toThrow(/no such model/);
    expect(s.flags.top_k).toBe(5);
    expect(((await s.command('!set draft=none')) as { output: string }).output).toMatch(/^No draft\./);
    expect(b.drafts).toEqual(['org/tiny', undefined]);
    const noDraft: ChatBackend = { modelId: 'x', lastTurn: undefined, stream: b.stream.bind(b), status: b.status.bind(b), dispose: b.dispose.bind(b) };
    await expect(new ChatSession(noDraft).command('!set draft=a')).rejects.toThrow(/cannot change the draft/);
    const spec = { steps: 4, draftedTokens: 16, acceptedTokens: 12, acceptanceRate: 0.75, meanAcceptedTokens: 3, finalNumAssistantTokens: 5 };
    expect(formatTurn({ promptTokens: 1, newTokens: 16, seconds: 1, tokensPerSecond: 16, timeToFirstTokenMs: 10, finishReason: 'stop', speculative: spec })).toBe(
      '16 tokens in 1.00 s (16.0 tokens/s, TTFT 10 ms, draft acceptance 75% (3.00 accepted per step of 4.0 drafted, 4 steps))',
    );
    expect(formatTurn({ promptTokens: 1, newTokens: 20, seconds: 2, tokensPerSecond: 10.04, timeToFirstTokenMs: 150.4, finishReason: 'length' })).toBe(
      '20 tokens in 2.00 s (10.0 tokens/s, TTFT 150 ms) [max_new_tokens reached]',
    );
  });
});

/** Calls get_weather after a user turn, and answers from the tool result after a tool turn. */
class ToolBackend extends EchoBackend {
  override async *stream(messages: Message[], _flags?: unknown, _signal?: unknown, opts: ReplyOptions = {}): AsyncIterable<ReplyPiece> {
    this.seen.push(messages);
    const last = messages.at(-1)!;
    if (last.role === 'tool') yield { kind: 'content', text: `It is ${last.content}.` };
    else if (opts.tools?.length) yield { kind: 'tool_call', call: { name: 'get_weather', arguments: '{"city":"Oslo"}' } };
  }
}

describe('ChatSession with tools', () => {
  it('keeps the call in the history, takes its result with !tool, and answers it', async () => {
    const b = new ToolBackend();
    const tools = [{ type: 'function' as const, function: { name: 'get_weather' } }];
    const s = new ChatSession(b, { tools });
    const pieces: ReplyPiece[] = [];
    await s.reply('Weather in Oslo?', (p) => pieces.push(p), new AbortController().signal);
    expect(pieces).toEqual([{ kind: 'tool_call', call: { name: 'get_weather', arguments: '{"city":"Oslo"}' } }]);
    const call = s.turns.at(-1)!.tool_calls![0] as { id: string; function: { name: string } };
    expect(s.pendingCalls).toEqual([call]);
    expect(await s.command('!tool 12 °C')).toEqual({ respond: true });
    expect(s.turns.at(-1)).toEqual({ role: 'tool', content: '12 °C', tool_call_id: call.id, name: 'get_weather' });
    pieces.length = 0;
    await s.respond((p) => pieces.push(p), new AbortController().signal);
    expect(pieces).toEqual([{ kind: 'content', text: 'It is 12 °C.' }]);
    expect(s.turns.map((m) => m.role)).toEqual(['user', 'assistant', 'tool', 'assistant']);
    await expect(s.command('!tool again')).rejects.toThrow(/no tool call is waiting/);
  });

  it('parses --tools and --tool-call-parser, refusing unknown parsers', () => {
    expect(parseChatArgs(['--tools', 'tools.json']).toolsFile).toBe('tools.json');
    expect(parseServeArgs(['--tool-call-parser', 'hermes']).toolCallParser).toBe('hermes');
    expect(() => parseServeArgs(['--tool-call-parser', 'xml'])).toThrow(/--tool-call-parser expects one of hermes, llama3_json, mistral, granite, harmony/);
  });
});

describe('structured replies in chat', () => {
  it('--json-schema FILE and !set response_format=json|text|FILE reach the backend; bad schemas are refused by keyword', async () => {
    expect(parseChatArgs(['--json-schema', 'person.json']).jsonSchema).toBe('person.json');
    expect(() => parseChatArgs(['--json-schema'])).toThrow(/--json-schema needs a value/);
    const dir = mkdtempSync(join(tmpdir(), 'chatschema-'));
    const good = join(dir, 'good.json');
    const bad = join(dir, 'bad.json');
    const schema = { type: 'object', properties: { name: { type: 'string', maxLength: 10 } }, required: ['name'] };
    writeFileSync(good, JSON.stringify(schema));
    writeFileSync(bad, JSON.stringify({ type: 'object', properties: { n: { type: 'number', multipleOf: 2 } } }));
    expect(await schemaFileFormat(good)).toEqual({ type: 'json_schema', json_schema: { name: 'schema', schema, strict: true } });
    await expect(schemaFileFormat(bad)).rejects.toThrow(/"multipleOf" at \/properties\/n\/multipleOf cannot be enforced/);
    await expect(schemaFileFormat(join(dir, 'missing.json'))).rejects.toThrow(UsageError);

    const b = new EchoBackend();
    const s = new ChatSession(b, { responseFormat: await schemaFileFormat(good) });
    const say = () => s.reply('x', () => {}, new AbortController().signal);
    await say();
    expect(((await s.command('!set response_format=json')) as { output: string }).output).toContain('format:   json (any JSON object)');
    await say();
    await s.command('!set response_format=text');
    await say();
    await expect(s.command(`!set response_format=${bad} top_k=3`)).rejects.toThrow(/multipleOf/);
    expect(s.flags.top_k).toBeUndefined();
    await s.command(`!set response_format=${good}`);
    expect(((await s.command('!status')) as { output: string }).output).toContain('format:   JSON schema');
    await say();
    expect(b.formats.map((f) => f?.type)).toEqual(['json_schema', 'json_object', undefined, 'json_schema']);
  });
});
