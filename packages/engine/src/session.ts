// A Session is one sequence of a batch of its own, with blocks for its whole context: the
// same forward path as continuous batching, plus the position-based logits rows and the
// splitting of long prompts into steps.

import { ContextOverflowError, DecoderBatch, MAX_LOGIT_ROWS } from './batch.ts';
import type { RowScore, Sequence, Session, TopK } from './types.ts';
import type { StepProfiler } from './profiler.ts';

export class DecoderSession implements Session {
  private readonly seq: Sequence;
  /** Rows of logits the last step kept: those of positions length - logitRows .. length - 1. */
  private logitRows = 0;
  private disposed = false;

  constructor(
    private readonly batch: DecoderBatch,
    private readonly vocabSize: number,
  ) {
    this.seq = batch.createSequence();
  }

  get length(): number {
    return this.seq.length;
  }

  get maxContext(): number {
    return this.batch.maxContext;
  }

  get profiler(): StepProfiler | undefined {
    return this.batch.profiler;
  }

  set profiler(p: StepProfiler | undefined) {
    this.batch.profiler = p;
  }

  forward(tokens: ArrayLike<number>, opts: { allLogits?: boolean } = {}): void {
    this.check();
    const n = tokens.length;
    if (n === 0) throw new RangeError('forward() needs at least one token');
    if (this.length + n > this.maxContext)
      throw new ContextOverflowError(`${this.length} cached + ${n} new tokens exceed the context of ${this.maxContext} tokens`);
    for (let i = 0; i < n; i++)
      if (!(tokens[i]! >= 0 && tokens[i]! < this.vocabSize)) throw new RangeError(`token id ${tokens[i]} is outside the vocabulary (size ${this.vocabSize})`);
    const maxRows = Math.min(MAX_LOGIT_ROWS, this.batch.maxLogitRows);
    if (opts.allLogits && n > maxRows) throw new RangeError(`allLogits is limited to ${maxRows} tokens per forward; got ${n}`);
    const step = this.batch.maxStepTokens;
    for (let at = 0; at < n; at += step) {
      const count = Math.min(step, n - at);
      const last = at + count === n;
      const chunk = Array.prototype.slice.call(tokens, at, at + count) as number[];
      this.batch.step([{ seq: this.seq, tokens: chunk, logits: !last ? 'none' : opts.allLogits ? 'all' : 'last' }]);
      this.logitRows = !last ? 0 : opts.allLogits ? count : 1;
    }
  }

  async argmax(row?: number): Promise<number> {
    return this.batch.argmax(this.keptRow(row));
  }

  async topK(k: number, row?: number): Promise<TopK> {
    return this.batch.topK(k, this.keptRow(row));
  }

  async logits(row?: number): Promise<Float32Array> {
    return this.batch.logits(this.keptRow(row));
  }

  reduceRows(rows: readonly number[], k: number, targets?: readonly (number | undefined)[]): Promise<RowScore[]> {
    return this.batch.reduceKept(rows, k, targets, (row) => this.keptRow(row));
  }

  truncate(length: number): void {
    this.check();
    this.batch.truncate(this.seq, length);
    this.logitRows = 0;
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.batch.dispose();
  }

  /** Index among the kept rows of position `row` (default: the last forwarded one). */
  private keptRow(row: number | undefined): number {
    this.check();
    if (this.logitRows === 0) throw new Error('no logits yet: call forward() first');
    if (row === undefined) return this.logitRows - 1;
    const r = row - (this.length - this.logitRows);
    if (!(Number.isInteger(row) && r >= 0 && r < this.logitRows))
      throw new RangeError(`logits of position ${row} are not kept (have positions ${this.length - this.logitRows}..${this.length - 1}; forward with allLogits)`);
    return r;
  }

  private check(): void {
    if (this.disposed) throw new Error('session was disposed');
  }
}
