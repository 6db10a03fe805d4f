// Continuous batching: several sequences stepped together over one paged KV cache must give
// what each gives alone through a Session (stories260K, a real trained model, and a generated
// Qwen2-shaped one against the float64 reference), and the block pool must account for every
// block through forks, truncations, frees and a full cache.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { KvCacheFullError } from '../src/batch.ts';
import { loadModel } from '../src/model.ts';
import { parseConfig } from '../src/models/family.ts';
import { directorySource } from '../src/files.ts';
import { openCheckpoint } from '../src/safetensors.ts';
import type { Batch, Model, Sequence } from '../src/types.ts';
import { writeGeneratedModel } from './generated-model.ts';
import { expectClose, rng, testGpu } from './harness.ts';
import { BUNDLED_MODEL } from './paths.ts';
import { readTensors, referenceForward } from './reference-model.ts';

const models: Model[] = [];
afterAll(() => models.forEach((m) => m.dispose()));

async function load(dir: string, variant: 'software' | 'gpu'): Promise<Model> {
  const model = await loadModel(dir, { gpu: await testGpu(), dtype: 'f32', variant });
  models.push(model);
  return model;
}

/** BOS and then seeded ids of the stories260K vocabulary. */
function prompt(length: number, seed: number): number[] {
  const r = rng(seed);
  return [1, ...Array.from({ length: length - 1 }, () => 3 + Math.floor(r() * 509))];
}

/** Rows of logits compared in full (the rest by their greedy token). */
const LOGIT_STEPS = 12;

interface Greedy {
  tokens: number[];
  /** Logits of the first LOGIT_STEPS predictions. */
  logits: Float32Array[];
}

async function alone(model: Model, ids: number[], n: number): Promise<Greedy> {
  const s = model.createSession();
  const out: Greedy = { tokens: [], logits: [] };
  s.forward(ids);
  for (let i = 0; i < n; i++) {
    if (i < LOGIT_STEPS) out.logits.push(await s.logits());
    const t = await s.argmax();
    out.tokens.push(t);
    if (i + 1 < n) s.forward([t]);
  }
  s.dispose();
  return out;
}

/** Bitwise equality of two logits rows (the first index that differs, or -1). */
function firstDifference(a: Float32Array, b: Float32Array): number {
  const x = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const y = new Uint32Array(b.buffer, b.byteOffset, b.length);
  if (x.length !== y.length) return 0;
  return x.findIndex((v, i) => v !== y[i]);
}

/**
 * Greedy decoding of every prompt in one batch: sequence i joins at step start[i] and feeds its
 * prompt in chunks of chunk[i] tokens (mid-prompt chunks keep no logits), while the others
 * decode; once all prompts are in, the steps are decode-only.
 */
async function batched(batch: Batch, prompts: number[][], n: number, start: number[], chunk: number[]): Promise<Greedy[]> {
  const seqs: (Sequence | undefined)[] = prompts.map(() => undefined);
  const fed = prompts.map(() => 0);
  const out: Greedy[] = prompts.map(() => ({ tokens: [], logits: [] }));
  for (let step = 0; out.some((o) => o.tokens.length < n); step++) {
    const items = [];
    const who: number[] = [];
    for (const i of prompts.keys()) {
      if (step < start[i]! || out[i]!.tokens.length >= n) continue;
      const seq = (seqs[i] ??= batch.createSequence());
      if (fed[i]! < prompts[i]!.length) {
        const tokens = prompts[i]!.slice(fed[i]!, fed[i]! + chunk[i]!);
        fed[i]! += tokens.length;
        items.push({ seq, tokens, logits: fed[i]! < prompts[i]!.length ? ('none' as const) : ('last' as const) });
        if (fed[i]! === prompts[i]!.length) who.push(i);
      } else {
        items.push({ seq, tokens: [out[i]!.tokens.at(-1)!] });
        who.push(i);
      }
    }
    // Rows are kept in item order; the items that keep one are exactly `who`, in order.
    batch.step(items);
    for (const [row, i] of who.entries()) if (out[i]!.tokens.length < LOGIT_STEPS) out[i]!.logits.push(await batch.logits(row));
    const scores = await batch.reduceRows(who.map((_, row) => row), 0);
    who.forEach((i, row) => out[i]!.tokens.push(scores[row]!.argmax));
  }
  for (const s of seqs) if (s) batch.free(s);
  return out;
}

