// How long a draft should be, from what things cost here rather than a fixed schedule.
//
// A verification step over K drafted tokens plus one costs c(K + 1) one-token steps, measured
// on this adapter as the loop runs (StepCosts); a draft model adds d per drafted token (its
// own measured step time over the target's; 0 for prompt lookup). With a per-token acceptance
// rate a, a draft of K yields (1 - a^(K+1)) / (1 - a) tokens on average, so it pays when
//   gain(K) = (1 - a^(K+1)) / (1 - a) / (c(K + 1) + K d)  >  1  (plain decoding's rate).
// The planner drafts the K with the best gain; when no K pays it pauses drafting, then probes
// with one draft to see whether the acceptance rate changed, pausing twice as long each time
// the probe does not pay. A draft model's pause lasts the rest of the generation, and its
// probes come at the start of later ones (skipping 1, 2, 4, ... calls): a probe within a
// generation would first have to catch the draft's cache up on every token decoded since.

/** Weight of a new timing in a step size's running mean: the machine's load drifts. */
const COST_SMOOTHING = 0.3;
/**
 * Before a step size has been timed, each token beyond the first is assumed to cost this
 * fraction of a one-token step: optimistic, so longer steps get tried and then measured.
 */
const PRIOR_EXTRA_TOKEN_COST = 0.1;

/** A timing moves a running mean by at most this factor either way: a stall (GC, another process) is not a new cost. */
const MAX_COST_STEP = 2;

/**
 * A running mean of one kind of step's milliseconds. The first timing is not counted (that
 * step compiles the kernels it uses), and a timing moves the mean by at most MAX_COST_STEP.
 */
export class RunningCost {
  private seen = false;
  private mean: number | undefined;

  get ms(): number | undefined {
    return this.mean;
  }

  /** Starts the mean from a timing known to be of a compiled step (a warm-up's). */
  seed(ms: number): void {
    if (!(Number.isFinite(ms) && ms > 0)) return;
    this.seen = true;
    this.mean = ms;
  }

  observe(ms: number): void {
    if (!(Number.isFinite(ms) && ms > 0)) return;
    if (!this.seen) return void (this.seen = true);
    const old = this.mean;
    this.mean = old === undefined ? ms : old + COST_SMOOTHING * (Math.min(Math.max(ms, old / MAX_COST_STEP), old * MAX_COST_STEP) - old);
  }
}

/** Running means of the loop's decode step times, by the number of tokens a step ran. */
export class StepCosts {
  private readonly costs = new Map<number, RunningCost>();

  /** Records that a decode step over `tokens` tokens took `ms` milliseconds. */
  observe(tokens: number, ms: number): void {
    this.costOf(tokens)?.observe(ms);
  }

  /** Starts each size's mean from a warm-up's timing of a compiled step (Batch.warmUp), so no draft length is explored in a reply. */
  seed(times: readonly { tokens: number; ms: number }[]): void {
    for (const { tokens, ms } of times) this.costOf(tokens)?.seed(ms);
  }

  /** The running cost of steps over `tokens` tokens, made on first use; undefined for a count that is not a step size. */
  private costOf(tokens: number): RunningCost | undefined {
    if (!(Number.isInteger(tokens) && tokens >= 1)) return undefined;
    let c = this.costs.get(tokens);
    if (!c) this.costs.set(tokens, (c = new RunningCost()));
    return c;
  }

  /** Step sizes timed so far and their mean milliseconds, smallest first. */
  get timed(): [number, number][] {
    return [...this.costs.entries()].flatMap(([n, c]): [number, number][] => (c.ms === undefined ? [] : [[n, c.ms]])).sort((a, b) => a[0] - b[0]);
  }

  /**
   * Estimated milliseconds of a step over n tokens: its own mean once timed. An untimed size
   * is estimated optimistically, so that it gets tried and timed: from the nearest smaller
   * timed size along the prior's slope (but no more than the interpolation to the nearest
   * larger one), since costs can jump between sizes (a software adapter runs steps of more
   * than 8 rows on another kernel) and a straight line would hide the cheap sizes below a
   * jump. Undefined before any step was timed.
   */
  estimate(n: number): number | undefined {
    const own = this.costs.get(n)?.ms;
    if (own !== undefined) return own;
    const known = this.timed;
    if (known.length === 0) return undefined;
    const prior = (k: number) => 1 + PRIOR_EXTRA_TOKEN_COST * (k - 1);
    const below = known.filter(([k]) => k < n).at(-1);
    const above = known.find(([k]) => k > n);
    if (!below) return (above![1] * prior(n)) / prior(above![0]);
    const hopeful = (below[1] * prior(n)) / prior(below[0]);
    return above ? Math.min(hopeful, below[1] + ((above[1] - below[1]) * (n - below[0])) / (above[0] - below[0])) : hopeful;
  }

  /** A step over n tokens in one-token steps (the prior's ratio before anything was timed). */
  relative(n: number): number {
    const one = this.estimate(1);
    const many = this.estimate(n);
    return one !== undefined && many !== undefined ? many / one : 1 + PRIOR_EXTRA_TOKEN_COST * (n - 1);
  }
}

