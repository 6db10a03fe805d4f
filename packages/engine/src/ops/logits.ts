// Greedy choice and top-k over a logits row on the GPU (kernels/logits.wgsl), so a decode step
// reads back a few bytes instead of the whole vocabulary.
//
// Use: encode into the forward pass's compute pass, submit that command buffer, then await the
// matching read. The read copies the small result with its own submission, queued after the
// caller's, and maps it.

import type { TopK } from '../types.ts';
import { type Kernel, grid } from '../kernel.ts';
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
  destroy(): void;
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
  // At least 4 elements per STATS thread, so its per-thread maxima make a tight top-k floor.
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

  const k = (name: string, constants: Record<string, number> = {}) => ctx.kernels.get('logits', { [name]: true }, constants);
  const stats = k('STATS');
  const params = new ParamsBuffer(device, stats);
  // Binding 0 is the params uniform, for every pass but SCAN (auto layouts drop unused bindings).
  const pass = (kernel: Kernel, buffers: [number, GPUBuffer][], usesParams = true) => {
    const all: [number, GPUBuffer][] = usesParams ? [[0, params.buffer], ...buffers] : buffers;
    const group = device.createBindGroup({
      layout: kernel.pipeline.getBindGroupLayout(0),
      entries: all.map(([binding, buffer]) => ({ binding, resource: { buffer } })),
      label: kernel.key,
    });
    return { kernel, group };
  };
  const statsPass = pass(stats, [[1, logits], [2, blocks]]);
  const reducePass = pass(k('REDUCE'), [[2, blocks], [3, res], [4, sel]]);
  const digitPasses = Array.from({ length: DIGITS }, (_, d) => ({
    hist: pass(k('HIST', { WG, D: d }), [[1, logits], [4, sel], [6, filt]]),
    scan: pass(k('SCAN', { D: d }), [[4, sel]], false),
  }));
  const prefilterPass = pass(k('PREFILTER', { WG }), [[1, logits], [4, sel], [6, filt]]);
  const compactPass = pass(k('COMPACT', { WG }), [[1, logits], [4, sel], [5, cand], [6, filt]]);
  const sortPass = pass(k('SORT'), [[1, logits], [3, res], [5, cand]]);
  const compactGrid = grid(Math.min(Math.ceil(vocab / WG), 1024), ctx.limits.maxComputeWorkgroupsPerDimension);

  let lastK = 0; // 0: the last encode was an argmax
  let encoded: 'none' | 'argmax' | 'topk' = 'none';
  let reading = false;

  const run = (p: GPUComputePassEncoder, x: { kernel: Kernel; group: GPUBindGroup }, [gx, gy]: [number, number]) => {
    p.setPipeline(x.kernel.pipeline);
    p.setBindGroup(0, x.group);
    p.dispatchWorkgroups(gx, gy);
  };

  const setParams = (rowOffset: number, topK: number) => {
    if (!(Number.isInteger(rowOffset) && rowOffset >= 0 && (rowOffset + vocab) * 4 <= logits.size)) {
      throw new LogitsError(`logits: row at element ${rowOffset} runs past the buffer (${logits.size / 4} elements)`);
    }
    params.set({ vocab, rowOffset, blockLen, numBlocks, k: topK });
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
      run(p, statsPass, blockGrid);
      run(p, reducePass, [1, 1]);
      encoded = 'argmax';
      lastK = 0;
    },
    async readArgmax() {
      if (encoded === 'none') throw new LogitsError('logits: readArgmax before any encode');
      return (await read(1))[0]!;
    },
    encodeTopK(p, topK, rowOffset = 0) {
      if (!(Number.isInteger(topK) && topK >= 1 && topK <= Math.min(MAX_TOP_K, vocab))) {
        throw new LogitsError(`logits: k ${topK} outside 1..${Math.min(MAX_TOP_K, vocab)}`);
      }
      setParams(rowOffset, topK);
      run(p, statsPass, blockGrid);
      run(p, reducePass, [1, 1]);
      run(p, prefilterPass, compactGrid);
      for (const d of digitPasses) {
        run(p, d.hist, blockGrid);
        run(p, d.scan, [1, 1]);
      }
      run(p, compactPass, compactGrid);
      run(p, sortPass, [1, 1]);
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
    destroy() {
      for (const b of [blocks, res, sel, cand, filt, staging]) b.destroy();
      params.destroy();
    },
  };
}