describe('batch: stories260K (f32), sequences stepped together vs each alone', () => {
  for (const variant of ['software', 'gpu'] as const) {
    it(`${variant} kernels: 4 prompts of 1, 9, 24 and 45 tokens, 200 greedy tokens each`, async () => {
      const model = await load(BUNDLED_MODEL, variant);
      const prompts = [prompt(1, 1), prompt(9, 2), prompt(24, 3), prompt(45, 4)];
      const N = 200;
      const want = [];
      for (const p of prompts) want.push(await alone(model, p, N));
      const batch = model.createBatch({ maxSequences: 4, kvTokens: 4 * 256, blockSize: 16 });
      // Sequence 2's prompt arrives in chunks of 10 beside decode rows; 3 joins later in one chunk.
      const got = await batched(batch, prompts, N, [0, 0, 1, 3], [1, 9, 10, 45]);
      expect(batch.usedBlocks).toBe(0);
      for (const i of prompts.keys()) {
        expect(got[i]!.tokens, `sequence ${i}'s greedy tokens`).toEqual(want[i]!.tokens);
        for (const [g, row] of got[i]!.logits.entries()) expectClose(row, want[i]!.logits[g]!, { relL2: 1e-5, maxAbs: 1e-4 }, `sequence ${i}, token ${g}`);
      }
      batch.dispose();
    });
  }
});

const invarianceModel = () =>
  writeGeneratedModel({ modelType: 'qwen2', dtype: 'bfloat16', seed: 4, config: { hidden_size: 256, intermediate_size: 512, num_attention_heads: 8, num_key_value_heads: 2, vocab_size: 1000 } });

describe('batch invariance of decode steps without batchInvariant (software: the matvec runs steps of up to 8 rows)', () => {
  // The software matvec sums each of a step's rows as a one-row step does, so steps of up to
  // MATVEC_MAX_TOKENS rows need no option: a sequence decoding beside three others (4-row steps,
  // one with a 3-token prompt beside them) gives the same bits as alone in a Session.
  const cases = [
    { name: 'stories260K f32', dir: () => BUNDLED_MODEL, load: { dtype: 'f32' as const }, vocab: 512 },
    { name: 'generated bf16', dir: invarianceModel, load: {}, vocab: 1000 },
    { name: 'generated q4', dir: invarianceModel, load: { quantize: 'q4' as const }, vocab: 1000 },
  ];
  for (const c of cases)
    it(`${c.name}: greedy tokens and logits of 4 sequences alone and decoding together are the same bits`, async () => {
      const model = await loadModel(c.dir(), { gpu: await testGpu(), variant: 'software', ...c.load });
      models.push(model);
      // Prompts prefilled in steps of their own (over 8 tokens: the matmul, whose rows do not
      // depend on each other; 3 tokens: the matvec); the last joins while the others decode.
      const prompts = [prompt(20, 21), prompt(9, 22), prompt(33, 23), prompt(3, 24)].map((p) => p.map((t) => t % c.vocab));
      const N = 16;
      const want = [];
      for (const p of prompts) want.push(await alone(model, p, N));
      const batch = model.createBatch({ maxSequences: 4, kvTokens: 4 * 64, blockSize: 16 });
      const seqs = prompts.map(() => batch.createSequence());
      const got: Greedy[] = prompts.map(() => ({ tokens: [], logits: [] }));
      const record = async (who: number[]) => {
        for (const [row, i] of who.entries()) if (got[i]!.logits.length < LOGIT_STEPS) got[i]!.logits.push(await batch.logits(row));
        const scores = await batch.reduceRows(who.map((_, row) => row), 0);
        who.forEach((i, row) => got[i]!.tokens.push(scores[row]!.argmax));
      };
      for (const i of [0, 1, 2]) {
        batch.step([{ seq: seqs[i]!, tokens: prompts[i]! }]);
        await record([i]);
      }
      let rows = 0;
      for (let step = 0; got.some((g) => g.tokens.length < N); step++) {
        const who = [...prompts.keys()].filter((i) => (i < 3 || step > 1) && got[i]!.tokens.length < N);
        const items = who.map((i) => ({ seq: seqs[i]!, tokens: i === 3 && got[3]!.tokens.length === 0 ? prompts[3]! : [got[i]!.tokens.at(-1)!] }));
        rows = Math.max(rows, items.reduce((n, it) => n + it.tokens.length, 0));
        batch.step(items);
        await record(who);
      }
      expect(rows).toBe(6); // three decode rows and the 3-token prompt
      for (const i of prompts.keys()) {
        expect(got[i]!.tokens, `${c.name}: sequence ${i}'s greedy tokens`).toEqual(want[i]!.tokens);
        for (const [g, row] of got[i]!.logits.entries()) expect(firstDifference(row, want[i]!.logits[g]!), `${c.name}: sequence ${i}, token ${g}`).toBe(-1);
      }
      batch.dispose();
    });
});

