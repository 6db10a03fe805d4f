// The host side of the paged KV cache: which blocks of the per-layer pools are free, and how
// many sequences hold each one. A block is shared when a fork keeps a prefix; whoever writes
// into a shared block first copies it (DecoderBatch), so a block is written by one holder only.

export class KvBlocks {
  private readonly refs: Uint32Array;
  /** Free block ids, taken from the end. */
  private readonly freeList: number[];

  constructor(readonly total: number) {
    this.refs = new Uint32Array(total);
    this.freeList = Array.from({ length: total }, (_, i) => total - 1 - i);
  }

  get free(): number {
    return this.freeList.length;
  }

  /** A block no one holds, now held once. The caller checks `free` first. */
  take(): number {
    const b = this.freeList.pop();
    if (b === undefined) throw new Error('no free KV block');
    this.refs[b] = 1;
    return b;
  }

  retain(b: number): void {
    this.refs[b]!++;
  }

  /** Drops one hold; the block is free again when no one holds it. */
  release(b: number): void {
    if (this.refs[b] === 0) throw new Error(`KV block ${b} released more often than held`);
    if (--this.refs[b]! === 0) this.freeList.push(b);
  }

  shared(b: number): boolean {
    return this.refs[b]! > 1;
  }
}
