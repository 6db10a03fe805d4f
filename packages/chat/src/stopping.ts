// When generation ends: an EOS token, a stop string, the token budget, or an abort.

import type { ChatTokenizer } from './tokenizer.ts';

/**
 * The ids that end a reply: generation_config.json's eos_token_id (one or a list,
 * already merged into `configured`) and the tokenizer's eos_token. Chat models often
 * differ here (Llama 3's tokenizer says <|eot_id|>, its generation config lists
 * <|end_of_text|> too), so the union is used.
 */
export function eosIds(configured: Iterable<number>, tokenizer: ChatTokenizer): Set<number> {
  const ids = new Set(configured);
  if (tokenizer.eos) ids.add(tokenizer.eos.id);
  return ids;
}

/**
 * Finds stop strings in streamed text, across token boundaries, and cuts them from the
 * output. Text that could be the start of a stop string is held back until it either
 * completes one (then it is dropped) or cannot anymore (then it is released).
 */
export class StopStringMatcher {
  private held = '';
  private done = false;

  constructor(private readonly stops: readonly string[]) {}

  get stopped(): boolean {
    return this.done;
  }

  /** Feeds decoded text; returns what may be shown now and whether a stop string ended it. */
  push(delta: string): { text: string; stopped: boolean } {
    if (this.done) return { text: '', stopped: true };
    const buf = this.held + delta;
    if (this.stops.length === 0) return { text: buf, stopped: false };
    let cut = -1;
    for (const s of this.stops) {
      const at = buf.indexOf(s);
      if (at >= 0 && (cut < 0 || at < cut)) cut = at;
    }
    if (cut >= 0) {
      this.done = true;
      this.held = '';
      return { text: buf.slice(0, cut), stopped: true };
    }
    const keep = this.partialSuffix(buf);
    this.held = buf.slice(buf.length - keep);
    return { text: buf.slice(0, buf.length - keep), stopped: false };
  }

  /** At the end of generation: the held-back text, which turned out not to be a stop string. */
  flush(): string {
    const out = this.done ? '' : this.held;
    this.held = '';
    return out;
  }

  /** Length of the longest suffix of buf that is a proper prefix of some stop string. */
  private partialSuffix(buf: string): number {
    let best = 0;
    for (const s of this.stops) {
      for (let n = Math.min(s.length - 1, buf.length); n > best; n--) {
        if (buf.endsWith(s.slice(0, n))) {
          best = n;
          break;
        }
      }
    }
    return best;
  }
}
