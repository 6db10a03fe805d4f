// `perplexity MODEL FILE [--ctx N] [--stride S] [--dtype D] [--quantize q8|q4]`: the
// perplexity of a text file with Transformers' documented sliding window
// (docs: "Perplexity of fixed-length models"): windows of at most ctx tokens start every
// `stride` tokens; each scores only the tokens past the previous window's end, with the
// rest of the window as context. ppl = exp(total NLL / scored tokens). A progress bar on a
// TTY (stderr); a JSON summary on stdout at the end. How quantization accuracy is reported.

import { readFileSync } from 'node:fs';
import { describeGpu, loadModel, scoreTokens, toFileSource, type LoadOptions, type Session } from '@webgpu-chat/engine';
import { ChatTokenizer } from '@webgpu-chat/chat';
import { DTYPES, UsageError, type Dtype } from './args.ts';
import { progressPrinter, resolveModel } from './hub.ts';

export const PERPLEXITY_HELP = `Usage: perplexity MODEL FILE [options]
  Perplexity of the text in FILE (Transformers' sliding-window method); JSON summary on stdout.
  MODEL               a model folder or a Hugging Face repo id
  --ctx N             tokens per window (default: min(1024, the model's context))
  --stride S          tokens between window starts (default: ctx / 2)
  --dtype D           ${DTYPES.join('|')} (default auto)
  --quantize Q        q8|q4: quantize the linear layers while loading
  --no-bos            do not start the text with the tokenizer's BOS
  -h, --help
`;

export interface PerplexityArgs {
  model: string;
  file: string;
  ctx?: number;
  stride?: number;
  dtype: Dtype;
  quantize?: 'q8' | 'q4';
  bos: boolean;
  help: boolean;
}

