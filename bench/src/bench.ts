// pnpm bench: prefill and decode tokens/s of a Qwen2.5-0.5B-shaped model (the real
// config, seeded random weights) in each dtype, as a table and as JSON.
//
//   pnpm bench [--dtype bf16,f32] [--prompt 128] [--decode 64] [--model DIR] [--json] [--profile]
//
// --profile times every op with timestamp queries (each op in its own pass, which itself
// costs time) and prints each kernel family's share of a decode step and of the prefill.

import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describeGpu, getGpu, loadModel, StepProfiler, type Session, type WeightDtype } from '@webgpu-chat/engine';
import { writeGeneratedModel } from '../../packages/engine/test/generated-model.ts';
import { REPO_ROOT } from '../../packages/engine/test/paths.ts';

/** Qwen/Qwen2.5-0.5B-Instruct's config.json (the fields the engine reads). */
const QWEN25_05B = {
  architectures: ['Qwen2ForCausalLM'],
  model_type: 'qwen2',
  hidden_size: 896,
  intermediate_size: 4864,
  num_hidden_layers: 24,
  num_attention_heads: 14,
  num_key_value_heads: 2,
  vocab_size: 151936,
  max_position_embeddings: 32768,
  rms_norm_eps: 1e-6,
  rope_theta: 1000000.0,
  sliding_window: 32768,
  use_sliding_window: false,
  max_window_layers: 21,
  tie_word_embeddings: true,
  torch_dtype: 'bfloat16',
  bos_token_id: 151643,
  eos_token_id: 151645,
};

interface Row {
  model: string;
  dtype: WeightDtype;
  promptTokens: number;
  decodeTokens: number;
  prefillTokensPerSecond: number;
  decodeTokensPerSecond: number;
  bytesPerToken: number;
  decodeGBps: number;
  loadSeconds: number;
  /** ms per kernel family: of the prefill, and of one decode step (averaged). */
  profile?: { prefill: Record<string, number>; decode: Record<string, number> };
}

function args() {
  const a = process.argv.slice(2);
  const get = (k: string, d: string) => {
    const i = a.indexOf(k);
    return i >= 0 && a[i + 1] ? a[i + 1]! : d;
  };
  return {
    dtypes: get('--dtype', 'bf16,f32').split(',') as WeightDtype[],
    prompt: Number(get('--prompt', '128')),
    decode: Number(get('--decode', '64')),
    model: get('--model', ''),
    json: a.includes('--json'),
    profile: a.includes('--profile'),
  };
}

function benchModel(): string {
  const dir = join(REPO_ROOT, '.cache', 'bench', 'qwen2.5-0.5b-shaped-bf16');
  if (!existsSync(join(dir, 'model.safetensors'))) {
    mkdirSync(dir, { recursive: true });
    process.stderr.write(`bench: writing a Qwen2.5-0.5B-shaped model with seeded random weights to ${dir} (once)\n`);
    writeGeneratedModel({ modelType: 'qwen2', dtype: 'bfloat16', seed: 1, scale: 0.02, config: QWEN25_05B, dir });
  }
  return dir;
}

async function run(dir: string, dtype: WeightDtype, promptTokens: number, decodeTokens: number, profile: boolean): Promise<Row> {
  const gpu = await getGpu();
  let t0 = performance.now();
  const model = await loadModel(dir, { gpu, dtype, maxContext: promptTokens + decodeTokens + 8 });
  const loadSeconds = (performance.now() - t0) / 1000;
  const vocab = model.info.vocabSize;
  const prompt = Array.from({ length: promptTokens }, (_, i) => (i * 7919 + 13) % vocab);
  const session = model.createSession();
  // Warm-up: compiles every pipeline both paths use.
  session.forward(prompt.slice(0, 8));
  await session.argmax();
  session.forward([1]);
  await session.argmax();
  session.truncate(0);

  t0 = performance.now();
  session.forward(prompt);
  let tok = await session.argmax();
  const prefillS = (performance.now() - t0) / 1000;
  t0 = performance.now();
  for (let i = 0; i < decodeTokens; i++) {
    session.forward([tok]);
    tok = await session.argmax();
  }
  const decodeS = (performance.now() - t0) / 1000;
  const row: Row = {
    model: dir.split('/').pop()!,
    dtype,
    promptTokens,
    decodeTokens,
    prefillTokensPerSecond: promptTokens / prefillS,
    decodeTokensPerSecond: decodeTokens / decodeS,
    bytesPerToken: model.info.bytesPerToken,
    decodeGBps: (model.info.bytesPerToken * decodeTokens) / decodeS / 1e9,
    loadSeconds,
  };
  if (profile) row.profile = await profileSteps(session, prompt, Math.min(decodeTokens, 16));
  model.dispose();
  return row;
}

async function profileSteps(session: Session, prompt: number[], steps: number): Promise<NonNullable<Row['profile']>> {
  const profiler = new StepProfiler((await getGpu()).device);
  session.profiler = profiler;
  session.truncate(0);
  session.forward(prompt);
  let tok = await session.argmax();
  const prefill = Object.fromEntries(profiler.totals);
  profiler.reset();
  for (let i = 0; i < steps; i++) {
    session.forward([tok]);
    tok = await session.argmax();
  }
  const decode = Object.fromEntries([...profiler.totals].map(([k, v]) => [k, v / profiler.steps]));
  session.profiler = undefined;
  profiler.destroy();
  return { prefill, decode };
}

function printProfile(r: Row): void {
  if (!r.profile) return;
  for (const [what, times] of Object.entries(r.profile)) {
    const total = Object.values(times).reduce((a, b) => a + b, 0);
    const parts = Object.entries(times)
      .sort((a, b) => b[1] - a[1])
      .map(([k, v]) => `${k} ${((100 * v) / total).toFixed(1)}% (${v.toFixed(2)} ms)`);
    console.log(`${r.dtype} ${what} (${total.toFixed(1)} ms${what === 'decode' ? ' per token' : ''}): ${parts.join(', ')}`);
  }
}

async function main() {
  const o = args();
  const dir = o.model || benchModel();
  const gpu = await getGpu();
  process.stderr.write(`adapter: ${describeGpu(gpu.info)}\n`);
  const rows: Row[] = [];
  for (const dtype of o.dtypes) rows.push(await run(dir, dtype, o.prompt, o.decode, o.profile));
  const out = { adapter: gpu.info, rows };
  mkdirSync(join(REPO_ROOT, '.cache', 'bench'), { recursive: true });
  writeFileSync(join(REPO_ROOT, '.cache', 'bench', 'last.json'), JSON.stringify(out, null, 2));
  if (o.json) {
    console.log(JSON.stringify(out, null, 2));
    return;
  }
  console.log('| model | dtype | prefill tok/s | decode tok/s | MB read/token | decode GB/s |');
  console.log('|---|---|---|---|---|---|');
  for (const r of rows)
    console.log(
      `| ${r.model} | ${r.dtype} | ${r.prefillTokensPerSecond.toFixed(1)} | ${r.decodeTokensPerSecond.toFixed(2)} | ${(r.bytesPerToken / 1e6).toFixed(0)} | ${r.decodeGBps.toFixed(2)} |`,
    );
  for (const r of rows) printProfile(r);
}

await main();
process.exit(0);
