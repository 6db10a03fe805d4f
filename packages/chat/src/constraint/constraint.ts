// Constrained decoding: the reply must be forced text, one JSON value that validates against
// a schema, forced text, then EOS. XGrammar gives the set of tokens that keep the JSON
// valid at each step (a bitmask over the vocabulary); the forced text and the end are token
// ids this module steps through itself, so a prefix such as '<tool_call>\n' or a special
// token like '[TOOL_CALLS]' is produced exactly as the tokenizer writes it.

import { ConstraintError } from '../errors.ts';
import type { ChatTokenizer } from '../tokenizer.ts';
import type { ResponseFormat } from '../types.ts';
import { integerRangeEbnf, MAX_JSON_INTEGER } from './int-range.ts';
import { checkSchema, engineSchema, integerPlaceholder, type JsonSchema } from './schema.ts';
import { Utf8Guard, type Utf8Table } from './utf8.ts';
import { engineFor, loadXgrammar, type XgrammarCompiledGrammar, type XgrammarMatcher } from './xgrammar.ts';

/**
 * Whitespace characters allowed between two JSON tokens: room for pretty-printing a few
 * levels deep, and a bound that keeps a model from spending its budget on spaces.
 */
export const MAX_JSON_WHITESPACE = 12;

/** What the output must be: optional forced text, one JSON value, optional forced text, then end of sequence. */
export interface ConstraintSpec {
  /** JSON Schema the value must validate against; `true` means any JSON object (response_format json_object). */
  schema: JsonSchema | true;
  /** Text forced before the JSON, tokenized with special tokens allowed (e.g. '<tool_call>\n' or '[TOOL_CALLS]'). */
  prefix?: string;
  /** Text forced after the JSON; then only EOS is allowed. */
  suffix?: string;
}

/** A constraint compiled for one tokenizer and logits width; it makes a matcher per sequence. */
export interface CompiledConstraint {
  readonly spec: ConstraintSpec;
  /** Length of the logits rows it masks. */
  readonly vocabSize: number;
  /** A matcher at the start of the output; `eos` are the ids that may end it. */
  matcher(eos: Iterable<number>): Promise<ConstraintMatcher>;
  /** Frees the compiled grammar (matchers already made keep working). */
  dispose(): void;
}

/** One sequence's place in the constraint. */
export interface ConstraintMatcher {
  /** Sets every token that may not come next to -Infinity, in place. */
  mask(logits: Float32Array): Promise<void>;
  /** Moves past a token; throws a ConstraintError for one the mask forbade. */
  accept(id: number): void;
  /** An EOS was accepted after the value and the suffix. */
  readonly done: boolean;
  /**
   * The ids that would complete the output if accepted next (after the value and the
   * suffix), so a matcher run elsewhere (serve's worker) can know `done` without a round trip.
   */
  readonly endingIds: readonly number[];
  dispose(): void;
}

/**
 * Checks the schema (a ConstraintError names a keyword that is malformed or cannot be
 * enforced) and compiles it for `tokenizer`'s vocabulary, `vocabSize` wide (the model's
 * logits row, which may be padded past the tokenizer's ids).
 */
