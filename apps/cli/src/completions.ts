// The token-level half of `serve`: POST /v1/completions as vLLM serves it (string or
// token-id prompts, several per request, echo, logprobs 0..20, return_token_ids,
// return_tokens_as_token_ids) and log-probabilities for /v1/chat/completions.
// Log-probabilities are the f32 log-softmax of the raw logits, before any sampling
// transform; every one is reduced on the GPU (top-k, logSumExp and the chosen token's
// logit per position, see the engine's reduceRows and scoreTokens).
// It is an adapter over the pipeline's generation loop (packages/chat generate.ts): the
// same sequences, prefix cache and sampling as every other face.

import type { ServerResponse } from 'node:http';
import { randomBytes } from 'node:crypto';
import {
  MAX_LOGPROBS,
  resolveGenerationConfig,
  type GenerationRequest,
  type LogitsProcessor,
  type Assistant,
  type CompiledConstraint,
  type Generation,
  type GenerationConfig,
  type GenerationStats,
  type Message,
  type ReplyPiece,
  type TextGenerationPipeline,
  type ToolCallMessage,
  type ToolChoice,
  type ConstraintSpec,
  toolCallConstraint,
  toolCallMessage,
} from '@webgpu-chat/chat';
import type { PromptEncoder } from './encoder.ts';
import { ApiError, EventStream, endStreamWithError, invalid, sendJson } from './http.ts';
import { compileRequestConstraint, inThreadCompiler, type ConstraintCompiler } from './response-format.ts';
import { COMPLETION_FIELDS, MAX_CHOICES, checkContext, checkFields, num, parseDraftFields, parsePenalties, parseSamplingFields, type ChatRequest, type Penalties } from './requests.ts';

/** Tokens of context a token's text is decoded after (see pieceText). */
const PIECE_CONTEXT = 8;

/** OpenAI's default max_tokens for completions. */
const DEFAULT_COMPLETION_TOKENS = 16;

export interface CompletionRequest {
  penalties: Penalties;
  /** The prompts as token ids; each gives n choices. */
  prompts: number[][];
  n: number;
  maxTokens: number;
  config: GenerationConfig;
  echo: boolean;
  /** Alternatives per position, or null for no logprobs. */
  logprobs: number | null;
  stream: boolean;
  includeUsage: boolean;
  ignoreEos: boolean;
  returnTokenIds: boolean;
  tokensAsIds: boolean;
}

/** One position of a choice: the token, its log-probability (null for the first prompt token) and the alternatives. */
interface Position {
  id: number;
  logprob: number | null;
  top: [number, number][] | null;
}

/** What a choice yields as it goes: positions and the text they add. */
interface ChoiceStep {
  positions: Position[];
  text: string;
}

/** One choice of a request: its prompt and how to generate it. */
interface ChoiceSpec {
  ids: number[];
  maxTokens: number;
  config: GenerationConfig;
  echo: boolean;
  logprobs: number | null;
  ignoreEos: boolean;
  /** A text completion continues its prompt's text; a chat reply starts fresh. */
  continueText: boolean;
  /** The text keeps special tokens (for a reply parser). */
  keepSpecialTokens?: boolean;
  assistant?: Assistant | undefined;
  penalties: Penalties;
  /** The reply is held to this (response_format). */
  constraint?: CompiledConstraint | undefined;
}

interface ChoiceOutcome {
  finishReason: 'stop' | 'length';
  stats: GenerationStats;
}

/** What the server's log and metrics hear about a request. */
export interface Outcome {
  /** The response's id, once it has one. */
  id?: string;
  finishReason: string;
  completionTokens: number;
  /** The first choice's stats. */
  stats?: GenerationStats;
}

/** A chat request's prompt: its ids, its text (the reply parser starts from it), whether tool calls are read. */
export interface ChatPrompt {
  ids: number[];
  text: string;
  tools: boolean;
  /** It continues a final assistant message: the reply is that message's rest, read as plain text. */
  continues: boolean;
  /** What the reply is held to (response_format, a required tool call), and the field a refusal names. */
  constraint?: { spec: ConstraintSpec; param: string };
}

