// What continuous batching buys: one decode step over the rows of n sequences against n
// one-row steps, on the Qwen2.5-0.5B-shaped bench model (or --model DIR), with and without
// batchInvariant (software variant: every step on the matvec kernels, longer ones in groups of 8
// rows; GPU variant: every step on the matmul kernels).
//
//   pnpm tsx bench/src/batch-steps.ts [--model DIR] [--dtype bf16|f32] [--quantize q8|q4] [--seqs 8] [--context 64] [--rounds 3]
//                                     [--invariant both|false|true] [--profile]
// --profile adds each op kind's GPU time (timestamp queries, each op in its own pass) in a one-row
// step and in one n-row step.

import { loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import { getGpu, loadModel, type Batch, type Sequence } from '@webgpu-chat/engine';
import { StepProfiler } from '@webgpu-chat/engine/internal';
import { benchModel, benchPrompt, timed } from './engine-run.ts';

const { values: a } = parseArgs({
  options: {
    model: { type: 'string' },
    dtype: { type: 'string', default: 'bf16' },
    quantize: { type: 'string' },
    seqs: { type: 'string', default: '8' },
    context: { type: 'string', default: '64' },
    rounds: { type: 'string', default: '3' },
    invariant: { type: 'string', default: 'both' },
    profile: { type: 'boolean', default: false },
  },
});
const n = Number(a.seqs);
const context = Number(a.context);
const rounds = Number(a.rounds);
const dir = a.model ?? benchModel();
const gpu = await getGpu();
const model = await loadModel(dir, {
  gpu,
  dtype: a.dtype as 'bf16' | 'f32',
  ...(a.quantize ? { quantize: a.quantize as 'q8' | 'q4' } : {}),
});
const vocab = model.info.vocabSize;
console.log(`${dir}: ${a.quantize ?? a.dtype}, ${model.info.variant} kernels, ${n} sequences of ${context} tokens`);

/** Median seconds of `f` over the rounds, after one untimed warm-up. */
async function median(f: () => Promise<void>): Promise<number> {
  await f();
  const t = [];
  for (let i = 0; i < rounds; i++) t.push((await timed(f)).wallS);
  return t.sort((x, y) => x - y)[Math.floor(rounds / 2)]!;
}

for (const batchInvariant of a.invariant === 'both' ? [false, true] : [a.invariant === 'true']) {
  const batch: Batch = model.createBatch({ maxSequences: n, kvBlocks: n * Math.ceil((context + 1) / 16), batchInvariant });
  const seqs: Sequence[] = [];
  for (let i = 0; i < n; i++) {
    const s = batch.createSequence();
    batch.step([{ seq: s, tokens: benchPrompt(context, vocab, i) }]);
    await batch.argmax(0);
    seqs.push(s);
  }
  // Every timed step decodes at position `context` and is rolled back, so each round is alike.
  const token = (i: number) => benchPrompt(1, vocab, 100 + i);
  const rollBack = () => seqs.forEach((s) => batch.truncate(s, context));
  const one = await median(async () => {
    batch.step([{ seq: seqs[0]!, tokens: token(0) }]);
    await batch.argmax(0);
    rollBack();
  });
  const single = await median(async () => {
    for (const [i, seq] of seqs.entries()) {
      batch.step([{ seq, tokens: token(i) }]);
      await batch.argmax(0);
    }
    rollBack();
  });
  const together = await median(async () => {
    batch.step(seqs.map((seq, i) => ({ seq, tokens: token(i) })));
    await batch.reduceRows(
      seqs.map((_, r) => r),
      0,
    );
    rollBack();
  });
  console.log(
    `batchInvariant ${batchInvariant}: one one-row step ${(one * 1000).toFixed(0)} ms, ${n} one-row steps ${(single * 1000).toFixed(0)} ms (${((single / n) * 1000).toFixed(0)} ms each), ` +
      `one ${n}-row step ${(together * 1000).toFixed(0)} ms (${(together / one).toFixed(2)}x a one-row step): ${(single / together).toFixed(2)}x the decode throughput (load ${loadavg()[0]!.toFixed(2)})`,
  );
  if (a.profile) {
    const profiler = new StepProfiler(gpu.device);
    const b = batch as Batch & { profiler: StepProfiler | undefined };
    b.profiler = profiler;
    const shares = async (rows: number) => {
      profiler.reset();
      for (let r = 0; r < rounds; r++) {
        batch.step(seqs.slice(0, rows).map((seq, i) => ({ seq, tokens: token(i) })));
        await batch.reduceRows(
          seqs.slice(0, rows).map((_, i) => i),
          0,
        );
        rollBack();
      }
      return new Map([...profiler.totals].map(([k, v]) => [k, v / rounds]));
    };
    const one = await shares(1);
    const all = await shares(n);
    const fmt = (m: Map<string, number>) => [...m].map(([k, v]) => `${k} ${v.toFixed(1)}`).join(', ');
    const sum = (m: Map<string, number>) => [...m.values()].reduce((x, y) => x + y, 0);
    console.log(`  GPU ms by op, one-row step (${sum(one).toFixed(1)}): ${fmt(one)}`);
    console.log(`  GPU ms by op, ${n}-row step (${sum(all).toFixed(1)}): ${fmt(all)}`);
    b.profiler = undefined;
    profiler.destroy();
  }
  batch.dispose();
}
model.dispose();
process.exit(0);
