// What `chat` talks to: the model in-process (the chat package's pipeline on WebGPU) or a
// running `serve` over HTTP. Both stream text deltas and report the same per-turn stats.

import { describeGpu, type ModelInfo } from '@webgpu-chat/engine';
import { checkSameTokenizer, pipeline, type GenerationConfig, type Message, type ReplyPiece, type ResponseFormat, type SpeculativeStats, type TextGenerationPipeline, type ToolCallFormat, type ToolDefinition } from '@webgpu-chat/chat';
import { basename } from 'node:path';
import { NO_DRAFT, SELF_Q4, UsageError, type Dtype, type GenerationFlags, type Quantize } from './args.ts';
import { progressPrinter, resolveModel, type ResolveOptions } from './hub.ts';

export interface TurnStats {
  promptTokens: number;
  /** Tokens generated (an ending EOS included). */
  newTokens: number;
  seconds: number;
  /** Decode speed: generated tokens after the first, over the time after the first. */
  tokensPerSecond: number;
  timeToFirstTokenMs: number;
  finishReason: 'stop' | 'length' | 'abort';
  /** Set when a draft model proposed tokens (speculative decoding). */
  speculative?: SpeculativeStats;
}

/** How the weights are held: what `!status` and /health report. */
export interface WeightsStatus {
  /** e.g. "q4 (4-bit, group 32)"; absent for full-precision weights. */
  quantization?: string;
  /** Resident bytes by storage format ('f32', 'q4', 'gptq', 'other', ...). */
  bytesByFormat?: Record<string, number>;
  /** Bytes of weights one decode step reads. */
  bytesPerToken?: number;
}

export interface BackendStatus extends WeightsStatus {
  model: string;
  dtype?: string;
  adapter?: string;
  maxContext?: number;
  /** The draft model's name, when decoding speculatively. */
  draft?: string;
  /** Where it runs: "in-process" or the serve URL. */
  where: string;
}

/** What a reply is held to: tools it may call, a JSON response format. */
export interface ReplyOptions {
  tools?: readonly ToolDefinition[];
  responseFormat?: ResponseFormat | undefined;
}

export interface ChatBackend {
  /** The model's name as `serve` reports it (a repo id or folder name). */
  readonly modelId: string;
  /**
   * Streams the reply: its text, and with tools its reasoning and calls told apart; stats of
   * the turn are in lastTurn once the iteration ends. `responseFormat` holds it to JSON
   * (constrained decoding).
   */
  stream(messages: Message[], flags: GenerationFlags, signal: AbortSignal, opts?: ReplyOptions): AsyncIterable<ReplyPiece>;
  readonly lastTurn: TurnStats | undefined;
  /** The in-process draft model's name (a folder, Hub id or 'self-q4'), when one is loaded. */
  readonly draftSpec?: string | undefined;
  status(): Promise<BackendStatus>;
  /**
   * Loads `spec` (a folder, Hub id or 'self-q4') as the draft, or drops the draft for
   * undefined; returns a line for the user. Backends that cannot change it leave it out.
   */
  setDraft?(spec: string | undefined): Promise<string>;
  dispose(): Promise<void>;
}

/** The engine's default and cap for the KV cache when --max-context is not given. */
export const DEFAULT_MAX_CONTEXT = 4096;

/** How the bundled models/stories260K is named to users and clients. */
export const BUNDLED_MODEL_ID = 'stories260K';

export interface LocalLoadOptions {
  dtype: Dtype;
  quantize?: Quantize;
  /** A draft model for speculative decoding: a folder, a Hub id or 'self-q4'. */
  draft?: string;
  /** The name to serve it under (default: modelIdOf(spec)). */
  modelId?: string;
  maxContext?: number;
  /** Requests generated together (serve's --parallel); 1 for a chat. */
  parallel?: number;
  /** --tool-call-parser. */
  toolCallParser?: ToolCallFormat;
  /** Progress and notices go here (stderr by default). */
  log?: (line: string) => void;
  resolve?: ResolveOptions;
}

/** The model id shown to users and served: the repo id (with @revision), else the folder's name. */
export function modelIdOf(spec: string): string {
  return /^[\w.-]+\/[\w.-]+(@[\w./-]+)?$/.test(spec) && !spec.startsWith('.') ? spec : basename(spec.replace(/\/+$/, ''));
}

