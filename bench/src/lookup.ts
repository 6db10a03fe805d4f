// The speculative-by-task rows of pnpm bench (--lookup): when drafting pays. Each target runs
// an input-grounded task (the prompt holds the text the reply repeats) and an open-ended one,
// decoded plainly, with prompt lookup and with a self-q4 draft, greedy, every drafter on the
// 'measured' schedule (draft lengths from the loop's measured step costs).
//
// Input-grounded: the target's own greedy reply R to an opening O is put in the prompt twice
// as a text to continue, O + R + O + R + O, so the reply repeats R (a summary or edit that
// copies its input). Open-ended: other openings, nothing to copy from but the reply itself.
// Every run is timed in steady state, as a server runs after its warm-up (Generator.warmUp:
// every step size compiled and timed) and after a run of the same prompt and settings. The
// timed runs of plain decoding and the drafters take turns (turns.ts), so a drift in the
// machine's load weighs on all of them alike.
// Each row also gives the ceiling of prompt lookup on its task: the speedup a schedule that
// knew which drafts hold would get with the step costs measured here (how much the reply
// repeats what came before it, in this machine's terms).
// stories260K (a trained model) is prompted with text; a target without a tokenizer (the
// dense bench model, random weights) with id prompts. Neither copies much: the trained model
// is tiny and the random one drifts. markovModel() is the dense model's shape made to copy:
// its attention output is zero and its LM head untied, so each token is a fixed function of
// the one before, and a text of the prompt that starts where the reply stands is reproduced
// exactly (the cost of every step is the dense model's: the same shapes and kernels).

import { closeSync, existsSync, mkdirSync, openSync, readSync, writeSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { directorySource, getGpu, loadModel } from '@webgpu-chat/engine';
import { Assistant, ChatTokenizer, Generator, lookupDraft, resolveGenerationConfig, StepCosts, type GenerationConfig, type GenerationResult } from '@webgpu-chat/chat';
import { writeGeneratedModel } from '@webgpu-chat/engine/testing';
import { BENCH_CACHE, benchPrompt, engineName, folderName, QWEN25_05B } from './engine-run.ts';
import type { BenchRow } from './rows.ts';
import { idTokenizer } from './speculative.ts';
import { inTurns, pairedSpeedup, type TurnsOptions } from './turns.ts';

export interface LookupOptions {
  targets: string[];
  /** Tokens each run decodes (EOS can end one earlier, the same way in every path). */
  decodeTokens: number;
  /** prompt_lookup_num_tokens: the longest lookup draft. */
  lookupTokens: number;
  /** num_assistant_tokens: the longest self-q4 draft. */
  k: number;
}

/** Openings for a target with a tokenizer: the first makes the grounded prompt, the others the open-ended runs. */
const TEXT_OPENINGS = ['Once upon a time', 'The little dog', 'Lily and Ben went to the park. They'];
/** Id openings for one without. */
const ID_OPENING_TOKENS = 16;

type Task = 'grounded' | 'open';
/** Rounds of timed runs (every prompt with every drafter), taken in turns. */
const TURNS: TurnsOptions = { minRounds: 4, maxRounds: 40, budgetMs: 60_000 };
/** max_matching_ngram_size of the lookup rows (Transformers' default). */
const NGRAM = 2;

/** The Qwen2.5-0.5B-shaped folder that copies (see the file's head), written on first use. */
export function markovModel(): string {
  const dir = join(BENCH_CACHE, 'qwen2.5-0.5b-shaped-markov-bf16');
  const file = join(dir, 'model.safetensors');
  if (existsSync(file)) return dir;
  mkdirSync(dir, { recursive: true });
  process.stderr.write(`bench: writing a Qwen2.5-0.5B-shaped model with zero attention output and an untied head to ${dir} (once)\n`);
  writeGeneratedModel({ modelType: 'qwen2', dtype: 'bfloat16', seed: 2, scale: 0.02, config: { ...QWEN25_05B, tie_word_embeddings: false }, dir });
  zeroTensors(file, /self_attn\.o_proj\.weight$/);
  return dir;
}

/** Overwrites the data of every tensor whose name matches with zeros, in place. */
function zeroTensors(file: string, name: RegExp): void {
  const fd = openSync(file, 'r+');
  try {
    const len = Buffer.alloc(8);
    readSync(fd, len, 0, 8, 0);
    const headerLength = Number(len.readBigUInt64LE());
    const header = Buffer.alloc(headerLength);
    readSync(fd, header, 0, headerLength, 8);
    const tensors = JSON.parse(header.toString('utf8')) as Record<string, { data_offsets?: [number, number] }>;
    for (const [key, t] of Object.entries(tensors)) {
      if (!name.test(key) || !t.data_offsets) continue;
      const [start, end] = t.data_offsets;
      writeSync(fd, Buffer.alloc(end - start), 0, end - start, 8 + headerLength + start);
    }
  } finally {
    closeSync(fd);
  }
}

export async function runLookup(o: LookupOptions): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  for (const dir of o.targets) rows.push(...(await runTarget(dir, o)));
  return rows;
}

