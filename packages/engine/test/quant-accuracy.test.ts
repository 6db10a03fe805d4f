// Load-time q8/q4 against the f32 model, teacher-forced over 200 positions: top-1 agreement and
// mean KL(f32 || quantized), plus the first divergence of 200 greedy tokens. Measured on lavapipe
// (the numbers are deterministic for a given driver); the bounds sit just outside them:
//   stories260K  q8: top-1 0.995, KL 1.6e-4, greedy equal for 114 tokens
//                q4: top-1 0.910, KL 5.2e-2, greedy equal for 20 tokens
//   Qwen2 generated (hidden 128, random weights, near-flat logits)
//                q8: top-1 0.975, KL 8.0e-4;  q4: top-1 0.535, KL 0.19
// The same runs chose the formats: q8 with group 32 beat group 64 (KL 1.6e-4 vs 2.1e-4 on
// stories260K); q4 asymmetric with group 32 beat symmetric (5.7e-2) and group 64 (7.0e-2).
import { rmSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { loadModel } from '../src/model.ts';
import { BUNDLED_MODEL } from './paths.ts';
import { writeGeneratedModel } from './generated-model.ts';
import { rng, testGpu } from './harness.ts';

async function run(dir: string, tokens: number[], quantize?: 'q8' | 'q4') {
  const gpu = await testGpu();
  const m = await loadModel(dir, { gpu, dtype: 'f32', ...(quantize ? { quantize } : {}) });
  const s = m.createSession();
  const logits: Float32Array[] = [];
  for (const t of tokens) {
    s.forward([t]);
    logits.push(await s.logits());
  }
  const g = m.createSession();
  const greedy: number[] = [];
  let tok = tokens[0]!;
  for (let i = 0; i < 200; i++) {
    g.forward([tok]);
    tok = await g.argmax();
    greedy.push(tok);
  }
  const info = m.info;
  m.dispose();
  return { logits, greedy, info };
}

function logSoftmax(l: Float32Array): Float64Array {
  let mx = -Infinity;
  for (const v of l) mx = Math.max(mx, v);
  let s = 0;
  for (const v of l) s += Math.exp(v - mx);
  const lse = mx + Math.log(s);
  return Float64Array.from(l, (v) => v - lse);
}

function compare(ref: Float32Array[], got: Float32Array[]): { top1: number; kl: number } {
  let agree = 0;
  let kl = 0;
  for (let i = 0; i < ref.length; i++) {
    const p = logSoftmax(ref[i]!);
    const q = logSoftmax(got[i]!);
    let a = 0;
    let b = 0;
    for (let j = 0; j < p.length; j++) {
      if (p[j]! > p[a]!) a = j;
      if (q[j]! > q[b]!) b = j;
      kl += Math.exp(p[j]!) * (p[j]! - q[j]!);
    }
    if (a === b) agree++;
  }
  return { top1: agree / ref.length, kl: kl / ref.length };
}

const firstDivergence = (a: number[], b: number[]) => {
  const i = a.findIndex((x, j) => x !== b[j]);
  return i < 0 ? a.length : i;
};

describe('quantized accuracy against f32', () => {
  it('stories260K: q8 nearly matches, q4 within its format', { timeout: 300_000 }, async () => {
    const f32Greedy = (await run(BUNDLED_MODEL, [1])).greedy;
    const tokens = [1, ...f32Greedy.slice(0, 199)];
    const base = await run(BUNDLED_MODEL, tokens);
    const q8 = await run(BUNDLED_MODEL, tokens, 'q8');
    const q4 = await run(BUNDLED_MODEL, tokens, 'q4');
    const c8 = compare(base.logits, q8.logits);
    const c4 = compare(base.logits, q4.logits);
    const d8 = firstDivergence(q8.greedy, base.greedy);
    const d4 = firstDivergence(q4.greedy, base.greedy);
    console.log(`stories260K q8 top-1 ${c8.top1} KL ${c8.kl.toExponential(2)} greedy diverges at ${d8}; q4 top-1 ${c4.top1} KL ${c4.kl.toExponential(2)} greedy diverges at ${d4}`);
    expect(c8.top1).toBeGreaterThanOrEqual(0.99);
    expect(c8.kl).toBeLessThan(5e-4);
    expect(d8).toBeGreaterThanOrEqual(100);
    expect(c4.top1).toBeGreaterThanOrEqual(0.88);
    expect(c4.kl).toBeLessThan(0.08);
    expect(d4).toBeGreaterThanOrEqual(10);
    // Resident bytes: the linear layers shrink to 1.125 (q8) and 0.625 (q4) bytes per weight + padding of K = 172 to 192.
    expect(q8.info.weightBytesByFormat!.q8).toBeLessThan(base.info.weightBytes);
    expect(q4.info.weightBytesByFormat!.q4).toBeLessThan(q8.info.weightBytesByFormat!.q8!);
    expect(q4.info.bytesPerToken).toBeLessThan(q8.info.bytesPerToken);
    expect(q8.info.bytesPerToken).toBeLessThan(base.info.bytesPerToken);
  });

  it('generated Qwen2 model: q8 and q4 within their formats', { timeout: 300_000 }, async () => {
    const dir = writeGeneratedModel({ modelType: 'qwen2', seed: 3, config: { hidden_size: 128, intermediate_size: 352 } });
    const r = rng(9);
    const tokens = Array.from({ length: 200 }, () => Math.floor(r() * 311));
    const base = await run(dir, tokens);
    const c8 = compare(base.logits, (await run(dir, tokens, 'q8')).logits);
    const c4 = compare(base.logits, (await run(dir, tokens, 'q4')).logits);
    rmSync(dir, { recursive: true, force: true });
    console.log(`qwen2 generated q8 top-1 ${c8.top1} KL ${c8.kl.toExponential(2)}; q4 top-1 ${c4.top1} KL ${c4.kl.toExponential(2)}`);
    expect(c8.top1).toBeGreaterThanOrEqual(0.96);
    expect(c8.kl).toBeLessThan(2e-3);
    expect(c4.top1).toBeGreaterThanOrEqual(0.5);
    expect(c4.kl).toBeLessThan(0.25);
  });
});