describe('batch invariance (batchInvariant: every step on one kernel family)', () => {
  // Without the option a step of more than 8 rows runs the matmul, whose sums differ from the
  // matvec's in the last bits (about 1e-5 of the logits; the tests above allow for it), so a decode
  // row beside a prompt chunk differs from the same row alone. With it, every step runs the
  // matvec (software: longer steps in groups of 8 rows) or the matmul (GPU), so a row's logits do
  // not depend on its step's other rows, in every format and both variants.
  const dir = invarianceModel;
  const formats = [
    { name: 'f32', load: { dtype: 'f32' as const } },
    { name: 'bf16', load: {} },
    { name: 'q8', load: { quantize: 'q8' as const } },
    { name: 'q4', load: { quantize: 'q4' as const } },
  ];
  // The GPU kernels are slow on a CPU adapter: two formats there (a dense one and a quantized one).
  for (const [variant, names] of [['software', ['f32', 'bf16', 'q8', 'q4']], ['gpu', ['bf16', 'q4']]] as const)
    it(`${variant} kernels, ${names.join(', ')}: a sequence alone and beside three others give the same bits`, async () => {
      const folder = dir();
      for (const f of formats.filter((x) => (names as readonly string[]).includes(x.name))) {
        const model = await loadModel(folder, { gpu: await testGpu(), variant, ...f.load });
        // The longest prompt takes the short ones past one attention split (256 positions in
        // software, 128 on GPUs): alone they run unsplit, beside it split and combined; the two
        // long ones are split alone too, at the same fixed boundaries.
        const prompts = [prompt(3, 11), prompt(17, 12), prompt(270, 13), prompt(300, 14)];
        const chunks = [3, 5, 135, 150];
        const N = 8;
        const want = [];
        for (const [i, p] of prompts.entries()) {
          const one = model.createBatch({ maxSequences: 1, kvTokens: 320, batchInvariant: true });
          want.push((await batched(one, [p], N, [0], [chunks[i]!]))[0]!);
          one.dispose();
        }
        const batch = model.createBatch({ maxSequences: 4, kvTokens: 720, batchInvariant: true });
        const got = await batched(batch, prompts, N, [0, 0, 2, 4], chunks);
        for (const i of prompts.keys())
          for (const [g, row] of got[i]!.logits.entries()) expect(firstDifference(row, want[i]!.logits[g]!), `${f.name}: sequence ${i}, token ${g}`).toBe(-1);
        batch.dispose();
        model.dispose();
      }
    });
});

