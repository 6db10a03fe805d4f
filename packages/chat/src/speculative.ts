// Assisted generation (speculative decoding): a draft model sharing the target's
// tokenizer proposes K tokens one at a time; the target scores all of them plus one
// more in a single forward over its KV cache (allLogits), keeps the longest accepted
// prefix and adds one token of its own. Both caches then roll back past the rejected
// tokens with truncate, so no prefix is ever recomputed.
//
// Acceptance is speculative sampling (Leviathan et al. 2023, Chen et al. 2023): accept a
// drafted x with probability min(1, p(x)/q(x)); at the first rejection draw from
// normalize(max(0, p - q)); after a fully accepted draft draw the bonus token from p.
// p and q are the target's and draft's distributions after the same warpers, so the
// output follows exactly the distribution plain sampling gives. Greedy decoding is the
// special case of point masses: a drafted token is kept iff it is the target's argmax,
// so the output equals the target's own greedy output.

import type { Model, Session } from '@webgpu-chat/engine';
import { DraftLengthPlanner, RunningCost, type PlannerState, type StepCosts } from './draft-length.ts';
import { commonPrefixLength, type TokenSource } from './generate.ts';
import {
  applyRepetitionPenalty,
  argmax,
  distributionFromLogits,
  draw,
  isGreedy,
  MAX_NUM_ASSISTANT_TOKENS,
  type LogitsReader,
  readPath,
  warpSorted,
  type Distribution,
  type ResolvedGenerationConfig,
  type SamplingParams,
  type SeededRandom,
} from './sampling.ts';
import type { ChatTokenizer } from './tokenizer.ts';
import type { SpeculativeStats } from './types.ts';

/** The draft cannot serve this target: another tokenizer, or a shorter context. */
export class DraftModelError extends Error {
  override name = 'DraftModelError';
}

/** A distribution that puts all its mass on one token (how greedy choices enter the acceptance rule). */
export function pointMass(id: number): Distribution {
  return { ids: Int32Array.of(id), probs: Float64Array.of(1) };
}

/** The probability of `id` under `d` (0 when it is not a candidate). */
export function probabilityOf(d: Distribution, id: number): number {
  for (let i = 0; i < d.ids.length; i++) if (d.ids[i] === id) return d.probs[i]!;
  return 0;
}

/** normalize(max(0, p - q)): where a rejected draft token's mass goes. p itself if that is empty (rounding). */
export function residualDistribution(p: Distribution, q: Distribution): Distribution {
  const qOf = new Map<number, number>();
  for (let i = 0; i < q.ids.length; i++) qOf.set(q.ids[i]!, q.probs[i]!);
  const ids: number[] = [];
  const mass: number[] = [];
  let sum = 0;
  for (let i = 0; i < p.ids.length; i++) {
    const r = p.probs[i]! - (qOf.get(p.ids[i]!) ?? 0);
    if (r > 0) {
      ids.push(p.ids[i]!);
      mass.push(r);
      sum += r;
    }
  }
  if (!(sum > 0)) return p;
  return { ids: Int32Array.from(ids), probs: Float64Array.from(mass, (m) => m / sum) };
}

export interface Verdict {
  /** How many drafted tokens the target kept (a prefix of the draft). */
  accepted: number;
  /** The target's own token after them: a correction after a rejection, a bonus after full acceptance. */
  token: number;
}

/**
 * Speculative sampling over one draft. `q[i]` is the distribution drafted[i] was drawn
 * from; `target(i)` is the target's distribution at that position (i = drafted.length:
 * after the whole draft). target(i) is asked for in order and only while needed, so a
 * caller can read the target's rows lazily.
 */
export async function verifyDraft(
  drafted: readonly number[],
  q: readonly Distribution[],
  target: (i: number) => Distribution | Promise<Distribution>,
  rng: SeededRandom,
): Promise<Verdict> {
  if (q.length !== drafted.length) throw new RangeError(`verifyDraft: ${drafted.length} drafted tokens but ${q.length} draft distributions`);
  for (let i = 0; i < drafted.length; i++) {
    const p = await target(i);
    const x = drafted[i]!;
    const qx = probabilityOf(q[i]!, x);
    // u < p/q, written without the division; qx > 0 since x was drawn from q.
    if (rng.next() * qx < probabilityOf(p, x)) continue;
    return { accepted: i, token: draw(residualDistribution(p, q[i]!), rng) };
  }
  return { accepted: drafted.length, token: draw(await target(drafted.length), rng) };
}

