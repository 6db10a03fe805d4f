// An OpenAI-compatible HTTP server over one loaded model, on node:http alone.
//   POST /v1/chat/completions   JSON, or server-sent events with stream: true (ending in `data: [DONE]`);
//                               logprobs: true + top_logprobs run on the token-level API
//   POST /v1/completions        vLLM's completions: token-id prompts, echo, logprobs (completions.ts)
//   POST /tokenize, /detokenize, /apply-template   llama-server's tokenizer and template routes
//   GET  /v1/models[/ID]        the one model
//   GET  /health                {"status":"ok"}; 503 {"status":"loading"} until the model is loaded
// One GPU: requests run one at a time, in arrival order, behind a bounded queue (503 when
// full). A client that disconnects aborts its generation, or leaves the queue. Prompts are
// tokenized before they queue, long ones off the event loop (encoder.ts). shutdown() drains:
// it stops accepting, answers the queue with 503, and gives running requests a grace period.

import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { resolveGenerationConfig, type AssistantModel, type GenerationStats, type StreamEvent, type TextGenerationPipeline } from '@webgpu-chat/chat';
import { TokenLevelApi } from './completions.ts';
import { PromptEncoder } from './encoder.ts';
import { ApiError, EventStream, checkMethod, endStreamWithError, errorFromGeneration, guardAccess, invalid, isLoopbackAddress, readJsonBody, sendError, sendJson, unavailable } from './http.ts';
import { checkContext, parseChatRequest, templateMessages, type ChatRequest } from './requests.ts';

export interface ServedModelInfo {
  model: TextGenerationPipeline;
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
  /** Browser origins allowed to call (CORS); '*' for any. None by default. */
  corsOrigins?: readonly string[];
  /** Called for each finished request (tests, logs). */
  onRequestDone?: (e: RequestDone) => void;
}

export const DEFAULT_MAX_BODY_BYTES = 4 * 2 ** 20;

const shuttingDown = () => unavailable('The server is shutting down', 'server_shutting_down', 'server_error');

/** One-at-a-time access to the GPU with a bounded FIFO of waiters that can leave. */
export class RequestQueue {
  private busy = false;
  private closed = false;
  private waiting: { go: () => void; refuse: (e: ApiError) => void }[] = [];
  constructor(readonly maxWaiting: number) {}

  get length(): number {
    return this.waiting.length;
  }
  get running(): boolean {
    return this.busy;
  }

