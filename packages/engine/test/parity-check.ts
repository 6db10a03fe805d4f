// The parity check both parity test files run: a prompt of random ids through our engine
// and through Transformers; top-1 at every position, log-probabilities within f32 error,
// and the same greedy continuation.
import { expect } from 'vitest';
import type { Model } from '../src/types.ts';
import { rng } from './harness.ts';
import { compareLogprobs, referenceLogits } from './transformers-reference.ts';

export const PROMPT_LEN = 200;
export const GREEDY = 64;
/** allLogits keeps at most 64 rows per forward, so the prompt is scored in pieces. */
const PIECE = 50;

export async function expectParity(name: string, model: Model, refDir: string, seed: number): Promise<void> {
  const r = rng(seed);
  const prompt = Array.from({ length: PROMPT_LEN }, () => Math.floor(r() * model.info.vocabSize));
  // Transformers computes in f32 on the checkpoint's weights, as our engine does.
  const ref = await referenceLogits(refDir, prompt, { greedy: GREEDY, dtype: 'float32' });

  const session = model.createSession();
  const V = model.info.vocabSize;
  const ours = new Float32Array(PROMPT_LEN * V);
  for (let at = 0; at < PROMPT_LEN; at += PIECE) {
    const piece = prompt.slice(at, at + PIECE);
    session.forward(piece, { allLogits: true });
    for (let t = 0; t < piece.length; t++) ours.set(await session.logits(at + t), (at + t) * V);
  }
  const cmp = compareLogprobs(ours, ref, { minMargin: 1e-4 });
  console.log(
    `${name}: top-1 ${cmp.top1Agreement} over ${cmp.compared}, max |Δlogp| top-20 ${cmp.maxAbsErrTop20.toExponential(2)}, mean KL ${cmp.meanKL.toExponential(2)}, max KL ${cmp.maxKL.toExponential(2)}`,
  );
  expect(cmp.firstMismatch).toBeNull();
  expect(cmp.top1Agreement).toBe(1);
  expect(cmp.maxAbsErrTop20).toBeLessThan(1e-3);
  expect(cmp.maxKL).toBeLessThan(1e-6);

  session.truncate(PROMPT_LEN - 1);
  session.forward(prompt.slice(-1));
  const greedy: number[] = [];
  for (let n = 0; n < GREEDY; n++) {
    const tok = await session.argmax();
    greedy.push(tok);
    session.forward([tok]);
  }
  expect(greedy).toEqual(ref.greedy);
  session.dispose();
}
