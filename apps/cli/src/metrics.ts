// GET /metrics in Prometheus' text format (version 0.0.4): what people put behind
// autoscaling and dashboards. Names follow vLLM's where one exists (prefix webgpu_chat:).

import type { GenerationStats, GeneratorStats } from '@webgpu-chat/chat';

/** A cumulative histogram with fixed upper bounds, in seconds. */
class Histogram {
  private readonly counts: number[];
  private sum = 0;
  private count = 0;
  constructor(private readonly bounds: readonly number[]) {
    this.counts = bounds.map(() => 0);
  }
  observe(v: number): void {
    this.sum += v;
    this.count++;
    for (let i = 0; i < this.bounds.length; i++) if (v <= this.bounds[i]!) this.counts[i]!++;
  }
  render(name: string, help: string): string {
    const lines = [`# HELP ${name} ${help}`, `# TYPE ${name} histogram`];
    this.bounds.forEach((b, i) => lines.push(`${name}_bucket{le="${b}"} ${this.counts[i]}`));
    lines.push(`${name}_bucket{le="+Inf"} ${this.count}`, `${name}_sum ${this.sum}`, `${name}_count ${this.count}`);
    return lines.join('\n');
  }
}

const LATENCY_BOUNDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

function metric(name: string, type: 'counter' | 'gauge', help: string, value: number | Record<string, number>): string {
  const lines = [`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`];
  if (typeof value === 'number') lines.push(`${name} ${value}`);
  else for (const [label, v] of Object.entries(value)) lines.push(`${name}{${label}} ${v}`);
  return lines.join('\n');
}

export class ServerMetrics {
  private readonly ttft = new Histogram(LATENCY_BOUNDS);
  private readonly itl = new Histogram(LATENCY_BOUNDS);
  private readonly e2e = new Histogram(LATENCY_BOUNDS);
  private readonly finished = new Map<string, number>();
  private draftProposed = 0;
  private draftAccepted = 0;

  /** Time to first token and the gaps between tokens, as the generation loop reports them. */
  observeToken(kind: 'first' | 'next', seconds: number): void {
    (kind === 'first' ? this.ttft : this.itl).observe(seconds);
  }

  /** A request that ended, however it ended ('stop', 'length', 'abort', 'error'). */
  observeRequest(finishReason: string, stats: GenerationStats | undefined): void {
    this.finished.set(finishReason, (this.finished.get(finishReason) ?? 0) + 1);
    if (stats) this.e2e.observe(stats.totalMs / 1000);
    if (stats?.speculative) {
      this.draftProposed += stats.speculative.draftedTokens;
      this.draftAccepted += stats.speculative.acceptedTokens;
    }
  }

  render(g: GeneratorStats): string {
    const finished: Record<string, number> = {};
    for (const [reason, n] of this.finished) finished[`finished_reason="${reason}"`] = n;
    const lookups = g.promptTokens;
    return (
      [
        metric('webgpu_chat:num_requests_running', 'gauge', 'Requests in the running batch.', g.running),
        metric('webgpu_chat:num_requests_waiting', 'gauge', 'Requests waiting for a place in the batch.', g.waiting),
        metric('webgpu_chat:request_success_total', 'counter', 'Finished requests by finish reason.', finished),
        metric('webgpu_chat:prompt_tokens_total', 'counter', 'Prompt tokens of admitted requests.', g.promptTokens),
        metric('webgpu_chat:generation_tokens_total', 'counter', 'Generated tokens.', g.generatedTokens),
        metric('webgpu_chat:prefix_cache_hits_total', 'counter', 'Prompt tokens served from cached KV blocks instead of recomputed.', g.cachedPromptTokens),
        metric('webgpu_chat:prefix_cache_queries_total', 'counter', 'Prompt tokens looked up in the prefix cache.', lookups),
        metric('webgpu_chat:prefix_cache_hit_rate', 'gauge', 'prefix_cache_hits_total / prefix_cache_queries_total.', lookups > 0 ? g.cachedPromptTokens / lookups : 0),
        metric('webgpu_chat:kv_cache_blocks', 'gauge', 'KV cache blocks by state (cached: held by finished sequences kept for reuse).', {
          'state="used"': g.kvBlocksUsed,
          'state="free"': g.kvBlocksFree,
          'state="cached"': g.kvBlocksCached,
        }),
        metric('webgpu_chat:kv_cache_usage_perc', 'gauge', 'Fraction of KV cache blocks in use.', g.kvBlocksUsed + g.kvBlocksFree > 0 ? g.kvBlocksUsed / (g.kvBlocksUsed + g.kvBlocksFree) : 0),
        metric('webgpu_chat:engine_steps_total', 'counter', 'Forward steps run (each over every running sequence).', g.steps),
        metric('webgpu_chat:spec_decode_num_draft_tokens_total', 'counter', 'Tokens a draft model proposed.', this.draftProposed),
        metric('webgpu_chat:spec_decode_num_accepted_tokens_total', 'counter', 'Proposed tokens the model accepted.', this.draftAccepted),
        this.ttft.render('webgpu_chat:time_to_first_token_seconds', 'Time from admission to the first generated token.'),
        this.itl.render('webgpu_chat:inter_token_latency_seconds', 'Time between successive tokens of a request.'),
        this.e2e.render('webgpu_chat:e2e_request_latency_seconds', 'Time from admission to the end of a request.'),
      ].join('\n') + '\n'
    );
  }
}