/** Registers a submitted generation with the server (shutdown needs them). */
export type Track = (g: Generation) => Generation;

function bool(b: Record<string, unknown>, key: string): boolean {
  const v = b[key];
  if (v === undefined || v === null) return false;
  if (typeof v !== 'boolean') throw invalid(`'${key}' must be a boolean`, key);
  return v;
}

const isIdList = (x: unknown): x is number[] => Array.isArray(x) && x.length > 0 && x.every((t) => typeof t === 'number');

/**
 * OpenAI's logit_bias and presence/frequency penalties as a logits processor (penalties count
 * the reply's tokens, not the prompt's), or the draft model when there is none: a draft model
 * verifies against the model's own rows, which a processor would change (prompt lookup
 * applies the processor to the rows it verifies, so it keeps working with one). A request
 * with prompt lookup on decodes without the draft model.
 */
function penaltyProcessing(spec: ChoiceSpec, promptLength: number, lookup: boolean): Pick<GenerationRequest, 'logitsProcessor' | 'assistant'> {
  const { logitBias, presence, frequency } = spec.penalties;
  if (logitBias.size === 0 && presence === 0 && frequency === 0) return { assistant: lookup ? undefined : spec.assistant };
  const processor: LogitsProcessor = (logits, previous) => {
    for (const [id, bias] of logitBias) logits[id] = logits[id]! + bias;
    if (presence === 0 && frequency === 0) return;
    const counts = new Map<number, number>();
    for (let i = promptLength; i < previous.length; i++) counts.set(previous[i]!, (counts.get(previous[i]!) ?? 0) + 1);
    for (const [id, n] of counts) logits[id] = logits[id]! - presence - frequency * n;
  };
  return { logitsProcessor: processor };
}

/** OpenAI's usage object; cached_tokens: prompt tokens whose KV blocks were reused. */
function usageOf(promptTokens: number, completionTokens: number, cachedTokens: number) {
  return { prompt_tokens: promptTokens, completion_tokens: completionTokens, total_tokens: promptTokens + completionTokens, prompt_tokens_details: { cached_tokens: cachedTokens } };
}

export class TokenLevelApi {
  readonly vocabSize: number;
  readonly maxContext: number;
  private readonly compileConstraint: ConstraintCompiler;
  private readonly defaults: GenerationConfig;

  constructor(
    readonly tm: TextGenerationPipeline,
    readonly modelId: string,
    opts: {
      /** Where response_format and forced tool calls compile (serve: a worker thread). */
      compile?: ConstraintCompiler;
      /** Generation flags under each request's own (the server's prompt lookup default). */
      defaults?: GenerationConfig;
    } = {},
  ) {
    this.vocabSize = tm.model.info.vocabSize;
    this.maxContext = tm.maxContext;
    this.compileConstraint = opts.compile ?? inThreadCompiler(tm);
    this.defaults = opts.defaults ?? {};
  }

  private checkModel(b: Record<string, unknown>): void {
    if (b.model !== undefined && typeof b.model !== 'string') throw invalid("'model' must be a string", 'model');
    if (typeof b.model === 'string' && b.model !== this.modelId) {
      throw new ApiError(404, `The model '${b.model}' does not exist; this server serves '${this.modelId}'`, 'not_found_error', 'model', 'model_not_found');
    }
  }

  /** logit_bias keys must be token ids of this vocabulary. */
  checkBias(p: Penalties): Penalties {
    for (const id of p.logitBias.keys()) if (id >= this.vocabSize) throw invalid(`'logit_bias': token id ${id} is outside the vocabulary (0..${this.vocabSize - 1})`, 'logit_bias', 'invalid_token_id');
    return p;
  }

  private checkIds(ids: number[], param: string): number[] {
    for (const t of ids) {
      if (!Number.isInteger(t) || t < 0 || t >= this.vocabSize) {
        throw invalid(`${param}: token id ${JSON.stringify(t)} is outside the vocabulary (0..${this.vocabSize - 1})`, param, 'invalid_token_id');
      }
    }
    return ids;
  }

