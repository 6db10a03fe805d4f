// The generation loop over one engine session: prefill (reusing the KV cache of the
// prefix this prompt shares with what the session already holds), then one token at a
// time until EOS, a stop string, the token budget or an abort.

import type { Session } from '@webgpu-chat/engine';
import { StreamingDetokenizer } from './detokenizer.ts';
import { ChatInputError, ContextLengthError } from './errors.ts';
import { nextToken, SeededRandom, type ResolvedGenerationConfig } from './sampling.ts';
import { eosIds, StopStringMatcher } from './stopping.ts';
import type { ChatTokenizer } from './tokenizer.ts';
import type { FinishReason, GenerationStats, StreamEvent } from './types.ts';

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
    const rng = new SeededRandom(cfg.seed);
    const history = function* (): Generator<number> {
      yield* prompt;
      yield* generated;
    };
    const emit = (delta: string): void => {
      text += delta;
      if (delta) opts.onText?.(delta);
    };

    let ok = false;
    try {
      session.truncate(reused);
      this.cached.length = reused;
      session.forward(prompt.slice(reused));
      this.cached.push(...prompt.slice(reused));
      for (;;) {
        const id = await nextToken(session, cfg, rng, this.vocabSize, history());
        if (generated.length === 0) tFirst = performance.now();
        generated.push(id);
        if (eos.has(id)) {
          finishReason = 'stop';
          break;
        }
        const r = stopper.push(detok.push(id));
        emit(r.text);
        yield { delta: r.text, tokenId: id };
        if (r.stopped) {
          finishReason = 'stop';
          break;
        }
        if (generated.length >= budget) break;
        if (opts.signal?.aborted) {
          finishReason = 'abort';
          break;
        }
        session.forward([id]);
        this.cached.push(id);
      }
      if (!stopper.stopped) {
        const tail = stopper.push(detok.flush()).text + (stopper.stopped ? '' : stopper.flush());
        emit(tail);
        if (tail) yield { delta: tail, tokenId: null };
      }
      ok = true;
    } catch (e) {
      // After a failed read the cache contents are unknown: the next call recomputes all.
      this.cached = [];
      throw e;
    } finally {
      // Not ok without an error: the caller stopped iterating, which is an abort.
      if (!ok) finishReason = 'abort';
      finish();
    }
    return this.last!;
  }
}
