// Several sequences over one decoder and one paged KV cache (continuous batching). The host
// keeps each sequence's block table and the pool's reference counts (kv-blocks.ts); a step
// packs the items' tokens one run per sequence, takes the blocks they newly need, copies a
// shared block before writing into it, and records one command buffer. Reads (argmax, topK,
// logits, reduceRows) submit it together with their reduction, as a Session's do.

import type { ModelConfig } from './config.ts';
import { KvBlocks } from './kv-blocks.ts';
import type { OpContext } from './ops/context.ts';
import { MATVEC_MAX_TOKENS } from './ops/linear.ts';
import { createLogitsReducer, MAX_TOP_K, parseRows, rowResultWords, type LogitsReducer, type ReducedRow } from './ops/logits.ts';
import type { StepProfiler } from './profiler.ts';
import { Decoder } from './transformer.ts';
import type { Batch, BatchOptions, RowScore, Sequence, StepItem, StepTime, TopK } from './types.ts';
import type { DecoderWeights } from './weights.ts';

/** The pool has fewer free blocks than a step needs; nothing was changed, so the caller may free or preempt a sequence and retry. */
export class KvCacheFullError extends Error {
  override name = 'KvCacheFullError';
  constructor(
    readonly needed: number,
    readonly free: number,
  ) {
    super(`the KV cache needs ${needed} more blocks for this step but has ${free} free: free or preempt a sequence, or create the batch with more kvBlocks`);
  }
}

export class ContextOverflowError extends Error {
  override name = 'ContextOverflowError';
}

export class BatchError extends Error {
  override name = 'BatchError';
}

/** Tokens one prefill step runs: bounds activation memory; longer prompts take several steps. */
export const MAX_STEP_TOKENS = 256;
/** Rows of logits kept per step when every position's logits are asked for (scoring, drafts). */
export const MAX_LOGIT_ROWS = 64;
const DEFAULT_BLOCK_SIZE = 16;

class Seq implements Sequence {
  length = 0;
  /** Block ids covering positions 0 .. length - 1: exactly ceil(length / blockSize) of them. */
  blocks: number[] = [];
  alive = true;
  constructor(
    readonly id: number,
    readonly owner: DecoderBatch,
  ) {}
}

export class DecoderBatch implements Batch {
  readonly blockSize: number;
  readonly maxSequences: number;
  readonly maxStepTokens: number;
  readonly maxContext: number;
  private readonly pool: KvBlocks;
  private readonly decoder: Decoder;
  private readonly reducer: LogitsReducer;
  private readonly live = new Set<Seq>();
  private nextId = 0;
  private pending: GPUCommandEncoder | undefined;
  /** Rows of logits the last step kept. */
  private keptRows = 0;
  private disposed = false;
  profiler: StepProfiler | undefined;

  constructor(
    private readonly ctx: OpContext,
    private readonly c: ModelConfig,
    weights: DecoderWeights,
    opts: BatchOptions & { maxContext: number },
    private readonly onDispose: () => void,
  ) {
    const B = opts.blockSize ?? DEFAULT_BLOCK_SIZE;
    const int = (v: number, what: string) => {
      if (!(Number.isInteger(v) && v >= 1)) throw new BatchError(`${what} ${v} must be a positive integer`);
      return v;
    };
    this.blockSize = int(B, 'blockSize');
    this.maxSequences = int(opts.maxSequences, 'maxSequences');
    this.maxStepTokens = int(opts.maxStepTokens ?? MAX_STEP_TOKENS, 'maxStepTokens');
    this.maxContext = int(Math.min(opts.maxContext, c.max_position_embeddings), 'maxContext');
    if (opts.kvBlocks !== undefined && opts.kvTokens !== undefined) throw new BatchError('give kvBlocks or kvTokens, not both');
    const blocks = int(opts.kvBlocks ?? Math.ceil((opts.kvTokens ?? this.maxContext) / B), 'kvBlocks');
    const rowBytes = c.vocab_size * 4;
    const fitRows = Math.floor(Math.min(ctx.limits.maxStorageBufferBindingSize, ctx.limits.maxBufferSize) / rowBytes);
    const maxLogitRows = int(opts.maxLogitRows ?? Math.min(Math.max(MAX_LOGIT_ROWS, this.maxSequences), fitRows), 'maxLogitRows');
    if (maxLogitRows > fitRows) throw new BatchError(`maxLogitRows ${maxLogitRows} exceeds the ${fitRows} rows of logits one storage binding holds`);
    this.pool = new KvBlocks(blocks);
    this.decoder = new Decoder(ctx, c, weights, {
      maxTokens: this.maxStepTokens,
      maxLogitRows,
      maxRuns: Math.min(this.maxSequences, this.maxStepTokens),
      blockSize: B,
      numBlocks: blocks,
      maxBlocks: Math.ceil(this.maxContext / B),
      batchInvariant: opts.batchInvariant ?? false,
    });
    this.reducer = createLogitsReducer(ctx, this.decoder.logits, c.vocab_size);
  }