  /**
   * Tokenizes a prompt for a route with a context (off the event loop when long), refusing
   * it first from its length alone when it cannot fit whatever it tokenizes to.
   */
  private async encodePrompt(text: string, addSpecialTokens: boolean, encoder: PromptEncoder, maxTokens: number | undefined, param: string): Promise<number[]> {
    checkContext(this.tm.tokenizer.minTokens(text), maxTokens, this.maxContext, param, true);
    return encoder.encode(text, { addSpecialTokens });
  }

  /** Validates a /v1/completions body (400 naming the param) into token-id prompts and flags. */
  async parseCompletionRequest(body: unknown, encoder: PromptEncoder): Promise<CompletionRequest> {
    if (typeof body !== 'object' || body === null || Array.isArray(body)) throw invalid('The request body must be a JSON object', null);
    const b = body as Record<string, unknown>;
    checkFields(b, COMPLETION_FIELDS);
    this.checkModel(b);
    const p = b.prompt;
    let raw: (string | number[])[];
    if (typeof p === 'string' || isIdList(p)) raw = [p];
    else if (Array.isArray(p) && p.length > 0 && p.every((x) => typeof x === 'string' || isIdList(x))) raw = p as (string | number[])[];
    else throw invalid("'prompt' must be a string, a non-empty list of token ids, or a non-empty list of either", 'prompt');
    const echo = bool(b, 'echo');
    const maxTokens = num(b, 'max_tokens', 0, Number.MAX_SAFE_INTEGER, true) ?? DEFAULT_COMPLETION_TOKENS;
    if (maxTokens === 0 && !echo) throw invalid("'max_tokens' 0 is only allowed with 'echo': true (to score the prompt)", 'max_tokens');
    const logprobs = num(b, 'logprobs', 0, MAX_LOGPROBS, true) ?? null;
    const n = num(b, 'n', 1, MAX_CHOICES, true) ?? 1;
    const bestOf = num(b, 'best_of', 1, MAX_CHOICES, true);
    if (bestOf !== undefined && bestOf !== n) throw invalid("'best_of' other than 'n' is not supported (every generated choice is returned)", 'best_of', 'unsupported_value');
    if (b.suffix !== undefined && b.suffix !== null) throw invalid("'suffix' is not supported", 'suffix', 'unsupported_value');
    const so = b.stream_options;
    if (so !== undefined && so !== null && (typeof so !== 'object' || Array.isArray(so))) throw invalid("'stream_options' must be an object", 'stream_options');
    const config = { ...parseSamplingFields(b), ...parseDraftFields(b) };
    const prompts: number[][] = [];
    for (const [i, x] of raw.entries()) {
      const param = raw.length > 1 ? `prompt[${i}]` : 'prompt';
      const ids = typeof x === 'string' ? await this.encodePrompt(x, true, encoder, maxTokens, param) : this.checkIds(x, param);
      if (ids.length === 0) throw invalid(`${param} is empty: it encodes to no tokens`, param);
      checkContext(ids.length, maxTokens, this.maxContext, param);
      prompts.push(ids);
    }
    return {
      prompts,
      penalties: this.checkBias(parsePenalties(b)),
      n,
      maxTokens,
      config,
      echo,
      logprobs,
      stream: bool(b, 'stream'),
      includeUsage: (so as { include_usage?: unknown } | undefined)?.include_usage === true,
      ignoreEos: bool(b, 'ignore_eos'),
      returnTokenIds: bool(b, 'return_token_ids'),
      tokensAsIds: bool(b, 'return_tokens_as_token_ids'),
    };
  }

  /**
   * The text `id` adds after `context` (the tokens before it): decoded after a few of
   * them, so a SentencePiece word keeps its leading space, as in the whole text.
   */
  private pieceText(context: readonly number[], id: number, skipSpecialTokens = false): string {
    const before = context.slice(-PIECE_CONTEXT);
    const head = this.tm.tokenizer.decode(before, { skipSpecialTokens });
    return this.tm.tokenizer.decode([...before, id], { skipSpecialTokens }).slice(head.length);
  }

