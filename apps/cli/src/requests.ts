// Request bodies of the OpenAI routes, validated into generation flags (400 naming the
// offending field), and the one rule for prompts that don't fit the context.

import { ASSISTANT_TOKENS_SCHEDULES, MAX_LOGPROBS, MAX_MATCHING_NGRAM_SIZE, MAX_NUM_ASSISTANT_TOKENS, validateToolChoice, validateTools, type AssistantTokensSchedule, type ConstraintSpec, type GenerationConfig, type Message, type ToolChoice, type ToolDefinition } from '@webgpu-chat/chat';
import { ApiError, invalid } from './http.ts';
import { parseResponseFormat } from './response-format.ts';

/** The messages of an /apply-template body, checked as the chat route checks them. */
export function templateMessages(body: unknown): Message[] {
  const b = body as { messages?: unknown } | null;
  if (typeof b !== 'object' || b === null || Array.isArray(b)) throw invalid('The request body must be a JSON object', null);
  return parseChatRequest({ messages: b.messages }, '').messages;
}

/** Choices one request may ask for (n): each is a sequence in the batch. */
export const MAX_CHOICES = 16;
/** Fields of a message: OpenAI's (audio refused where it appears), and vLLM's reasoning_content of an earlier turn. */
const MESSAGE_FIELDS: ReadonlySet<string> = new Set(['role', 'content', 'name', 'tool_call_id', 'tool_calls', 'refusal', 'reasoning_content']);

/** Fields that change nothing in the answer (identifiers, storage and billing hints): accepted on every route. */
const NEUTRAL_FIELDS = ['user', 'metadata', 'store', 'service_tier', 'safety_identifier', 'prompt_cache_key'];
/** Sampling fields both routes honour (OpenAI's, and vLLM's top_k, min_p, repetition_penalty). */
const SAMPLING_FIELDS = ['model', 'max_tokens', 'n', 'stream', 'stream_options', 'temperature', 'top_p', 'top_k', 'min_p', 'repetition_penalty', 'seed', 'stop', 'logprobs', 'logit_bias', 'presence_penalty', 'frequency_penalty'];
/** Not OpenAI's: speculative decoding's settings (Transformers' names), on both routes (parseDraftFields). */
const DRAFT_FIELDS = ['num_assistant_tokens', 'num_assistant_tokens_schedule', 'assistant_confidence_threshold', 'prompt_lookup_num_tokens', 'max_matching_ngram_size'];
export const CHAT_FIELDS: ReadonlySet<string> = new Set([
  ...NEUTRAL_FIELDS,
  ...SAMPLING_FIELDS,
  'messages',
  'max_completion_tokens',
  'top_logprobs',
  ...DRAFT_FIELDS,
  'tools',
  'tool_choice',
  'parallel_tool_calls',
  'response_format',
  'modalities',
  // vLLM's: variables for the chat template (Qwen3's enable_thinking).
  'chat_template_kwargs',
  // Passed to templates that read it (GPT-OSS's); refused for others.
  'reasoning_effort',
]);
export const COMPLETION_FIELDS: ReadonlySet<string> = new Set([...NEUTRAL_FIELDS, ...SAMPLING_FIELDS, ...DRAFT_FIELDS, 'prompt', 'echo', 'best_of', 'suffix', 'ignore_eos', 'return_token_ids', 'return_tokens_as_token_ids']);

/** OpenAI fields this server knows but does not do: a 400 naming the field beats a 200 that ignored it. */
const NOT_SUPPORTED: Record<string, string> = {
  functions: "the deprecated 'functions' is not supported: use 'tools'",
  function_call: "the deprecated 'function_call' is not supported: use 'tool_choice'",
  audio: 'audio output is not supported',
  prediction: 'predicted outputs are not supported',
  web_search_options: 'web search is not supported',
  verbosity: 'this server has no verbosity control',
};

