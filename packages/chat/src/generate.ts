// The one generation loop: the pipeline, `chat`, serve's chat and text completions and the
// page all submit requests here. Requests share one engine Batch (continuous batching):
// each step runs the pending token (or the draft to verify) of every decoding sequence and
// a prefill chunk of the prefilling ones, then each sequence reads its own rows with its own
// settings: sampling flags, stop strings, log-probabilities, a logits processor, a draft.
// Requests join between steps and leave when done. A finished sequence stays cached so a
// later prompt that starts the same way (the next turn of a chat, a shared system prompt)
// forks its blocks instead of recomputing them; the least recently used is freed when
// blocks are needed.

import { KvCacheFullError, type Batch, type RowScore, type Sequence, type StepItem } from '@webgpu-chat/engine';
import { StreamingDetokenizer } from './detokenizer.ts';
import { ChatInputError, ContextLengthError } from './errors.ts';
import { readPath, sampleAt, SeededRandom, type LogitsProcessor, type LogitsReader, type ResolvedGenerationConfig } from './sampling.ts';
import { eosIds, StopStringMatcher } from './stopping.ts';
import type { ChatTokenizer } from './tokenizer.ts';
import type { Assistant } from './speculative.ts';
import type { CompiledConstraint } from './constraint/constraint.ts';
import { ConstrainedSource } from './constraint/source.ts';
import { StepCosts } from './draft-length.ts';
import { PromptLookupSource } from './prompt-lookup.ts';
import type { FinishReason, GenerationStats, SpeculativeStats, StreamEvent } from './types.ts';

/** Alternatives per position a request may ask log-probabilities for (OpenAI's and vLLM's cap). */
export const MAX_LOGPROBS = 20;
/** Tokens of the prompt the reply is detokenized after, so a continuation keeps its leading space. */
const CONTINUATION_CONTEXT = 8;

export interface GenerationRequest {
  promptIds: readonly number[];
  config: ResolvedGenerationConfig;
  signal?: AbortSignal | undefined;
  /** Each generated token's log-probability, with this many alternatives (0..MAX_LOGPROBS). */
  logprobs?: number | undefined;
  /** Score the prompt's positions too (echo), with this many alternatives. */
  promptLogprobs?: number | undefined;
  /** Generate through EOS (vLLM's ignore_eos). */
  ignoreEos?: boolean | undefined;
  /** The reply continues the prompt's text (text completions) rather than opening a message. */
  continuesPrompt?: boolean | undefined;
  /** Speculative decoding: this draft proposes tokens the model verifies in one step. */
  assistant?: Assistant | undefined;
  /** The text keeps special tokens (a reply parser whose markers are special tokens reads them). */
  keepSpecialTokens?: boolean | undefined;
  /** Runs on each logits row before sampling (grammar masks); the row is then read back whole. */
  logitsProcessor?: LogitsProcessor | undefined;
  /** The reply must match this constraint (JSON schema, forced text), then end with EOS. */
  constraint?: CompiledConstraint | undefined;
}

/** A position's log-probability and its best alternatives ([id, logprob], best first). */
export interface TokenLogprob {
  logprob: number;
  top: [number, number][];
}

export interface TokenEvent extends StreamEvent {
  /** With GenerationRequest.logprobs, for a sampled token. */
  logprob?: TokenLogprob;
}

export interface GenerationResult {
  /** The reply, stop string cut off, special tokens skipped. */
  text: string;
  /** Every sampled id, the final EOS included. */
  tokenIds: number[];
  /** Each sampled id's log-probability (with GenerationRequest.logprobs). */
  logprobs: TokenLogprob[];
  stats: GenerationStats;
}

/** One generation: its tokens as they come, and how it ended. Leaving the iteration early aborts it. */
export interface Generation extends AsyncIterable<TokenEvent> {
  /** Resolves when the generation ends, however it ends; rejects when it fails. */
  readonly result: Promise<GenerationResult>;
  /** With promptLogprobs: positions 1.. of the prompt, scored; resolves before the first token. */
  readonly promptScores: Promise<TokenLogprob[]>;
  /** It has left the queue for the batch (or ended). */
  readonly admitted: boolean;
}

