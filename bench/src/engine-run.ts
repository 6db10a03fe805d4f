// Our engine's prefill and decode speed on one model folder in one format: the dense rows
// and the MoE rows of pnpm bench. Greedy, on the engine Session directly (no tokenizer).

import { existsSync, mkdirSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { describeGpu, getGpu, loadModel, type Gpu, type Session } from '@webgpu-chat/engine';
import { StepProfiler, type WeightDtype, inactiveExpertBytes } from '@webgpu-chat/engine/internal';
import { writeGeneratedModel, REPO_ROOT } from '@webgpu-chat/engine/testing';
import type { BenchRow, Section } from './rows.ts';

/** Cores the tokens-per-CPU-second figures are scaled to (this machine's). */
export const CORES = 2;

export type Quantize = 'q8' | 'q4';
export type BenchFormat = WeightDtype | Quantize;
export const isQuantize = (d: string): d is Quantize => d === 'q8' || d === 'q4';

/** Where the bench keeps what it generates (models, GGUF files, the last run's JSON). */
export const BENCH_CACHE = join(REPO_ROOT, '.cache', 'bench');

/** Qwen/Qwen2.5-0.5B-Instruct's config.json (the fields the engine reads). */
export const QWEN25_05B = {
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

/** The Qwen2.5-0.5B-shaped folder with seeded random bf16 weights, written on first use. */
export function benchModel(): string {
  const dir = join(BENCH_CACHE, 'qwen2.5-0.5b-shaped-bf16');
  if (!existsSync(join(dir, 'model.safetensors'))) {
    mkdirSync(dir, { recursive: true });
    process.stderr.write(`bench: writing a Qwen2.5-0.5B-shaped model with seeded random weights to ${dir} (once)\n`);
    writeGeneratedModel({ modelType: 'qwen2', dtype: 'bfloat16', seed: 1, scale: 0.02, config: QWEN25_05B, dir });
  }
  return dir;
}

/** Bench folders under BENCH_CACHE by name, each written by `write` on first use. */
export function cachedBenchModels<C>(models: readonly (readonly [string, C])[], write: (cfg: C, dir: string) => void): string[] {
  return models.map(([name, cfg]) => {
    const dir = join(BENCH_CACHE, name);
    if (!existsSync(join(dir, 'config.json'))) {
      process.stderr.write(`bench: writing ${dir} (once)\n`);
      write(cfg, dir);
    }
    return dir;
  });
}

/** The prompt every engine runs: n spread-out token ids (`salt` gives another prompt). */
export function benchPrompt(n: number, vocab: number, salt = 0): number[] {
  return Array.from({ length: n }, (_, i) => (i * 7919 + 13 + salt * 104729) % vocab);
}

/** Timed prefills per row, of which the median is reported: one run of a few seconds is at the mercy of this VM's drift. */
export const PREFILL_RUNS = 3;

/** Runs a timed `f` `runs` times and returns the run with the median wall time. */
export async function medianRun<T>(runs: number, f: () => Promise<{ value: T; wallS: number; cpuS: number }>): Promise<{ value: T; wallS: number; cpuS: number }> {
  const all = [];
  for (let i = 0; i < runs; i++) all.push(await f());
  return all.sort((a, b) => a.wallS - b.wallS)[Math.floor(runs / 2)]!;
}

/** CPU seconds (all threads of this process) and wall seconds of `f`. */
export async function timed<T>(f: () => Promise<T>): Promise<{ value: T; wallS: number; cpuS: number }> {
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  const value = await f();
  const c = process.cpuUsage(c0);
  return { value, wallS: (performance.now() - t0) / 1000, cpuS: (c.user + c.system) / 1e6 };
}

export const folderName = (dir: string) => dir.replace(/\/+$/, '').split('/').pop()!;

/** How our engine is named in the tables (`app`: 'webgpu-chat serve' for the rows measured through the server). */
export function engineName(gpu: Gpu, app = 'webgpu-chat'): string {
  return `${app} (WebGPU, ${`${gpu.info.vendor} ${gpu.info.architecture}`.trim() || describeGpu(gpu.info)})`;
}

export interface EngineRunOptions {
  section: Section;
  promptTokens: number;
  decodeTokens: number;
  profile?: boolean;
}

/** Loads `dir` in `format`, then times a prefill of the prompt and greedy decode steps. */
export async function runEngine(dir: string, format: BenchFormat, o: EngineRunOptions): Promise<BenchRow> {
  const gpu = await getGpu();
  const t0 = performance.now();
  const load = isQuantize(format) ? { dtype: 'bf16' as const, quantize: format } : { dtype: format };
  const model = await loadModel(dir, { gpu, ...load, maxContext: o.promptTokens + o.decodeTokens + 8 });
  try {
    const loadSeconds = (performance.now() - t0) / 1000;
    const prompt = benchPrompt(o.promptTokens, model.info.vocabSize);
    const session = model.createSession();
    // Warm-up with the timed shapes (as the llama.cpp rows do): compiles every pipeline both
    // paths use and touches every buffer.
    session.forward(prompt);
    await session.argmax();
    session.forward([1]);
    await session.argmax();

    const pre = await medianRun(PREFILL_RUNS, async () => {
      session.truncate(0);
      return timed(async () => {
        session.forward(prompt);
        return session.argmax();
      });
    });
    let tok = pre.value;
    const dec = await timed(async () => {
      for (let i = 0; i < o.decodeTokens; i++) {
        session.forward([tok]);
        tok = await session.argmax();
      }
    });
    const { info } = model;
    const m = info.config.moe;
    const row: BenchRow = {
      section: o.section,
      engine: engineName(gpu),
      model: folderName(dir),
      format,
      promptTokens: o.promptTokens,
      decodeTokens: o.decodeTokens,
      prefillTokensPerSecond: o.promptTokens / pre.wallS,
      decodeTokensPerSecond: o.decodeTokens / dec.wallS,
      weightBytes: info.weightBytes,
      bytesPerToken: info.bytesPerToken,
      decodeGBps: (info.bytesPerToken * o.decodeTokens) / dec.wallS / 1e9,
      loadSeconds,
      prefillTokensPerCpuSecond2: (CORES * o.promptTokens) / pre.cpuS,
      decodeTokensPerCpuSecond2: (CORES * o.decodeTokens) / dec.cpuS,
      load: loadavg()[0]!,
      ...(m
        ? { moe: { experts: m.num_experts, expertsPerToken: m.num_experts_per_tok, bytesPerTokenAllExperts: info.bytesPerToken + inactiveExpertBytes(info.config, info.dtype) } }
        : {}),
    };
    if (o.profile) row.profile = await profileSteps(gpu, session, prompt, Math.min(o.decodeTokens, 16));
    return row;
  } finally {
    model.dispose();
  }
}

/** Times every op with timestamp queries: the prefill, then `steps` decode steps (averaged). */
async function profileSteps(gpu: Gpu, session: Session, prompt: number[], steps: number): Promise<NonNullable<BenchRow['profile']>> {
  const profiler = new StepProfiler(gpu.device);
  session.profiler = profiler;
  try {
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
    return { prefill, decode };
  } finally {
    session.profiler = undefined;
    profiler.destroy();
  }
}
