import { describe, expect, it } from 'vitest';
import { bufferFrom, emptyBuffer, readF32 } from '../src/buffers.ts';
import { AttentionError, createAttention } from '../src/ops/attention.ts';
import type { OpContext, Variant } from '../src/ops/context.ts';
import { expectClose, kernels, randomArray, testGpu } from './harness.ts';

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
    const scale = 1 / Math.sqrt(D);
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
          scores[j - lo] = s * scale;
          m = Math.max(m, s * scale);
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

/** Runs encode steps [tokens, startPos, check] on one op, comparing each checked step with the reference. */
async function run(kind: Kind, s: Shape, steps: [number, number, boolean?][], opts: { maxContext?: number; window?: number; sinks?: boolean } = {}): Promise<void> {
  const ctx = await context(kind.variant);
  const maxContext = opts.maxContext ?? 64;
  const maxT = Math.max(...steps.map((x) => x[0]));
  const dev = ctx.device;
  const q = emptyBuffer(dev, maxT * s.nHeads * s.headDim * 4);
  const k = emptyBuffer(dev, maxT * s.nKvHeads * s.headDim * 4);
  const v = emptyBuffer(dev, maxT * s.nKvHeads * s.headDim * 4);
  const out = emptyBuffer(dev, maxT * s.nHeads * s.headDim * 4);
  const sinks = opts.sinks ? randomArray(s.nHeads, s.headDim, 3) : undefined;
  const sinkBuf = sinks ? bufferFrom(dev, sinks) : undefined;
  const op = createAttention(
    ctx,
    { ...s, maxContext, ...(opts.window ? { slidingWindow: opts.window } : {}), ...(sinkBuf ? { sinks: sinkBuf } : {}), ...(kind.grouped ? {} : { perRow: true }) },
    q,
    k,
    v,
    out,
  );
  const ref = new Reference(s, maxContext, opts.window, sinks);
  let seed = s.nHeads * 1000 + s.headDim;
  for (const [T, startPos, check = true] of steps) {
    const qd = randomArray(T * s.nHeads * s.headDim, seed++, 2);
    const kd = randomArray(T * s.nKvHeads * s.headDim, seed++, 2);
    const vd = randomArray(T * s.nKvHeads * s.headDim, seed++, 1);
    dev.queue.writeBuffer(q, 0, new Float32Array(qd));
    dev.queue.writeBuffer(k, 0, new Float32Array(kd));
    dev.queue.writeBuffer(v, 0, new Float32Array(vd));
    const enc = dev.createCommandEncoder();
    const pass = enc.beginComputePass();
    op.encode(pass, T, startPos);
    pass.end();
    dev.queue.submit([enc.finish()]);
    const want = ref.step(qd, kd, vd, T, startPos, check);
    if (want) {
      const got = await readF32(dev, out, T * s.nHeads * s.headDim);
      expectClose(got, want, { relL2: 2e-6, maxAbs: 1e-5 }, `${kind.name} T=${T} startPos=${startPos}`);
    }
  }
  op.destroy();
  sinkBuf?.destroy();
  q.destroy();
  k.destroy();
  v.destroy();
  out.destroy();
}

const shapes: Shape[] = [
  { nHeads: 14, nKvHeads: 2, headDim: 64 },
  { nHeads: 8, nKvHeads: 1, headDim: 48 },
  { nHeads: 7, nKvHeads: 1, headDim: 32 },
  { nHeads: 4, nKvHeads: 4, headDim: 128 },
  { nHeads: 6, nKvHeads: 2, headDim: 16 },
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
          await run(kind, s, [[T, 0]]);
          await run(kind, s, [[20, 0], [T, 20], [1, 20 + T]]);
        });
      }
    }

    it('rolls back: encoding at an earlier position overwrites the stale tail', async ({ skip }) => {
      await skipUnlessGrouped(skip);
      await run(kind, shapes[0]!, [[30, 0], [5, 10], [1, 15]]);
    });

    it('splits a long decode context (1500 positions) and a prefill past 700', async ({ skip }) => {
      await skipUnlessGrouped(skip);
      await run(kind, { nHeads: 14, nKvHeads: 2, headDim: 64 }, [[1499, 0, false], [1, 1499]], { maxContext: 1600 });
      await run(kind, { nHeads: 8, nKvHeads: 1, headDim: 48 }, [[700, 0, false], [5, 700], [1, 705]], { maxContext: 1600 });
    });

    it('adds attention sinks to each softmax (prefill, decode, split long decode, sliding window)', async ({ skip }) => {
      await skipUnlessGrouped(skip);
      await run(kind, shapes[0]!, [[37, 0], [1, 37]], { sinks: true });
      await run(kind, { nHeads: 8, nKvHeads: 2, headDim: 48 }, [[700, 0, false], [1, 700], [5, 701]], { maxContext: 800, sinks: true, window: 128 });
    });

    it('applies a sliding window (prefill, decode, long decode with empty splits)', async ({ skip }) => {
      await skipUnlessGrouped(skip);
      await run(kind, { nHeads: 8, nKvHeads: 2, headDim: 48 }, [[37, 0], [20, 37], [1, 57]], { window: 16 });
      await run(kind, { nHeads: 7, nKvHeads: 1, headDim: 32 }, [[1200, 0, false], [1, 1200], [3, 1201]], { maxContext: 1300, window: 300 });
    });
  });
}

describe('attention: guards', () => {
  it('refuses a cache over the storage binding limit and positions past maxContext', async () => {
    const ctx = await context('software');
    const b = emptyBuffer(ctx.device, 8 * 128 * 4);
    expect(() => createAttention(ctx, { nHeads: 8, nKvHeads: 8, headDim: 128, maxContext: 1 << 20 }, b, b, b, b)).toThrow(
      /storage binding limit.*maxContext <= /,
    );
    expect(() => createAttention(ctx, { nHeads: 6, nKvHeads: 4, headDim: 128, maxContext: 16 }, b, b, b, b)).toThrow(AttentionError);
    const out = emptyBuffer(ctx.device, 8 * 128 * 4);
    const op = createAttention(ctx, { nHeads: 8, nKvHeads: 8, headDim: 128, maxContext: 16 }, b, b, b, out);
    const pass = ctx.device.createCommandEncoder().beginComputePass();
    expect(() => op.encode(pass, 1, 16)).toThrow(/exceed the cache/);
    op.destroy();
  });
});
