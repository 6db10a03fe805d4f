// A reply as OpenAI clients read it: content, reasoning (thinking blocks, harmony's analysis
// channel) and tool calls, split out of the model's text as it streams. Each family writes
// tool calls its own way (Hermes/Qwen <tool_call> blocks, Llama 3.1 bare JSON, Mistral's
// [TOOL_CALLS], GPT-OSS's harmony channels); the format is read off the chat template, the
// program that taught the model to write them. Markup is held back until it is known not to
// be markup, so it never reaches content; a call that doesn't parse comes back as content.

import type { ChatTokenizer } from './tokenizer.ts';

/** One parsed call: the function's name and its arguments as JSON text (OpenAI's shape). */
export interface ParsedToolCall {
  name: string;
  arguments: string;
}

export type ReplyPiece = { kind: 'content'; text: string } | { kind: 'reasoning'; text: string } | { kind: 'tool_call'; call: ParsedToolCall };

/** The tool-call syntaxes we parse, named as vLLM's --tool-call-parser names them. */
export const TOOL_CALL_FORMATS = ['hermes', 'llama3_json', 'mistral', 'granite', 'harmony'] as const;
export type ToolCallFormat = (typeof TOOL_CALL_FORMATS)[number];

export interface ReplyFormat {
  /** How the model writes tool calls; undefined when its template shows no syntax we know. */
  toolCalls: ToolCallFormat | undefined;
  /** Thinking tags, when the model writes its reasoning between them. */
  thinking: { open: string; close: string } | undefined;
  /** Its markers are special tokens, which the reply's text must keep for the parser to see them. */
  keepSpecialTokens: boolean;
}

export interface ReplyParser {
  /** Feeds the next piece of reply text; returns what can be told apart so far. */
  push(text: string): ReplyPiece[];
  /** The reply is complete: what was held back, resolved. */
  end(): ReplyPiece[];
}

const THINK = { open: '<think>', close: '</think>' };
const HERMES = { open: '<tool_call>', close: '</tool_call>' };
const MISTRAL_CALLS = '[TOOL_CALLS]';
const GRANITE_CALLS = '<|tool_call|>';
const PYTHON_TAG = '<|python_tag|>';

/**
 * The reply format a chat template teaches, or the one `override` names (a template may
 * write calls in a way these markers don't reveal).
 */
export function detectReplyFormat(template: string | undefined, tokenizer: ChatTokenizer, override?: ToolCallFormat): ReplyFormat {
  const t = template ?? '';
  const toolCalls: ToolCallFormat | undefined =
    override ??
    (t.includes('<|channel|>')
      ? 'harmony'
      : t.includes(HERMES.open)
        ? 'hermes'
        : t.includes(MISTRAL_CALLS)
          ? 'mistral'
          : t.includes(GRANITE_CALLS)
            ? 'granite'
            : t.includes(PYTHON_TAG) || (t.includes('ipython') && t.includes('"parameters"'))
            ? 'llama3_json'
            : undefined);
  const thinking = toolCalls !== 'harmony' && t.includes(THINK.close) ? THINK : undefined;
  const markers = toolCalls === undefined ? [] : MARKERS[toolCalls];
  const special = new Set<string>();
  for (const id of tokenizer.specialIds) special.add(tokenizer.decode([id]));
  return { toolCalls, thinking, keepSpecialTokens: [...markers, ...(thinking ? [thinking.open, thinking.close] : [])].some((m) => special.has(m)) };
}

/**
 * A parser for one reply. `prompt` is the rendered prompt it follows (a template may open
 * the reply inside a thinking block or a harmony header); `tools: false` leaves tool-call
 * syntax as content (no tools were offered, or tool_choice is "none").
 */