  /** A token as the logprobs objects write it. */
  private tokenText(context: readonly number[], id: number, asIds: boolean): string {
    return asIds ? `token_id:${id}` : this.pieceText(context, id);
  }

  /**
   * One choice on the generation loop: the prompt's positions (with echo), then each
   * generated token as it comes; returns why it stopped and its stats.
   */
  private async *choice(spec: ChoiceSpec, signal: AbortSignal, track: Track): AsyncGenerator<ChoiceStep, ChoiceOutcome> {
    const { ids } = spec;
    const wantScores = spec.echo && spec.logprobs !== null;
    const config = resolveGenerationConfig(this.tm.generationConfig, this.defaults, spec.config, { max_new_tokens: spec.maxTokens });
    const gen = track(
      this.tm.generator.generate({
        promptIds: ids,
        config,
        signal,
        logprobs: spec.logprobs ?? undefined,
        promptLogprobs: wantScores ? spec.logprobs! : undefined,
        ignoreEos: spec.ignoreEos,
        continuesPrompt: spec.continueText,
        keepSpecialTokens: spec.keepSpecialTokens,
        constraint: spec.constraint,
        ...penaltyProcessing(spec, ids.length, config.prompt_lookup_num_tokens > 0),
      }),
    );
    if (spec.echo) {
      const scores = await gen.promptScores;
      const text = this.tm.tokenizer.decode(ids, { skipSpecialTokens: true });
      const first: Position = { id: ids[0]!, logprob: null, top: null };
      yield { positions: wantScores ? [first, ...scores.map((s, i) => ({ id: ids[i + 1]!, logprob: s.logprob, top: s.top }))] : ids.map((id) => ({ id, logprob: null, top: null })), text };
    }
    for await (const e of gen) {
      // The last event may release held-back text without a token.
      yield { positions: e.tokenId === null ? [] : [{ id: e.tokenId, logprob: e.logprob?.logprob ?? null, top: e.logprob?.top ?? null }], text: e.delta };
    }
    const { stats } = await gen.result;
    if (stats.finishReason === 'abort') throw signal.reason ?? new Error('aborted');
    return { finishReason: stats.finishReason, stats };
  }

  /**
   * Runs choices together on the loop (they share a prompt's blocks), handing their steps to
   * `onStep` as they come. When one fails the others are aborted, and every choice has
   * settled before this throws, so a stream is never written after its end.
   */
  private async runChoices(specs: ChoiceSpec[], signal: AbortSignal, track: Track, onStep: (index: number, step: ChoiceStep) => void): Promise<ChoiceOutcome[]> {
    const inner = new AbortController();
    const forward = () => inner.abort(signal.reason);
    if (signal.aborted) forward();
    signal.addEventListener('abort', forward, { once: true });
    try {
      const settled = await Promise.allSettled(
        specs.map(async (spec, index) => {
          try {
            const it = this.choice(spec, inner.signal, track);
            let step = await it.next();
            while (!step.done) {
              onStep(index, step.value);
              step = await it.next();
            }
            return step.value;
          } catch (e) {
            inner.abort(e);
            throw e;
          }
        }),
      );
      const failed = settled.find((s) => s.status === 'rejected');
      if (failed) throw signal.aborted ? signal.reason : inner.signal.reason;
      return settled.map((s) => (s as PromiseFulfilledResult<ChoiceOutcome>).value);
    } finally {
      signal.removeEventListener('abort', forward);
    }
  }

  /** Choice i of n: sampling with a seed gives each choice its own stream (seed + i). */
  private static nth(config: GenerationConfig, i: number): GenerationConfig {
    return i > 0 && config.seed !== undefined ? { ...config, seed: (config.seed + i) % 2 ** 32 } : config;
  }

