import { describe, expect, it } from 'vitest';
import { eosIds, StopStringMatcher } from '../src/index.ts';
import { loadTokenizer } from './fixtures.ts';

function feed(stops: string[], pieces: string[]): { out: string[]; stopped: boolean; tail: string } {
  const m = new StopStringMatcher(stops);
  const out: string[] = [];
  for (const p of pieces) {
    const r = m.push(p);
    out.push(r.text);
    if (r.stopped) return { out, stopped: true, tail: m.flush() };
  }
  return { out, stopped: false, tail: m.flush() };
}

describe('stop strings', () => {
  it('matches a stop string split across pieces and cuts it and what follows', () => {
    const r = feed(['\nUser:'], ['Sure', '!\n', 'Us', 'er: next', ' more']);
    expect(r.stopped).toBe(true);
    expect(r.out).toEqual(['Sure', '!', '', '']);
    expect(r.out.join('') + r.tail).toBe('Sure!');
  });

  it('releases held-back text once it can no longer start a stop string', () => {
    const r = feed(['STOP'], ['ab', 'ST', 'O', 'x', 'y']);
    expect(r.stopped).toBe(false);
    expect(r.out).toEqual(['ab', '', '', 'STOx', 'y']);
  });

  it('gives back the held text at the end when generation stops otherwise', () => {
    const r = feed(['</answer>'], ['42 </ans']);
    expect(r.out).toEqual(['42 ']);
    expect(r.tail).toBe('</ans');
  });

  it('cuts at the earliest of several stop strings', () => {
    const r = feed(['world', 'lo w'], ['hello world']);
    expect(r.out).toEqual(['hel']);
  });

  it('with no stop strings passes everything through', () => {
    expect(feed([], ['a', 'b']).out).toEqual(['a', 'b']);
  });
});

describe('EOS ids', () => {
  it('merges generation_config ids with the tokenizer eos', async () => {
    const tok = await loadTokenizer('llama3_1');
    expect([...eosIds([128001, 128008], tok)].sort()).toEqual([128001, 128008, 128009]);
    expect([...eosIds([], await loadTokenizer('qwen3'))]).toEqual([151645]);
  });
});
