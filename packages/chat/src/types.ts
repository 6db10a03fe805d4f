// The chat layer's public types, named after Transformers' chat conventions.

import type { FileSource, Model } from '@webgpu-chat/engine';
import type { JsonSchema } from './constraint/schema.ts';
import type { TextGenerationPipeline } from './pipeline.ts';

export type Role = 'system' | 'user' | 'assistant' | 'tool';

export interface Message {
  role: Role;
  content: string;
  /** An assistant turn's calls (see ToolCallMessage: arguments as JSON text or an object). */
  tool_calls?: unknown[];
  /** An assistant turn's reasoning, for templates that write it back (Qwen3's). */
  reasoning_content?: string;
  tool_call_id?: string;
  name?: string;
}

/** Generation flags with Transformers' GenerationConfig names. */
export interface GenerationConfig {
  do_sample?: boolean;
  temperature?: number;
  top_k?: number;
  top_p?: number;
  min_p?: number;
  repetition_penalty?: number;
  max_new_tokens?: number;
  seed?: number;
  /** Stop strings: matched across token boundaries and cut from the output. */
  stop?: string[];
  /** Extra EOS ids on top of the model's. */
  eos_token_id?: number | number[];
  /** Assisted generation: tokens the draft proposes per step (the start value of an adaptive schedule). */
  num_assistant_tokens?: number;
  /**
   * 'measured' (the default) drafts the length that gives the most tokens per unit of time
   * from the measured cost of a verification step and the running acceptance rate, up to
   * num_assistant_tokens (prompt_lookup_num_tokens with prompt lookup), and pauses drafting
   * while drafts do not pay. Transformers' schedules: 'constant' keeps num_assistant_tokens;
   * 'heuristic' adds 2 after a step whose draft was all accepted and subtracts 1 otherwise,
   * carried over to the next call with the same draft; 'heuristic_transient' restarts from
   * num_assistant_tokens every call.
   */
  num_assistant_tokens_schedule?: AssistantTokensSchedule;
  /**
   * Prompt lookup decoding (Transformers' name): drafts of up to this many tokens copied from
   * where the sequence's last n-gram occurred before in the prompt or the output, verified
   * like a draft model's. 0 (the default) turns it off; it cannot be combined with a draft model.
   */
  prompt_lookup_num_tokens?: number;
  /** Prompt lookup: the longest n-gram matched (shorter ones are tried after it); default 2. */
  max_matching_ngram_size?: number;
  /**
   * A draft model stops drafting after a token it gave less than this probability (default
   * 0.4, as Transformers; 0 turns it off).
   */
  assistant_confidence_threshold?: number;
}

export type AssistantTokensSchedule = 'constant' | 'heuristic' | 'heuristic_transient' | 'measured';

/**
 * A draft model for assisted generation: a loaded pipeline (its tokenizer is checked
 * against the target's), a loaded engine Model (vocabulary size and special ids are
 * checked), or a model folder (path, URL or FileSource) loaded on first use.
 */
export type AssistantModel = TextGenerationPipeline | Model | string | FileSource;

export interface GenerateOptions extends GenerationConfig {
  signal?: AbortSignal;
  /** Called with each new piece of text as it is decoded (never a broken UTF-8 character). */
  onText?: (delta: string) => void;
  /** Chat input only: append the template's assistant opener (default true). */
  add_generation_prompt?: boolean;
  /** Chat input only: continue a trailing assistant message instead of opening a new turn. */
  continue_final_message?: boolean;
  /** Passed to the chat template (e.g. Qwen3's enable_thinking). */
  chat_template_kwargs?: Record<string, unknown>;
  /** Tools the model may call (OpenAI's shape, see ToolDefinition); the reply's calls come back parsed. */
  tools?: unknown[];
  documents?: unknown[];
  /** String input only: return prompt + completion (default false returns only the new text). */
  return_full_text?: boolean;
  /** Speculative decoding: a smaller model sharing the tokenizer drafts tokens that this model verifies. */
  assistant_model?: AssistantModel;
  /** OpenAI's response_format: the reply is held to any JSON object, or to a JSON schema (constrained decoding). */
  response_format?: ResponseFormat;
}

/** OpenAI's response_format: plain text, any JSON object, or a value valid against a JSON schema. */
export type ResponseFormat = { type: 'text' } | { type: 'json_object' } | { type: 'json_schema'; json_schema: { name?: string; schema: JsonSchema; strict?: boolean } };

export type FinishReason = 'stop' | 'length' | 'abort';

export interface GenerationStats {
  promptTokens: number;
  /** Prompt tokens whose KV entries were reused from the previous turn instead of recomputed. */
  reusedTokens: number;
  newTokens: number;
  /** Milliseconds from the call to the first generated token. */
  timeToFirstTokenMs: number;
  prefillTokensPerSecond: number;
  decodeTokensPerSecond: number;
  totalMs: number;
  finishReason: FinishReason;
  /** Assisted generation only. */
  speculative?: SpeculativeStats;
}

export interface SpeculativeStats {
  /** Verification steps: one batched target forward each. */
  steps: number;
  /** Tokens the draft proposed, and how many of them the target accepted. */
  draftedTokens: number;
  acceptedTokens: number;
  /** acceptedTokens / draftedTokens (0 when nothing was drafted). */
  acceptanceRate: number;
  /** acceptedTokens / steps: each step also yields one token of the target's own. */
  meanAcceptedTokens: number;
  /** The draft length the schedule reached. */
  finalNumAssistantTokens: number;
}

export interface StreamEvent {
  /** Text decoded since the previous event (may be empty while a character is incomplete). */
  delta: string;
  /** The sampled token, or null for text released when generation ends (held-back text). */
  tokenId: number | null;
}

export type ChatOutput = [{ generated_text: Message[] }];
export type TextOutput = [{ generated_text: string }];
