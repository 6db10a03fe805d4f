// The serve rows of pnpm bench (--serve): a load run against a real `serve`, as vLLM's
// `bench serve` does. serve runs as a child process, started as a user starts it, so the
// rows measure what a client sees: HTTP, the queue, streaming. After a warm-up, the same N
// streamed greedy completions of token-id prompts are sent twice: one after another, then
// all at once. A server that batches concurrent requests shows it in output tokens/s, and
// must give every request the same tokens either way (batch invariance). A third phase
// sends requests that share a long prefix one after another, after one that primes it.
// Only OpenAI's completions API and vLLM's return_token_ids are assumed: what serve reports
// beyond them (usage.prompt_tokens_details.cached_tokens) is shown, and counts 0 where absent.

import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { getGpu } from '@webgpu-chat/engine';
import { REPO_ROOT } from '@webgpu-chat/engine/testing';
import { benchPrompt, engineName, folderName, isQuantize, type BenchFormat } from './engine-run.ts';
import type { BenchRow, ServeFigures, Spread } from './rows.ts';
import { idTokenizerJson } from './speculative.ts';

/** Tokens every prefix-cache request shares before its own prompt. */
export const SHARED_PREFIX_TOKENS = 96;
/** New tokens per prefix-cache request (fewer when --new-tokens is): that phase is about the time to first token. */
export const PREFIX_NEW_TOKENS = 8;
/** New tokens per warm-up request: enough for prefill and a few decode steps. */
const WARMUP_NEW_TOKENS = 4;

const SERVE = join(REPO_ROOT, 'apps', 'cli', 'src', 'serve.ts');
const READY = / ready in .* at (http:\/\/\S+)\/v1\n/;

export interface ServeLoadOptions {
  /** Requests per phase. */
  streams: number;
  promptTokens: number;
  newTokens: number;
  /** Flags for serve after the bench's own, so they can override them. */
  serveArgs: string[];
}

/** A choice of a streamed /v1/completions chunk, with vLLM's return_token_ids. */
export interface StreamChoice {
  text: string;
  finish_reason: string | null;
  token_ids?: number[];
}

export interface StreamUsage {
  completion_tokens: number;
  prompt_tokens_details?: { cached_tokens?: number } | null;
}

interface StreamChunk {
  choices?: StreamChoice[];
  usage?: StreamUsage | null;
  error?: { message: string };
}

/** A choice as it arrived (performance.now() ms). */
export interface Received {
  at: number;
  choice: StreamChoice;
}

export interface RequestResult {
  tokenIds: number[];
  ttftMs: number;
  /** One entry per token after the first. */
  itlMs: number[];
  e2eMs: number;
  cachedTokens: number;
}

/**
 * One request's figures from its stream. The finish chunk's token_ids are either every
 * generated id (this server) or only the chunk's own (vLLM); usage's count tells which.
 */
export function requestResult(sentAt: number, endAt: number, received: readonly Received[], usage: StreamUsage | undefined): RequestResult {
  if (!usage) throw new Error('serve sent no usage chunk (stream_options.include_usage)');
  const total = usage.completion_tokens;
  const ids = (c: StreamChoice) => {
    if (!c.token_ids) throw new Error("serve's stream chunks carry no token_ids (return_token_ids)");
    return c.token_ids;
  };
  const content = received.filter((r) => r.choice.finish_reason === null);
  const contentIds = content.flatMap((r) => ids(r.choice));
  const final = received.find((r) => r.choice.finish_reason !== null);
  const finalIds = final?.choice.token_ids ?? [];
  const finalIsWhole = finalIds.length === total;
  const tokenIds = finalIsWhole ? finalIds : [...contentIds, ...finalIds];
  if (tokenIds.length !== total) throw new Error(`serve streamed ${tokenIds.length} token ids but usage.completion_tokens is ${total}`);

  const arrivals = content.map((r) => ({ at: r.at, tokens: ids(r.choice).length }));
  if (final) arrivals.push({ at: final.at, tokens: finalIsWhole ? total - contentIds.length : finalIds.length });
  const withTokens = arrivals.filter((a) => a.tokens > 0);
  if (!withTokens.length) throw new Error('serve streamed no tokens');
  // A chunk of several tokens (a batching server's) stands for that many equal gaps.
  const itlMs = withTokens.slice(1).flatMap((a, i) => Array<number>(a.tokens).fill((a.at - withTokens[i]!.at) / a.tokens));
  return { tokenIds, ttftMs: withTokens[0]!.at - sentAt, itlMs, e2eMs: endAt - sentAt, cachedTokens: usage.prompt_tokens_details?.cached_tokens ?? 0 };
}

