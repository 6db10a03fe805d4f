// Constrained decoding without a GPU: a seeded "model" whose logits are random every step,
// masked by the constraint, sampled or taken greedily, over the real Qwen3, Llama 3.1,
// Llama 2 and stories260K vocabularies. Every output must end with EOS, parse, and validate
// against its schema (Ajv, an independent JSON Schema validator).
import { join } from 'node:path';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { describe, expect, it } from 'vitest';
import { directorySource } from '@webgpu-chat/engine';
import { argmax, compileConstraint, ConstraintError, checkSchema, MAX_JSON_WHITESPACE, sampleFromLogits, SeededRandom, ChatTokenizer, type ConstraintSpec } from '../src/index.ts';
import { integerRangeRegExp, MAX_JSON_INTEGER } from '../src/constraint/int-range.ts';
import { loadTokenizer, repoRoot } from './fixtures.ts';
import { SCHEMAS } from './schemas.ts';

const ajv = new Ajv2020({ strict: false });

/** Standard-normal-ish logits scaled by `spread`, seeded. */
function randomLogits(rng: SeededRandom, n: number, spread: number): Float32Array {
  const l = new Float32Array(n);
  for (let i = 0; i < n; i++) l[i] = (rng.next() + rng.next() + rng.next() - 1.5) * spread;
  return l;
}

const sampled = { do_sample: true, temperature: 1, top_k: 0, top_p: 1, min_p: 0, repetition_penalty: 1 };
const greedy = { ...sampled, do_sample: false };

interface Run {
  ids: number[];
  done: boolean;
}

/** Generates under the constraint from random logits until EOS or `max` tokens. */
async function run(tokenizer: ChatTokenizer, spec: ConstraintSpec, seed: number, mode: 'sampled' | 'greedy', eos: number, max = 400): Promise<Run> {
  const vocabSize = tokenizer.vocabSize;
  const c = await compileConstraint(spec, tokenizer, vocabSize);
  const m = await c.matcher([eos]);
  const rng = new SeededRandom(seed);
  const ids: number[] = [];
  try {
    while (!m.done && ids.length < max) {
      const logits = randomLogits(rng, vocabSize, 4);
      await m.mask(logits);
      let id = sampleFromLogits(logits, mode === 'sampled' ? sampled : greedy, rng);
      if (!(logits[id]! > -Infinity)) id = argmax(logits);
      m.accept(id);
      ids.push(id);
    }
    return { ids, done: m.done };
  } finally {
    m.dispose();
    c.dispose();
  }
}

/** The longest run of whitespace outside JSON strings. */
function longestWhitespace(json: string): number {
  let best = 0;
  let cur = 0;
  let inString = false;
  for (let i = 0; i < json.length; i++) {
    const ch = json[i]!;
    if (inString) {
      if (ch === '\\') i++;
      else if (ch === '"') inString = false;
      continue;
    }
    if (ch === '"') inString = true;
    cur = /\s/.test(ch) ? cur + 1 : 0;
    best = Math.max(best, cur);
  }
  return best;
}

const stories = () => ChatTokenizer.load(directorySource(join(repoRoot, 'models', 'stories260K')));
const TOKENIZERS = {
  qwen3: () => loadTokenizer('qwen3'),
  llama3_1: () => loadTokenizer('llama3_1'),
  llama2: () => loadTokenizer('llama2'),
  stories260K: stories,
};

