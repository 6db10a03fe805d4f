// Greedy choice and top-k over a logits row on the GPU (kernels/logits.wgsl), so a decode step
// reads back a few bytes instead of the whole vocabulary.
//
// Use: encode into the forward pass's compute pass, submit that command buffer, then await the
// matching read. The read copies the small result with its own submission, queued after the
// caller's, and maps it.

import type { RowScore, TopK } from '../types.ts';
import { type Kernel, grid, packParams } from '../kernel.ts';
import { type OpContext, ParamsBuffer } from './context.ts';

export interface LogitsReducer {
  /** Records argmax over logits[rowOffset .. rowOffset + vocab). */
  encodeArgmax(pass: GPUComputePassEncoder, rowOffset?: number): void;
  /** The argmax of the last encodeArgmax or encodeTopK (ties → lowest index). */
  readArgmax(): Promise<number>;
  /** Records the k best entries (1 ≤ k ≤ 256) and logSumExp of the row. */
  encodeTopK(pass: GPUComputePassEncoder, k: number, rowOffset?: number): void;
  /** Ids highest logit first (ties → lowest id), their logits and logSumExp of the whole row. */
  readTopK(): Promise<TopK>;
  /**
   * Records, in one command buffer, the top-k (k = 0: only logSumExp and argmax) of several
   * rows, copying each row's result (rowResultWords(k) words, see parseRows) into `dst` at
   * dstOffset + i * 4 * rowResultWords(k), with the logit of rows[i].target in word 3.
   * Each row's params come from its own copy, so the rows need no separate submissions;
   * submit `enc` before the next encodeRows (the params source is reused).
   */
  encodeRows(enc: GPUCommandEncoder, k: number, rows: readonly ReducedRow[], dst: GPUBuffer, dstOffset?: number): void;
  destroy(): void;
}

export interface ReducedRow {
  /** Element offset of the row in the logits buffer. */
  offset: number;
  /** A token id whose logit to copy out with the row (e.g. the actual next token). */
  target?: number;
}

/** Words of one row's result in encodeRows' output: argmax, max, logSumExp, target logit, k ids, k logits. */
export const rowResultWords = (k: number): number => 4 + 2 * k;

/** Splits encodeRows' output for n rows into scores (targetLogit NaN where no target was given). */
export function parseRows(words: Uint32Array, k: number, rows: readonly ReducedRow[]): RowScore[] {
  const f = new Float32Array(words.buffer, words.byteOffset, words.length);
  const w = rowResultWords(k);
  return rows.map((row, i) => {
    const at = i * w;
    return {
      ids: new Int32Array(words.slice(at + 4, at + 4 + k)),
      logits: f.slice(at + 4 + k, at + 4 + 2 * k),
      logSumExp: f[at + 2]!,
      argmax: words[at]!,
      targetLogit: row.target === undefined ? NaN : f[at + 3]!,
    };
  });
}

export class LogitsError extends Error {
  override name = 'LogitsError';
}

export const MAX_TOP_K = 256;
/** Keys hold 0xffffff - index in 24 bits. */
const MAX_VOCAB = 1 << 24;
const DIGITS = 7;
const WG = 64;
const STATS_WG = 64; // SWG in logits.wgsl
const SEL_BYTES = 24 + DIGITS * 256 * 4;
const FILT_CAP = 16384; // FILT_CAP in logits.wgsl
const RES_WORDS = 4 + 2 * MAX_TOP_K;