/** What a step's rows give one sequence: a reader over its kept rows (row i of its item). */
export interface ItemRows extends LogitsReader {
  /** Rows the item kept. */
  readonly count: number;
  /** Reduces several of the item's rows in one read: top-k and the logit of each target (if given). */
  reduce(rows: readonly number[], k: number, targets?: readonly number[]): Promise<RowScore[]>;
}

/**
 * Where a sequence's tokens come from. The loop keeps the prompt in the cache (all of it, or
 * all but its last token when `holdsBackLast`); each step then runs `plan`'s tokens, the
 * first of which is the sequence's last token (not yet cached), and `take` reads their rows.
 */
export interface TokenSource {
  readonly holdsBackLast: boolean;
  /** The tokens the next step runs for `sequence`, and whether every row's logits are kept. */
  plan(sequence: readonly number[], max: number): Promise<{ tokens: number[]; logits: 'last' | 'all' }>;
  /**
   * The new tokens from the rows of the planned tokens (or of the prompt's last row, planned
   * empty), and how many of the planned tokens stay cached.
   */
  take(sequence: readonly number[], planned: readonly number[], rows: ItemRows): Promise<{ tokens: number[]; keep: number }>;
  stats(): SpeculativeStats | undefined;
  /** Frees what the source holds once its request has ended. */
  dispose?(): void;
}

/** Plain decoding: one token per step, read the cheapest way the flags allow. */
class PlainSource implements TokenSource {
  readonly holdsBackLast = false;
  constructor(
    private readonly cfg: ResolvedGenerationConfig,
    private readonly rng: SeededRandom,
    private readonly vocabSize: number,
    private readonly processor: LogitsProcessor | undefined,
  ) {}
  async plan(sequence: readonly number[]): Promise<{ tokens: number[]; logits: 'last' }> {
    return { tokens: [sequence.at(-1)!], logits: 'last' };
  }
  async take(sequence: readonly number[], planned: readonly number[], rows: ItemRows): Promise<{ tokens: number[]; keep: number }> {
    return { tokens: [await sampleAt(rows, this.cfg, this.rng, this.vocabSize, undefined, sequence, this.processor)], keep: planned.length };
  }
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

/** An async queue of one generation's events. */
class Channel<T> {
  private readonly items: T[] = [];
  private waiter: ((r: IteratorResult<T>) => void) | undefined;
  private closed = false;
  push(item: T): void {
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      w({ value: item, done: false });
    } else this.items.push(item);
  }
  close(): void {
    this.closed = true;
    this.waiter?.({ value: undefined, done: true });
    this.waiter = undefined;
  }
  next(): Promise<IteratorResult<T>> {
    if (this.items.length) return Promise.resolve({ value: this.items.shift()!, done: false });
    if (this.closed) return Promise.resolve({ value: undefined, done: true });
    return new Promise((r) => (this.waiter = r));
  }
}

type Phase = 'waiting' | 'prefill' | 'decode' | 'done';

/** A request in the loop: its sequence, its place in the prompt, its output so far. */
class Active {
  phase: Phase = 'waiting';
  seq: Sequence | undefined;
  /** Prompt tokens in the cache. */
  cursor = 0;
  readonly sequence: number[];
  readonly generated: number[] = [];
  readonly logprobs: TokenLogprob[] = [];
  readonly promptScores: TokenLogprob[] = [];
  text = '';
  reused = 0;
  finishReason: FinishReason = 'length';
  readonly t0 = performance.now();
  tFirst = 0;
  tLast = 0;
  /** Tokens the request may generate: max_new_tokens within the context. */
  budget = 0;
  /** Blocks it may hold at its longest. */
  blocksNeeded = 0;
  readonly events = new Channel<TokenEvent>();
  readonly eos: Set<number>;
  readonly detok: StreamingDetokenizer;
  readonly stopper: StopStringMatcher;
  readonly source: TokenSource;
  settle!: (r: GenerationResult) => void;
  fail!: (e: unknown) => void;
  scored!: (s: TokenLogprob[]) => void;
  /** The consumer stopped iterating. */
  left = false;