describe('batch: generated Qwen2-shaped model vs the float64 reference', () => {
  it('three sequences in one step (prefill, decode rows, a chunk), every row kept', async () => {
    for (const variant of ['software', 'gpu'] as const) {
      const dir = writeGeneratedModel({ modelType: 'qwen2', seed: 31, config: { num_attention_heads: 8, num_key_value_heads: 2, hidden_size: 64 } });
      const cfg = parseConfig(JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')));
      const tensors = await readTensors(await openCheckpoint(directorySource(dir)));
      const model = await load(dir, variant);
      const ids = [
        [1, 17, 250, 3, 99, 42, 42, 7, 310, 5, 64, 128, 200, 11, 12, 13, 14, 15, 16, 19, 21],
        [1, 5, 9],
        [7, 7, 8, 100, 101, 102, 3, 4, 5, 6, 2, 9, 30, 31, 32, 33, 34, 35],
      ];
      const want = ids.map((t) => referenceForward(cfg, tensors, t));
      // 7 + 1 + 6 blocks of 3: the pool is exactly full after the second step.
      const batch = model.createBatch({ maxSequences: 3, kvBlocks: 14, blockSize: 3 });
      const [a, b, c] = [batch.createSequence(), batch.createSequence(), batch.createSequence()];
      batch.step([{ seq: a, tokens: ids[0]!.slice(0, 17) }, { seq: b, tokens: ids[1]!.slice(0, 2) }], { logitRows: 'all' });
      const first = await Promise.all(Array.from({ length: 19 }, (_, r) => batch.logits(r)));
      for (let t = 0; t < 17; t++) expectClose(first[t]!, want[0]![t]!, { relL2: 2e-5 }, `${variant}: a at ${t}`);
      for (let t = 0; t < 2; t++) expectClose(first[17 + t]!, want[1]![t]!, { relL2: 2e-5 }, `${variant}: b at ${t}`);
      const rows = batch.step([{ seq: c, tokens: ids[2]! }, { seq: b, tokens: ids[1]!.slice(2) }, { seq: a, tokens: ids[0]!.slice(17) }], { logitRows: 'all' });
      expect(rows).toEqual([0, 18, 19]);
      for (let t = 0; t < 18; t++) expectClose(await batch.logits(t), want[2]![t]!, { relL2: 2e-5 }, `${variant}: c at ${t}`);
      expectClose(await batch.logits(18), want[1]![2]!, { relL2: 2e-5 }, `${variant}: b at 2`);
      for (let t = 0; t < 4; t++) expectClose(await batch.logits(19 + t), want[0]![17 + t]!, { relL2: 2e-5 }, `${variant}: a at ${17 + t}`);
      expect(batch.freeBlocks).toBe(0);
      batch.dispose();
    }
  });
});

describe('batch: blocks', () => {
  it('forks share blocks and copy the shared partial one on write; every block comes back', async () => {
    const model = await load(BUNDLED_MODEL, 'software');
    const p = prompt(30, 9);
    // Alone: the prompt's first 25 tokens and then a different continuation.
    const other = [1, 2, 3].map((x) => x + 100);
    const wantA = await alone(model, p, 9);
    const wantF = await alone(model, [...p.slice(0, 25), ...other], 8);
    const batch = model.createBatch({ maxSequences: 3, kvBlocks: 12, blockSize: 16 });
    const a = batch.createSequence();
    batch.step([{ seq: a, tokens: p }]);
    expect(batch.usedBlocks).toBe(2);
    const f = batch.fork(a, 25);
    expect([f.length, batch.usedBlocks]).toEqual([25, 2]);
    // Both write into block 1 (positions 16..31), which they share: one copies it.
    const gotA = [await batch.argmax(0)];
    const gotF: number[] = [];
    batch.step([{ seq: f, tokens: other }, { seq: a, tokens: gotA }]);
    expect(batch.usedBlocks).toBe(3);
    while (gotF.length < 8) {
      // A shared block written in place would hand one sequence the other's keys: the logits show it.
      expectClose(await batch.logits(0), wantF.logits[gotF.length]!, { relL2: 1e-5, maxAbs: 1e-4 }, `fork, token ${gotF.length}`);
      expectClose(await batch.logits(1), wantA.logits[gotA.length]!, { relL2: 1e-5, maxAbs: 1e-4 }, `original, token ${gotA.length}`);
      const [rf, ra] = await batch.reduceRows([0, 1], 0);
      gotF.push(rf!.argmax);
      gotA.push(ra!.argmax);
      batch.step([{ seq: f, tokens: [rf!.argmax] }, { seq: a, tokens: [ra!.argmax] }]);
    }
    expect(gotA).toEqual(wantA.tokens);
    expect(gotF).toEqual(wantF.tokens);
    // A truncation into a block another sequence holds: the next write copies it first.
    const g = batch.fork(f, f.length);
    batch.truncate(f, 20);
    const used = batch.usedBlocks;
    batch.step([{ seq: f, tokens: [5] }]);
    expect(batch.usedBlocks).toBe(used + 1);
    batch.free(g);
    batch.truncate(a, 3);
    expect(batch.usedBlocks).toBe(2); // a's block 0, shared with f, and f's second block
    batch.free(f);
    expect(batch.usedBlocks).toBe(1);
    batch.free(a);
    expect(batch.freeBlocks).toBe(batch.totalBlocks);
    batch.dispose();
  });

  it('running out of blocks is a KvCacheFullError that changes nothing; the batch stays usable', async () => {
    const model = await load(BUNDLED_MODEL, 'software');
    const batch = model.createBatch({ maxSequences: 2, kvBlocks: 5, blockSize: 8 });
    const a = batch.createSequence();
    const b = batch.createSequence();
    batch.step([{ seq: a, tokens: prompt(20, 5) }]);
    expect(batch.usedBlocks).toBe(3);
    const tooMany = () => batch.step([{ seq: a, tokens: [5] }, { seq: b, tokens: prompt(17, 6) }]);
    expect(tooMany).toThrow(KvCacheFullError);
    try {
      tooMany();
    } catch (e) {
      expect([(e as KvCacheFullError).needed, (e as KvCacheFullError).free]).toEqual([3, 2]);
    }
    expect([a.length, b.length, batch.usedBlocks]).toEqual([20, 0, 3]);
    // The logits of the step before the refusal are still there.
    const next = await batch.argmax(0);
    batch.free(a);
    batch.step([{ seq: b, tokens: prompt(17, 6) }]);
    expect(batch.usedBlocks).toBe(3);
    const want = await alone(model, prompt(17, 6), 1);
    expect(await batch.argmax(0)).toBe(want.tokens[0]);
    expect(next).toBeGreaterThanOrEqual(0);
    batch.free(b);
    expect(batch.freeBlocks).toBe(5);
    expect(() => batch.step([{ seq: b, tokens: [1] }])).toThrow(/freed/);
    batch.dispose();
  });
});

describe('batch: warmUp', () => {
  /** Pipelines compiled by a step of every size 1..9 (every row kept and read) on a fresh sequence. */
  async function compilesOfEverySize(batch: Batch): Promise<number> {
    const compiles = vi.spyOn((await testGpu()).device, 'createComputePipeline');
    try {
      const s = batch.createSequence();
      for (let n = 1; n <= 9; n++) {
        batch.step([{ seq: s, tokens: prompt(n, n) }], { logitRows: 'all' });
        await batch.reduceRows(Array.from({ length: n }, (_, i) => i), 0);
        batch.truncate(s, 0);
      }
      batch.free(s);
      return compiles.mock.calls.length;
    } finally {
      compiles.mockRestore();
    }
  }

  it('compiles and times every step size up front and gives back the blocks and sequence it used', async () => {
    // Each load has its own kernel cache: without the warm-up, 2..8-token steps compile on first use.
    const cold = (await load(BUNDLED_MODEL, 'software')).createBatch({ maxSequences: 1 });
    expect(await compilesOfEverySize(cold)).toBeGreaterThan(0);
    cold.dispose();
    for (const variant of ['software', 'gpu'] as const) {
      const batch = (await load(BUNDLED_MODEL, variant)).createBatch({ maxSequences: 1 });
      const times = await batch.warmUp();
      expect(times.map((t) => t.tokens), variant).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9]);
      for (const t of times) expect(t.ms, variant).toBeGreaterThan(0);
      expect(batch.freeBlocks, variant).toBe(batch.totalBlocks);
      // maxSequences 1: the warm-up's sequence was freed, or this would throw.
      expect(await compilesOfEverySize(batch), variant).toBe(0);
      batch.dispose();
    }
  });
});
