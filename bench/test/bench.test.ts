// pnpm bench's code path on tiny generated models (a dense Qwen2 and a Qwen3-MoE), so the
// bench cannot rot unnoticed: the flags pick the sections, every section yields rows of the
// shared shape, and the report prints. No speed is asserted. Also ggml's q8_0/q4_0 block
// packing of the GGUF writer, on values whose blocks are known exactly.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { getGpu } from '@webgpu-chat/engine';
import { writeGeneratedModel } from '@webgpu-chat/engine/testing';
import { quantizeBlocks } from '../src/gguf.ts';
import { QWEN3_MOE_SHAPED, writeMoeModel } from '../src/moe-models.ts';
import { GEMMA3_270M, PHI3_MINI_4_LAYERS, writeFamilyModel } from '../src/family-models.ts';
import type { BenchRow } from '../src/rows.ts';
import { runConstrained } from '../src/constrained.ts';
import { BenchArgsError, formatReport, parseArgs, runBench } from '../src/run.ts';

describe('bench flags', () => {
  it('run the dense table by default and other sections on request', () => {
    expect(parseArgs([]).sections).toEqual(['dense', 'families']);
    expect(parseArgs([]).familyFormats).toEqual(['bf16']);
    expect(parseArgs(['--moe']).sections).toEqual(['moe']);
    expect(parseArgs(['--families', '--quantize', 'q4']).sections).toEqual(['dense', 'families']);
    expect(parseArgs(['--families', '--quantize', 'q4']).familyFormats).toEqual(['bf16', 'f32', 'q4']);
    expect(parseArgs(['--speculative', '--dtype', 'q4']).sections).toEqual(['dense', 'speculative']);
    const all = parseArgs(['--all']);
    expect(all.sections).toEqual(['dense', 'families', 'moe', 'speculative', 'lookup', 'constrained', 'serve']);
    expect(parseArgs(['--constrained']).sections).toEqual(['constrained']);
    expect(all.compare).toBe(true);
    // llama.cpp's formats follow ours unless named.
    expect(parseArgs(['--dtype', 'f32,bf16,q8,q4', '--compare']).ggufFormats).toEqual(['f16', 'q8_0', 'q4_0']);
    expect(parseArgs(['--gguf', 'q4_0']).ggufFormats).toEqual(['q4_0']);
  });

  it('name what is wrong', () => {
    expect(() => parseArgs(['--dtpye', 'q8'])).toThrow(BenchArgsError);
    expect(() => parseArgs(['--dtype', 'q3'])).toThrow(/unknown format 'q3'/);
    expect(() => parseArgs(['--gguf', 'q5_k'])).toThrow(/unknown GGUF format/);
    expect(() => parseArgs(['--decode', '0'])).toThrow(/--decode must be an integer >= 1/);
    expect(() => parseArgs(['--model'])).toThrow(/--model needs a value/);
  });
});

describe('GGUF q8_0 / q4_0 blocks (ggml reference quantizers)', () => {
  it('q8_0: f16 scale max|x|/127, then 32 int8', () => {
    const x = Float32Array.from({ length: 32 }, (_, j) => (j === 0 ? -127 : j - 16) * 0.5);
    const b = quantizeBlocks(x, 'q8_0');
    expect(b.length).toBe(34);
    expect(new DataView(b.buffer).getUint16(0, true)).toBe(0x3800); // f16 0.5
    expect(Array.from(new Int8Array(b.buffer, 2, 32))).toEqual(Array.from({ length: 32 }, (_, j) => (j === 0 ? -127 : j - 16)));
  });

  it('q4_0: f16 scale (largest-magnitude value)/-8, value j low nibble and j+16 high nibble, offset 8', () => {
    // Values (j - 8) / 4 and (15 - j - 8) / 4: the largest magnitude is -2, so d = 0.25.
    const x = Float32Array.from({ length: 32 }, (_, i) => (i < 16 ? i - 8 : 15 - (i - 16) - 8) / 4);
    const b = quantizeBlocks(x, 'q4_0');
    expect(b.length).toBe(18);
    expect(new DataView(b.buffer).getUint16(0, true)).toBe(0x3400); // f16 0.25
    expect(Array.from(b.subarray(2))).toEqual(Array.from({ length: 16 }, (_, j) => j | ((15 - j) << 4)));
  });

  it('refuses a length that is not whole blocks', () => {
    expect(() => quantizeBlocks(new Float32Array(40), 'q4_0')).toThrow(/blocks of 32/);
  });
});

