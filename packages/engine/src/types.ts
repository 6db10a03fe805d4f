// The engine's public surface: a loaded model and the sessions (KV caches) it runs.
// It knows nothing about chat: tokens in, logits (or a reduction of them) out.

import type { Gpu } from './device.ts';
import type { WeightDtype } from './dtype.ts';
import type { ModelConfig } from './config.ts';
import type { StepProfiler } from './profiler.ts';

export type DtypeOption = 'auto' | WeightDtype;

export interface LoadProgress {
  /** Bytes of tensor data uploaded so far and in all. */
  loadedBytes: number;
  totalBytes: number;
  loadedTensors: number;
  totalTensors: number;
  /** The file being read. */
  file: string;
}

/** Where a model folder's files come from: a directory on disk, a URL, or files picked in a browser. */
export interface FileSource {
  /** A short description for messages (a path or URL). */
  readonly name: string;
  /** The whole file as text, or undefined when the folder has no such file. */
  text(path: string): Promise<string | undefined>;
  /** A byte range [start, end) of a file. Throws a clear error when the file is missing. */
  range(path: string, start: number, end: number): Promise<Uint8Array>;
  /** The file's size in bytes, or undefined when missing. */
  size(path: string): Promise<number | undefined>;
}

export interface LoadOptions {
  /** 'auto' keeps the checkpoint's dtype (bf16/f16/f32); 'f32' widens; 'f16'/'bf16' narrow. */
  dtype?: DtypeOption;
  gpu?: Gpu;
  /** Tokens of context a sequence may hold, and of KV cache to plan for when checking memory (default: min(max_position_embeddings, 4096)). */
  maxContext?: number;
  /** Tokens of KV cache the caller's batches will hold in all (several sequences), when more than maxContext: the memory check counts them. */
  kvTokens?: number;
  onProgress?: (p: LoadProgress) => void;
  /** Force a kernel variant ('software' | 'gpu') instead of choosing by adapter. */
  variant?: 'software' | 'gpu';
  /**
   * Quantize the decoder's linear layers while loading: 'q8' (int8, one f32 scale per 32 weights)
   * or 'q4' (int4 with an f16 scale and zero point per 32). Embeddings and the LM head keep `dtype`.
   * GPTQ/AWQ checkpoints are read quantized whatever this says (it must then be unset).
   */
  quantize?: 'q8' | 'q4';
  /** Memory the model may use; by default system RAM for a CPU-backed adapter, unchecked otherwise. */
  maxMemoryBytes?: number;
  /**
   * Load only the first n decoder layers (then the final norm and LM head): a cheap
   * draft model for speculative decoding from the target's own folder.
   */
  numLayers?: number;
}

export interface TopK {
  /** Token ids, highest logit first. */
  ids: Int32Array;
  /** Their raw logits (f32). */
  logits: Float32Array;
  /** log(sum(exp(logits))) over the whole vocabulary, so exp(logit - lse) is the exact probability. */
  logSumExp: number;
}

/** One position's reduction from Session.reduceRows. */
export interface RowScore extends TopK {
  /** Id of the largest logit (ties → lowest id). */
  argmax: number;
  /** The raw logit of the target id asked for at this position; NaN when none was asked. */
  targetLogit: number;
}

export interface Session {
  /** Tokens held in the KV cache. */
  readonly length: number;
  readonly maxContext: number;
  /**
   * Runs `tokens` at positions length .. length+n-1 and appends them to the cache.
   * Work is recorded, not awaited: the next read (argmax/topK/logits) submits it.
   * Logits of the last position are kept on the GPU (of every position with allLogits).
   */
  forward(tokens: ArrayLike<number>, opts?: { allLogits?: boolean }): void;
  /**
   * Greedy choice for the last forwarded position, or for position `row` after a forward
   * with allLogits (reduced on the GPU; 4 bytes read back).
   */
  argmax(row?: number): Promise<number>;
  /** The k best tokens of the last position (or of position `row`), reduced on the GPU. */
  topK(k: number, row?: number): Promise<TopK>;
  /** The whole logits row of the last position (or of position `row` after a forward with allLogits). */
  logits(row?: number): Promise<Float32Array>;
  /**
   * Top-k (0 ≤ k ≤ 256; 0 gives only logSumExp and argmax) of several kept positions, with
   * the logit of targets[i] at rows[i], reduced on the GPU and read back together (scoring.ts).
   */
  reduceRows(rows: readonly number[], k: number, targets?: readonly (number | undefined)[]): Promise<RowScore[]>;
  /** When set, every op of later steps is timed per kernel family (bench --profile). */
  profiler?: StepProfiler | undefined;
  /** Drops cached tokens past `length` (to reuse a common prefix, or roll back a draft). */
  truncate(length: number): void;
  dispose(): void;
}

/** A sequence of a Batch: its tokens' KV rows live in the batch's block pool. */
export interface Sequence {
  /** Unique within its batch. */
  readonly id: number;
  /** Tokens held in the KV cache. */
  readonly length: number;
}

