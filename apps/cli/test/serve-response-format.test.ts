// response_format on /v1/chat/completions over the bundled stories260K: json_schema and
// json_object replies that parse and validate (Ajv), streamed and not, greedy and sampled,
// several choices; and the 400s for formats and schemas the server cannot honour.
import { Ajv2020 } from 'ajv/dist/2020.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SCHEMAS } from '@webgpu-chat/chat/testing';
import { bundledModelPath } from '../src/args.ts';
import { loadLocalModel, type LoadedModel } from '../src/backend.ts';
import { startChatServer, type ChatServer } from '../src/server.ts';
import { postJsonTo, type Reply } from './http-client.ts';

const MODEL = 'stories260K';
const ajv = new Ajv2020({ strict: false });
const messages = [{ role: 'user', content: 'Once upon a time' }];

let loaded: LoadedModel;
let srv: ChatServer;

beforeAll(async () => {
  loaded = await loadLocalModel(bundledModelPath(), { dtype: 'auto', modelId: MODEL, maxContext: 512, parallel: 2, log: () => {} });
  srv = await startChatServer({ modelId: MODEL, port: 0 });
  srv.setModel({ model: loaded.pipe });
});

afterAll(async () => {
  await srv?.close();
  loaded?.pipe.dispose();
});

const chat = (body: Record<string, unknown>) => postJsonTo(`${srv.url}/v1/chat/completions`, { model: MODEL, messages, max_tokens: 400, ...body });
const schemaFormat = (name: string, schema: unknown = SCHEMAS[name]) => ({ type: 'json_schema', json_schema: { name, schema, strict: true } });

/** The content of an SSE reply's chunks, and its finish reason. */
function streamed(r: Reply): { content: string; finish: string } {
  const chunks = r.text
    .split('\n\n')
    .filter((l) => l.startsWith('data: {'))
    .map((l) => JSON.parse(l.slice(6)));
  const choices = chunks.flatMap((c) => c.choices);
  return { content: choices.map((c) => c.delta.content ?? '').join(''), finish: choices.at(-1).finish_reason };
}

describe('response_format on chat completions', () => {
  it.each(['nested', 'arrays', 'optional', 'refs'])('json_schema %s: greedy and sampled, streamed and not, validate', async (name) => {
    for (const sampling of [{ temperature: 0 }, { temperature: 1, seed: 3 }]) {
      const r = await chat({ response_format: schemaFormat(name), ...sampling });
      expect(r.status, r.text).toBe(200);
      const { content } = r.json.choices[0].message;
      expect(r.json.choices[0].finish_reason).toBe('stop');
      expect(ajv.validate(SCHEMAS[name] as object, JSON.parse(content)), `${content}: ${ajv.errorsText(ajv.errors)}`).toBe(true);
      const s = await chat({ response_format: schemaFormat(name), ...sampling, stream: true });
      expect(streamed(s)).toEqual({ content, finish: 'stop' });
    }
  });

  it('with logprobs and logit_bias: each token of the constrained reply has its log-probability', async () => {
    const r = await chat({ response_format: schemaFormat('optional'), temperature: 0, logprobs: true, top_logprobs: 2, logit_bias: { '13': -5 } });
    expect(r.status, r.text).toBe(200);
    const c = r.json.choices[0];
    expect(ajv.validate(SCHEMAS.optional as object, JSON.parse(c.message.content))).toBe(true);
    expect(c.finish_reason).toBe('stop');
    expect(c.logprobs.content).toHaveLength(r.json.usage.completion_tokens);
    for (const t of c.logprobs.content) expect(t.logprob).toBeLessThanOrEqual(0);
  });

  it('json_object: n choices, each an object', async () => {
    const r = await chat({ response_format: { type: 'json_object' }, temperature: 0.7, seed: 9, n: 2, max_tokens: 200 });
    expect(r.status, r.text).toBe(200);
    for (const c of r.json.choices) {
      if (c.finish_reason === 'stop') expect(JSON.parse(c.message.content)).toBeTypeOf('object');
      else expect(c.message.content.trimStart().startsWith('{')).toBe(true);
    }
  });
});

describe('response_format refusals name what is wrong', () => {
  it.each([
    ['an unknown type', { type: 'bogus' }, 'response_format.type', null, /one of text, json_object, json_schema/],
    ['a non-object', 'json', 'response_format', null, /must be an object/],
    ['json_schema without a schema', { type: 'json_schema', json_schema: { name: 'x' } }, 'response_format.json_schema.schema', null, /required/],
    ['json_schema without a name', { type: 'json_schema', json_schema: { schema: { type: 'object' } } }, 'response_format.json_schema.name', null, /name/],
    ['an unknown json_schema field', { type: 'json_schema', json_schema: { name: 'x', schema: {}, strictness: 1 } }, 'response_format.json_schema.strictness', 'unknown_parameter', /strictness/],
    ['an unknown field', { type: 'json_object', schema: {} }, 'response_format.schema', 'unknown_parameter', /schema/],
    ['an unenforceable keyword', schemaFormat('x', { type: 'object', properties: { n: { type: 'number', multipleOf: 2 } } }), 'response_format.json_schema.schema', 'unsupported_schema_keyword', /"multipleOf" at \/properties\/n\/multipleOf/],
    ['a pattern that could break the JSON', schemaFormat('x', { type: 'string', pattern: '^.*$' }), 'response_format.json_schema.schema', 'unsupported_schema_keyword', /"pattern"/],
    ['bounds on a number', schemaFormat('x', { type: 'number', maximum: 3 }), 'response_format.json_schema.schema', 'unsupported_schema_keyword', /"maximum".*integer/],
    ['an invalid schema', schemaFormat('x', { type: 'strin' }), 'response_format.json_schema.schema', 'unsupported_schema_keyword', /"type" at \/type/],
    ['a missing $ref target', schemaFormat('x', { $ref: '#/$defs/nope' }), 'response_format.json_schema.schema', 'unsupported_schema_keyword', /\$ref/],
  ])('%s is a 400', async (_what, rf, param, code, message) => {
    const r = await chat({ response_format: rf, max_tokens: 2 });
    expect(r.status).toBe(400);
    expect(r.json.error).toMatchObject({ type: 'invalid_request_error', param, ...(code ? { code } : {}) });
    expect(r.json.error.message).toMatch(message);
  });

  it('text completions do not take response_format', async () => {
    const r = await postJsonTo(`${srv.url}/v1/completions`, { model: MODEL, prompt: 'Once', response_format: { type: 'json_object' } });
    expect(r.status).toBe(400);
    expect(r.json.error).toMatchObject({ param: 'response_format', code: 'unknown_parameter' });
  });
});
