// Choosing the next token, with Transformers' GenerationConfig names and semantics:
// repetition_penalty, then the warpers temperature -> top_k -> top_p -> min_p, then a
// draw from the softmax of what survives (or the argmax when do_sample is false).
// The session's GPU reductions keep the read-back small: greedy reads 4 bytes
// (argmax), top_k <= MAX_GPU_TOP_K reads k candidates; only the other cases read the
// whole logits row.

import type { Session, TopK } from '@webgpu-chat/engine';
import { GenerationConfigError } from './errors.ts';
import type { AssistantTokensSchedule, GenerationConfig } from './types.ts';

/** The largest top_k reduced on the GPU; beyond it the logits row is read back. */
export const MAX_GPU_TOP_K = 256;

/**
 * max_new_tokens when neither the caller nor generation_config.json sets it.
 * Transformers' own default is max_length=20 including the prompt, which cuts every
 * chat reply short; 256 is a reply-sized budget.
 */
export const DEFAULT_MAX_NEW_TOKENS = 256;

/** Transformers' default draft length for assisted generation. */
export const DEFAULT_NUM_ASSISTANT_TOKENS = 20;
/** The engine scores at most 64 positions per forward with allLogits: K drafted + 1. */
export const MAX_NUM_ASSISTANT_TOKENS = 63;
export const ASSISTANT_TOKENS_SCHEDULES: readonly AssistantTokensSchedule[] = ['constant', 'heuristic', 'heuristic_transient', 'measured'];
/** Transformers' default n-gram length prompt lookup matches first (then shorter ones). */
export const DEFAULT_MAX_MATCHING_NGRAM_SIZE = 2;
/** Longest n-gram prompt lookup matches: each step scans the sequence once per length. */
export const MAX_MATCHING_NGRAM_SIZE = 32;
/** Transformers' default: a draft model stops drafting after a token it gave less than this probability. */
export const DEFAULT_ASSISTANT_CONFIDENCE_THRESHOLD = 0.4;

export interface SamplingParams {
  do_sample: boolean;
  temperature: number;
  top_k: number;
  top_p: number;
  min_p: number;
  repetition_penalty: number;
}

export interface ResolvedGenerationConfig extends SamplingParams {
  max_new_tokens: number;
  seed: number | undefined;
  stop: string[];
  eos_token_id: number[];
  num_assistant_tokens: number;
  num_assistant_tokens_schedule: AssistantTokensSchedule;
  /** 0: no prompt lookup. */
  prompt_lookup_num_tokens: number;
  max_matching_ngram_size: number;
  assistant_confidence_threshold: number;
}

/** Transformers' GenerationConfig defaults. */
export const TRANSFORMERS_DEFAULTS: Readonly<SamplingParams> = {
  do_sample: false,
  temperature: 1,
  top_k: 50,
  top_p: 1,
  min_p: 0,
  repetition_penalty: 1,
};

const NUMBER_FIELDS = [
  'temperature',
  'top_k',
  'top_p',
  'min_p',
  'repetition_penalty',
  'max_new_tokens',
  'seed',
  'num_assistant_tokens',
  'prompt_lookup_num_tokens',
  'max_matching_ngram_size',
  'assistant_confidence_threshold',
] as const;

/**
 * The GenerationConfig fields of a generation_config.json object. null means "unset",
 * as Transformers writes it; max_length (prompt included) has no per-prompt meaning here
 * and is ignored.
 */
export function parseGenerationConfigJson(json: unknown): GenerationConfig {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw new GenerationConfigError('generation_config.json must hold a JSON object');
  }
  const src = json as Record<string, unknown>;
  const out: GenerationConfig = {};
  if (typeof src.do_sample === 'boolean') out.do_sample = src.do_sample;
  for (const k of NUMBER_FIELDS) {
    const v = src[k];
    if (typeof v === 'number') out[k] = v;
  }
  const eos = src.eos_token_id;
  if (typeof eos === 'number' || (Array.isArray(eos) && eos.every((x) => typeof x === 'number'))) out.eos_token_id = eos as number | number[];
  if (Array.isArray(src.stop_strings) && src.stop_strings.every((s) => typeof s === 'string')) out.stop = src.stop_strings as string[];
  const schedule = src.num_assistant_tokens_schedule;
  if (ASSISTANT_TOKENS_SCHEDULES.includes(schedule as AssistantTokensSchedule)) out.num_assistant_tokens_schedule = schedule as AssistantTokensSchedule;
  return out;
}