export function createReplyParser(format: ReplyFormat, prompt: string, opts: { tools: boolean }): ReplyParser {
  if (format.toolCalls === 'harmony') return new HarmonyParser(prompt, opts.tools);
  const spec: MarkupSpec = { thinking: format.thinking };
  if (opts.tools) {
    if (format.toolCalls === 'hermes') spec.wrapped = { ...HERMES, parse: parseHermesCall };
    if (format.toolCalls === 'mistral') spec.tail = { open: MISTRAL_CALLS, parse: parseMistralCalls };
    if (format.toolCalls === 'granite') spec.tail = { open: GRANITE_CALLS, parse: parseCallList };
    if (format.toolCalls === 'llama3_json') {
      spec.tail = { open: PYTHON_TAG, parse: parseLlamaCalls };
      spec.bareJson = parseLlamaCalls;
    }
  }
  const th = format.thinking;
  const startsThinking = th !== undefined && prompt.lastIndexOf(th.open) > prompt.lastIndexOf(th.close);
  return new MarkupParser(spec, startsThinking);
}

type CallParser = (body: string) => ParsedToolCall[] | undefined;

interface MarkupSpec {
  thinking: { open: string; close: string } | undefined;
  /** Calls between open and close markers, one each (Hermes). */
  wrapped?: { open: string; close: string; parse: CallParser };
  /** Calls after a marker, to the end of the reply (Mistral's [TOOL_CALLS], Llama's <|python_tag|>). */
  tail?: { open: string; parse: CallParser };
  /** A reply whose first text is '{' may be calls written as bare JSON (Llama 3.1). */
  bareJson?: CallParser;
}

/** Length of the longest suffix of `s` that is a proper prefix of one of `markers`. */
function partialMarker(s: string, markers: readonly string[]): number {
  let best = 0;
  for (const m of markers) {
    for (let n = Math.min(m.length - 1, s.length); n > best; n--) {
      if (s.endsWith(m.slice(0, n))) {
        best = n;
        break;
      }
    }
  }
  return best;
}

/** The first of `markers` in `s`: its position and which. */
function firstMarker(s: string, markers: readonly string[]): { at: number; marker: string } | undefined {
  let found: { at: number; marker: string } | undefined;
  for (const m of markers) {
    const at = s.indexOf(m);
    if (at >= 0 && (!found || at < found.at)) found = { at, marker: m };
  }
  return found;
}

/**
 * Emits text of one kind with Transformers' trimming (parse_response strips each region):
 * whitespace that opens a region is dropped, whitespace that may close one is held until
 * more text follows.
 */
class TrimmedText {
  private start = true;
  private trailing = '';
  /** Reply text of this kind has been emitted. */
  started = false;
  constructor(private readonly kind: 'content' | 'reasoning') {}
  add(s: string, out: ReplyPiece[]): void {
    if (this.start) {
      s = s.trimStart();
      if (!s) return;
      this.start = false;
    }
    s = this.trailing + s;
    const body = s.trimEnd();
    this.trailing = s.slice(body.length);
    if (body) {
      this.started = true;
      out.push({ kind: this.kind, text: body });
    }
  }
  /** A region ends: its trailing whitespace is dropped, and the next one starts trimmed. */
  close(): void {
    this.trailing = '';
    this.start = true;
  }
}

/** Replies whose parts are set off by text markers: thinking tags and the tool-call syntaxes. */
class MarkupParser implements ReplyParser {
  private buf = '';
  private mode: 'content' | 'reasoning' | 'wrapped' | 'tail' = 'content';
  /** The open marker of the call being read (its text returns as content if the call doesn't parse). */
  private opened = '';
  private readonly content = new TrimmedText('content');
  private readonly reasoning = new TrimmedText('reasoning');
  private readonly openers: string[];

  constructor(
    private readonly spec: MarkupSpec,
    startsThinking: boolean,
  ) {
    if (startsThinking) this.mode = 'reasoning';
    this.openers = [spec.thinking?.open, spec.wrapped?.open, spec.tail?.open].filter((m): m is string => m !== undefined);
  }

