// `serve` under faults and hostile input, on the bundled stories260K (512 tokens of context):
// a huge prompt doesn't freeze the others, SIGTERM drains, web pages and rebound DNS names
// are refused, one context rule on every route, and the small HTTP faults.
import { spawn, type ChildProcess } from 'node:child_process';
import { request as httpRequest } from 'node:http';
import { resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bundledModelPath } from '../src/args.ts';
import { loadLocalModel, type LoadedModel } from '../src/backend.ts';
import { startChatServer, type ChatServer } from '../src/server.ts';
import { fetchReply, postJsonTo } from './http-client.ts';

const MODEL = 'stories260K';
const ROOT = resolve(import.meta.dirname, '../../..');
const user = (content: string) => [{ role: 'user' as const, content }];
const JSON_TYPE = { 'Content-Type': 'application/json' };

let loaded: LoadedModel;
let srv: ChatServer;

beforeAll(async () => {
  loaded = await loadLocalModel(bundledModelPath(), { dtype: 'auto', modelId: MODEL, maxContext: 512, log: () => {} });
  srv = await startChatServer({ modelId: MODEL, port: 0 });
  srv.setModel({ model: loaded.pipe });
});

afterAll(async () => {
  await srv?.close();
  loaded?.pipe.dispose();
});

const call = (s: ChatServer, path: string, init: RequestInit = {}) => fetchReply(s.url + path, init);
const postJson = (s: ChatServer, path: string, body: unknown) => postJsonTo(s.url + path, body);

/** A raw HTTP request, for headers fetch won't let a caller set (Host) or bytes it would re-encode. */
function rawRequest(s: ChatServer, opts: { method: string; path: string; headers?: Record<string, string>; body?: Buffer }): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; text: string }> {
  const url = new URL(s.url);
  return new Promise((res, rej) => {
    const r = httpRequest({ host: url.hostname, port: url.port, method: opts.method, path: opts.path, headers: opts.headers ?? {} }, (m) => {
      let text = '';
      m.on('data', (d) => (text += d));
      m.on('end', () => res({ status: m.statusCode!, headers: m.headers, text }));
    });
    r.on('error', rej);
    r.end(opts.body);
  });
}

/** Polls /health every 50 ms while `work` runs; returns work's result and the slowest answer. */
async function pollHealthDuring<T>(s: ChatServer, work: Promise<T>): Promise<{ result: T; slowestMs: number; polls: number }> {
  let done = false;
  let slowestMs = 0;
  let polls = 0;
  const poller = (async () => {
    while (!done) {
      const t0 = performance.now();
      const r = await fetch(`${s.url}/health`);
      await r.text();
      slowestMs = Math.max(slowestMs, performance.now() - t0);
      polls++;
      await new Promise((r) => setTimeout(r, 50));
    }
  })();
  const result = await work;
  done = true;
  await poller;
  return { result, slowestMs, polls };
}

describe('a huge prompt does not stall the server', () => {
  it('a 3.9 MB message is refused from its length, without tokenizing, while /health answers', async () => {
    const huge = 'Once upon a time there was a cat. '.repeat(Math.floor(3.9e6 / 34));
    const t0 = performance.now();
    const { result, slowestMs } = await pollHealthDuring(srv, postJson(srv, '/v1/chat/completions', { model: MODEL, messages: user(huge), max_tokens: 10 }));
    expect(result.status).toBe(400);
    expect(result.json.error).toMatchObject({ code: 'context_length_exceeded', param: 'messages' });
    expect(result.json.error.message).toMatch(/maximum context length is 512 tokens\. However, your messages are at least \d+ tokens long/);
    expect(performance.now() - t0).toBeLessThan(5000);
    expect(slowestMs).toBeLessThan(1000);
  });

  it('a long text is tokenized off the event loop, exactly as inline', async () => {
    const text = 'Lily and Ben went to the park, and then they found a big red ball. '.repeat(6000);
    const { result, slowestMs, polls } = await pollHealthDuring(srv, postJson(srv, '/tokenize', { content: text }));
    expect(result.status).toBe(200);
    expect(result.json.tokens).toEqual(loaded.pipe.tokenizer.encode(text, { addSpecialTokens: false }));
    expect(polls).toBeGreaterThan(1);
    expect(slowestMs).toBeLessThan(1000);
  });
});

