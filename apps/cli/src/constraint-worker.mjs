// A worker thread that runs constrained decoding's engine for constraint-thread.ts: schemas
// compile here (XGrammar's WebAssembly runs synchronously, seconds for a heavy schema) and
// each sequence's matcher lives here, so serve's event loop never waits on them. Plain
// JavaScript for the same reason as encode-worker.mjs.
import { parentPort, workerData } from 'node:worker_threads';

if (!('Deno' in globalThis)) {
  const { register } = await import('tsx/esm/api');
  register();
}
const { ChatTokenizer, compileConstraint } = await import('@webgpu-chat/chat');
const tokenizer = new ChatTokenizer(workerData.tokenizerJson, workerData.config);
const vocabSize = workerData.vocabSize;

/** Compiled constraints and matchers by the ids the main thread gave them. */
const constraints = new Map();
/** Matchers, each with the error of an accept that failed (reported at its next mask). */
const matchers = new Map();

const failure = (e) => ({ name: e?.name ?? 'Error', message: e instanceof Error ? e.message : String(e), keyword: e?.keyword, pointer: e?.pointer });

/** One compile at a time, so a compile's clock (started when it begins) counts only its own work. */
let compiling = Promise.resolve();

async function compile({ id, spec }) {
  parentPort.postMessage({ id, started: true });
  try {
    constraints.set(id, await compileConstraint(spec, tokenizer, vocabSize));
    parentPort.postMessage({ id });
  } catch (e) {
    parentPort.postMessage({ id, error: failure(e) });
  }
}

async function matcher({ id, constraint, eos }) {
  try {
    const c = constraints.get(constraint);
    if (!c) throw new Error(`no constraint ${constraint} in the worker`);
    matchers.set(id, { matcher: await c.matcher(eos), error: undefined });
    parentPort.postMessage({ id });
  } catch (e) {
    parentPort.postMessage({ id, error: failure(e) });
  }
}

async function mask({ id, matcher, row }) {
  try {
    const m = matchers.get(matcher);
    if (!m) throw new Error(`no matcher ${matcher} in the worker`);
    if (m.error) throw m.error;
    await m.matcher.mask(row);
    parentPort.postMessage({ id, row, endingIds: m.matcher.endingIds }, [row.buffer]);
  } catch (e) {
    parentPort.postMessage({ id, error: failure(e) });
  }
}

parentPort.on('message', (m) => {
  switch (m.op) {
    case 'compile':
      compiling = compiling.then(() => compile(m));
      return;
    case 'matcher':
      return void matcher(m);
    case 'mask':
      return void mask(m);
    case 'accept': {
      const entry = matchers.get(m.matcher);
      try {
        entry?.matcher.accept(m.token);
      } catch (e) {
        entry.error ??= e;
      }
      return;
    }
    case 'dispose-matcher':
      matchers.get(m.matcher)?.matcher.dispose();
      matchers.delete(m.matcher);
      return;
    case 'dispose-constraint':
      constraints.get(m.constraint)?.dispose();
      constraints.delete(m.constraint);
      return;
  }
});