  get totalBlocks(): number {
    return this.pool.total;
  }

  get freeBlocks(): number {
    return this.pool.free;
  }

  get usedBlocks(): number {
    return this.pool.total - this.pool.free;
  }

  /** Rows of logits one step may keep. */
  get maxLogitRows(): number {
    return this.decoder.opts.maxLogitRows;
  }

  createSequence(): Sequence {
    this.check();
    if (this.live.size >= this.maxSequences) throw new BatchError(`the batch already holds its ${this.maxSequences} sequences: free one first`);
    const s = new Seq(this.nextId++, this);
    this.live.add(s);
    return s;
  }

  step(items: readonly StepItem[], opts: { logitRows?: 'last' | 'all' } = {}): number[] {
    this.check();
    if (items.length === 0) throw new RangeError('step() needs at least one item');
    const B = this.blockSize;
    const seen = new Set<Seq>();
    let total = 0;
    let needed = 0;
    let kept = 0;
    const firstRows: number[] = [];
    for (const item of items) {
      const s = this.own(item.seq);
      if (seen.has(s)) throw new BatchError(`sequence ${s.id} appears twice in one step`);
      seen.add(s);
      const n = item.tokens.length;
      if (n === 0) throw new RangeError(`sequence ${s.id}: a step item needs at least one token`);
      if (s.length + n > this.maxContext)
        throw new ContextOverflowError(`sequence ${s.id}: ${s.length} cached + ${n} new tokens exceed the context of ${this.maxContext} tokens`);
      for (let i = 0; i < n; i++) {
        const id = item.tokens[i]!;
        if (!(Number.isInteger(id) && id >= 0 && id < this.c.vocab_size)) throw new RangeError(`token id ${id} is outside the vocabulary (size ${this.c.vocab_size})`);
      }
      total += n;
      needed += Math.ceil((s.length + n) / B) - s.blocks.length + (this.copyOnWrite(s) ? 1 : 0);
      const rows = this.rowsOf(item, opts);
      firstRows.push(rows === 0 ? -1 : kept);
      kept += rows;
    }
    if (total > this.maxStepTokens) throw new RangeError(`a step of ${total} tokens exceeds maxStepTokens ${this.maxStepTokens}`);
    if (kept > this.decoder.opts.maxLogitRows) throw new RangeError(`a step keeping ${kept} rows of logits exceeds ${this.decoder.opts.maxLogitRows}`);
    if (needed > this.pool.free) throw new KvCacheFullError(needed, this.pool.free);

    // Nothing below throws: the step is taken.
    this.flush();
    const enc = this.ctx.device.createCommandEncoder();
    const ids = new Uint32Array(total);
    const logitRows: number[] = [];
    let t = 0;
    const runs = items.map((item) => {
      const s = item.seq as Seq;
      const n = item.tokens.length;
      if (this.copyOnWrite(s)) {
        const last = s.blocks.length - 1;
        const copy = this.pool.take();
        this.decoder.copyBlock(enc, s.blocks[last]!, copy);
        this.pool.release(s.blocks[last]!);
        s.blocks[last] = copy;
      }
      while (s.blocks.length < Math.ceil((s.length + n) / B)) s.blocks.push(this.pool.take());
      for (let i = 0; i < n; i++) ids[t + i] = item.tokens[i]!;
      const rows = this.rowsOf(item, opts);
      for (let r = n - rows; r < n; r++) logitRows.push(t + r);
      const run = { tokens: n, position: s.length, blocks: s.blocks };
      s.length += n;
      t += n;
      return run;
    });
    this.decoder.encode(enc, { ids, runs, logitRows }, this.profiler);
    this.pending = enc;
    this.keptRows = logitRows.length;
    return firstRows;
  }

