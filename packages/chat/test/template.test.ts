import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { ChatInputError, ChatTemplates, messagesForTemplate, renderPlain, TemplateError, type Message, type RenderOptions } from '../src/index.ts';
import { hasPython, loadTokenizer, memorySource, pythonReference, type ReferenceCase, type TokenizerName } from './fixtures.ts';

// Mistral-style [INST] template with raise_exception, for the Llama 2 tokenizer (whose
// config ships no template): the pipeline's chatTemplate option supplies one like it.
const INST_TEMPLATE =
  "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}" +
  "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}" +
  "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}" +
  "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}";

const WEATHER_TOOL = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'Current weather in a city',
    parameters: { type: 'object', properties: { city: { type: 'string', description: 'City name' } }, required: ['city'] },
  },
};

const SYSTEM_CHAT: Message[] = [
  { role: 'system', content: 'You are a helpful assistant. Réponds en français si on te parle français.' },
  { role: 'user', content: 'Bonjour ! Quelle est la capitale du Japon ? 🗾' },
  { role: 'assistant', content: 'La capitale du Japon est Tokyo（東京）.' },
  { role: 'user', content: 'Et combien d’habitants ?' },
];

const TOOL_CHAT: Message[] = [
  { role: 'system', content: 'Use tools when useful.' },
  { role: 'user', content: 'Weather in Zürich?' },
  { role: 'assistant', content: '', tool_calls: [{ type: 'function', function: { name: 'get_weather', arguments: { city: 'Zürich' } } }] },
  { role: 'tool', content: '{"temp_c": 21, "sky": "☀️"}', name: 'get_weather' },
];

// OpenAI-shaped tool turns: arguments as JSON text, call ids, tool results naming their call.
const OPENAI_TOOL_CHAT: Message[] = [
  { role: 'system', content: 'You can look things up.' },
  { role: 'user', content: 'Weather in Zürich and the time in Tokyo?' },
  {
    role: 'assistant',
    content: '',
    tool_calls: [
      { id: 'call12345', type: 'function', function: { name: 'get_weather', arguments: '{"city": "Zürich", "days": 2}' } },
      { id: 'call67890', type: 'function', function: { name: 'get_time', arguments: '{"zone":"Asia/Tokyo"}' } },
    ],
  },
  { role: 'tool', content: '{"temp_c": 21}', tool_call_id: 'call12345' },
  { role: 'tool', content: '09:41', tool_call_id: 'call67890' },
];
const TIME_TOOL = { type: 'function', function: { name: 'get_time', description: 'Local time', parameters: { type: 'object', properties: { zone: { type: 'string' } }, required: ['zone'] } } };
const ONE_CALL_CHAT: Message[] = [
  { role: 'user', content: 'Weather in Oslo?' },
  { role: 'assistant', content: '', tool_calls: [{ id: 'call12345', type: 'function', function: { name: 'get_weather', arguments: '{"city": "Oslo"}' } }] },
  { role: 'tool', content: 'sunny', tool_call_id: 'call12345' },
];
const template = (name: string) => readFileSync(new URL(`./templates/${name}.jinja`, import.meta.url), 'utf8');

interface Case {
  tokenizer: TokenizerName;
  what: string;
  messages: Message[];
  opts: RenderOptions;
  template?: string;
}

