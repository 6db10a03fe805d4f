// Scoring a token sequence: the log-probability of each token given the ones before it and
// the k best alternatives at its position, the way evaluation harnesses and perplexity
// ask. The sequence runs in chunks of at most MAX_SCORE_ROWS positions (a forward with
// allLogits keeps that many logits rows); each row is reduced on the GPU (top-k,
// logSumExp and the actual next token's logit), so only a few words per position come back.

import type { Session } from './types.ts';

/** Positions scored per forward: the rows a forward with allLogits keeps. */
export const MAX_SCORE_ROWS = 64;
/** The most alternatives per position (the GPU top-k's limit). */
export const MAX_SCORE_TOP_K = 256;

export class ScoringError extends Error {
  override name = 'ScoringError';
}

export interface ScoreOptions {
  /** Alternatives per position, 0..256 (default 0: only the actual token's log-probability). */
  topK?: number;
  /**
   * Index of the first token to score (default 1, every token with a predecessor). Earlier
   * tokens are context only: they run without keeping logits, in prefill-sized steps.
   */
  from?: number;
  /** Positions per forward, 1..64 (default 64). */
  chunk?: number;
  /** Called after each chunk with the tokens scored so far and in all. */
  onProgress?: (scored: number, total: number) => void;
  /** Stops between chunks with the signal's reason. */
  signal?: AbortSignal;
}

export interface TokenScore {
  /** log p(tokens[i] | everything before it), from the f32 log-softmax of the logits. */
  logprob: number;
  /** Whether tokens[i] is the most likely token at its position (greedy decoding would pick it). */
  greedy: boolean;
  /** The topK most likely ids at this position, best first (ties → lowest id). */
  topIds: Int32Array;
  /** Their log-probabilities. */
  topLogprobs: Float32Array;
}

/**
 * Appends `tokens` to the session (after whatever it holds, which is context) and scores
 * tokens[from ..]: result[j] is the score of tokens[from + j]. Afterwards the session holds
 * every token and keeps the logits of the last one, so generation can continue from it.
 */
export async function scoreTokens(session: Session, tokens: ArrayLike<number>, opts: ScoreOptions = {}): Promise<TokenScore[]> {
  const n = tokens.length;
  const k = opts.topK ?? 0;
  const from = opts.from ?? 1;
  const chunk = opts.chunk ?? MAX_SCORE_ROWS;
  if (n === 0) throw new ScoringError('scoreTokens needs at least one token');
  if (!(Number.isInteger(k) && k >= 0 && k <= MAX_SCORE_TOP_K)) throw new ScoringError(`topK must be an integer in 0..${MAX_SCORE_TOP_K}, got ${k}`);
  if (!(Number.isInteger(from) && from >= 1 && from <= n)) throw new ScoringError(`from must be an integer in 1..${n} (the tokens), got ${from}`);
  if (!(Number.isInteger(chunk) && chunk >= 1 && chunk <= MAX_SCORE_ROWS)) throw new ScoringError(`chunk must be an integer in 1..${MAX_SCORE_ROWS}, got ${chunk}`);
  const ids = Array.from(tokens);
  const start = session.length;
  // Row i predicts tokens[i + 1]: the first row needed is that of tokens[from - 1].
  if (from > 1) session.forward(ids.slice(0, from - 1));
  const out: TokenScore[] = [];
  const total = n - from;
  for (let at = from - 1; at < n; at += chunk) {
    opts.signal?.throwIfAborted();
    const end = Math.min(at + chunk, n);
    session.forward(ids.slice(at, end), { allLogits: true });
    const rows: number[] = [];
    const targets: number[] = [];
    for (let i = at; i < end && i + 1 < n; i++) {
      rows.push(start + i);
      targets.push(ids[i + 1]!);
    }
    const reduced = await session.reduceRows(rows, k, targets);
    for (const [j, r] of reduced.entries()) {
      const lse = r.logSumExp;
      out.push({
        logprob: r.targetLogit - lse,
        greedy: r.argmax === targets[j],
        topIds: r.ids,
        topLogprobs: r.logits.map((x) => x - lse),
      });
    }
    opts.onProgress?.(out.length, total);
  }
  return out;
}