export interface BatchOptions {
  /** Sequences alive at once (created and not freed). */
  maxSequences: number;
  /** KV cache blocks in each layer's pool; or give kvTokens (rounded up to whole blocks). */
  kvBlocks?: number;
  kvTokens?: number;
  /** Positions per KV block (default 16). */
  blockSize?: number;
  /** Most tokens in one step, all items together (default 256). */
  maxStepTokens?: number;
  /** Longest sequence in tokens (default: the model's maxContext). */
  maxContext?: number;
  /** Rows of logits one step may keep (default max(64, maxSequences), within the binding limit). */
  maxLogitRows?: number;
  /**
   * Make a sequence's logits bit-identical whether it runs alone or beside others, in steps of any
   * size. On the software variant steps of up to 8 rows (MATVEC_MAX_TOKENS: decode steps over up
   * to 8 sequences) are invariant anyway, one-row or not (the matvec sums each row as it would
   * alone); this option makes longer steps (prefill chunks) run on the matvec too, in groups of
   * 8 rows, instead of the matmul. On the GPU variant one-row steps use the matmul instead of the
   * matvec (several times slower there). Default false.
   */
  batchInvariant?: boolean;
}

/** A step over `tokens` tokens (all rows kept and read) took `ms` milliseconds. */
export interface StepTime {
  tokens: number;
  ms: number;
}

/** One sequence's tokens in a step, appended at positions seq.length... */
export interface StepItem {
  seq: Sequence;
  tokens: ArrayLike<number>;
  /** Which of its rows keep logits; default the step's logitRows. 'none' suits a prefill chunk. */
  logits?: 'last' | 'all' | 'none';
}

/**
 * Several sequences decoded together (continuous batching) over one paged KV cache: a step may
 * mix one decode token of some sequences with a prefill chunk of another. Memory follows the
 * tokens held: each sequence holds ceil(length / blockSize) blocks of a shared pool.
 */
export interface Batch {
  readonly blockSize: number;
  /** Blocks in the pool; freeBlocks + usedBlocks. */
  readonly totalBlocks: number;
  readonly freeBlocks: number;
  readonly usedBlocks: number;
  readonly maxSequences: number;
  readonly maxStepTokens: number;
  /** Rows of logits one step may keep, all items together. */
  readonly maxLogitRows: number;
  readonly maxContext: number;
  createSequence(): Sequence;
  /**
   * Records one forward step over the items (each sequence at most once, at most maxStepTokens
   * tokens in all) and appends their tokens to their caches. Like Session.forward, work is
   * recorded, not awaited. The kept logits rows are numbered in item order; returns each item's
   * first kept row (its others follow), or -1 when it keeps none.
   * Throws KvCacheFullError, before changing anything, when the pool lacks the blocks.
   */
  step(items: readonly StepItem[], opts?: { logitRows?: 'last' | 'all' }): number[];
  /**
   * Runs steps of every size whose kernels are built on first use, so none compiles mid-reply,
   * and returns what a compiled step of each size took. Needs a free sequence slot.
   */
  warmUp(): Promise<StepTime[]>;
  /** Greedy choice of kept row `row` of the last step (4 bytes read back). */
  argmax(row: number): Promise<number>;
  topK(k: number, row: number): Promise<TopK>;
  logits(row: number): Promise<Float32Array>;
  /** As Session.reduceRows, over kept rows of the last step: e.g. every sequence's argmax in one read. */
  reduceRows(rows: readonly number[], k: number, targets?: readonly (number | undefined)[]): Promise<RowScore[]>;
  /** Drops the sequence's tokens past `length`, releasing blocks it no longer needs. */
  truncate(seq: Sequence, length: number): void;
  /**
   * A new sequence holding the first `length` tokens of `seq`, sharing its blocks (no copy);
   * a shared block that holds the end of a sequence is copied when either next writes into it.
   */
  fork(seq: Sequence, length: number): Sequence;
  /** Releases the sequence's blocks at once; the handle is dead afterwards. */
  free(seq: Sequence): void;
  /** When set, every op of later steps is timed per kernel family (bench --profile). */
  profiler?: StepProfiler | undefined;
  dispose(): void;
}

export interface ModelInfo {
  modelType: string;
  dtype: WeightDtype;
  /** Bytes of weights resident on the GPU. */
  weightBytes: number;
  /** How the decoder's linear layers are stored when not in `dtype`: load-time q8/q4, or a GPTQ/AWQ checkpoint's int4. */
  quantization?: { method: 'q8' | 'q4' | 'gptq' | 'awq'; bits: 8 | 4; groupSize: number };
  /** weightBytes by storage format ('bf16', 'q4', 'gptq', ...; 'other': norms, biases, MoE layers). */
  weightBytesByFormat?: Record<string, number>;
  /** Bytes of KV cache per token of context. */
  kvBytesPerToken: number;
  vocabSize: number;
  maxPositionEmbeddings: number;
  /** Tokens of context sessions and batches hold unless told otherwise (LoadOptions.maxContext). */
  maxContext: number;
  /** Bytes of weights a decode step reads (matrices + LM head). */
  bytesPerToken: number;
  config: ModelConfig;
  /** The kernel shapes in use. */
  variant: 'software' | 'gpu';
}

export interface Model {
  readonly gpu: Gpu;
  readonly info: ModelInfo;
  createSession(opts?: { maxContext?: number }): Session;
  createBatch(opts: BatchOptions): Batch;
  dispose(): void;
}
