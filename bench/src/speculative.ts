// Plain vs assisted (speculative) greedy decoding on the same target: decode tokens/s,
// acceptance rate and mean accepted tokens per verification step, per draft.
//
//   npx tsx bench/src/speculative.ts [--model DIR] [--layers 1,3,self] [--k 4] [--decode 64] [--json]
//
// Drafts are truncated-layer copies of the target (numLayers) or the target's own
// weights ('self': every token accepted, so its row shows the verification overhead
// alone). Prompts are plain text; the target must have a tokenizer.json.

import { join } from 'node:path';
import { describeGpu, getGpu } from '@webgpu-chat/engine';
import { pipeline, type GenerationStats, type TextGenerationPipeline } from '../../packages/chat/src/index.ts';
import { REPO_ROOT } from '../../packages/engine/test/paths.ts';

interface Row {
  model: string;
  draft: string;
  numAssistantTokens: number;
  newTokens: number;
  decodeTokensPerSecond: number;
  plainDecodeTokensPerSecond: number;
  speedup: number;
  acceptanceRate: number;
  meanAcceptedTokens: number;
  identicalToPlain: boolean;
}

function args() {
  const a = process.argv.slice(2);
  const get = (k: string, d: string) => {
    const i = a.indexOf(k);
    return i >= 0 && a[i + 1] ? a[i + 1]! : d;
  };
  return {
    model: get('--model', join(REPO_ROOT, 'models', 'stories260K')),
    layers: get('--layers', '1,3,4,self').split(','),
    k: Number(get('--k', '4')),
    decode: Number(get('--decode', '64')),
    json: a.includes('--json'),
  };
}

const PROMPTS = ['Once upon a time', 'The little dog', 'Lily and Ben went to the park. They'];

/** Runs every prompt; decode tokens/s over all of them (time after each first token). */
async function measure(pipe: TextGenerationPipeline, opts: Parameters<TextGenerationPipeline>[1]): Promise<{ texts: string[]; tps: number; stats: GenerationStats[] }> {
  const texts: string[] = [];
  const stats: GenerationStats[] = [];
  let tokens = 0;
  let seconds = 0;
  for (const prompt of PROMPTS) {
    const [{ generated_text }] = await pipe(prompt, opts);
    const s = pipe.lastStats!;
    texts.push(generated_text);
    stats.push(s);
    tokens += s.newTokens - 1;
    seconds += (s.totalMs - s.timeToFirstTokenMs) / 1000;
  }
  return { texts, tps: tokens / seconds, stats };
}

async function main(): Promise<void> {
  const o = args();
  const gpu = await getGpu();
  process.stderr.write(`${describeGpu(gpu.info)}\n`);
  const maxContext = 64 + o.decode + 8;
  const target = await pipeline('text-generation', o.model, { gpu, maxContext });
  const base = { max_new_tokens: o.decode, eos_token_id: [] as number[] };
  // Warm-up: compiles the pipelines of both paths.
  await target('Once', { max_new_tokens: 4 });
  const plain = await measure(target, base);
  const rows: Row[] = [];
  for (const l of o.layers) {
    const draft = l === 'self' ? target.model : await pipeline('text-generation', o.model, { gpu, maxContext, numLayers: Number(l) });
    const opts = { ...base, assistant_model: draft, num_assistant_tokens: o.k, num_assistant_tokens_schedule: 'heuristic_transient' as const };
    await target('Once', { ...opts, max_new_tokens: 8 });
    const spec = await measure(target, opts);
    const drafted = spec.stats.reduce((s, x) => s + x.speculative!.draftedTokens, 0);
    const accepted = spec.stats.reduce((s, x) => s + x.speculative!.acceptedTokens, 0);
    const steps = spec.stats.reduce((s, x) => s + x.speculative!.steps, 0);
    rows.push({
      model: o.model.split('/').pop()!,
      draft: l === 'self' ? 'self (same weights)' : `first ${l} layers`,
      numAssistantTokens: o.k,
      newTokens: spec.stats.reduce((s, x) => s + x.newTokens, 0),
      decodeTokensPerSecond: spec.tps,
      plainDecodeTokensPerSecond: plain.tps,
      speedup: spec.tps / plain.tps,
      acceptanceRate: drafted ? accepted / drafted : 0,
      meanAcceptedTokens: steps ? accepted / steps : 0,
      identicalToPlain: spec.texts.every((t, i) => t === plain.texts[i]),
    });
    if (l !== 'self' && typeof draft === 'function') draft.dispose();
  }
  target.dispose();
  if (o.json) {
    console.log(JSON.stringify({ device: gpu.info, rows }, null, 2));
    return;
  }
  console.log('| target | draft | K start | plain tok/s | assisted tok/s | speedup | acceptance | accepted/step | greedy identical |');
  console.log('|---|---|---|---|---|---|---|---|---|');
  for (const r of rows)
    console.log(
      `| ${r.model} | ${r.draft} | ${r.numAssistantTokens} | ${r.plainDecodeTokensPerSecond.toFixed(1)} | ${r.decodeTokensPerSecond.toFixed(1)} | ${r.speedup.toFixed(2)}x | ${(100 * r.acceptanceRate).toFixed(1)}% | ${r.meanAcceptedTokens.toFixed(2)} | ${r.identicalToPlain ? 'yes' : 'NO'} |`,
    );
}

await main();