/** The in-process backend's pipeline and what it was loaded from. */
export interface LoadedModel {
  pipe: TextGenerationPipeline;
  modelId: string;
  path: string;
  maxContext: number;
  /** The model has no chat template: messages are joined as plain text. */
  plainTemplate: boolean;
  /** The draft model every generation uses, if any. */
  draft?: LoadedDraft;
  /** How MODEL was loaded (for loading a draft later). */
  options: LocalLoadOptions;
}

export interface LoadedDraft {
  /** As the user named it: a folder, a Hub id or 'self-q4'. */
  spec: string;
  pipe: TextGenerationPipeline;
}

/**
 * Loads the draft named by `spec` for `target`: 'self-q4' is the target's own folder again
 * with q4 linear layers; anything else is resolved like MODEL (folder or Hub id). The draft
 * shares the target's GPU device and context; its tokenizer is checked on first use.
 */
export async function loadDraft(spec: string, target: Pick<LoadedModel, 'pipe' | 'path' | 'maxContext' | 'options'>): Promise<LoadedDraft> {
  if (spec === NO_DRAFT) throw new UsageError(`'${NO_DRAFT}' is not a model`);
  const { options } = target;
  const common = { maxContext: target.maxContext, gpu: target.pipe.model.gpu, templateFallback: 'plain' as const };
  let pipe: TextGenerationPipeline;
  if (spec === SELF_Q4) {
    if (target.pipe.model.info.quantization?.method === 'gptq' || target.pipe.model.info.quantization?.method === 'awq') {
      throw new UsageError(`draft ${SELF_Q4} needs a full-precision model; this one is a ${target.pipe.model.info.quantization.method} checkpoint (name a separate draft model)`);
    }
    pipe = await pipeline('text-generation', target.path, { ...common, dtype: options.dtype, quantize: 'q4' });
  } else {
    const resolved = await resolveModel(spec, { onProgress: progressPrinter(), ...options.resolve });
    pipe = await pipeline('text-generation', resolved.path, { ...common, dtype: options.dtype });
  }
  // Checked now (the pipeline would check on first use) so a mismatched draft fails at load.
  const side = (p: TextGenerationPipeline) => ({ vocabSize: p.model.info.vocabSize, tokenizer: p.tokenizer });
  try {
    checkSameTokenizer(side(target.pipe), side(pipe));
  } catch (e) {
    pipe.dispose();
    throw e;
  }
  return { spec, pipe };
}

/** "q4 (4-bit, group 32)" for ModelInfo.quantization; undefined for full precision. */
export function describeQuantization(q: ModelInfo['quantization']): string | undefined {
  return q ? `${q.method} (${q.bits}-bit, group ${q.groupSize})` : undefined;
}

/** What /health and `!status` report about a loaded model's weights. */
export function weightsStatus(info: ModelInfo): WeightsStatus {
  const quantization = describeQuantization(info.quantization);
  return {
    ...(quantization ? { quantization } : {}),
    ...(info.weightBytesByFormat ? { bytesByFormat: info.weightBytesByFormat } : {}),
    bytesPerToken: info.bytesPerToken,
  };
}

/** The same as /health's fields (snake_case, as the rest of /health). */
export function healthFields(loaded: LoadedModel): Record<string, unknown> {
  const info = loaded.pipe.model.info;
  const w = weightsStatus(info);
  return {
    dtype: info.dtype,
    adapter: describeGpu(loaded.pipe.model.gpu.info),
    max_context: loaded.maxContext,
    ...(w.quantization ? { quantization: w.quantization } : {}),
    ...(w.bytesByFormat ? { weight_bytes_by_format: w.bytesByFormat } : {}),
    bytes_per_token: w.bytesPerToken,
    ...(loaded.draft ? { draft: loaded.draft.spec } : {}),
  };
}