export function createLogitsReducer(ctx: OpContext, logits: GPUBuffer, vocab: number): LogitsReducer {
  if (!(Number.isInteger(vocab) && vocab > 0 && vocab <= MAX_VOCAB)) throw new LogitsError(`logits: vocab ${vocab} outside 1..${MAX_VOCAB}`);
  if (logits.size < vocab * 4) throw new LogitsError(`logits: buffer has ${logits.size} bytes, needs ${vocab * 4}`);
  const { device } = ctx;
  // Few, long blocks on a CPU adapter (each block pays workgroup barriers); more on a GPU for parallelism.
  // At least 4 elements per stats thread, so its per-thread maxima make a tight top-k floor.
  const blockLen = ctx.variant === 'software' ? 8192 : 4 * STATS_WG;
  const numBlocks = Math.ceil(vocab / blockLen);
  const blockGrid = grid(numBlocks, ctx.limits.maxComputeWorkgroupsPerDimension);

  const storage = (bytes: number, label: string) =>
    device.createBuffer({ size: bytes, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC, label });
  const blocks = storage(numBlocks * 16, 'logits blocks');
  const res = storage(RES_WORDS * 4, 'logits result');
  const sel = storage(SEL_BYTES, 'logits selection');
  const cand = storage(MAX_TOP_K * 8, 'logits candidates');
  const filt = storage(FILT_CAP * 4, 'logits prefiltered indices');
  const staging = device.createBuffer({ size: RES_WORDS * 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST, label: 'logits readback' });

  const k = (entry: string, constants: Record<string, number> = {}) => ctx.kernels.get('logits', {}, constants, entry);
  const stats = k('stats');
  const params = new ParamsBuffer(device, stats);
  // Binding 0 is the params uniform, for every pass but scan (auto layouts drop unused bindings).
  // encodeRows binds its own uniform, written only by copies, so `params`' cache stays true.
  const rowsUniform = device.createBuffer({ size: stats.layout!.byteSize, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST, label: 'logits rows params' });
  const bindPass = (uniform: GPUBuffer) => (kernel: Kernel, buffers: [number, GPUBuffer][], usesParams = true) => {
    const all: [number, GPUBuffer][] = usesParams ? [[0, uniform], ...buffers] : buffers;
    const group = device.createBindGroup({
      layout: kernel.pipeline.getBindGroupLayout(0),
      entries: all.map(([binding, buffer]) => ({ binding, resource: { buffer } })),
      label: kernel.key,
    });
    return { kernel, group };
  };
  const makePasses = (uniform: GPUBuffer) => {
    const pass = bindPass(uniform);
    return {
      stats: pass(stats, [[1, logits], [2, blocks]]),
      reduce: pass(k('reduce'), [[2, blocks], [3, res], [4, sel]]),
      digits: Array.from({ length: DIGITS }, (_, d) => ({
        hist: pass(k('hist', { WG, D: d }), [[1, logits], [4, sel], [6, filt]]),
        scan: pass(k('scan', { D: d }), [[4, sel]], false),
      })),
      prefilter: pass(k('prefilter', { WG }), [[1, logits], [4, sel], [6, filt]]),
      compact: pass(k('compact', { WG }), [[1, logits], [4, sel], [5, cand], [6, filt]]),
      sort: pass(k('sort'), [[1, logits], [3, res], [5, cand]]),
    };
  };
  type Passes = ReturnType<typeof makePasses>;
  const single = makePasses(params.buffer);
  let multi: Passes | undefined;
  const rowParams = (rowOffset: number, topK: number) => ({ vocab, rowOffset, blockLen, numBlocks, k: topK });
  // encodeRows without top-k: one dispatch over every row (the `rows` pass), its own uniform
  // (only vocab is read) written once, and its row list and results in buffers grown on demand.
  const rowsParams = device.createBuffer({ size: stats.layout!.byteSize, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST, label: 'logits rows pass params' });
  device.queue.writeBuffer(rowsParams, 0, packParams(stats.layout!, rowParams(0, 0)));
  let rowsPass: { kernel: Kernel; capacity: number; list: GPUBuffer; out: GPUBuffer; group: GPUBindGroup } | undefined;
  const rowsPassFor = (n: number) => {
    if (rowsPass && rowsPass.capacity >= n) return rowsPass;
    rowsPass?.list.destroy();
    rowsPass?.out.destroy();
    const capacity = Math.max(n, 2 * (rowsPass?.capacity ?? 8));
    const list = device.createBuffer({ size: capacity * 8, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST, label: 'logits rows list' });
    const out = storage(capacity * 16, 'logits rows results');
    const kernel = rowsPass?.kernel ?? k('rows');
    const { group } = bindPass(rowsParams)(kernel, [[1, logits], [7, list], [8, out]]);
    return (rowsPass = { kernel, capacity, list, out, group });
  };
  // Every row's params for encodeRows; rewritten by each call, so each must be submitted before the next.
  let rowsSource: GPUBuffer | undefined;
  const compactGrid = grid(Math.min(Math.ceil(vocab / WG), 1024), ctx.limits.maxComputeWorkgroupsPerDimension);

  let lastK = 0; // 0: the last encode was an argmax
  let encoded: 'none' | 'argmax' | 'topk' = 'none';
  let reading = false;

  const run = (p: GPUComputePassEncoder, x: { kernel: Kernel; group: GPUBindGroup }, [gx, gy]: [number, number]) => {
    p.setPipeline(x.kernel.pipeline);
    p.setBindGroup(0, x.group);
    p.dispatchWorkgroups(gx, gy);
  };

  const checkRow = (rowOffset: number) => {
    if (!(Number.isInteger(rowOffset) && rowOffset >= 0 && (rowOffset + vocab) * 4 <= logits.size)) {
      throw new LogitsError(`logits: row at element ${rowOffset} runs past the buffer (${logits.size / 4} elements)`);
    }
  };
  const checkTarget = (target: number | undefined) => {
    if (target !== undefined && !(Number.isInteger(target) && target >= 0 && target < vocab)) {
      throw new LogitsError(`logits: target id ${target} is outside the vocabulary (size ${vocab})`);
    }
  };
  const checkK = (topK: number, min: number) => {
    if (!(Number.isInteger(topK) && topK >= min && topK <= Math.min(MAX_TOP_K, vocab))) {
      throw new LogitsError(`logits: k ${topK} outside ${min}..${Math.min(MAX_TOP_K, vocab)}`);
    }
  };
  const setParams = (rowOffset: number, topK: number) => {
    checkRow(rowOffset);
    params.set(rowParams(rowOffset, topK));
  };
  const encodeStats = (p: GPUComputePassEncoder, x: Passes) => {
    run(p, x.stats, blockGrid);
    run(p, x.reduce, [1, 1]);
  };
  const encodeSelect = (p: GPUComputePassEncoder, x: Passes) => {
    run(p, x.prefilter, compactGrid);
    for (const d of x.digits) {
      run(p, d.hist, blockGrid);
      run(p, d.scan, [1, 1]);
    }
    run(p, x.compact, compactGrid);
    run(p, x.sort, [1, 1]);
  };

  const read = async (words: number): Promise<Uint32Array> => {
    if (reading) throw new LogitsError('logits: a read is already in flight');
    reading = true;
    try {
      const enc = device.createCommandEncoder();
      enc.copyBufferToBuffer(res, 0, staging, 0, words * 4);
      device.queue.submit([enc.finish()]);
      await staging.mapAsync(GPUMapMode.READ, 0, words * 4);
      const out = new Uint32Array(staging.getMappedRange(0, words * 4).slice(0));
      staging.unmap();
      return out;
    } finally {
      reading = false;
    }
  };

  return {
    encodeArgmax(p, rowOffset = 0) {
      setParams(rowOffset, 1);
      encodeStats(p, single);
      encoded = 'argmax';
      lastK = 0;
    },
    async readArgmax() {
      if (encoded === 'none') throw new LogitsError('logits: readArgmax before any encode');
      return (await read(1))[0]!;
    },
    encodeTopK(p, topK, rowOffset = 0) {
      checkK(topK, 1);
      setParams(rowOffset, topK);
      encodeStats(p, single);
      encodeSelect(p, single);
      encoded = 'topk';
      lastK = topK;
    },
    async readTopK() {
      if (encoded !== 'topk') throw new LogitsError('logits: readTopK needs encodeTopK first');
      const kk = lastK;
      const w = await read(4 + 2 * kk);
      const f = new Float32Array(w.buffer);
      return { ids: new Int32Array(w.slice(4, 4 + kk)), logits: f.slice(4 + kk, 4 + 2 * kk), logSumExp: f[2]! };
    },
    encodeRows(enc, topK, rows, dst, dstOffset = 0) {
      checkK(topK, 0);
      const bytes = 4 * rowResultWords(topK);
      if (!(Number.isInteger(dstOffset) && dstOffset % 4 === 0 && dstOffset + rows.length * bytes <= dst.size)) {
        throw new LogitsError(`logits: ${rows.length} rows of ${bytes} bytes at ${dstOffset} do not fit a ${dst.size}-byte buffer`);
      }
      if (rows.length === 0) return;
      for (const row of rows) {
        checkRow(row.offset);
        checkTarget(row.target);
      }
      if (topK === 0) {
        const list = new Uint32Array(2 * rows.length);
        rows.forEach((row, i) => {
          list[2 * i] = row.offset;
          list[2 * i + 1] = row.target ?? 0xffffffff;
        });
        const rp = rowsPassFor(rows.length);
        device.queue.writeBuffer(rp.list, 0, list);
        const p = enc.beginComputePass();
        p.setPipeline(rp.kernel.pipeline);
        p.setBindGroup(0, rp.group);
        p.dispatchWorkgroups(rows.length);
        p.end();
        enc.copyBufferToBuffer(rp.out, 0, dst, dstOffset, rows.length * bytes);
        return;
      }
      const size = stats.layout!.byteSize;
      const all = new Uint8Array(rows.length * size);
      rows.forEach((row, i) => {
        all.set(new Uint8Array(packParams(stats.layout!, rowParams(row.offset, topK))), i * size);
      });
      if (!rowsSource || rowsSource.size < all.byteLength) {
        rowsSource?.destroy();
        rowsSource = device.createBuffer({ size: all.byteLength, usage: GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST, label: 'logits rows params source' });
      }
      const src = rowsSource;
      device.queue.writeBuffer(src, 0, all);
      multi ??= makePasses(rowsUniform);
      rows.forEach((row, i) => {
        enc.copyBufferToBuffer(src, i * size, rowsUniform, 0, size);
        const p = enc.beginComputePass();
        encodeStats(p, multi!);
        if (topK > 0) encodeSelect(p, multi!);
        p.end();
        const at = dstOffset + i * bytes;
        enc.copyBufferToBuffer(res, 0, dst, at, bytes);
        if (row.target !== undefined) enc.copyBufferToBuffer(logits, (row.offset + row.target) * 4, dst, at + 12, 4);
      });
      // res now holds the last row's result, not what readArgmax/readTopK would expect.
      encoded = 'none';
    },
    destroy() {
      for (const b of [blocks, res, sel, cand, filt, staging, rowsUniform, rowsParams]) b.destroy();
      rowsPass?.list.destroy();
      rowsPass?.out.destroy();
      rowsSource?.destroy();
      params.destroy();
    },
  };
}
