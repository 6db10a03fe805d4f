// The independent end-to-end check: llama2.c's own test suite asserts what 200 greedy
// tokens from BOS decode to for this real trained model; our engine, reading the HF
// folder our converter made, must print exactly that.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadModel } from '../src/model.ts';
import { BUNDLED_MODEL, STORIES_FIXTURE, sharedFixtureMissing } from './paths.ts';
import { testGpu } from './harness.ts';

/** llama2.c's tokenizer (tok512.bin): pieces by id. */
function readVocab(path: string): string[] {
  const buf = readFileSync(path);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const pieces: string[] = [];
  let at = 4;
  for (let i = 0; i < 512; i++) {
    at += 4; // score
    const len = dv.getInt32(at, true);
    at += 4;
    pieces.push(new TextDecoder().decode(buf.subarray(at, at + len)));
    at += len;
  }
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

const skip = sharedFixtureMissing();
describe.skipIf(skip)('stories260K (llama2.c transcript)', () => {
  if (skip) it.skip(skip, () => {});
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
      const expected = readFileSync(join(STORIES_FIXTURE, 'expected_greedy200.txt'), 'utf8').replace(/\n$/, '');
      const text = decodeLikeRunC(ids, readVocab(join(STORIES_FIXTURE, 'tok512.bin')));
      expect(text).toBe(expected);
  });
});
