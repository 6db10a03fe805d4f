// Tools offered to a model, OpenAI's shape: {type: "function", function: {name, description,
// parameters}}. Checked once here for every face (pipeline, chat, serve), and the assistant
// turns that called them made ready for a template: OpenAI sends a call's arguments as JSON
// text, templates iterate them as a mapping, so they are parsed (as `transformers serve` does).

import { ChatInputError } from './errors.ts';
import type { ConstraintSpec } from './constraint/constraint.ts';
import type { JsonSchema } from './constraint/schema.ts';
import type { ParsedToolCall, ReplyFormat, ToolCallFormat } from './reply-parser.ts';
import type { Message } from './types.ts';

export interface ToolDefinition {
  type: 'function';
  function: {
    name: string;
    description?: string;
    /** A JSON Schema for the arguments object. */
    parameters?: Record<string, unknown>;
    strict?: boolean;
  };
}

/** A call in an assistant message: arguments as JSON text (OpenAI's) or as the object. */
export interface ToolCallMessage {
  id?: string;
  type?: 'function';
  function: { name: string; arguments: string | Record<string, unknown> };
}

/** OpenAI's tool_choice: let the model decide, forbid calls, require one, or require this function. */
export type ToolChoice = 'auto' | 'none' | 'required' | { type: 'function'; function: { name: string } };

/** OpenAI's rule for function names. */
const FUNCTION_NAME = /^[a-zA-Z0-9_-]{1,64}$/;

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Checks a tools list (ChatInputError naming the entry and field); returns it typed. */
export function validateTools(tools: unknown): ToolDefinition[] {
  if (!Array.isArray(tools)) throw new ChatInputError(`tools must be a list of {type: "function", function: {...}}, got ${typeof tools}`);
  const names = new Set<string>();
  tools.forEach((t: unknown, i) => {
    const at = `tools[${i}]`;
    if (!isObject(t)) throw new ChatInputError(`${at} must be an object`);
    if (t.type !== 'function') throw new ChatInputError(`${at}.type must be "function", got ${JSON.stringify(t.type)}`);
    const f = t.function;
    if (!isObject(f)) throw new ChatInputError(`${at}.function must be an object with a name`);
    for (const k of Object.keys(f)) {
      if (!['name', 'description', 'parameters', 'strict'].includes(k)) throw new ChatInputError(`${at}.function has an unknown field '${k}'`);
    }
    if (typeof f.name !== 'string' || !FUNCTION_NAME.test(f.name)) throw new ChatInputError(`${at}.function.name must be 1-64 letters, digits, '_' or '-', got ${JSON.stringify(f.name)}`);
    if (names.has(f.name)) throw new ChatInputError(`${at}: the function name '${f.name}' is given twice`);
    names.add(f.name);
    if (f.description !== undefined && typeof f.description !== 'string') throw new ChatInputError(`${at}.function.description must be a string`);
    if (f.parameters !== undefined && !isObject(f.parameters)) throw new ChatInputError(`${at}.function.parameters must be a JSON Schema object`);
    if (f.strict !== undefined && typeof f.strict !== 'boolean') throw new ChatInputError(`${at}.function.strict must be a boolean`);
  });
  return tools as ToolDefinition[];
}

/** Checks tool_choice against the tools offered. */
export function validateToolChoice(choice: unknown, tools: readonly ToolDefinition[]): ToolChoice {
  if (choice === 'auto' || choice === 'none' || choice === 'required') {
    if (choice === 'required' && tools.length === 0) throw new ChatInputError('tool_choice "required" needs tools');
    return choice;
  }
  if (isObject(choice) && choice.type === 'function' && isObject(choice.function) && typeof choice.function.name === 'string') {
    const name = choice.function.name;
    if (!tools.some((t) => t.function.name === name)) {
      throw new ChatInputError(`tool_choice names the function '${name}', which is not among the tools (${tools.map((t) => t.function.name).join(', ') || 'none given'})`);
    }
    return { type: 'function', function: { name } };
  }
  throw new ChatInputError(`tool_choice must be "auto", "none", "required" or {"type": "function", "function": {"name": ...}}, got ${JSON.stringify(choice)}`);
}

/**
 * A chat as templates expect it: each call's arguments an object (parsed from OpenAI's JSON
 * text), an assistant turn that only calls tools given empty content.
 */