describe.each(Object.keys(TOKENIZERS) as (keyof typeof TOKENIZERS)[])('constrained JSON on the %s vocabulary', (name) => {
  it.each(Object.keys(SCHEMAS))('schema %s: every seed, sampled and greedy, ends with EOS and validates', async (schemaName) => {
    const tokenizer = await TOKENIZERS[name]();
    const eos = tokenizer.eos!.id;
    const validate = ajv.compile(SCHEMAS[schemaName] as object);
    for (const seed of [1, 2, 3]) {
      for (const mode of ['sampled', 'greedy'] as const) {
        const r = await run(tokenizer, { schema: SCHEMAS[schemaName]! }, seed, mode, eos);
        const text = tokenizer.decode(r.ids, { skipSpecialTokens: true });
        expect(r.done, `${mode} seed ${seed} did not finish: ${text}`).toBe(true);
        expect(r.ids.at(-1)).toBe(eos);
        const value: unknown = JSON.parse(text);
        expect(validate(value), `${text}: ${ajv.errorsText(validate.errors)}`).toBe(true);
        expect(longestWhitespace(text)).toBeLessThanOrEqual(MAX_JSON_WHITESPACE);
      }
    }
  });

  it('json_object: an object with bounded whitespace (greedy), and forced prefix and suffix', async () => {
    const tokenizer = await TOKENIZERS[name]();
    const eos = tokenizer.eos!.id;
    // Greedy on random logits: any object; strings may run long, so the test asks only that
    // what came out is a prefix of an object with whitespace bounded.
    for (const schema of [true, { type: 'object', properties: { meta: {}, list: { type: 'array' } }, required: ['meta', 'list'] }] as const) {
      for (const seed of [5, 6]) {
        const r = await run(tokenizer, { schema }, seed, 'greedy', eos, 120);
        const text = tokenizer.decode(r.ids, { skipSpecialTokens: true });
        expect(text.trimStart().startsWith('{')).toBe(true);
        expect(longestWhitespace(text), text).toBeLessThanOrEqual(MAX_JSON_WHITESPACE);
        if (r.done) expect(typeof JSON.parse(text)).toBe('object');
      }
    }

    const spec = { schema: SCHEMAS.optional!, prefix: '<call>', suffix: '</call>' };
    const t = await run(tokenizer, spec, 7, 'sampled', eos);
    expect(t.done).toBe(true);
    const out = tokenizer.decode(t.ids, { skipSpecialTokens: true });
    const prefixIds = tokenizer.encode('<call>', { addSpecialTokens: false });
    const suffixIds = tokenizer.encode('</call>', { addSpecialTokens: false });
    expect(t.ids.slice(0, prefixIds.length)).toEqual(prefixIds);
    expect(t.ids.slice(-suffixIds.length - 1, -1)).toEqual(suffixIds);
    const inner = tokenizer.decode(t.ids.slice(prefixIds.length, -suffixIds.length - 1), { skipSpecialTokens: true });
    expect(ajv.validate(SCHEMAS.optional as object, JSON.parse(inner)), out).toBe(true);
  });
});

describe('integer ranges', () => {
  it('match exactly the integers within their bounds', () => {
    const cases: [number, number][] = [[0, 150], [0, 100], [1, 99], [-9, 9], [7, 1234], [-150, 150], [100, 120], [-1000, -5], [0, 0], [-3, -3], [19, 1000], [999, 1001], [5, 5000]];
    for (const [lo, hi] of cases) {
      const re = integerRangeRegExp(lo, hi);
      for (let v = -6000; v <= 6000; v++) {
        if (re.test(String(v)) !== (v >= lo && v <= hi)) throw new Error(`[${lo}, ${hi}] ${v}: ${re}`);
      }
      expect(re.test('01')).toBe(false);
      expect(re.test('-0')).toBe(false);
    }
    const safe = integerRangeRegExp(-MAX_JSON_INTEGER, MAX_JSON_INTEGER);
    for (const v of [0, 9, -9, 10, 1e15, MAX_JSON_INTEGER, -MAX_JSON_INTEGER]) expect(safe.test(String(v)), String(v)).toBe(true);
    for (const v of ['9007199254740992', '-9007199254740992', '10000000000000000']) expect(safe.test(v), v).toBe(false);
  });
});

describe('forced special tokens', () => {
  it('a prefix naming a special token forces that token (Qwen3 <tool_call>)', async () => {
    const tokenizer = await loadTokenizer('qwen3');
    const id = tokenizer.tokenToId('<tool_call>')!;
    const r = await run(tokenizer, { schema: { type: 'object', properties: { a: { type: 'boolean' } }, required: ['a'], additionalProperties: false }, prefix: '<tool_call>\n', suffix: '\n</tool_call>' }, 3, 'sampled', tokenizer.eos!.id);
    expect(r.ids[0]).toBe(id);
    expect(r.done).toBe(true);
    expect(tokenizer.decode(r.ids)).toMatch(/^<tool_call>\n\s*\{\s*"a"\s*:\s*(true|false)\s*\}\s*\n<\/tool_call><\|im_end\|>$/);
  });

  it('a required tool call: one of several functions, between Qwen3\'s tool-call markers', async () => {
    const tokenizer = await loadTokenizer('qwen3');
    const call = (name: string, args: object) => ({ type: 'object', properties: { name: { const: name }, arguments: args }, required: ['name', 'arguments'], additionalProperties: false });
    const schema = {
      anyOf: [call('get_weather', { type: 'object', properties: { city: { type: 'string', maxLength: 10 }, days: { type: 'integer', minimum: 1, maximum: 7 } }, required: ['city'] }), call('get_time', { type: 'object', properties: {} })],
    };
    const names = new Set<string>();
    for (const seed of [1, 2, 3, 4, 5, 6]) {
      const r = await run(tokenizer, { schema, prefix: '<tool_call>\n', suffix: '\n</tool_call>' }, seed, 'sampled', tokenizer.eos!.id);
      expect(r.done).toBe(true);
      const text = tokenizer.decode(r.ids);
      const m = /^<tool_call>\n([\s\S]*)\n<\/tool_call><\|im_end\|>$/.exec(text);
      expect(m, text).not.toBeNull();
      const value = JSON.parse(m![1]!) as { name: string };
      expect(ajv.validate(schema, value), `${m![1]}: ${ajv.errorsText(ajv.errors)}`).toBe(true);
      names.add(value.name);
    }
    // A random model picks either function: both branches are reachable.
    expect(names).toEqual(new Set(['get_weather', 'get_time']));
  });

  it('a token the mask forbade is refused', async () => {
    const tokenizer = await loadTokenizer('qwen3');
    const c = await compileConstraint({ schema: { type: 'boolean' } }, tokenizer, tokenizer.vocabSize);
    const m = await c.matcher([tokenizer.eos!.id]);
    const logits = new Float32Array(tokenizer.vocabSize);
    await m.mask(logits);
    const allowed = [...logits.keys()].filter((i) => logits[i] === 0).map((i) => tokenizer.decode([i]));
    expect(allowed.length).toBeGreaterThan(0);
    expect(allowed.every((t) => /^\s*(t|tr|tru|true|f|fa|fal|fals|false)$/.test(t)), allowed.join('|')).toBe(true);
    expect(() => m.accept(tokenizer.encode('{')[0]!)).toThrow(ConstraintError);
    m.dispose();
    c.dispose();
  });
});