/**
 * The distribution the sampling flags give at a position of `session` (the last one
 * forwarded, or `row` after a forward with allLogits), read the way plain decoding reads
 * it: argmax for greedy, the GPU's top-k for top_k <= 256, else the whole row.
 * previousIds: the sequence up to that position, for the repetition penalty.
 */
export async function distributionAt(session: LogitsReader, p: SamplingParams, vocabSize: number, row: number | undefined, previousIds: Iterable<number>): Promise<Distribution> {
  switch (readPath(p, vocabSize)) {
    case 'argmax':
      return pointMass(await session.argmax(row));
    case 'topk': {
      const top = await session.topK(p.top_k, row);
      return warpSorted(top.ids, top.logits, p);
    }
    case 'logits': {
      const logits = await session.logits(row); // a fresh copy: safe to penalise in place
      applyRepetitionPenalty(logits, previousIds, p.repetition_penalty);
      return isGreedy(p) ? pointMass(argmax(logits)) : distributionFromLogits(logits, p);
    }
  }
}

/**
 * The draft's distribution at its last position, and how sure it was of a token: the
 * probability it gave it after the warpers (Transformers' ConfidenceCriteria reads the
 * processed scores). Greedy drafting reads the top token's probability when a confidence is
 * wanted (top-1 with log-sum-exp), its argmax alone otherwise.
 */
export async function draftDistributionAt(
  session: LogitsReader,
  p: SamplingParams,
  vocabSize: number,
  previousIds: Iterable<number>,
  wantConfidence: boolean,
): Promise<{ dist: Distribution; confidence: (id: number) => number }> {
  const path = readPath(p, vocabSize);
  if (path === 'argmax' && wantConfidence) {
    const top = await session.topK(1);
    const sure = Math.exp(top.logits[0]! - top.logSumExp);
    return { dist: pointMass(top.ids[0]!), confidence: () => sure };
  }
  if (path === 'logits' && isGreedy(p) && wantConfidence) {
    const logits = await session.logits();
    applyRepetitionPenalty(logits, previousIds, p.repetition_penalty);
    const best = argmax(logits);
    let sum = 0;
    for (const l of logits) sum += Math.exp(l - logits[best]!);
    return { dist: pointMass(best), confidence: () => 1 / sum };
  }
  const dist = await distributionAt(session, p, vocabSize, undefined, previousIds);
  return { dist, confidence: (id) => probabilityOf(dist, id) };
}

/** What must match for two models to share token ids. */
export interface TokenizerSide {
  /** Length of the model's logits row. */
  vocabSize: number;
  /** The tokenizer, when the side has one (a pipeline); a bare Model has only its config. */
  tokenizer?: ChatTokenizer;
  bosTokenId?: number | number[] | undefined;
  eosTokenId?: number | number[] | undefined;
}

/**
 * Throws a DraftModelError unless the draft reads and writes the same token ids as the
 * target: the same logits width, and (when both have tokenizers) the same token string
 * for every id and the same special tokens; with a bare Model, the same BOS/EOS ids.
 */
export function checkSameTokenizer(target: TokenizerSide, draft: TokenizerSide): void {
  const fail = (why: string): never => {
    throw new DraftModelError(`The assistant model cannot draft for this model: ${why}. A draft must use the target's tokenizer (same vocabulary and special tokens).`);
  };
  if (target.vocabSize !== draft.vocabSize) fail(`its vocabulary has ${draft.vocabSize} entries, the target's ${target.vocabSize}`);
  const a = target.tokenizer;
  const b = draft.tokenizer;
  if (a && b) {
    if (a.vocabSize !== b.vocabSize) fail(`its tokenizer has ${b.vocabSize} tokens, the target's ${a.vocabSize}`);
    for (let id = 0; id < a.vocabSize; id++) {
      const ta = a.idToToken(id);
      const tb = b.idToToken(id);
      if (ta !== tb) fail(`token ${id} is ${JSON.stringify(tb)} in its tokenizer but ${JSON.stringify(ta)} in the target's`);
    }
    for (const k of ['bos', 'eos', 'pad', 'unk'] as const) {
      if (a[k]?.id !== b[k]?.id) fail(`its ${k}_token is ${JSON.stringify(b[k]?.content ?? null)}, the target's ${JSON.stringify(a[k]?.content ?? null)}`);
    }
    const sa = [...a.specialIds].sort((x, y) => x - y).join(',');
    const sb = [...b.specialIds].sort((x, y) => x - y).join(',');
    if (sa !== sb) fail('its special tokens differ from the target\'s');
  } else {
    const same = (x: unknown, y: unknown) => JSON.stringify(x ?? null) === JSON.stringify(y ?? null);
    if (!same(target.bosTokenId, draft.bosTokenId)) fail(`its bos_token_id is ${JSON.stringify(draft.bosTokenId)}, the target's ${JSON.stringify(target.bosTokenId)}`);
    if (!same(target.eosTokenId, draft.eosTokenId)) fail(`its eos_token_id is ${JSON.stringify(draft.eosTokenId)}, the target's ${JSON.stringify(target.eosTokenId)}`);
  }
}

