// Causal grouped-query attention over a paged KV cache (kernels/attention.wgsl).
//
// encode(pass, shape) writes the step's T new k/v rows into each token's cache slot (its
// position in its sequence's blocks, from the StepMeta) and attends each query to its own
// sequence's positions 0..pos (within the sliding window when set). Rolling back is writing
// at smaller positions later: stale cache rows past a sequence's length are never read.

import { bindGroup, dispatch, grid } from '../kernel.ts';
import { emptyBuffer } from '../buffers.ts';
import { type OpContext, ParamsBuffer } from './context.ts';
import type { StepMeta, StepShape } from './step-meta.ts';

export class AttentionError extends Error {
  override name = 'AttentionError';
}

export interface AttentionOptions {
  nHeads: number;
  nKvHeads: number;
  headDim: number;
  /** Multiplies q·k; default 1 / sqrt(headDim). */
  scale?: number;
  /** Attend only to the last `slidingWindow` positions, the query's own included (HF Mistral/Qwen2). */
  slidingWindow?: number;
  /** Scores (after `scale`) become softcap · tanh(score / softcap) (Gemma 2's attn_logit_softcapping); 0 or absent: none. */
  softcap?: number;
  /** [nHeads] f32 logits that join each softmax's denominator and weigh no value (GPT-OSS sinks). */
  sinks?: GPUBuffer;
  /** Software variant: a thread per query row even where subgroups could group them (tests). */
  perRow?: boolean;
}

export interface AttentionOp {
  encode(pass: GPUComputePassEncoder, shape: StepShape): void;
  /** Releases the op's own buffers; the KV cache is its owner's. */
  destroy(): void;
}

/**
 * One layer's pool of KV blocks: k and v [numBlocks, nKvHeads, blockSize, headDim] f32. It
 * belongs to the run state of the sequences (transformer.ts Decoder: a batch), which copies
 * blocks on write and frees the buffers; the attention op writes the step's rows and reads them.
 */
export interface KvCache {
  k: GPUBuffer;
  v: GPUBuffer;
  numBlocks: number;
  nKvHeads: number;
  blockSize: number;
  headDim: number;
}

/** Allocates a layer's KV pool of `numBlocks` blocks, each within one storage binding. */
export function createKvCache(ctx: OpContext, o: Omit<KvCache, 'k' | 'v'>): KvCache {
  const { numBlocks, nKvHeads, blockSize, headDim } = o;
  if (!(Number.isInteger(numBlocks) && numBlocks >= 1)) throw new AttentionError(`numBlocks ${numBlocks} must be a positive integer`);
  const blockBytes = nKvHeads * blockSize * headDim * 4;
  const bindLimit = Math.min(ctx.limits.maxStorageBufferBindingSize, ctx.limits.maxBufferSize);
  if (numBlocks * blockBytes > bindLimit) {
    throw new AttentionError(
      `a KV cache of ${numBlocks} blocks of ${blockSize} tokens needs ${numBlocks * blockBytes} bytes per layer for k (and again for v), ` +
        `over this device's storage binding limit of ${bindLimit} bytes; use at most ${Math.floor(bindLimit / blockBytes)} blocks`,
    );
  }
  return { ...o, k: emptyBuffer(ctx.device, numBlocks * blockBytes, 'kCache'), v: emptyBuffer(ctx.device, numBlocks * blockBytes, 'vCache') };
}

/** The kernel's private and shared arrays are sized for this. */
export const MAX_HEAD_DIM = 256;

const WG = 64;
// Splitting policy: a split covers MIN_SPLIT positions and a row has at most MAX_SPLITS of them.
// A CPU-backed adapter needs only a few dozen threads busy, and each split costs it a full pass
// over headDim in the combine; a GPU wants hundreds of workgroups. The fixed split length keeps
// a row's summation order independent of the other sequences in its step (batch invariance):
// a split past a row's own keys is empty and weighs exactly nothing in the combine.
const POLICY = {
  software: { minSplit: 256, maxSplits: 32 },
  gpu: { minSplit: 128, maxSplits: 64 },
} as const;

