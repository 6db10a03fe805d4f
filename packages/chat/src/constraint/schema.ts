// The JSON Schema subset constrained decoding enforces, checked before compiling: each
// keyword is either enforced token by token (its output always validates, tested in
// constraint.test.ts against a JSON Schema validator), an annotation with no effect on
// validity, or refused with a ConstraintError naming it and where it is. XGrammar itself
// ignores some keywords it cannot enforce (oneOf's exclusivity, multipleOf, ...), which
// would let output through that fails validation: those are the refused ones.

import { ConstraintError } from '../errors.ts';
import { MAX_JSON_INTEGER } from './int-range.ts';

/** A JSON Schema: an object of keywords, or a boolean (true: anything; false: nothing). */
export type JsonSchema = boolean | { [keyword: string]: unknown };

const TYPES = ['object', 'array', 'string', 'number', 'integer', 'boolean', 'null'];

/** Keywords that describe and never constrain. */
const ANNOTATIONS = new Set(['title', 'description', 'default', 'examples', '$schema', '$id', '$comment', 'deprecated', 'readOnly', 'writeOnly']);

/** Why a keyword that JSON Schema defines is refused, where a reason helps the user. */
const REFUSED: Record<string, string> = {
  oneOf: 'exactly-one-of cannot be enforced while generating; use anyOf',
  allOf: 'schema intersection is not supported; merge the schemas',
  not: 'negation cannot be enforced while generating',
  if: 'conditional schemas are not supported',
  multipleOf: 'multiples cannot be enforced while generating',
  uniqueItems: 'uniqueness cannot be enforced while generating',
  format: 'formats are not enforced; use pattern',
};

type Checker = (value: unknown, at: string, walk: (s: unknown, at: string) => void) => void;

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const isCount = (v: unknown): v is number => Number.isInteger(v) && (v as number) >= 0;

function bad(keyword: string, at: string, what: string): never {
  throw new ConstraintError(`Invalid JSON schema: "${keyword}" at ${at || '/'} ${what}`, keyword, at);
}

const count: Checker = (v, at) => {
  if (!isCount(v)) bad(at.split('/').at(-1)!, at, `must be a non-negative integer, got ${JSON.stringify(v)}`);
};
const number: Checker = (v, at) => {
  if (typeof v !== 'number' || !Number.isFinite(v)) bad(at.split('/').at(-1)!, at, `must be a number, got ${JSON.stringify(v)}`);
};
const schemaMap: Checker = (v, at, walk) => {
  if (!isObject(v)) bad(at.split('/').at(-1)!, at, 'must be an object of schemas');
  for (const [k, s] of Object.entries(v)) walk(s, `${at}/${escape(k)}`);
};
const schemaList: Checker = (v, at, walk) => {
  if (!Array.isArray(v) || v.length === 0) bad(at.split('/').at(-1)!, at, 'must be a non-empty array of schemas');
  v.forEach((s, i) => walk(s, `${at}/${i}`));
};

