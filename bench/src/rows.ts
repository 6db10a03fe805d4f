// The one row type every bench section produces, and the one table printer: each section's
// table shows the columns its rows fill in.

/** Which part of the bench a row belongs to (pnpm bench [--dense] [--families] [--moe] [--speculative] [--lookup] [--constrained] [--serve]). */
export type Section = 'dense' | 'families' | 'moe' | 'speculative' | 'lookup' | 'constrained' | 'serve';

/** A JSON-schema constrained decode against the same model's plain decode (pnpm bench --constrained). */
export interface ConstrainedFigures {
  sampling: string;
  plainDecodeTokensPerSecond: number;
  /** 1 - constrained ÷ plain decode tokens/s. */
  slowdown: number;
  /** XGrammar's bitmask and its application to a logits row, per token. */
  maskMs: number;
  /** Reading one whole logits row back, and what the plain path reads instead (argmax, or top-k): medians. */
  rowReadMs: number;
  plainReadMs: number;
  /** Compiling the schema for the vocabulary (the first compile includes the vocabulary's tables). */
  compileMs: number;
  /** Constrained replies (seeds) the decoded tokens came from. */
  replies: number;
}

export interface SpeculativeFigures {
  /** --lookup rows: an input-grounded prompt (the reply repeats part of it) or an open-ended one. */
  task?: 'grounded' | 'open';
  /** 'self-q4' (the target's weights quantized to q4) or 'first N layers' of the target. */
  draft: string;
  /** Bytes of weights one draft step reads. */
  draftBytesPerToken: number;
  /** The longest draft (num_assistant_tokens, or prompt_lookup_num_tokens): the 'measured' schedule chooses each length up to it. */
  numAssistantTokens: number;
  /** Plain greedy decoding of the same target, prompts and token budget. */
  plainDecodeTokensPerSecond: number;
  /** The median over rounds of decode tok/s ÷ plain decode tok/s in the same round (runs paired in time). */
  speedup: number;
  /** Accepted ÷ drafted tokens. */
  acceptanceRate: number;
  /** Accepted drafted tokens per verification step (each step adds one target token too). */
  meanAcceptedTokens: number;
  steps: number;
  /** Greedy assisted output equals plain greedy output token for token (it must). */
  identicalToPlain: boolean;
  /**
   * --lookup rows: prompt lookup's speedup on the task under a schedule that knew which drafts
   * hold, with the step costs measured in the run (how much the replies repeat their context).
   */
  lookupCeiling?: number;
}

export interface MoeFigures {
  experts: number;
  expertsPerToken: number;
  /** What a decode step would read if it read every expert (bytesPerToken + the inactive experts). */
  bytesPerTokenAllExperts: number;
}

/** Milliseconds over a phase's requests (p50/p90 interpolated between ranks, as numpy's). */
export interface Spread {
  mean: number;
  p50: number;
  p90: number;
}

/** One phase of the load run against `serve` (pnpm bench --serve). */
export interface ServeFigures {
  /** Requests one after another, the same requests all at once, or requests sharing a long prefix one after another. */
  phase: 'sequential' | 'concurrent' | 'prefix cache';
  requests: number;
  /** New tokens each request asks for (greedy, ignore_eos: every request gets them all). */
  newTokensPerRequest: number;
  /** Flags serve ran with after MODEL (the bench's, then --serve-args). */
  serveArgs: string[];
  /** From the first request sent to the last stream's end. */
  wallSeconds: number;
  /** Time to first token: from sending the request to the first chunk that carries a token. */
  ttftMs: Spread;
  /** Inter-token latency: the gap between a chunk and the one before, per token the chunk carries. */
  itlMs: Spread;
  /** From sending the request to the end of its stream. */
  e2eMs: Spread;
  /** usage.prompt_tokens_details.cached_tokens summed over the requests (0 where serve leaves it out). */
  cachedTokens: number;
  /** Concurrent row: its output tokens/s ÷ the sequential row's. */
  speedup?: number;
  /** Concurrent row: every request's token_ids equal its sequential run's (batch invariance). */
  identical?: boolean;
}