export async function compileConstraint(spec: ConstraintSpec, tokenizer: ChatTokenizer, vocabSize: number): Promise<CompiledConstraint> {
  if (spec.schema !== true) checkSchema(spec.schema);
  if (spec.schema === false) throw new ConstraintError('The JSON schema `false` admits no value', undefined, '');
  const prefix = spec.prefix ? tokenizer.encode(spec.prefix, { addSpecialTokens: false }) : [];
  const suffix = spec.suffix ? tokenizer.encode(spec.suffix, { addSpecialTokens: false }) : [];
  for (const id of [...prefix, ...suffix]) {
    if (id >= vocabSize) throw new ConstraintError(`The forced text's token ${id} is outside the model's ${vocabSize} logits`);
  }
  const { compiler, utf8 } = await engineFor(tokenizer, vocabSize);
  let grammar: XgrammarCompiledGrammar;
  try {
    grammar = await compiler.compileGrammar(await grammarOf(spec.schema), 'root');
  } catch (e) {
    throw new ConstraintError(`The JSON schema could not be compiled: ${e instanceof Error ? e.message : String(e)}`);
  }
  let disposed = false;
  return {
    spec,
    vocabSize,
    async matcher(eos) {
      if (disposed) throw new ConstraintError('This constraint has been disposed');
      const stops = [...new Set(eos)];
      if (stops.length === 0) throw new ConstraintError('Constrained decoding needs an end-of-sequence token to end the output with');
      const outside = stops.find((id) => !(Number.isInteger(id) && id >= 0 && id < vocabSize));
      if (outside !== undefined) throw new ConstraintError(`The end-of-sequence token ${outside} is outside the model's ${vocabSize} logits`);
      const xgr = await loadXgrammar();
      return new Matcher(await xgr.GrammarMatcher.createGrammarMatcher(grammar, stops, false), utf8, prefix, suffix, stops, vocabSize);
    },
    dispose() {
      if (disposed) return;
      disposed = true;
      grammar.dispose();
    },
  };
}

/** Bounds on a JSON number's digits, so a number ends: 16 significant digits, a 2-digit exponent. */
const BOUNDED_NUMBER = 'basic_number ::= "-"? ("0" | [1-9] [0-9]{0,15}) ("." [0-9]{1,16})? ([eE] [+\\-]? [0-9]{1,2})?';

/**
 * The EBNF grammar: XGrammar's from the engine schema in strict mode (output never carries
 * properties or items the schema does not list, so it validates whether or not the schema
 * sets additionalProperties: false), with integer ranges and numbers bounded.
 */
async function grammarOf(schema: JsonSchema | true): Promise<string> {
  const xgr = await loadXgrammar();
  const engine = engineSchema(schema);
  let ebnf = await xgr.Testings._jsonSchemaToEBNF(JSON.stringify(engine.schema), true, undefined, undefined, true, MAX_JSON_WHITESPACE);
  engine.integerRanges.forEach(([lo, hi], i) => {
    const literal = `"\\"${integerPlaceholder(i)}\\""`;
    if (!ebnf.includes(literal)) throw new Error(`constraint: the grammar lost integer range ${i} (${literal})`);
    ebnf = ebnf.replaceAll(literal, integerRangeEbnf(lo, hi));
  });
  // XGrammar writes its basic rules into every grammar; a version that stopped would leave numbers unbounded.
  for (const rule of ['basic_integer', 'basic_number']) if (!new RegExp(`^${rule} ::= `, 'm').test(ebnf)) throw new Error(`constraint: XGrammar's grammar has no ${rule} rule to bound`);
  ebnf = ebnf.replace(/^basic_integer ::= .*$/m, `basic_integer ::= ${integerRangeEbnf(-MAX_JSON_INTEGER, MAX_JSON_INTEGER)}`);
  return ebnf.replace(/^basic_number ::= .*$/m, BOUNDED_NUMBER);
}

/** The constraint a response_format asks for, or undefined for plain text. */
export function responseFormatConstraint(rf: ResponseFormat | undefined): ConstraintSpec | undefined {
  if (rf === undefined || rf.type === 'text') return undefined;
  if (rf.type === 'json_object') return { schema: true };
  if (rf.type === 'json_schema' && rf.json_schema && typeof rf.json_schema === 'object') return { schema: rf.json_schema.schema };
  throw new ConstraintError(`response_format must be {type: 'text' | 'json_object'} or {type: 'json_schema', json_schema: {schema}}, got ${JSON.stringify(rf)}`);
}

type Phase = 'prefix' | 'json' | 'suffix' | 'eos' | 'done';

