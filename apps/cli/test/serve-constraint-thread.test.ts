// serve's constrained decoding in a worker thread (constraint-thread.ts), with Qwen3's real
// 151K vocabulary, where a length-bounded string costs seconds to compile: /health keeps
// answering while one compiles, the worker's masks equal the in-thread engine's, and a
// compile past its limit is a 400 that restarts the worker (the matchers that lived there
// fail with a 503) while the server keeps serving.
import { Ajv2020 } from 'ajv/dist/2020.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { argmax, compileConstraint, createTextGenerationPipeline, ChatTemplates, type ChatTokenizer, type TextGenerationPipeline } from '@webgpu-chat/chat';
import { FakeBatch, fakeModel, loadTokenizer } from '@webgpu-chat/chat/testing';
import { ConstraintThread } from '../src/constraint-thread.ts';
import { ApiError } from '../src/http.ts';
import { startChatServer, type ChatServer } from '../src/server.ts';
import { fetchReply, postJsonTo } from './http-client.ts';

const MODEL = 'scripted-qwen3';
const ajv = new Ajv2020({ strict: false });
const messages = [{ role: 'user', content: 'Fill in the form.' }];
/** Each character of a maxLength bound costs ~0.1 s on this vocabulary: about 3 s here. */
const SLOW = { type: 'object', properties: { name: { type: 'string', maxLength: 40 } }, required: ['name'] };
const SMALL = { type: 'object', properties: { ok: { type: 'boolean' }, n: { type: 'integer', minimum: 1, maximum: 9 } }, required: ['ok', 'n'] };
const format = (schema: object) => ({ type: 'json_schema', json_schema: { name: 'form', schema } });

let tok: ChatTokenizer;
let pipe: TextGenerationPipeline;
let srv: ChatServer;
/** The same model, with a 1 s compile limit. */
let strict: ChatServer;

beforeAll(async () => {
  tok = await loadTokenizer('qwen3');
  // A model that always prefers its end token: the mask decides every token of a constrained reply.
  const batch = new FakeBatch(() => tok.eos!.id, tok.vocabSize, 2048, 4);
  pipe = createTextGenerationPipeline(fakeModel(batch), { tokenizer: tok, templates: ChatTemplates.fromConfig(tok.config), generationConfig: {} }, { maxParallel: 4 });
  srv = await startChatServer({ modelId: MODEL, port: 0 });
  srv.setModel({ model: pipe });
  strict = await startChatServer({ modelId: MODEL, port: 0, constraintTimeoutMs: 1000 });
  strict.setModel({ model: pipe });
});

afterAll(async () => {
  await srv?.close();
  await strict?.close();
  pipe?.dispose();
});

const chat = (s: ChatServer, body: Record<string, unknown>) => postJsonTo(`${s.url}/v1/chat/completions`, { model: MODEL, messages, max_tokens: 200, temperature: 0, ...body });

/**
 * Polls /health every 50 ms while `work` runs; returns work's result and the longest wait
 * for an answer. The poller shares the server's process, so a blocked event loop stalls it
 * too: the wait is measured between answers (and from the start and to the end of `work`).
 */
async function pollHealthDuring<T>(s: ChatServer, work: Promise<T>): Promise<{ result: T; slowestMs: number; polls: number }> {
  let done = false;
  let polls = 0;
  let last = performance.now();
  let slowestMs = 0;
  const poller = (async () => {
    while (!done) {
      const r = await fetchReply(`${s.url}/health`);
      expect(r.status).toBe(200);
      const now = performance.now();
      slowestMs = Math.max(slowestMs, now - last);
      last = now;
      polls++;
      await new Promise((r) => setTimeout(r, 50));
    }
  })();
  const result = await work;
  done = true;
  await poller;
  return { result, slowestMs: Math.max(slowestMs, performance.now() - last), polls };
}

describe('constraints on serve run off the event loop', () => {
  it('/health answers within 1 s while a slow schema compiles, and the reply validates', async () => {
    const t0 = performance.now();
    const { result, slowestMs, polls } = await pollHealthDuring(srv, chat(srv, { response_format: format(SLOW) }));
    const elapsed = performance.now() - t0;
    expect(result.status, result.text).toBe(200);
    const content = result.json.choices[0].message.content;
    expect(ajv.validate(SLOW, JSON.parse(content)), content).toBe(true);
    // The compile took seconds, and /health was answered all along.
    expect(elapsed).toBeGreaterThan(1000);
    expect(polls).toBeGreaterThan(5);
    expect(slowestMs).toBeLessThan(1000);
  });

  it('a plain request is answered while another request’s schema compiles', async () => {
    const slow = chat(srv, { response_format: format({ ...SLOW, properties: { title: { type: 'string', maxLength: 41 } }, required: ['title'] }) });
    const t0 = performance.now();
    const plain = await chat(srv, { max_tokens: 4 });
    const plainMs = performance.now() - t0;
    expect(plain.status, plain.text).toBe(200);
    expect((await slow).status).toBe(200);
    expect(plainMs).toBeLessThan(1000);
  });

  it('a compile past the limit is a 400 naming the reason; the worker restarts and the server keeps serving', async () => {
    const { result, slowestMs } = await pollHealthDuring(strict, chat(strict, { response_format: format({ ...SLOW, properties: { name: { type: 'string', maxLength: 60 } } }) }));
    expect(result.status, result.text).toBe(400);
    expect(result.json.error).toMatchObject({ type: 'invalid_request_error', code: 'schema_too_complex' });
    expect(result.json.error.message).toMatch(/took over 1 s to compile and was abandoned/);
    expect(slowestMs).toBeLessThan(1000);
    // A fresh worker serves the next constrained request.
    const ok = await chat(strict, { response_format: format(SMALL), max_tokens: 50 });
    expect(ok.status, ok.text).toBe(200);
    expect(ajv.validate(SMALL, JSON.parse(ok.json.choices[0].message.content))).toBe(true);
  });

  it('a refused keyword is still a 400 naming it', async () => {
    const r = await chat(srv, { response_format: format({ type: 'object', properties: { a: { type: 'string', format: 'email' } } }) });
    expect(r.status).toBe(400);
    expect(r.json.error.code).toBe('unsupported_schema_keyword');
    expect(r.json.error.message).toMatch(/format/);
  });
});

