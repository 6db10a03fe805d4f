// `pnpm perplexity`: the sliding-window accounting against Transformers' documented loop
// (labels masked with -100, shifted loss per window) run on Transformers' own
// log-probabilities, and the CLI's JSON summary on stories260K.
import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { loadModel, type Model } from '@webgpu-chat/engine';
import { bundledModelPath } from '../src/args.ts';
import { parsePerplexityArgs, slidingPerplexity } from '../src/perplexity.ts';
import { makeReferenceModel, pythonAvailable, referenceLogits, testGpu } from '@webgpu-chat/engine/testing';

const run = promisify(execFile);
const models: Model[] = [];
afterAll(() => models.forEach((m) => m.dispose()));

/** Transformers' docs loop, literally: per window, loss over labels != -100 after the shift. */
async function transformersLoop(ids: number[], ctx: number, stride: number, logprobsOf: (window: number[]) => Promise<(t: number, id: number) => number>) {
  let nllSum = 0;
  let nTokens = 0;
  let prevEnd = 0;
  for (let begin = 0; begin < ids.length; begin += stride) {
    const end = Math.min(begin + ctx, ids.length);
    const trgLen = end - prevEnd;
    const input = ids.slice(begin, end);
    const labels = input.map((t, i) => (i < input.length - trgLen ? -100 : t));
    const lp = await logprobsOf(input);
    // Shift: position i predicts labels[i + 1].
    for (let i = 0; i + 1 < input.length; i++) {
      if (labels[i + 1] === -100) continue;
      nllSum -= lp(i, labels[i + 1]!);
      nTokens++;
    }
    prevEnd = end;
    if (end === ids.length) break;
  }
  return { nll: nllSum, scored: nTokens, ppl: Math.exp(nllSum / nTokens) };
}

const python = pythonAvailable();

describe.skipIf(!python.ok)('sliding-window perplexity equals Transformers', () => {
  it('llama, 100 tokens, ctx 40, stride 20 (and stride = ctx)', async () => {
    const dir = await makeReferenceModel({ family: 'llama', seed: 401, dtype: 'float32' });
    const model = await loadModel(dir, { gpu: await testGpu(), dtype: 'f32' });
    models.push(model);
    let seed = 9;
    const ids = Array.from({ length: 100 }, () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31), seed % model.info.vocabSize));
    for (const [ctx, stride] of [[40, 20], [40, 40]] as const) {
      const ours = await slidingPerplexity(model.createSession({ maxContext: ctx }), ids, ctx, stride);
      const want = await transformersLoop(ids, ctx, stride, async (w) => {
        const r = await referenceLogits(dir, w, { topk: 1 });
        return (t, id) => r.logprobs[t * r.vocab + id]!;
      });
      expect(ours.scored).toBe(want.scored);
      expect(Math.abs(ours.nll - want.nll) / want.scored).toBeLessThan(1e-5);
      expect(ours.ppl).toBeCloseTo(want.ppl, 3);
    }
  }, 600_000); // one Python run per window
});

describe('pnpm perplexity', () => {
  it('prints a JSON summary for a text on stories260K', async () => {
    const file = join(tmpdir(), `wgc-ppl-${process.pid}.txt`);
    writeFileSync(file, 'Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day she saw a big red ball.\n'.repeat(3));
    const { stdout } = await run('npx', ['tsx', 'apps/cli/src/perplexity.ts', bundledModelPath(), file, '--ctx', '48', '--stride', '16', '--dtype', 'f32'], { timeout: 120_000 });
    const r = JSON.parse(stdout.trim().split('\n').at(-1)!);
    expect(r).toMatchObject({ dtype: 'f32', ctx: 48, stride: 16, quantize: null });
    expect(r.scored).toBe(r.tokens - 1);
    // A story model on a story: far better than uniform over its 512 tokens.
    expect(r.ppl).toBeGreaterThan(1);
    expect(r.ppl).toBeLessThan(20);
    expect(r.seconds).toBeGreaterThan(0);
  });

  it('rejects bad arguments', () => {
    expect(() => parsePerplexityArgs(['m'])).toThrow(/MODEL and FILE/);
    expect(() => parsePerplexityArgs(['m', 'f', '--ctx', '0'])).toThrow(/positive integer/);
    expect(() => parsePerplexityArgs(['m', 'f', '--ctx', '8', '--stride', '9'])).toThrow(/cannot exceed/);
    expect(() => parsePerplexityArgs(['m', 'f', '--quantize', 'q3'])).toThrow(/q8 or q4/);
    expect(parsePerplexityArgs(['m', 'f', '--quantize', 'q4', '--dtype', 'f16'])).toMatchObject({ model: 'm', file: 'f', quantize: 'q4', dtype: 'f16', bos: true });
  });
});
