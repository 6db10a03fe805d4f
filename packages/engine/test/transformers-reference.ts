// The independent reference for "exact against Transformers" parity tests: builds tiny
// random Hugging Face model folders and runs them in PyTorch through the scripts in
// scripts/reference/, using the project's .venv (scripts/setup-python.sh). Dev-only:
// tests that use it must skip when pythonAvailable() says no, never fail.

import { execFile, execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
// REFERENCE_PYTHON points at another interpreter (or at none, to see the tests skip).
const PYTHON = process.env.REFERENCE_PYTHON ?? path.join(ROOT, '.venv', 'bin', 'python');
const SCRIPTS = path.join(ROOT, 'scripts', 'reference');
const MAKE_MODEL = path.join(SCRIPTS, 'make_model.py');
const LOGITS = path.join(SCRIPTS, 'logits.py');

/** Importing torch alone takes seconds on 2 cores; a tiny model run stays well under a minute. */
const PYTHON_TIMEOUT_MS = 300_000;
/** Marks a finished model folder with the key of the options (and script) that made it. */
const KEY_FILE = '.reference-key';

// Offline: the Hub is unreachable here and Transformers would otherwise wait on it.
// One thread: results do not depend on the machine, and parallel test files share 2 cores.
const PYTHON_ENV: NodeJS.ProcessEnv = {
  ...process.env,
  HF_HUB_OFFLINE: '1',
  TRANSFORMERS_OFFLINE: '1',
  HF_HUB_DISABLE_TELEMETRY: '1',
  OMP_NUM_THREADS: '1',
  TOKENIZERS_PARALLELISM: 'false',
};

export class TransformersReferenceError extends Error {
  override name = 'TransformersReferenceError';
}

export type ReferenceFamily =
  | 'llama' | 'qwen2' | 'qwen3' | 'mistral'
  | 'mixtral' | 'qwen2_moe' | 'qwen3_moe' | 'gpt_oss'
  | 'phi3' | 'gemma2' | 'gemma3_text' | 'smollm3' | 'granite' | 'olmo2';

export type ReferenceDtype = 'float32' | 'bfloat16' | 'float16';

export type PythonAvailability = { ok: true } | { ok: false; reason: string };

let availability: PythonAvailability | undefined;

/** Whether .venv/bin/python can import torch and transformers; checked once per process. */
export function pythonAvailable(): PythonAvailability {
  if (availability) return availability;
  if (!existsSync(PYTHON)) {
    availability = { ok: false, reason: `${PYTHON} not found: run scripts/setup-python.sh to enable Transformers reference tests` };
    return availability;
  }
  try {
    execFileSync(PYTHON, ['-c', 'import torch, transformers, safetensors'], {
      env: PYTHON_ENV, timeout: PYTHON_TIMEOUT_MS, stdio: ['ignore', 'pipe', 'pipe'],
    });
    availability = { ok: true };
  } catch (e) {
    const stderr = (e as { stderr?: Buffer }).stderr?.toString().trim().split('\n').at(-1);
    availability = { ok: false, reason: `${PYTHON} cannot import torch/transformers (${stderr || String(e)}): run scripts/setup-python.sh` };
  }
  return availability;
}

function runPython(args: string[]): Promise<string> {
  const ok = pythonAvailable();
  if (!ok.ok) return Promise.reject(new TransformersReferenceError(ok.reason));
  return new Promise((resolve, reject) => {
    execFile(PYTHON, args, { env: PYTHON_ENV, timeout: PYTHON_TIMEOUT_MS, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      if (err) {
        const why = err.killed ? `killed after ${PYTHON_TIMEOUT_MS / 1000} s` : `exit code ${String(err.code)}`;
        reject(new TransformersReferenceError(`python ${args.map((a) => JSON.stringify(a)).join(' ')} failed (${why}):\n${stderr.trim()}`));
      } else {
        resolve(stdout);
      }
    });
  });
}

/** JSON with object keys sorted at every level, so equal options hash equally. */
function stableJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(stableJson).join(',')}]`;
  if (v !== null && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    return `{${Object.keys(o).sort().map((k) => `${JSON.stringify(k)}:${stableJson(o[k])}`).join(',')}}`;
  }
  return JSON.stringify(v);
}

export interface ReferenceModelOptions {
  family: ReferenceFamily;
  seed: number;
  /** Dtype the weights are saved in (config.json's "dtype" says the same). */
  dtype: ReferenceDtype;
  /** Config fields overriding make_model.py's small defaults, e.g. { tie_word_embeddings: true }. */
  config?: Record<string, unknown>;
  /** e.g. '40KB': split the weights into shards listed by model.safetensors.index.json. */
  maxShardSize?: string;
  /** Where to put the folder; default: a folder under os.tmpdir() named by the options' hash. */
  dir?: string;
}

const models = new Map<string, Promise<string>>();

/**
 * Builds (or reuses) a tiny random Hugging Face model folder and returns its path.
 * Folders are keyed by the options and make_model.py's source, so a folder is reused
 * within a process and across runs only while it would come out the same.
 */
export function makeReferenceModel(opts: ReferenceModelOptions): Promise<string> {
  if (!Number.isSafeInteger(opts.seed) || opts.seed < 0) {
    return Promise.reject(new TransformersReferenceError(`seed must be a non-negative integer, got ${opts.seed}`));
  }
  const key = createHash('sha256')
    .update(stableJson({ family: opts.family, seed: opts.seed, dtype: opts.dtype, config: opts.config ?? {}, maxShardSize: opts.maxShardSize ?? null }))
    .update(readFileSync(MAKE_MODEL))
    .digest('hex');
  const dir = path.resolve(opts.dir ?? path.join(os.tmpdir(), `webgpu-chat-ref-${opts.family}-${key.slice(0, 16)}`));
  const cacheKey = `${dir}\0${key}`;
  let made = models.get(cacheKey);
  if (!made) {
    made = buildModel(opts, key, dir, opts.dir !== undefined);
    models.set(cacheKey, made);
    made.catch(() => models.delete(cacheKey));
  }
  return made;
}

function folderKey(dir: string): string | undefined {
  try {
    return readFileSync(path.join(dir, KEY_FILE), 'utf8');
  } catch {
    return undefined;
  }
}

async function buildModel(opts: ReferenceModelOptions, key: string, dir: string, userDir: boolean): Promise<string> {
  if (folderKey(dir) === key) return dir;
  if (existsSync(dir)) {
    // Never delete a folder the caller named; our own hashed folders are only stale
    // when a previous build died half-way.
    if (userDir) throw new TransformersReferenceError(`${dir} exists but was not made by makeReferenceModel with these options; remove it or pick another dir`);
    await rm(dir, { recursive: true, force: true });
  }
  // Build beside the target and rename, so a concurrent process never sees half a folder.
  const partial = `${dir}.partial-${process.pid}-${randomBytes(4).toString('hex')}`;
  const args = [MAKE_MODEL, '--family', opts.family, '--out', partial, '--seed', String(opts.seed), '--dtype', opts.dtype,
    '--config-json', JSON.stringify(opts.config ?? {})];
  if (opts.maxShardSize !== undefined) args.push('--max-shard-size', opts.maxShardSize);
  try {
    await runPython(args);
    await writeFile(path.join(partial, KEY_FILE), key);
    await rename(partial, dir);
  } catch (e) {
    await rm(partial, { recursive: true, force: true });
    if (folderKey(dir) === key) return dir; // another process finished the same folder first
    throw e;
  }
  return dir;
}

export interface ReferenceLogitsOptions {
  /** Also decode this many tokens greedily (argmax over the KV cache, no eos stop). */
  greedy?: number;
  /** Dtype to run the model in (default float32, whatever the folder stores). */
  dtype?: ReferenceDtype;
  /** How many top entries per position to return in topIds/topLogprobs (default 20). */
  topk?: number;
}

export interface ReferenceLogits {
  /** Prompt length T. */
  positions: number;
  vocab: number;
  /** [T][k] ids by descending log-probability, and their log-probabilities. */
  topIds: number[][];
  topLogprobs: number[][];
  /** [T] argmax of each position's logits. */
  argmax: number[];
  /** [T * V] log_softmax of the logits, computed in float32, row per position. */
  logprobs: Float32Array;
  /** Greedy continuation of the prompt, when asked for. */
  greedy?: number[];
}

interface LogitsJson {
  vocab: number;
  positions: number;
  top_ids: number[][];
  top_logprobs: number[][];
  argmax: number[];
  logprobs_file: string;
  greedy?: number[];
}

/** Runs the model folder in Transformers (eager attention) on one token sequence. */
export async function referenceLogits(dir: string, tokens: number[], opts: ReferenceLogitsOptions = {}): Promise<ReferenceLogits> {
  if (tokens.length === 0 || !tokens.every((t) => Number.isSafeInteger(t) && t >= 0)) {
    throw new TransformersReferenceError('tokens must be a non-empty list of non-negative integer ids');
  }
  const tmp = await mkdtemp(path.join(os.tmpdir(), 'webgpu-chat-logits-'));
  try {
    const tokensFile = path.join(tmp, 'tokens.json');
    const outFile = path.join(tmp, 'out.json');
    await writeFile(tokensFile, JSON.stringify(tokens));
    const args = [LOGITS, '--model', dir, '--tokens-json', tokensFile, '--out', outFile,
      '--dtype', opts.dtype ?? 'float32', '--topk', String(opts.topk ?? 20)];
    if (opts.greedy !== undefined) args.push('--greedy', String(opts.greedy));
    await runPython(args);
    const out = JSON.parse(await readFile(outFile, 'utf8')) as LogitsJson;
    const bytes = await readFile(out.logprobs_file);
    if (bytes.byteLength !== out.positions * out.vocab * 4) {
      throw new TransformersReferenceError(`${out.logprobs_file} holds ${bytes.byteLength} bytes, expected ${out.positions} x ${out.vocab} float32`);
    }
    // Copy into a fresh, aligned buffer (Node may pool small reads at odd offsets);
    // the file is little-endian, as is every platform we run on.
    const logprobs = new Float32Array(out.positions * out.vocab);
    new Uint8Array(logprobs.buffer).set(bytes);
    const result: ReferenceLogits = {
      positions: out.positions, vocab: out.vocab, topIds: out.top_ids, topLogprobs: out.top_logprobs, argmax: out.argmax, logprobs,
    };
    if (out.greedy) result.greedy = out.greedy;
    return result;
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

export interface CompareOptions {
  /**
   * Positions where the reference's best and second-best log-probabilities are closer
   * than this are left out of top1Agreement and firstMismatch: there a different top-1
   * is rounding, not a bug. Default 0 (every position counts).
   */
  minMargin?: number;
}

export interface LogprobComparison {
  /** Fraction of counted positions whose argmax equals the reference's (NaN when none are counted). */
  top1Agreement: number;
  /** Positions counted for top1Agreement (see CompareOptions.minMargin). */
  compared: number;
  /** Max |ours - ref| of log-probabilities over each position's reference top-20 ids. */
  maxAbsErrTop20: number;
  /** KL(ref || ours) in nats, mean and max over positions. */
  meanKL: number;
  maxKL: number;
  /** First counted position whose argmax differs from the reference's, or null. */
  firstMismatch: number | null;
}

/** log_softmax of one row in float64. */
function logSoftmax64(row: ArrayLike<number>, start: number, n: number): Float64Array {
  let max = -Infinity;
  for (let i = 0; i < n; i++) max = Math.max(max, row[start + i]!);
  let sum = 0;
  for (let i = 0; i < n; i++) sum += Math.exp(row[start + i]! - max);
  const lse = max + Math.log(sum);
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = row[start + i]! - lse;
  return out;
}

/** Ids of the k largest entries, largest first (first index wins ties, like argmax). */
function topIndices(row: Float64Array, k: number): number[] {
  const top: number[] = [];
  for (let i = 0; i < row.length; i++) {
    if (top.length === k && row[i]! <= row[top[k - 1]!]!) continue;
    let j = Math.min(top.length, k - 1);
    while (j > 0 && row[top[j - 1]!]! < row[i]!) j--;
    top.splice(j, 0, i);
    if (top.length > k) top.pop();
  }
  return top;
}

/**
 * Compares our output for the reference's prompt with the reference.
 * `ours` is [T * V], one row per position, raw logits or log-probabilities: either
 * works, since every row (ours and the reference's) is put through log_softmax in
 * float64 first, which leaves log-probabilities unchanged.
 */
export function compareLogprobs(ours: ArrayLike<number>, ref: ReferenceLogits, opts: CompareOptions = {}): LogprobComparison {
  const { positions: T, vocab: V } = ref;
  if (ours.length !== T * V) {
    throw new TransformersReferenceError(`ours has ${ours.length} values, expected ${T} positions x ${V} vocab = ${T * V}`);
  }
  const minMargin = opts.minMargin ?? 0;
  const k = Math.min(20, V);
  let agree = 0;
  let compared = 0;
  let maxAbs = 0;
  let klSum = 0;
  let maxKL = 0;
  let firstMismatch: number | null = null;
  for (let t = 0; t < T; t++) {
    const o = logSoftmax64(ours, t * V, V);
    const r = logSoftmax64(ref.logprobs, t * V, V);
    // Math.max propagates NaN, so a NaN anywhere in ours surfaces in every error measure.
    let kl = 0;
    for (let i = 0; i < V; i++) {
      const p = Math.exp(r[i]!);
      if (p > 0) kl += p * (r[i]! - o[i]!);
    }
    klSum += kl;
    maxKL = Math.max(maxKL, kl);
    const refTop = topIndices(r, k);
    for (const i of refTop) maxAbs = Math.max(maxAbs, Math.abs(o[i]! - r[i]!));
    const margin = V > 1 ? r[refTop[0]!]! - r[refTop[1]!]! : Infinity;
    if (margin < minMargin) continue;
    compared++;
    if (topIndices(o, 1)[0] === refTop[0]) agree++;
    else if (firstMismatch === null) firstMismatch = t;
  }
  return { top1Agreement: compared ? agree / compared : NaN, compared, maxAbsErrTop20: maxAbs, meanKL: klSum / T, maxKL, firstMismatch };
}