  /**
   * Throwaway steps of each size whose kernels are built on first use (the software matvec's
   * 2..8-token variants compile for 40-75 ms each on lavapipe), every row kept and read, so
   * that no reply stalls on a compile when sequences first decode together or a draft is first
   * verified. Each size runs twice: the first compiles, the second is timed, and those times
   * are returned (what a step of each size costs here, before any reply has measured it).
   * Needs a free sequence slot; leaves the pool as it was.
   */
  async warmUp(): Promise<StepTime[]> {
    const seq = this.createSequence();
    const times: StepTime[] = [];
    try {
      const most = Math.min(MATVEC_MAX_TOKENS + 1, this.maxStepTokens, this.maxLogitRows, this.maxContext);
      for (let n = 1; n <= most; n++) {
        for (let pass = 0; pass < 2; pass++) {
          const t0 = performance.now();
          this.step([{ seq, tokens: Array.from({ length: n }, (_, i) => i % this.c.vocab_size) }], { logitRows: 'all' });
          if (n === 1) await this.argmax(0);
          else await this.reduceRows(Array.from({ length: n }, (_, i) => i), 0);
          this.truncate(seq, 0);
          if (pass === 1) times.push({ tokens: n, ms: performance.now() - t0 });
        }
      }
    } finally {
      this.free(seq);
    }
    return times;
  }

  async argmax(row: number): Promise<number> {
    const r = this.keptRow(row);
    this.submitReduction((pass) => this.reducer.encodeArgmax(pass, r * this.c.vocab_size));
    const id = await this.reducer.readArgmax();
    await this.profiler?.collect();
    return id;
  }

  async topK(k: number, row: number): Promise<TopK> {
    const r = this.keptRow(row);
    this.submitReduction((pass) => this.reducer.encodeTopK(pass, k, r * this.c.vocab_size));
    const top = await this.reducer.readTopK();
    await this.profiler?.collect();
    return top;
  }