function check(ok: boolean, message: string): void {
  if (!ok) throw new GenerationConfigError(message);
}

/** Throws a GenerationConfigError naming the first invalid flag. */
export function validateGenerationConfig(c: GenerationConfig): void {
  const isInt = (v: number) => Number.isInteger(v);
  if (c.do_sample !== undefined) check(typeof c.do_sample === 'boolean', `do_sample must be a boolean, got ${String(c.do_sample)}`);
  if (c.temperature !== undefined) check(Number.isFinite(c.temperature) && c.temperature >= 0, `temperature must be a finite number >= 0 (0 means greedy), got ${c.temperature}`);
  if (c.top_k !== undefined) check(isInt(c.top_k) && c.top_k >= 0, `top_k must be an integer >= 0 (0 disables it), got ${c.top_k}`);
  if (c.top_p !== undefined) check(c.top_p > 0 && c.top_p <= 1, `top_p must be in (0, 1], got ${c.top_p}`);
  if (c.min_p !== undefined) check(c.min_p >= 0 && c.min_p <= 1, `min_p must be in [0, 1], got ${c.min_p}`);
  if (c.repetition_penalty !== undefined) {
    check(Number.isFinite(c.repetition_penalty) && c.repetition_penalty > 0, `repetition_penalty must be > 0 (1 disables it), got ${c.repetition_penalty}`);
  }
  if (c.max_new_tokens !== undefined) check(isInt(c.max_new_tokens) && c.max_new_tokens >= 0, `max_new_tokens must be an integer >= 0, got ${c.max_new_tokens}`);
  if (c.seed !== undefined) check(isInt(c.seed), `seed must be an integer, got ${c.seed}`);
  if (c.stop !== undefined) check(Array.isArray(c.stop) && c.stop.every((s) => typeof s === 'string' && s.length > 0), 'stop must be a list of non-empty strings');
  if (c.eos_token_id !== undefined) {
    const ids = Array.isArray(c.eos_token_id) ? c.eos_token_id : [c.eos_token_id];
    check(ids.every((x) => isInt(x) && x >= 0), `eos_token_id must be a token id or a list of them, got ${JSON.stringify(c.eos_token_id)}`);
  }
  if (c.num_assistant_tokens !== undefined) {
    const k = c.num_assistant_tokens;
    check(isInt(k) && k >= 1 && k <= MAX_NUM_ASSISTANT_TOKENS, `num_assistant_tokens must be an integer in 1..${MAX_NUM_ASSISTANT_TOKENS}, got ${k}`);
  }
  if (c.prompt_lookup_num_tokens !== undefined) {
    const k = c.prompt_lookup_num_tokens;
    check(isInt(k) && k >= 0 && k <= MAX_NUM_ASSISTANT_TOKENS, `prompt_lookup_num_tokens must be an integer in 0..${MAX_NUM_ASSISTANT_TOKENS} (0 turns prompt lookup off), got ${k}`);
  }
  if (c.max_matching_ngram_size !== undefined) {
    const n = c.max_matching_ngram_size;
    check(isInt(n) && n >= 1 && n <= MAX_MATCHING_NGRAM_SIZE, `max_matching_ngram_size must be an integer in 1..${MAX_MATCHING_NGRAM_SIZE}, got ${n}`);
  }
  if (c.assistant_confidence_threshold !== undefined) {
    const t = c.assistant_confidence_threshold;
    check(Number.isFinite(t) && t >= 0 && t <= 1, `assistant_confidence_threshold must be a number in [0, 1] (0 turns it off), got ${t}`);
  }
  if (c.num_assistant_tokens_schedule !== undefined) {
    check(ASSISTANT_TOKENS_SCHEDULES.includes(c.num_assistant_tokens_schedule), `num_assistant_tokens_schedule must be one of ${ASSISTANT_TOKENS_SCHEDULES.join(', ')}, got ${JSON.stringify(c.num_assistant_tokens_schedule)}`);
  }
}

/**
 * Layers of flags, later ones winning (Transformers' defaults < generation_config.json
 * < the call), validated. eos_token_id lists are merged, not replaced: a caller's extra
 * EOS never disables the model's own.
 */