  constructor(
    readonly req: GenerationRequest,
    tokenizer: ChatTokenizer,
    vocabSize: number,
    costs: StepCosts,
  ) {
    this.sequence = Array.from(req.promptIds);
    const cfg = req.config;
    this.eos = req.ignoreEos ? new Set() : eosIds(cfg.eos_token_id, tokenizer);
    this.detok = new StreamingDetokenizer(tokenizer, { skipSpecialTokens: !req.keepSpecialTokens });
    if (req.continuesPrompt) for (const t of req.promptIds.slice(-CONTINUATION_CONTEXT)) this.detok.push(t);
    this.stopper = new StopStringMatcher(cfg.stop);
    const rng = new SeededRandom(cfg.seed);
    // A constrained reply decodes without prompt lookup: its source masks one row per step.
    this.source = req.assistant
      ? req.assistant.source(cfg, rng, vocabSize, costs)
      : req.constraint
        ? new ConstrainedSource(cfg, rng, req.constraint, this.eos, req.logitsProcessor)
        : cfg.prompt_lookup_num_tokens > 0
          ? new PromptLookupSource(cfg, rng, vocabSize, this.eos, costs, req.logitsProcessor)
          : new PlainSource(cfg, rng, vocabSize, req.logitsProcessor);
  }

  get promptLength(): number {
    return this.req.promptIds.length;
  }

  /** The prompt tokens the prefill runs before decoding takes over. */
  get prefillEnd(): number {
    return this.promptLength - (this.source.holdsBackLast ? 1 : 0);
  }

  get aborted(): boolean {
    return this.left || this.req.signal?.aborted === true;
  }
}

export interface GeneratorOptions {
  /** Sequences decoded together at most. */
  maxParallel: number;
  /** Prompt tokens one step prefills at most, so long prompts never stall the others for long (default: the batch's step size). */
  prefillChunk?: number;
}

/** Counters for /metrics and !status. */
export interface GeneratorStats {
  running: number;
  waiting: number;
  kvBlocksUsed: number;
  kvBlocksFree: number;
  /** Blocks held by finished sequences kept for prefix reuse (freed on demand). */
  kvBlocksCached: number;
  promptTokens: number;
  /** Prompt tokens served from cached blocks instead of recomputed. */
  cachedPromptTokens: number;
  generatedTokens: number;
  steps: number;
}

/** The loop over one Batch. */
export class Generator {
  private readonly waiting: Active[] = [];
  private readonly running: Active[] = [];
  /** Finished sequences kept for prefix reuse, least recently used first. */
  private readonly cache: { seq: Sequence; ids: number[] }[] = [];
  private loop: Promise<void> | undefined;
  private disposed = false;
  private readonly counters = { promptTokens: 0, cachedPromptTokens: 0, generatedTokens: 0, steps: 0 };
  readonly maxParallel: number;
  private readonly prefillChunk: number;
  /** Decode step times by tokens per step, measured as the loop runs: what drafts of each length cost on this adapter. */
  readonly stepCosts = new StepCosts();
  /** Hears each token's latency: from the request to its first token, then the gap since the previous one (metrics). */
  onToken: ((kind: 'first' | 'next', seconds: number) => void) | undefined;

  constructor(
    readonly batch: Batch,
    readonly tokenizer: ChatTokenizer,
    /** Length of the model's logits row. */
    readonly vocabSize: number,
    opts: GeneratorOptions,
  ) {
    if (!(Number.isInteger(opts.maxParallel) && opts.maxParallel >= 1 && opts.maxParallel <= batch.maxSequences)) {
      throw new RangeError(`maxParallel ${opts.maxParallel} must be an integer in 1..${batch.maxSequences} (the batch's sequences)`);
    }
    this.maxParallel = opts.maxParallel;
    this.prefillChunk = Math.min(opts.prefillChunk ?? batch.maxStepTokens, batch.maxStepTokens);
  }

