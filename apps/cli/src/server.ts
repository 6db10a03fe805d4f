// An OpenAI-compatible HTTP server over one loaded model, on node:http alone.
//   POST /v1/chat/completions   JSON, or server-sent events with stream: true (ending in `data: [DONE]`);
//                               logprobs: true + top_logprobs run on the token-level API
//   POST /v1/completions        vLLM's completions: token-id prompts, echo, logprobs (completions.ts)
//   POST /tokenize, /detokenize, /apply-template   llama-server's tokenizer and template routes
//   GET  /v1/models[/ID]        the one model
//   GET  /health                {"status":"ok"}; 503 {"status":"loading"} until the model is loaded
// One GPU: requests run one at a time, in arrival order, behind a bounded queue (503 when
// full). A client that disconnects aborts its generation, or leaves the queue.

import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { MAX_NUM_ASSISTANT_TOKENS, type AssistantModel, type GenerateOptions, type GenerationConfig, type GenerationStats, type Message, type StreamEvent } from '@webgpu-chat/chat';
import { isTokenModel, TokenLevelApi } from './completions.ts';

/** What the server needs of a model: the chat package's TextGenerationPipeline fits. */
export interface ServedModel {
  stream(input: Message[], opts: GenerateOptions): AsyncIterable<StreamEvent>;
  readonly lastStats: GenerationStats | undefined;
}

export interface ServedModelInfo {
  model: ServedModel;
  /** Extra fields for /health (dtype, adapter, max_context, quantization, ...). */
  health?: Record<string, unknown>;
  /**
   * A draft model every chat completion without logprobs is decoded with (speculative
   * decoding; greedy output is unchanged). Token-level routes decode with the model alone.
   */
  assistant?: AssistantModel;
}

/** What onRequestDone hears about a finished request. */
export interface RequestDone {
  id: string;
  finishReason: string;
  completionTokens: number;
  /** The generation's stats, for chat completions decoded by the pipeline. */
  stats?: GenerationStats;
}

export interface ServerOptions {
  /** The id clients name in `model`. */
  modelId: string;
  host?: string;
  port?: number;
  apiKey?: string;
  /** Requests that may wait behind the running one; more get 503. */
  maxQueue?: number;
  /** Request bodies above this many bytes get 413. */
  maxBodyBytes?: number;
  /** Called for each finished request (tests, logs). */
  onRequestDone?: (e: RequestDone) => void;
}

/** llama-server's routes (outside /v1). */
const TOKEN_ROUTES: ReadonlySet<string> = new Set(['/tokenize', '/detokenize', '/apply-template']);

/** The messages of an /apply-template body, checked as the chat route checks them. */
function templateMessages(body: unknown): Message[] {
  const b = body as { messages?: unknown } | null;
  if (typeof b !== 'object' || b === null || Array.isArray(b)) throw invalid('The request body must be a JSON object', null);
  return parseChatRequest({ messages: b.messages }, '').messages;
}

export const DEFAULT_MAX_BODY_BYTES = 4 * 2 ** 20;
/** OpenAI caps `stop` at 4 strings; a few more cost nothing here. */
const MAX_STOP = 16;
const ROLES = new Set(['system', 'user', 'assistant', 'tool', 'developer']);

type ErrorType = 'invalid_request_error' | 'authentication_error' | 'not_found_error' | 'server_error' | 'overloaded_error';

