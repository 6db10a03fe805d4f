// An OpenAI-compatible HTTP server over one loaded model, on node:http alone.
//   POST /v1/chat/completions   JSON, or server-sent events with stream: true (ending in `data: [DONE]`);
//                               logprobs: true + top_logprobs run on the token-level API
//   POST /v1/completions        vLLM's completions: token-id prompts, echo, logprobs (completions.ts)
//   POST /tokenize, /detokenize, /apply-template   llama-server's tokenizer and template routes
//   GET  /v1/models[/ID]        the one model
//   GET  /health                {"status":"ok"}; 503 {"status":"loading"} until the model is loaded
//   GET  /metrics               Prometheus text (metrics.ts)
// Every route submits to the pipeline's generation loop (packages/chat generate.ts), which
// decodes up to --parallel requests together (continuous batching); more wait there, up to
// maxQueue (503 beyond). A client that disconnects aborts its generation, which leaves the
// batch at the next step. Prompts are tokenized before they are submitted, long ones off the
// event loop (encoder.ts), and response_format / forced tool-call schemas compile and mask in a
// worker thread (constraint-thread.ts). shutdown() drains: it stops accepting, answers requests not yet in
// the batch with 503, and gives running ones a grace period.

import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomBytes, timingSafeEqual } from 'node:crypto';
import type { AssistantModel, Generation, GenerationConfig, GenerationStats, GeneratorStats, TextGenerationPipeline } from '@webgpu-chat/chat';
import { TokenLevelApi, type Outcome, type Track } from './completions.ts';
import { DEFAULT_CONSTRAINT_TIMEOUT, DEFAULT_CONSTRAINT_WORKERS } from './args.ts';
import { ConstraintThread } from './constraint-thread.ts';
import { PromptEncoder } from './encoder.ts';
import { ApiError, checkMethod, errorFromGeneration, guardAccess, invalid, isLoopbackAddress, readJsonBody, sendError, sendJson, unavailable } from './http.ts';
import { ServerMetrics } from './metrics.ts';
import { checkContext, parseChatRequest, templateMessages } from './requests.ts';

export interface ServedModelInfo {
  model: TextGenerationPipeline;
  /** Extra fields for /health (dtype, adapter, max_context, quantization, ...). */
  health?: Record<string, unknown>;
  /**
   * A draft model every chat and text completion is decoded with (speculative decoding;
   * greedy output is unchanged), unless the request turns prompt lookup on.
   */
  assistant?: AssistantModel;
  /** Generation flags under every request's own (serve --prompt-lookup-num-tokens). */
  defaults?: GenerationConfig;
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
  /** A response_format or forced tool call whose schema compiles longer than this is a 400 (default 30 s). */
  constraintTimeoutMs?: number;
  /** Worker threads constraints compile and mask in (default 2): a compile goes to one no other request is using. */
  constraintWorkers?: number;
  /** Browser origins allowed to call (CORS); '*' for any. None by default. */
  corsOrigins?: readonly string[];
  /** Called for each finished request (tests, logs). */
  onRequestDone?: (e: RequestDone) => void;
}

export const DEFAULT_MAX_BODY_BYTES = 4 * 2 ** 20;

const shuttingDown = () => unavailable('The server is shutting down', 'server_shutting_down', 'server_error');

export interface ChatServer {
  server: Server;
  /** http://host:port */
  url: string;
  /** The generation loop's counters (running and waiting requests, KV blocks), once a model is set. */
  stats(): GeneratorStats | undefined;
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
  const metrics = new ServerMetrics();
  const created = Math.floor(Date.now() / 1000);
  let served: ServedModelInfo | undefined;
  let api: TokenLevelApi | undefined;
  let encoder: PromptEncoder | undefined;
  let constraints: ConstraintThread | undefined;
  let draining = false;
  /**
   * Requests being served (tokenizing, waiting or generating) and their generations once
   * submitted: a shutdown refuses those not yet in the batch and ends the rest after its grace.
   */
  const active = new Map<AbortController, Generation[]>();
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
   * Serves one request: `prepare` (parse, tokenize) runs at once, then `work` submits its
   * generations (registering each with `track`). A client that goes away aborts them; a
   * shutdown aborts them with a 503 as the reason.
   */
  async function serveRequest<P>(res: ServerResponse, prefix: string, prepare: (signal: AbortSignal) => Promise<P>, work: (prepared: P, signal: AbortSignal, track: Track) => Promise<Outcome>): Promise<void> {
    const abort = new AbortController();
    let finished = false;
    res.on('close', () => {
      if (!finished) abort.abort(new Error('client disconnected'));
    });
    const generations: Generation[] = [];
    active.set(abort, generations);
    let submitted = false;
    let outcome: Outcome = { finishReason: 'error', completionTokens: 0 };
    try {
      const prepared = await prepare(abort.signal);
      if (draining) throw shuttingDown();
      const m = model();
      const loop = m.served.model.generator;
      if (loop.stats.running >= loop.maxParallel && loop.waitingCount >= maxQueue) {
        throw unavailable(`The server is busy: ${maxQueue} requests are already waiting. Retry later.`, 'server_overloaded');
      }
      submitted = true;
      outcome = await work(prepared, abort.signal, (g) => (generations.push(g), g));
    } catch (e) {
      if (abort.signal.aborted && !(abort.signal.reason instanceof ApiError)) return;
      throw errorFromGeneration(abort.signal.aborted ? abort.signal.reason : e);
    } finally {
      finished = true;
      active.delete(abort);
      if (submitted) {
        const finishReason = abort.signal.aborted ? 'abort' : outcome.finishReason;
        metrics.observeRequest(finishReason, outcome.stats);
        opts.onRequestDone?.({ ...outcome, id: outcome.id ?? `${prefix}-${randomBytes(6).toString('hex')}`, finishReason });
      }
    }
  }

