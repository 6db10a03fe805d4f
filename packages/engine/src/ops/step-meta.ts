// Where each token of a forward step over several sequences sits: its position and its
// sequence's KV block table, in one u32 buffer that RoPE, the KV write and attention read.
//
// Layout (u32 words; maxTokens = T, maxRuns = R, G = nHeads / nKvHeads):
//   [0, T)                    position of token t
//   [T, 2T)                   word offset in this buffer of token t's block table
//   [2T, 2T + 2 maxGroups)    attention row groups (first row, row count): up to 8 query rows
//                             of one kv head and one sequence, rows r = t * G + (h mod G)
//   [tables, + R * maxBlocks) block tables of the step's runs, maxBlocks words per run
// A step's tokens are runs, one per sequence, each at consecutive positions.

export class StepMetaError extends Error {
  override name = 'StepMetaError';
}

/** One sequence's tokens in a step: `tokens` rows at positions position.., its cache in `blocks`. */
export interface TokenRun {
  tokens: number;
  position: number;
  /** Block ids covering positions 0 .. position + tokens - 1. */
  blocks: ArrayLike<number>;
}

/** What the kernels need besides the buffer to size one step's dispatches. */
export interface StepShape {
  tokens: number;
  /** The largest end position (position + tokens) of any run: attention's key range. */
  maxLength: number;
  /** Attention row groups per kv head (attention.wgsl splitSg). */
  groups: number;
}

export interface StepMetaOptions {
  maxTokens: number;
  maxRuns: number;
  /** Blocks of the longest sequence: ceil(maxContext / blockSize). */
  maxBlocks: number;
  blockSize: number;
  /** Query heads per kv head. */
  groupSize: number;
}

/** Query rows per attention group: attention.wgsl splitSg's subgroup width. */
const GROUP_ROWS = 8;

export class StepMeta {
  readonly buffer: GPUBuffer;
  /** Word offset of the row groups (attention's groupBase). */
  readonly groupBase: number;
  private readonly tableBase: number;
  private readonly host: Uint32Array<ArrayBuffer>;

  constructor(
    private readonly device: GPUDevice,
    readonly opts: StepMetaOptions,
  ) {
    const { maxTokens: T, maxRuns, maxBlocks, groupSize } = opts;
    this.groupBase = 2 * T;
    const maxGroups = Math.ceil((T * groupSize) / GROUP_ROWS) + maxRuns;
    this.tableBase = this.groupBase + 2 * maxGroups;
    this.host = new Uint32Array(this.tableBase + maxRuns * maxBlocks);
    this.buffer = device.createBuffer({ size: this.host.byteLength, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST, label: 'step meta' });
  }

  /** Packs the runs (in token order) and writes them; the previous step must have been submitted. */
  write(runs: readonly TokenRun[]): StepShape {
    const { maxTokens: T, maxRuns, maxBlocks, blockSize, groupSize: G } = this.opts;
    if (runs.length < 1 || runs.length > maxRuns) throw new StepMetaError(`${runs.length} runs outside 1..${maxRuns}`);
    const h = this.host;
    let t = 0;
    let groups = 0;
    let maxLength = 0;
    runs.forEach((run, i) => {
      const end = run.position + run.tokens;
      if (!(run.tokens >= 1 && t + run.tokens <= T)) throw new StepMetaError(`step of more than ${T} tokens`);
      if (Math.ceil(end / blockSize) > Math.min(run.blocks.length, maxBlocks)) throw new StepMetaError(`run ${i} has too few blocks for ${end} positions`);
      const table = this.tableBase + i * maxBlocks;
      for (let b = 0; b < Math.ceil(end / blockSize); b++) h[table + b] = run.blocks[b]!;
      for (let k = 0; k < run.tokens; k++) {
        h[t + k] = run.position + k;
        h[T + t + k] = table;
      }
      for (let r = t * G; r < (t + run.tokens) * G; r += GROUP_ROWS) {
        h[this.groupBase + 2 * groups] = r;
        h[this.groupBase + 2 * groups + 1] = Math.min(GROUP_ROWS, (t + run.tokens) * G - r);
        groups++;
      }
      t += run.tokens;
      maxLength = Math.max(maxLength, end);
    });
    const q = this.device.queue;
    q.writeBuffer(this.buffer, 0, h, 0, t);
    q.writeBuffer(this.buffer, T * 4, h, T, t);
    q.writeBuffer(this.buffer, this.groupBase * 4, h, this.groupBase, 2 * groups);
    runs.forEach((run, i) => {
      const table = this.tableBase + i * maxBlocks;
      q.writeBuffer(this.buffer, table * 4, h, table, Math.ceil((run.position + run.tokens) / blockSize));
    });
    return { tokens: t, maxLength, groups };
  }

  destroy(): void {
    this.buffer.destroy();
  }
}
