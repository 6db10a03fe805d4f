// The HTTP layer every route shares: OpenAI's error JSON, JSON replies, strict request
// bodies, server-sent events, and the checks that keep web pages from driving a local
// server (Host, Origin, CORS preflights).

import type { IncomingMessage, ServerResponse } from 'node:http';

type ErrorType = 'invalid_request_error' | 'authentication_error' | 'permission_error' | 'not_found_error' | 'server_error' | 'overloaded_error';

/** An error with an HTTP status, sent in OpenAI's error JSON shape (and any headers it needs, e.g. Allow, Retry-After). */
export class ApiError extends Error {
  override name = 'ApiError';
  constructor(
    readonly status: number,
    message: string,
    readonly type: ErrorType = 'invalid_request_error',
    readonly param: string | null = null,
    readonly code: string | null = null,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
  toJSON(): { error: { message: string; type: string; param: string | null; code: string | null } } {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

export function invalid(message: string, param: string | null, code: string | null = null): ApiError {
  return new ApiError(400, message, 'invalid_request_error', param, code);
}

/** Seconds a client is told to wait before retrying a 503. */
export const RETRY_AFTER_SECONDS = 1;

/** 503: the server can't take the request now; Retry-After says when to try again. */
export function unavailable(message: string, code: string, type: ErrorType = 'overloaded_error'): ApiError {
  return new ApiError(503, message, type, null, code, { 'Retry-After': String(RETRY_AFTER_SECONDS) });
}

/** 405 naming the methods the route takes (in Allow, as RFC 9110 asks). */
export function checkMethod(req: IncomingMessage, path: string, allowed: readonly string[]): void {
  if (allowed.includes(req.method ?? '')) return;
  throw new ApiError(405, `Method ${req.method} not allowed on ${path}: use ${allowed.filter((m) => m !== 'HEAD').join(' or ')}`, 'invalid_request_error', null, 'method_not_allowed', {
    Allow: allowed.join(', '),
  });
}

export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

export function sendError(res: ServerResponse, e: ApiError): void {
  if (res.headersSent) return void res.end();
  sendJson(res, e.status, e.toJSON(), { ...e.headers, ...(e.status === 413 ? { Connection: 'close' } : {}) });
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

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * The request's JSON body. Only `application/json` is read: a page on another site can
 * send text/plain or form bodies without a CORS preflight (a "simple request"), and the
 * generation would start before the browser hid the answer from it.
 */
export async function readJsonBody(req: IncomingMessage, limit: number): Promise<unknown> {
  const type = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
  if (type !== 'application/json') {
    throw new ApiError(415, `The request body must be JSON sent as 'Content-Type: application/json' (got ${type ? `'${type}'` : 'none'})`, 'invalid_request_error', null, 'unsupported_media_type');
  }
  const raw = await readBody(req, limit);
  let text: string;
  try {
    text = strictUtf8.decode(raw);
  } catch {
    throw invalid('The request body is not valid UTF-8', null, 'invalid_utf8');
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw invalid(`The request body is not valid JSON: ${(e as Error).message}`, null, 'invalid_json');
  }
}

/** A server-sent-events response: one `data:` line per JSON chunk, then `data: [DONE]`. */
export class EventStream {
  constructor(private readonly res: ServerResponse) {
    res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache', Connection: 'keep-alive' });
  }
  send(chunk: unknown): void {
    this.res.write(`data: ${JSON.stringify(chunk)}\n\n`);
  }
  end(): void {
    this.res.end('data: [DONE]\n\n');
  }
}

/** The status a failed generation answers with: the chat layer's named errors are the client's fault. */
export function errorFromGeneration(e: unknown): ApiError {
  if (e instanceof ApiError) return e;
  const name = (e as Error | null)?.name;
  const message = (e as Error | null)?.message ?? String(e);
  if (name === 'ContextLengthError' || name === 'ContextOverflowError') return invalid(message, 'messages', 'context_length_exceeded');
  if (name === 'ToolsUnsupportedError') return invalid(message, 'tools', 'unsupported_parameter');
  if (name === 'ChatInputError' || name === 'GenerationConfigError' || name === 'TemplateError') return invalid(message, null);
  return new ApiError(500, `Generation failed: ${message}`, 'server_error');
}

/**
 * Ends a stream whose headers are gone after a failure: the error as its last event
 * (OpenAI's mid-stream shape), then [DONE]. A client that went away gets nothing more; a
 * request ended by the server (shutdown) gets that reason.
 */
export function endStreamWithError(sse: EventStream, e: unknown, signal: AbortSignal): void {
  const reason: unknown = signal.aborted ? signal.reason : e;
  if (!signal.aborted || reason instanceof ApiError) sse.send(errorFromGeneration(reason).toJSON());
  sse.end();
}

/** Which browser pages and Host names may reach the server. */
export interface AccessPolicy {
  /** Origins allowed to call from a browser ('*' for any); none by default. */
  corsOrigins: readonly string[];
  /** Bound to a loopback address: only loopback Host names are served (DNS rebinding). */
  loopback: boolean;
}

const LOOPBACK_HOST = /^(localhost|[^.]+\.localhost|127(\.\d{1,3}){3}|\[::1\])(:\d+)?$/i;

export function isLoopbackAddress(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127(\.\d{1,3}){3}$/.test(host);
}

const CORS_METHODS = 'GET, HEAD, POST, OPTIONS';
const CORS_MAX_AGE_SECONDS = 600;

/**
 * Refuses what a browser page or a rebound DNS name could send on a user's behalf, and
 * answers CORS preflights. Returns true when the request was answered here.
 */
export function guardAccess(req: IncomingMessage, res: ServerResponse, policy: AccessPolicy): boolean {
  const host = req.headers.host ?? '';
  if (policy.loopback && !LOOPBACK_HOST.test(host)) {
    throw new ApiError(403, `Host '${host}' is not served: this server listens on loopback and answers only localhost names`, 'permission_error', null, 'forbidden_host');
  }
  const origin = req.headers.origin;
  if (origin === undefined) {
    if (req.method === 'OPTIONS') throw new ApiError(405, 'OPTIONS is only answered as a CORS preflight (with an Origin header)', 'invalid_request_error', null, 'method_not_allowed', { Allow: CORS_METHODS });
    return false;
  }
  const allowed = policy.corsOrigins.includes('*') || policy.corsOrigins.includes(origin);
  if (!allowed) {
    throw new ApiError(403, `Origin '${origin}' is not allowed: start the server with --cors-origins ${origin} to let that page call it`, 'permission_error', null, 'forbidden_origin');
  }
  res.setHeader('Access-Control-Allow-Origin', policy.corsOrigins.includes('*') ? '*' : origin);
  res.setHeader('Vary', 'Origin');
  if (req.method !== 'OPTIONS') return false;
  const headers = req.headers['access-control-request-headers'];
  res.writeHead(204, {
    'Access-Control-Allow-Methods': CORS_METHODS,
    'Access-Control-Allow-Headers': typeof headers === 'string' && headers ? headers : 'Authorization, Content-Type',
    'Access-Control-Max-Age': String(CORS_MAX_AGE_SECONDS),
  });
  res.end();
  return true;
}
