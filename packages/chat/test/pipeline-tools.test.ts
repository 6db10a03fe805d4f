// The pipeline face of tool calling: offered tools, a chat's reply comes back as an assistant
// message with content, reasoning_content and tool_calls (OpenAI's shape), ready to be sent
// back with the tool's result. The model is the Batch double scripted to answer as Qwen3 does.
import { describe, expect, it } from 'vitest';
import { ChatTemplates, createTextGenerationPipeline, type Message } from '../src/index.ts';
import { FakeBatch, fakeModel } from './fake-batch.ts';
import { loadTokenizer } from './fixtures.ts';

const WEATHER = { type: 'function', function: { name: 'get_weather', parameters: { type: 'object', properties: { city: { type: 'string' } } } } };
const REPLY = '<think>\nA tool knows.\n</think>\n\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Bern"}}\n</tool_call>';

describe('pipeline: tools', () => {
  it('returns the parsed call, and the raw text when no tools are offered', async () => {
    const tok = await loadTokenizer('qwen3');
    const reply = [...tok.encode(REPLY, { addSpecialTokens: false }), tok.eos!.id];
    let promptLength = 0;
    const batch = new FakeBatch((cached) => reply[cached.length - promptLength] ?? tok.eos!.id, tok.vocabSize, 1024, 4);
    const pipe = createTextGenerationPipeline(fakeModel(batch), { tokenizer: tok, templates: ChatTemplates.fromConfig(tok.config), generationConfig: {} });
    const chat: Message[] = [{ role: 'user', content: 'Weather in Bern?' }];
    const run = async (tools?: unknown[]) => {
      promptLength = tok.encode(pipe.renderPrompt(chat, tools ? { tools } : {}).text, { addSpecialTokens: false }).length;
      return (await pipe(chat, tools ? { tools } : {}))[0].generated_text.at(-1)!;
    };
    const m = await run([WEATHER]);
    expect(m).toMatchObject({ role: 'assistant', content: '', reasoning_content: 'A tool knows.' });
    expect(m.tool_calls).toEqual([{ id: expect.stringMatching(/^call_\w{24}$/), type: 'function', function: { name: 'get_weather', arguments: '{"city":"Bern"}' } }]);
    // The message goes back into the chat as it is, with the result, and renders.
    const next = [...chat, m, { role: 'tool' as const, content: '8 °C', tool_call_id: (m.tool_calls![0] as { id: string }).id }];
    expect(pipe.renderPrompt(next, { tools: [WEATHER] }).text).toContain('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Bern"}}\n</tool_call>');
    expect(await run()).toEqual({ role: 'assistant', content: REPLY });
    pipe.dispose();
  });
});