export interface BenchRow {
  section: Section;
  /** 'webgpu-chat (WebGPU, <adapter>)', 'llama.cpp Vulkan', 'llama.cpp CPU (2 threads)'. */
  engine: string;
  model: string;
  /** Our dtype or load-time quantization (f32, bf16, q8, q4), or the GGUF format llama.cpp ran. */
  format: string;
  /** Per request on serve rows (a prefix-cache row's counts the shared prefix). */
  promptTokens: number;
  /** Tokens decoded in the timed part (all prompts together on speculative and serve rows). */
  decodeTokens: number;
  /** Absent on speculative and serve rows (prefill is not what they compare). */
  prefillTokensPerSecond?: number;
  /** On speculative rows: assisted decoding's; on serve rows: output tokens/s, every generated token ÷ the phase's wall time. */
  decodeTokensPerSecond: number;
  /** Bytes of weights resident on the GPU. */
  weightBytes?: number;
  /** Bytes of weights one decode step reads (matrices + LM head; only the selected experts). */
  bytesPerToken?: number;
  decodeGBps?: number;
  loadSeconds?: number;
  /** Tokens per CPU-second x 2 cores: the speed on 2 otherwise idle cores, if work scales with CPU time. */
  prefillTokensPerCpuSecond2?: number;
  decodeTokensPerCpuSecond2?: number;
  /** 1-minute load average when the row finished (other processes share the cores). */
  load: number;
  /** llama.cpp rows: our row of the matching format (bf16 ↔ f16/bf16, q8 ↔ q8_0, q4 ↔ q4_0) ÷ this one. */
  ours?: { format: string; prefill: number; decode: number };
  moe?: MoeFigures;
  speculative?: SpeculativeFigures;
  serve?: ServeFigures;
  constrained?: ConstrainedFigures;
  /** ms per kernel family: of the prefill, and of one decode step (averaged). */
  profile?: { prefill: Record<string, number>; decode: Record<string, number> };
}

const MB = (b: number) => (b / 1e6).toFixed(0);
const ratio = (x: number) => `${x.toFixed(2)}x`;
const yesNo = (b: boolean | undefined) => (b === undefined ? undefined : b ? 'yes' : 'NO');
const p50p90 = (s: Spread, digits: number) => `${s.p50.toFixed(digits)} / ${s.p90.toFixed(digits)}`;

interface Column {
  header: string;
  cell(r: BenchRow): string | undefined;
}