/**
 * Refuses every field the route does not honour: known OpenAI ones with the reason, others as
 * OpenAI does ("Unrecognized request argument"). A null counts as absent.
 */
export function checkFields(b: Record<string, unknown>, known: ReadonlySet<string>): void {
  for (const [k, v] of Object.entries(b)) {
    if (v === undefined || v === null) continue;
    if (k in NOT_SUPPORTED) throw invalid(`'${k}' is not supported: ${NOT_SUPPORTED[k]}`, k, 'unsupported_parameter');
    if (!known.has(k)) throw invalid(`Unrecognized request argument supplied: ${k}`, k, 'unknown_parameter');
  }
  const modalities = b.modalities;
  if (modalities !== undefined && modalities !== null && !(Array.isArray(modalities) && modalities.every((m) => m === 'text'))) {
    throw invalid("'modalities' other than [\"text\"] is not supported", 'modalities', 'unsupported_parameter');
  }
  if (b.parallel_tool_calls !== undefined && b.parallel_tool_calls !== null && typeof b.parallel_tool_calls !== 'boolean') throw invalid("'parallel_tool_calls' must be a boolean", 'parallel_tool_calls');
}

/** logit_bias (token ids as keys, -100..100) and presence/frequency penalties (-2..2), validated. */
export function parsePenalties(b: Record<string, unknown>): Penalties {
  const logitBias = new Map<number, number>();
  const lb = b.logit_bias;
  if (lb !== undefined && lb !== null) {
    if (typeof lb !== 'object' || Array.isArray(lb)) throw invalid("'logit_bias' must be an object mapping token ids to biases", 'logit_bias');
    for (const [key, v] of Object.entries(lb)) {
      const id = Number(key);
      if (!/^\d+$/.test(key) || !Number.isSafeInteger(id)) throw invalid(`'logit_bias' key ${JSON.stringify(key)} is not a token id`, 'logit_bias');
      if (typeof v !== 'number' || !Number.isFinite(v) || v < -100 || v > 100) throw invalid(`'logit_bias' for token ${key} must be a number in [-100, 100]`, 'logit_bias');
      logitBias.set(id, v);
    }
  }
  return { logitBias, presence: num(b, 'presence_penalty', -2, 2) ?? 0, frequency: num(b, 'frequency_penalty', -2, 2) ?? 0 };
}

const REASONING_EFFORTS = ['none', 'minimal', 'low', 'medium', 'high'];

/** OpenAI caps `stop` at 4 strings; a few more cost nothing here. */
const MAX_STOP = 16;
const ROLES = new Set(['system', 'user', 'assistant', 'tool', 'developer']);

/** OpenAI's logit_bias and presence/frequency penalties: applied to each logits row before sampling. */
export interface Penalties {
  /** token id → bias added to its logit (-100..100). */
  logitBias: Map<number, number>;
  /** Subtracted once from the logit of every token the reply already holds. */
  presence: number;
  /** Subtracted from a token's logit per time the reply already holds it. */
  frequency: number;
}

export interface ChatRequest {
  messages: Message[];
  /** Tools offered (empty: none). */
  tools: ToolDefinition[];
  toolChoice: ToolChoice;
  /** false: at most one call per reply. */
  parallelToolCalls: boolean;
  chatTemplateKwargs?: Record<string, unknown>;
  reasoningEffort?: string;
  penalties: Penalties;
  /** Choices to generate (OpenAI's n). */
  n: number;
  stream: boolean;
  includeUsage: boolean;
  config: GenerationConfig;
  /** logprobs: true was asked, with this many top_logprobs per token. */
  logprobs?: number;
  /** response_format json_object or json_schema: the reply is held to it. */
  responseFormat?: ConstraintSpec;
}

export function num(body: Record<string, unknown>, key: string, min: number, max: number, integer = false): number | undefined {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max || (integer && !Number.isInteger(v))) {
    throw invalid(`'${key}' must be ${integer ? 'an integer' : 'a number'} in [${min}, ${max}], got ${JSON.stringify(v)}`, key);
  }
  return v;
}

