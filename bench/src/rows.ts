// The one row type every bench section produces, and the one table printer: each section's
// table shows the columns its rows fill in.

/** Which part of the bench a row belongs to (pnpm bench [--dense] [--moe] [--speculative]). */
export type Section = 'dense' | 'moe' | 'speculative';

export interface SpeculativeFigures {
  /** 'self-q4' (the target's weights quantized to q4) or 'first N layers' of the target. */
  draft: string;
  /** Bytes of weights one draft step reads. */
  draftBytesPerToken: number;
  /** The draft length the heuristic schedule starts from. */
  numAssistantTokens: number;
  /** Plain greedy decoding of the same target, prompts and token budget. */
  plainDecodeTokensPerSecond: number;
  /** decodeTokensPerSecond ÷ plainDecodeTokensPerSecond. */
  speedup: number;
  /** Accepted ÷ drafted tokens. */
  acceptanceRate: number;
  /** Accepted drafted tokens per verification step (each step adds one target token too). */
  meanAcceptedTokens: number;
  steps: number;
  /** Greedy assisted output equals plain greedy output token for token (it must). */
  identicalToPlain: boolean;
}

export interface MoeFigures {
  experts: number;
  expertsPerToken: number;
  /** What a decode step would read if it read every expert (bytesPerToken + the inactive experts). */
  bytesPerTokenAllExperts: number;
}

export interface BenchRow {
  section: Section;
  /** 'webgpu-chat (WebGPU, <adapter>)', 'llama.cpp Vulkan', 'llama.cpp CPU (2 threads)'. */
  engine: string;
  model: string;
  /** Our dtype or load-time quantization (f32, bf16, q8, q4), or the GGUF format llama.cpp ran. */
  format: string;
  promptTokens: number;
  /** Tokens decoded in the timed part (all prompts together on speculative rows). */
  decodeTokens: number;
  /** Absent on speculative rows (prefill is not what they compare). */
  prefillTokensPerSecond?: number;
  /** On speculative rows: assisted decoding's. */
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
  /** ms per kernel family: of the prefill, and of one decode step (averaged). */
  profile?: { prefill: Record<string, number>; decode: Record<string, number> };
}

const MB = (b: number) => (b / 1e6).toFixed(0);
const ratio = (x: number) => `${x.toFixed(2)}x`;

interface Column {
  header: string;
  cell(r: BenchRow): string | undefined;
}

const COLUMNS: Column[] = [
  { header: 'engine', cell: (r) => r.engine },
  { header: 'model', cell: (r) => r.model },
  { header: 'format', cell: (r) => r.format },
  { header: 'draft', cell: (r) => r.speculative?.draft },
  { header: 'prefill tok/s', cell: (r) => r.prefillTokensPerSecond?.toFixed(1) },
  { header: 'plain decode tok/s', cell: (r) => r.speculative?.plainDecodeTokensPerSecond.toFixed(2) },
  { header: 'decode tok/s', cell: (r) => r.decodeTokensPerSecond.toFixed(2) },
  { header: 'speedup', cell: (r) => (r.speculative ? ratio(r.speculative.speedup) : undefined) },
  { header: 'acceptance', cell: (r) => (r.speculative ? `${(100 * r.speculative.acceptanceRate).toFixed(1)}%` : undefined) },
  { header: 'accepted/step', cell: (r) => r.speculative?.meanAcceptedTokens.toFixed(2) },
  { header: 'greedy identical', cell: (r) => (r.speculative ? (r.speculative.identicalToPlain ? 'yes' : 'NO') : undefined) },
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
