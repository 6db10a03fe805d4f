// pnpm bench --serve's code path: its flags, how a stream's chunks become a request's
// figures in both servers' shapes (this one's and a batching vLLM's), and a short load run
// against a real serve on the bundled stories260K, and on a generated model without a
// tokenizer (as the bench's own). No speed is asserted.
import { describe, expect, it } from 'vitest';
import { writeGeneratedModel, BUNDLED_MODEL } from '@webgpu-chat/engine/testing';
import type { BenchRow } from '../src/rows.ts';
import { formatReport, parseArgs, runBench } from '../src/run.ts';
import { requestResult, spread, type Received } from '../src/serve-load.ts';

describe('bench --serve flags', () => {
  it('run only the serve rows, in bf16 unless formats are named, with serve flags passed through', () => {
    const o = parseArgs(['--serve']);
    expect(o.sections).toEqual(['serve']);
    expect(o.serve).toEqual({ formats: ['bf16'], streams: 8, promptTokens: 16, newTokens: 48, serveArgs: [] });
    const q = parseArgs(['--serve', '--dtype', 'f32', '--quantize', 'q4', '--streams', '3', '--serve-args', '--parallel 8  --max-queue 4']);
    expect(q.sections).toEqual(['serve']);
    expect(q.serve).toMatchObject({ formats: ['f32', 'q4'], streams: 3, serveArgs: ['--parallel', '8', '--max-queue', '4'] });
    expect(parseArgs(['--all']).sections).toEqual(['dense', 'families', 'moe', 'speculative', 'lookup', 'constrained', 'serve']);
    expect(() => parseArgs(['--serve', '--new-tokens', '1'])).toThrow(/--new-tokens must be an integer >= 2/);
    expect(() => parseArgs(['--serve', '--streams', '--new-tokens'])).toThrow(/--streams needs a value/);
  });
});

describe('a streamed request in figures', () => {
  const choice = (ids: number[], finish: string | null = null) => ({ text: ids.length ? 'x' : '', finish_reason: finish, token_ids: ids });

  it('this server: one token per chunk, every id again in the finish chunk, no cached_tokens', () => {
    const received: Received[] = [
      { at: 110, choice: choice([5]) },
      { at: 130, choice: choice([6]) },
      { at: 160, choice: choice([7]) },
      { at: 161, choice: choice([], null) },
      { at: 162, choice: choice([5, 6, 7], 'length') },
    ];
    const r = requestResult(100, 170, received, { completion_tokens: 3 });
    expect(r).toEqual({ tokenIds: [5, 6, 7], ttftMs: 10, itlMs: [20, 30], e2eMs: 70, cachedTokens: 0 });
  });

  it('a batching vLLM: chunks of several tokens count as equal gaps; the finish chunk carries its own ids; cached_tokens read', () => {
    const received: Received[] = [
      { at: 150, choice: choice([5]) },
      { at: 190, choice: choice([6, 7]) },
      { at: 220, choice: choice([8], 'length') },
    ];
    const r = requestResult(100, 230, received, { completion_tokens: 4, prompt_tokens_details: { cached_tokens: 96 } });
    expect(r).toEqual({ tokenIds: [5, 6, 7, 8], ttftMs: 50, itlMs: [20, 20, 30], e2eMs: 130, cachedTokens: 96 });
  });

  it('refuses a stream whose ids disagree with its usage', () => {
    expect(() => requestResult(0, 1, [{ at: 1, choice: choice([5]) }], { completion_tokens: 2 })).toThrow(/usage.completion_tokens is 2/);
    expect(() => requestResult(0, 1, [{ at: 1, choice: choice([5]) }], undefined)).toThrow(/no usage chunk/);
  });

  it('p50 and p90 interpolate between ranks', () => {
    expect(spread([4, 1, 3, 2])).toEqual({ mean: 2.5, p50: 2.5, p90: 3.7 });
  });
});

describe('pnpm bench --serve on tiny models', () => {
  it('sequential, concurrent and prefix-cache rows from a real serve, the same tokens in both runs', { timeout: 120_000 }, async () => {
    const o = parseArgs(['--serve', '--model', BUNDLED_MODEL, '--dtype', 'f32', '--streams', '3', '--new-tokens', '4', '--json']);
    const report = JSON.parse(JSON.stringify(await runBench(o))) as Awaited<ReturnType<typeof runBench>>;
    expect(report.skipped).toEqual([]);
    const rows = report.rows.filter((r: BenchRow) => r.section === 'serve');
    expect(rows.map((r) => r.serve!.phase)).toEqual(['sequential', 'concurrent', 'prefix cache']);
    const positive = (v: number | undefined) => expect(Number.isFinite(v) && v! > 0, String(v)).toBe(true);
    for (const r of rows) {
      const s = r.serve!;
      expect([r.model, r.format, s.requests]).toEqual(['stories260K', 'f32', 3]);
      expect(r.engine).toMatch(/^webgpu-chat serve \(WebGPU, /);
      expect(s.serveArgs).toEqual(['--dtype', 'f32', '--max-context', String(96 + 16 + 4), '--max-queue', '3']);
      expect(r.decodeTokens).toBe(3 * s.newTokensPerRequest);
      for (const v of [r.decodeTokensPerSecond, s.wallSeconds, s.ttftMs.mean, s.ttftMs.p50, s.itlMs.p50, s.e2eMs.mean]) positive(v);
      expect(s.ttftMs.p90).toBeGreaterThanOrEqual(s.ttftMs.p50);
      expect(s.itlMs.p90).toBeGreaterThanOrEqual(s.itlMs.p50);
      expect(s.e2eMs.mean).toBeGreaterThan(s.ttftMs.mean);
      expect(Number.isInteger(s.cachedTokens) && s.cachedTokens >= 0).toBe(true);
    }
    const [seq, conc, prefix] = rows;
    expect([seq!.promptTokens, seq!.serve!.newTokensPerRequest, prefix!.promptTokens, prefix!.serve!.newTokensPerRequest]).toEqual([16, 4, 112, 4]);
    expect(conc!.serve!.identical).toBe(true);
    positive(conc!.serve!.speedup);
    expect(seq!.serve!.speedup).toBeUndefined();

    const text = formatReport(report, o);
    expect(text).toContain('## Serving under load');
    expect(text).toMatch(/\| concurrent \| 3 \|/);
  });

  it('serves a generated model without a tokenizer through an id tokenizer, in bf16 by default', { timeout: 120_000 }, async () => {
    const dir = writeGeneratedModel({ modelType: 'qwen2', seed: 5 });
    const report = await runBench(parseArgs(['--serve', '--model', dir, '--streams', '2', '--new-tokens', '3']));
    expect(report.rows.map((r) => [r.format, r.serve!.phase, r.decodeTokens])).toEqual([
      ['bf16', 'sequential', 6],
      ['bf16', 'concurrent', 6],
      ['bf16', 'prefix cache', 6],
    ]);
    expect(report.rows[1]!.serve!.identical).toBe(true);
  });
});
