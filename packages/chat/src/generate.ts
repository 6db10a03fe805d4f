// The generation loop over one engine session: prefill (reusing the KV cache of the
// prefix this prompt shares with what the session already holds), then tokens until
// EOS, a stop string, the token budget or an abort. Tokens come from a TokenSource:
// plain decoding (one per step) or a draft model verified by the session (several).

import type { Session } from '@webgpu-chat/engine';
import { StreamingDetokenizer } from './detokenizer.ts';
import { ChatInputError, ContextLengthError } from './errors.ts';
import { nextToken, SeededRandom, type ResolvedGenerationConfig } from './sampling.ts';
import { eosIds, StopStringMatcher } from './stopping.ts';
import type { ChatTokenizer } from './tokenizer.ts';
import type { Assistant } from './speculative.ts';
import type { FinishReason, GenerationStats, SpeculativeStats, StreamEvent } from './types.ts';

export interface GenerationResult {
  /** The reply, stop string cut off, special tokens skipped. */
  text: string;
  /** Every sampled id, the final EOS included. */
  tokenIds: number[];
  stats: GenerationStats;
}

export interface RunOptions {
  signal?: AbortSignal;
  onText?: (delta: string) => void;
  /** Speculative decoding with this draft (see speculative.ts). */
  assistant?: Assistant;
}

/**
 * Where the loop's tokens come from. Between calls to next() the target session holds
 * every token of the sequence but the last one, whose logits are computed on demand.
 */
export interface TokenSource {
  /** Runs the prompt past the `reused` tokens the session already holds. */
  prefill(prompt: readonly number[], reused: number): void;
  /**
   * The next tokens (at least one, at most `max`) after `sequence` (prompt and the tokens
   * generated so far). The session may be left holding more than the sequence; the
   * loop truncates it to what it keeps.
   */
  next(sequence: readonly number[], max: number): Promise<number[]>;
  /** The session now holds exactly the first `length` tokens of the sequence. */
  settle(length: number): void;
  /** After a failed read: forget what any other cache holds, so the next call rebuilds it. */
  reset(): void;
  stats(): SpeculativeStats | undefined;
}

/** Plain decoding: one forward and one read per token. */
class PlainSource implements TokenSource {
  /** The sampled token not yet run through the session. */
  private pending: number | undefined;
  constructor(
    private readonly session: Session,
    private readonly cfg: ResolvedGenerationConfig,
    private readonly rng: SeededRandom,
    private readonly vocabSize: number,
  ) {}
  prefill(prompt: readonly number[], reused: number): void {
    this.session.forward(prompt.slice(reused));
  }
  async next(sequence: readonly number[]): Promise<number[]> {
    if (this.pending !== undefined) this.session.forward([this.pending]);
    this.pending = await nextToken(this.session, this.cfg, this.rng, this.vocabSize, sequence);
    return [this.pending];
  }
  settle(): void {}
  reset(): void {}
  stats(): undefined {
    return undefined;
  }
}

/** Length of the common prefix of two id lists. */
export function commonPrefixLength(a: readonly number[], b: readonly number[]): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}

export class SessionGenerator {
  /** The ids whose KV entries the session holds, in order (session.length of them). */
  private cached: number[] = [];
  private last: GenerationResult | undefined;

  constructor(
    readonly session: Session,
    readonly tokenizer: ChatTokenizer,
    /** Length of the model's logits row. */
    readonly vocabSize: number,
  ) {}

  /** The ids the session's KV cache holds now. */
  get cachedIds(): readonly number[] {
    return this.cached;
  }

  /** The outcome of the latest run, complete even when the caller stopped iterating early. */
  get lastResult(): GenerationResult | undefined {
    return this.last;
  }

  /** Runs to the end and returns the result (deltas go to onText). */
  async run(promptIds: readonly number[], cfg: ResolvedGenerationConfig, opts: RunOptions = {}): Promise<GenerationResult> {
    const it = this.stream(promptIds, cfg, opts);
    for (;;) {
      const r = await it.next();
      if (r.done) return r.value;
    }
  }