/** Transformers' heuristic: +2 after a fully accepted draft, -1 (down to 1) otherwise. */
export function nextNumAssistantTokens(k: number, drafted: number, accepted: number): number {
  return accepted === drafted ? Math.min(k + 2, MAX_NUM_ASSISTANT_TOKENS) : Math.max(1, k - 1);
}

/**
 * A draft model serving one target: its own session (KV cache), the ids that cache holds
 * (reused across steps and calls like the target's), and the draft length the 'heuristic'
 * schedule carries between calls. Generations that share it take turns: each plan starts
 * by rolling the draft's cache back to what it shares with that generation's sequence.
 */
export class Assistant {
  /** The ids the draft session's KV cache holds, in order. */
  readonly cached: number[] = [];
  /** The draft length the 'heuristic' schedule reached, and the num_assistant_tokens it started from. */
  private carried: { start: number; k: number } | undefined;
  /** The 'measured' schedule's acceptance evidence, carried between calls. */
  plannerState: PlannerState | undefined;
  /** The 'measured' schedule's back-off across calls: calls still to decode without drafting, the next back-off, and whether the next call probes. */
  private readonly backoff = { skip: 0, length: 1, probe: false };
  /** Milliseconds the draft takes per drafted token (a forward of one or two tokens and its read). */
  readonly draftTokenCost = new RunningCost();
  /** Milliseconds per token of the draft catching up on a sequence (prompts, tokens decoded without it). */
  readonly catchUpTokenCost = new RunningCost();
  private disposed = false;

  private constructor(
    readonly model: Model,
    readonly session: Session,
  ) {}

  /**
   * Binds `draft` to a target whose sequences hold up to `maxContext` tokens: checks that
   * they share a tokenizer and that the draft holds as much context, and opens the draft's session.
   */
  static open(target: { model: Model; maxContext: number; tokenizer: ChatTokenizer }, draft: { model: Model; tokenizer?: ChatTokenizer }): Assistant {
    const side = (m: Model, tokenizer?: ChatTokenizer): TokenizerSide => ({
      vocabSize: m.info.vocabSize,
      ...(tokenizer ? { tokenizer } : {}),
      bosTokenId: m.info.config.bos_token_id,
      eosTokenId: m.info.config.eos_token_id,
    });
    // A bare Model has no tokenizer: compare config ids on both sides then.
    checkSameTokenizer(side(target.model, draft.tokenizer && target.tokenizer), side(draft.model, draft.tokenizer));
    const session = draft.model.createSession({ maxContext: target.maxContext });
    if (session.maxContext < target.maxContext) {
      session.dispose();
      throw new DraftModelError(`The assistant model holds ${session.maxContext} tokens of context, fewer than the target's ${target.maxContext}: load the target with a smaller maxContext`);
    }
    return new Assistant(draft.model, session);
  }