/** Resolves MODEL (folder or Hub repo), loads it on the GPU and builds the text-generation pipeline. */
export async function loadLocalModel(spec: string, opts: LocalLoadOptions): Promise<LoadedModel> {
  const log = opts.log ?? ((l: string) => process.stderr.write(l + '\n'));
  const resolved = await resolveModel(spec, { onProgress: progressPrinter(), ...opts.resolve });
  if (resolved.source === 'cache') log(`using ${resolved.repo}@${resolved.commit?.slice(0, 10)} from the Hugging Face cache`);
  const maxContext = opts.maxContext ?? DEFAULT_MAX_CONTEXT;
  const pipe = await pipeline('text-generation', resolved.path, {
    dtype: opts.dtype,
    ...(opts.quantize ? { quantize: opts.quantize } : {}),
    maxContext,
    templateFallback: 'plain',
    ...(opts.parallel !== undefined ? { maxParallel: opts.parallel } : {}),
    ...(opts.toolCallParser !== undefined ? { toolCallParser: opts.toolCallParser } : {}),
  });
  const loaded: LoadedModel = {
    pipe,
    modelId: opts.modelId ?? modelIdOf(spec),
    path: resolved.path,
    maxContext: Math.min(maxContext, pipe.model.info.maxPositionEmbeddings),
    plainTemplate: pipe.templates.isEmpty,
    options: opts,
  };
  if (opts.draft !== undefined) {
    try {
      loaded.draft = await loadDraft(opts.draft, loaded);
    } catch (e) {
      pipe.dispose();
      throw e;
    }
  }
  return loaded;
}

/** Frees the model and its draft. */
export function disposeLoaded(loaded: LoadedModel): void {
  loaded.draft?.pipe.dispose();
  loaded.pipe.dispose();
}

/** "acceptance 85% (2.6 tokens per step of 3.1 drafted)" for a reply's speculative stats. */
export function formatAcceptance(s: SpeculativeStats): string {
  const drafted = s.steps > 0 ? s.draftedTokens / s.steps : 0;
  return `draft acceptance ${(100 * s.acceptanceRate).toFixed(0)}% (${s.meanAcceptedTokens.toFixed(2)} accepted per step of ${drafted.toFixed(1)} drafted, ${s.steps} steps)`;
}

function flagsToOptions(flags: GenerationFlags): GenerationConfig {
  const out: GenerationConfig = {};
  for (const [k, v] of Object.entries(flags)) if (v !== undefined) (out as Record<string, unknown>)[k] = v;
  return out;
}

export class LocalBackend implements ChatBackend {
  private last: TurnStats | undefined;
  constructor(readonly loaded: LoadedModel) {}

  get modelId(): string {
    return this.loaded.modelId;
  }

  get lastTurn(): TurnStats | undefined {
    return this.last;
  }

  get draftSpec(): string | undefined {
    return this.loaded.draft?.spec;
  }

  async *stream(messages: Message[], flags: GenerationFlags, signal: AbortSignal, opts: ReplyOptions = {}): AsyncIterable<ReplyPiece> {
    const { pipe } = this.loaded;
    this.last = undefined;
    const tools = opts.tools ?? [];
    try {
      // A constrained reply decodes without the draft, whose proposals the mask would overrule.
      const draft = this.loaded.draft && !opts.responseFormat ? { assistant_model: this.loaded.draft.pipe } : {};
      const format = opts.responseFormat ? { response_format: opts.responseFormat } : {};
      const withTools = tools.length ? { tools: [...tools] } : {};
      // Reasoning and calls are told apart wherever the model's format marks them.
      const parser = pipe.replyParser(pipe.renderPrompt(messages, withTools).text, tools.length > 0);
      for await (const e of pipe.stream(messages, { ...flagsToOptions(flags), ...draft, ...format, ...withTools, signal })) {
        if (!e.delta) continue;
        if (parser) yield* parser.push(e.delta);
        else yield { kind: 'content', text: e.delta };
      }
      if (parser) yield* parser.end();
    } finally {
      const s = pipe.lastStats;
      if (s) {
        this.last = {
          promptTokens: s.promptTokens,
          newTokens: s.newTokens,
          seconds: s.totalMs / 1000,
          tokensPerSecond: s.decodeTokensPerSecond,
          timeToFirstTokenMs: s.timeToFirstTokenMs,
          finishReason: s.finishReason,
          ...(s.speculative ? { speculative: s.speculative } : {}),
        };
      }
    }
  }