/** An error with an HTTP status, sent in OpenAI's error JSON shape. */
export class ApiError extends Error {
  override name = 'ApiError';
  constructor(
    readonly status: number,
    message: string,
    readonly type: ErrorType = 'invalid_request_error',
    readonly param: string | null = null,
    readonly code: string | null = null,
  ) {
    super(message);
  }
  toJSON(): { error: { message: string; type: string; param: string | null; code: string | null } } {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

class QueueFullError extends ApiError {
  constructor(max: number) {
    super(503, `The server is busy: ${max} requests are already waiting. Retry later.`, 'overloaded_error', null, 'server_overloaded');
  }
}

/** One-at-a-time access to the GPU with a bounded FIFO of waiters that can leave. */
export class RequestQueue {
  private busy = false;
  private waiting: { go: () => void }[] = [];
  constructor(readonly maxWaiting: number) {}

  get length(): number {
    return this.waiting.length;
  }
  get running(): boolean {
    return this.busy;
  }

  /** Resolves with a release function when it is this caller's turn; throws when the queue is full or `signal` aborts first. */
  acquire(signal: AbortSignal): Promise<() => void> {
    const release = () => {
      const next = this.waiting.shift();
      if (next) next.go();
      else this.busy = false;
    };
    if (!this.busy) {
      this.busy = true;
      return Promise.resolve(once(release));
    }
    if (this.waiting.length >= this.maxWaiting) return Promise.reject(new QueueFullError(this.maxWaiting));
    return new Promise((resolve, reject) => {
      const entry = {
        go: () => {
          signal.removeEventListener('abort', onAbort);
          resolve(once(release));
        },
      };
      const onAbort = () => {
        const i = this.waiting.indexOf(entry);
        if (i >= 0) this.waiting.splice(i, 1);
        reject(signal.reason);
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.waiting.push(entry);
    });
  }
}

function once(f: () => void): () => void {
  let done = false;
  return () => {
    if (!done) {
      done = true;
      f();
    }
  };
}

export interface ChatRequest {
  messages: Message[];
  stream: boolean;
  includeUsage: boolean;
  config: GenerationConfig;
  /** logprobs: true was asked, with this many top_logprobs per token. */
  logprobs?: number;
}

export function invalid(message: string, param: string | null, code: string | null = null): ApiError {
  return new ApiError(400, message, 'invalid_request_error', param, code);
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
    // OpenAI's 'developer' role is the system prompt of newer models.
    const role = (r.role === 'developer' ? 'system' : r.role) as Message['role'];
    return { role, content: contentOf(r, i) };
  });
  const n = num(b, 'n', 1, 128, true);
  if (n !== undefined && n !== 1) throw invalid("Only 'n': 1 is supported", 'n', 'unsupported_value');
  if (b.stream !== undefined && b.stream !== null && typeof b.stream !== 'boolean') throw invalid("'stream' must be a boolean", 'stream');
  const so = b.stream_options;
  if (so !== undefined && so !== null && (typeof so !== 'object' || Array.isArray(so))) throw invalid("'stream_options' must be an object", 'stream_options');
  for (const k of ['presence_penalty', 'frequency_penalty'] as const) {
    const v = num(b, k, -2, 2);
    if (v !== undefined && v !== 0) throw invalid(`'${k}' is not supported (use repetition_penalty)`, k, 'unsupported_value');
  }
  if (b.logprobs !== undefined && b.logprobs !== null && typeof b.logprobs !== 'boolean') throw invalid("'logprobs' must be a boolean", 'logprobs');
  const topLogprobs = num(b, 'top_logprobs', 0, MAX_LOGPROBS, true);
  if (topLogprobs !== undefined && b.logprobs !== true) throw invalid("'top_logprobs' needs 'logprobs': true", 'top_logprobs');

  const config = parseSamplingFields(b);
  // Not OpenAI's: the draft length of speculative decoding, when the server has a draft.
  const draftLength = num(b, 'num_assistant_tokens', 1, MAX_NUM_ASSISTANT_TOKENS, true);
  if (draftLength !== undefined) config.num_assistant_tokens = draftLength;
  const schedule = b.num_assistant_tokens_schedule;
  if (schedule !== undefined && schedule !== null) {
    if (schedule !== 'constant' && schedule !== 'heuristic' && schedule !== 'heuristic_transient') {
      throw invalid("'num_assistant_tokens_schedule' must be one of constant, heuristic, heuristic_transient", 'num_assistant_tokens_schedule');
    }
    config.num_assistant_tokens_schedule = schedule;
  }
  const maxTokens = num(b, 'max_completion_tokens', 1, Number.MAX_SAFE_INTEGER, true) ?? num(b, 'max_tokens', 1, Number.MAX_SAFE_INTEGER, true);
  if (maxTokens !== undefined) config.max_new_tokens = maxTokens;
  return {
    messages,
    stream: b.stream === true,
    includeUsage: (so as { include_usage?: unknown } | undefined)?.include_usage === true,
    config,
    ...(b.logprobs === true ? { logprobs: topLogprobs ?? 0 } : {}),
  };
}

/** The most alternatives per position `logprobs` / `top_logprobs` may ask for (OpenAI's and vLLM's cap). */
export const MAX_LOGPROBS = 20;

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

export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

function sendError(res: ServerResponse, e: ApiError): void {
  if (res.headersSent) return void res.end();
  sendJson(res, e.status, e.toJSON(), e.status === 413 ? { Connection: 'close' } : {});
}

/** Reads the body up to `limit` bytes; more is a 413 without reading the rest. */
function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  const tooLarge = () => new ApiError(413, `The request body exceeds ${limit} bytes`, 'invalid_request_error', null, 'request_too_large');
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > limit) return Promise.reject(tooLarge());
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        req.pause();
        reject(tooLarge());
        return;
      }
      parts.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(parts)));
    req.on('error', reject);
  });
}

