import { describe, expect, it } from 'vitest';
import { bufferFrom, emptyBuffer, readF32 } from '../src/buffers.ts';
import { AttentionError, createAttention, createAttentionPartials, createKvCache } from '../src/ops/attention.ts';
import type { OpContext, Variant } from '../src/ops/context.ts';
import { StepMeta } from '../src/ops/step-meta.ts';
import { expectClose, kernels, randomArray, rng, testGpu } from './harness.ts';

/** The kernels under test: the GPU shape, and the software one per query row or grouped through subgroups of 8. */
interface Kind {
  name: string;
  variant: Variant;
  grouped?: boolean;
}
const KINDS: Kind[] = [
  { name: 'software, a thread per query row', variant: 'software' },
  { name: 'software, query rows grouped by subgroups of 8', variant: 'software', grouped: true },
  { name: 'gpu', variant: 'gpu' },
];

async function context(variant: Variant): Promise<OpContext> {
  const gpu = await testGpu();
  return {
    device: gpu.device,
    kernels: kernels(gpu),
    variant,
    f16: gpu.hasF16,
    subgroups: gpu.hasSubgroups,
    ...(gpu.subgroupSize ? { subgroupSize: gpu.subgroupSize } : {}),
    limits: gpu.info.limits,
  };
}

interface Shape {
  nHeads: number;
  nKvHeads: number;
  headDim: number;
}

/** Float64 attention over a host copy of the cache: [nKvHeads][position][headDim]. */
class Reference {
  k: Float64Array[];
  v: Float64Array[];
  constructor(
    private s: Shape,
    maxContext: number,
    private window = 0,
    /** [nHeads] logits that join each softmax's denominator (GPT-OSS). */
    private sinks?: Float32Array,
    /** q·k scale (default 1/sqrt(headDim)) and soft-cap (Gemma 2). */
    private score: { scale?: number; softcap?: number } = {},
  ) {
    this.k = Array.from({ length: s.nKvHeads }, () => new Float64Array(maxContext * s.headDim));
    this.v = Array.from({ length: s.nKvHeads }, () => new Float64Array(maxContext * s.headDim));
  }

  /** Stores the new k/v rows and, when `attend`, returns the attention output of the T queries. */
  step(q: Float32Array, k: Float32Array, v: Float32Array, T: number, startPos: number, attend: boolean): Float64Array | undefined {
    const { nHeads, nKvHeads, headDim: D } = this.s;
    for (let t = 0; t < T; t++)
      for (let h = 0; h < nKvHeads; h++)
        for (let d = 0; d < D; d++) {
          this.k[h]![(startPos + t) * D + d] = k[(t * nKvHeads + h) * D + d]!;
          this.v[h]![(startPos + t) * D + d] = v[(t * nKvHeads + h) * D + d]!;
        }
    if (!attend) return undefined;
    const out = new Float64Array(T * nHeads * D);
    const scale = this.score.scale ?? 1 / Math.sqrt(D);
    const cap = this.score.softcap ?? 0;
    const scored = (x: number) => (cap ? cap * Math.tanh((x * scale) / cap) : x * scale);
    for (let t = 0; t < T; t++) {
      const pos = startPos + t;
      const lo = this.window ? Math.max(0, pos - this.window + 1) : 0;
      for (let h = 0; h < nHeads; h++) {
        const kv = Math.floor(h / (nHeads / nKvHeads));
        const K = this.k[kv]!;
        const V = this.v[kv]!;
        const qb = (t * nHeads + h) * D;
        const scores = new Float64Array(pos + 1 - lo);
        const sink = this.sinks?.[h];
        let m = sink ?? -Infinity;
        for (let j = lo; j <= pos; j++) {
          let s = 0;
          for (let d = 0; d < D; d++) s += q[qb + d]! * K[j * D + d]!;
          scores[j - lo] = scored(s);
          m = Math.max(m, scored(s));
        }
        let sum = sink === undefined ? 0 : Math.exp(sink - m);
        for (let j = 0; j < scores.length; j++) sum += scores[j] = Math.exp(scores[j]! - m);
        for (let j = lo; j <= pos; j++) {
          const w = scores[j - lo]! / sum;
          for (let d = 0; d < D; d++) out[qb + d] += w * V[j * D + d]!;
        }
      }
    }
    return out;
  }
}