const CASES: Case[] = [
  { tokenizer: 'qwen3', what: 'system + multi-turn, non-ASCII', messages: SYSTEM_CHAT, opts: { add_generation_prompt: true } },
  { tokenizer: 'qwen3', what: 'no generation prompt', messages: SYSTEM_CHAT, opts: { add_generation_prompt: false } },
  { tokenizer: 'qwen3', what: 'enable_thinking=false', messages: SYSTEM_CHAT.slice(1, 2), opts: { add_generation_prompt: true, chat_template_kwargs: { enable_thinking: false } } },
  { tokenizer: 'qwen3', what: 'tools, tool call and tool result', messages: TOOL_CHAT, opts: { add_generation_prompt: true, tools: [WEATHER_TOOL] } },
  { tokenizer: 'qwen3', what: 'reasoning in a previous turn', messages: [...SYSTEM_CHAT.slice(0, 2), { role: 'assistant', content: '<think>\nJapan…\n</think>\n\nTokyo.' }, { role: 'user', content: 'Merci' }], opts: { add_generation_prompt: true } },
  { tokenizer: 'qwen3', what: 'continue_final_message', messages: [...SYSTEM_CHAT.slice(0, 2), { role: 'assistant', content: 'La capitale est ' }], opts: { continue_final_message: true } },
  { tokenizer: 'llama3_1', what: 'system + multi-turn, non-ASCII', messages: SYSTEM_CHAT, opts: { add_generation_prompt: true } },
  { tokenizer: 'llama3_1', what: 'continue_final_message', messages: [SYSTEM_CHAT[1]!, { role: 'assistant', content: 'Tokyo, ' }], opts: { continue_final_message: true } },
  { tokenizer: 'llama2', what: '[INST] template, multi-turn, CJK', messages: SYSTEM_CHAT.slice(1), opts: {}, template: INST_TEMPLATE },
  { tokenizer: 'qwen3', what: 'OpenAI-shaped parallel calls and results', messages: OPENAI_TOOL_CHAT, opts: { add_generation_prompt: true, tools: [WEATHER_TOOL, TIME_TOOL] } },
  { tokenizer: 'qwen3', what: 'tools offered, no call yet', messages: SYSTEM_CHAT.slice(0, 2), opts: { add_generation_prompt: true, tools: [WEATHER_TOOL] } },
  { tokenizer: 'llama3_1', what: 'Llama 3.1 tools template: tools in the user turn', messages: SYSTEM_CHAT.slice(0, 2), opts: { add_generation_prompt: true, tools: [WEATHER_TOOL, TIME_TOOL] }, template: template('llama3_1-tools') },
  { tokenizer: 'llama3_1', what: 'Llama 3.1 tools template: a call and its result', messages: ONE_CALL_CHAT, opts: { add_generation_prompt: true, tools: [WEATHER_TOOL] }, template: template('llama3_1-tools') },
  { tokenizer: 'llama2', what: 'Mistral v0.3 tools template: a call and its result', messages: ONE_CALL_CHAT, opts: { add_generation_prompt: true, tools: [WEATHER_TOOL, TIME_TOOL] }, template: template('mistral-tools') },
  // Gemma 3's template folds the system message into the first user turn.
  { tokenizer: 'gemma3', what: 'system + multi-turn, non-ASCII', messages: SYSTEM_CHAT, opts: { add_generation_prompt: true } },
  { tokenizer: 'gemma3', what: 'continue_final_message', messages: [SYSTEM_CHAT[1]!, { role: 'assistant', content: 'Tokyo, ' }], opts: { continue_final_message: true } },
];

async function render(c: Case): Promise<{ text: string; ids: number[] }> {
  const tok = await loadTokenizer(c.tokenizer);
  const templates = c.template ? new ChatTemplates({ default: c.template }) : ChatTemplates.fromConfig(tok.config);
  const text = templates.render(c.messages, tok, c.opts);
  return { text, ids: tok.encode(text, { addSpecialTokens: false }) };
}

describe.skipIf(!hasPython)('chat templates: text and ids match apply_chat_template', () => {
  it('renders every case as Transformers does', async () => {
    const ref = pythonReference(
      CASES.map((c): ReferenceCase => ({
        tokenizer: c.tokenizer,
        op: 'chat',
        // As `transformers serve` hands them to the template: arguments parsed.
        messages: messagesForTemplate(c.messages),
        add_generation_prompt: c.opts.add_generation_prompt ?? false,
        continue_final_message: c.opts.continue_final_message ?? false,
        ...(c.opts.tools ? { tools: c.opts.tools } : {}),
        ...(c.opts.chat_template_kwargs ? { kwargs: c.opts.chat_template_kwargs } : {}),
        ...(c.template ? { chat_template: c.template } : {}),
      })),
    );
    for (let i = 0; i < CASES.length; i++) {
      const c = CASES[i]!;
      const what = `${c.tokenizer}: ${c.what}`;
      expect(ref[i]!.error, what).toBeUndefined();
      const got = await render(c);
      expect(got.text, what).toBe(ref[i]!.text);
      expect(got.ids, what).toEqual(ref[i]!.ids);
    }
  });
});

