// RoPE applied in place to the q and k projections of T tokens, each at the position the
// step's positions buffer gives it (kernels/rope.wgsl).

import { bindGroup, dispatch, grid } from '../kernel.ts';
import { bufferFrom } from '../buffers.ts';
import type { RopeFrequencies } from '../rope-frequencies.ts';
import { type OpContext, ParamsBuffer } from './context.ts';

export class RopeError extends Error {
  override name = 'RopeError';
}

export interface RopeOptions {
  nHeads: number;
  nKvHeads: number;
  headDim: number;
  /** From ropeInvFreq; invFreq.length * 2 dims are rotated (<= headDim). */
  frequencies: RopeFrequencies;
}

export interface RopeOp {
  /** Rotates q and k rows 0..tokens-1, row t as position positions[t]. */
  encode(pass: GPUComputePassEncoder, tokens: number): void;
  /** Replaces the frequencies (dynamic NTK and LongRoPE change them with the sequence length). */
  setFrequencies(frequencies: RopeFrequencies): void;
  destroy(): void;
}

const WG = 64;

/**
 * q: [maxTokens, nHeads * headDim] f32, k: [maxTokens, nKvHeads * headDim] f32 (rewritten in place),
 * positions: u32 [maxTokens] or longer (a StepMeta buffer starts with them).
 */
export function createRope(ctx: OpContext, opts: RopeOptions, q: GPUBuffer, k: GPUBuffer, positions: GPUBuffer): RopeOp {
  const { nHeads, nKvHeads, headDim } = opts;
  const half = opts.frequencies.invFreq.length;
  if (half < 1 || 2 * half > headDim) throw new RopeError(`rotary dim ${2 * half} must be in [2, headDim ${headDim}]`);
  const maxTokens = Math.floor(q.size / (nHeads * headDim * 4));
  if (Math.floor(k.size / (nKvHeads * headDim * 4)) < maxTokens) throw new RopeError('k buffer holds fewer tokens than q');
  if (positions.size < maxTokens * 4) throw new RopeError('positions buffer holds fewer tokens than q');
  const kernel = ctx.kernels.get('rope', {}, { WG });
  const params = new ParamsBuffer(ctx.device, kernel);
  const invFreq = bufferFrom(ctx.device, opts.frequencies.invFreq, 'rope invFreq');
  let scaling = opts.frequencies.attentionScaling;
  const group = bindGroup(ctx.device, kernel, [params.buffer, q, k, invFreq, positions]);
  return {
    encode(pass, tokens) {
      if (!(tokens >= 1 && tokens <= maxTokens)) throw new RopeError(`tokens ${tokens} outside 1..${maxTokens}`);
      params.set({ tokens, nHeads, nKvHeads, headDim, half, scaling });
      const threads = tokens * (nHeads + nKvHeads) * half;
      dispatch(pass, kernel, group, ...grid(Math.ceil(threads / WG), ctx.limits.maxComputeWorkgroupsPerDimension));
    },
    setFrequencies(f) {
      if (f.invFreq.length !== half) throw new RopeError(`expected ${half} frequencies, got ${f.invFreq.length}`);
      ctx.device.queue.writeBuffer(invFreq, 0, f.invFreq);
      scaling = f.attentionScaling;
    },
    destroy() {
      params.destroy();
      invFreq.destroy();
    },
  };
}
