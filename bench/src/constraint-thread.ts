// serve's constrained decoding on and off the event loop (tsx bench/src/constraint-thread.ts):
// the slowest /health answer while a heavy schema (three maxLength-100 strings) compiles,
// with the engine on the event loop (as before constraint-thread.ts) and in the worker, and
// the time of one mask on the 151K Qwen3 vocabulary in-thread and through the worker.
import { ChatTemplates, compileConstraint, createTextGenerationPipeline, type ConstraintSpec } from '@webgpu-chat/chat';
import { FakeBatch, fakeModel, loadTokenizer } from '@webgpu-chat/chat/testing';
import { ConstraintThread } from '../../apps/cli/src/constraint-thread.ts';
import { startChatServer } from '../../apps/cli/src/server.ts';
import { BENCH_SCHEMA } from './constrained.ts';

const tok = await loadTokenizer('qwen3');
const V = tok.vocabSize;
const HEAVY = { type: 'object', properties: { a: { type: 'string', maxLength: 100 }, b: { type: 'string', maxLength: 100 }, c: { type: 'string', maxLength: 100 } }, required: ['a', 'b', 'c'] };
const median = (xs: number[]) => xs.sort((a, b) => a - b)[xs.length >> 1]!;

async function healthDuringCompile(inThread: boolean): Promise<{ compileMs: number; slowestMs: number; polls: number }> {
  const batch = new FakeBatch(() => tok.eos!.id, V, 2048, 2);
  const pipe = createTextGenerationPipeline(fakeModel(batch), { tokenizer: tok, templates: ChatTemplates.fromConfig(tok.config), generationConfig: {} });
  const srv = await startChatServer({ modelId: 'm', port: 0, constraintTimeoutMs: 600_000 });
  srv.setModel({ model: pipe });
  const original = ConstraintThread.prototype.compile;
  // The engine on the event loop, as serve compiled before the worker.
  if (inThread) ConstraintThread.prototype.compile = (spec: ConstraintSpec) => compileConstraint(spec, tok, V);
  try {
    // The vocabulary tables (built once per process or worker) first, so only the schema is timed.
    const body = (schema: object) => JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'x' }], max_tokens: 1, response_format: { type: 'json_schema', json_schema: { name: 'f', schema } } });
    const post = (schema: object) => fetch(`${srv.url}/v1/chat/completions`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: body(schema) }).then((r) => r.text());
    await post({ type: 'object' });
    // The poller shares the server's process, so a blocked loop delays the poller too: the
    // figure is the longest wait between two answers (or the request's start or end).
    let done = false;
    let polls = 0;
    const t0 = performance.now();
    let last = t0;
    let slowestMs = 0;
    const poller = (async () => {
      while (!done) {
        await (await fetch(`${srv.url}/health`)).text();
        const now = performance.now();
        slowestMs = Math.max(slowestMs, now - last);
        last = now;
        polls++;
        await new Promise((r) => setTimeout(r, 50));
      }
    })();
    await post(HEAVY);
    const compileMs = performance.now() - t0;
    done = true;
    await poller;
    slowestMs = Math.max(slowestMs, performance.now() - last);
    return { compileMs, slowestMs, polls };
  } finally {
    ConstraintThread.prototype.compile = original;
    await srv.close();
    pipe.dispose();
  }
}

/** Median ms of mask + accept over a greedy walk through BENCH_SCHEMA, repeated. */
async function maskMs(make: (spec: ConstraintSpec) => Promise<{ matcher(eos: number[]): Promise<{ mask(r: Float32Array): Promise<void>; accept(id: number): void; done: boolean; dispose(): void }>; dispose(): void }>): Promise<{ ms: number; masks: number }> {
  const c = await make({ schema: BENCH_SCHEMA });
  const pref = Float32Array.from({ length: V }, (_, i) => Math.sin(i * 12.9898) * 10);
  const times: number[] = [];
  for (let rep = 0; rep < 3; rep++) {
    const m = await c.matcher([tok.eos!.id]);
    const row = new Float32Array(V);
    for (let step = 0; step < 200 && !m.done; step++) {
      row.set(pref);
      const t0 = performance.now();
      await m.mask(row);
      let id = 0;
      for (let i = 1; i < V; i++) if (row[i]! > row[id]!) id = i;
      m.accept(id);
      times.push(performance.now() - t0);
    }
    m.dispose();
  }
  c.dispose();
  return { ms: median(times), masks: times.length };
}

const thread = new ConstraintThread(tok, V, { compileTimeoutMs: 600_000, maxPending: 4, maxWorkers: 1 });
const inThreadMask = await maskMs((spec) => compileConstraint(spec, tok, V));
const workerMask = await maskMs((spec) => thread.compile(spec, 'bench'));
thread.close();
console.log(JSON.stringify({ mask: { inThreadMs: inThreadMask.ms, workerMs: workerMask.ms, masks: workerMask.masks } }));
for (const inThread of [true, false]) console.log(JSON.stringify({ engine: inThread ? 'event loop' : 'worker', ...(await healthDuringCompile(inThread)) }));