  /**
   * Compiles the kernels of every step size before the first request (Batch.warmUp) and starts
   * the step costs drafts are planned from with what those steps took, so neither a compile
   * nor an untried draft length lands in a reply. For an idle generator (a server's start).
   */
  async warmUp(): Promise<void> {
    if (this.running.length > 0 || this.waiting.length > 0) throw new ChatInputError('warmUp() is for an idle generator: requests are running');
    this.stepCosts.seed(await this.batch.warmUp());
  }

  /** Longest prompt + reply one sequence may hold. */
  get maxContext(): number {
    return this.batch.maxContext;
  }

  get stats(): GeneratorStats {
    const cached = this.cache.reduce((s, c) => s + Math.ceil(c.seq.length / this.batch.blockSize), 0);
    return {
      running: this.running.length,
      waiting: this.waiting.length,
      kvBlocksUsed: this.batch.usedBlocks,
      kvBlocksFree: this.batch.freeBlocks,
      kvBlocksCached: cached,
      ...this.counters,
    };
  }

  /** Requests submitted and not yet in the batch. */
  get waitingCount(): number {
    return this.waiting.length;
  }

  /**
   * Starts a generation. It waits its turn when maxParallel sequences run or the KV cache
   * can't hold it yet; one that could never fit throws ContextLengthError at once.
   */
  generate(req: GenerationRequest): Generation {
    if (this.disposed) throw new ChatInputError('This generator has been disposed');
    const prompt = req.promptIds;
    if (prompt.length === 0) throw new ChatInputError('The prompt is empty: there is nothing to continue from');
    if (prompt.length > this.maxContext) throw new ContextLengthError(prompt.length, this.maxContext);
    for (const t of prompt) if (!(Number.isInteger(t) && t >= 0 && t < this.vocabSize)) throw new ChatInputError(`token id ${t} is outside the vocabulary (0..${this.vocabSize - 1})`);
    for (const k of [req.logprobs, req.promptLogprobs]) {
      if (k !== undefined && !(Number.isInteger(k) && k >= 0 && k <= MAX_LOGPROBS)) throw new ChatInputError(`logprobs ${k} must be an integer in 0..${MAX_LOGPROBS}`);
    }
    if (req.assistant && req.logitsProcessor) throw new ChatInputError('A logits processor cannot be combined with a draft model');
    if (req.constraint) {
      if (req.assistant) throw new ChatInputError('Constrained decoding (response_format, required tool calls) cannot be combined with a draft model');
      if (req.ignoreEos) throw new ChatInputError('Constrained decoding ends its output with EOS, so it cannot be combined with ignore_eos');
      if (req.constraint.vocabSize !== this.vocabSize) throw new ChatInputError(`The constraint was compiled for ${req.constraint.vocabSize} logits, the model has ${this.vocabSize}`);
    }
    if (req.assistant && req.config.prompt_lookup_num_tokens > 0) {
      throw new ChatInputError('prompt_lookup_num_tokens cannot be combined with a draft model (assistant_model): prompt lookup drafts from the sequence itself; use one or the other');
    }
    const a = new Active(req, this.tokenizer, this.vocabSize, this.stepCosts);
    // Sampling token n needs the first n - 1 of them in the cache next to the prompt.
    a.budget = Math.min(req.config.max_new_tokens, this.maxContext - prompt.length + 1);
    // The last token is never run through the model: the cache holds at most prompt + budget - 1.
    const held = prompt.length + Math.max(a.budget - 1, 0);
    const blocks = Math.ceil(held / this.batch.blockSize);
    if (blocks > this.batch.totalBlocks) throw new ContextLengthError(held, this.batch.totalBlocks * this.batch.blockSize);
    // One block more where there is one: a fork copies a shared, partly filled block before writing into it.
    a.blocksNeeded = Math.min(blocks + 1, this.batch.totalBlocks);
    const result = new Promise<GenerationResult>((res, rej) => {
      a.settle = res;
      a.fail = rej;
    });
    const promptScores = new Promise<TokenLogprob[]>((res) => (a.scored = res));
    // A failed generation rejects `result`; callers that only iterate see the error there.
    result.catch(() => {});
    this.waiting.push(a);
    this.kick();
    const leave = () => {
      a.left = true;
      this.kick();
    };
    return {
      result,
      promptScores,
      get admitted() {
        return a.phase !== 'waiting';
      },
      [Symbol.asyncIterator](): AsyncIterator<TokenEvent> {
        return {
          next: async () => {
            const r = await a.events.next();
            if (r.done) await result;
            return r;
          },
          return: async () => {
            leave();
            await result.catch(() => {});
            return { value: undefined, done: true };
          },
        };
      },
    };
  }

