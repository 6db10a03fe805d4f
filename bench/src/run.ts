// What pnpm bench runs (bench.ts is its command line): the argument parser, the sections,
// and the printed report. Every section yields BenchRow rows; --json prints them all.

import { existsSync, readFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { describeGpu, getGpu, type DeviceInfo } from '@webgpu-chat/engine';
import { BUNDLED_MODEL } from '@webgpu-chat/engine/testing';
import { benchModel, benchPrompt, CORES, folderName, runEngine, type BenchFormat } from './engine-run.ts';
import { GGUF_FORMATS, type GgufFormat } from './gguf.ts';
import { benchGguf, LLAMA_BACKENDS, runLlamaCpp, type LlamaBackend } from './llama-cpp.ts';
import { moeBenchModels } from './moe-models.ts';
import { familyBenchModels } from './family-models.ts';
import { formatProfile, formatTable, type BenchRow, type Section } from './rows.ts';
import { PREFIX_NEW_TOKENS, runServeLoad, SHARED_PREFIX_TOKENS, type ServeLoadOptions } from './serve-load.ts';
import { markovModel, runLookup } from './lookup.ts';
import { runSpeculative } from './speculative.ts';
import { runConstrained } from './constrained.ts';

export class BenchArgsError extends Error {
  override name = 'BenchArgsError';
}

export interface BenchOptions {
  sections: Section[];
  /** Our formats for the dense rows: a dtype, or q8/q4 (linear layers quantized while loading, embeddings and LM head bf16). */
  formats: BenchFormat[];
  /** Formats of the other families' rows: bf16 unless --dtype/--quantize name formats. */
  familyFormats: BenchFormat[];
  promptTokens: number;
  decodeTokens: number;
  /** The dense model and the dense speculative target (default: the Qwen2.5-0.5B-shaped bench model). */
  model?: string;
  /** The MoE models (default: the Mixtral- and Qwen3-MoE-shaped bench models); the last is the MoE speculative target. */
  moeModels?: string[];
  /** The other families' models (default: the Gemma 3 270M- and Phi-3-mini-shaped bench models). */
  familyModels?: string[];
  profile: boolean;
  /** llama.cpp rows next to the dense ones, in each GGUF format, on each backend. */
  compare: boolean;
  ggufFormats: GgufFormat[];
  llamaBackends: LlamaBackend[];
  /** num_assistant_tokens of the speculative rows: the longest draft. */
  k: number;
  /** prompt_lookup_num_tokens of the --lookup rows. */
  lookupTokens: number;
  /** The load run against serve, once per format (on the dense model). */
  serve: ServeLoadOptions & { formats: BenchFormat[] };
  json: boolean;
}

export interface BenchReport {
  adapter: DeviceInfo;
  /** 1-, 5- and 15-minute load averages when the run started. */
  loadAtStart: number[];
  rows: BenchRow[];
  /** Why rows that were asked for are missing (llama.cpp cannot run, a model cannot be converted). */
  skipped: string[];
}

const DTYPES: readonly string[] = ['f32', 'f16', 'bf16', 'q8', 'q4'];
const VALUE_FLAGS = ['--dtype', '--quantize', '--prompt', '--decode', '--model', '--moe-model', '--family-model', '--gguf', '--llama', '--k', '--lookup-tokens', '--streams', '--prompt-tokens', '--new-tokens', '--serve-args'];
const SWITCHES = ['--json', '--profile', '--compare', '--dense', '--families', '--moe', '--speculative', '--lookup', '--serve', '--constrained', '--all'];
/** A flag whose value is itself flags (for serve). */
const PASSED_THROUGH = '--serve-args';

/** The GGUF format llama.cpp runs for one of our formats (f32 is not compared). */
const GGUF_FOR: Partial<Record<BenchFormat, GgufFormat>> = { bf16: 'f16', f16: 'f16', q8: 'q8_0', q4: 'q4_0' };
/** Our format a GGUF format is compared with. */
const OURS_FOR: Record<GgufFormat, BenchFormat[]> = { f32: ['f32'], f16: ['bf16', 'f16'], bf16: ['bf16', 'f16'], q8_0: ['q8'], q4_0: ['q4'] };

export function parseArgs(argv: readonly string[]): BenchOptions {
  const values = new Map<string, string>();
  const switches = new Set<string>();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (VALUE_FLAGS.includes(a)) {
      const v = argv[++i];
      if (v === undefined || (v.startsWith('--') && a !== PASSED_THROUGH)) throw new BenchArgsError(`${a} needs a value`);
      values.set(a, v);
    } else if (SWITCHES.includes(a)) switches.add(a);
    else throw new BenchArgsError(`unknown argument '${a}'; flags: ${[...VALUE_FLAGS, ...SWITCHES].join(' ')}`);
  }
  const list = (k: string, d: string) => (values.get(k) ?? d).split(',').filter(Boolean);
  const count = (k: string, d: number, min: number) => {
    const v = values.has(k) ? Number(values.get(k)) : d;
    if (!Number.isInteger(v) || v < min) throw new BenchArgsError(`${k} must be an integer >= ${min}, got '${values.get(k)}'`);
    return v;
  };
  const formats = [...list('--dtype', 'bf16,f32'), ...list('--quantize', '')];
  for (const f of formats) if (!DTYPES.includes(f)) throw new BenchArgsError(`unknown format '${f}' in --dtype/--quantize; use ${DTYPES.join(', ')}`);
  const ggufFormats = values.has('--gguf') ? list('--gguf', '') : [...new Set(formats.map((f) => GGUF_FOR[f as BenchFormat]).filter((f) => f !== undefined))];
  for (const f of ggufFormats) if (!(GGUF_FORMATS as string[]).includes(f)) throw new BenchArgsError(`unknown GGUF format '${f}'; use ${GGUF_FORMATS.join(', ')}`);
  const llamaBackends = list('--llama', LLAMA_BACKENDS.join(','));
  for (const b of llamaBackends) if (!(LLAMA_BACKENDS as string[]).includes(b)) throw new BenchArgsError(`unknown llama.cpp backend '${b}'; use ${LLAMA_BACKENDS.join(', ')}`);

  // The dense table runs unless only other sections are asked for, or when a dense-only flag
  // says so; with --serve, --dtype and --quantize pick the serve rows' formats instead.
  const all = switches.has('--all');
  const serve = all || switches.has('--serve');
  const formatsNamed = values.has('--dtype') || values.has('--quantize');
  const denseAsked = all || switches.has('--dense') || switches.has('--compare') || switches.has('--profile') || (formatsNamed && !serve);
  const sections: Section[] = [];
  const onlyOthers = switches.has('--moe') || switches.has('--speculative') || switches.has('--families') || switches.has('--lookup') || switches.has('--constrained') || serve;
  if (denseAsked || !onlyOthers) sections.push('dense');
  // The other families' rows come with the default table, and on their own with --families.
  if (all || switches.has('--families') || !onlyOthers) sections.push('families');
  if (all || switches.has('--moe')) sections.push('moe');
  if (all || switches.has('--speculative')) sections.push('speculative');
  if (all || switches.has('--lookup')) sections.push('lookup');
  if (all || switches.has('--constrained')) sections.push('constrained');
  if (serve) sections.push('serve');
  const model = values.get('--model');
  const moeModels = values.has('--moe-model') ? list('--moe-model', '') : undefined;
  const familyModels = values.has('--family-model') ? list('--family-model', '') : undefined;
  return {
    sections,
    formats: formats as BenchFormat[],
    promptTokens: count('--prompt', 128, 1),
    decodeTokens: count('--decode', 64, 1),
    ...(model ? { model } : {}),
    ...(moeModels ? { moeModels } : {}),
    ...(familyModels ? { familyModels } : {}),
    familyFormats: (formatsNamed ? formats : ['bf16']) as BenchFormat[],
    profile: switches.has('--profile'),
    compare: all || switches.has('--compare'),
    ggufFormats: ggufFormats as GgufFormat[],
    llamaBackends: llamaBackends as LlamaBackend[],
    k: count('--k', 4, 1),
    lookupTokens: count('--lookup-tokens', 10, 1),
    serve: {
      formats: (formatsNamed ? formats : ['bf16']) as BenchFormat[],
      streams: count('--streams', 8, 1),
      promptTokens: count('--prompt-tokens', 16, 1),
      // Two at least: inter-token latency needs a second token.
      newTokens: count('--new-tokens', 48, 2),
      serveArgs: (values.get(PASSED_THROUGH) ?? '').split(/\s+/).filter(Boolean),
    },
    json: switches.has('--json'),
  };
}

