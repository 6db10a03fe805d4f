// Keeps constrained output valid UTF-8. XGrammar's byte-level matching lets a token of raw
// bytes open or continue a character in ways UTF-8 forbids (surrogates, overlong forms,
// 0xC0, 0xF5..): the text then decodes with U+FFFD in it, whose length no longer matches
// the schema's bound. Most tokens are whole characters; the few that hold part of one
// ("irregular") are checked against the pending character at each step.

import type { VocabType } from './xgrammar.ts';

/** A partly written character: continuation bytes still due, and the range the next one must be in. */
interface Pending {
  need: number;
  lo: number;
  hi: number;
}

const COMPLETE: Pending = { need: 0, lo: 0x80, hi: 0xbf };

/** The state after `bytes` from `s`, or undefined where UTF-8 forbids them. */
export function utf8Step(s: Pending, bytes: Uint8Array): Pending | undefined {
  let { need, lo, hi } = s;
  for (const b of bytes) {
    if (need > 0) {
      if (b < lo || b > hi) return undefined;
      need--;
      lo = 0x80;
      hi = 0xbf;
      continue;
    }
    if (b < 0x80) continue;
    if (b >= 0xc2 && b <= 0xdf) need = 1;
    else if (b === 0xe0) [need, lo] = [2, 0xa0];
    else if (b === 0xed) [need, hi] = [2, 0x9f];
    else if (b >= 0xe1 && b <= 0xef) need = 2;
    else if (b === 0xf0) [need, lo] = [3, 0x90];
    else if (b === 0xf4) [need, hi] = [3, 0x8f];
    else if (b >= 0xf1 && b <= 0xf3) need = 3;
    else return undefined;
  }
  return { need, lo, hi };
}

/** GPT-2's byte-level alphabet: the character each byte is written as in a vocabulary entry. */
function byteLevelDecoder(): Map<string, number> {
  const printable = (b: number) => (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
  const map = new Map<string, number>();
  let extra = 0;
  for (let b = 0; b < 256; b++) map.set(String.fromCodePoint(printable(b) ? b : 256 + extra++), b);
  return map;
}

/** The bytes of each token's entry, by the vocabulary's type ('' for special tokens). */
function tokenBytes(type: VocabType, vocab: readonly string[]): (id: number) => Uint8Array {
  const utf8 = new TextEncoder();
  if (type === 'byte_level') {
    const dec = byteLevelDecoder();
    return (id) => Uint8Array.from(Array.from(vocab[id]!, (ch) => dec.get(ch) ?? 0x3f));
  }
  if (type === 'byte_fallback') {
    return (id) => {
      const m = /^<0x([0-9A-Fa-f]{2})>$/.exec(vocab[id]!);
      return m ? Uint8Array.of(parseInt(m[1]!, 16)) : utf8.encode(vocab[id]!.replaceAll('\u2581', ' '));
    };
  }
  return (id) => utf8.encode(vocab[id]!);
}

/** The tokens that are not whole characters, with their bytes. */
export interface Utf8Table {
  ids: Int32Array;
  bytes: Uint8Array[];
}

export function utf8Table(type: VocabType, vocab: readonly string[]): Utf8Table {
  const bytesOf = tokenBytes(type, vocab);
  const ids: number[] = [];
  const bytes: Uint8Array[] = [];
  for (let id = 0; id < vocab.length; id++) {
    const b = bytesOf(id);
    const end = utf8Step(COMPLETE, b);
    if (end === undefined || end.need > 0) {
      ids.push(id);
      bytes.push(b);
    }
  }
  return { ids: Int32Array.from(ids), bytes };
}

/** One sequence's position in its UTF-8 text. */
export class Utf8Guard {
  private state = COMPLETE;
  private readonly index = new Map<number, number>();

  constructor(private readonly table: Utf8Table) {
    table.ids.forEach((id, i) => this.index.set(id, i));
  }

  /** Forbids (-Infinity) every token that would make the text invalid UTF-8 from here. */
  mask(logits: Float32Array): void {
    const { ids, bytes } = this.table;
    if (this.state.need === 0) {
      for (let i = 0; i < ids.length; i++) if (utf8Step(this.state, bytes[i]!) === undefined) logits[ids[i]!] = -Infinity;
      return;
    }
    // Mid-character only a token continuing it may come: none of the whole-character ones.
    const keep: [number, number][] = [];
    for (let i = 0; i < ids.length; i++) if (utf8Step(this.state, bytes[i]!) !== undefined) keep.push([ids[i]!, logits[ids[i]!]!]);
    logits.fill(-Infinity);
    for (const [id, l] of keep) logits[id] = l;
  }

  accept(id: number): void {
    const i = this.index.get(id);
    if (i === undefined) {
      this.state = COMPLETE;
      return;
    }
    this.state = utf8Step(this.state, this.table.bytes[i]!) ?? COMPLETE;
  }
}
