// A step profile from timestamp queries: each op runs in its own compute pass with
// begin/end timestamps (WebGPU core only times whole passes), and the durations are summed
// per kernel family. Only used when asked for: the extra passes cost time themselves.

export type OpKind = 'embedding' | 'norm' | 'linear' | 'rope' | 'attention' | 'elementwise' | 'lm_head' | 'sampling';

export class StepProfiler {
  private readonly querySet: GPUQuerySet;
  private readonly resolve: GPUBuffer;
  private readonly read: GPUBuffer;
  private kinds: OpKind[] = [];
  /** Queries already resolved by an earlier finish() (a step may span several submissions). */
  private resolved = 0;
  readonly totals = new Map<OpKind, number>();
  /** Steps measured since the last reset. */
  steps = 0;

  constructor(
    private readonly device: GPUDevice,
    private readonly capacity = 1024,
  ) {
    if (!device.features.has('timestamp-query')) throw new Error('profiling needs the timestamp-query feature, which this adapter lacks');
    this.querySet = device.createQuerySet({ type: 'timestamp', count: capacity * 2 });
    this.resolve = device.createBuffer({ size: capacity * 16, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC });
    this.read = device.createBuffer({ size: capacity * 16, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  }

  /** A pass for one op of `kind`, timed. */
  pass(enc: GPUCommandEncoder, kind: OpKind): GPUComputePassEncoder {
    const i = this.kinds.length;
    if (i >= this.capacity) throw new Error(`profiler: more than ${this.capacity} ops in one step`);
    this.kinds.push(kind);
    return enc.beginComputePass({ timestampWrites: { querySet: this.querySet, beginningOfPassWriteIndex: 2 * i, endOfPassWriteIndex: 2 * i + 1 } });
  }

  /** Records the resolve of the queries written since the last finish; submit before collect(). */
  finish(enc: GPUCommandEncoder): void {
    const from = this.resolved;
    const n = this.kinds.length;
    if (n === from) return;
    enc.resolveQuerySet(this.querySet, 2 * from, 2 * (n - from), this.resolve, from * 16);
    enc.copyBufferToBuffer(this.resolve, from * 16, this.read, from * 16, (n - from) * 16);
    this.resolved = n;
  }

  /** Adds the durations of every finished op to the totals. */
  async collect(): Promise<void> {
    const n = this.resolved;
    if (n === 0) return;
    await this.read.mapAsync(GPUMapMode.READ, 0, 2 * n * 8);
    const t = new BigUint64Array(this.read.getMappedRange(0, 2 * n * 8));
    for (let i = 0; i < n; i++) {
      const ns = Number(t[2 * i + 1]! - t[2 * i]!);
      const k = this.kinds[i]!;
      this.totals.set(k, (this.totals.get(k) ?? 0) + ns / 1e6);
    }
    this.read.unmap();
    this.kinds = [];
    this.resolved = 0;
    this.steps++;
  }

  reset(): void {
    this.totals.clear();
    this.steps = 0;
  }

  destroy(): void {
    this.querySet.destroy();
    this.resolve.destroy();
    this.read.destroy();
  }
}