/**
 * Scratch for the split partials, shared by every layer's attention (layers run one after
 * another): part: [items] pairs (m, l), then [items, headDim] accumulators.
 */
export interface AttentionPartials {
  readonly buffer: GPUBuffer;
  /** Work items (row, split) it holds. */
  readonly items: number;
  readonly headDim: number;
}

/**
 * Partials for every row of a step of maxTokens split at the fixed length up to maxLength
 * positions, within one storage binding; past that a step splits less (at other boundaries).
 */
export function createAttentionPartials(ctx: OpContext, o: { nHeads: number; headDim: number; maxTokens: number; maxLength: number }): AttentionPartials {
  const policy = POLICY[ctx.variant];
  const splits = Math.min(policy.maxSplits, Math.ceil(o.maxLength / policy.minSplit));
  const bindLimit = Math.min(ctx.limits.maxStorageBufferBindingSize, ctx.limits.maxBufferSize);
  const items = Math.min(o.maxTokens * o.nHeads * splits, Math.floor(bindLimit / ((2 + o.headDim) * 4)));
  return { buffer: emptyBuffer(ctx.device, items * (2 + o.headDim) * 4, 'attention partials'), items, headDim: o.headDim };
}

/**
 * q: [maxTokens, nHeads * headDim], k and v: [maxTokens, nKvHeads * headDim] (k after RoPE),
 * out: [maxTokens, nHeads * headDim], all f32; meta: the step's positions and block tables;
 * partials: split scratch (createAttentionPartials), which this op does not own.
 */