  /**
   * The token source of one generation (see generate.ts); `costs`: the target's measured
   * step times, which the 'measured' schedule weighs drafts against.
   */
  source(cfg: ResolvedGenerationConfig, rng: SeededRandom, vocabSize: number, costs: StepCosts): TokenSource {
    if (this.disposed) throw new DraftModelError('This assistant has been disposed');
    const start = cfg.num_assistant_tokens;
    let k = start;
    if (cfg.num_assistant_tokens_schedule === 'heuristic' && this.carried?.start === start) k = this.carried.k;
    const carry = cfg.num_assistant_tokens_schedule === 'heuristic' ? (reached: number) => (this.carried = { start, k: reached }) : undefined;
    const measured = cfg.num_assistant_tokens_schedule === 'measured' ? { costs, plannerFor: (sequence: readonly number[]) => this.measuredPlanner(costs, sequence) } : undefined;
    return new SpeculativeSource(this, cfg, rng, vocabSize, k, carry, measured);
  }

  /** What catching the draft's cache up on `sequence` costs, in the target's one-token steps (0 before it was timed). */
  private catchUpCost(sequence: readonly number[], costs: StepCosts): number {
    const tokens = sequence.length - commonPrefixLength(this.cached, sequence);
    const perToken = this.catchUpTokenCost.ms;
    const one = costs.estimate(1);
    return perToken !== undefined && one !== undefined ? (tokens * perToken) / one : 0;
  }

  /**
   * The 'measured' schedule's planner for one call over `sequence`. A pause lasts the rest of
   * the call; after one, the next 1 (then 2, 4, ... up to MAX_SKIPPED_CALLS while probes keep
   * failing; MAX_SKIPPED_CALLS at once when no acceptance would have paid) calls decode without
   * drafting (so the draft does not even read their prompts), then the first call whose
   * sequence the draft can catch up on cheaply probes with one draft.
   */
  private measuredPlanner(costs: StepCosts, sequence: readonly number[]): DraftLengthPlanner {
    const b = this.backoff;
    let paused = false;
    let probe = false;
    if (b.skip > 0) {
      b.skip--;
      paused = true;
    } else if (b.probe) {
      probe = this.catchUpCost(sequence, costs) <= MAX_PROBE_CATCH_UP;
      paused = !probe;
      if (probe) b.probe = false;
    }
    return new DraftLengthPlanner(costs, {
      ...(this.plannerState ? { start: this.plannerState } : {}),
      pauseForGood: true,
      paused,
      probeFirst: probe,
      // A draft that could not pay at any acceptance waits out the longest back-off at once:
      // only a change in what steps cost here would let a later probe pay.
      onPause: (hopeless) => {
        b.skip = hopeless ? MAX_SKIPPED_CALLS : b.length;
        b.length = Math.min(2 * b.length, MAX_SKIPPED_CALLS);
        b.probe = true;
      },
      onProbe: (paid) => {
        if (paid) b.length = 1;
      },
    });
  }

  /**
   * Runs the draft over `sequence` (reusing the prefix its cache shares) so its last row is
   * the sequence's next-token distribution; returns how many tokens it ran.
   */
  advance(sequence: readonly number[]): number {
    const same = Math.min(commonPrefixLength(this.cached, sequence), sequence.length - 1);
    this.rollBack(same);
    this.session.forward(sequence.slice(same));
    this.cached.push(...sequence.slice(same));
    return sequence.length - same;
  }



  rollBack(length: number): void {
    this.session.truncate(length);
    this.cached.length = length;
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.session.dispose();
  }
}

/** The most calls the 'measured' schedule skips between probes of a draft model that does not pay. */
const MAX_SKIPPED_CALLS = 16;
/** A probe waits for a call whose sequence the draft catches up on in at most this many of the model's one-token steps. */
const MAX_PROBE_CATCH_UP = 2;

/**
 * Draft K, verify them in the sequence's next step, keep the accepted prefix and one
 * token of the model's own. The target holds all of the sequence but its last token,
 * which opens each verification step.
 */
class SpeculativeSource implements TokenSource {
  readonly holdsBackLast = true;
  private steps = 0;
  private draftedTotal = 0;
  private acceptedTotal = 0;
  /** The current draft, and the distributions its tokens were drawn from. */
  private drafted: number[] = [];
  private q: Distribution[] = [];
  /** The draft length chosen last (0: the step decoded without a draft). */
  private lastK = 0;

  constructor(
    private readonly draft: Assistant,
    private readonly cfg: ResolvedGenerationConfig,
    private readonly rng: SeededRandom,
    private readonly vocabSize: number,
    /** The current draft length. */
    private k: number,
    /** Where a 'heuristic' schedule keeps k for the next call. */
    private readonly carry: ((k: number) => void) | undefined,
    /** The 'measured' schedule: k is then the longest draft, and the planner picks each one's length. */
    private readonly measured: { costs: StepCosts; plannerFor: (sequence: readonly number[]) => DraftLengthPlanner } | undefined,
  ) {}