describe('schemas the engine refuses', () => {
  const refused = (schema: unknown) => {
    try {
      checkSchema(schema);
    } catch (e) {
      expect(e).toBeInstanceOf(ConstraintError);
      return e as ConstraintError;
    }
    throw new Error(`accepted ${JSON.stringify(schema)}`);
  };

  it('names the keyword and where it is', () => {
    expect(refused({ type: 'object', properties: { a: { type: 'number', multipleOf: 3 } } })).toMatchObject({ keyword: 'multipleOf', pointer: '/properties/a/multipleOf' });
    expect(refused({ oneOf: [{ type: 'string' }, { type: 'integer' }] }).message).toMatch(/"oneOf".*anyOf/);
    expect(refused({ type: 'string', format: 'email' })).toMatchObject({ keyword: 'format' });
    expect(refused({ type: 'array', uniqueItems: true })).toMatchObject({ keyword: 'uniqueItems' });
    expect(refused({ type: 'object', patternProperties: { '^x': {} } })).toMatchObject({ keyword: 'patternProperties' });
    expect(refused({ type: 'strin' })).toMatchObject({ keyword: 'type', pointer: '/type' });
    expect(refused({ type: 'object', required: 'a' })).toMatchObject({ keyword: 'required' });
    expect(refused({ type: 'string', maxLength: -1 })).toMatchObject({ keyword: 'maxLength' });
    expect(refused({ type: 'string', minLength: 5, maxLength: 2 })).toMatchObject({ keyword: 'minLength' });
    expect(refused({ type: 'string', pattern: '(' })).toMatchObject({ keyword: 'pattern' });
    expect(refused({ $ref: '#/$defs/missing' })).toMatchObject({ keyword: '$ref' });
    expect(refused({ $ref: 'https://example.com/s.json' })).toMatchObject({ keyword: '$ref' });
    expect(refused({ properties: { a: 3 } })).toMatchObject({ pointer: '/properties/a' });
    expect(refused('object').message).toMatch(/must be an object or a boolean/);
    // What XGrammar would accept and not enforce, or enforce into invalid JSON.
    expect(refused({ type: 'number', minimum: 0, maximum: 1 })).toMatchObject({ keyword: 'minimum' });
    expect(refused({ type: ['integer', 'null'], exclusiveMaximum: 3 })).toMatchObject({ keyword: 'exclusiveMaximum' });
    expect(refused({ type: 'object', required: ['a'] })).toMatchObject({ keyword: 'required', pointer: '/required' });
    expect(refused({ type: 'string', pattern: '^[a-z]+$', maxLength: 3 })).toMatchObject({ keyword: 'maxLength' });
    for (const p of ['^.{3}$', '^[^a]+$', '^\\S+$', '^[ -~]+$', '^a"b$', '^a\\\\b$', '^(?=a)a$', '^\\n$']) {
      expect(refused({ type: 'string', pattern: p }), p).toMatchObject({ keyword: 'pattern' });
    }
    for (const p of ['^[0-9]{5}$', '^\\d{2}-\\w+$', '^(ab|cd)+$', '^[a-zA-Z_][a-zA-Z0-9_]*$', '^\\(\\d+\\)$', '^[#-\\[]+$']) expect(() => checkSchema({ type: 'string', pattern: p }), p).not.toThrow();
  });

  it('compileConstraint rejects them too, before compiling', async () => {
    const tokenizer = await loadTokenizer('qwen3');
    await expect(compileConstraint({ schema: { type: 'object', not: {} } }, tokenizer, tokenizer.vocabSize)).rejects.toMatchObject({ name: 'ConstraintError', keyword: 'not' });
  });
});
