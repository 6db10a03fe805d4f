// The independent end-to-end check: llama2.c's own test suite asserts what 200 greedy
// tokens from BOS decode to for this real trained model (committed beside the model as
// expected_greedy200.txt); our engine, reading the HF folder our converter made, must print
// exactly that.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadModel } from '../src/model.ts';
import { BUNDLED_MODEL } from './paths.ts';
import { testGpu } from './harness.ts';

/** Pieces by id from the folder's tokenizer.json (the converter's copy of llama2.c's tok512.bin, ▁ back to a space). */
function readVocab(path: string): string[] {
  const vocab = (JSON.parse(readFileSync(path, 'utf8')) as { model: { vocab: Record<string, number> } }).model.vocab;
  const pieces: string[] = [];
  for (const [piece, id] of Object.entries(vocab)) pieces[id] = piece.replaceAll('▁', ' ');
  return pieces;
}

/** run.c's decode: drop the leading space after BOS, <0xNN> pieces are raw bytes. */
function decodeLikeRunC(ids: number[], vocab: string[]): string {
  const bytes: number[] = [];
  let prev = 1;
  for (const id of ids) {
    let piece = vocab[id]!;
    if (prev === 1 && piece.startsWith(' ')) piece = piece.slice(1);
    const m = /^<0x([0-9A-F]{2})>$/.exec(piece);
    if (m) bytes.push(parseInt(m[1]!, 16));
    else bytes.push(...new TextEncoder().encode(piece));
    prev = id;
  }
  return new TextDecoder().decode(new Uint8Array(bytes));
}

describe('stories260K (llama2.c transcript)', () => {
  it("200 greedy tokens from BOS match llama2.c's expected text", async () => {
    const gpu = await testGpu();
    const model = await loadModel(BUNDLED_MODEL, { gpu, dtype: 'f32' });
    const session = model.createSession();
    const ids: number[] = [];
    let tok = 1;
    for (let i = 0; i < 200; i++) {
      session.forward([tok]);
      tok = await session.argmax();
      ids.push(tok);
    }
    model.dispose();
    const expected = readFileSync(join(BUNDLED_MODEL, 'expected_greedy200.txt'), 'utf8').replace(/\n$/, '');
    const text = decodeLikeRunC(ids, readVocab(join(BUNDLED_MODEL, 'tokenizer.json')));
    expect(text).toBe(expected);
  });
});