  /** The 'measured' schedule's planner, made at the first step (it looks at the sequence). */
  private planner: DraftLengthPlanner | undefined;

  /** A drafted token's cost in the target's one-token steps, once both have been timed. */
  private draftCost(): number | undefined {
    const one = this.measured?.costs.estimate(1);
    const ms = this.draft.draftTokenCost.ms;
    return one !== undefined && ms !== undefined ? ms / one : undefined;
  }

  /** The most tokens the next draft may hold (it may stop earlier, unsure). */
  private draftLength(sequence: readonly number[], max: number): number {
    // K drafted + 1 model token never exceed what the loop still wants, which also keeps
    // both caches inside their context (the loop's budget accounts for it).
    const most = Math.max(0, Math.min(this.k, max - 1));
    if (!this.measured || most === 0) return most;
    this.planner ??= this.measured.plannerFor(sequence);
    const cost = this.draftCost();
    // One token first, which times the draft without staking a long draft on a guess.
    return cost === undefined ? Math.min(1, most) : this.planner.next(most, cost);
  }

  async plan(sequence: readonly number[], max: number): Promise<{ tokens: number[]; logits: 'all' }> {
    const { cfg, rng, vocabSize } = this;
    const K = (this.lastK = this.draftLength(sequence, max));
    const threshold = cfg.assistant_confidence_threshold;
    this.drafted = [];
    this.q = [];
    for (let i = 0; i < K; i++) {
      const prefix = [...sequence, ...this.drafted];
      const t0 = performance.now();
      const ran = this.draft.advance(prefix);
      const { dist, confidence } = await draftDistributionAt(this.draft.session, cfg, vocabSize, prefix, threshold > 0);
      // A draft step over more tokens is catching up on the sequence: not a drafted token's cost.
      const ms = performance.now() - t0;
      if (ran <= 2) this.draft.draftTokenCost.observe(ms);
      else this.draft.catchUpTokenCost.observe(ms / ran);
      const token = draw(dist, rng);
      this.q.push(dist);
      this.drafted.push(token);
      if (confidence(token) < threshold) break;
    }
    return { tokens: [sequence.at(-1)!, ...this.drafted], logits: 'all' };
  }

  async take(sequence: readonly number[], _planned: readonly number[], rows: LogitsReader): Promise<{ tokens: number[]; keep: number }> {
    const { cfg, rng, vocabSize, drafted } = this;
    const prefix = (i: number) => [...sequence, ...drafted.slice(0, i)];
    const verdict = await verifyDraft(drafted, this.q, (i) => distributionAt(rows, cfg, vocabSize, i, prefix(i)), rng);
    // The draft's cache may hold rejected tokens: the next plan rolls it back.
    this.draft.rollBack(Math.min(this.draft.cached.length, sequence.length + verdict.accepted));
    const K = drafted.length;
    if (K > 0) {
      this.steps++;
      this.draftedTotal += K;
      this.acceptedTotal += verdict.accepted;
      if (this.planner) {
        this.planner.observe(K, verdict.accepted, this.draftCost());
        this.draft.plannerState = this.planner.state;
      } else if (cfg.num_assistant_tokens_schedule !== 'constant') {
        this.k = nextNumAssistantTokens(this.k, K, verdict.accepted);
        this.carry?.(this.k);
      }
    }
    return { tokens: [...drafted.slice(0, verdict.accepted), verdict.token], keep: 1 + verdict.accepted };
  }

  stats(): SpeculativeStats {
    return speculativeStats(this.steps, this.draftedTotal, this.acceptedTotal, this.measured ? this.lastK : this.k);
  }
}

/** A drafter's counters as GenerationStats reports them. */
export function speculativeStats(steps: number, drafted: number, accepted: number, finalDraftLength: number): SpeculativeStats {
  return {
    steps,
    draftedTokens: drafted,
    acceptedTokens: accepted,
    acceptanceRate: drafted > 0 ? accepted / drafted : 0,
    meanAcceptedTokens: steps > 0 ? accepted / steps : 0,
    finalNumAssistantTokens: finalDraftLength,
  };
}