/** The enforced keywords and the shape of their values. */
const ENFORCED: Record<string, Checker> = {
  type: (v, at) => {
    const list = Array.isArray(v) ? v : [v];
    if (list.length === 0 || !list.every((t) => typeof t === 'string' && TYPES.includes(t))) bad('type', at, `must be one of ${TYPES.join(', ')} or a list of them, got ${JSON.stringify(v)}`);
  },
  enum: (v, at) => {
    if (!Array.isArray(v) || v.length === 0) bad('enum', at, 'must be a non-empty array');
  },
  const: () => {},
  properties: schemaMap,
  required: (v, at) => {
    if (!Array.isArray(v) || !v.every((k) => typeof k === 'string')) bad('required', at, 'must be an array of property names');
  },
  additionalProperties: (v, at, walk) => walk(v, at),
  items: (v, at, walk) => {
    if (Array.isArray(v)) bad('items', at, 'must be one schema (an array of schemas is prefixItems)');
    walk(v, at);
  },
  prefixItems: schemaList,
  minItems: count,
  maxItems: count,
  minLength: count,
  maxLength: count,
  pattern: (v, at) => {
    if (typeof v !== 'string') bad('pattern', at, 'must be a regular expression string');
    try {
      new RegExp(v, 'u');
    } catch (e) {
      bad('pattern', at, `is not a valid regular expression: ${(e as Error).message}`);
    }
    const unsafe = unsafePatternPart(v);
    if (unsafe) throw new ConstraintError(`JSON schema keyword "pattern" at ${at} cannot be enforced: ${unsafe} could match a quote, backslash or control character, which the engine would write into the JSON unescaped; use explicit character classes`, 'pattern', at);
  },
  minimum: number,
  maximum: number,
  exclusiveMinimum: number,
  exclusiveMaximum: number,
  anyOf: schemaList,
  $ref: (v, at) => {
    if (typeof v !== 'string' || !/^#(\/(\$defs|definitions)\/[^/]+)?$/.test(v)) bad('$ref', at, `must point into this schema's $defs or definitions ("#/$defs/Name"), got ${JSON.stringify(v)}`);
  },
  $defs: schemaMap,
  definitions: schemaMap,
};

/**
 * The part of a regular expression that could match '"', '\\' or a control character
 * (XGrammar matches a pattern against the raw JSON text between the quotes, unescaped), or
 * undefined when there is none. Conservative: '.', negated classes and \\D \\W \\S \\s are out.
 */
export function unsafePatternPart(pattern: string): string | undefined {
  const unsafeCode = (c: number) => c < 0x20 || c === 0x22 || c === 0x5c;
  // Escapes that stand for themselves (punctuation) or for safe classes (\d, \w).
  const safeEscape = (c: string) => /[dw.\-+*?()[\]{}|^$\/]/.test(c);
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i]!;
    if (c === '\\') {
      const e = pattern[++i] ?? '';
      if (!safeEscape(e)) return `the escape \\${e}`;
      continue;
    }
    if (c === '.') return "'.'";
    if (c === '(' && pattern[i + 1] === '?' && pattern[i + 2] !== ':') return 'a lookaround or named group';
    if (c === '[') {
      if (pattern[i + 1] === '^') return 'a negated character class';
      let prev = -1;
      for (i++; i < pattern.length && pattern[i] !== ']'; i++) {
        let ch = pattern[i]!;
        if (ch === '\\') {
          const e = pattern[++i] ?? '';
          if (!safeEscape(e)) return `the escape \\${e}`;
          prev = e === 'd' || e === 'w' ? -1 : e.charCodeAt(0);
          continue;
        }
        if (ch === '-' && prev >= 0 && pattern[i + 1] !== ']') {
          let hi = pattern[++i]!;
          if (hi === '\\') hi = pattern[++i] ?? '';
          const top = hi.codePointAt(0)!;
          if ((prev <= 0x22 && top >= 0x22) || (prev <= 0x5c && top >= 0x5c) || prev < 0x20) return `the range ${String.fromCodePoint(prev)}-${hi}`;
          prev = -1;
          continue;
        }
        const code = ch.codePointAt(0)!;
        if (unsafeCode(code)) return `the character ${JSON.stringify(ch)}`;
        prev = code;
      }
      continue;
    }
    if (unsafeCode(c.codePointAt(0)!)) return `the character ${JSON.stringify(c)}`;
  }
  return undefined;
}

/** Pairs whose lower bound must not exceed the upper, or no value could satisfy the schema. */
const BOUNDS: [string, string][] = [
  ['minItems', 'maxItems'],
  ['minLength', 'maxLength'],
  ['minimum', 'maximum'],
];

