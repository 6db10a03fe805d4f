import { describe, expect, it } from 'vitest';
import { StreamingDetokenizer } from '../src/index.ts';
import { loadTokenizer, TOKENIZERS } from './fixtures.ts';

const TEXTS = [
  'Hello there, general Kenobi.',
  ' Café, naïve, Ærøskøbing, São Paulo',
  '东京是日本的首都。我喜欢寿司！',
  'Family: 👨‍👩‍👧‍👦, thumbs 👍🏽, flag 🇯🇵, rare 𓂀',
  '  indented\n\n  lines\twith tabs  ',
  'mixed: naïve 東京 😀 end',
  // Gothic 𐍈 and math 𝔘 are byte-fallback tokens even in Gemma 3's 262k vocabulary.
  'Gothic 𐍈 and 𝔘',
];

describe('streaming detokenizer', () => {
  for (const name of TOKENIZERS) {
    it(`${name}: deltas never split a character and add up to the full decode`, async () => {
      const tok = await loadTokenizer(name);
      let sawPartial = false;
      for (const text of TEXTS) {
        const ids = tok.encode(text, { addSpecialTokens: false });
        const d = new StreamingDetokenizer(tok);
        const deltas: string[] = [];
        for (const id of ids) {
          if (tok.decode([id]).includes('\uFFFD')) sawPartial = true;
          deltas.push(d.push(id));
        }
        deltas.push(d.flush());
        for (const delta of deltas) expect(delta, `${name} ${text}`).not.toContain('\uFFFD');
        expect(deltas.join(''), `${name} ${text}`).toBe(tok.decode(ids, { skipSpecialTokens: true }));
        expect(d.text).toBe(deltas.join(''));
      }
      // The texts must exercise characters spread over several tokens.
      expect(sawPartial, `${name}: no token held part of a character`).toBe(true);
    });
  }

  it('holds an incomplete byte-fallback character until its last byte arrives', async () => {
    const tok = await loadTokenizer('llama2');
    // 𓂀 (U+13080) is not in the vocabulary: four byte-fallback tokens.
    const bytes = [0xf0, 0x93, 0x82, 0x80].map((b) => tok.tokenToId(`<0x${b.toString(16).toUpperCase()}>`)!);
    const d = new StreamingDetokenizer(tok);
    expect(d.push(tok.tokenToId('▁A')!)).toBe('A');
    expect(bytes.slice(0, 3).map((id) => d.push(id))).toEqual(['', '', '']);
    expect(d.push(bytes[3]!)).toBe('𓂀');
  });

  it('keeps SentencePiece spaces between words (decoding tokens one by one would drop them)', async () => {
    const tok = await loadTokenizer('llama2');
    const ids = tok.encode('one two three', { addSpecialTokens: false });
    expect(ids.map((id) => tok.decode([id])).join('')).toBe('onetwothree');
    const d = new StreamingDetokenizer(tok);
    expect(ids.map((id) => d.push(id)).join('')).toBe('one two three');
  });

  it('flush releases a truly incomplete tail as U+FFFD', async () => {
    const tok = await loadTokenizer('llama2');
    const d = new StreamingDetokenizer(tok);
    expect(d.push(tok.tokenToId('<0xE2>')!)).toBe('');
    expect(d.flush()).toBe('\uFFFD');
  });
});