describe('chat templates: behaviour', () => {
  it('gives the template its raise_exception message as a TemplateError', async () => {
    const tok = await loadTokenizer('llama2');
    const t = new ChatTemplates({ default: INST_TEMPLATE });
    const bad: Message[] = [{ role: 'assistant', content: 'hi' }];
    expect(() => t.render(bad, tok)).toThrow(TemplateError);
    expect(() => t.render(bad, tok)).toThrow(/Conversation roles must alternate/);
  });

  it('validates messages: unknown role, missing or non-string content, empty chat', async () => {
    const tok = await loadTokenizer('qwen3');
    const t = ChatTemplates.fromConfig(tok.config);
    expect(() => t.render([{ role: 'robot', content: 'x' } as unknown as Message], tok)).toThrow(/role "robot"; expected one of system, user, assistant, tool/);
    expect(() => t.render([{ role: 'user' } as unknown as Message], tok)).toThrow(/must have string content, got none/);
    expect(() => t.render([{ role: 'user', content: ['x'] } as unknown as Message], tok)).toThrow(ChatInputError);
    expect(() => t.render([], tok)).toThrow(/at least one message/);
    expect(() => t.render('hi' as unknown as Message[], tok)).toThrow(ChatInputError);
  });

  it('refuses continue_final_message with add_generation_prompt or without a final assistant turn', async () => {
    const tok = await loadTokenizer('qwen3');
    const t = ChatTemplates.fromConfig(tok.config);
    const chat: Message[] = [{ role: 'user', content: 'hi' }];
    expect(() => t.render(chat, tok, { continue_final_message: true })).toThrow(/last message is from the assistant/);
    expect(() => t.render([...chat, { role: 'assistant', content: 'x' }], tok, { continue_final_message: true, add_generation_prompt: true })).toThrow(/cannot both be set/);
  });

  it('errors clearly without a template; the plain fallback concatenates contents', async () => {
    const tok = await loadTokenizer('llama2');
    const t = ChatTemplates.fromConfig(tok.config);
    expect(t.isEmpty).toBe(true);
    expect(() => t.render([{ role: 'user', content: 'hi' }], tok)).toThrow(/no chat template.*templateFallback: 'plain'/);
    expect(renderPlain([{ role: 'user', content: 'Once upon a time' }, { role: 'assistant', content: ', there was' }])).toBe('Once upon a time, there was');
  });

  it('chooses the tool_use template when tools are given, and prefers chat_template.jinja', async () => {
    const tok = await loadTokenizer('qwen3');
    const named = ChatTemplates.fromConfig({ chat_template: [{ name: 'default', template: 'D{{ messages|length }}' }, { name: 'tool_use', template: 'T{{ tools|length }}' }] });
    const chat: Message[] = [{ role: 'user', content: 'hi' }];
    expect(named.render(chat, tok)).toBe('D1');
    expect(named.render(chat, tok, { tools: [WEATHER_TOOL, TIME_TOOL] })).toBe('T2');
    expect(() => ChatTemplates.fromConfig({ chat_template: [{ name: 'x' }] })).toThrow(TemplateError);
    const fromFile = await ChatTemplates.load(memorySource({ 'chat_template.jinja': 'J{{ bos_token is defined }}' }), { chat_template: 'ignored' });
    expect(fromFile.render(chat, tok)).toBe('Jfalse');
  });

  it('refuses tools a template would drop, malformed tools, and call arguments that are not a JSON object', async () => {
    const tok = await loadTokenizer('llama3_1');
    const noTools = ChatTemplates.fromConfig(tok.config);
    const chat: Message[] = [{ role: 'user', content: 'hi' }];
    expect(() => noTools.render(chat, tok, { tools: [WEATHER_TOOL] })).toThrow(/does not write tools into the prompt/);
    expect(noTools.render(chat, tok, { tools: [] })).toBe(noTools.render(chat, tok));
    const withTools = new ChatTemplates({ default: template('llama3_1-tools') });
    expect(() => withTools.render(chat, tok, { tools: [{ type: 'function', function: { name: 'bad name' } }] })).toThrow(/tools\[0\]\.function\.name must be/);
    expect(() => withTools.render(chat, tok, { tools: [{ type: 'code' }] })).toThrow(/tools\[0\]\.type must be "function"/);
    const call = (args: string) => [...chat, { role: 'assistant' as const, content: '', tool_calls: [{ type: 'function', function: { name: 'get_weather', arguments: args } }] }];
    expect(() => withTools.render(call('{"city": '), tok, { tools: [WEATHER_TOOL] })).toThrow(/Message 1: tool_calls\[0\]\.function\.arguments is not valid JSON/);
    expect(() => withTools.render(call('[1]'), tok, { tools: [WEATHER_TOOL] })).toThrow(/must encode a JSON object/);
    expect(messagesForTemplate(call('{"city": "Oslo"}'))[1]!.tool_calls).toEqual([{ type: 'function', function: { name: 'get_weather', arguments: { city: 'Oslo' } } }]);
  });

  it('passes extra kwargs, documents and strftime_now; reports parse errors', async () => {
    const tok = await loadTokenizer('llama3_1');
    const t = new ChatTemplates({ default: "{{ bos_token }}{{ flavour }}|{{ documents[0].title }}|{{ strftime_now('%Y') }}" });
    const out = t.render([{ role: 'user', content: 'x' }], tok, { chat_template_kwargs: { flavour: 'vanilla' }, documents: [{ title: 'Doc', text: '...' }] });
    expect(out).toBe(`<|begin_of_text|>vanilla|Doc|${new Date().getFullYear()}`);
    expect(() => new ChatTemplates({ default: '{% if %}' }).render([{ role: 'user', content: 'x' }], tok)).toThrow(/does not parse/);
  });
});
