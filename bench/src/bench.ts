// pnpm bench: prefill and decode tokens/s of a Qwen2.5-0.5B-shaped model (the real
// config, seeded random weights) in each dtype, as a table and as JSON.
//
//   pnpm bench [--dtype bf16,f32,q8,q4] [--quantize q8,q4] [--prompt 128] [--decode 64] [--model DIR] [--json] [--profile]
//
// q8/q4 (in --dtype, or listed by --quantize) quantize the linear layers while loading; the
// embeddings and LM head stay bf16.
// --profile times every op with timestamp queries (each op in its own pass, which itself
// costs time) and prints each kernel family's share of a decode step and of the prefill.
//
//   pnpm bench --compare [--gguf f16] [--llama vulkan,cpu]
//
// --compare runs llama.cpp (node-llama-cpp) on the same weights, converted to GGUF in each
// --gguf format, on each --llama backend, in the same run, and prints one table with our
// speed as a ratio to each. Every row carries the load average, and tokens per CPU-second x 2
// (what 2 otherwise idle cores would give if the work scales with CPU time).

import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { describeGpu, getGpu, loadModel, StepProfiler, type Session, type WeightDtype } from '@webgpu-chat/engine';
import { writeGeneratedModel } from '../../packages/engine/test/generated-model.ts';
import { REPO_ROOT } from '../../packages/engine/test/paths.ts';
import type { GgufFormat } from './gguf.ts';
import { benchGguf, runLlamaCpp, type LlamaBackend, type LlamaCppResult } from './llama-cpp.ts';

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

/** CPU seconds (all threads of this process) and wall seconds of `f`. */
async function timed<T>(f: () => Promise<T>): Promise<{ value: T; wallS: number; cpuS: number }> {
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  const value = await f();
  const c = process.cpuUsage(c0);
  return { value, wallS: (performance.now() - t0) / 1000, cpuS: (c.user + c.system) / 1e6 };
}

/** Cores the tokens-per-CPU-second figures are scaled to (this machine's). */
const CORES = 2;

interface Row {
  model: string;
  dtype: WeightDtype | Quantize;
  /** Bytes of weights resident on the GPU. */
  weightBytes: number;
  promptTokens: number;
  decodeTokens: number;
  prefillTokensPerSecond: number;
  decodeTokensPerSecond: number;
  bytesPerToken: number;
  decodeGBps: number;
  loadSeconds: number;
  /** Tokens per CPU-second x 2 cores: the speed on 2 otherwise idle cores, if work scales with CPU time. */
  prefillTokensPerCpuSecond2: number;
  decodeTokensPerCpuSecond2: number;
  /** 1-minute load average when the row finished (other processes share the cores). */
  load: number;
  /** ms per kernel family: of the prefill, and of one decode step (averaged). */
  profile?: { prefill: Record<string, number>; decode: Record<string, number> };
}

type Quantize = 'q8' | 'q4';
const isQuantize = (d: string): d is Quantize => d === 'q8' || d === 'q4';

function args() {
  const a = process.argv.slice(2);
  const get = (k: string, d: string) => {
    const i = a.indexOf(k);
    return i >= 0 && a[i + 1] ? a[i + 1]! : d;
  };
  return {
    dtypes: [...get('--dtype', 'bf16,f32').split(','), ...(a.includes('--quantize') ? get('--quantize', '').split(',') : [])].filter(Boolean) as (WeightDtype | Quantize)[],
    prompt: Number(get('--prompt', '128')),
    decode: Number(get('--decode', '64')),
    model: get('--model', ''),
    json: a.includes('--json'),
    profile: a.includes('--profile'),
    compare: a.includes('--compare'),
    ggufFormats: get('--gguf', 'f16').split(',') as GgufFormat[],
    llamaBackends: get('--llama', 'vulkan,cpu').split(',') as LlamaBackend[],
  };
}