  /** Resolves with a release function when it is this caller's turn; throws when the queue is full or closed, or `signal` aborts first. */
  acquire(signal: AbortSignal): Promise<() => void> {
    if (this.closed) return Promise.reject(shuttingDown());
    const release = () => {
      const next = this.waiting.shift();
      if (next) next.go();
      else this.busy = false;
    };
    if (!this.busy) {
      this.busy = true;
      return Promise.resolve(once(release));
    }
    if (this.waiting.length >= this.maxWaiting) {
      return Promise.reject(unavailable(`The server is busy: ${this.maxWaiting} requests are already waiting. Retry later.`, 'server_overloaded'));
    }
    return new Promise((resolve, reject) => {
      const leave = () => {
        const i = this.waiting.indexOf(entry);
        if (i >= 0) this.waiting.splice(i, 1);
        signal.removeEventListener('abort', onAbort);
      };
      const entry = {
        go: () => {
          signal.removeEventListener('abort', onAbort);
          resolve(once(release));
        },
        refuse: (e: ApiError) => {
          leave();
          reject(e);
        },
      };
      const onAbort = () => {
        leave();
        reject(signal.reason);
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.waiting.push(entry);
    });
  }

  /** Refuses every waiter and every later caller (shutdown); the running one keeps its turn. */
  close(): void {
    this.closed = true;
    for (const w of [...this.waiting]) w.refuse(shuttingDown());
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

export interface ChatServer {
  server: Server;
  /** http://host:port */
  url: string;
  queue: RequestQueue;
  /** Supplies the model once it is loaded: /health turns ok and completions are served. */
  setModel(m: ServedModelInfo): void;
  /**
   * Drains: stops accepting, answers waiting and new requests with 503, lets running ones
   * finish for up to `graceMs`, then ends them (a stream gets a final error event and
   * [DONE]) and closes every connection.
   */
  shutdown(graceMs: number): Promise<void>;
  close(): Promise<void>;
}

/** Starts listening at once (so /health can say "loading"); pass the model with setModel. */
export async function startChatServer(opts: ServerOptions): Promise<ChatServer> {
  const maxBody = opts.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
  const maxQueue = opts.maxQueue ?? 16;
  const queue = new RequestQueue(maxQueue);
  const created = Math.floor(Date.now() / 1000);
  let served: ServedModelInfo | undefined;
  let api: TokenLevelApi | undefined;
  let encoder: PromptEncoder | undefined;
  let draining = false;
  /** Requests being served (tokenizing, queued or generating), aborted when a shutdown's grace ends. */
  const active = new Set<AbortController>();
  const expectedKey = opts.apiKey !== undefined ? Buffer.from(opts.apiKey) : undefined;
  const access = { corsOrigins: opts.corsOrigins ?? [], loopback: isLoopbackAddress(opts.host ?? '127.0.0.1') };

  /** "Bearer KEY", the scheme in any case (RFC 7235). */
  function authorized(req: IncomingMessage): boolean {
    if (!expectedKey) return true;
    const m = /^bearer +(.*)$/i.exec(req.headers.authorization ?? '');
    const got = Buffer.from(m?.[1] ?? '');
    return got.length === expectedKey.length && timingSafeEqual(got, expectedKey);
  }

  const modelObject = () => ({ id: opts.modelId, object: 'model', created, owned_by: 'webgpu-chat' });
  const loading = () => unavailable('The model is still loading; retry when GET /health reports ok', 'model_loading', 'server_error');

  function model(): { served: ServedModelInfo; api: TokenLevelApi; encoder: PromptEncoder } {
    if (!served || !api || !encoder) throw loading();
    return { served, api, encoder };
  }

  /**
   * Serves one request: `prepare` (parse, tokenize) runs at once, `work` in its turn on the
   * GPU. A client that goes away aborts either, or its place in the queue; a shutdown whose
   * grace runs out aborts them with a 503 as the reason.
   */
  async function serveRequest<P>(
    res: ServerResponse,
    prefix: string,
    prepare: (signal: AbortSignal) => Promise<P>,
    work: (prepared: P, signal: AbortSignal) => Promise<Omit<RequestDone, 'id'> & { id?: string }>,
  ): Promise<void> {
    const abort = new AbortController();
    let finished = false;
    res.on('close', () => {
      if (!finished) abort.abort(new Error('client disconnected'));
    });
    active.add(abort);
    let release: (() => void) | undefined;
    let outcome: Omit<RequestDone, 'id'> & { id?: string } = { finishReason: 'error', completionTokens: 0 };
    try {
      const prepared = await prepare(abort.signal);
      try {
        release = await queue.acquire(abort.signal);
      } catch (e) {
        throw abort.signal.aborted ? abort.signal.reason : e;
      }
      outcome = await work(prepared, abort.signal);
    } catch (e) {
      if (abort.signal.aborted && !(abort.signal.reason instanceof ApiError)) return;
      throw errorFromGeneration(abort.signal.aborted ? abort.signal.reason : e);
    } finally {
      finished = true;
      active.delete(abort);
      release?.();
      if (release) {
        opts.onRequestDone?.({
          ...outcome,
          id: outcome.id ?? `${prefix}-${randomBytes(6).toString('hex')}`,
          finishReason: abort.signal.aborted ? 'abort' : outcome.finishReason,
        });
      }
    }
  }

  async function textCompletions(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const body = await readJsonBody(req, maxBody);
    const m = model();
    return serveRequest(res, 'cmpl', () => m.api.parseCompletionRequest(body, m.encoder), (request, signal) => m.api.completions(request, res, signal));
  }

  async function completions(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const request = parseChatRequest(await readJsonBody(req, maxBody), opts.modelId);
    const m = model();
    const prepare = async () => {
      const ids = await m.api.chatIds(request, m.encoder);
      checkContext(ids.length, request.config.max_new_tokens, m.api.maxContext, 'messages');
      // Without max_tokens the reply may run to the end of the context, never past it.
      const max = request.config.max_new_tokens ?? Math.min(resolveGenerationConfig(m.served.model.generationConfig).max_new_tokens, m.api.maxContext - ids.length);
      return { ids, request: { ...request, config: { ...request.config, max_new_tokens: max } } };
    };
    if (request.logprobs !== undefined) return serveRequest(res, 'chatcmpl', prepare, (p, signal) => m.api.chat(p.request, p.ids, res, signal));
    return serveRequest(res, 'chatcmpl', prepare, async (p, signal) => {
      const id = `chatcmpl-${randomBytes(12).toString('hex')}`;
      const stats = await chatCompletion(m.served, p.request, p.ids, res, signal, id);
      return { id, finishReason: stats?.finishReason ?? 'error', completionTokens: stats?.newTokens ?? 0, ...(stats ? { stats } : {}) };
    });
  }

  /** Generates one chat completion into `res` (streamed or not); returns the generation's stats. */
  async function chatCompletion(served: ServedModelInfo, request: ChatRequest, promptIds: number[], res: ServerResponse, signal: AbortSignal, id: string): Promise<GenerationStats | undefined> {
    const pipe = served.model;
    const now = Math.floor(Date.now() / 1000);
    const base = { id, created: now, model: opts.modelId, system_fingerprint: null };
    let text = '';
    const draft = served.assistant !== undefined ? { assistant_model: served.assistant } : {};
    const it = pipe.stream({ promptIds }, { ...request.config, ...draft, signal })[Symbol.asyncIterator]();
    // Errors before the first token still get a status code.
    let next: IteratorResult<StreamEvent>;
    try {
      next = await it.next();
    } catch (e) {
      throw errorFromGeneration(e);
    }
    if (request.stream) {
      const sse = new EventStream(res);
      const chunk = (delta: Record<string, string>, finish: string | null) => ({
        ...base,
        object: 'chat.completion.chunk',
        choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }],
        ...(request.includeUsage ? { usage: null } : {}),
      });
      sse.send(chunk({ role: 'assistant', content: '' }, null));
      try {
        while (!next.done) {
          if (next.value.delta) sse.send(chunk({ content: next.value.delta }, null));
          next = await it.next();
        }
      } catch (e) {
        endStreamWithError(sse, e, signal);
        return undefined;
      }
      const stats = pipe.lastStats;
      if (signal.aborted) {
        endStreamWithError(sse, signal.reason, signal);
        return stats;
      }
      sse.send(chunk({}, stats?.finishReason === 'length' ? 'length' : 'stop'));
      if (request.includeUsage) sse.send({ ...base, object: 'chat.completion.chunk', choices: [], usage: usage(stats) });
      sse.end();
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
    const stats = pipe.lastStats;
    if (signal.aborted) throw signal.reason;
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

  const GET = ['GET', 'HEAD'];
  const POST = ['POST'];

  async function route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://x');
    let path: string;
    try {
      path = decodeURIComponent(url.pathname).replace(/\/+$/, '') || '/';
    } catch {
      throw invalid(`The request path ${JSON.stringify(url.pathname)} is not valid percent-encoding`, null, 'invalid_path');
    }
    if (guardAccess(req, res, access)) return;
    if (path === '/health') {
      checkMethod(req, path, GET);
      if (draining) return sendJson(res, 503, { status: 'shutting_down' }, { 'Retry-After': '1' });
      return served ? sendJson(res, 200, { status: 'ok', model: opts.modelId, ...served.health }) : sendJson(res, 503, { status: 'loading' }, { 'Retry-After': '1' });
    }
    const tokenRoute = path === '/tokenize' || path === '/detokenize' || path === '/apply-template';
    if (!path.startsWith('/v1/') && !tokenRoute) throw new ApiError(404, `Unknown route ${req.method} ${path}`, 'not_found_error', null, 'unknown_url');
    if (!authorized(req)) {
      throw new ApiError(401, 'Incorrect API key provided: send it as "Authorization: Bearer KEY"', 'authentication_error', null, 'invalid_api_key');
    }
    if (draining) throw shuttingDown();
    if (path === '/v1/models') {
      checkMethod(req, path, GET);
      return sendJson(res, 200, { object: 'list', data: [modelObject()] });
    }
    if (path.startsWith('/v1/models/')) {
      checkMethod(req, path, GET);
      const id = path.slice('/v1/models/'.length);
      if (id !== opts.modelId) throw new ApiError(404, `The model '${id}' does not exist`, 'not_found_error', 'model', 'model_not_found');
      return sendJson(res, 200, modelObject());
    }
    if (path === '/v1/chat/completions') {
      checkMethod(req, path, POST);
      return completions(req, res);
    }
    if (path === '/v1/completions') {
      checkMethod(req, path, POST);
      return textCompletions(req, res);
    }
    if (tokenRoute) {
      checkMethod(req, path, POST);
      const body = await readJsonBody(req, maxBody);
      const { api, encoder } = model();
      if (path === '/tokenize') return sendJson(res, 200, await api.tokenize(body, encoder));
      if (path === '/detokenize') return sendJson(res, 200, api.detokenize(body));
      return sendJson(res, 200, api.applyTemplate(body, templateMessages(body)));
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
  const closed = new Promise<void>((r) => server.once('close', () => r()));

  async function shutdown(graceMs: number): Promise<void> {
    if (!draining) {
      draining = true;
      server.close();
      server.closeIdleConnections();
      queue.close();
      const deadline = setTimeout(() => {
        for (const a of active) a.abort(shuttingDown());
      }, graceMs);
      while (active.size > 0) await new Promise((r) => setTimeout(r, 10));
      clearTimeout(deadline);
      encoder?.close();
      server.closeAllConnections();
    }
    await closed;
  }

  return {
    server,
    url: `http://${host}:${addr.port}`,
    queue,
    setModel: (m) => {
      served = m;
      encoder = new PromptEncoder(m.model.tokenizer, maxQueue);
      api = new TokenLevelApi(m.model, opts.modelId);
    },
    shutdown,
    close: () => {
      server.closeAllConnections();
      return shutdown(0);
    },
  };
}