export function messagesForTemplate(messages: readonly Message[]): Message[] {
  return messages.map((m, i) => {
    if (m.tool_calls === undefined) return m;
    const calls = m.tool_calls.map((c: unknown, j) => {
      const at = `Message ${i}: tool_calls[${j}]`;
      if (!isObject(c) || !isObject(c.function) || typeof c.function.name !== 'string') throw new ChatInputError(`${at} must be {type: "function", function: {name, arguments}}`);
      const args = c.function.arguments;
      if (typeof args !== 'string') return c;
      let parsed: unknown;
      try {
        parsed = JSON.parse(args);
      } catch {
        throw new ChatInputError(`${at}.function.arguments is not valid JSON: ${JSON.stringify(args.slice(0, 80))}`);
      }
      if (!isObject(parsed)) throw new ChatInputError(`${at}.function.arguments must encode a JSON object`);
      return { ...c, function: { ...c.function, arguments: parsed } };
    });
    return { ...m, tool_calls: calls };
  });
}

const ID_CHARS = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789';

/** A fresh call id: Mistral's templates insist on 9 letters and digits, others get OpenAI's call_ form. */
export function newToolCallId(format: ToolCallFormat | undefined): string {
  const random = (n: number) => Array.from(crypto.getRandomValues(new Uint8Array(n)), (b) => ID_CHARS[b % ID_CHARS.length]).join('');
  return format === 'mistral' ? random(9) : `call_${random(24)}`;
}

/** A parsed call as an assistant message carries it (OpenAI's shape). */
export function toolCallMessage(call: ParsedToolCall, format: ToolCallFormat | undefined): Required<ToolCallMessage> {
  return { id: newToolCallId(format), type: 'function', function: { name: call.name, arguments: call.arguments } };
}

/** Calls a forced list may hold: a bound, so a model that never closes the list still ends. */
const MAX_FORCED_CALLS = 8;

/**
 * tool_choice "required" or a named function as a constraint: the reply is one call (a list
 * of them where the syntax has lists and parallel calls are allowed) written in the model's
 * own syntax, with each function's parameters schema enforced on its arguments.
 */
export function toolCallConstraint(format: ReplyFormat, tools: readonly ToolDefinition[], choice: Exclude<ToolChoice, 'auto' | 'none'>, parallel: boolean): ConstraintSpec {
  const allowed = choice === 'required' ? tools : tools.filter((t) => t.function.name === choice.function.name);
  if (allowed.length === 0) throw new ChatInputError('tool_choice names no function among the tools');
  const args = (t: ToolDefinition): JsonSchema => t.function.parameters ?? { type: 'object' };
  const call = (argsKey: string): JsonSchema => {
    const one = (t: ToolDefinition): JsonSchema => ({
      type: 'object',
      properties: { name: { const: t.function.name }, [argsKey]: args(t) },
      required: ['name', argsKey],
      additionalProperties: false,
    });
    return allowed.length === 1 ? one(allowed[0]!) : { anyOf: allowed.map(one) };
  };
  const list = (argsKey: string): JsonSchema => ({ type: 'array', items: call(argsKey), minItems: 1, maxItems: parallel ? MAX_FORCED_CALLS : 1 });
  switch (format.toolCalls) {
    case 'hermes':
      return { prefix: '<tool_call>\n', schema: call('arguments'), suffix: '\n</tool_call>' };
    case 'llama3_json':
      return { schema: call('parameters') };
    case 'mistral':
      return { prefix: '[TOOL_CALLS]', schema: list('arguments') };
    case 'granite':
      return { prefix: '<|tool_call|>', schema: list('arguments') };
    case 'harmony': {
      // The function's name is in the message header, outside the JSON: one function at a time.
      if (allowed.length > 1) throw new ChatInputError('tool_choice "required" with several tools cannot be enforced for this model (harmony names the function outside the JSON): name the function');
      const t = allowed[0]!;
      return { prefix: `<|channel|>commentary to=functions.${t.function.name} <|constrain|>json<|message|>`, schema: args(t) };
    }
    case undefined:
      throw new ChatInputError("tool_choice cannot require a call: this model's chat template shows no tool-call syntax we know (serve --tool-call-parser names one)");
  }
}