  push(text: string): ReplyPiece[] {
    this.buf += text;
    return this.drain(false);
  }

  end(): ReplyPiece[] {
    return this.drain(true);
  }

  private calls(parse: CallParser, body: string, raw: string, out: ReplyPiece[]): void {
    const calls = parse(body);
    if (calls) {
      this.content.close();
      for (const call of calls) out.push({ kind: 'tool_call', call });
    } else this.content.add(raw, out);
  }

  private drain(final: boolean): ReplyPiece[] {
    const out: ReplyPiece[] = [];
    const { spec } = this;
    for (;;) {
      if (this.mode === 'content') {
        if (spec.bareJson && !this.content.started && this.buf.trimStart().startsWith('{')) {
          this.mode = 'tail';
          this.opened = '';
          continue;
        }
        // Leading whitespace could still precede a bare JSON call.
        if (spec.bareJson && !this.content.started && !this.buf.trim() && !final) break;
        const found = firstMarker(this.buf, this.openers);
        if (!found) {
          const keep = final ? 0 : partialMarker(this.buf, this.openers);
          this.content.add(this.buf.slice(0, this.buf.length - keep), out);
          this.buf = this.buf.slice(this.buf.length - keep);
          break;
        }
        this.content.add(this.buf.slice(0, found.at), out);
        this.buf = this.buf.slice(found.at + found.marker.length);
        this.opened = found.marker;
        this.mode = found.marker === spec.thinking?.open ? 'reasoning' : found.marker === spec.wrapped?.open ? 'wrapped' : 'tail';
        if (this.mode === 'reasoning') this.content.close();
        continue;
      }
      if (this.mode === 'reasoning') {
        const close = spec.thinking!.close;
        const at = this.buf.indexOf(close);
        if (at < 0) {
          const keep = final ? 0 : partialMarker(this.buf, [close]);
          this.reasoning.add(this.buf.slice(0, this.buf.length - keep), out);
          this.buf = this.buf.slice(this.buf.length - keep);
          break;
        }
        this.reasoning.add(this.buf.slice(0, at), out);
        this.reasoning.close();
        this.buf = this.buf.slice(at + close.length);
        this.mode = 'content';
        continue;
      }
      if (this.mode === 'wrapped') {
        const w = spec.wrapped!;
        const at = this.buf.indexOf(w.close);
        if (at < 0) {
          if (!final) break;
          this.content.add(this.opened + this.buf, out);
          this.buf = '';
          break;
        }
        const body = this.buf.slice(0, at);
        this.buf = this.buf.slice(at + w.close.length);
        this.mode = 'content';
        this.calls(w.parse, body, this.opened + body + w.close, out);
        continue;
      }
      // tail: the rest of the reply is calls, known only at its end.
      if (!final) break;
      const parse = this.opened ? spec.tail!.parse : spec.bareJson!;
      this.calls(parse, this.buf, this.opened + this.buf, out);
      this.buf = '';
      break;
    }
    return out;
  }
}

const HARMONY = { start: '<|start|>', channel: '<|channel|>', message: '<|message|>', end: '<|end|>', call: '<|call|>', return: '<|return|>' };
const HARMONY_MARKERS = Object.values(HARMONY);
const HARMONY_BODY_ENDS = [HARMONY.end, HARMONY.call, HARMONY.return];

/** The markers of each syntax: where they are special tokens, the reply's text must keep them. */
const MARKERS: Record<ToolCallFormat, readonly string[]> = {
  hermes: [HERMES.open, HERMES.close],
  llama3_json: [PYTHON_TAG],
  mistral: [MISTRAL_CALLS],
  granite: [GRANITE_CALLS],
  harmony: HARMONY_MARKERS,
};

/**
 * GPT-OSS's harmony format: messages of `<|start|>{role}<|channel|>{channel} [to={recipient}]
 * [<|constrain|>json]<|message|>{body}<|end|>` (or <|call|>, <|return|>). The analysis
 * channel is reasoning, a message to `functions.NAME` a tool call, the others content.
 */