describe('one context rule on every route', () => {
  const long = 'Once upon a time there was a cat. '.repeat(80); // about 800 tokens
  const mid = 'Once upon a time there was a cat. '.repeat(40); // about 400 tokens
  const routes = [
    ['chat', '/v1/chat/completions', (content: string, extra: object) => ({ model: MODEL, messages: user(content), ...extra }), 'messages'],
    ['chat with logprobs', '/v1/chat/completions', (content: string, extra: object) => ({ model: MODEL, messages: user(content), logprobs: true, ...extra }), 'messages'],
    ['completions', '/v1/completions', (content: string, extra: object) => ({ model: MODEL, prompt: content, ...extra }), 'prompt'],
  ] as const;

  it.each(routes)('%s: a prompt beyond the context is 400 with the sizes', async (_name, path, body, param) => {
    const r = await postJson(srv, path, body(long, {}));
    expect(r.status).toBe(400);
    expect(r.json.error).toMatchObject({ code: 'context_length_exceeded', param, type: 'invalid_request_error' });
    // completions' max_tokens defaults to 16 (OpenAI's), chat's to what the prompt leaves.
    expect(r.json.error.message).toMatch(new RegExp(`maximum context length is 512 tokens\\. However, you requested \\d+ tokens \\(\\d+ in the ${param}, (1|16) in the completion\\)`));
  });

  it.each(routes)('%s: prompt + max_tokens beyond the context is 400, not a shortened reply', async (_name, path, body, param) => {
    const r = await postJson(srv, path, body(mid, { max_tokens: 200 }));
    expect(r.status).toBe(400);
    expect(r.json.error).toMatchObject({ code: 'context_length_exceeded', param });
    expect(r.json.error.message).toMatch(new RegExp(`However, you requested \\d+ tokens \\(\\d+ in the ${param}, 200 in the completion\\)\\. Please reduce the length of the ${param} or max_tokens`));
  });

  it.each(routes)('%s: without max_tokens the reply may use what the prompt leaves', async (_name, path, body) => {
    const r = await postJson(srv, path, body(mid, { temperature: 0 }));
    expect(r.status).toBe(200);
    expect(r.json.usage.prompt_tokens + r.json.usage.completion_tokens).toBeLessThanOrEqual(512);
  });
});

describe('web pages and rebound DNS names cannot drive a local server', () => {
  it.each([
    ['text/plain', { 'Content-Type': 'text/plain' }],
    ['a form', { 'Content-Type': 'application/x-www-form-urlencoded' }],
    ['no Content-Type', {}],
  ])('a POST with %s is refused with 415 before it generates', async (_what, headers) => {
    const body = Buffer.from(JSON.stringify({ model: MODEL, messages: user('hi'), max_tokens: 3 }));
    const r = await rawRequest(srv, { method: 'POST', path: '/v1/chat/completions', headers: { ...headers, 'Content-Length': String(body.length) }, body });
    expect(r.status).toBe(415);
    expect(JSON.parse(r.text).error.code).toBe('unsupported_media_type');
  });

  it('a foreign Host is refused on a loopback server; localhost names are served', async () => {
    const evil = await rawRequest(srv, { method: 'GET', path: '/v1/models', headers: { Host: 'attacker.example:8000' } });
    expect(evil.status).toBe(403);
    expect(JSON.parse(evil.text).error.code).toBe('forbidden_host');
    for (const host of ['localhost:8000', '127.0.0.1', '[::1]:8000', 'app.localhost']) {
      expect((await rawRequest(srv, { method: 'GET', path: '/v1/models', headers: { Host: host } })).status).toBe(200);
    }
  });

  it('without --cors-origins, a preflight and a cross-origin request are 403', async () => {
    const pre = await rawRequest(srv, {
      method: 'OPTIONS',
      path: '/v1/chat/completions',
      headers: { Origin: 'https://page.example', 'Access-Control-Request-Method': 'POST', 'Access-Control-Request-Headers': 'content-type' },
    });
    expect(pre.status).toBe(403);
    expect(pre.headers['access-control-allow-origin']).toBeUndefined();
    const r = await call(srv, '/v1/chat/completions', { method: 'POST', headers: { ...JSON_TYPE, Origin: 'https://page.example' }, body: JSON.stringify({ model: MODEL, messages: user('hi') }) });
    expect(r.status).toBe(403);
    expect(r.json.error.code).toBe('forbidden_origin');
  });

  it('with --cors-origins, the listed origin gets a proper preflight and CORS headers, others do not', async () => {
    const cors = await startChatServer({ modelId: MODEL, port: 0, corsOrigins: ['https://page.example'] });
    cors.setModel({ model: loaded.pipe });
    try {
      const pre = await rawRequest(cors, {
        method: 'OPTIONS',
        path: '/v1/chat/completions',
        headers: { Origin: 'https://page.example', 'Access-Control-Request-Method': 'POST', 'Access-Control-Request-Headers': 'authorization, content-type' },
      });
      expect(pre.status).toBe(204);
      expect(pre.headers).toMatchObject({
        'access-control-allow-origin': 'https://page.example',
        'access-control-allow-headers': 'authorization, content-type',
        vary: 'Origin',
      });
      expect(pre.headers['access-control-allow-methods']).toContain('POST');
      const r = await call(cors, '/v1/chat/completions', {
        method: 'POST',
        headers: { ...JSON_TYPE, Origin: 'https://page.example' },
        body: JSON.stringify({ model: MODEL, messages: user('Once upon a time'), max_tokens: 3, temperature: 0 }),
      });
      expect(r.status).toBe(200);
      expect(r.headers.get('access-control-allow-origin')).toBe('https://page.example');
      const other = await rawRequest(cors, { method: 'OPTIONS', path: '/v1/chat/completions', headers: { Origin: 'https://other.example', 'Access-Control-Request-Method': 'POST' } });
      expect(other.status).toBe(403);
    } finally {
      await cors.close();
    }
  });
});