describe('ConstraintThread', () => {
  /** A fixed preference over the vocabulary: the mask decides what may be taken. */
  let preference: Float32Array | undefined;
  const base = () => Float32Array.from((preference ??= Float32Array.from({ length: tok.vocabSize }, (_, i) => Math.sin(i * 12.9898) * 10)));
  /** The first index where two rows differ (-1: none); a deep equal over 151K floats is slow. */
  const firstDifference = (a: Float32Array, b: Float32Array) => (a.length !== b.length ? 0 : a.findIndex((x, i) => !Object.is(x, b[i])));

  it('masks as the in-thread engine does, step by step, and knows when the output is done', async () => {
    const thread = new ConstraintThread(tok, tok.vocabSize, { compileTimeoutMs: 30_000, maxPending: 4, maxWorkers: 2 });
    try {
      const spec = { schema: SMALL, prefix: '<tool_call>\n', suffix: '\n</tool_call>' };
      const [remote, local] = await Promise.all([thread.compile(spec, 'p'), compileConstraint(spec, tok, tok.vocabSize)]);
      const eos = [tok.eos!.id];
      const [rm, lm] = await Promise.all([remote.matcher(eos), local.matcher(eos)]);
      const ids: number[] = [];
      while (!lm.done && ids.length < 64) {
        const a = base();
        const b = base();
        await Promise.all([rm.mask(a), lm.mask(b)]);
        expect(firstDifference(a, b)).toBe(-1);
        const id = argmax(a);
        rm.accept(id);
        lm.accept(id);
        expect(rm.done).toBe(lm.done);
        ids.push(id);
      }
      expect(lm.done).toBe(true);
      const text = tok.decode(ids, { skipSpecialTokens: true });
      expect(text.startsWith('<tool_call>\n')).toBe(true);
      expect(ajv.validate(SMALL, JSON.parse(text.slice('<tool_call>\n'.length, -'\n</tool_call>'.length)))).toBe(true);
      rm.dispose();
      remote.dispose();
      lm.dispose();
      local.dispose();
    } finally {
      thread.close();
    }
  });

  /** A schema that compiles for seconds (maxLength 60: ~5 s on this vocabulary). */
  const slowSpec = { schema: { type: 'object', properties: { s: { type: 'string', maxLength: 60 } } } };

  it('a live matcher keeps masking while another schema compiles on a second worker; a timeout there leaves it alone', async () => {
    const thread = new ConstraintThread(tok, tok.vocabSize, { compileTimeoutMs: 1500, maxPending: 4, maxWorkers: 2 });
    try {
      const c = await thread.compile({ schema: SMALL }, 'p');
      const m = await c.matcher([tok.eos!.id]);
      await m.mask(base());
      const slow = thread.compile(slowSpec, 'response_format').catch((e: unknown) => e);
      // Give the second worker time to start and begin the compile.
      await new Promise((r) => setTimeout(r, 1000));
      let slowestMs = 0;
      for (let i = 0; i < 10; i++) {
        const t0 = performance.now();
        const row = base();
        await m.mask(row);
        slowestMs = Math.max(slowestMs, performance.now() - t0);
        m.accept(argmax(row));
      }
      expect(slowestMs).toBeLessThan(500);
      expect(await slow).toMatchObject({ status: 400, code: 'schema_too_complex', param: 'response_format' });
      const row = base();
      await m.mask(row);
      expect(row.some((x) => x === -Infinity)).toBe(true);
    } finally {
      thread.close();
    }
  });

  it('with one worker, a timed-out compile fails the matchers that lived there with a 503; the next compile works', async () => {
    const thread = new ConstraintThread(tok, tok.vocabSize, { compileTimeoutMs: 500, maxPending: 4, maxWorkers: 1 });
    try {
      const c = await thread.compile({ schema: SMALL }, 'p');
      const m = await c.matcher([tok.eos!.id]);
      await m.mask(base());
      await expect(thread.compile(slowSpec, 'response_format')).rejects.toMatchObject({ status: 400, code: 'schema_too_complex', param: 'response_format' });
      const failed = await m.mask(base()).catch((e: unknown) => e);
      expect(failed).toBeInstanceOf(ApiError);
      expect(failed).toMatchObject({ status: 503, code: 'constraint_worker_restarted' });
      const again = await thread.compile({ schema: SMALL }, 'p');
      const m2 = await again.matcher([tok.eos!.id]);
      const row = base();
      await m2.mask(row);
      expect(row.some((x) => x === -Infinity)).toBe(true);
    } finally {
      thread.close();
    }
  });

  it('a full compile queue is a 503', async () => {
    const thread = new ConstraintThread(tok, tok.vocabSize, { compileTimeoutMs: 30_000, maxPending: 0, maxWorkers: 2 });
    try {
      const first = thread.compile({ schema: SMALL }, 'p');
      const second = thread.compile({ schema: SMALL }, 'p');
      await expect(second).rejects.toMatchObject({ status: 503, code: 'server_overloaded' });
      await first;
    } finally {
      thread.close();
    }
  });
});
