// Streaming detokenization with the prefix-offset technique of vLLM and Transformers'
// TextStreamer: decode a short window of recent ids twice (without and with the new
// tokens) and emit the difference. Decoding a window rather than single tokens keeps
// SentencePiece's leading-space rule right (a decoder strips the space of the first token
// it sees, so a lone "▁there" decodes to "there"), and a window that ends in U+FFFD is an
// incomplete UTF-8 character (a byte-fallback <0xE2>, half an emoji): hold it back.

import type { ChatTokenizer } from './tokenizer.ts';

const REPLACEMENT = '\uFFFD';

export class StreamingDetokenizer {
  private readonly ids: number[] = [];
  /** Start of the decode window: tokens before it are emitted and no longer affect new text. */
  private prefixOffset = 0;
  /** Tokens before this one have been emitted as text. */
  private readOffset = 0;
  private emitted = '';

  constructor(
    private readonly tokenizer: ChatTokenizer,
    private readonly opts: { skipSpecialTokens?: boolean } = { skipSpecialTokens: true },
  ) {}

  /** Everything emitted so far. */
  get text(): string {
    return this.emitted;
  }

  /** Adds one token; returns the text it completes (possibly empty). */
  push(id: number): string {
    this.ids.push(id);
    const decode = (from: number, to: number): string =>
      this.tokenizer.decode(this.ids.slice(from, to), { skipSpecialTokens: this.opts.skipSpecialTokens ?? true });
    const prefix = decode(this.prefixOffset, this.readOffset);
    const full = decode(this.prefixOffset, this.ids.length);
    if (full.length <= prefix.length || full.endsWith(REPLACEMENT)) return '';
    const delta = full.slice(prefix.length);
    this.prefixOffset = this.readOffset;
    this.readOffset = this.ids.length;
    this.emitted += delta;
    return delta;
  }

  /** At the end of generation: whatever is still held back (an incomplete character decodes as U+FFFD). */
  flush(): string {
    if (this.readOffset === this.ids.length) return '';
    const opts = { skipSpecialTokens: this.opts.skipSpecialTokens ?? true };
    const prefix = this.tokenizer.decode(this.ids.slice(this.prefixOffset, this.readOffset), opts);
    const full = this.tokenizer.decode(this.ids.slice(this.prefixOffset), opts);
    const delta = full.startsWith(prefix) ? full.slice(prefix.length) : full;
    this.prefixOffset = this.readOffset = this.ids.length;
    this.emitted += delta;
    return delta;
  }
}