  /**
   * OpenAI's completions logprobs object for positions that follow the tokens of `seq`
   * (which then takes them), starting at text offset `offset`.
   */
  private completionLogprobs(positions: Position[], asIds: boolean, seq: number[], offset: number) {
    const tokens: string[] = [];
    const tokenLogprobs: (number | null)[] = [];
    const top: (Record<string, number> | null)[] = [];
    const offsets: number[] = [];
    for (const p of positions) {
      const context = seq.slice(-PIECE_CONTEXT);
      const t = this.tokenText(context, p.id, asIds);
      offsets.push(offset);
      // Offsets into `text`, which leaves special tokens out.
      offset += this.pieceText(context, p.id, true).length;
      seq.push(p.id);
      tokens.push(t);
      tokenLogprobs.push(p.logprob);
      if (p.top === null) top.push(null);
      else {
        // vLLM's shape: the k best and the chosen token (which may be outside them).
        const m: Record<string, number> = {};
        for (const [id, lp] of p.top) {
          const key = this.tokenText(context, id, asIds);
          if (!(key in m)) m[key] = lp;
        }
        if (!(t in m) && p.logprob !== null) m[t] = p.logprob;
        top.push(m);
      }
    }
    return { value: { tokens, token_logprobs: tokenLogprobs, top_logprobs: top, text_offset: offsets }, offset };
  }

  /** Serves a parsed /v1/completions request: every prompt's n choices run together, decoded with `assistant` when the server has a draft. */
  async completions(req: CompletionRequest, res: ServerResponse, signal: AbortSignal, track: Track, assistant?: Assistant): Promise<Outcome> {
    const id = `cmpl-${randomBytes(12).toString('hex')}`;
    const base = { id, object: 'text_completion', created: Math.floor(Date.now() / 1000), model: this.modelId };
    const promptTokens = req.prompts.reduce((a, p) => a + p.length, 0);
    const specs = req.prompts.flatMap((ids) => Array.from({ length: req.n }, (_, i) => ({ ...req, ids, config: TokenLevelApi.nth(req.config, i), continueText: true, assistant })));
    const choices = specs.map((s) => ({
      text: '',
      offset: 0,
      // The tokens before the next position (the prompt, unless it is echoed).
      seq: req.echo ? [] : [...s.ids],
      positions: [] as Position[],
      generated: [] as number[],
      echoed: req.echo,
    }));
    const sse = req.stream ? new EventStream(res) : undefined;
    let outcomes: ChoiceOutcome[];
    try {
      outcomes = await this.runChoices(specs, signal, track, (index, { positions: ps, text: t }) => {
        const c = choices[index]!;
        if (!c.echoed) c.generated.push(...ps.map((p) => p.id));
        c.echoed = false;
        if (sse) {
          const lp = req.logprobs === null ? null : this.completionLogprobs(ps, req.tokensAsIds, c.seq, c.offset);
          if (lp) c.offset = lp.offset;
          sse.send({ ...base, choices: [{ index, text: t, logprobs: lp?.value ?? null, finish_reason: null, stop_reason: null, ...(req.returnTokenIds ? { token_ids: ps.map((p) => p.id) } : {}) }] });
        } else {
          c.positions.push(...ps);
          c.text += t;
        }
      });
    } catch (e) {
      if (!sse) throw e;
      endStreamWithError(sse, e, signal);
      return { id, finishReason: signal.aborted ? 'abort' : 'error', completionTokens: choices.reduce((s, c) => s + c.generated.length, 0) };
    }
    const completionTokens = choices.reduce((s, c) => s + c.generated.length, 0);
    const cached = outcomes.filter((_, i) => i % req.n === 0).reduce((s, o) => s + o.stats.reusedTokens, 0);
    const usage = usageOf(promptTokens, completionTokens, cached);
    const tokenIds = (i: number) => (req.returnTokenIds ? { prompt_token_ids: specs[i]!.ids, token_ids: choices[i]!.generated } : {});
    if (sse) {
      outcomes.forEach((o, index) => sse.send({ ...base, choices: [{ index, text: '', logprobs: null, finish_reason: o.finishReason, stop_reason: null, ...tokenIds(index) }] }));
      if (req.includeUsage) sse.send({ ...base, choices: [], usage });
      sse.end();
    } else {
      sendJson(res, 200, {
        ...base,
        choices: outcomes.map((o, index) => {
          const c = choices[index]!;
          const lp = req.logprobs === null ? null : this.completionLogprobs(c.positions, req.tokensAsIds, c.seq, 0).value;
          return { index, text: c.text, logprobs: lp, finish_reason: o.finishReason, stop_reason: null, ...tokenIds(index) };
        }),
        usage,
      });
    }
    return { id, finishReason: outcomes.some((o) => o.finishReason === 'length') ? 'length' : 'stop', completionTokens, stats: outcomes[0]!.stats };
  }