/** A streamed greedy completion of `prompt` to exactly `maxTokens` tokens. */
async function complete(base: string, prompt: number[], maxTokens: number): Promise<RequestResult> {
  const sentAt = performance.now();
  const res = await fetch(`${base}/v1/completions`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ prompt, max_tokens: maxTokens, temperature: 0, ignore_eos: true, stream: true, stream_options: { include_usage: true }, return_token_ids: true }),
  });
  if (!res.ok || !res.body) throw new Error(`serve answered ${res.status} to /v1/completions: ${await res.text()}`);
  const received: Received[] = [];
  let usage: StreamUsage | undefined;
  const decoder = new TextDecoder();
  let pending = '';
  const reader = res.body.getReader();
  for (let r = await reader.read(); !r.done; r = await reader.read()) {
    const at = performance.now();
    pending += decoder.decode(r.value, { stream: true });
    const events = pending.split('\n\n');
    pending = events.pop()!;
    for (const e of events) {
      if (!e.startsWith('data: ') || e === 'data: [DONE]') continue;
      const chunk = JSON.parse(e.slice('data: '.length)) as StreamChunk;
      if (chunk.error) throw new Error(`serve ended a stream with an error: ${chunk.error.message}`);
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices ?? []) received.push({ at, choice });
    }
  }
  const result = requestResult(sentAt, performance.now(), received, usage);
  if (result.tokenIds.length !== maxTokens) throw new Error(`serve generated ${result.tokenIds.length} tokens for max_tokens ${maxTokens} with ignore_eos`);
  return result;
}

/** Mean, and p50/p90 interpolated between ranks (numpy's default percentile). */
export function spread(xs: readonly number[]): Spread {
  const s = [...xs].sort((a, b) => a - b);
  const at = (q: number) => {
    const i = (s.length - 1) * q;
    const lo = Math.floor(i);
    return s[lo]! + (s[Math.ceil(i)]! - s[lo]!) * (i - lo);
  };
  return { mean: s.reduce((a, b) => a + b, 0) / s.length, p50: at(0.5), p90: at(0.9) };
}

interface Phase {
  results: RequestResult[];
  wallSeconds: number;
  load: number;
}

async function timedPhase(run: () => Promise<RequestResult[]>): Promise<Phase> {
  const t0 = performance.now();
  const results = await run();
  return { results, wallSeconds: (performance.now() - t0) / 1000, load: loadavg()[0]! };
}

interface Server {
  child: ChildProcess;
  /** http://host:port, without /v1. */
  base: string;
  log: () => string;
}

