// The speculative rows of pnpm bench: plain vs assisted greedy decoding on the same target,
// with the acceptance rate and mean accepted tokens per verification step, for two drafts
// made from the target's own folder: 'self-q4' (its weights quantized to q4 while loading)
// and a truncated-layer copy (its first quarter of layers).
//
// It drives packages/chat's Generator and Assistant on token ids, so a folder needs
// no tokenizer: one with a tokenizer.json (stories260K) is prompted with text through it;
// others get id prompts and a stand-in tokenizer of one token per id (the loop only
// detokenizes with it). Decode speed: tokens of a run ÷ its time, where every timed run
// follows an untimed run of the same prompt and settings (the prompt is cached, the loop has
// measured the step sizes the path uses) and the generator was warmed up as serve's is, so
// plain and assisted runs time the same work: from the last prompt token to the budget; plain
// and assisted runs take turns (turns.ts).

import { existsSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { directorySource, getGpu, loadModel, type Model } from '@webgpu-chat/engine';
import { Assistant, ChatTokenizer, Generator, resolveGenerationConfig, type GenerationResult, type ResolvedGenerationConfig } from '@webgpu-chat/chat';
import { benchPrompt, engineName, folderName } from './engine-run.ts';
import type { BenchRow } from './rows.ts';
import { inTurns, pairedSpeedup, type TurnsOptions } from './turns.ts';

/** Text prompts for a target with a tokenizer (stories260K continues them sensibly). */
const TEXT_PROMPTS = ['Once upon a time', 'The little dog', 'Lily and Ben went to the park. They'];
/** Id prompts for a target without one. */
const ID_PROMPTS = 2;
/** Speculative rows compare decoding; a longer prompt would only lengthen the run. */
const MAX_PROMPT_TOKENS = 32;
/** Rounds of timed runs (every prompt, plain and assisted), taken in turns. */
const TURNS: TurnsOptions = { minRounds: 4, maxRounds: 40, budgetMs: 60_000 };

export interface SpeculativeOptions {
  /** Model folders to run as targets, each with its own drafts. */
  targets: string[];
  promptTokens: number;
  /** Token budget of each run (EOS can end one earlier, the same way in both paths). */
  decodeTokens: number;
  /** num_assistant_tokens: the longest draft the 'measured' schedule chooses. */
  k: number;
}

/** The tokenizer.json of a tokenizer with one token "<id>" per id and no special tokens: for folders without one. */
export function idTokenizerJson(vocabSize: number): Record<string, unknown> {
  const vocab: Record<string, number> = {};
  for (let i = 0; i < vocabSize; i++) vocab[`<${i}>`] = i;
  return { model: { type: 'BPE', vocab, merges: [] }, added_tokens: [], normalizer: null, pre_tokenizer: null, post_processor: null, decoder: null };
}

/** idTokenizerJson's tokenizer: for targets without a tokenizer.json. */
export function idTokenizer(vocabSize: number): ChatTokenizer {
  return new ChatTokenizer(idTokenizerJson(vocabSize), {});
}

interface Draft {
  name: string;
  load: () => Promise<Model>;
}

export async function runSpeculative(o: SpeculativeOptions): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  for (const dir of o.targets) rows.push(...(await runTarget(dir, o)));
  return rows;
}