class HarmonyParser implements ReplyParser {
  private buf = '';
  private mode: 'header' | 'body' = 'header';
  private header = '';
  private body: 'content' | 'reasoning' | 'call' = 'content';
  private recipient = '';
  private readonly content = new TrimmedText('content');
  private readonly reasoning = new TrimmedText('reasoning');

  constructor(
    prompt: string,
    private readonly tools: boolean,
  ) {
    // The generation prompt ends inside a header (`<|start|>assistant`), or past one a template prefilled.
    const at = prompt.lastIndexOf(HARMONY.start);
    const tail = at >= 0 ? prompt.slice(at + HARMONY.start.length) : '';
    const message = tail.indexOf(HARMONY.message);
    if (message < 0) this.header = tail;
    else {
      this.header = tail.slice(0, message);
      this.openBody();
      this.mode = 'body';
    }
  }

  push(text: string): ReplyPiece[] {
    this.buf += text;
    return this.drain(false);
  }

  end(): ReplyPiece[] {
    return this.drain(true);
  }

  private openBody(): void {
    const channel = /<\|channel\|>\s*(\w+)/.exec(this.header)?.[1] ?? 'final';
    this.recipient = /\bto=([^\s<]+)/.exec(this.header)?.[1] ?? '';
    this.body = this.recipient && this.tools ? 'call' : channel === 'analysis' ? 'reasoning' : 'content';
    this.header = '';
  }

  private closeBody(text: string, out: ReplyPiece[]): void {
    if (this.body === 'call') {
      const args = parseJsonObject(text);
      const name = this.recipient.replace(/^functions\./, '');
      if (args !== undefined && name) {
        this.content.close();
        out.push({ kind: 'tool_call', call: { name, arguments: JSON.stringify(args) } });
      } else this.content.add(text, out);
      return;
    }
    const t = this.body === 'reasoning' ? this.reasoning : this.content;
    t.add(text, out);
    t.close();
  }

  private drain(final: boolean): ReplyPiece[] {
    const out: ReplyPiece[] = [];
    for (;;) {
      if (this.mode === 'header') {
        const at = this.buf.indexOf(HARMONY.message);
        if (at < 0) {
          if (final) {
            // A reply cut off inside a header has nothing to show; text with no header at all is content.
            if (!this.buf.includes(HARMONY.channel)) this.content.add(this.buf, out);
            this.buf = '';
          }
          break;
        }
        this.header += this.buf.slice(0, at);
        this.buf = this.buf.slice(at + HARMONY.message.length);
        this.openBody();
        this.mode = 'body';
        continue;
      }
      const found = firstMarker(this.buf, HARMONY_BODY_ENDS);
      if (!found) {
        if (final) {
          this.closeBody(this.buf, out);
          this.buf = '';
          break;
        }
        if (this.body !== 'call') {
          const keep = partialMarker(this.buf, HARMONY_BODY_ENDS);
          (this.body === 'reasoning' ? this.reasoning : this.content).add(this.buf.slice(0, this.buf.length - keep), out);
          this.buf = this.buf.slice(this.buf.length - keep);
        }
        break;
      }
      this.closeBody(this.buf.slice(0, found.at), out);
      this.buf = this.buf.slice(found.at + found.marker.length);
      // The next message's header follows its <|start|> (which a role may also precede).
      const next = this.buf.indexOf(HARMONY.start);
      this.buf = next >= 0 ? this.buf.slice(next + HARMONY.start.length) : this.buf;
      this.mode = 'header';
    }
    return out;
  }
}