/** Expected tokens from a draft of k at per-token acceptance a: the accepted run plus the model's own token. */
export function expectedTokens(k: number, a: number): number {
  return a >= 1 ? k + 1 : (1 - a ** (k + 1)) / (1 - a);
}

/** The acceptance rate the planner starts from, as if it had seen this many drafted tokens. */
const PRIOR_ACCEPTANCE = 0.5;
const PRIOR_TRIALS = 2;
/** Each verification scales the evidence so far by this: acceptance changes along a reply (a copied span, then free text). */
const ACCEPTANCE_DECAY = 0.75;
/** Steps drafting pauses after the first unprofitable estimate; it doubles up to the most. */
const MIN_PAUSE = 4;
const MAX_PAUSE = 64;

/** Acceptance and pause state that can outlive one generation (a draft model's, across calls). */
export interface PlannerState {
  accepted: number;
  trials: number;
}

export interface PlannerOptions {
  /** Acceptance evidence to start from (a draft model's, carried between calls). */
  start?: PlannerState;
  /**
   * A pause lasts the rest of the generation (a draft model's: its probe would have to catch
   * its cache up on every token decoded while paused; the Assistant backs off across calls).
   */
  pauseForGood?: boolean;
  /** Start paused (a call the Assistant's back-off skips). */
  paused?: boolean;
  /** The first draft is a probe: drafted whatever the estimate says. */
  probeFirst?: boolean;
  /**
   * Hears each pause (hopeless: no draft length would pay even if every drafted token were
   * accepted, as with a draft that costs about what the model does), and each probe's outcome.
   */
  onPause?: (hopeless: boolean) => void;
  onProbe?: (paid: boolean) => void;
}

export class DraftLengthPlanner {
  private accepted: number;
  private trials: number;
  private pauseLeft: number;
  private pauseLength = MIN_PAUSE;
  private probing: boolean;

  constructor(
    private readonly costs: StepCosts,
    private readonly opts: PlannerOptions = {},
  ) {
    const start = opts.start ?? { accepted: PRIOR_ACCEPTANCE * PRIOR_TRIALS, trials: PRIOR_TRIALS };
    this.accepted = start.accepted;
    this.trials = start.trials;
    this.pauseLeft = opts.paused ? Infinity : 0;
    this.probing = opts.probeFirst === true;
  }

  /** The per-token acceptance rate drafts have shown lately. */
  get acceptance(): number {
    return this.trials > 0 ? this.accepted / this.trials : PRIOR_ACCEPTANCE;
  }

  get state(): PlannerState {
    return { accepted: this.accepted, trials: this.trials };
  }

  /** Tokens per one-token step's time a draft of k gives, with `draftCost` per drafted token (in one-token steps), at `acceptance`. */
  gain(k: number, draftCost = 0, acceptance = this.acceptance): number {
    return expectedTokens(k, acceptance) / (this.costs.relative(k + 1) + k * draftCost);
  }

  /**
   * The draft length for the next step, 0..maxK (0: decode one token without a draft).
   * `draftCost`: what drafting one token costs, in one-token steps of the model.
   */
  next(maxK: number, draftCost = 0): number {
    if (maxK <= 0) return 0;
    if (this.pauseLeft > 0) {
      if (--this.pauseLeft === 0) this.probing = true;
      return 0;
    }
    let best = 1;
    for (let k = 2; k <= maxK; k++) if (this.gain(k, draftCost) > this.gain(best, draftCost)) best = k;
    if (this.probing || this.gain(best, draftCost) > 1) return best;
    // This step is the pause's first.
    this.pauseLeft = this.opts.pauseForGood ? Infinity : this.pauseLength - 1;
    this.probing = this.pauseLeft === 0;
    this.pauseLength = Math.min(2 * this.pauseLength, MAX_PAUSE);
    this.opts.onPause?.(this.hopeless(maxK, draftCost));
    return 0;
  }

  /** No draft of 1..maxK would beat plain decoding even if every drafted token were accepted. */
  hopeless(maxK: number, draftCost = 0): boolean {
    for (let k = 1; k <= maxK; k++) if (this.gain(k, draftCost, 1) > 1) return false;
    return true;
  }

  /** A verification kept `accepted` of `drafted` tokens. */
  observe(drafted: number, accepted: number, draftCost = 0): void {
    if (drafted <= 0) return;
    this.accepted = ACCEPTANCE_DECAY * this.accepted + accepted;
    // The tokens checked: every accepted one and the first rejected, if any.
    this.trials = ACCEPTANCE_DECAY * this.trials + accepted + (accepted < drafted ? 1 : 0);
    if (this.probing) {
      this.probing = false;
      // A probe that pays ends the back-off; one that does not leaves it for the next pause.
      const paid = this.gain(drafted, draftCost) > 1;
      if (paid) this.pauseLength = MIN_PAUSE;
      this.opts.onProbe?.(paid);
    }
  }
}