  private kick(): void {
    this.loop ??= this.run()
      .catch((e: unknown) => {
        // Not a request's own failure (those end in step): nothing can run now, so fail them all.
        for (const a of [...this.running, ...this.waiting]) this.fail(a, e);
      })
      .finally(() => {
        this.loop = undefined;
        if (this.waiting.length + this.running.length > 0 && !this.disposed) this.kick();
      });
  }

  private async run(): Promise<void> {
    while (!this.disposed && this.waiting.length + this.running.length > 0) {
      for (const a of [...this.waiting, ...this.running]) if (a.aborted) this.finish(a, 'abort');
      this.admit();
      this.retireDone();
      if (this.running.length === 0) {
        // Only waiting requests whose blocks are held by running ones remain: impossible here,
        // since admit() evicts the cache and an empty batch holds every block.
        if (this.waiting.length > 0) throw new Error('generator: a request cannot be admitted into an empty batch');
        return;
      }
      try {
        await this.step();
      } catch (e) {
        // A failed read leaves every sequence's cache in doubt: fail the running requests.
        for (const a of [...this.running]) this.fail(a, e);
      }
    }
  }

  /** Moves waiting requests into the batch while sequences and blocks allow, oldest first. */
  private admit(): void {
    while (this.waiting.length > 0 && this.running.length < this.maxParallel) {
      const a = this.waiting[0]!;
      // A prompt whose start another request is prefilling waits to share those blocks
      // (n > 1 choices, concurrent requests with one system prompt).
      if (this.running.some((r) => r.phase === 'prefill' && commonPrefixLength(r.sequence.slice(0, r.prefillEnd), a.sequence) >= r.cursor + this.batch.blockSize)) return;
      const outstanding = this.running.reduce((s, r) => s + Math.max(0, r.blocksNeeded - Math.ceil((r.seq?.length ?? 0) / this.batch.blockSize)), 0);
      while (this.batch.freeBlocks - outstanding < a.blocksNeeded && this.cache.length > 0) this.batch.free(this.cache.shift()!.seq);
      if (this.batch.freeBlocks - outstanding < a.blocksNeeded) return;
      this.waiting.shift();
      this.start(a);
    }
  }

  /** Gives a request its sequence: a fork of the cached or running one sharing the longest prefix, else a new one. */
  private start(a: Active): void {
    const prompt = a.sequence;
    // The last prompt position is recomputed anyway when its logits are needed; a scored
    // prompt needs every position's logits, so it reuses nothing.
    const usable = a.req.promptLogprobs !== undefined ? 0 : a.prefillEnd - (a.source.holdsBackLast ? 0 : 1);
    let best: { seq: Sequence; length: number; cached: boolean } | undefined;
    const candidates = [...this.cache.map((c) => ({ seq: c.seq, ids: c.ids, cached: true })), ...this.running.flatMap((r) => (r.seq ? [{ seq: r.seq, ids: r.sequence, cached: false }] : []))];
    for (const c of candidates) {
      const n = Math.min(commonPrefixLength(c.ids.slice(0, c.seq.length), prompt), usable);
      if (n > 0 && n > (best?.length ?? 0)) best = { seq: c.seq, length: n, cached: c.cached };
    }
    const cacheIndex = (seq: Sequence) => this.cache.findIndex((c) => c.seq === seq);
    if (best?.cached && best.length === best.seq.length) {
      // The whole cached sequence is reused: take it over rather than fork it.
      a.seq = best.seq;
      this.cache.splice(cacheIndex(best.seq), 1);
    } else {
      // Every live sequence takes one of the batch's slots: cached ones give theirs up, least recently used first.
      while (this.running.length + this.cache.length >= this.batch.maxSequences) {
        const i = this.cache.findIndex((c) => c.seq !== best?.seq);
        if (i < 0) break;
        this.batch.free(this.cache.splice(i, 1)[0]!.seq);
      }
      a.seq = best ? this.batch.fork(best.seq, best.length) : this.batch.createSequence();
      // A cached sequence just used moves to the most recently used end.
      if (best?.cached) this.cache.push(...this.cache.splice(cacheIndex(best.seq), 1));
    }
    a.reused = a.cursor = best?.length ?? 0;
    this.counters.promptTokens += a.promptLength;
    this.counters.cachedPromptTokens += a.reused;
    this.running.push(a);
    if (a.cursor < a.prefillEnd) a.phase = 'prefill';
    else this.enterDecode(a);
  }

