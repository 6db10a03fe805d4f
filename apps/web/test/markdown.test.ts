import { describe, expect, it } from 'vitest';
import { parseInline, parseMarkdown } from '../src/markdown.ts';

describe('parseMarkdown', () => {
  it('reads paragraphs, headings, lists and fenced code', () => {
    const src = '# Title\nSome **bold** and *em* with `x<y`.\nsecond line\n\n- one\n- two\n1. first\n```js\nlet a = "<b>";\n```\nend';
    expect(parseMarkdown(src)).toEqual([
      { kind: 'h', level: 1, inlines: [{ kind: 'text', text: 'Title' }] },
      {
        kind: 'p',
        inlines: [
          { kind: 'text', text: 'Some ' },
          { kind: 'strong', text: 'bold' },
          { kind: 'text', text: ' and ' },
          { kind: 'em', text: 'em' },
          { kind: 'text', text: ' with ' },
          { kind: 'code', text: 'x<y' },
          { kind: 'text', text: '.\nsecond line' },
        ],
      },
      { kind: 'ul', items: [[{ kind: 'text', text: 'one' }], [{ kind: 'text', text: 'two' }]] },
      { kind: 'ol', items: [[{ kind: 'text', text: 'first' }]] },
      { kind: 'pre', text: 'let a = "<b>";' },
      { kind: 'p', inlines: [{ kind: 'text', text: 'end' }] },
    ]);
  });

  it('keeps HTML as text', () => {
    expect(parseInline('<img src=x onerror=alert(1)> **<script>**')).toEqual([
      { kind: 'text', text: '<img src=x onerror=alert(1)> ' },
      { kind: 'strong', text: '<script>' },
    ]);
  });

  it('shows an unclosed fence (a reply still streaming) as code', () => {
    expect(parseMarkdown('Here:\n```\ncode so far')).toEqual([
      { kind: 'p', inlines: [{ kind: 'text', text: 'Here:' }] },
      { kind: 'pre', text: 'code so far' },
    ]);
  });

  it('leaves lone asterisks alone', () => {
    expect(parseInline('2 * 3 * 4')).toEqual([{ kind: 'text', text: '2 * 3 * 4' }]);
  });
});