  /**
   * The prompt a chat renders to, its text and token ids: the pipeline's rule (template or
   * plain fallback, continue_final_message), with the tools unless tool_choice is "none".
   */
  async chatPrompt(request: ChatRequest, encoder: PromptEncoder): Promise<ChatPrompt> {
    const tools = request.toolChoice === 'none' ? [] : request.tools;
    const kwargs = { ...request.chatTemplateKwargs };
    if (request.reasoningEffort !== undefined) {
      // Only a template that reads the variable can honour it (GPT-OSS's harmony template does).
      if (this.tm.templates.isEmpty || !this.tm.templates.select(tools.length > 0).includes('reasoning_effort')) {
        throw invalid("'reasoning_effort' is not supported by this model: its chat template has no reasoning_effort setting", 'reasoning_effort', 'unsupported_parameter');
      }
      kwargs.reasoning_effort = request.reasoningEffort;
    }
    const prompt = this.tm.renderPrompt(request.messages, { ...(tools.length ? { tools } : {}), chat_template_kwargs: kwargs });
    const ids = await this.encodePrompt(prompt.text, prompt.addSpecialTokens, encoder, request.config.max_new_tokens, 'messages');
    const forced = typeof request.toolChoice === 'object' || request.toolChoice === 'required';
    if (forced && request.responseFormat) throw invalid("'response_format' cannot be combined with a required tool call (tool_choice): the reply is either the call or the JSON", 'response_format');
    if (forced && prompt.continueFinalMessage) throw invalid('tool_choice cannot require a call while continuing a final assistant message', 'tool_choice');
    const constraint = forced
      ? { spec: this.forcedCall(request), param: 'tools' }
      : request.responseFormat
        ? { spec: request.responseFormat, param: request.responseFormat.schema === true ? 'response_format' : 'response_format.json_schema.schema' }
        : undefined;
    return { ids, text: prompt.text, tools: tools.length > 0 && !prompt.continueFinalMessage, continues: prompt.continueFinalMessage, ...(constraint ? { constraint } : {}) };
  }

  /** tool_choice "required" or a named function: the reply is held to a call in the model's syntax. */
  private forcedCall(request: ChatRequest): ConstraintSpec {
    try {
      return toolCallConstraint(this.tm.replyFormat, request.tools, request.toolChoice as Exclude<ToolChoice, 'auto' | 'none'>, request.parallelToolCalls);
    } catch (e) {
      throw invalid((e as Error).message, 'tool_choice', 'unsupported_value');
    }
  }

  /**
   * /v1/chat/completions for a rendered prompt (chatPrompt): n choices together, streamed or
   * not, each reply split into content, reasoning_content and tool_calls where the model's
   * format says how, with OpenAI's chat logprobs when asked; decoded with `assistant` when
   * the server has a draft.
   */
  async chat(request: ChatRequest, prompt: ChatPrompt, res: ServerResponse, signal: AbortSignal, track: Track, assistant?: Assistant): Promise<Outcome> {
    // Compiled before any byte is sent, so a schema the engine refuses is a plain 400.
    const constraint = prompt.constraint ? await compileRequestConstraint(prompt.constraint.spec, this.compileConstraint, prompt.constraint.param) : undefined;
    try {
      return await this.chatChoices(request, prompt, res, signal, track, assistant, constraint);
    } finally {
      constraint?.dispose();
    }
  }

