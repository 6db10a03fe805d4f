// What `chat` talks to: the model in-process (the chat package's pipeline on WebGPU) or a
// running `serve` over HTTP. Both stream text deltas and report the same per-turn stats.

import { describeGpu } from '@webgpu-chat/engine';
import { pipeline, type GenerationConfig, type Message, type TextGenerationPipeline } from '@webgpu-chat/chat';
import { basename } from 'node:path';
import type { Dtype, GenerationFlags } from './args.ts';
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
}

export interface BackendStatus {
  model: string;
  dtype?: string;
  adapter?: string;
  maxContext?: number;
  /** Where it runs: "in-process" or the serve URL. */
  where: string;
}

export interface ChatBackend {
  /** The model's name as `serve` reports it (a repo id or folder name). */
  readonly modelId: string;
  /** Streams the reply's text; stats of the turn are in lastTurn once the iteration ends. */
  stream(messages: Message[], flags: GenerationFlags, signal: AbortSignal): AsyncIterable<string>;
  readonly lastTurn: TurnStats | undefined;
  status(): Promise<BackendStatus>;
  dispose(): Promise<void>;
}

/** The engine's default and cap for the KV cache when --max-context is not given. */
export const DEFAULT_MAX_CONTEXT = 4096;

/** How the bundled models/stories260K is named to users and clients. */
export const BUNDLED_MODEL_ID = 'stories260K';

export interface LocalLoadOptions {
  dtype: Dtype;
  /** The name to serve it under (default: modelIdOf(spec)). */
  modelId?: string;
  maxContext?: number;
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
}

/** Resolves MODEL (folder or Hub repo), loads it on the GPU and builds the text-generation pipeline. */
export async function loadLocalModel(spec: string, opts: LocalLoadOptions): Promise<LoadedModel> {
  const log = opts.log ?? ((l: string) => process.stderr.write(l + '\n'));
  const resolved = await resolveModel(spec, { onProgress: progressPrinter(), ...opts.resolve });
  if (resolved.source === 'cache') log(`using ${resolved.repo}@${resolved.commit?.slice(0, 10)} from the Hugging Face cache`);
  const maxContext = opts.maxContext ?? DEFAULT_MAX_CONTEXT;
  const pipe = await pipeline('text-generation', resolved.path, { dtype: opts.dtype, maxContext, templateFallback: 'plain' });
  return {
    pipe,
    modelId: opts.modelId ?? modelIdOf(spec),
    path: resolved.path,
    maxContext: Math.min(maxContext, pipe.model.info.maxPositionEmbeddings),
    plainTemplate: pipe.templates.isEmpty,
  };
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

  async *stream(messages: Message[], flags: GenerationFlags, signal: AbortSignal): AsyncIterable<string> {
    const { pipe } = this.loaded;
    this.last = undefined;
    try {
      for await (const e of pipe.stream(messages, { ...flagsToOptions(flags), signal })) if (e.delta) yield e.delta;
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
        };
      }
    }
  }

  async status(): Promise<BackendStatus> {
    const { pipe, modelId, path, maxContext } = this.loaded;
    return {
      model: modelId === path ? path : `${modelId} (${path})`,
      dtype: pipe.model.info.dtype,
      adapter: describeGpu(pipe.model.gpu.info),
      maxContext,
      where: 'in-process',
    };
  }

  async dispose(): Promise<void> {
    this.loaded.pipe.dispose();
  }
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
  for (const k of ['top_p', 'top_k', 'min_p', 'seed', 'repetition_penalty'] as const) if (flags[k] !== undefined) req[k] = flags[k];
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

  async *stream(messages: Message[], flags: GenerationFlags, signal: AbortSignal): AsyncIterable<string> {
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
          ...flagsToRequest(flags),
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
              choices?: { delta?: { content?: string }; finish_reason?: string | null }[];
              usage?: { prompt_tokens: number; completion_tokens: number } | null;
            };
            if (chunk.error) throw new RemoteError(200, `${this.url}: ${chunk.error.message}`);
            if (chunk.usage) usage = chunk.usage;
            const c = chunk.choices?.[0];
            if (c?.finish_reason) finish = c.finish_reason === 'length' ? 'length' : 'stop';
            const text = c?.delta?.content;
            if (text) {
              if (!first) first = performance.now();
              chunks++;
              yield text;
            }
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
    const h = (await res.json().catch(() => ({}))) as { dtype?: string; adapter?: string; max_context?: number };
    return {
      model: this.modelId,
      ...(h.dtype ? { dtype: h.dtype } : {}),
      ...(h.adapter ? { adapter: h.adapter } : {}),
      ...(h.max_context ? { maxContext: h.max_context } : {}),
      where: this.url,
    };
  }

  async dispose(): Promise<void> {}
}