  /** One forward over every running sequence, then each takes its tokens. */
  private async step(): Promise<void> {
    const items: { a: Active; tokens: number[]; logits: 'last' | 'all' | 'none'; prefill: boolean }[] = [];
    // Tokens and kept logits rows left in this step.
    let room = this.batch.maxStepTokens;
    let rows = this.batch.maxLogitRows;
    for (const a of this.running.filter((r) => r.phase === 'decode')) {
      // A sequence whose draft would not fit this step waits for the next.
      if (room <= 0 || rows <= 0) break;
      const plan = await a.source.plan(a.sequence, Math.min(a.budget - a.generated.length, room, rows));
      items.push({ a, tokens: plan.tokens, logits: plan.logits, prefill: false });
      room -= plan.tokens.length;
      rows -= plan.logits === 'all' ? plan.tokens.length : 1;
    }
    for (const a of this.running.filter((r) => r.phase === 'prefill')) {
      if (room <= 0) break;
      const scoring = a.req.promptLogprobs !== undefined;
      // A scored prompt keeps every row; an unscored one at most its last.
      const n = Math.min(a.prefillEnd - a.cursor, this.prefillChunk, room, scoring ? rows : Infinity);
      if (n <= 0 || rows <= 0) continue;
      const last = a.cursor + n === a.prefillEnd;
      const logits = scoring ? 'all' : last && !a.source.holdsBackLast ? 'last' : 'none';
      items.push({ a, tokens: a.sequence.slice(a.cursor, a.cursor + n), logits, prefill: true });
      room -= n;
      rows -= logits === 'all' ? n : logits === 'last' ? 1 : 0;
    }
    if (items.length === 0) return this.retireDone();
    const t0 = performance.now();
    const firstRows = this.runStep(items.map((i) => ({ seq: i.a.seq!, tokens: i.tokens, logits: i.logits })));
    this.counters.steps++;
    // Greedy rows that need nothing but their argmax come back in one read.
    const greedy = items.flatMap((item, i) => (item.logits === 'last' && this.argmaxOnly(item.a) ? [firstRows[i]!] : []));
    const argmaxes = new Map<number, number>();
    if (greedy.length > 1) (await this.batch.reduceRows(greedy, 0)).forEach((r, i) => argmaxes.set(greedy[i]!, r.argmax));
    for (const [i, item] of items.entries()) {
      const a = item.a;
      const rows = this.itemRows(firstRows[i]!, item.tokens.length, item.logits, argmaxes);
      if (item.prefill) {
        if (a.req.promptLogprobs !== undefined) await this.scorePrompt(a, item.tokens.length, rows);
        a.cursor += item.tokens.length;
        if (a.cursor < a.prefillEnd) continue;
        this.enterDecode(a);
        if (a.source.holdsBackLast || a.phase === 'done') continue;
        // The prompt's last row gives the first token.
        const first = await a.source.take(a.sequence, [], rows);
        this.accept(a, first.tokens, await this.tokenLogprobs(a, first.tokens, rows, [rows.count - 1]));
        continue;
      }
      const base = a.seq!.length - item.tokens.length;
      const taken = await a.source.take(a.sequence, item.tokens, rows);
      if (taken.keep < item.tokens.length) this.batch.truncate(a.seq!, base + taken.keep);
      // Row i of the step predicted the i-th new token (a draft's accepted ones, then the model's own).
      this.accept(a, taken.tokens, await this.tokenLogprobs(a, taken.tokens, rows, taken.tokens.map((_, i) => i)));
    }
    // Decode steps alone: a prefill chunk would make the step's cost about the prompt.
    if (items.every((i) => !i.prefill)) this.stepCosts.observe(items.reduce((n, i) => n + i.tokens.length, 0), performance.now() - t0);
    this.retireDone();
  }