class Matcher implements ConstraintMatcher {
  private phase: Phase;
  /** Position in the prefix or suffix. */
  private at = 0;
  /** The JSON value may end here (XGrammar's mask allows a stop token). */
  private canEnd = false;
  private readonly utf8: Utf8Guard;

  constructor(
    private readonly grammar: XgrammarMatcher,
    utf8: Utf8Table,
    private readonly prefix: readonly number[],
    private readonly suffix: readonly number[],
    private readonly eos: readonly number[],
    private readonly vocabSize: number,
  ) {
    this.phase = prefix.length > 0 ? 'prefix' : 'json';
    this.utf8 = new Utf8Guard(utf8);
  }

  get done(): boolean {
    return this.phase === 'done';
  }

  get endingIds(): readonly number[] {
    if (this.phase === 'eos' || (this.phase === 'json' && this.suffix.length === 0)) return this.eos;
    return [];
  }

  async mask(logits: Float32Array): Promise<void> {
    if (logits.length !== this.vocabSize) throw new RangeError(`a logits row of ${logits.length} for a constraint compiled for ${this.vocabSize}`);
    switch (this.phase) {
      case 'prefix':
        return only(logits, [this.prefix[this.at]!]);
      case 'suffix':
        return only(logits, [this.suffix[this.at]!]);
      case 'eos':
        return only(logits, this.eos);
      case 'done':
        throw new ConstraintError('The constrained output is complete: nothing may follow its end of sequence');
    }
    const bits = await this.grammar.getNextTokenBitmask();
    this.canEnd = this.eos.some((id) => bit(bits, id));
    if (this.canEnd && this.suffix.length > 0) {
      // The value may end: the suffix's first token stands in for the stop tokens.
      for (const id of this.eos) bits[id >>> 5]! &= ~(1 << (id & 31));
      bits[this.suffix[0]! >>> 5]! |= 1 << (this.suffix[0]! & 31);
    }
    applyBitmask(logits, bits);
    this.utf8.mask(logits);
  }

  accept(id: number): void {
    const refuse = (): never => {
      throw new ConstraintError(`Token ${id} is not allowed here by the constraint (${this.phase})`);
    };
    switch (this.phase) {
      case 'prefix':
        if (id !== this.prefix[this.at]) refuse();
        if (++this.at === this.prefix.length) this.phase = 'json';
        return;
      case 'suffix':
        if (id !== this.suffix[this.at]) refuse();
        if (++this.at === this.suffix.length) this.phase = 'eos';
        return;
      case 'eos':
        if (!this.eos.includes(id)) refuse();
        this.phase = 'done';
        return;
      case 'done':
        return refuse();
    }
    if (this.canEnd && this.suffix.length > 0 && id === this.suffix[0]) {
      this.at = 1;
      this.phase = this.suffix.length > 1 ? 'suffix' : 'eos';
      return;
    }
    if (!this.grammar.acceptToken(id)) refuse();
    this.utf8.accept(id);
    if (this.eos.includes(id)) this.phase = 'done';
  }

  dispose(): void {
    this.grammar.dispose();
  }
}

function bit(bits: Int32Array, id: number): boolean {
  return ((bits[id >>> 5]! >>> (id & 31)) & 1) === 1;
}

/** Leaves only `ids` possible. */
function only(logits: Float32Array, ids: readonly number[]): void {
  const keep = ids.map((id) => logits[id]!);
  logits.fill(-Infinity);
  ids.forEach((id, i) => (logits[id] = keep[i]!));
}

/** Sets the logit of every token whose bit is 0 to -Infinity; whole words of 1s (most of a string's) are skipped. */
export function applyBitmask(logits: Float32Array, bits: Int32Array): void {
  const V = logits.length;
  for (let w = 0; w < bits.length; w++) {
    const word = bits[w]!;
    if (word === -1) continue;
    const base = w << 5;
    const end = Math.min(32, V - base);
    for (let b = 0; b < end; b++) if (((word >>> b) & 1) === 0) logits[base + b] = -Infinity;
  }
}