/** One sequence's tokens in a test step; at `position` (a rollback) or by default after its cached tokens. */
interface Run {
  seq: number;
  tokens: number;
  position?: number;
  /** Compare this run's rows with the reference (default true). */
  check?: boolean;
}

interface RunOptions {
  maxContext?: number;
  window?: number;
  sinks?: boolean;
  blockSize?: number;
  scale?: number;
  softcap?: number;
}

/**
 * Runs steps of several sequences' runs through one op over a paged cache whose blocks are
 * handed out in a shuffled order (so no sequence's blocks are contiguous), comparing each
 * checked run's rows with a float64 reference per sequence.
 */
async function run(kind: Kind, s: Shape, steps: Run[][], opts: RunOptions = {}): Promise<void> {
  const ctx = await context(kind.variant);
  const maxContext = opts.maxContext ?? 64;
  const blockSize = opts.blockSize ?? 16;
  const nSeqs = Math.max(...steps.flat().map((r) => r.seq)) + 1;
  const maxBlocks = Math.ceil(maxContext / blockSize);
  const numBlocks = nSeqs * maxBlocks + 3;
  const freeBlocks = Array.from({ length: numBlocks }, (_, i) => i);
  const shuffle = rng(numBlocks * 31 + blockSize);
  for (let i = freeBlocks.length - 1; i > 0; i--) {
    const j = Math.floor(shuffle() * (i + 1));
    [freeBlocks[i], freeBlocks[j]] = [freeBlocks[j]!, freeBlocks[i]!];
  }
  const maxT = Math.max(...steps.map((st) => st.reduce((n, r) => n + r.tokens, 0)));
  const dev = ctx.device;
  const meta = new StepMeta(dev, { maxTokens: maxT, maxRuns: nSeqs, maxBlocks, blockSize, groupSize: s.nHeads / s.nKvHeads });
  const q = emptyBuffer(dev, maxT * s.nHeads * s.headDim * 4);
  const k = emptyBuffer(dev, maxT * s.nKvHeads * s.headDim * 4);
  const v = emptyBuffer(dev, maxT * s.nKvHeads * s.headDim * 4);
  const out = emptyBuffer(dev, maxT * s.nHeads * s.headDim * 4);
  const sinks = opts.sinks ? randomArray(s.nHeads, s.headDim, 3) : undefined;
  const sinkBuf = sinks ? bufferFrom(dev, sinks) : undefined;
  const partials = createAttentionPartials(ctx, { nHeads: s.nHeads, headDim: s.headDim, maxTokens: maxT, maxLength: maxContext });
  const cache = createKvCache(ctx, { numBlocks, nKvHeads: s.nKvHeads, blockSize, headDim: s.headDim });
  const op = createAttention(
    ctx,
    {
      ...s,
      ...(opts.window ? { slidingWindow: opts.window } : {}),
      ...(sinkBuf ? { sinks: sinkBuf } : {}),
      ...(kind.grouped ? {} : { perRow: true }),
      ...(opts.scale !== undefined ? { scale: opts.scale } : {}),
      ...(opts.softcap !== undefined ? { softcap: opts.softcap } : {}),
    },
    meta,
    cache,
    q,
    k,
    v,
    out,
    partials,
  );
  const score = { ...(opts.scale !== undefined ? { scale: opts.scale } : {}), ...(opts.softcap !== undefined ? { softcap: opts.softcap } : {}) };
  const refs = Array.from({ length: nSeqs }, () => new Reference(s, maxContext, opts.window, sinks, score));
  const lengths = new Array<number>(nSeqs).fill(0);
  const blocks = Array.from({ length: nSeqs }, () => [] as number[]);
  let seed = s.nHeads * 1000 + s.headDim;
  const qRow = s.nHeads * s.headDim;
  const kvRow = s.nKvHeads * s.headDim;
  for (const step of steps) {
    const T = step.reduce((n, r) => n + r.tokens, 0);
    const qd = randomArray(T * qRow, seed++, 2);
    const kd = randomArray(T * kvRow, seed++, 2);
    const vd = randomArray(T * kvRow, seed++, 1);
    const runs = step.map((r) => {
      const position = r.position ?? lengths[r.seq]!;
      lengths[r.seq] = position + r.tokens;
      while (blocks[r.seq]!.length < Math.ceil(lengths[r.seq]! / blockSize)) blocks[r.seq]!.push(freeBlocks.pop()!);
      return { tokens: r.tokens, position, blocks: blocks[r.seq]! };
    });
    dev.queue.writeBuffer(q, 0, new Float32Array(qd));
    dev.queue.writeBuffer(k, 0, new Float32Array(kd));
    dev.queue.writeBuffer(v, 0, new Float32Array(vd));
    const shape = meta.write(runs);
    const enc = dev.createCommandEncoder();
    const pass = enc.beginComputePass();
    op.encode(pass, shape);
    pass.end();
    dev.queue.submit([enc.finish()]);
    const got = step.some((r) => r.check !== false) ? await readF32(dev, out, T * qRow) : undefined;
    let t = 0;
    step.forEach((r, i) => {
      const check = got !== undefined && r.check !== false;
      const want = refs[r.seq]!.step(
        qd.subarray(t * qRow, (t + r.tokens) * qRow),
        kd.subarray(t * kvRow, (t + r.tokens) * kvRow),
        vd.subarray(t * kvRow, (t + r.tokens) * kvRow),
        r.tokens,
        runs[i]!.position,
        check,
      );
      if (want) expectClose(got!.subarray(t * qRow, (t + r.tokens) * qRow), want, { relL2: 2e-6, maxAbs: 1e-5 }, `${kind.name} seq ${r.seq}: ${r.tokens} at ${runs[i]!.position}`);
      t += r.tokens;
    });
  }
  op.destroy();
  cache.k.destroy();
  cache.v.destroy();
  meta.destroy();
  partials.buffer.destroy();
  sinkBuf?.destroy();
  q.destroy();
  k.destroy();
  v.destroy();
  out.destroy();
}