/** Runs the sections `o` asks for, in order: dense (with llama.cpp), MoE, speculative, serve. */
export async function runBench(o: BenchOptions): Promise<BenchReport> {
  const gpu = await getGpu();
  const report: BenchReport = { adapter: gpu.info, loadAtStart: loadavg(), rows: [], skipped: [] };
  const engine = { promptTokens: o.promptTokens, decodeTokens: o.decodeTokens };
  const denseModel = () => o.model ?? benchModel();
  const moeModels = () => o.moeModels ?? moeBenchModels();

  if (o.sections.includes('dense')) {
    const dir = denseModel();
    const ours: BenchRow[] = [];
    for (const f of o.formats) ours.push(await runEngine(dir, f, { ...engine, section: 'dense', profile: o.profile }));
    report.rows.push(...ours);
    if (o.compare) report.rows.push(...(await runLlamaRows(dir, ours, o, report.skipped)));
  }
  if (o.sections.includes('families')) {
    for (const dir of o.familyModels ?? familyBenchModels()) for (const f of o.familyFormats) report.rows.push(await runEngine(dir, f, { ...engine, section: 'families' }));
  }
  if (o.sections.includes('moe')) {
    for (const dir of moeModels()) report.rows.push(await runEngine(dir, 'bf16', { ...engine, section: 'moe' }));
  }
  if (o.sections.includes('speculative')) {
    // stories260K (a trained model) shows acceptance on real text; the random-weight targets show the speed.
    const stories = !o.model && existsSync(join(BUNDLED_MODEL, 'model.safetensors')) ? [BUNDLED_MODEL] : [];
    const targets = [denseModel(), ...stories, moeModels().at(-1)!];
    report.rows.push(...(await runSpeculative({ targets, promptTokens: o.promptTokens, decodeTokens: o.decodeTokens, k: o.k })));
  }
  if (o.sections.includes('lookup')) {
    const stories = !o.model && existsSync(join(BUNDLED_MODEL, 'model.safetensors')) ? [BUNDLED_MODEL] : [];
    const dense = o.model ? [o.model] : [benchModel(), markovModel()];
    report.rows.push(...(await runLookup({ targets: [...stories, ...dense], decodeTokens: o.decodeTokens, lookupTokens: o.lookupTokens, k: o.k })));
  }
  if (o.sections.includes('constrained')) report.rows.push(...(await runConstrained({ dir: denseModel(), decodeTokens: o.decodeTokens })));
  if (o.sections.includes('serve')) {
    for (const f of o.serve.formats) report.rows.push(...(await runServeLoad(denseModel(), f, o.serve)));
  }
  return report;
}