const COLUMNS: Column[] = [
  { header: 'engine', cell: (r) => r.engine },
  { header: 'model', cell: (r) => r.model },
  { header: 'format', cell: (r) => r.format },
  { header: 'task', cell: (r) => r.speculative?.task },
  { header: 'draft', cell: (r) => r.speculative?.draft },
  { header: 'phase', cell: (r) => r.serve?.phase },
  { header: 'requests', cell: (r) => r.serve?.requests.toString() },
  { header: 'prefill tok/s', cell: (r) => r.prefillTokensPerSecond?.toFixed(1) },
  { header: 'sampling', cell: (r) => r.constrained?.sampling },
  { header: 'plain decode tok/s', cell: (r) => (r.speculative ?? r.constrained)?.plainDecodeTokensPerSecond.toFixed(2) },
  { header: 'decode tok/s', cell: (r) => (r.serve ? undefined : r.decodeTokensPerSecond.toFixed(2)) },
  { header: 'output tok/s', cell: (r) => (r.serve ? r.decodeTokensPerSecond.toFixed(2) : undefined) },
  { header: 'slower by', cell: (r) => (r.constrained ? `${(100 * r.constrained.slowdown).toFixed(1)}%` : undefined) },
  { header: 'mask ms/token', cell: (r) => r.constrained?.maskMs.toFixed(2) },
  { header: 'row read-back ms (plain read ms)', cell: (r) => (r.constrained ? `${r.constrained.rowReadMs.toFixed(2)} (${r.constrained.plainReadMs.toFixed(2)})` : undefined) },
  { header: 'schema compile ms', cell: (r) => r.constrained?.compileMs.toFixed(0) },
  { header: 'TTFT ms mean', cell: (r) => r.serve?.ttftMs.mean.toFixed(0) },
  { header: 'TTFT ms p50 / p90', cell: (r) => (r.serve ? p50p90(r.serve.ttftMs, 0) : undefined) },
  { header: 'ITL ms p50 / p90', cell: (r) => (r.serve ? p50p90(r.serve.itlMs, 1) : undefined) },
  { header: 'e2e s mean', cell: (r) => (r.serve ? (r.serve.e2eMs.mean / 1000).toFixed(2) : undefined) },
  { header: 'cached tokens', cell: (r) => r.serve?.cachedTokens.toString() },
  { header: 'speedup', cell: (r) => (r.speculative ? ratio(r.speculative.speedup) : r.serve?.speedup === undefined ? undefined : ratio(r.serve.speedup)) },
  { header: 'lookup ceiling', cell: (r) => (r.speculative?.lookupCeiling === undefined ? undefined : ratio(r.speculative.lookupCeiling)) },
  { header: 'acceptance', cell: (r) => (r.speculative ? `${(100 * r.speculative.acceptanceRate).toFixed(1)}%` : undefined) },
  { header: 'accepted/step', cell: (r) => r.speculative?.meanAcceptedTokens.toFixed(2) },
  { header: 'greedy identical', cell: (r) => yesNo(r.speculative?.identicalToPlain ?? r.serve?.identical) },
  { header: 'experts (active/all)', cell: (r) => (r.moe ? `${r.moe.expertsPerToken}/${r.moe.experts}` : undefined) },
  { header: 'MB resident', cell: (r) => (r.weightBytes === undefined ? undefined : MB(r.weightBytes)) },
  { header: 'MB read/token', cell: (r) => (r.bytesPerToken === undefined ? undefined : MB(r.bytesPerToken)) },
  { header: 'draft MB read/token', cell: (r) => (r.speculative ? MB(r.speculative.draftBytesPerToken) : undefined) },
  { header: 'MB/token if all experts read', cell: (r) => (r.moe ? MB(r.moe.bytesPerTokenAllExperts) : undefined) },
  { header: 'decode GB/s', cell: (r) => r.decodeGBps?.toFixed(2) },
  { header: 'ours ÷ this, prefill / decode', cell: (r) => (r.ours ? `${ratio(r.ours.prefill)} / ${ratio(r.ours.decode)} (our ${r.ours.format})` : undefined) },
  {
    header: 'prefill / decode, 2-core est.',
    cell: (r) =>
      r.decodeTokensPerCpuSecond2 === undefined ? undefined : `${r.prefillTokensPerCpuSecond2?.toFixed(1) ?? '-'} / ${r.decodeTokensPerCpuSecond2.toFixed(2)}`,
  },
  { header: 'load', cell: (r) => r.load.toFixed(2) },
];

/** A markdown table of `rows` with every column at least one of them fills in. */
export function formatTable(rows: readonly BenchRow[]): string {
  const cols = COLUMNS.filter((c) => rows.some((r) => c.cell(r) !== undefined));
  const line = (cells: string[]) => `| ${cells.join(' | ')} |`;
  return [line(cols.map((c) => c.header)), line(cols.map(() => '---')), ...rows.map((r) => line(cols.map((c) => c.cell(r) ?? '')))].join('\n');
}

/** Each kernel family's share of the prefill and of one decode step. */
export function formatProfile(r: BenchRow): string[] {
  if (!r.profile) return [];
  return Object.entries(r.profile).map(([what, times]) => {
    const total = Object.values(times).reduce((a, b) => a + b, 0);
    const parts = Object.entries(times)
      .sort((a, b) => b[1] - a[1])
      .map(([k, v]) => `${k} ${((100 * v) / total).toFixed(1)}% (${v.toFixed(2)} ms)`);
    return `${r.model} ${r.format} ${what} (${total.toFixed(1)} ms${what === 'decode' ? ' per token' : ''}): ${parts.join(', ')}`;
  });
}