/** Steps of one sequence: [tokens, position, check]. */
const one = (steps: [number, number, boolean?][]): Run[][] => steps.map(([tokens, position, check]) => [{ seq: 0, tokens, position, ...(check === false ? { check } : {}) }]);

const shapes: Shape[] = [
  { nHeads: 14, nKvHeads: 2, headDim: 64 },
  { nHeads: 8, nKvHeads: 1, headDim: 48 },
  { nHeads: 7, nKvHeads: 1, headDim: 32 },
  { nHeads: 4, nKvHeads: 4, headDim: 128 },
  { nHeads: 6, nKvHeads: 2, headDim: 16 },
];

/** Four sequences of different lengths: prefills, then a mixed step (decode rows and a prefill chunk), then decode-only steps. */
const MIXED: Run[][] = [
  [{ seq: 0, tokens: 23 }, { seq: 1, tokens: 5 }],
  [{ seq: 1, tokens: 1 }, { seq: 2, tokens: 30 }, { seq: 0, tokens: 1 }],
  [{ seq: 0, tokens: 1 }, { seq: 3, tokens: 3 }, { seq: 1, tokens: 9 }, { seq: 2, tokens: 1 }],
  [{ seq: 3, tokens: 1 }, { seq: 2, tokens: 1 }, { seq: 1, tokens: 1 }, { seq: 0, tokens: 1 }],
  [{ seq: 2, tokens: 1 }, { seq: 0, tokens: 1 }, { seq: 3, tokens: 1 }, { seq: 1, tokens: 1 }],
];