function escape(key: string): string {
  return key.replace(/~/g, '~0').replace(/\//g, '~1');
}

/**
 * Throws a ConstraintError naming the first keyword that is malformed or cannot be enforced,
 * with its JSON pointer; returns quietly for a schema whose every keyword is enforced.
 */
export function checkSchema(schema: unknown): asserts schema is JsonSchema {
  const defs = new Set<string>();
  const refs: [string, string][] = [];
  const walk = (s: unknown, at: string): void => {
    if (typeof s === 'boolean') return;
    if (!isObject(s)) throw new ConstraintError(`Invalid JSON schema: the schema at ${at || '/'} must be an object or a boolean, got ${JSON.stringify(s)}`, undefined, at);
    for (const [keyword, value] of Object.entries(s)) {
      const here = `${at}/${escape(keyword)}`;
      if (ANNOTATIONS.has(keyword)) continue;
      const check = ENFORCED[keyword];
      if (!check) {
        const why = REFUSED[keyword] ?? 'it is not supported by constrained decoding';
        throw new ConstraintError(`JSON schema keyword "${keyword}" at ${here} cannot be enforced: ${why}`, keyword, here);
      }
      check(value, here, walk);
      if ((keyword === '$defs' || keyword === 'definitions') && at === '') for (const name of Object.keys(value as object)) defs.add(`#/${keyword}/${name}`);
      if (keyword === '$ref') refs.push([value as string, here]);
    }
    const types = s.type === undefined ? [] : Array.isArray(s.type) ? s.type : [s.type];
    for (const k of ['minimum', 'maximum', 'exclusiveMinimum', 'exclusiveMaximum']) {
      if (k in s && !(types.length === 1 && types[0] === 'integer')) {
        throw new ConstraintError(`JSON schema keyword "${k}" at ${at}/${k} cannot be enforced: bounds are enforced on "type": "integer" only`, k, `${at}/${k}`);
      }
    }
    if ('pattern' in s && ('minLength' in s || 'maxLength' in s)) {
      const k = 'minLength' in s ? 'minLength' : 'maxLength';
      throw new ConstraintError(`JSON schema keyword "${k}" at ${at}/${k} cannot be enforced beside "pattern": bound the pattern's repetition instead`, k, `${at}/${k}`);
    }
    if (Array.isArray(s.required)) {
      const props = isObject(s.properties) ? s.properties : {};
      const missing = (s.required as string[]).find((k) => !(k in props));
      // Output carries only listed properties, so a required one must be listed.
      if (missing !== undefined) bad('required', `${at}/required`, `names "${missing}", which "properties" does not define`);
    }
    for (const [lo, hi] of BOUNDS) {
      if (typeof s[lo] === 'number' && typeof s[hi] === 'number' && s[lo] > s[hi]) bad(lo, `${at}/${lo}`, `(${s[lo]}) exceeds ${hi} (${s[hi]}): no value can satisfy it`);
    }
  };
  walk(schema, '');
  for (const [ref, at] of refs) if (ref !== '#' && !defs.has(ref)) bad('$ref', at, `points to ${ref}, which the schema does not define`);
}

/** Name of the any-JSON-value definition engineSchema adds. */
const ANY = '__any_json_value';
const ANY_REF = { $ref: `#/$defs/${ANY}` };
/** Any JSON value, spelled out so that the engine's whitespace bound applies inside it too. */
const ANY_VALUE = {
  anyOf: [
    { type: 'null' },
    { type: 'boolean' },
    { type: 'number' },
    { type: 'string' },
    { type: 'array', items: ANY_REF },
    { type: 'object', additionalProperties: ANY_REF },
  ],
};

/** What engineSchema gives XGrammar, and the integer ranges whose placeholders the grammar gets instead. */
export interface EngineSchema {
  schema: Record<string, unknown>;
  /** Range i stands in the schema as the string constant integerPlaceholder(i). */
  integerRanges: [number, number][];
}

/** The constant an integer range stands as until its grammar rule replaces it. */
export function integerPlaceholder(i: number): string {
  return `__integer_range_${i}__`;
}

/** The integers a schema of type integer allows: its bounds, within what JavaScript keeps exactly. */
function integerBounds(s: Record<string, unknown>, at: string): [number, number] {
  const num = (k: string) => (typeof s[k] === 'number' ? (s[k] as number) : undefined);
  const lo = Math.max(-MAX_JSON_INTEGER, Math.ceil(num('minimum') ?? -Infinity), Math.floor(num('exclusiveMinimum') ?? -Infinity) + 1);
  const hi = Math.min(MAX_JSON_INTEGER, Math.floor(num('maximum') ?? Infinity), Math.ceil(num('exclusiveMaximum') ?? Infinity) - 1);
  if (lo > hi) throw new ConstraintError(`Invalid JSON schema: no integer lies within the bounds at ${at || '/'}`, 'minimum' in s ? 'minimum' : 'exclusiveMinimum', at);
  return [lo, hi];
}

/**
 * A checked schema as XGrammar (strict mode) is given it, meaning the same or less:
 * - an integer becomes a placeholder for its range (±2^53 - 1 without bounds), written as
 *   digit patterns into the grammar (int-range.ts);
 * - "any value" (true, {}, an array without items, additionalProperties: true) becomes an
 *   explicit recursive definition: XGrammar's built-in one ignores the whitespace bound;
 * - minLength/maxLength become a pattern of characters that need no escaping: XGrammar's
 *   own length rule lets control characters through unescaped (invalid JSON);
 * - `true` for the whole schema (json_object) means any object.
 */
export function engineSchema(schema: JsonSchema | true): EngineSchema {
  const integerRanges: [number, number][] = [];
  const rewrite = (s: unknown, at = ''): unknown => {
    if (s === true) return ANY_REF;
    if (!isObject(s)) return s;
    if (s.type === 'integer' && !('enum' in s) && !('const' in s)) {
      integerRanges.push(integerBounds(s, at));
      return { const: integerPlaceholder(integerRanges.length - 1) };
    }
    const keys = Object.keys(s).filter((k) => !ANNOTATIONS.has(k) && k !== '$defs' && k !== 'definitions');
    if (keys.length === 0) return ANY_REF;
    const out: Record<string, unknown> = { ...s };
    const map = (k: string) => {
      if (isObject(out[k])) out[k] = Object.fromEntries(Object.entries(out[k] as object).map(([n, v]) => [n, rewrite(v, `${at}/${k}/${escape(n)}`)]));
    };
    map('properties');
    for (const k of ['anyOf', 'prefixItems']) if (Array.isArray(out[k])) out[k] = (out[k] as unknown[]).map((v, i) => rewrite(v, `${at}/${k}/${i}`));
    if ('additionalProperties' in out) out.additionalProperties = rewrite(out.additionalProperties, `${at}/additionalProperties`);
    const types = out.type === undefined ? [] : Array.isArray(out.type) ? out.type : [out.type];
    if ('items' in out) out.items = rewrite(out.items, `${at}/items`);
    else if (types.includes('array') && !('prefixItems' in out)) out.items = ANY_REF;
    if ('minLength' in out || 'maxLength' in out) {
      out.pattern = `^[^\\x00-\\x1f"\\\\]{${(out.minLength as number | undefined) ?? 0},${(out.maxLength as number | undefined) ?? ''}}$`;
      delete out.minLength;
      delete out.maxLength;
    }
    return out;
  };
  const root = schema === true ? { type: 'object', additionalProperties: ANY_REF } : (rewrite(schema) as Record<string, unknown> | boolean);
  if (typeof root === 'boolean') return { schema: { $defs: { [ANY]: ANY_VALUE }, ...ANY_REF }, integerRanges };
  const defs = isObject(root.$defs) ? root.$defs : {};
  const definitions = isObject(root.definitions) ? root.definitions : undefined;
  const rewritten = (d: Record<string, unknown>, k: string) => Object.fromEntries(Object.entries(d).map(([n, v]) => [n, rewrite(v, `/${k}/${escape(n)}`)]));
  return { schema: { ...root, $defs: { ...rewritten(defs, '$defs'), [ANY]: ANY_VALUE }, ...(definitions ? { definitions: rewritten(definitions, 'definitions') } : {}) }, integerRanges };
}
