// Prompt lookup decoding (Transformers' prompt_lookup_num_tokens, max_matching_ngram_size;
// llama-server's ngram drafts): the draft is the text that followed an earlier occurrence of
// the sequence's last n-gram, in the prompt or in the reply so far. It costs nothing to
// draft, so it pays wherever verifying several tokens costs little more than decoding one
// and the reply repeats its input (summaries, rewrites, extraction, code edits).
//
// Verification is the draft model's rule with the draft as a point mass: greedy keeps a
// drafted token iff it is the model's argmax, so the output is token for token the model's
// own; sampling keeps it with probability p(token) and otherwise draws from p without it, so
// the output follows the model's distribution. A logits processor (grammar masks, logit bias,
// penalties) is applied to each verified row with that row's own prefix, so it sees exactly
// the calls plain decoding would make.

import type { ItemRows, TokenSource } from './generate.ts';
import { DraftLengthPlanner, type StepCosts } from './draft-length.ts';
import { applyRepetitionPenalty, argmax, distributionFromLogits, isGreedy, readPath, type Distribution, type LogitsProcessor, type ResolvedGenerationConfig, type SeededRandom } from './sampling.ts';
import { distributionAt, pointMass, speculativeStats, verifyDraft } from './speculative.ts';
import type { SpeculativeStats } from './types.ts';

/**
 * Transformers' PromptLookupCandidateGenerator: for n from maxNgram down to 1, the first
 * earlier occurrence (left to right) of the sequence's last n tokens that has tokens after
 * it gives up to `count` of them; a draft ends before an EOS. Empty when nothing matches.
 */
export function lookupDraft(sequence: readonly number[], maxNgram: number, count: number, eos: ReadonlySet<number>): number[] {
  const L = sequence.length;
  for (let n = Math.min(maxNgram, L - 1); n >= 1; n--) {
    // An occurrence at i is followed by sequence[i + n]: i + n < L, so the last n-gram itself never matches.
    for (let i = 0; i + n < L; i++) {
      let same = true;
      for (let j = 0; j < n && same; j++) same = sequence[i + j] === sequence[L - n + j];
      if (!same) continue;
      const draft = sequence.slice(i + n, Math.min(i + n + count, L));
      const end = draft.findIndex((t) => eos.has(t));
      return end < 0 ? draft : draft.slice(0, end);
    }
  }
  return [];
}

/** A copy's continuation starts from this acceptance evidence (0.8 over two tokens), not the planner's even odds. */
const CONTINUATION_PRIOR = { accepted: 1.6, trials: 2 };

/**
 * Prompt lookup as the loop's token source: the draft of each step comes from the sequence
 * itself. The candidate is looked up first (it costs nothing), so a step with no match runs
 * undrafted without touching the schedule. Under the 'measured' schedule the length to
 * verify is planned from the acceptance of like drafts: one that continues a copy (the last
 * draft was accepted whole) is far likelier to hold than a fresh match (in free text a common
 * n-gram recurs with another continuation), so the two keep separate acceptance rates.
 */
export class PromptLookupSource implements TokenSource {
  readonly holdsBackLast = true;
  /** The planners of fresh matches [0] and of drafts that continue a copy [1]. */
  private readonly planners: [DraftLengthPlanner, DraftLengthPlanner];
  /** The planner of the current draft. */
  private planner: DraftLengthPlanner;
  private drafted: number[] = [];
  /** The draft length chosen last. */
  private k = 0;
  private steps = 0;
  private draftedTotal = 0;
  private acceptedTotal = 0;

  constructor(
    private readonly cfg: ResolvedGenerationConfig,
    private readonly rng: SeededRandom,
    private readonly vocabSize: number,
    private readonly eos: ReadonlySet<number>,
    costs: StepCosts,
    private readonly processor: LogitsProcessor | undefined,
  ) {
    this.planners = [new DraftLengthPlanner(costs), new DraftLengthPlanner(costs, { start: CONTINUATION_PRIOR })];
    this.planner = this.planners[0];
  }

  async plan(sequence: readonly number[], max: number): Promise<{ tokens: number[]; logits: 'all' }> {
    // K drafted + 1 model token never exceed what the loop still wants.
    const most = Math.min(this.cfg.prompt_lookup_num_tokens, max - 1);
    const found = most > 0 ? lookupDraft(sequence, this.cfg.max_matching_ngram_size, most, this.eos) : [];
    const measured = this.cfg.num_assistant_tokens_schedule === 'measured';
    if (found.length === 0) this.planner = this.planners[0];
    this.k = found.length === 0 ? 0 : measured ? this.planner.next(found.length) : found.length;
    this.drafted = found.slice(0, this.k);
    return { tokens: [sequence.at(-1)!, ...this.drafted], logits: 'all' };
  }

  async take(sequence: readonly number[], _planned: readonly number[], rows: ItemRows): Promise<{ tokens: number[]; keep: number }> {
    const { drafted } = this;
    const verdict = this.fastGreedy() ? await greedyVerdict(drafted, rows) : await verifyDraft(drafted, drafted.map(pointMass), (i) => this.target(rows, i, [...sequence, ...drafted.slice(0, i)]), this.rng);
    if (drafted.length > 0) {
      this.steps++;
      this.draftedTotal += drafted.length;
      this.acceptedTotal += verdict.accepted;
      this.planner.observe(drafted.length, verdict.accepted);
      this.planner = this.planners[verdict.accepted === drafted.length ? 1 : 0];
    }
    return { tokens: [...drafted.slice(0, verdict.accepted), verdict.token], keep: 1 + verdict.accepted };
  }

  /** Greedy with nothing to apply to the rows: every row's argmax in one read. */
  private fastGreedy(): boolean {
    return !this.processor && readPath(this.cfg, this.vocabSize) === 'argmax';
  }

  /** The model's distribution at row i, as plain decoding reads it (processor, then repetition penalty, then the warpers). */
  private async target(rows: ItemRows, i: number, prefix: readonly number[]): Promise<Distribution> {
    if (!this.processor) return distributionAt(rows, this.cfg, this.vocabSize, i, prefix);
    const logits = await rows.logits(i);
    this.processor(logits, prefix);
    applyRepetitionPenalty(logits, prefix, this.cfg.repetition_penalty);
    return isGreedy(this.cfg) ? pointMass(argmax(logits)) : distributionFromLogits(logits, this.cfg);
  }

  stats(): SpeculativeStats {
    return speculativeStats(this.steps, this.draftedTotal, this.acceptedTotal, this.k);
  }
}

/** Greedy verification from the argmax of every row, read back together. */
async function greedyVerdict(drafted: readonly number[], rows: ItemRows): Promise<{ accepted: number; token: number }> {
  const best = drafted.length === 0 ? [await rows.argmax(0)] : (await rows.reduce(Array.from({ length: drafted.length + 1 }, (_, i) => i), 0)).map((r) => r.argmax);
  let accepted = 0;
  while (accepted < drafted.length && best[accepted] === drafted[accepted]) accepted++;
  return { accepted, token: best[accepted]! };
}