for (const kind of KINDS) {
  describe(`attention (${kind.name})`, () => {
    // The grouped kernel needs subgroups of exactly 8 (lavapipe); elsewhere the op falls back to a row per thread.
    const skipUnlessGrouped = async (skip: (note: string) => void) => {
      const gpu = await testGpu();
      if (kind.grouped && !(gpu.hasSubgroups && gpu.subgroupSize === 8)) skip('the adapter has no subgroups of exactly 8');
    };
    for (const s of shapes) {
      const name = `${s.nHeads}/${s.nKvHeads}x${s.headDim}`;
      for (const T of [1, 5, 37]) {
        it(`${name}: prefill ${T} at 0; prefill ${T} at 20 after 20, then decode`, async ({ skip }) => {
          await skipUnlessGrouped(skip);
          await run(kind, s, one([[T, 0]]));
          await run(kind, s, one([[20, 0], [T, 20], [1, 20 + T]]), { blockSize: 7 });
        });
      }
      it(`${name}: four sequences in one step (prefill and decode rows mixed), blocks of 16, 5 and 1`, async ({ skip }) => {
        await skipUnlessGrouped(skip);
        for (const blockSize of [16, 5, 1]) await run(kind, s, MIXED, { blockSize });
      });
    }

    it('rolls back: encoding at an earlier position overwrites the stale tail', async ({ skip }) => {
      await skipUnlessGrouped(skip);
      await run(kind, shapes[0]!, one([[30, 0], [5, 10], [1, 15]]), { blockSize: 6 });
      await run(kind, shapes[1]!, [[{ seq: 0, tokens: 30 }, { seq: 1, tokens: 12 }], [{ seq: 1, tokens: 1 }, { seq: 0, tokens: 5, position: 10 }], [{ seq: 0, tokens: 1 }, { seq: 1, tokens: 2, position: 3 }]], { blockSize: 4 });
    });

    it('splits a long decode context (1500 positions) and a prefill past 700', async ({ skip }) => {
      await skipUnlessGrouped(skip);
      await run(kind, { nHeads: 14, nKvHeads: 2, headDim: 64 }, one([[1499, 0, false], [1, 1499]]), { maxContext: 1600 });
      await run(kind, { nHeads: 8, nKvHeads: 1, headDim: 48 }, one([[700, 0, false], [5, 700], [1, 705]]), { maxContext: 1600, blockSize: 13 });
    });

    it('splits sequences of very different lengths in one step (700 and 40 positions, decode and prefill)', async ({ skip }) => {
      await skipUnlessGrouped(skip);
      await run(
        kind,
        { nHeads: 8, nKvHeads: 2, headDim: 48 },
        [
          [{ seq: 0, tokens: 700, check: false }, { seq: 1, tokens: 39, check: false }],
          [{ seq: 1, tokens: 1 }, { seq: 0, tokens: 1 }, { seq: 2, tokens: 6 }],
          [{ seq: 0, tokens: 3 }, { seq: 2, tokens: 1 }, { seq: 1, tokens: 1 }],
        ],
        { maxContext: 800, blockSize: 9 },
      );
    });

    it('adds attention sinks to each softmax (prefill, decode, several sequences, split long decode, sliding window)', async ({ skip }) => {
      await skipUnlessGrouped(skip);
      await run(kind, shapes[0]!, one([[37, 0], [1, 37]]), { sinks: true });
      await run(kind, { nHeads: 6, nKvHeads: 2, headDim: 16 }, MIXED, { sinks: true, blockSize: 5 });
      await run(kind, { nHeads: 8, nKvHeads: 2, headDim: 48 }, [[{ seq: 0, tokens: 700, check: false }], [{ seq: 0, tokens: 1 }, { seq: 1, tokens: 20 }], [{ seq: 1, tokens: 1 }, { seq: 0, tokens: 5 }]], {
        maxContext: 800,
        sinks: true,
        window: 128,
      });
    });

    it('scales q·k and soft-caps the scores (Gemma 2: query_pre_attn_scalar, attn_logit_softcapping), with a window', async ({ skip }) => {
      await skipUnlessGrouped(skip);
      // Scores of these inputs reach ±10 and more, so a cap of 3 bends most of them.
      await run(kind, shapes[0]!, one([[37, 0], [1, 37]]), { scale: 0.4, softcap: 3 });
      await run(kind, { nHeads: 6, nKvHeads: 2, headDim: 16 }, MIXED, { scale: 0.3, softcap: 2.5, blockSize: 5, window: 9 });
      await run(kind, { nHeads: 8, nKvHeads: 2, headDim: 48 }, [[{ seq: 0, tokens: 700, check: false }], [{ seq: 0, tokens: 1 }, { seq: 1, tokens: 20 }]], {
        maxContext: 800,
        softcap: 1.5,
      });
    });

    it('applies a sliding window (prefill, decode, several sequences, long decode with empty splits)', async ({ skip }) => {
      await skipUnlessGrouped(skip);
      await run(kind, { nHeads: 8, nKvHeads: 2, headDim: 48 }, one([[37, 0], [20, 37], [1, 57]]), { window: 16, blockSize: 5 });
      await run(kind, { nHeads: 14, nKvHeads: 2, headDim: 64 }, MIXED, { window: 7, blockSize: 3 });
      await run(kind, { nHeads: 7, nKvHeads: 1, headDim: 32 }, one([[1200, 0, false], [1, 1200], [3, 1201]]), { maxContext: 1300, window: 300 });
    });
  });
}