/** Starts serve on `dir` and waits for its ready line and an ok /health. */
async function startServe(dir: string, args: readonly string[]): Promise<Server> {
  const child = spawn(process.execPath, ['--import', 'tsx', SERVE, dir, '--port', '0', ...args], { cwd: REPO_ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (d: string) => (log += d));
  const base = await new Promise<string>((ok, fail) => {
    const onExit = (code: number | null) => fail(new Error(`serve exited (${code}) before it was ready:\n${log}`));
    const onData = () => {
      const m = READY.exec(log);
      if (!m) return;
      child.off('exit', onExit);
      child.stderr!.off('data', onData);
      ok(m[1]!);
    };
    child.once('exit', onExit);
    child.stderr!.on('data', onData);
  });
  const server = { child, base, log: () => log };
  const health = (await (await fetch(`${base}/health`)).json()) as { status?: string };
  if (health.status !== 'ok') {
    await stopServe(server);
    throw new Error(`serve said it was ready but /health reports ${JSON.stringify(health)}`);
  }
  return server;
}

/** SIGTERM (serve drains, then exits 0) and wait for the exit. */
async function stopServe(s: Server): Promise<void> {
  if (s.child.exitCode !== null) throw new Error(`serve exited early (${s.child.exitCode}):\n${s.log()}`);
  const exited = once(s.child, 'exit') as Promise<[number | null, NodeJS.Signals | null]>;
  s.child.kill('SIGTERM');
  const [code, signal] = await exited;
  if (code !== 0) throw new Error(`serve exited with ${code ?? signal} after SIGTERM:\n${s.log()}`);
}

/**
 * A temporary folder of links to `dir`'s files and a tokenizer of one token per id: serve
 * loads a tokenizer with every model and the generated bench models have none (the prompts
 * are token ids, so which tokenizer does not matter).
 */
function linkWithIdTokenizer(dir: string, vocabSize: number): string {
  const out = join(mkdtempSync(join(tmpdir(), 'wgc-bench-serve-')), folderName(dir));
  mkdirSync(out);
  for (const f of readdirSync(dir)) symlinkSync(resolve(dir, f), join(out, f));
  writeFileSync(join(out, 'tokenizer.json'), JSON.stringify(idTokenizerJson(vocabSize)));
  return out;
}

/** A run's prompts, each with its own salt: the measured ones, the warm-up's, and the prefix-sharing ones (the first primes the prefix). */
interface Workload {
  measured: number[][];
  warmup: number[][];
  prefixed: number[][];
  newTokens: number;
  prefixNewTokens: number;
}

/** Warms serve up with the timed shapes, alone and all at once, then runs the three phases. */
async function runPhases(base: string, w: Workload): Promise<{ seq: Phase; conc: Phase; cached: Phase }> {
  const one = (p: number[], tokens: number) => complete(base, p, tokens);
  const inTurn = async (ps: number[][], tokens: number) => {
    const results: RequestResult[] = [];
    for (const p of ps) results.push(await one(p, tokens));
    return results;
  };
  const [alone, ...together] = w.warmup;
  await one(alone!, WARMUP_NEW_TOKENS);
  await Promise.all(together.map((p) => one(p, WARMUP_NEW_TOKENS)));
  const seq = await timedPhase(() => inTurn(w.measured, w.newTokens));
  const conc = await timedPhase(() => Promise.all(w.measured.map((p) => one(p, w.newTokens))));
  const [priming, ...sharing] = w.prefixed;
  await one(priming!, w.prefixNewTokens);
  const cached = await timedPhase(() => inTurn(sharing, w.prefixNewTokens));
  return { seq, conc, cached };
}

/** Starts serve on `dir` in `format`, runs the phases, stops it; one row per phase. */
export async function runServeLoad(dir: string, format: BenchFormat, o: ServeLoadOptions): Promise<BenchRow[]> {
  const gpu = await getGpu();
  const vocab = (JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as { vocab_size: number }).vocab_size;
  const n = o.streams;
  const prompts = (count: number, firstSalt: number) => Array.from({ length: count }, (_, i) => benchPrompt(o.promptTokens, vocab, firstSalt + i));
  const prefix = benchPrompt(SHARED_PREFIX_TOKENS, vocab, 2 * n + 1);
  const w: Workload = {
    measured: prompts(n, 0),
    warmup: prompts(n + 1, n),
    prefixed: prompts(n + 1, 2 * n + 2).map((own) => [...prefix, ...own]),
    newTokens: o.newTokens,
    prefixNewTokens: Math.min(o.newTokens, PREFIX_NEW_TOKENS),
  };
  const serveArgs = [
    ...(isQuantize(format) ? ['--dtype', 'bf16', '--quantize', format] : ['--dtype', format]),
    // The KV cache sized to the longest request, as the dense rows size theirs; the queue
    // holds every concurrent request of a server that runs one at a time.
    '--max-context', String(SHARED_PREFIX_TOKENS + o.promptTokens + o.newTokens),
    '--max-queue', String(n),
    ...o.serveArgs,
  ];

  const linked = existsSync(join(dir, 'tokenizer.json')) ? undefined : linkWithIdTokenizer(dir, vocab);
  let phases;
  try {
    const server = await startServe(linked ?? dir, serveArgs);
    try {
      phases = await runPhases(server.base, w);
    } finally {
      await stopServe(server);
    }
  } finally {
    if (linked) rmSync(dirname(linked), { recursive: true, force: true });
  }
  const { seq, conc, cached } = phases;

  const generated = (p: Phase) => p.results.reduce((s, r) => s + r.tokenIds.length, 0);
  const row = (phase: ServeFigures['phase'], p: Phase, promptTokens: number, newTokens: number, extra: Pick<ServeFigures, 'speedup' | 'identical'> = {}): BenchRow => ({
    section: 'serve',
    engine: engineName(gpu, 'webgpu-chat serve'),
    model: folderName(dir),
    format,
    promptTokens,
    decodeTokens: generated(p),
    decodeTokensPerSecond: generated(p) / p.wallSeconds,
    load: p.load,
    serve: {
      phase,
      requests: p.results.length,
      newTokensPerRequest: newTokens,
      serveArgs,
      wallSeconds: p.wallSeconds,
      ttftMs: spread(p.results.map((r) => r.ttftMs)),
      itlMs: spread(p.results.flatMap((r) => r.itlMs)),
      e2eMs: spread(p.results.map((r) => r.e2eMs)),
      cachedTokens: p.results.reduce((s, r) => s + r.cachedTokens, 0),
      ...extra,
    },
  });
  return [
    row('sequential', seq, o.promptTokens, o.newTokens),
    row('concurrent', conc, o.promptTokens, o.newTokens, {
      speedup: (generated(conc) / conc.wallSeconds) * (seq.wallSeconds / generated(seq)),
      identical: conc.results.every((r, i) => r.tokenIds.join() === seq.results[i]!.tokenIds.join()),
    }),
    row('prefix cache', cached, SHARED_PREFIX_TOKENS + o.promptTokens, w.prefixNewTokens),
  ];
}