  private async chatChoices(request: ChatRequest, prompt: ChatPrompt, res: ServerResponse, signal: AbortSignal, track: Track, assistant: Assistant | undefined, constraint: CompiledConstraint | undefined): Promise<Outcome> {
    const { ids } = prompt;
    const id = `chatcmpl-${randomBytes(12).toString('hex')}`;
    const base = { id, created: Math.floor(Date.now() / 1000), model: this.modelId, system_fingerprint: null };
    const bytes = (t: string) => Array.from(Buffer.from(t, 'utf8'));
    const logprobs = request.logprobs ?? null;
    const format = this.tm.replyFormat;
    const parsers = Array.from({ length: request.n }, () => (prompt.continues ? undefined : this.tm.replyParser(prompt.text, prompt.tools)));
    const specs: ChoiceSpec[] = parsers.map((parser, i) => ({
      ids,
      // Without max_tokens the reply may run to the end of the context, never past it.
      maxTokens: request.config.max_new_tokens ?? Math.min(resolveGenerationConfig(this.tm.generationConfig).max_new_tokens, this.maxContext - ids.length),
      config: TokenLevelApi.nth(request.config, i),
      echo: false,
      logprobs,
      ignoreEos: false,
      continueText: false,
      keepSpecialTokens: parser !== undefined && format.keepSpecialTokens,
      assistant,
      penalties: this.checkBias(request.penalties),
      constraint,
    }));
    const choices = specs.map(() => ({ seq: [...ids], n: 0, content: '', reasoning: '', calls: [] as ToolCallMessage[], logprobs: [] as ReturnType<typeof entry>[] }));
    const entry = (seq: number[], p: Position) => {
      const context = seq.slice(-PIECE_CONTEXT);
      const token = this.pieceText(context, p.id);
      seq.push(p.id);
      return {
        token,
        logprob: p.logprob!,
        bytes: bytes(token),
        top_logprobs: (p.top ?? []).map(([t, logprob]) => {
          const s = this.pieceText(context, t);
          return { token: s, logprob, bytes: bytes(s) };
        }),
      };
    };
    const sse = request.stream ? new EventStream(res) : undefined;
    const chunk = (index: number, delta: Record<string, unknown>, lp: unknown, finish: string | null) => ({
      ...base,
      object: 'chat.completion.chunk',
      choices: [{ index, delta, logprobs: lp, finish_reason: finish }],
      ...(request.includeUsage ? { usage: null } : {}),
    });
    /** A choice's reply pieces: kept, and streamed as deltas (calls with their index; parallel_tool_calls false keeps the first). */
    const take = (index: number, pieces: ReplyPiece[], lp: ReturnType<typeof entry>[]) => {
      const c = choices[index]!;
      const deltas: Record<string, unknown>[] = [];
      for (const p of pieces) {
        if (p.kind === 'tool_call') {
          if (!request.parallelToolCalls && c.calls.length) continue;
          const call = toolCallMessage(p.call, format.toolCalls);
          deltas.push({ tool_calls: [{ index: c.calls.length, ...call }] });
          c.calls.push(call);
        } else if (p.kind === 'content') {
          c.content += p.text;
          deltas.push({ content: p.text });
        } else {
          c.reasoning += p.text;
          deltas.push({ reasoning_content: p.text });
        }
      }
      if (!sse) return void c.logprobs.push(...lp);
      // Log-probabilities go with the step's first delta (or an empty one while text is held back).
      if (lp.length && !deltas.length) deltas.push({ content: '' });
      deltas.forEach((d, k) => sse.send(chunk(index, d, k === 0 && logprobs !== null ? { content: lp, refusal: null } : null, null)));
    };
    specs.forEach((_, index) => sse?.send(chunk(index, { role: 'assistant', content: '' }, null, null)));
    let outcomes: ChoiceOutcome[];
    try {
      outcomes = await this.runChoices(specs, signal, track, (index, step) => {
        const c = choices[index]!;
        c.n += step.positions.length;
        const lp = logprobs === null ? [] : step.positions.map((p) => entry(c.seq, p));
        const parser = parsers[index];
        take(index, parser ? parser.push(step.text) : step.text ? [{ kind: 'content', text: step.text }] : [], lp);
      });
    } catch (e) {
      if (!sse) throw e;
      endStreamWithError(sse, e, signal);
      return { id, finishReason: signal.aborted ? 'abort' : 'error', completionTokens: choices.reduce((s, c) => s + c.n, 0) };
    }
    parsers.forEach((parser, index) => parser && take(index, parser.end(), []));
    // A reply that called tools and ended by itself ends for them (one cut off by max_tokens stays 'length').
    const finish = outcomes.map((o, i) => (o.finishReason === 'stop' && choices[i]!.calls.length ? 'tool_calls' : o.finishReason));
    const completionTokens = choices.reduce((s, c) => s + c.n, 0);
    const usage = usageOf(ids.length, completionTokens, outcomes[0]!.stats.reusedTokens);
    if (sse) {
      finish.forEach((f, index) => sse.send(chunk(index, {}, null, f)));
      if (request.includeUsage) sse.send({ ...base, object: 'chat.completion.chunk', choices: [], usage });
      sse.end();
    } else {
      sendJson(res, 200, {
        ...base,
        object: 'chat.completion',
        choices: choices.map((c, index) => ({
          index,
          message: {
            role: 'assistant',
            // OpenAI's: a reply that only calls tools has null content.
            content: c.content || (c.calls.length ? null : ''),
            refusal: null,
            ...(c.reasoning ? { reasoning_content: c.reasoning } : {}),
            ...(c.calls.length ? { tool_calls: c.calls } : {}),
          },
          logprobs: logprobs === null ? null : { content: c.logprobs, refusal: null },
          finish_reason: finish[index],
        })),
        usage,
      });
    }
    return { id, finishReason: finish.find((f) => f !== 'stop') ?? 'stop', completionTokens, stats: outcomes[0]!.stats };
  }