export function errorFromGeneration(e: unknown): ApiError {
  const name = (e as Error | null)?.name;
  const message = (e as Error | null)?.message ?? String(e);
  if (name === 'ContextLengthError' || name === 'ContextOverflowError') {
    return new ApiError(413, message, 'invalid_request_error', 'messages', 'context_length_exceeded');
  }
  if (name === 'ChatInputError' || name === 'GenerationConfigError' || name === 'TemplateError') {
    return new ApiError(400, message, 'invalid_request_error', null);
  }
  return new ApiError(500, `Generation failed: ${message}`, 'server_error');
}

export interface ChatServer {
  server: Server;
  /** http://host:port */
  url: string;
  queue: RequestQueue;
  /** Supplies the model once it is loaded: /health turns ok and completions are served. */
  setModel(m: ServedModelInfo): void;
  close(): Promise<void>;
}

/** Starts listening at once (so /health can say "loading"); pass the model with setModel. */
export async function startChatServer(opts: ServerOptions): Promise<ChatServer> {
  const maxBody = opts.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
  const queue = new RequestQueue(opts.maxQueue ?? 16);
  const created = Math.floor(Date.now() / 1000);
  let served: ServedModelInfo | undefined;
  let api: TokenLevelApi | undefined;
  const expectedAuth = opts.apiKey !== undefined ? Buffer.from(`Bearer ${opts.apiKey}`) : undefined;

  function authorized(req: IncomingMessage): boolean {
    if (!expectedAuth) return true;
    const got = Buffer.from(req.headers.authorization ?? '');
    return got.length === expectedAuth.length && timingSafeEqual(got, expectedAuth);
  }

  const modelObject = () => ({ id: opts.modelId, object: 'model', created, owned_by: 'webgpu-chat' });

  async function jsonBody(req: IncomingMessage): Promise<unknown> {
    const raw = await readBody(req, maxBody);
    try {
      return JSON.parse(raw.toString('utf8'));
    } catch (e) {
      throw invalid(`The request body is not valid JSON: ${(e as Error).message}`, null, 'invalid_json');
    }
  }

  const loading = () => new ApiError(503, 'The model is still loading; retry when GET /health reports ok', 'server_error', null, 'model_loading');

  function tokenApi(): TokenLevelApi {
    if (!served) throw loading();
    if (!api) throw new ApiError(501, 'This server model has no tokenizer-level access (token routes need the chat pipeline)', 'server_error', null, 'unsupported');
    return api;
  }

  /** Runs `work` in its turn on the GPU; a client that goes away aborts it or its place in the queue. */
  async function queued(res: ServerResponse, prefix: string, work: (signal: AbortSignal) => Promise<Omit<RequestDone, 'id'> & { id?: string }>): Promise<void> {
    const abort = new AbortController();
    let finished = false;
    res.on('close', () => {
      if (!finished) abort.abort(new Error('client disconnected'));
    });
    let release: () => void;
    try {
      release = await queue.acquire(abort.signal);
    } catch (e) {
      if (abort.signal.aborted) return;
      throw e;
    }
    let outcome: Omit<RequestDone, 'id'> & { id?: string } = { finishReason: 'error', completionTokens: 0 };
    try {
      outcome = await work(abort.signal);
    } catch (e) {
      if (abort.signal.aborted) return;
      throw e instanceof ApiError ? e : errorFromGeneration(e);
    } finally {
      finished = true;
      release();
      opts.onRequestDone?.({
        ...outcome,
        id: outcome.id ?? `${prefix}-${randomBytes(6).toString('hex')}`,
        finishReason: abort.signal.aborted ? 'abort' : outcome.finishReason,
      });
    }
  }

  async function textCompletions(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const body = await jsonBody(req);
    const a = tokenApi();
    const request = a.parseCompletionRequest(body);
    return queued(res, 'cmpl', (signal) => a.completions(request, res, signal));
  }

  async function completions(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const request = parseChatRequest(await jsonBody(req), opts.modelId);
    if (!served) throw loading();
    if (request.logprobs !== undefined) {
      const a = tokenApi();
      return queued(res, 'chatcmpl', (signal) => a.chat(request, res, signal));
    }
    const model = served.model;
    const assistant = served.assistant;
    return queued(res, 'chatcmpl', async (signal) => {
      const id = `chatcmpl-${randomBytes(12).toString('hex')}`;
      const stats = await chatCompletion(model, assistant, request, res, signal, id);
      return { id, finishReason: stats?.finishReason ?? 'error', completionTokens: stats?.newTokens ?? 0, ...(stats ? { stats } : {}) };
    });
  }

  /** Generates one chat completion into `res` (streamed or not); returns the generation's stats. */
  async function chatCompletion(
    model: ServedModel,
    assistant: AssistantModel | undefined,
    request: ChatRequest,
    res: ServerResponse,
    signal: AbortSignal,
    id: string,
  ): Promise<GenerationStats | undefined> {
    const now = Math.floor(Date.now() / 1000);
    const base = { id, created: now, model: opts.modelId, system_fingerprint: null };
    let text = '';
    const draft = assistant !== undefined ? { assistant_model: assistant } : {};
    const it = model.stream(request.messages, { ...request.config, ...draft, signal })[Symbol.asyncIterator]();
    // Errors before the first token (prompt too long, bad template) still get a status code.
    let next: IteratorResult<StreamEvent>;
    try {
      next = await it.next();
    } catch (e) {
      throw errorFromGeneration(e);
    }
    if (request.stream) {
      res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache', Connection: 'keep-alive' });
      const send = (chunk: unknown) => res.write(`data: ${JSON.stringify(chunk)}\n\n`);
      const chunk = (delta: Record<string, string>, finish: string | null) => ({
        ...base,
        object: 'chat.completion.chunk',
        choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }],
        ...(request.includeUsage ? { usage: null } : {}),
      });
      send(chunk({ role: 'assistant', content: '' }, null));
      try {
        while (!next.done) {
          if (next.value.delta) send(chunk({ content: next.value.delta }, null));
          next = await it.next();
        }
      } catch (e) {
        // Headers are gone: report in the stream, as OpenAI does for mid-stream failures.
        if (!signal.aborted) send(errorFromGeneration(e).toJSON());
        res.end('data: [DONE]\n\n');
        return undefined;
      }
      const stats = model.lastStats;
      if (signal.aborted) return stats;
      send(chunk({}, stats?.finishReason === 'length' ? 'length' : 'stop'));
      if (request.includeUsage) send({ ...base, object: 'chat.completion.chunk', choices: [], usage: usage(stats) });
      res.end('data: [DONE]\n\n');
      return stats;
    }
    try {
      while (!next.done) {
        text += next.value.delta;
        next = await it.next();
      }
    } catch (e) {
      throw errorFromGeneration(e);
    }
    const stats = model.lastStats;
    if (signal.aborted) return stats;
    sendJson(res, 200, {
      ...base,
      object: 'chat.completion',
      choices: [{ index: 0, message: { role: 'assistant', content: text, refusal: null }, logprobs: null, finish_reason: stats?.finishReason === 'length' ? 'length' : 'stop' }],
      usage: usage(stats),
    });
    return stats;
  }

  function usage(s: GenerationStats | undefined) {
    const prompt = s?.promptTokens ?? 0;
    const completion = s?.newTokens ?? 0;
    return { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion };
  }

  async function route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = new URL(req.url ?? '/', 'http://x').pathname.replace(/\/+$/, '') || '/';
    if (path === '/health') {
      if (req.method !== 'GET' && req.method !== 'HEAD') throw new ApiError(405, `Method ${req.method} not allowed on ${path}`);
      return served ? sendJson(res, 200, { status: 'ok', model: opts.modelId, ...served.health }) : sendJson(res, 503, { status: 'loading' });
    }
    const tokenRoute = TOKEN_ROUTES.has(path);
    if (!path.startsWith('/v1/') && !tokenRoute) throw new ApiError(404, `Unknown route ${req.method} ${path}`, 'not_found_error', null, 'unknown_url');
    if (!authorized(req)) {
      throw new ApiError(401, 'Incorrect API key provided: send it as "Authorization: Bearer KEY"', 'authentication_error', null, 'invalid_api_key');
    }
    if (path === '/v1/models') {
      if (req.method !== 'GET') throw new ApiError(405, `Method ${req.method} not allowed on ${path}`);
      return sendJson(res, 200, { object: 'list', data: [modelObject()] });
    }
    if (path.startsWith('/v1/models/')) {
      const id = decodeURIComponent(path.slice('/v1/models/'.length));
      if (id !== opts.modelId) throw new ApiError(404, `The model '${id}' does not exist`, 'not_found_error', 'model', 'model_not_found');
      return sendJson(res, 200, modelObject());
    }
    if (path === '/v1/chat/completions') {
      if (req.method !== 'POST') throw new ApiError(405, `Method ${req.method} not allowed on ${path}: use POST`);
      return completions(req, res);
    }
    if (path === '/v1/completions') {
      if (req.method !== 'POST') throw new ApiError(405, `Method ${req.method} not allowed on ${path}: use POST`);
      return textCompletions(req, res);
    }
    if (tokenRoute) {
      if (req.method !== 'POST') throw new ApiError(405, `Method ${req.method} not allowed on ${path}: use POST`);
      const body = await jsonBody(req);
      const a = tokenApi();
      if (path === '/tokenize') return sendJson(res, 200, a.tokenize(body));
      if (path === '/detokenize') return sendJson(res, 200, a.detokenize(body));
      return sendJson(res, 200, a.applyTemplate(body, templateMessages(body)));
    }
    throw new ApiError(404, `Unknown route ${req.method} ${path}`, 'not_found_error', null, 'unknown_url');
  }

  const server = createServer((req, res) => {
    route(req, res).catch((e: unknown) => {
      const err = e instanceof ApiError ? e : new ApiError(500, `Internal error: ${(e as Error).message}`, 'server_error');
      sendError(res, err);
      // After a 413 the rest of the body is never read: drop the connection.
      if (err.status === 413) res.on('finish', () => req.socket.destroy());
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 8000, opts.host ?? '127.0.0.1', () => resolve());
  });
  const addr = server.address() as AddressInfo;
  const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  return {
    server,
    url: `http://${host}:${addr.port}`,
    queue,
    setModel: (m) => {
      served = m;
      api = isTokenModel(m.model) ? new TokenLevelApi(m.model, opts.modelId) : undefined;
    },
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}