  async status(): Promise<BackendStatus> {
    const { pipe, modelId, path, maxContext, draft } = this.loaded;
    return {
      model: modelId === path ? path : `${modelId} (${path})`,
      dtype: pipe.model.info.dtype,
      ...weightsStatus(pipe.model.info),
      adapter: describeGpu(pipe.model.gpu.info),
      maxContext,
      ...(draft ? { draft: draftName(draft) } : {}),
      where: 'in-process',
    };
  }

  async setDraft(spec: string | undefined): Promise<string> {
    const old = this.loaded.draft;
    if (spec === undefined) {
      delete this.loaded.draft;
      old?.pipe.dispose();
      return old ? `Draft ${old.spec} dropped: plain decoding.` : 'No draft: plain decoding.';
    }
    const next = await loadDraft(spec, this.loaded);
    this.loaded.draft = next;
    old?.pipe.dispose();
    return `Draft ${draftName(next)} loaded: replies are decoded speculatively.`;
  }

  async dispose(): Promise<void> {
    disposeLoaded(this.loaded);
  }
}

function draftName(d: LoadedDraft): string {
  const info = d.pipe.model.info;
  const format = describeQuantization(info.quantization) ?? info.dtype;
  return d.spec === SELF_Q4 ? `${SELF_Q4}: this model's weights in ${format}` : `${d.spec}: ${info.modelType}, ${format}`;
}

/** A served error: the OpenAI error JSON's message, or the HTTP status. */
export class RemoteError extends Error {
  override name = 'RemoteError';
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

async function remoteError(res: Response, url: string): Promise<RemoteError> {
  const text = await res.text().catch(() => '');
  let message = text.slice(0, 500) || res.statusText;
  try {
    message = (JSON.parse(text) as { error?: { message?: string } }).error?.message ?? message;
  } catch {
    // Not JSON: keep the text.
  }
  return new RemoteError(res.status, `${url} answered ${res.status}: ${message}`);
}

/** Maps Transformers' flag names onto the OpenAI request fields `serve` takes. */
export function flagsToRequest(flags: GenerationFlags): Record<string, unknown> {
  const req: Record<string, unknown> = {};
  if (flags.max_new_tokens !== undefined) req.max_tokens = flags.max_new_tokens;
  if (flags.do_sample === false) req.temperature = 0;
  else if (flags.temperature !== undefined) req.temperature = flags.temperature;
  else if (flags.do_sample === true) req.temperature = 1;
  const passed = [
    'top_p',
    'top_k',
    'min_p',
    'seed',
    'repetition_penalty',
    'num_assistant_tokens',
    'num_assistant_tokens_schedule',
    'assistant_confidence_threshold',
    'prompt_lookup_num_tokens',
    'max_matching_ngram_size',
  ] as const;
  for (const k of passed) if (flags[k] !== undefined) req[k] = flags[k];
  return req;
}

/** Talks to a running `serve` (or any OpenAI-compatible server) with streaming chat completions. */
export class RemoteBackend implements ChatBackend {
  private last: TurnStats | undefined;
  private constructor(
    readonly url: string,
    readonly modelId: string,
    private readonly apiKey: string | undefined,
  ) {}

  /** Connects to `url`; without a model name, the server's first model is used. */
  static async connect(url: string, model: string | undefined, apiKey = process.env.OPENAI_API_KEY): Promise<RemoteBackend> {
    let res: Response;
    try {
      res = await fetch(`${url}/v1/models`, { headers: apiKey ? { Authorization: `Bearer ${apiKey}` } : {} });
    } catch (e) {
      const cause = (e as { cause?: { code?: string } }).cause?.code ?? (e as Error).message;
      throw new RemoteError(0, `cannot reach ${url} (${cause}): is \`serve\` running there?`);
    }
    if (!res.ok) throw await remoteError(res, url);
    const list = (await res.json()) as { data?: { id: string }[] };
    const ids = (list.data ?? []).map((m) => m.id);
    const id = model ?? ids[0];
    if (!id) throw new RemoteError(200, `${url} serves no model`);
    return new RemoteBackend(url, id, apiKey);
  }

  get lastTurn(): TurnStats | undefined {
    return this.last;
  }