/** A message's content: a string, or OpenAI's list of parts of which only text is supported. */
function contentOf(m: Record<string, unknown>, i: number): string {
  const c = m.content;
  if (typeof c === 'string') return c;
  if (c === null && m.role === 'assistant') return '';
  if (Array.isArray(c)) {
    return c
      .map((p: unknown, j) => {
        const part = p as { type?: unknown; text?: unknown } | null;
        if (part?.type !== 'text' || typeof part.text !== 'string') {
          throw invalid(`messages[${i}].content[${j}]: only {"type":"text","text":...} parts are supported`, `messages[${i}].content`);
        }
        return part.text;
      })
      .join('');
  }
  throw invalid(`messages[${i}].content must be a string or a list of text parts`, `messages[${i}].content`);
}

/** Validates a /v1/chat/completions body (400 with the offending param) and maps it to generation flags. */
export function parseChatRequest(body: unknown, modelId: string): ChatRequest {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw invalid('The request body must be a JSON object', null);
  const b = body as Record<string, unknown>;
  checkFields(b, CHAT_FIELDS);
  if (b.model !== undefined && typeof b.model !== 'string') throw invalid("'model' must be a string", 'model');
  if (typeof b.model === 'string' && b.model !== modelId) {
    throw new ApiError(404, `The model '${b.model}' does not exist; this server serves '${modelId}'`, 'not_found_error', 'model', 'model_not_found');
  }
  if (!Array.isArray(b.messages) || b.messages.length === 0) throw invalid("'messages' must be a non-empty array of {role, content}", 'messages');
  const messages: Message[] = b.messages.map((m: unknown, i) => {
    if (typeof m !== 'object' || m === null) throw invalid(`messages[${i}] must be an object`, `messages[${i}]`);
    const r = m as Record<string, unknown>;
    if (typeof r.role !== 'string' || !ROLES.has(r.role)) {
      throw invalid(`messages[${i}].role must be one of ${[...ROLES].join(', ')}, got ${JSON.stringify(r.role)}`, `messages[${i}].role`);
    }
    for (const k of Object.keys(r)) {
      if (r[k] === undefined || r[k] === null) continue;
      if (k === 'function_call' || k === 'audio') throw invalid(`messages[${i}].${k} is not supported: ${k === 'audio' ? 'this server does not do audio' : "use 'tool_calls'"}`, `messages[${i}].${k}`, 'unsupported_parameter');
      if (!MESSAGE_FIELDS.has(k)) throw invalid(`messages[${i}] has an unknown field '${k}'`, `messages[${i}].${k}`, 'unknown_parameter');
    }
    for (const k of ['name', 'tool_call_id', 'reasoning_content']) {
      if (r[k] !== undefined && r[k] !== null && typeof r[k] !== 'string') throw invalid(`messages[${i}].${k} must be a string`, `messages[${i}].${k}`);
    }
    if (r.tool_calls !== undefined && r.tool_calls !== null && (r.role !== 'assistant' || !Array.isArray(r.tool_calls))) {
      throw invalid(`messages[${i}].tool_calls must be a list, on an assistant message`, `messages[${i}].tool_calls`);
    }
    // OpenAI's 'developer' role is the system prompt of newer models.
    const role = (r.role === 'developer' ? 'system' : r.role) as Message['role'];
    const msg: Message = { role, content: contentOf(r, i) };
    if (typeof r.name === 'string') msg.name = r.name;
    if (typeof r.tool_call_id === 'string') msg.tool_call_id = r.tool_call_id;
    if (typeof r.reasoning_content === 'string') msg.reasoning_content = r.reasoning_content;
    if (Array.isArray(r.tool_calls)) msg.tool_calls = r.tool_calls as unknown[];
    return msg;
  });
  const tools = parseTools(b);
  const n = num(b, 'n', 1, MAX_CHOICES, true) ?? 1;
  if (b.stream !== undefined && b.stream !== null && typeof b.stream !== 'boolean') throw invalid("'stream' must be a boolean", 'stream');
  const so = b.stream_options;
  if (so !== undefined && so !== null && (typeof so !== 'object' || Array.isArray(so))) throw invalid("'stream_options' must be an object", 'stream_options');
  if (b.logprobs !== undefined && b.logprobs !== null && typeof b.logprobs !== 'boolean') throw invalid("'logprobs' must be a boolean", 'logprobs');
  const topLogprobs = num(b, 'top_logprobs', 0, MAX_LOGPROBS, true);
  if (topLogprobs !== undefined && b.logprobs !== true) throw invalid("'top_logprobs' needs 'logprobs': true", 'top_logprobs');

  const config = { ...parseSamplingFields(b), ...parseDraftFields(b) };
  const maxTokens = num(b, 'max_completion_tokens', 1, Number.MAX_SAFE_INTEGER, true) ?? num(b, 'max_tokens', 1, Number.MAX_SAFE_INTEGER, true);
  if (maxTokens !== undefined) config.max_new_tokens = maxTokens;
  const kw = b.chat_template_kwargs;
  if (kw !== undefined && kw !== null && (typeof kw !== 'object' || Array.isArray(kw))) throw invalid("'chat_template_kwargs' must be an object", 'chat_template_kwargs');
  const effort = b.reasoning_effort;
  if (effort !== undefined && effort !== null && !REASONING_EFFORTS.includes(effort as string)) {
    throw invalid(`'reasoning_effort' must be one of ${REASONING_EFFORTS.join(', ')}, got ${JSON.stringify(effort)}`, 'reasoning_effort');
  }
  const responseFormat = parseResponseFormat(b.response_format);
  return {
    messages,
    ...tools,
    ...(typeof effort === 'string' ? { reasoningEffort: effort } : {}),
    ...(kw ? { chatTemplateKwargs: kw as Record<string, unknown> } : {}),
    penalties: parsePenalties(b),
    n,
    stream: b.stream === true,
    includeUsage: (so as { include_usage?: unknown } | undefined)?.include_usage === true,
    config,
    ...(b.logprobs === true ? { logprobs: topLogprobs ?? 0 } : {}),
    ...(responseFormat ? { responseFormat } : {}),
  };
}