/** A JSON object from text, or undefined. */
function parseJsonObject(text: string): Record<string, unknown> | undefined {
  try {
    const v: unknown = JSON.parse(text);
    return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * JSON values written one after another (`{...}; {...}`, or with whitespace between), or
 * undefined when the text is anything else.
 */
export function consecutiveJsonValues(text: string, separator: RegExp = /^[\s;,]*/): unknown[] | undefined {
  const values: unknown[] = [];
  let rest = text.trim();
  while (rest) {
    const end = jsonValueEnd(rest);
    if (end < 0) return undefined;
    try {
      values.push(JSON.parse(rest.slice(0, end)));
    } catch {
      return undefined;
    }
    rest = rest.slice(end).replace(separator, '');
  }
  return values.length ? values : undefined;
}

/** The end of the object or array that opens `s` (brackets matched outside strings), or -1. */
function jsonValueEnd(s: string): number {
  if (s[0] !== '{' && s[0] !== '[') return -1;
  let depth = 0;
  let inString = false;
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (inString) {
      if (c === '\\') i++;
      else if (c === '"') inString = false;
    } else if (c === '"') inString = true;
    else if (c === '{' || c === '[') depth++;
    else if (c === '}' || c === ']') {
      depth--;
      if (depth === 0) return i + 1;
    }
  }
  return -1;
}

/** {name, arguments | parameters} → a call; arguments may be an object or its JSON text. */
function callFrom(v: unknown, argsKeys: readonly string[]): ParsedToolCall | undefined {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return undefined;
  const o = v as Record<string, unknown>;
  if (typeof o.name !== 'string' || !o.name) return undefined;
  const key = argsKeys.find((k) => k in o);
  let args = key === undefined ? {} : o[key];
  if (typeof args === 'string') args = parseJsonObject(args);
  if (typeof args !== 'object' || args === null || Array.isArray(args)) return undefined;
  return { name: o.name, arguments: JSON.stringify(args) };
}

function allCalls(values: unknown[] | undefined, argsKeys: readonly string[]): ParsedToolCall[] | undefined {
  if (!values) return undefined;
  const calls = values.map((v) => callFrom(v, argsKeys));
  return calls.every((c) => c !== undefined) ? (calls as ParsedToolCall[]) : undefined;
}

/** Hermes/Qwen: `{"name": ..., "arguments": {...}}` inside <tool_call> tags. */
export const parseHermesCall: CallParser = (body) => {
  const values = consecutiveJsonValues(body);
  return values?.length === 1 ? allCalls(values, ['arguments']) : undefined;
};

/** Llama 3.1/3.2: `{"name": ..., "parameters": {...}}`, several separated by ';'. */
export const parseLlamaCalls: CallParser = (body) => allCalls(consecutiveJsonValues(body), ['parameters', 'arguments']);

/** A JSON list of `{"name": ..., "arguments": {...}}` (Granite's after <|tool_call|>, Mistral's v3). */
export const parseCallList: CallParser = (body) => {
  const values = consecutiveJsonValues(body);
  return values?.length === 1 && Array.isArray(values[0]) && values[0].length ? allCalls(values[0] as unknown[], ['arguments', 'parameters']) : undefined;
};

/**
 * Mistral: `[{"name": ..., "arguments": {...}}, ...]` after [TOOL_CALLS], or (tokenizer v11+)
 * `name[ARGS]{...}`, each call after its own [TOOL_CALLS].
 */
export const parseMistralCalls: CallParser = (body) => {
  const calls: ParsedToolCall[] = [];
  for (const part of body.split(MISTRAL_CALLS)) {
    const p = part.trim();
    if (!p) continue;
    if (p.startsWith('[')) {
      const list = parseCallList(p);
      if (!list) return undefined;
      calls.push(...list);
      continue;
    }
    const m = /^([\w.-]+)(?:\[CALL_ID\][\w-]+)?\[ARGS\]([\s\S]*)$/.exec(p);
    const args = m ? parseJsonObject(m[2]!) : undefined;
    if (!m || !args) return undefined;
    calls.push({ name: m[1]!, arguments: JSON.stringify(args) });
  }
  return calls.length ? calls : undefined;
};