  /** POST /tokenize: {content, add_special} → {tokens} (llama-server's names). */
  async tokenize(body: unknown, encoder: PromptEncoder): Promise<{ tokens: number[] }> {
    const b = objectBody(body);
    if (typeof b.content !== 'string') throw invalid("'content' must be a string", 'content');
    if (b.add_special !== undefined && typeof b.add_special !== 'boolean') throw invalid("'add_special' must be a boolean", 'add_special');
    return { tokens: await encoder.encode(b.content, { addSpecialTokens: b.add_special === true }) };
  }

  /** POST /detokenize: {tokens} → {content}. */
  detokenize(body: unknown): { content: string } {
    const b = objectBody(body);
    if (!Array.isArray(b.tokens) || !b.tokens.every((t) => typeof t === 'number')) throw invalid("'tokens' must be a list of token ids", 'tokens');
    return { content: this.tm.tokenizer.decode(this.checkIds(b.tokens as number[], 'tokens')) };
  }

  /** POST /apply-template: {messages, add_generation_prompt, tools, chat_template_kwargs} → {prompt}. */
  applyTemplate(body: unknown, messages: Message[]): { prompt: string } {
    const b = objectBody(body);
    if (b.tools !== undefined && b.tools !== null && !Array.isArray(b.tools)) throw invalid("'tools' must be a list", 'tools');
    const kw = b.chat_template_kwargs;
    if (kw !== undefined && kw !== null && (typeof kw !== 'object' || Array.isArray(kw))) throw invalid("'chat_template_kwargs' must be an object", 'chat_template_kwargs');
    if (b.add_generation_prompt !== undefined && typeof b.add_generation_prompt !== 'boolean') throw invalid("'add_generation_prompt' must be a boolean", 'add_generation_prompt');
    return {
      prompt: this.tm.renderPrompt(messages, {
        add_generation_prompt: b.add_generation_prompt !== false,
        continue_final_message: false,
        ...(Array.isArray(b.tools) ? { tools: b.tools } : {}),
        ...(kw ? { chat_template_kwargs: kw as Record<string, unknown> } : {}),
      }).text,
    };
  }
}

function objectBody(body: unknown): Record<string, unknown> {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw invalid('The request body must be a JSON object', null);
  return body as Record<string, unknown>;
}