  async logits(row: number): Promise<Float32Array> {
    const r = this.keptRow(row);
    const V = this.c.vocab_size;
    const staging = this.ctx.device.createBuffer({ size: V * 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    const enc = this.takeEncoder();
    enc.copyBufferToBuffer(this.decoder.logits, r * V * 4, staging, 0, V * 4);
    this.profiler?.finish(enc);
    this.ctx.device.queue.submit([enc.finish()]);
    await staging.mapAsync(GPUMapMode.READ);
    const out = new Float32Array(staging.getMappedRange().slice(0));
    staging.unmap();
    staging.destroy();
    await this.profiler?.collect();
    return out;
  }

  reduceRows(rows: readonly number[], k: number, targets?: readonly (number | undefined)[]): Promise<RowScore[]> {
    return this.reduceKept(rows, k, targets, (row) => this.keptRow(row));
  }

  /** reduceRows with rows named by the caller (a Session names them by position): `kept` maps one to a kept row. */
  async reduceKept(rows: readonly number[], k: number, targets: readonly (number | undefined)[] | undefined, kept: (row: number) => number): Promise<RowScore[]> {
    if (targets && targets.length !== rows.length) throw new RangeError(`reduceRows: ${targets.length} targets for ${rows.length} rows`);
    const V = this.c.vocab_size;
    // Checked before the pending step is taken, so a bad argument loses no work.
    if (!(Number.isInteger(k) && k >= 0 && k <= Math.min(MAX_TOP_K, V))) throw new RangeError(`reduceRows: k ${k} outside 0..${Math.min(MAX_TOP_K, V)}`);
    const reduced: ReducedRow[] = rows.map((row, i) => {
      const t = targets?.[i];
      if (t !== undefined && !(Number.isInteger(t) && t >= 0 && t < V)) throw new RangeError(`reduceRows: target id ${t} is outside the vocabulary (size ${V})`);
      const offset = this.keptRow(kept(row)) * V;
      return t === undefined ? { offset } : { offset, target: t };
    });
    if (reduced.length === 0) return [];
    const bytes = reduced.length * rowResultWords(k) * 4;
    const staging = this.ctx.device.createBuffer({ size: bytes, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST, label: 'reduced rows readback' });
    try {
      const enc = this.takeEncoder();
      this.reducer.encodeRows(enc, k, reduced, staging);
      this.profiler?.finish(enc);
      this.ctx.device.queue.submit([enc.finish()]);
      await staging.mapAsync(GPUMapMode.READ);
      const words = new Uint32Array(staging.getMappedRange().slice(0));
      staging.unmap();
      await this.profiler?.collect();
      return parseRows(words, k, reduced);
    } finally {
      staging.destroy();
    }
  }

  truncate(seq: Sequence, length: number): void {
    const s = this.own(seq);
    if (!(Number.isInteger(length) && length >= 0 && length <= s.length)) throw new RangeError(`cannot truncate ${s.length} cached tokens to ${length}`);
    // Stale rows past `length` in the kept last block are overwritten by the next step and never read before.
    s.length = length;
    this.releaseFrom(s, Math.ceil(length / this.blockSize));
  }

  fork(seq: Sequence, length: number): Sequence {
    const s = this.own(seq);
    if (!(Number.isInteger(length) && length >= 0 && length <= s.length)) throw new RangeError(`cannot fork ${length} of ${s.length} cached tokens`);
    const f = this.createSequence() as Seq;
    f.blocks = s.blocks.slice(0, Math.ceil(length / this.blockSize));
    for (const b of f.blocks) this.pool.retain(b);
    f.length = length;
    return f;
  }

  free(seq: Sequence): void {
    const s = this.own(seq);
    this.releaseFrom(s, 0);
    s.length = 0;
    s.alive = false;
    this.live.delete(s);
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.flush();
    this.decoder.destroy();
    this.reducer.destroy();
    this.onDispose();
  }

  /** Whether the next token of `s` goes into a block it shares (its last one, partly filled). */
  private copyOnWrite(s: Seq): boolean {
    return s.length % this.blockSize !== 0 && this.pool.shared(s.blocks[s.blocks.length - 1]!);
  }

  private rowsOf(item: StepItem, opts: { logitRows?: 'last' | 'all' }): number {
    const mode = item.logits ?? opts.logitRows ?? 'last';
    return mode === 'none' ? 0 : mode === 'all' ? item.tokens.length : 1;
  }

  private releaseFrom(s: Seq, keep: number): void {
    for (const b of s.blocks.splice(keep)) this.pool.release(b);
  }

  private own(seq: Sequence): Seq {
    this.check();
    if (!(seq instanceof Seq) || seq.owner !== this) throw new BatchError('the sequence belongs to another batch');
    if (!seq.alive) throw new BatchError(`sequence ${seq.id} was freed`);
    return seq;
  }

  private keptRow(row: number): number {
    this.check();
    if (this.keptRows === 0) throw new BatchError('no logits kept: step with logits first');
    if (!(Number.isInteger(row) && row >= 0 && row < this.keptRows)) throw new RangeError(`logits row ${row} is not kept (the last step kept ${this.keptRows})`);
    return row;
  }

  /** Appends a logits reduction to the pending step and submits them together. */
  private submitReduction(encode: (pass: GPUComputePassEncoder) => void): void {
    const enc = this.takeEncoder();
    const pass = this.profiler ? this.profiler.pass(enc, 'sampling') : enc.beginComputePass();
    encode(pass);
    pass.end();
    this.profiler?.finish(enc);
    this.ctx.device.queue.submit([enc.finish()]);
  }

  private takeEncoder(): GPUCommandEncoder {
    const enc = this.pending ?? this.ctx.device.createCommandEncoder();
    this.pending = undefined;
    return enc;
  }

  private flush(): void {
    if (!this.pending) return;
    this.profiler?.finish(this.pending);
    this.ctx.device.queue.submit([this.pending.finish()]);
    this.pending = undefined;
  }

  private check(): void {
    if (this.disposed) throw new Error('batch was disposed');
  }
}