  private retireDone(): void {
    for (const a of [...this.running]) if (a.phase === 'done') this.retire(a);
  }

  /** Runs a step; when copies on write find the pool short, frees cached sequences and tries again. */
  private runStep(items: StepItem[]): number[] {
    for (;;) {
      try {
        return this.batch.step(items);
      } catch (e) {
        if (!(e instanceof KvCacheFullError) || this.cache.length === 0) throw e;
        this.batch.free(this.cache.shift()!.seq);
      }
    }
  }

  private enterDecode(a: Active): void {
    a.phase = 'decode';
    a.scored(a.promptScores);
    // max_new_tokens 0: the prompt alone was asked for (scored, with echo).
    if (a.budget === 0) {
      a.finishReason = 'length';
      a.phase = 'done';
    }
  }

  /** The chosen tokens' log-probabilities from the rows that predicted them, when the request asks. */
  private async tokenLogprobs(a: Active, tokens: readonly number[], rows: ItemRows, at: readonly number[]): Promise<TokenLogprob[] | undefined> {
    const k = a.req.logprobs;
    if (k === undefined || tokens.length === 0) return undefined;
    return (await rows.reduce(at, k, tokens)).map(toLogprob);
  }

  /** Plain greedy decoding without log-probabilities or a processor: the row's argmax is all it reads. */
  private argmaxOnly(a: Active): boolean {
    const r = a.req;
    return !r.assistant && !r.logitsProcessor && !r.constraint && r.logprobs === undefined && readPath(r.config, this.vocabSize) === 'argmax';
  }

  /** A reader over an item's kept rows, numbered from 0 (its last row by default); `argmaxes` holds rows already reduced. */
  private itemRows(first: number, tokens: number, logits: 'last' | 'all' | 'none', argmaxes: ReadonlyMap<number, number>): ItemRows {
    const count = logits === 'all' ? tokens : logits === 'last' ? 1 : 0;
    const at = (row: number | undefined) => {
      const r = row ?? count - 1;
      if (!(count > 0 && r >= 0 && r < count)) throw new RangeError(`row ${row} of an item that kept ${count}`);
      return first + r;
    };
    return {
      count,
      argmax: (row) => {
        const known = argmaxes.get(at(row));
        return known !== undefined ? Promise.resolve(known) : this.batch.argmax(at(row));
      },
      topK: (k, row) => this.batch.topK(k, at(row)),
      logits: (row) => this.batch.logits(at(row)),
      reduce: (rows, k, targets) => this.batch.reduceRows(rows.map(at), k, targets),
    };
  }

  /** Log-probabilities of the prompt tokens after a scored prefill chunk (position 0 has none). */
  private async scorePrompt(a: Active, n: number, rows: ItemRows): Promise<void> {
    const start = a.cursor;
    // Row i predicts prompt[start + i + 1]; the prompt's last row predicts the reply.
    const m = Math.min(n, a.promptLength - 1 - start);
    if (m <= 0) return;
    const k = a.req.promptLogprobs!;
    const scores = await rows.reduce(Array.from({ length: m }, (_, i) => i), k, Array.from({ length: m }, (_, i) => a.sequence[start + i + 1]!));
    for (const s of scores) a.promptScores.push(toLogprob(s));
  }