describe('pnpm bench on tiny models', () => {
  it('prints dense, MoE and speculative rows of the shared shape', { timeout: 600_000 }, async () => {
    const dense = writeGeneratedModel({ modelType: 'qwen2', seed: 5, config: { num_hidden_layers: 4 } });
    const moe = join(mkdtempSync(join(tmpdir(), 'wgc-bench-moe-')), 'tiny-qwen3-moe');
    writeMoeModel(
      { ...QWEN3_MOE_SHAPED, hidden_size: 64, intermediate_size: 96, moe_intermediate_size: 32, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, head_dim: 16, num_experts: 8, num_experts_per_tok: 2, vocab_size: 311 },
      moe,
    );
    const o = parseArgs(['--model', dense, '--moe-model', moe, '--dtype', 'f32,q4', '--prompt', '6', '--decode', '4', '--moe', '--speculative', '--lookup', '--json']);
    const report = await runBench(o);
    // What --json prints survives a round trip.
    const json = JSON.parse(JSON.stringify(report)) as typeof report;
    expect(json.adapter.description).toBeTypeOf('string');
    expect(json.loadAtStart).toHaveLength(3);
    expect(json.skipped).toEqual([]);
    const rows = (s: BenchRow['section']) => json.rows.filter((r) => r.section === s);
    const positive = (v: number | undefined) => expect(Number.isFinite(v) && v! > 0, String(v)).toBe(true);

    expect(rows('dense').map((r) => r.format)).toEqual(['f32', 'q4']);
    for (const r of rows('dense')) {
      expect(r.model).toBe(dense.split('/').pop());
      expect([r.promptTokens, r.decodeTokens]).toEqual([6, 4]);
      for (const v of [r.prefillTokensPerSecond, r.decodeTokensPerSecond, r.weightBytes, r.bytesPerToken, r.decodeGBps, r.decodeTokensPerCpuSecond2]) positive(v);
    }
    // q4 reads fewer bytes per token than f32.
    expect(rows('dense')[1]!.bytesPerToken!).toBeLessThan(rows('dense')[0]!.bytesPerToken!);

    const [m] = rows('moe');
    expect(rows('moe')).toHaveLength(1);
    expect(m!.moe).toMatchObject({ experts: 8, expertsPerToken: 2 });
    positive(m!.decodeTokensPerSecond);
    // Decode reads 2 of 8 experts: less than reading all of them, which is less than resident.
    expect(m!.bytesPerToken!).toBeLessThan(m!.moe!.bytesPerTokenAllExperts);
    expect(m!.moe!.bytesPerTokenAllExperts).toBeLessThanOrEqual(m!.weightBytes!);

    const spec = rows('speculative');
    expect(spec.map((r) => [r.model, r.speculative!.draft])).toEqual([
      [dense.split('/').pop(), 'self-q4'],
      [dense.split('/').pop(), 'first 1 of 4 layers'],
      ['tiny-qwen3-moe', 'self-q4'],
      ['tiny-qwen3-moe', 'first 1 of 2 layers'],
    ]);
    for (const r of spec) {
      const s = r.speculative!;
      expect(s.identicalToPlain).toBe(true);
      expect(s.acceptanceRate).toBeGreaterThanOrEqual(0);
      expect(s.acceptanceRate).toBeLessThanOrEqual(1);
      // The measured schedule may not draft at all in the timed runs (a draft that cannot pay sits calls out).
      expect(Number.isInteger(s.steps) && s.steps >= 0).toBe(true);
      for (const v of [r.decodeTokensPerSecond, s.plainDecodeTokensPerSecond, s.speedup, s.draftBytesPerToken]) positive(v);
      // Two id prompts a round, each run to the budget (a stand-in tokenizer has no EOS), at least four rounds.
      expect(r.decodeTokens % 8).toBe(0);
      expect(r.decodeTokens).toBeGreaterThanOrEqual(32);
    }

    const lookup = rows('lookup');
    expect(lookup.map((r) => [r.speculative!.task, r.speculative!.draft])).toEqual(
      (['grounded', 'open'] as const).flatMap((task) => [
        [task, 'none (plain)'],
        [task, 'prompt lookup (10)'],
        [task, 'self-q4'],
      ]),
    );
    for (const r of lookup) {
      expect(r.speculative!.identicalToPlain).toBe(true);
      positive(r.decodeTokensPerSecond);
      positive(r.speculative!.lookupCeiling);
    }

    const text = formatReport(report, o);
    for (const heading of ['## Dense', '## Mixture of experts', '## Speculative decoding', '## Speculative decoding by task']) expect(text).toContain(heading);
    expect(text).toContain('| self-q4 |');
  });

  it('prints constrained rows: a JSON-schema decode against a plain one, on the Qwen vocabulary', { timeout: 600_000 }, async () => {
    const dir = writeGeneratedModel({ modelType: 'qwen2', seed: 6, config: { num_hidden_layers: 1, vocab_size: 151936, eos_token_id: 151645 } });
    const rows = await runConstrained({ dir, decodeTokens: 8 });
    expect(rows.map((r) => r.constrained!.sampling)).toEqual(['greedy', 'sampled (top_k 50)']);
    for (const r of rows) {
      const c = r.constrained!;
      expect(r.decodeTokens).toBeGreaterThanOrEqual(8);
      for (const v of [r.decodeTokensPerSecond, c.plainDecodeTokensPerSecond, c.maskMs, c.rowReadMs, c.plainReadMs, c.compileMs]) expect(Number.isFinite(v) && v > 0, String(v)).toBe(true);
      expect(c.replies).toBeGreaterThanOrEqual(1);
    }
    const text = formatReport({ adapter: (await getGpu()).info, loadAtStart: [0, 0, 0], rows, skipped: [] }, { promptTokens: 16, decodeTokens: 8, k: 4, lookupTokens: 10, serve: parseArgs([]).serve });
    expect(text).toContain('## Constrained decoding');
    expect(text).toContain('| greedy |');
  });

  it('prints the other families\' rows (Gemma 3- and Phi-3-shaped, Phi-3 with fused projections on disk)', { timeout: 600_000 }, async () => {
    const small = { hidden_size: 64, intermediate_size: 96, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, vocab_size: 311 };
    const gemma = join(mkdtempSync(join(tmpdir(), 'wgc-bench-fam-')), 'tiny-gemma3');
    writeFamilyModel({ ...GEMMA3_270M, ...small, head_dim: 16, layer_types: ['sliding_attention', 'full_attention'] }, gemma);
    const phi = join(mkdtempSync(join(tmpdir(), 'wgc-bench-fam-')), 'tiny-phi3');
    writeFamilyModel({ ...PHI3_MINI_4_LAYERS, ...small }, phi);
    const o = parseArgs(['--families', '--family-model', `${gemma},${phi}`, '--prompt', '6', '--decode', '4']);
    expect(o.sections).toEqual(['families']);
    const report = await runBench(o);
    expect(report.rows.map((r) => [r.section, r.model, r.format])).toEqual([
      ['families', 'tiny-gemma3', 'bf16'],
      ['families', 'tiny-phi3', 'bf16'],
    ]);
    for (const r of report.rows) expect(Number.isFinite(r.decodeTokensPerSecond) && r.decodeTokensPerSecond! > 0).toBe(true);
    expect(formatReport(report, o)).toContain('## Other families');
  });
});
