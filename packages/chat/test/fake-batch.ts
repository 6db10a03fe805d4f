// A TEST DOUBLE of the engine's Batch: "logits" are a deterministic function of a sequence's
// cached tokens, so tests of the generation loop check the loop (scheduling, EOS, stop
// strings, budgets, aborts, prefix reuse, block accounting), not a model.
import { KvCacheFullError, type Batch, type Gpu, type Model, type RowScore, type Sequence, type StepItem, type StepTime, type TopK } from '@webgpu-chat/engine';
import type { ModelConfig } from '@webgpu-chat/engine/internal';

/** Next-token rule of the fake model: the favourite token after a cached sequence. */
export type Rule = (cached: readonly number[]) => number;

class FakeSeq implements Sequence {
  cache: number[] = [];
  constructor(readonly id: number) {}
  get length(): number {
    return this.cache.length;
  }
}

export class FakeBatch implements Batch {
  readonly blockSize = 4;
  readonly maxStepTokens = 64;
  readonly maxLogitRows = 64;
  readonly totalBlocks: number;
  /** Tokens run through step() over the batch's life: the prefill and decode work done. */
  forwarded = 0;
  steps: number[][] = [];
  reads = { argmax: 0, topK: 0, logits: 0, reduce: 0 };
  disposed = false;
  private readonly live = new Set<FakeSeq>();
  private rows: Float32Array[] = [];
  private nextId = 0;

  constructor(
    private readonly rule: Rule,
    readonly vocab: number,
    readonly maxContext: number,
    readonly maxSequences = 16,
    kvTokens = maxContext * 4,
  ) {
    this.totalBlocks = Math.ceil(kvTokens / this.blockSize);
  }
  get usedBlocks(): number {
    let n = 0;
    for (const s of this.live) n += Math.ceil(s.length / this.blockSize);
    return n;
  }
  get freeBlocks(): number {
    return this.totalBlocks - this.usedBlocks;
  }
  get liveSequences(): number {
    return this.live.size;
  }
  /** A fake model has nothing to compile; its steps of 1..3 tokens "take" 2 ms a token. */
  async warmUp(): Promise<StepTime[]> {
    return [1, 2, 3].map((tokens) => ({ tokens, ms: 2 * tokens }));
  }

  createSequence(): Sequence {
    if (this.live.size >= this.maxSequences) throw new Error('fake: too many sequences');
    const s = new FakeSeq(this.nextId++);
    this.live.add(s);
    return s;
  }
  private own(seq: Sequence): FakeSeq {
    if (!this.live.has(seq as FakeSeq)) throw new Error('fake: dead sequence');
    return seq as FakeSeq;
  }
  step(items: readonly StepItem[]): number[] {
    const need = items.reduce((n, i) => n + Math.ceil((this.own(i.seq).length + i.tokens.length) / this.blockSize) - Math.ceil(this.own(i.seq).length / this.blockSize), 0);
    if (need > this.freeBlocks) throw new KvCacheFullError(need, this.freeBlocks);
    this.rows = [];
    this.steps.push(items.map((i) => i.tokens.length));
    return items.map((item) => {
      const s = this.own(item.seq);
      const first = item.logits === 'none' ? -1 : this.rows.length;
      for (let t = 0; t < item.tokens.length; t++) {
        if (s.length >= this.maxContext) throw new Error('fake: context overflow');
        s.cache.push(item.tokens[t]!);
        this.forwarded++;
        if (item.logits === 'all' || (item.logits === 'last' && t === item.tokens.length - 1)) this.rows.push(this.row(s.cache));
      }
      return first;
    });
  }
  private row(cache: readonly number[]): Float32Array {
    const l = new Float32Array(this.vocab).fill(-5);
    const fav = this.rule(cache);
    l[fav] = 5;
    l[(fav + 1) % this.vocab] = 4; // a runner-up, so sampling has a choice
    return l;
  }
  private at(row: number): Float32Array {
    const r = this.rows[row];
    if (!r) throw new Error(`fake: no kept row ${row}`);
    return r;
  }
  async argmax(row: number): Promise<number> {
    this.reads.argmax++;
    const l = this.at(row);
    let best = 0;
    for (let i = 1; i < l.length; i++) if (l[i]! > l[best]!) best = i;
    return best;
  }
  private top(l: Float32Array, k: number): TopK {
    const ids = Int32Array.from(l.keys()).sort((a, b) => l[b]! - l[a]! || a - b).slice(0, k);
    return { ids, logits: Float32Array.from(ids, (i) => l[i]!), logSumExp: Math.log(l.reduce((s, x) => s + Math.exp(x), 0)) };
  }
  async topK(k: number, row: number): Promise<TopK> {
    this.reads.topK++;
    return this.top(this.at(row), k);
  }
  async logits(row: number): Promise<Float32Array> {
    this.reads.logits++;
    return Float32Array.from(this.at(row));
  }
  async reduceRows(rows: readonly number[], k: number, targets: readonly (number | undefined)[] = []): Promise<RowScore[]> {
    this.reads.reduce++;
    return rows.map((r, i) => {
      const l = this.at(r);
      const t = this.top(l, k);
      return { ...t, argmax: this.top(l, 1).ids[0]!, targetLogit: targets[i] === undefined ? NaN : l[targets[i]!]! };
    });
  }
  truncate(seq: Sequence, length: number): void {
    const s = this.own(seq);
    if (length > s.length) throw new Error('fake: truncate past length');
    s.cache.length = length;
  }
  fork(seq: Sequence, length: number): Sequence {
    const f = this.createSequence() as FakeSeq;
    f.cache = this.own(seq).cache.slice(0, length);
    return f;
  }
  free(seq: Sequence): void {
    this.live.delete(this.own(seq));
  }
  dispose(): void {
    this.disposed = true;
  }
}

/** A Model whose batches are `batch` (the loop reads only info.vocabSize and maxPositionEmbeddings). */
export function fakeModel(batch: FakeBatch): Model {
  return {
    gpu: {} as Gpu,
    info: { modelType: 'fake', dtype: 'f32', weightBytes: 0, kvBytesPerToken: 0, vocabSize: batch.vocab, maxPositionEmbeddings: batch.maxContext, maxContext: batch.maxContext, bytesPerToken: 0, config: {} as ModelConfig, variant: 'software' },
    createSession: () => {
      throw new Error('fake: the loop runs on batches');
    },
    createBatch: () => batch,
    dispose: () => {},
  };
}