/** llama.cpp on the dense model in each GGUF format and backend; each row with our matching row's ratio. */
async function runLlamaRows(dir: string, ours: BenchRow[], o: BenchOptions, skipped: string[]): Promise<BenchRow[]> {
  const vocab = (JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as { vocab_size: number }).vocab_size;
  const prompt = benchPrompt(o.promptTokens, vocab);
  const rows: BenchRow[] = [];
  for (const format of o.ggufFormats) {
    let gguf;
    try {
      gguf = benchGguf(dir, format);
    } catch (e) {
      skipped.push(`llama.cpp ${format}: skipped, the model could not be converted to GGUF: ${(e as Error).message}`);
      continue;
    }
    for (const backend of o.llamaBackends) {
      const r = await runLlamaCpp(gguf, folderName(dir), backend, prompt, o.decodeTokens, CORES, CORES);
      if (typeof r === 'string') {
        skipped.push(`llama.cpp ${backend} ${format}: skipped, ${r}`);
        continue;
      }
      const mine = ours.find((m) => OURS_FOR[format].includes(m.format as BenchFormat));
      if (mine) r.ours = { format: mine.format, prefill: mine.prefillTokensPerSecond! / r.prefillTokensPerSecond!, decode: mine.decodeTokensPerSecond / r.decodeTokensPerSecond };
      rows.push(r);
    }
  }
  return rows;
}

const TITLES: Record<Section, string> = {
  dense: 'Dense',
  families: 'Other families: Gemma 3 270M-shaped, Phi-3-mini-shaped (4 of 32 layers)',
  moe: 'Mixture of experts (bf16): decode reads only the selected experts',
  speculative: 'Speculative decoding (greedy): plain vs assisted on the same target',
  lookup: 'Speculative decoding by task (greedy): plain vs prompt lookup vs self-q4, input-grounded and open-ended prompts',
  serve: 'Serving under load: streamed /v1/completions against pnpm serve',
  constrained: 'Constrained decoding: a JSON schema against none, same model and prompt',
};