export function resolveGenerationConfig(...layers: (GenerationConfig | undefined)[]): ResolvedGenerationConfig {
  const out: ResolvedGenerationConfig = {
    ...TRANSFORMERS_DEFAULTS,
    max_new_tokens: DEFAULT_MAX_NEW_TOKENS,
    seed: undefined,
    stop: [],
    eos_token_id: [],
    num_assistant_tokens: DEFAULT_NUM_ASSISTANT_TOKENS,
    num_assistant_tokens_schedule: 'measured',
    prompt_lookup_num_tokens: 0,
    max_matching_ngram_size: DEFAULT_MAX_MATCHING_NGRAM_SIZE,
    assistant_confidence_threshold: DEFAULT_ASSISTANT_CONFIDENCE_THRESHOLD,
  };
  for (const layer of layers) {
    if (!layer) continue;
    validateGenerationConfig(layer);
    for (const k of ['do_sample', ...NUMBER_FIELDS] as const) {
      const v = layer[k];
      if (v !== undefined) (out as unknown as Record<string, unknown>)[k] = v;
    }
    if (layer.stop) out.stop = [...layer.stop];
    if (layer.num_assistant_tokens_schedule !== undefined) out.num_assistant_tokens_schedule = layer.num_assistant_tokens_schedule;
    if (layer.eos_token_id !== undefined) {
      for (const id of Array.isArray(layer.eos_token_id) ? layer.eos_token_id : [layer.eos_token_id]) {
        if (!out.eos_token_id.includes(id)) out.eos_token_id.push(id);
      }
    }
  }
  return out;
}

/** Greedy decoding: do_sample=false, or temperature 0 (the limit of sampling as T -> 0). */
export function isGreedy(p: SamplingParams): boolean {
  return !p.do_sample || p.temperature === 0;
}

/** Mulberry32: a small seeded generator, so the same seed gives the same tokens everywhere. */
export class SeededRandom {
  private state: number;
  constructor(seed: number = Math.floor(Math.random() * 2 ** 32)) {
    this.state = seed >>> 0;
  }
  /** Uniform in [0, 1). */
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
}

/**
 * Transformers' RepetitionPenaltyLogitsProcessor, in place: every token already in the
 * sequence (prompt included) has a positive logit divided by the penalty and a negative
 * one multiplied, so it becomes less likely either way.
 */
export function applyRepetitionPenalty(logits: Float32Array, previousIds: Iterable<number>, penalty: number): void {
  if (penalty === 1) return;
  for (const id of new Set(previousIds)) {
    if (id < 0 || id >= logits.length) continue;
    const l = logits[id]!;
    logits[id] = l < 0 ? l * penalty : l / penalty;
  }
}

/** The tokens that survive the warpers and their probabilities (highest first, summing to 1). */
export interface Distribution {
  ids: Int32Array;
  probs: Float64Array;
}

/**
 * temperature -> top_p -> min_p on candidates sorted by logit, highest first (top_k is
 * already applied by choosing the candidates: everything else has probability 0).
 */
export function warpSorted(ids: Int32Array, logits: ArrayLike<number>, p: SamplingParams): Distribution {
  const n = ids.length;
  if (n === 0) throw new GenerationConfigError('no candidate tokens to sample from');
  const invT = 1 / p.temperature;
  const top = logits[0]!;
  const w = new Float64Array(n);
  let sum = 0;
  for (let i = 0; i < n; i++) sum += w[i] = Math.exp((logits[i]! - top) * invT);
  let keep = n;
  if (p.top_p < 1) {
    // TopPLogitsWarper: drop a token when the mass of it and everything less likely is
    // <= 1 - top_p (an ascending cumulative sum), always keeping the most likely one.
    let tail = 0;
    for (let i = n - 1; i >= 1; i--) {
      tail += w[i]! / sum;
      if (tail > 1 - p.top_p) break;
      keep = i;
    }
  }
  if (p.min_p > 0) {
    // MinPLogitsWarper: drop tokens less likely than min_p times the most likely one.
    let k = 1;
    while (k < keep && w[k]! >= p.min_p) k++;
    keep = k;
  }
  let kept = 0;
  for (let i = 0; i < keep; i++) kept += w[i]!;
  const probs = new Float64Array(keep);
  for (let i = 0; i < keep; i++) probs[i] = w[i]! / kept;
  return { ids: ids.slice(0, keep), probs };
}

/** One draw from a distribution. */
export function draw(d: Distribution, rng: SeededRandom): number {
  let u = rng.next();
  for (let i = 0; i < d.ids.length; i++) {
    u -= d.probs[i]!;
    if (u < 0) return d.ids[i]!;
  }
  return d.ids[d.ids.length - 1]!; // rounding left u a hair above 0
}

export function argmax(logits: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i]! > logits[best]!) best = i;
  return best;
}