  /** Yields a StreamEvent per sampled token (and one with tokenId null for text released at the end). */
  async *stream(promptIds: readonly number[], cfg: ResolvedGenerationConfig, opts: RunOptions = {}): AsyncGenerator<StreamEvent, GenerationResult> {
    const t0 = performance.now();
    const prompt = Array.from(promptIds);
    const { session } = this;
    if (prompt.length === 0) throw new ChatInputError('The prompt is empty: there is nothing to continue from');
    if (prompt.length > session.maxContext) throw new ContextLengthError(prompt.length, session.maxContext);

    const generated: number[] = [];
    let text = '';
    let finishReason: FinishReason = 'length';
    let reused = 0;
    let tFirst = t0;
    const rng = new SeededRandom(cfg.seed);
    const source: TokenSource = opts.assistant ? opts.assistant.source(session, cfg, rng, this.vocabSize) : new PlainSource(session, cfg, rng, this.vocabSize);
    const finish = (): GenerationResult => {
      const tEnd = performance.now();
      const prefillSec = (tFirst - t0) / 1000;
      const decodeSec = (tEnd - tFirst) / 1000;
      const stats: GenerationStats = {
        promptTokens: prompt.length,
        reusedTokens: reused,
        newTokens: generated.length,
        timeToFirstTokenMs: generated.length > 0 ? tFirst - t0 : 0,
        prefillTokensPerSecond: generated.length > 0 && prefillSec > 0 ? (prompt.length - reused) / prefillSec : 0,
        decodeTokensPerSecond: generated.length > 1 && decodeSec > 0 ? (generated.length - 1) / decodeSec : 0,
        totalMs: tEnd - t0,
        finishReason,
      };
      const spec = source.stats();
      if (spec) stats.speculative = spec;
      return (this.last = { text, tokenIds: generated, stats });
    };

    if (cfg.max_new_tokens === 0) return finish();
    if (opts.signal?.aborted) {
      finishReason = 'abort';
      return finish();
    }

    // The whole prompt may be cached already (a retry): the last position is recomputed
    // anyway, because its logits are needed and the session keeps only the latest ones.
    reused = Math.min(commonPrefixLength(this.cached, prompt), prompt.length - 1);
    // Sampling token n needs the first n-1 of them in the cache next to the prompt.
    const budget = Math.min(cfg.max_new_tokens, session.maxContext - prompt.length + 1);
    const eos = eosIds(cfg.eos_token_id, this.tokenizer);
    const detok = new StreamingDetokenizer(this.tokenizer, { skipSpecialTokens: true });
    const stopper = new StopStringMatcher(cfg.stop);
    const sequence = [...prompt];
    const emit = (delta: string): void => {
      text += delta;
      if (delta) opts.onText?.(delta);
    };

    let ok = false;
    let failed = false;
    try {
      session.truncate(reused);
      this.cached.length = reused;
      source.prefill(prompt, reused);
      decode: for (;;) {
        for (const id of await source.next(sequence, budget - generated.length)) {
          if (generated.length === 0) tFirst = performance.now();
          generated.push(id);
          sequence.push(id);
          if (eos.has(id)) {
            finishReason = 'stop';
            break decode;
          }
          const r = stopper.push(detok.push(id));
          emit(r.text);
          yield { delta: r.text, tokenId: id };
          if (r.stopped) {
            finishReason = 'stop';
            break decode;
          }
          if (generated.length >= budget) break decode;
          if (opts.signal?.aborted) {
            finishReason = 'abort';
            break decode;
          }
        }
      }
      if (!stopper.stopped) {
        const tail = stopper.push(detok.flush()).text + (stopper.stopped ? '' : stopper.flush());
        emit(tail);
        if (tail) yield { delta: tail, tokenId: null };
      }
      ok = true;
    } catch (e) {
      // After a failed read the cache contents are unknown: the next call recomputes all.
      failed = true;
      this.cached = [];
      source.reset();
      throw e;
    } finally {
      // Not ok without an error: the caller stopped iterating, which is an abort.
      if (!ok) finishReason = 'abort';
      if (!failed) {
        // Keep what plain decoding leaves cached: the prompt and every token but the last
        // (a draft step may have run further).
        const kept = Math.min(session.length, prompt.length + Math.max(generated.length - 1, 0));
        session.truncate(kept);
        source.settle(kept);
        this.cached = sequence.slice(0, kept);
      }
      finish();
    }
    return this.last!;
  }
}