/** The prompt every engine runs: n spread-out token ids. */
function benchPrompt(n: number, vocab: number): number[] {
  return Array.from({ length: n }, (_, i) => (i * 7919 + 13) % vocab);
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

async function run(dir: string, dtype: WeightDtype | Quantize, promptTokens: number, decodeTokens: number, profile: boolean): Promise<Row> {
  const gpu = await getGpu();
  let t0 = performance.now();
  const load = isQuantize(dtype) ? { dtype: 'bf16' as const, quantize: dtype } : { dtype };
  const model = await loadModel(dir, { gpu, ...load, maxContext: promptTokens + decodeTokens + 8 });
  const loadSeconds = (performance.now() - t0) / 1000;
  const vocab = model.info.vocabSize;
  const prompt = benchPrompt(promptTokens, vocab);
  const session = model.createSession();
  // Warm-up: compiles every pipeline both paths use.
  session.forward(prompt.slice(0, 8));
  await session.argmax();
  session.forward([1]);
  await session.argmax();
  session.truncate(0);

  const pre = await timed(async () => {
    session.forward(prompt);
    return session.argmax();
  });
  let tok = pre.value;
  const prefillS = pre.wallS;
  const dec = await timed(async () => {
    for (let i = 0; i < decodeTokens; i++) {
      session.forward([tok]);
      tok = await session.argmax();
    }
  });
  const decodeS = dec.wallS;
  const row: Row = {
    model: dir.split('/').pop()!,
    dtype,
    weightBytes: model.info.weightBytes,
    promptTokens,
    decodeTokens,
    prefillTokensPerSecond: promptTokens / prefillS,
    decodeTokensPerSecond: decodeTokens / decodeS,
    bytesPerToken: model.info.bytesPerToken,
    decodeGBps: (model.info.bytesPerToken * decodeTokens) / decodeS / 1e9,
    loadSeconds,
    prefillTokensPerCpuSecond2: (CORES * promptTokens) / pre.cpuS,
    decodeTokensPerCpuSecond2: (CORES * decodeTokens) / dec.cpuS,
    load: loadavg()[0]!,
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
  const llamaCpp: LlamaCppResult[] = [];
  const skipped: string[] = [];
  if (o.compare) {
    const vocab = (JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as { vocab_size: number }).vocab_size;
    const prompt = benchPrompt(o.prompt, vocab);
    for (const format of o.ggufFormats) {
      let gguf;
      try {
        gguf = benchGguf(dir, format);
      } catch (e) {
        skipped.push(`llama.cpp ${format}: skipped, the model could not be converted to GGUF: ${(e as Error).message}`);
        continue;
      }
      for (const backend of o.llamaBackends) {
        const r = await runLlamaCpp(gguf, backend, prompt, o.decode, CORES, CORES);
        if (typeof r === 'string') skipped.push(`llama.cpp ${backend} ${format}: skipped, ${r}`);
        else llamaCpp.push(r);
      }
    }
  }
  const out = { adapter: gpu.info, rows, ...(o.compare ? { llamaCpp, skipped } : {}) };
  mkdirSync(join(REPO_ROOT, '.cache', 'bench'), { recursive: true });
  writeFileSync(join(REPO_ROOT, '.cache', 'bench', 'last.json'), JSON.stringify(out, null, 2));
  if (o.json) {
    console.log(JSON.stringify(out, null, 2));
    return;
  }
  console.log('| model | dtype | prefill tok/s | decode tok/s | MB resident | MB read/token | decode GB/s |');
  console.log('|---|---|---|---|---|---|---|');
  for (const r of rows)
    console.log(
      `| ${r.model} | ${r.dtype} | ${r.prefillTokensPerSecond.toFixed(1)} | ${r.decodeTokensPerSecond.toFixed(2)} | ${(r.weightBytes / 1e6).toFixed(0)} | ${(r.bytesPerToken / 1e6).toFixed(0)} | ${r.decodeGBps.toFixed(2)} |`,
    );
  for (const r of rows) printProfile(r);
  if (o.compare) printComparison(rows, llamaCpp, skipped, `${gpu.info.vendor} ${gpu.info.architecture}`.trim() || 'unknown adapter');
}

/** One table: every engine x format, with our first row's speed as a ratio to each. */
function printComparison(rows: Row[], others: LlamaCppResult[], skipped: string[], adapter: string): void {
  const ours = rows[0];
  if (!ours) return;
  const x = (a: number, b: number) => `${(a / b).toFixed(2)}x`;
  console.log(`\nAll on this machine in one run; ratio = our ${ours.dtype} ÷ the row's; "2-core est." = tokens per CPU-second x ${CORES}; load = 1-min load average.`);
  console.log(`| engine | format | prefill tok/s | decode tok/s | MB read/token | ours ÷ this, prefill | ours ÷ this, decode | prefill / decode, 2-core est. | load |`);
  console.log('|---|---|---|---|---|---|---|---|---|');
  const line = (engine: string, format: string, r: Omit<LlamaCppResult, 'engine' | 'format'>) =>
    console.log(
      `| ${engine} | ${format} | ${r.prefillTokensPerSecond.toFixed(1)} | ${r.decodeTokensPerSecond.toFixed(2)} | ${(r.bytesPerToken / 1e6).toFixed(0)} | ` +
        `${x(ours.prefillTokensPerSecond, r.prefillTokensPerSecond)} | ${x(ours.decodeTokensPerSecond, r.decodeTokensPerSecond)} | ` +
        `${r.prefillTokensPerCpuSecond2.toFixed(1)} / ${r.decodeTokensPerCpuSecond2.toFixed(2)} | ${r.load.toFixed(1)} |`,
    );
  for (const r of rows) line(`webgpu-chat (WebGPU, ${adapter})`, r.dtype, r);
  for (const r of others) line(r.engine, r.format, r);
  for (const s of skipped) console.log(s);
}

await main();
process.exit(0);