describe('attention: guards', () => {
  it('refuses a pool over the storage binding limit and a step larger than the meta', async () => {
    const ctx = await context('software');
    const meta = new StepMeta(ctx.device, { maxTokens: 8, maxRuns: 2, maxBlocks: 4, blockSize: 16, groupSize: 1 });
    const b = emptyBuffer(ctx.device, 8 * 8 * 128 * 4);
    const part = createAttentionPartials(ctx, { nHeads: 8, headDim: 128, maxTokens: 8, maxLength: 64 });
    expect(() => createKvCache(ctx, { nKvHeads: 8, headDim: 128, blockSize: 16, numBlocks: 1 << 16 })).toThrow(/storage binding limit.*at most \d+ blocks/);
    const cache = createKvCache(ctx, { nKvHeads: 8, headDim: 128, blockSize: 16, numBlocks: 4 });
    expect(() => createAttention(ctx, { nHeads: 6, nKvHeads: 4, headDim: 128 }, meta, cache, b, b, b, b, part)).toThrow(AttentionError);
    expect(() => createAttention(ctx, { nHeads: 8, nKvHeads: 4, headDim: 128 }, meta, cache, b, b, b, b, part)).toThrow(/groups 1 query heads/);
    expect(() => createAttention(ctx, { nHeads: 8, nKvHeads: 8, headDim: 128 }, meta, { ...cache, blockSize: 8 }, b, b, b, b, part)).toThrow(/KV cache holds blocks of 8 positions/);
    const op = createAttention(ctx, { nHeads: 8, nKvHeads: 8, headDim: 128 }, meta, cache, b, b, b, b, part);
    const pass = ctx.device.createCommandEncoder().beginComputePass();
    expect(() => op.encode(pass, { tokens: 9, maxLength: 9, groups: 9 })).toThrow(/outside 1..8/);
    expect(() => meta.write([{ tokens: 5, position: 60, blocks: [0, 1, 2, 3] }])).toThrow(/too few blocks/);
    expect(() => meta.write([{ tokens: 5, position: 0, blocks: [0] }, { tokens: 4, position: 0, blocks: [1] }])).toThrow(/more than 8 tokens/);
    expect(() => createAttention(ctx, { nHeads: 8, nKvHeads: 8, headDim: 64 }, meta, { ...cache, headDim: 64 }, b, b, b, b, part)).toThrow(/partials hold rows of 128/);
    op.destroy();
    cache.k.destroy();
    cache.v.destroy();
    meta.destroy();
    part.buffer.destroy();
  });
});