export function createAttention(
  ctx: OpContext,
  opts: AttentionOptions,
  meta: StepMeta,
  cache: KvCache,
  q: GPUBuffer,
  k: GPUBuffer,
  v: GPUBuffer,
  out: GPUBuffer,
  partials: AttentionPartials,
): AttentionOp {
  const { nHeads, nKvHeads, headDim } = opts;
  const { blockSize, maxTokens } = meta.opts;
  const window = opts.slidingWindow ?? 0;
  const scale = opts.scale ?? 1 / Math.sqrt(headDim);
  const softcap = opts.softcap ?? 0;
  if (!(Number.isFinite(scale) && scale > 0)) throw new AttentionError(`scale ${scale} must be a positive number`);
  if (!(Number.isFinite(softcap) && softcap >= 0)) throw new AttentionError(`softcap ${softcap} must be a non-negative number`);
  const variantDefines = { SINKS: !!opts.sinks, SOFTCAP: softcap > 0 };
  if (!(Number.isInteger(nHeads) && Number.isInteger(nKvHeads) && nKvHeads >= 1 && nHeads % nKvHeads === 0))
    throw new AttentionError(`nHeads (${nHeads}) must be a positive multiple of nKvHeads (${nKvHeads})`);
  if (meta.opts.groupSize !== nHeads / nKvHeads) throw new AttentionError(`step meta groups ${meta.opts.groupSize} query heads per kv head, not ${nHeads / nKvHeads}`);
  if (!(Number.isInteger(headDim) && headDim >= 4 && headDim <= MAX_HEAD_DIM && headDim % 4 === 0))
    throw new AttentionError(`headDim ${headDim} must be a multiple of 4 in 4..${MAX_HEAD_DIM}`);
  if (!(Number.isInteger(window) && window >= 0)) throw new AttentionError(`slidingWindow ${window} must be a positive integer`);
  if (cache.nKvHeads !== nKvHeads || cache.headDim !== headDim || cache.blockSize !== blockSize)
    throw new AttentionError(`the KV cache holds blocks of ${cache.blockSize} positions of ${cache.nKvHeads} kv heads of ${cache.headDim}, not ${blockSize} of ${nKvHeads} of ${headDim}`);
  const qRow = nHeads * headDim * 4;
  if (q.size < maxTokens * qRow) throw new AttentionError('q buffer holds fewer tokens than the step meta');
  if (out.size < maxTokens * qRow) throw new AttentionError('out buffer is smaller than q');
  const kvRow = nKvHeads * headDim * 4;
  if (k.size < maxTokens * kvRow || v.size < maxTokens * kvRow) throw new AttentionError('k or v buffer holds fewer tokens than q');

  const policy = POLICY[ctx.variant];
  const dev = ctx.device;
  const { k: kCache, v: vCache } = cache;
  if (partials.headDim !== headDim) throw new AttentionError(`partials hold rows of ${partials.headDim} dims, not ${headDim}`);
  const partialItems = partials.items;
  const accOffset = 2 * partialItems;
  const part = partials.buffer;

  const maxDim = ctx.limits.maxComputeWorkgroupsPerDimension;
  const write = ctx.kernels.get('attention', {}, { WG }, 'kvWrite');
  const writeParams = new ParamsBuffer(dev, write);
  const writeGroup = bindGroup(dev, write, [writeParams.buffer, k, v, kCache, vCache, meta.buffer]);
  const software = ctx.variant === 'software';
  // Groups of 8 query rows sharing each cache row through subgroup broadcasts, where the adapter
  // has subgroups of exactly 8 (lavapipe); else a thread per query row.
  const grouped = software && ctx.subgroups && ctx.subgroupSize === 8 && headDim % 8 === 0 && !opts.perRow;
  const attn = grouped
    ? ctx.kernels.get('attention', { SUBGROUPS: true, ...variantDefines }, { PL: headDim / 8 }, 'splitSg')
    : software
      ? ctx.kernels.get('attention', variantDefines, { WG, HD4: headDim / 4 }, 'splitSw')
      : ctx.kernels.get('attention', variantDefines, { WG }, 'splitGpu');
  const attnParams = new ParamsBuffer(dev, attn);
  if (opts.sinks && opts.sinks.size < nHeads * 4) throw new AttentionError(`sinks hold fewer than ${nHeads} f32`);
  const attnGroup = bindGroup(dev, attn, [attnParams.buffer, q, kCache, vCache, out, part, meta.buffer, ...(opts.sinks ? [opts.sinks] : [])]);
  const combine = ctx.kernels.get('attention', {}, { WG }, 'combine');
  const combineParams = new ParamsBuffer(dev, combine);
  const combineGroup = bindGroup(dev, combine, [combineParams.buffer, part, out]);

  return {
    encode(pass, { tokens, maxLength, groups }) {
      if (!(Number.isInteger(tokens) && tokens >= 1 && tokens <= maxTokens))
        throw new AttentionError(`tokens ${tokens} outside 1..${maxTokens}`);
      writeParams.set({ tokens, nKvHeads, headDim, blockSize, maxTokens });
      dispatch(pass, write, writeGroup, ...grid(Math.ceil((tokens * nKvHeads * headDim) / WG), maxDim));

      const rows = tokens * nHeads;
      const fixed = Math.ceil(maxLength / policy.minSplit);
      const splits = fixed <= policy.maxSplits && rows * fixed <= partialItems ? fixed : Math.max(1, Math.min(policy.maxSplits, fixed, Math.floor(partialItems / rows)));
      const splitLen = splits === fixed ? policy.minSplit : Math.ceil(maxLength / splits);
      const direct = splits === 1 ? 1 : 0;
      attnParams.set({ tokens, nHeads, nKvHeads, headDim, blockSize, maxTokens, groupBase: meta.groupBase, groups, window, splits, splitLen, scale, direct, accOffset, softcap });
      const items = rows * splits;
      const workgroups = grouped ? nKvHeads * groups * splits : software ? Math.ceil(items / WG) : items;
      dispatch(pass, attn, attnGroup, ...grid(workgroups, maxDim));
      if (!direct) {
        combineParams.set({ rows, headDim, splits, accOffset });
        dispatch(pass, combine, combineGroup, ...grid(Math.ceil((rows * headDim) / WG), maxDim));
      }
    },
    destroy() {
      writeParams.destroy();
      attnParams.destroy();
      combineParams.destroy();
    },
  };
}
