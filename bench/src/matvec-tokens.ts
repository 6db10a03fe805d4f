// One linear op over T tokens against one token, on the software variant: what a decode step over
// T sequences costs per layer (T <= 8: the matvec with its threads looping over the tokens; more:
// the matmul). Row-tiled weights of a Qwen2.5-0.5B MLP shape, x through subgroups where they are 8
// wide; and 16 tokens on the matvec alone (two dispatches of 8, as batchInvariant runs a prompt
// chunk). Each figure is the median of 3 submissions of 10 dispatches.
//
//   pnpm tsx bench/src/matvec-tokens.ts [--format f32|bf16|f16|q8|q4] [--rows 4864] [--cols 896]

import { parseArgs } from 'node:util';
import { getGpu } from '@webgpu-chat/engine';
import { storageUsage, createLinear } from '@webgpu-chat/engine/internal';
import { makeQuantWeight, makeWeight, opContext } from '@webgpu-chat/engine/testing';

const { values: a } = parseArgs({
  options: { format: { type: 'string', default: 'bf16' }, rows: { type: 'string', default: '4864' }, cols: { type: 'string', default: '896' } },
});
const [N, K] = [Number(a.rows), Number(a.cols)];
const fmt = a.format!;
const gpu = await getGpu();
const ctx = opContext(gpu, 'software');
const wf = new Float32Array(N * K).map((_, i) => Math.sin(i) * 0.02);
const weight =
  fmt === 'q4' || fmt === 'q8'
    ? makeQuantWeight(gpu.device, wf, N, K, { format: fmt, groupSize: 32, symmetric: fmt === 'q8' }, [N], true).weight
    : makeWeight(gpu.device, wf, N, K, fmt as 'f32' | 'bf16' | 'f16', [N], true);
const maxTokens = 16;
const x = gpu.device.createBuffer({ size: Math.max(65536, maxTokens * K * 4), usage: storageUsage() | GPUBufferUsage.UNIFORM });
const y = gpu.device.createBuffer({ size: maxTokens * N * 4, usage: storageUsage() });
const op = createLinear(ctx, weight, x, y, { maxTokens });
// Every count on the matvec (batchInvariant on the software variant: dispatches of 8 tokens).
const matvecOnly = createLinear(ctx, weight, x, y, { maxTokens, force: 'matvec' });

async function time(T: number, reps = 10, o = op): Promise<number> {
  const run = async () => {
    const enc = gpu.device.createCommandEncoder();
    const pass = enc.beginComputePass();
    for (let i = 0; i < reps; i++) o.encode(pass, T);
    pass.end();
    gpu.device.queue.submit([enc.finish()]);
    await gpu.device.queue.onSubmittedWorkDone();
  };
  await run();
  const ts = [];
  for (let r = 0; r < 3; r++) {
    const t0 = performance.now();
    await run();
    ts.push((performance.now() - t0) / reps);
  }
  return ts.sort((p, q) => p - q)[1]!;
}

const one = await time(1);
const out = [`${fmt} ${N}x${K}: T=1 ${one.toFixed(2)} ms`];
for (const T of [2, 4, 8, 9, 16]) {
  const t = await time(T);
  out.push(`T=${T} ${t.toFixed(2)} ms (${(t / one).toFixed(2)}x)`);
}
const t16 = await time(16, 10, matvecOnly);
out.push(`T=16 on the matvec ${t16.toFixed(2)} ms (${(t16 / one).toFixed(2)}x)`);
console.log(out.join(', '));
process.exit(0);
