// pnpm bench: every speed figure of the project, in one table per section.
//
//   pnpm bench [--dtype bf16,f32,q8,q4] [--quantize q8,q4] [--prompt 128] [--decode 64] [--model DIR]
//              [--profile] [--compare [--gguf f16,q8_0,q4_0] [--llama vulkan,cpu]]
//              [--families [--family-model DIR,DIR]] [--moe [--moe-model DIR,DIR]] [--speculative [--k 4]] [--lookup [--lookup-tokens 10]]
//              [--serve [--streams 8] [--prompt-tokens 16] [--new-tokens 48] [--serve-args "FLAGS"]]
//              [--constrained] [--dense] [--families] [--all] [--json]
//
// Dense (the default section): prefill and decode tokens/s of a Qwen2.5-0.5B-shaped model
// (the real config, seeded random weights; or --model DIR) in each format, bytes of weights
// read per decoded token and the implied GB/s. q8/q4 quantize the linear layers while loading;
// embeddings and LM head stay bf16.
//   --profile times every op with timestamp queries (each op in its own pass, which itself
//   costs time) and prints each kernel family's share of a decode step and of the prefill.
//   --compare runs llama.cpp (node-llama-cpp) on the same weights, converted to GGUF (by
//   default in the formats matching --dtype: bf16 → f16, q8 → q8_0, q4 → q4_0), on each
//   --llama backend, in the same run, with our matching format's speed as a ratio to each.
// Other families (with the default table, or alone with --families): a Gemma 3 270M-shaped
//   model and a Phi-3-mini-shaped one (4 of its 32 layers) in bf16 (or the formats --dtype and
//   --quantize name): the families whose blocks differ most from the dense model's.
// --moe: the Mixtral- and Qwen3-MoE-shaped bench models (bf16): decode tok/s, bytes read per
//   token (only the selected experts) next to the resident bytes and what reading every
//   expert would take.
// --speculative: plain vs assisted greedy decoding on the dense model, stories260K (when
//   bundled and no --model) and the Qwen3-MoE-shaped model, each with a self-q4 draft and a
//   truncated-layer copy: acceptance rate and mean accepted tokens per step.
// --lookup: plain vs prompt lookup vs self-q4 on an input-grounded prompt (the reply repeats
//   text of the prompt) and open-ended ones, on stories260K, the dense model and the dense
//   shape made to copy (bench/src/lookup.ts): tokens/s, acceptance, accepted per step.
// --serve: a load run against `pnpm serve` on the dense model (bf16 unless --dtype/--quantize
//   name formats), as vLLM's `bench serve`: --streams streamed greedy requests of id prompts
//   one after another, then all at once (output tok/s, TTFT and per-token ITL p50/p90, the
//   speed-up, and whether every request got the same tokens both times), then requests
//   sharing a 96-token prefix (cached tokens as serve reports them, TTFT). --serve-args
//   passes flags on to serve (e.g. "--parallel 8").
// --constrained: decode tok/s of the dense model with a JSON-schema constraint against none
//   (greedy and sampled), the mask's time per token, and the logits row read-back it needs.
// Naming --families, --moe, --speculative, --lookup, --constrained or --serve alone runs only those; --dense, --compare, --profile,
// and --dtype or --quantize without --serve add the dense table back; --all runs everything
// (with --compare).
// Each engine is warmed up with the timed shapes, prefill is timed 3 times (the median is shown),
// then decode once over --decode steps.
// Every row carries the 1-minute load average, and tokens per CPU-second x 2 (what 2
// otherwise idle cores would give if the work scales with CPU time). --json prints the report
// (all rows); it is also written to .cache/bench/last.json.

import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { BENCH_CACHE } from './engine-run.ts';
import { BenchArgsError, formatReport, parseArgs, runBench } from './run.ts';

let options;
try {
  options = parseArgs(process.argv.slice(2));
} catch (e) {
  if (!(e instanceof BenchArgsError)) throw e;
  console.error(`bench: ${e.message}`);
  process.exit(2);
}
const report = await runBench(options);
mkdirSync(BENCH_CACHE, { recursive: true });
writeFileSync(join(BENCH_CACHE, 'last.json'), JSON.stringify(report, null, 2));
console.log(options.json ? JSON.stringify(report, null, 2) : formatReport(report, options));
process.exit(0);