  /** Appends sampled tokens, streams their text, and ends the request on EOS, a stop string, the budget or an abort. */
  private accept(a: Active, tokens: readonly number[], logprobs: TokenLogprob[] | undefined): void {
    for (const [i, id] of tokens.entries()) {
      const logprob = logprobs?.[i];
      if (logprob) a.logprobs.push(logprob);
      const now = performance.now();
      if (a.generated.length === 0) a.tFirst = now;
      this.onToken?.(a.generated.length === 0 ? 'first' : 'next', (now - (a.generated.length === 0 ? a.t0 : a.tLast)) / 1000);
      a.tLast = now;
      a.generated.push(id);
      a.sequence.push(id);
      this.counters.generatedTokens++;
      const done = (reason: FinishReason) => {
        a.finishReason = reason;
        a.phase = 'done';
      };
      if (a.eos.has(id)) {
        a.events.push({ delta: '', tokenId: id, ...(logprob ? { logprob } : {}) });
        return done('stop');
      }
      const r = a.stopper.push(a.detok.push(id));
      a.text += r.text;
      a.events.push({ delta: r.text, tokenId: id, ...(logprob ? { logprob } : {}) });
      if (r.stopped) return done('stop');
      if (a.generated.length >= a.budget) return done('length');
      if (a.aborted) return done('abort');
    }
  }

  private finish(a: Active, reason: FinishReason): void {
    a.finishReason = reason;
    a.phase = 'done';
    this.retire(a);
  }

  /** Takes a request out of the queue or the batch. */
  private remove(a: Active): void {
    const i = this.running.indexOf(a);
    if (i >= 0) this.running.splice(i, 1);
    const w = this.waiting.indexOf(a);
    if (w >= 0) this.waiting.splice(w, 1);
  }

  /** Ends a request: flushes held-back text (an aborted reply's too), keeps its sequence cached, resolves its result. */
  private retire(a: Active): void {
    this.remove(a);
    a.source.dispose?.();
    if (!a.stopper.stopped) {
      const tail = a.stopper.push(a.detok.flush()).text + (a.stopper.stopped ? '' : a.stopper.flush());
      if (tail) {
        a.text += tail;
        a.events.push({ delta: tail, tokenId: null });
      }
    }
    if (a.seq) {
      // Keep the prompt and every token but the last (the one never run through the model).
      const kept = Math.min(a.seq.length, a.promptLength + Math.max(a.generated.length - 1, 0));
      this.batch.truncate(a.seq, kept);
      if (kept > 0) this.cache.push({ seq: a.seq, ids: a.sequence.slice(0, kept) });
      else this.batch.free(a.seq);
      a.seq = undefined;
    }
    a.scored(a.promptScores);
    a.events.close();
    a.settle({ text: a.text, tokenIds: a.generated, logprobs: a.logprobs, stats: this.statsOf(a) });
  }

  private fail(a: Active, e: unknown): void {
    this.remove(a);
    a.source.dispose?.();
    if (a.seq) this.batch.free(a.seq);
    a.seq = undefined;
    a.phase = 'done';
    a.scored(a.promptScores);
    a.events.close();
    a.fail(e);
  }

  private statsOf(a: Active): GenerationStats {
    const tEnd = performance.now();
    const n = a.generated.length;
    const tFirst = n > 0 ? a.tFirst : tEnd;
    const prefillSec = (tFirst - a.t0) / 1000;
    const decodeSec = (tEnd - tFirst) / 1000;
    const stats: GenerationStats = {
      promptTokens: a.promptLength,
      reusedTokens: a.reused,
      newTokens: n,
      timeToFirstTokenMs: n > 0 ? tFirst - a.t0 : 0,
      prefillTokensPerSecond: n > 0 && prefillSec > 0 ? (a.promptLength - a.reused) / prefillSec : 0,
      decodeTokensPerSecond: n > 1 && decodeSec > 0 ? (n - 1) / decodeSec : 0,
      totalMs: tEnd - a.t0,
      finishReason: a.finishReason,
    };
    const spec = a.source.stats();
    if (spec) stats.speculative = spec;
    return stats;
  }

  /** Frees every sequence; running generations end as aborted. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const a of [...this.waiting, ...this.running]) this.finish(a, 'abort');
    for (const c of this.cache) this.batch.free(c.seq);
    this.cache.length = 0;
  }
}

function toLogprob(s: RowScore): TokenLogprob {
  return { logprob: s.targetLogit - s.logSumExp, top: Array.from(s.ids, (id, j): [number, number] => [id, s.logits[j]! - s.logSumExp]) };
}