export function parsePerplexityArgs(argv: readonly string[]): PerplexityArgs {
  const pos: string[] = [];
  const out: Partial<PerplexityArgs> & { dtype: Dtype; bos: boolean; help: boolean } = { dtype: 'auto', bos: true, help: false };
  const int = (flag: string, v: string | undefined): number => {
    const n = Number(v);
    if (v === undefined || !Number.isInteger(n) || n < 1) throw new UsageError(`${flag} needs a positive integer, got ${JSON.stringify(v)}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '-h' || a === '--help') out.help = true;
    else if (a === '--ctx') out.ctx = int(a, argv[++i]);
    else if (a === '--stride') out.stride = int(a, argv[++i]);
    else if (a === '--no-bos') out.bos = false;
    else if (a === '--dtype') {
      const v = argv[++i];
      if (!DTYPES.includes(v as Dtype)) throw new UsageError(`--dtype must be one of ${DTYPES.join(', ')}, got ${JSON.stringify(v)}`);
      out.dtype = v as Dtype;
    } else if (a === '--quantize') {
      const v = argv[++i];
      if (v !== 'q8' && v !== 'q4') throw new UsageError(`--quantize must be q8 or q4, got ${JSON.stringify(v)}`);
      out.quantize = v;
    } else if (a.startsWith('-')) throw new UsageError(`unknown option ${a}`);
    else pos.push(a);
  }
  if (out.help) return { model: '', file: '', ...out };
  if (pos.length !== 2) throw new UsageError(`expected MODEL and FILE, got ${pos.length} argument(s)`);
  if (out.ctx !== undefined && out.stride !== undefined && out.stride > out.ctx) throw new UsageError(`--stride (${out.stride}) cannot exceed --ctx (${out.ctx})`);
  return { model: pos[0]!, file: pos[1]!, ...out };
}

export interface PerplexityResult {
  tokens: number;
  /** Tokens whose log-probability was counted (all but the first). */
  scored: number;
  nll: number;
  ppl: number;
  ctx: number;
  stride: number;
  seconds: number;
}

/**
 * Sliding-window perplexity over `ids` in a session (reused; truncated per window), with
 * Transformers' accounting: window [begin, min(begin + ctx, n)) scores its tokens past the
 * previous window's end (never its own first token, which has no prediction).
 */
export async function slidingPerplexity(session: Session, ids: readonly number[], ctx: number, stride: number, onProgress?: (done: number, total: number) => void): Promise<Omit<PerplexityResult, 'seconds'>> {
  if (ids.length < 2) throw new UsageError(`the text has ${ids.length} token(s): perplexity needs at least 2`);
  if (!(ctx >= 2 && stride >= 1 && stride <= ctx)) throw new UsageError(`need ctx >= 2 and 1 <= stride <= ctx, got ctx ${ctx}, stride ${stride}`);
  let nll = 0;
  let scored = 0;
  let prevEnd = 0;
  const total = ids.length - 1;
  for (let begin = 0; begin < ids.length; begin += stride) {
    const end = Math.min(begin + ctx, ids.length);
    const window = ids.slice(begin, end);
    const targets = end - prevEnd;
    session.truncate(0);
    const before = scored;
    const scores = await scoreTokens(session, window, {
      from: Math.max(1, window.length - targets),
      onProgress: (done) => onProgress?.(before + done, total),
    });
    for (const s of scores) nll -= s.logprob;
    scored += scores.length;
    prevEnd = end;
    if (end === ids.length) break;
  }
  return { tokens: ids.length, scored, nll, ppl: Math.exp(nll / scored), ctx, stride };
}

function bar(stream: NodeJS.WriteStream): (done: number, total: number) => void {
  const t0 = performance.now();
  return (done, total) => {
    if (!stream.isTTY) return;
    const w = 30;
    const f = total ? done / total : 1;
    const rate = done / Math.max((performance.now() - t0) / 1000, 1e-3);
    stream.write(`\r[${'#'.repeat(Math.round(f * w)).padEnd(w, '.')}] ${done}/${total} tokens ${rate.toFixed(0)} tok/s`);
  };
}

async function main(argv: string[]): Promise<number> {
  let args: PerplexityArgs;
  try {
    args = parsePerplexityArgs(argv);
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`perplexity: ${e.message}\n${PERPLEXITY_HELP}`);
      return 2;
    }
    throw e;
  }
  if (args.help) {
    process.stdout.write(PERPLEXITY_HELP);
    return 0;
  }
  const text = readFileSync(args.file, 'utf8');
  const resolved = await resolveModel(args.model, { onProgress: progressPrinter() });
  const source = toFileSource(resolved.path);
  const tokenizer = await ChatTokenizer.load(source);
  const load: LoadOptions = { dtype: args.dtype };
  if (args.quantize) load.quantize = args.quantize;
  const model = await loadModel(source, load);
  try {
    const ids = tokenizer.encode(text, { addSpecialTokens: args.bos });
    const ctx = Math.min(args.ctx ?? 1024, model.info.maxPositionEmbeddings);
    const stride = args.stride ?? Math.max(1, Math.floor(ctx / 2));
    if (stride > ctx) throw new UsageError(`--stride (${stride}) cannot exceed the window (${ctx} tokens)`);
    const session = model.createSession({ maxContext: ctx });
    process.stderr.write(`perplexity: ${args.model} (${model.info.dtype}${args.quantize ? `, ${args.quantize}` : ''}) on ${describeGpu(model.gpu.info)}: ${ids.length} tokens, ctx ${ctx}, stride ${stride}\n`);
    const t0 = performance.now();
    const r = await slidingPerplexity(session, ids, ctx, stride, bar(process.stderr));
    if (process.stderr.isTTY) process.stderr.write('\n');
    const result: PerplexityResult & { model: string; file: string; dtype: string; quantize: string | null } = {
      model: args.model,
      file: args.file,
      dtype: model.info.dtype,
      quantize: args.quantize ?? null,
      ...r,
      seconds: (performance.now() - t0) / 1000,
    };
    process.stdout.write(JSON.stringify(result) + '\n');
    return 0;
  } finally {
    model.dispose();
  }
}

// Run as a script (pnpm perplexity), not when imported by tests.
if (process.argv[1] && /perplexity\.ts$/.test(process.argv[1])) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (e: unknown) => {
      process.stderr.write(`perplexity: ${(e as Error).name}: ${(e as Error).message}\n`);
      process.exit(e instanceof UsageError ? 2 : 1);
    },
  );
}