/**
 * The distribution a whole logits row gives (repetition penalty already applied):
 * top_k keeps every token tied with the k-th best, as Transformers' TopKLogitsWarper does.
 * Tokens at -Infinity (masked by a constraint) have probability 0 and are left out, so a
 * row masked down to a few tokens sorts those few rather than the whole vocabulary.
 */
export function distributionFromLogits(logits: Float32Array, p: SamplingParams): Distribution {
  const V = logits.length;
  const kth = p.top_k > 0 && p.top_k < V ? Math.max(kthLargest(logits, p.top_k), -Number.MAX_VALUE) : -Number.MAX_VALUE;
  let n = 0;
  for (let i = 0; i < V; i++) if (logits[i]! >= kth) n++;
  const ids = new Int32Array(n);
  n = 0;
  for (let i = 0; i < V; i++) if (logits[i]! >= kth) ids[n++] = i;
  ids.sort((a, b) => logits[b]! - logits[a]! || a - b);
  const sorted = new Float32Array(ids.length);
  for (let i = 0; i < ids.length; i++) sorted[i] = logits[ids[i]!]!;
  return warpSorted(ids, sorted, p);
}

/** The k-th largest value (k >= 1) by quickselect on a copy. */
function kthLargest(values: Float32Array, k: number): number {
  const a = Float32Array.from(values);
  let lo = 0;
  let hi = a.length - 1;
  const target = k - 1; // index in descending order
  while (lo < hi) {
    const pivot = a[(lo + hi) >>> 1]!;
    let i = lo;
    let j = hi;
    while (i <= j) {
      while (a[i]! > pivot) i++;
      while (a[j]! < pivot) j--;
      if (i <= j) {
        const t = a[i]!;
        a[i] = a[j]!;
        a[j] = t;
        i++;
        j--;
      }
    }
    if (target <= j) hi = j;
    else if (target >= i) lo = i;
    else break;
  }
  return a[target]!;
}

/** Next token from a whole logits row: the CPU path, and the reference for the GPU ones. */
export function sampleFromLogits(logits: Float32Array, p: SamplingParams, rng: SeededRandom, previousIds: Iterable<number> = []): number {
  const row = p.repetition_penalty === 1 ? logits : Float32Array.from(logits);
  applyRepetitionPenalty(row, previousIds, p.repetition_penalty);
  if (isGreedy(p)) return argmax(row);
  return draw(distributionFromLogits(row, p), rng);
}

/** Next token from the GPU's top-k candidates (valid when top_k = k and no repetition penalty). */
export function sampleFromTopK(top: TopK, p: SamplingParams, rng: SeededRandom): number {
  return draw(warpSorted(top.ids, top.logits, p), rng);
}

/** How a next token was read from the session: the size of the read-back. */
export type ReadPath = 'argmax' | 'topk' | 'logits';

/** The read-back a token needs under these flags. */
export function readPath(p: SamplingParams, vocabSize: number): ReadPath {
  if (p.repetition_penalty !== 1) return 'logits';
  if (isGreedy(p)) return 'argmax';
  if (p.top_k > 0 && p.top_k <= MAX_GPU_TOP_K && p.top_k < vocabSize) return 'topk';
  return 'logits';
}

/** Where logits rows are read from: a session's last step, or one item of a batch step. */
export type LogitsReader = Pick<Session, 'argmax' | 'topK' | 'logits'>;

/**
 * Changes a logits row in place before sampling (a grammar's mask sets forbidden tokens to
 * -Infinity); `previousIds` is the sequence so far, prompt included.
 */
export type LogitsProcessor = (logits: Float32Array, previousIds: readonly number[]) => void;

/**
 * The next token from row `row` of `reader` (its last by default). A processor needs the
 * whole row; otherwise the read is the cheapest the flags allow (see readPath).
 */
export async function sampleAt(
  reader: LogitsReader,
  p: SamplingParams,
  rng: SeededRandom,
  vocabSize: number,
  row: number | undefined,
  previousIds: readonly number[],
  processor?: LogitsProcessor,
): Promise<number> {
  if (processor) {
    const logits = await reader.logits(row);
    processor(logits, previousIds);
    return sampleFromLogits(logits, p, rng, previousIds);
  }
  switch (readPath(p, vocabSize)) {
    case 'argmax':
      return reader.argmax(row);
    case 'topk':
      return sampleFromTopK(await reader.topK(p.top_k, row), p, rng);
    case 'logits':
      return sampleFromLogits(await reader.logits(row), p, rng, previousIds);
  }
}