async function runTarget(dir: string, o: LookupOptions): Promise<BenchRow[]> {
  const gpu = await getGpu();
  const hasTokenizer = existsSync(join(dir, 'tokenizer.json'));
  // The grounded prompt holds an opening and a reply twice and the opening again; the run adds another reply.
  const maxContext = 4 * (o.decodeTokens + 32) + 16;
  const target = await loadModel(dir, { gpu, maxContext });
  const rows: BenchRow[] = [];
  try {
    const V = target.info.vocabSize;
    const tokenizer = hasTokenizer ? await ChatTokenizer.load(directorySource(dir)) : idTokenizer(V);
    const openings = hasTokenizer ? TEXT_OPENINGS.map((t) => tokenizer.encode(t)) : [0, 1, 2].map((salt) => benchPrompt(ID_OPENING_TOKENS, V, salt));
    const batch = target.createBatch({ maxSequences: 4, maxContext, kvTokens: 2 * maxContext });
    const gen = new Generator(batch, tokenizer, V, { maxParallel: 1 });
    await gen.warmUp();
    const run = (p: number[], c: GenerationConfig, assistant?: Assistant): Promise<GenerationResult> => gen.generate({ promptIds: p, config: resolveGenerationConfig(c), assistant }).result;

    const base: GenerationConfig = { max_new_tokens: o.decodeTokens, num_assistant_tokens_schedule: 'measured' };
    const opening = openings[0]!;
    const reply = (await run(opening, base)).tokenIds;
    const continuation = hasTokenizer ? tokenizer.encode(TEXT_OPENINGS[0]!, { addSpecialTokens: false }) : opening;
    const prompts: Record<Task, number[][]> = { grounded: [[...opening, ...reply, ...continuation, ...reply, ...continuation]], open: openings.slice(1) };

    const q4 = await loadModel(dir, { gpu, maxContext, dtype: target.info.dtype, quantize: 'q4' });
    const assistant = Assistant.open({ model: target, maxContext, tokenizer }, { model: q4 });
    const drafters: { name: string; bytes: number; config: GenerationConfig; assistant?: Assistant }[] = [
      { name: 'none (plain)', bytes: 0, config: base },
      { name: `prompt lookup (${o.lookupTokens})`, bytes: 0, config: { ...base, prompt_lookup_num_tokens: o.lookupTokens, max_matching_ngram_size: NGRAM } },
      { name: 'self-q4', bytes: q4.info.bytesPerToken, config: { ...base, num_assistant_tokens: o.k }, assistant },
    ];
    try {
      for (const task of ['grounded', 'open'] as const) {
        // An untimed run of each (compiles, caches the prompt, measures step costs), then the timed ones in turns.
        for (const p of prompts[task]) for (const d of drafters) await run(p, d.config, d.assistant);
        const times = recordStepTimes(gen.stepCosts);
        const rounds = await inTurns(
          drafters.map((d) => async () => {
            const rs: GenerationResult[] = [];
            for (const p of prompts[task]) rs.push(await run(p, d.config, d.assistant));
            return rs;
          }),
          TURNS,
        );
        times.stop();
        const measured = rounds.map((byRound): Measured => {
          const rs = byRound.flat();
          const tokens = rs.reduce((s, x) => s + x.stats.newTokens, 0);
          return { runs: rs, tokens, tokensPerSecond: tokens / (rs.reduce((s, x) => s + x.stats.totalMs, 0) / 1000) };
        });
        const eos = new Set([target.info.config.eos_token_id ?? []].flat());
        const replies = measured[0]!.runs.slice(0, prompts[task].length).map((r) => r.tokenIds);
        const ceiling = lookupCeiling(prompts[task], replies, times.medians(), o.lookupTokens, eos);
        drafters.forEach((d, i) => rows.push(row(task, d.name, d.bytes, measured[i]!, measured[0]!, pairedSpeedup(rounds[i]!, rounds[0]!), ceiling)));
      }
    } finally {
      assistant.dispose();
      q4.dispose();
      gen.dispose();
      batch.dispose();
    }
  } finally {
    target.dispose();
  }
  return rows;

  function row(task: Task, draft: string, draftBytes: number, spec: Measured, plain: Measured, speedup: number, ceiling: number): BenchRow {
    const sum = (f: (r: GenerationResult) => number) => spec.runs.reduce((s, r) => s + f(r), 0);
    const drafted = sum((r) => r.stats.speculative?.draftedTokens ?? 0);
    const accepted = sum((r) => r.stats.speculative?.acceptedTokens ?? 0);
    const steps = sum((r) => r.stats.speculative?.steps ?? 0);
    return {
      section: 'lookup',
      engine: engineName(gpu),
      model: folderName(dir),
      format: target.info.dtype,
      promptTokens: spec.runs[0]!.stats.promptTokens,
      decodeTokens: spec.tokens,
      decodeTokensPerSecond: spec.tokensPerSecond,
      weightBytes: target.info.weightBytes,
      bytesPerToken: target.info.bytesPerToken,
      load: loadavg()[0]!,
      speculative: {
        task,
        draft,
        draftBytesPerToken: draftBytes,
        numAssistantTokens: draft.startsWith('prompt lookup') ? o.lookupTokens : o.k,
        plainDecodeTokensPerSecond: plain.tokensPerSecond,
        speedup,
        acceptanceRate: drafted ? accepted / drafted : 0,
        meanAcceptedTokens: steps ? accepted / steps : 0,
        steps,
        identicalToPlain: spec.runs.every((r, i) => r.tokenIds.join() === plain.runs[i]!.tokenIds.join()),
        lookupCeiling: ceiling,
      },
    };
  }
}