describe('small HTTP faults', () => {
  it('a malformed percent-encoding in the path is a 400, not a 500', async () => {
    const r = await call(srv, '/v1/models/%ZZ');
    expect(r.status).toBe(400);
    expect(r.json.error.code).toBe('invalid_path');
  });

  it('405s name the allowed methods', async () => {
    const post = await call(srv, '/v1/chat/completions');
    expect(post.status).toBe(405);
    expect(post.headers.get('allow')).toBe('POST');
    const get = await call(srv, '/v1/models', { method: 'DELETE' });
    expect(get.status).toBe(405);
    expect(get.headers.get('allow')).toBe('GET, HEAD');
  });

  it('HEAD is answered where GET is, without a body', async () => {
    for (const path of ['/health', '/v1/models', `/v1/models/${MODEL}`]) {
      const r = await rawRequest(srv, { method: 'HEAD', path });
      expect(r.status, path).toBe(200);
      expect(r.text).toBe('');
      expect(r.headers['content-type']).toBe('application/json');
    }
  });

  it('the Bearer scheme is case-insensitive', async () => {
    const keyed = await startChatServer({ modelId: MODEL, port: 0, apiKey: 'sk-test' });
    keyed.setModel({ model: loaded.pipe });
    try {
      for (const scheme of ['Bearer', 'bearer', 'BEARER']) {
        expect((await call(keyed, '/v1/models', { headers: { Authorization: `${scheme} sk-test` } })).status, scheme).toBe(200);
      }
      expect((await call(keyed, '/v1/models', { headers: { Authorization: 'bearer sk-wrong' } })).status).toBe(401);
    } finally {
      await keyed.close();
    }
  });

  it('503s carry Retry-After: loading, and a full queue', async () => {
    const s = await startChatServer({ modelId: MODEL, port: 0, maxQueue: 0 });
    try {
      const loadingHealth = await call(s, '/health');
      expect(loadingHealth.status).toBe(503);
      expect(loadingHealth.headers.get('retry-after')).toBe('1');
      const loadingChat = await postJson(s, '/v1/chat/completions', { model: MODEL, messages: user('hi') });
      expect(loadingChat.status).toBe(503);
      expect(loadingChat.headers.get('retry-after')).toBe('1');
      s.setModel({ model: loaded.pipe });
      const running = postJson(s, '/v1/chat/completions', { model: MODEL, messages: user('Once upon a time'), max_tokens: 300, temperature: 0 });
      while ((s.stats()?.running ?? 0) === 0) await new Promise((r) => setTimeout(r, 5));
      const full = await postJson(s, '/v1/chat/completions', { model: MODEL, messages: user('hi'), max_tokens: 3 });
      expect(full.status).toBe(503);
      expect(full.json.error.code).toBe('server_overloaded');
      expect(full.headers.get('retry-after')).toBe('1');
      expect((await running).status).toBe(200);
    } finally {
      await s.close();
    }
  });

  it('a body that is not valid UTF-8 is a 400, not silently replaced', async () => {
    const body = Buffer.concat([Buffer.from('{"model":"stories260K","messages":[{"role":"user","content":"Once '), Buffer.from([0xff, 0xfe]), Buffer.from('"}],"max_tokens":3}')]);
    const r = await rawRequest(srv, { method: 'POST', path: '/v1/chat/completions', headers: { ...JSON_TYPE, 'Content-Length': String(body.length) }, body });
    expect(r.status).toBe(400);
    expect(JSON.parse(r.text).error.code).toBe('invalid_utf8');
  });
});