  async *stream(messages: Message[], flags: GenerationFlags, signal: AbortSignal, opts: ReplyOptions = {}): AsyncIterable<ReplyPiece> {
    const tools = opts.tools ?? [];
    const t0 = performance.now();
    this.last = undefined;
    let first = 0;
    let chunks = 0;
    let finish: TurnStats['finishReason'] = 'abort';
    let usage: { prompt_tokens: number; completion_tokens: number } | undefined;
    const done = () => {
      const t = performance.now();
      const n = usage?.completion_tokens ?? chunks;
      this.last = {
        promptTokens: usage?.prompt_tokens ?? 0,
        newTokens: n,
        seconds: (t - t0) / 1000,
        tokensPerSecond: n > 1 && first ? ((n - 1) * 1000) / (t - first) : 0,
        timeToFirstTokenMs: first ? first - t0 : 0,
        finishReason: finish,
      };
    };
    try {
      const res = await fetch(`${this.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', ...(this.apiKey ? { Authorization: `Bearer ${this.apiKey}` } : {}) },
        body: JSON.stringify({
          model: this.modelId,
          messages,
          stream: true,
          stream_options: { include_usage: true },
          ...(tools.length ? { tools } : {}),
          ...flagsToRequest(flags),
          ...(opts.responseFormat ? { response_format: opts.responseFormat } : {}),
        }),
        signal,
      });
      if (!res.ok || !res.body) throw await remoteError(res, this.url);
      const decoder = new TextDecoder();
      let buf = '';
      for await (const bytes of res.body as unknown as AsyncIterable<Uint8Array>) {
        buf += decoder.decode(bytes, { stream: true });
        let nl: number;
        while ((nl = buf.indexOf('\n\n')) >= 0) {
          const event = buf.slice(0, nl);
          buf = buf.slice(nl + 2);
          for (const line of event.split('\n')) {
            if (!line.startsWith('data:')) continue;
            const data = line.slice(5).trim();
            if (data === '[DONE]') return;
            const chunk = JSON.parse(data) as {
              error?: { message: string };
              choices?: { delta?: { content?: string; reasoning_content?: string; tool_calls?: { function?: { name?: string; arguments?: string } }[] }; finish_reason?: string | null }[];
              usage?: { prompt_tokens: number; completion_tokens: number } | null;
            };
            if (chunk.error) throw new RemoteError(200, `${this.url}: ${chunk.error.message}`);
            if (chunk.usage) usage = chunk.usage;
            const c = chunk.choices?.[0];
            if (c?.finish_reason) finish = c.finish_reason === 'length' ? 'length' : 'stop';
            const d = c?.delta;
            if (!d || !(d.content || d.reasoning_content || d.tool_calls?.length)) continue;
            if (!first) first = performance.now();
            chunks++;
            if (d.reasoning_content) yield { kind: 'reasoning', text: d.reasoning_content };
            if (d.content) yield { kind: 'content', text: d.content };
            // This server sends each call whole (name and arguments in one delta).
            for (const call of d.tool_calls ?? []) yield { kind: 'tool_call', call: { name: call.function?.name ?? '', arguments: call.function?.arguments ?? '{}' } };
          }
        }
      }
    } catch (e) {
      if (signal.aborted) return;
      throw e;
    } finally {
      done();
    }
  }

  async status(): Promise<BackendStatus> {
    const res = await fetch(`${this.url}/health`);
    const h = (await res.json().catch(() => ({}))) as {
      dtype?: string;
      adapter?: string;
      max_context?: number;
      quantization?: string;
      weight_bytes_by_format?: Record<string, number>;
      bytes_per_token?: number;
      draft?: string;
    };
    return {
      model: this.modelId,
      ...(h.dtype ? { dtype: h.dtype } : {}),
      ...(h.quantization ? { quantization: h.quantization } : {}),
      ...(h.weight_bytes_by_format ? { bytesByFormat: h.weight_bytes_by_format } : {}),
      ...(h.bytes_per_token ? { bytesPerToken: h.bytes_per_token } : {}),
      ...(h.adapter ? { adapter: h.adapter } : {}),
      ...(h.max_context ? { maxContext: h.max_context } : {}),
      ...(h.draft ? { draft: `${h.draft} (chosen by serve --draft)` } : {}),
      where: this.url,
    };
  }

  async setDraft(): Promise<string> {
    throw new UsageError(`the draft is chosen by the server: start it with \`serve MODEL --draft DRAFT\` (this chat uses ${this.url})`);
  }

  async dispose(): Promise<void> {}
}