/** The printed report: one table per section, then the step profiles and what was skipped. */
export function formatReport(r: BenchReport, o: Pick<BenchOptions, 'promptTokens' | 'decodeTokens' | 'k' | 'lookupTokens' | 'serve'>): string {
  const out: string[] = [];
  const la = r.loadAtStart.map((x) => x.toFixed(2)).join(', ');
  const lengths = r.rows.some((x) => x.section !== 'serve') ? `; ${o.promptTokens}-token prompt, ${o.decodeTokens} decoded tokens` : '';
  out.push(`${describeGpu(r.adapter)}; load average at start ${la}${lengths}.`);
  out.push(`"2-core est." = tokens per CPU-second x ${CORES}; load = 1-minute load average when the row finished.`);
  for (const s of ['dense', 'families', 'moe', 'speculative', 'lookup', 'constrained', 'serve'] as const) {
    const rows = r.rows.filter((x) => x.section === s);
    if (!rows.length) continue;
    out.push('', `## ${TITLES[s]}`, '', formatTable(rows));
    if (s === 'speculative')
      out.push(
        '',
        `Speculative: prompts of at most 32 tokens, already cached when timing starts; drafts of up to ${o.k} tokens, each length chosen from measured step costs and the running acceptance (the 'measured' schedule); decode tok/s is the assisted run's, plain decode tok/s the same target without a draft; plain and assisted runs in turns (at least four rounds and 60 s) after the generator's warm-up (every step size compiled and timed); speedup = the median over rounds of the two rates in the same round.`,
      );
    if (s === 'lookup')
      out.push(
        '',
        `By task (qwen2.5-0.5b-shaped-markov: the dense model's shape with zero attention output and an untied head, so each token is a fixed function of the one before and the reply reproduces text of its prompt). grounded = the prompt holds an opening and the target's own greedy reply to it, twice, then the opening again, so the reply repeats text of its prompt; open = other openings. ` +
          `Each run timed after an untimed run of the same prompt and settings (prompt cached, step costs measured), the generator warmed up first as serve's is (every step size compiled and timed); plain and drafters in turns, at least four rounds and 60 s (at most 40 rounds); prompt lookup drafts up to ${o.lookupTokens} tokens (max_matching_ngram_size 2), self-q4 up to ${o.k}; every length chosen by the 'measured' schedule. speedup = the median over rounds of decode tok/s ÷ plain decode tok/s of the same task in the same round; lookup ceiling = what prompt lookup would give under a schedule that knew which drafts hold, with the median step costs of the timed runs (how much the replies repeat their context).`,
      );
    if (s === 'constrained')
      out.push(
        '',
        'Constrained: a 16-token id prompt; decode tok/s = 1 ÷ the median gap between tokens, over replies to a form-filling schema (seeds until the budget is decoded) vs the same budget unconstrained, alternated twice; ' +
          'mask ms = XGrammar bitmask + applying it to the row; the constrained path reads the whole logits row back where the plain one reads an argmax (greedy) or top-50 (sampled).',
      );
    if (s === 'serve') {
      const extra = o.serve.serveArgs.length ? ` (with ${o.serve.serveArgs.join(' ')})` : '';
      out.push(
        '',
        `Serve${extra}: ${o.serve.streams} requests of ${o.serve.promptTokens}-token id prompts and ${o.serve.newTokens} new tokens (greedy, ignore_eos), one after another, then all at once; ` +
          `prefix cache: ${o.serve.streams} requests of ${SHARED_PREFIX_TOKENS} shared + ${o.serve.promptTokens} own tokens and ${Math.min(o.serve.newTokens, PREFIX_NEW_TOKENS)} new tokens, one after another, after one that primes the prefix. ` +
          'Output tok/s = generated tokens ÷ the phase\'s wall time; ITL is per token (a chunk of several tokens counts as that many equal gaps); ' +
          'speedup = concurrent output tok/s ÷ sequential; greedy identical = every request got the same tokens in both phases.',
      );
    }
  }
  const profiles = r.rows.flatMap(formatProfile);
  if (profiles.length) out.push('', ...profiles);
  if (r.skipped.length) out.push('', ...r.skipped);
  return out.join('\n');
}