describe('shutdown drains', () => {
  it('in-process: queued requests get 503 at once; a stream past the grace period ends with an error event and [DONE]', async () => {
    const s = await startChatServer({ modelId: MODEL, port: 0, maxQueue: 8 });
    s.setModel({ model: loaded.pipe });
    const long = { model: MODEL, messages: user('Once upon a time'), max_tokens: 500, temperature: 0 };
    const stream = fetch(`${s.url}/v1/chat/completions`, { method: 'POST', headers: JSON_TYPE, body: JSON.stringify({ ...long, stream: true }) }).then((r) => r.text());
    while ((s.stats()?.running ?? 0) === 0) await new Promise((r) => setTimeout(r, 5));
    const queued = [1, 2, 3].map(() => postJson(s, '/v1/chat/completions', { model: MODEL, messages: user('hi'), max_tokens: 3 }));
    while ((s.stats()?.waiting ?? 0) < 3) await new Promise((r) => setTimeout(r, 5));
    const t0 = performance.now();
    await s.shutdown(30);
    expect(performance.now() - t0).toBeLessThan(2000);
    for (const q of await Promise.all(queued)) {
      expect(q.status).toBe(503);
      expect(q.json.error.code).toBe('server_shutting_down');
      expect(q.headers.get('retry-after')).toBe('1');
    }
    const sse = await stream;
    const events = sse.trim().split('\n\n');
    expect(events.at(-1)).toBe('data: [DONE]');
    expect(JSON.parse(events.at(-2)!.slice('data: '.length))).toMatchObject({ error: { code: 'server_shutting_down' } });
  });

  function spawnServe(cmd: string, args: string[]): { child: ChildProcess; log: () => string; url: Promise<string> } {
    const child = spawn(cmd, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    let log = '';
    child.stdout!.on('data', (d) => (log += d));
    child.stderr!.on('data', (d) => (log += d));
    const url = new Promise<string>((res, rej) => {
      const t = setInterval(() => {
        const ready = /ready in .* at (http:\/\/127\.0\.0\.1:\d+)\/v1/.exec(log);
        if (ready) {
          clearInterval(t);
          res(ready[1]!);
        }
      }, 20);
      child.on('exit', () => {
        clearInterval(t);
        rej(new Error(`serve exited before it was ready:\n${log}`));
      });
    });
    return { child, log: () => log, url };
  }

  const exited = (c: ChildProcess) => new Promise<number | null>((r) => (c.exitCode !== null ? r(c.exitCode) : c.on('exit', (code) => r(code))));

  it('SIGTERM during 4 streams and 3 queued requests: every client sees a clean end or a 503, and the process exits 0 within the grace period', async () => {
    const { child, log, url } = spawnServe('node', ['--import', 'tsx', 'apps/cli/src/serve.ts', '--port', '0', '--shutdown-timeout', '2']);
    try {
      const base = await url;
      const streams = [0, 1, 2, 3].map(() =>
        fetch(`${base}/v1/chat/completions`, { method: 'POST', headers: JSON_TYPE, body: JSON.stringify({ model: MODEL, messages: user('Once upon a time'), max_tokens: 400, temperature: 0, stream: true }) }).then(async (r) => ({ status: r.status, text: await r.text() })),
      );
      const plain = [0, 1, 2].map(() =>
        fetch(`${base}/v1/chat/completions`, { method: 'POST', headers: JSON_TYPE, body: JSON.stringify({ model: MODEL, messages: user('The dog'), max_tokens: 50 }) }).then(async (r) => ({ status: r.status, text: await r.text() })),
      );
      await new Promise((r) => setTimeout(r, 300));
      const t0 = performance.now();
      child.kill('SIGTERM');
      const code = await exited(child);
      expect(code, log()).toBe(0);
      expect(performance.now() - t0).toBeLessThan(2000 + 1500);
      for (const r of [...(await Promise.all(streams)), ...(await Promise.all(plain))]) {
        if (r.status === 503) {
          expect(JSON.parse(r.text).error.code).toBe('server_shutting_down');
          continue;
        }
        expect(r.status).toBe(200);
        if (r.text.startsWith('data: ')) {
          const events = r.text.trim().split('\n\n');
          expect(events.at(-1)).toBe('data: [DONE]');
          const last = JSON.parse(events.at(-2)!.slice('data: '.length));
          // A clean end: the finish chunk, or the shutdown's error event.
          if (last.error) expect(last.error.code).toBe('server_shutting_down');
          else expect(last.choices[0].finish_reason).toMatch(/^(stop|length)$/);
        } else expect(JSON.parse(r.text).choices[0].finish_reason).toMatch(/^(stop|length)$/);
      }
      expect(log()).toMatch(/serve: SIGTERM: draining[\s\S]*serve: stopped/);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  });

  it('pnpm serve passes SIGTERM on: no server is left running', async () => {
    const { child, log, url } = spawnServe('pnpm', ['serve', '--port', '0']);
    try {
      const base = await url;
      child.kill('SIGTERM');
      await exited(child);
      // The server process itself (pnpm's child) drained and exited too.
      for (let i = 0; i < 100 && !/serve: stopped/.test(log()); i++) await new Promise((r) => setTimeout(r, 50));
      expect(log()).toMatch(/serve: stopped/);
      await expect(fetch(`${base}/health`)).rejects.toThrow();
    } finally {
      // The whole process group, should anything have survived.
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {}
    }
  });
});