async function runTarget(dir: string, o: SpeculativeOptions): Promise<BenchRow[]> {
  const gpu = await getGpu();
  const promptTokens = Math.min(o.promptTokens, MAX_PROMPT_TOKENS);
  const maxContext = promptTokens + o.decodeTokens + 16;
  const target = await loadModel(dir, { gpu, maxContext });
  const rows: BenchRow[] = [];
  try {
    const hasTokenizer = existsSync(join(dir, 'tokenizer.json'));
    const tokenizer = hasTokenizer ? await ChatTokenizer.load(directorySource(dir)) : idTokenizer(target.info.vocabSize);
    const prompts = hasTokenizer
      ? TEXT_PROMPTS.map((t) => tokenizer.encode(t).slice(0, promptTokens))
      : Array.from({ length: ID_PROMPTS }, (_, i) => benchPrompt(promptTokens, target.info.vocabSize, i));
    const batch = target.createBatch({ maxSequences: 2, maxContext, kvTokens: maxContext });
    const gen = new Generator(batch, tokenizer, target.info.vocabSize, { maxParallel: 1 });
    await gen.warmUp();
    const run = async (p: number[], config: ResolvedGenerationConfig, assistant?: Assistant): Promise<GenerationResult> => gen.generate({ promptIds: p, config, assistant }).result;
    const layers = Math.max(1, Math.round(target.info.config.num_hidden_layers / 4));
    const drafts: Draft[] = [
      { name: 'self-q4', load: () => loadModel(dir, { gpu, maxContext, dtype: target.info.dtype, quantize: 'q4' }) },
      { name: `first ${layers} of ${target.info.config.num_hidden_layers} layers`, load: () => loadModel(dir, { gpu, maxContext, numLayers: layers }) },
    ];
    const cfg = resolveGenerationConfig({ max_new_tokens: o.decodeTokens, num_assistant_tokens: o.k, num_assistant_tokens_schedule: 'measured' });
    /**
     * Every prompt plain and assisted, each timed from the cached prompt after an untimed run
     * of the same (which compiles and measures what the path uses); plain and assisted runs
     * take turns, so a drift in the machine's load weighs on both alike.
     */
    const measure = async (assistant: Assistant) => {
      for (const p of prompts) {
        await run(p, cfg);
        await run(p, cfg, assistant);
      }
      const every = (a?: Assistant) => async () => {
        const rs: GenerationResult[] = [];
        for (const p of prompts) rs.push(await run(p, cfg, a));
        return rs;
      };
      const [plain, spec] = await inTurns([every(), every(assistant)], TURNS);
      const runs = { plain: plain!.flat(), spec: spec!.flat(), speedup: pairedSpeedup(spec!, plain!) };
      const speed = (rs: GenerationResult[]) => {
        const tokens = rs.reduce((s, r) => s + r.stats.newTokens, 0);
        return { runs: rs, tokens, tokensPerSecond: tokens / (rs.reduce((s, r) => s + r.stats.totalMs, 0) / 1000) };
      };
      return { plain: speed(runs.plain), spec: speed(runs.spec), speedup: runs.speedup };
    };

    for (const d of drafts) {
      const draft = await d.load();
      const assistant = Assistant.open({ model: target, maxContext, tokenizer }, { model: draft });
      try {
        const { plain, spec, speedup } = await measure(assistant);
        const sum = (f: (r: GenerationResult) => number) => spec.runs.reduce((s, r) => s + f(r), 0);
        const drafted = sum((r) => r.stats.speculative!.draftedTokens);
        const accepted = sum((r) => r.stats.speculative!.acceptedTokens);
        const steps = sum((r) => r.stats.speculative!.steps);
        rows.push({
          section: 'speculative',
          engine: engineName(gpu),
          model: folderName(dir),
          format: target.info.dtype,
          promptTokens,
          decodeTokens: spec.tokens,
          decodeTokensPerSecond: spec.tokensPerSecond,
          weightBytes: target.info.weightBytes,
          bytesPerToken: target.info.bytesPerToken,
          load: loadavg()[0]!,
          speculative: {
            draft: d.name,
            draftBytesPerToken: draft.info.bytesPerToken,
            numAssistantTokens: o.k,
            plainDecodeTokensPerSecond: plain.tokensPerSecond,
            speedup,
            acceptanceRate: drafted ? accepted / drafted : 0,
            meanAcceptedTokens: steps ? accepted / steps : 0,
            steps,
            identicalToPlain: spec.runs.every((r, i) => r.tokenIds.join() === plain.runs[i]!.tokenIds.join()),
          },
        });
      } finally {
        assistant.dispose();
        draft.dispose();
      }
    }
    gen.dispose();
    batch.dispose();
  } finally {
    target.dispose();
  }
  return rows;
}