/**
 * Every decode step's milliseconds by its size, heard from the loop's step costs until stop.
 * The loop's own means follow the last few steps, so a stall near the end would skew a
 * ceiling taken from them; medians over every timed run do not.
 */
function recordStepTimes(costs: StepCosts): { stop(): void; medians(): StepCosts } {
  const times = new Map<number, number[]>();
  const observe = costs.observe;
  costs.observe = (tokens, ms) => {
    observe.call(costs, tokens, ms);
    (times.get(tokens) ?? times.set(tokens, []).get(tokens)!).push(ms);
  };
  return {
    stop: () => void (costs.observe = observe),
    // A size no timed run took keeps the loop's own mean (from the warm-up).
    medians: () => {
      const m = new StepCosts();
      m.seed(costs.timed.map(([tokens, ms]) => {
        const ts = [...(times.get(tokens) ?? [])].sort((a, b) => a - b);
        return { tokens, ms: ts.length > 0 ? ts[ts.length >> 1]! : ms };
      }));
      return m;
    },
  };
}

/**
 * The speedup of prompt lookup under a schedule that knew, at each step, how much of the
 * draft the model would accept and drafted the best length within it (none when no token
 * holds): decode steps of the replies to `prompts` with their measured costs, against one
 * plain step per token.
 */
export function lookupCeiling(prompts: readonly number[][], replies: readonly number[][], costs: StepCosts, maxDraft: number, eos: ReadonlySet<number>): number {
  let tokens = 0;
  let steps = 0;
  prompts.forEach((prompt, p) => {
    const reply = replies[p]!;
    const seq = [...prompt];
    for (let i = 0; i < reply.length; ) {
      const draft = lookupDraft(seq, NGRAM, Math.min(maxDraft, reply.length - i - 1), eos);
      let held = 0;
      while (held < draft.length && draft[held] === reply[i + held]) held++;
      let best = 0;
      for (let k = 1; k <= held; k++) if ((k + 1) / costs.relative(k + 1) > (best + 1) / costs.relative(best + 1)) best = k;
      seq.push(...reply.slice(i, i + best + 1));
      i += best + 1;
      steps += costs.relative(best + 1);
    }
    tokens += reply.length;
  });
  return steps > 0 ? tokens / steps : 1;
}

interface Measured {
  runs: GenerationResult[];
  tokens: number;
  tokensPerSecond: number;
}

