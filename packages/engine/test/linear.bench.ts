// Timing of the linear kernels on the current adapter (not a test): run with
//   node scripts/bundle-kernels.mjs && npx tsx packages/engine/test/linear.bench.ts [software|gpu] [matvec|prefill]
// Prints GB/s of weight bytes for decode matvecs and tokens/s for a 128-token prefill on the
// Qwen2.5-0.5B shapes (4864x896 gate/up, 896x4864 down), and a whole-model estimate.
import { getGpu } from '../src/device.ts';
import { storageUsage } from '../src/buffers.ts';
import { BYTES_PER_ELEMENT, type WeightDtype } from '../src/dtype.ts';
import type { Variant } from '../src/ops/context.ts';
import { createLinear, type LinearOptions } from '../src/ops/linear.ts';
import { makeWeight, opContext } from './weights-helper.ts';

const gpu = await getGpu();
const variant = (process.argv[2] as Variant | undefined) ?? (gpu.info.isSoftware ? 'software' : 'gpu');
const ctx = opContext(gpu, variant);
const device = gpu.device;

/** Median ms per encode of `reps` encodes in one submission. */
async function time(tokens: number, N: number, K: number, dtype: WeightDtype, opts: LinearOptions, reps: number): Promise<number> {
  const w = makeWeight(device, new Float32Array(N * K).map((_, i) => Math.sin(i) * 0.01), N, K, dtype, [N], variant === 'software' && K % 8 === 0);
  const x = device.createBuffer({ size: Math.max(65536, tokens * K * 4), usage: storageUsage() | GPUBufferUsage.UNIFORM });
  const y = device.createBuffer({ size: tokens * N * 4, usage: storageUsage() });
  const op = createLinear(ctx, w, x, y, { maxTokens: tokens, ...opts });
  const runs: number[] = [];
  for (let r = 0; r < 4; r++) {
    const t0 = performance.now();
    const enc = device.createCommandEncoder();
    const pass = enc.beginComputePass();
    for (let i = 0; i < reps; i++) op.encode(pass, tokens);
    pass.end();
    device.queue.submit([enc.finish()]);
    await device.queue.onSubmittedWorkDone();
    if (r > 0) runs.push((performance.now() - t0) / reps);
  }
  op.destroy();
  for (const c of w.chunks) c.buffer.destroy();
  x.destroy();
  y.destroy();
  return runs.sort((a, b) => a - b)[1]!;
}

console.log(`adapter: ${gpu.info.vendor} ${gpu.info.architecture} ${gpu.info.description}; variant ${variant}`);
const only = process.argv[3];
const shapes: [number, number][] = [[4864, 896], [896, 4864]];
for (const dtype of only === 'prefill' ? [] : (['f32', 'bf16', 'f16'] as WeightDtype[])) {
  for (const [N, K] of shapes) {
    const bytes = N * K * BYTES_PER_ELEMENT[dtype];
    const line = [`matvec ${dtype} ${N}x${K}:`];
    for (const uniformX of variant === 'software' ? [false, true] : [false]) {
      const ms = await time(1, N, K, dtype, { uniformX }, 20);
      line.push(`${uniformX ? 'x uniform' : 'x storage'} ${ms.toFixed(2)} ms = ${(bytes / ms / 1e6).toFixed(2)} GB/s`);
    }
    console.log(line.join('  '));
  }
}

// One Qwen2.5-0.5B layer: q, k, v, o, gate, up, down; 24 layers (LM head left out).
const layer: [number, number][] = [[896, 896], [128, 896], [128, 896], [896, 896], [4864, 896], [4864, 896], [896, 4864]];
for (const dtype of only === 'matvec' ? [] : (['f32', 'bf16'] as WeightDtype[])) {
  const T = 128;
  let total = 0;
  const line = [`prefill ${T} tokens ${dtype}:`];
  for (const [N, K] of [...new Map(layer.map((s) => [s.join('x'), s])).values()]) {
    const parts = [`${N}x${K}`];
    // x through 16-token uniform windows (the default where K allows) against x from storage.
    for (const matmulUniformX of variant === 'software' && K <= 1020 ? [false, true] : [false]) {
      const ms = await time(T, N, K, dtype, { matmulUniformX }, 3);
      parts.push(`${matmulUniformX ? 'x uniform' : 'x storage'} ${ms.toFixed(1)} ms (${((2 * N * K * T) / ms / 1e6).toFixed(1)} GFLOP/s)`);
    }
    line.push(parts.join('  '));
  }
  for (const [N, K] of layer) total += await time(T, N, K, dtype, {}, 2);
  line.push(`=> 24 layers of matmuls ${(24 * total).toFixed(0)} ms = ${((T * 1000) / (24 * total)).toFixed(1)} tokens/s`);
  console.log(line.join('\n  '));
}
process.exit(0);