/** tools, tool_choice (default "auto" with tools, "none" without, as OpenAI's) and parallel_tool_calls, validated. */
function parseTools(b: Record<string, unknown>): Pick<ChatRequest, 'tools' | 'toolChoice' | 'parallelToolCalls'> {
  const checked = <T>(param: string, f: () => T): T => {
    try {
      return f();
    } catch (e) {
      throw invalid((e as Error).message, param);
    }
  };
  const tools = b.tools === undefined || b.tools === null ? [] : checked('tools', () => validateTools(b.tools));
  const choice = b.tool_choice;
  const toolChoice = choice === undefined || choice === null ? (tools.length ? 'auto' : 'none') : checked('tool_choice', () => validateToolChoice(choice, tools));
  return { tools, toolChoice, parallelToolCalls: b.parallel_tool_calls !== false };
}

/**
 * Speculative decoding's fields (Transformers' names, not OpenAI's): a draft model's length,
 * schedule and confidence threshold (used when the server has --draft), and prompt lookup,
 * which a request may turn on (prompt_lookup_num_tokens > 0: it then replaces the server's
 * draft model for that request) or off (0) whatever the server's default.
 */
export function parseDraftFields(b: Record<string, unknown>): GenerationConfig {
  const config: GenerationConfig = {};
  const draftLength = num(b, 'num_assistant_tokens', 1, MAX_NUM_ASSISTANT_TOKENS, true);
  if (draftLength !== undefined) config.num_assistant_tokens = draftLength;
  const schedule = b.num_assistant_tokens_schedule;
  if (schedule !== undefined && schedule !== null) {
    if (!ASSISTANT_TOKENS_SCHEDULES.includes(schedule as AssistantTokensSchedule)) {
      throw invalid(`'num_assistant_tokens_schedule' must be one of ${ASSISTANT_TOKENS_SCHEDULES.join(', ')}`, 'num_assistant_tokens_schedule');
    }
    config.num_assistant_tokens_schedule = schedule as AssistantTokensSchedule;
  }
  const threshold = num(b, 'assistant_confidence_threshold', 0, 1);
  if (threshold !== undefined) config.assistant_confidence_threshold = threshold;
  const lookup = num(b, 'prompt_lookup_num_tokens', 0, MAX_NUM_ASSISTANT_TOKENS, true);
  if (lookup !== undefined) config.prompt_lookup_num_tokens = lookup;
  const ngram = num(b, 'max_matching_ngram_size', 1, MAX_MATCHING_NGRAM_SIZE, true);
  if (ngram !== undefined) config.max_matching_ngram_size = ngram;
  return config;
}

