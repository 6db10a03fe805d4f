// A small Markdown subset for model replies: paragraphs, headings, bullet and numbered
// lists, fenced code, and inline `code`, **bold**, *italic*. Parsing yields plain data;
// rendering builds DOM nodes whose text is set with textContent, so nothing a model
// writes is ever parsed as HTML.

export interface Inline {
  kind: 'text' | 'code' | 'strong' | 'em';
  text: string;
}

export type Block =
  | { kind: 'p'; inlines: Inline[] }
  | { kind: 'h'; level: number; inlines: Inline[] }
  | { kind: 'ul' | 'ol'; items: Inline[][] }
  | { kind: 'pre'; text: string };

const INLINE = /`([^`\n]+)`|\*\*([^*\n]+)\*\*|\*([^*\s][^*\n]*)\*/g;

export function parseInline(text: string): Inline[] {
  const out: Inline[] = [];
  let at = 0;
  for (const m of text.matchAll(INLINE)) {
    if (m.index > at) out.push({ kind: 'text', text: text.slice(at, m.index) });
    if (m[1] !== undefined) out.push({ kind: 'code', text: m[1] });
    else if (m[2] !== undefined) out.push({ kind: 'strong', text: m[2] });
    else out.push({ kind: 'em', text: m[3]! });
    at = m.index + m[0].length;
  }
  if (at < text.length) out.push({ kind: 'text', text: text.slice(at) });
  return out;
}

const BULLET = /^\s*[-*+]\s+(.*)$/;
const NUMBERED = /^\s*\d+[.)]\s+(.*)$/;
const HEADING = /^(#{1,6})\s+(.*)$/;

/** A reply still streaming may end inside a code fence: the rest is shown as code. */
export function parseMarkdown(src: string): Block[] {
  const blocks: Block[] = [];
  const lines = src.replace(/\r\n?/g, '\n').split('\n');
  let para: string[] = [];
  const endPara = () => {
    if (para.length) blocks.push({ kind: 'p', inlines: parseInline(para.join('\n')) });
    para = [];
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    if (line.trimStart().startsWith('```')) {
      endPara();
      const code: string[] = [];
      while (++i < lines.length && !lines[i]!.trimStart().startsWith('```')) code.push(lines[i]!);
      blocks.push({ kind: 'pre', text: code.join('\n') });
      continue;
    }
    const list = BULLET.test(line) ? 'ul' : NUMBERED.test(line) ? 'ol' : undefined;
    if (list) {
      endPara();
      const re = list === 'ul' ? BULLET : NUMBERED;
      const items: Inline[][] = [];
      for (; i < lines.length && re.test(lines[i]!); i++) items.push(parseInline(re.exec(lines[i]!)![1]!));
      i--;
      blocks.push({ kind: list, items });
      continue;
    }
    const h = HEADING.exec(line);
    if (h) {
      endPara();
      blocks.push({ kind: 'h', level: h[1]!.length, inlines: parseInline(h[2]!) });
    } else if (line.trim() === '') {
      endPara();
    } else {
      para.push(line);
    }
  }
  endPara();
  return blocks;
}

function inlines(doc: Document, parent: Node, items: Inline[]): void {
  for (const it of items) {
    if (it.kind === 'text') {
      parent.appendChild(doc.createTextNode(it.text));
    } else {
      const el = doc.createElement(it.kind);
      el.textContent = it.text;
      parent.appendChild(el);
    }
  }
}

export function renderMarkdown(doc: Document, src: string): DocumentFragment {
  const frag = doc.createDocumentFragment();
  for (const b of parseMarkdown(src)) {
    if (b.kind === 'pre') {
      const pre = doc.createElement('pre');
      const code = doc.createElement('code');
      code.textContent = b.text;
      pre.appendChild(code);
      frag.appendChild(pre);
    } else if ('items' in b) {
      const list = doc.createElement(b.kind);
      for (const item of b.items) {
        const li = doc.createElement('li');
        inlines(doc, li, item);
        list.appendChild(li);
      }
      frag.appendChild(list);
    } else {
      const el = doc.createElement(b.kind === 'h' ? `h${Math.min(b.level + 2, 6)}` : 'p');
      inlines(doc, el, b.inlines);
      frag.appendChild(el);
    }
  }
  return frag;
}