  async function textCompletions(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const body = await readJsonBody(req, maxBody);
    const m = model();
    const prepare = async () => {
      const request = await m.api.parseCompletionRequest(body, m.encoder);
      return { request, assistant: await assistantOf(m.served) };
    };
    return serveRequest(res, 'cmpl', prepare, (p, signal, track) => m.api.completions(p.request, res, signal, track, p.assistant));
  }

  async function completions(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const request = parseChatRequest(await readJsonBody(req, maxBody), opts.modelId);
    const m = model();
    const prepare = async () => {
      const prompt = await m.api.chatPrompt(request, m.encoder);
      checkContext(prompt.ids.length, request.config.max_new_tokens, m.api.maxContext, 'messages');
      // A constrained reply (response_format, a required tool call) decodes without the draft, whose proposals the mask would overrule.
      return { prompt, assistant: prompt.constraint ? undefined : await assistantOf(m.served) };
    };
    return serveRequest(res, 'chatcmpl', prepare, (p, signal, track) => m.api.chat(request, p.prompt, res, signal, track, p.assistant));
  }

  /** The served draft model, bound to the pipeline (loaded on first use). */
  const assistantOf = (s: ServedModelInfo) => (s.assistant !== undefined ? s.model.assistant(s.assistant) : Promise.resolve(undefined));

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
    if (path === '/metrics') {
      checkMethod(req, path, GET);
      const stats = served?.model.generator.stats;
      if (!stats) throw loading();
      const text = metrics.render(stats);
      res.writeHead(200, { 'Content-Type': 'text/plain; version=0.0.4; charset=utf-8', 'Content-Length': Buffer.byteLength(text) });
      return void res.end(text);
    }
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
      // Requests not yet in the batch are answered 503 now; the running ones get the grace period.
      for (const [abort, gens] of active) if (!gens.some((g) => g.admitted)) abort.abort(shuttingDown());
      const deadline = setTimeout(() => {
        for (const abort of active.keys()) abort.abort(shuttingDown());
      }, graceMs);
      while (active.size > 0) await new Promise((r) => setTimeout(r, 10));
      clearTimeout(deadline);
      encoder?.close();
      constraints?.close();
      server.closeAllConnections();
    }
    await closed;
  }

  return {
    server,
    url: `http://${host}:${addr.port}`,
    stats: () => served?.model.generator.stats,
    setModel: (m) => {
      served = m;
      encoder = new PromptEncoder(m.model.tokenizer, maxQueue);
      constraints?.close();
      const thread = new ConstraintThread(m.model.tokenizer, m.model.model.info.vocabSize, {
        compileTimeoutMs: opts.constraintTimeoutMs ?? DEFAULT_CONSTRAINT_TIMEOUT * 1000,
        maxPending: maxQueue,
        maxWorkers: opts.constraintWorkers ?? DEFAULT_CONSTRAINT_WORKERS,
      });
      constraints = thread;
      api = new TokenLevelApi(m.model, opts.modelId, { compile: (spec, param) => thread.compile(spec, param), defaults: m.defaults ?? {} });
      m.model.generator.onToken = (kind, seconds) => metrics.observeToken(kind, seconds);
    },
    shutdown,
    close: () => {
      server.closeAllConnections();
      return shutdown(0);
    },
  };
}