/** temperature, top_p, top_k, min_p, repetition_penalty, seed and stop of a request, validated, as generation flags. */
export function parseSamplingFields(b: Record<string, unknown>): GenerationConfig {
  const config: GenerationConfig = {};
  const temperature = num(b, 'temperature', 0, 2);
  if (temperature !== undefined) {
    // OpenAI's temperature 0 is greedy; any other value samples.
    config.do_sample = temperature > 0;
    if (temperature > 0) config.temperature = temperature;
  }
  const topP = num(b, 'top_p', 0, 1);
  if (topP !== undefined) {
    if (topP === 0) throw invalid("'top_p' must be > 0", 'top_p');
    config.top_p = topP;
  }
  // vLLM's top_k -1 means "no top-k", as 0 does in Transformers.
  const topK = num(b, 'top_k', -1, Number.MAX_SAFE_INTEGER, true);
  if (topK !== undefined) config.top_k = Math.max(topK, 0);
  const minP = num(b, 'min_p', 0, 1);
  if (minP !== undefined) config.min_p = minP;
  const rep = num(b, 'repetition_penalty', Number.MIN_VALUE, 100);
  if (rep !== undefined) config.repetition_penalty = rep;
  const seed = num(b, 'seed', 0, 2 ** 32 - 1, true);
  if (seed !== undefined) config.seed = seed;
  if (b.stop !== undefined && b.stop !== null) {
    const stop = typeof b.stop === 'string' ? [b.stop] : b.stop;
    if (!Array.isArray(stop) || stop.length > MAX_STOP || stop.some((s) => typeof s !== 'string' || s === '')) {
      throw invalid(`'stop' must be a non-empty string or a list of at most ${MAX_STOP} of them`, 'stop');
    }
    if (stop.length) config.stop = stop as string[];
  }
  return config;
}


/**
 * The one context rule of every route (vLLM's): the prompt and the max_tokens asked for
 * must fit the context together, or the request is a 400 naming both sizes; without
 * max_tokens the reply may use what the prompt leaves, which must be at least one token.
 * `atLeast`: promptTokens is a lower bound from the prompt's length (too long to tokenize).
 */
export function checkContext(promptTokens: number, maxTokens: number | undefined, maxContext: number, param: string, atLeast = false): void {
  const asked = maxTokens ?? 1;
  if (promptTokens + asked <= maxContext) return;
  const what = param.startsWith('messages') ? 'messages' : 'prompt';
  const sizes = atLeast
    ? `However, your ${what} ${what === 'messages' ? 'are' : 'is'} at least ${promptTokens} tokens long.`
    : `However, you requested ${promptTokens + asked} tokens (${promptTokens} in the ${what}, ${asked} in the completion).`;
  throw invalid(`This model's maximum context length is ${maxContext} tokens. ${sizes} Please reduce the length of the ${what}${maxTokens !== undefined ? ' or max_tokens' : ''}.`, param, 'context_length_exceeded');
}
