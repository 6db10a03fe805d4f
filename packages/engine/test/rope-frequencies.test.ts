import { describe, expect, it } from 'vitest';
import { parseRopeScaling, RopeConfigError, ropeInvFreq, rotaryDim } from '../src/rope-frequencies.ts';

// Independent float64 evaluations of the published formulas.
const base = (theta: number, dim: number) => Array.from({ length: dim / 2 }, (_, i) => Math.pow(theta, -(2 * i) / dim));

function expectAllClose(got: Float32Array, want: number[], rel = 2e-7): void {
  expect(got.length).toBe(want.length);
  for (let i = 0; i < want.length; i++) {
    expect(Math.abs(got[i]! - want[i]!), `index ${i}: ${got[i]} vs ${want[i]}`).toBeLessThanOrEqual(rel * Math.abs(want[i]!));
  }
}

describe('ropeInvFreq', () => {
  it('default: theta^(-2i/d), rounded to f32', () => {
    const { invFreq, attentionScaling } = ropeInvFreq({ headDim: 64, ropeTheta: 10000, maxPositionEmbeddings: 2048 });
    expectAllClose(invFreq, base(10000, 64));
    expect(invFreq[0]).toBe(1);
    expect(invFreq[1]).toBe(Math.fround(10000 ** (-2 / 64)));
    expect(attentionScaling).toBe(1);
  });

  it('partial rotary: frequencies of int(headDim * factor) dims', () => {
    const cfg = { headDim: 80, ropeTheta: 10000, partialRotaryFactor: 0.4, maxPositionEmbeddings: 2048 };
    expect(rotaryDim(cfg)).toBe(32);
    expectAllClose(ropeInvFreq(cfg).invFreq, base(10000, 32));
  });

  it('linear: divided by factor', () => {
    const { invFreq } = ropeInvFreq({ headDim: 128, ropeTheta: 1e6, maxPositionEmbeddings: 4096, scaling: { type: 'linear', factor: 4 } });
    expectAllClose(invFreq, base(1e6, 128).map((f) => f / 4));
  });

  it('dynamic NTK: unchanged up to maxPositionEmbeddings, larger base past it', () => {
    const cfg = { headDim: 64, ropeTheta: 10000, maxPositionEmbeddings: 2048, scaling: { type: 'dynamic', factor: 2 } as const };
    expectAllClose(ropeInvFreq(cfg).invFreq, base(10000, 64));
    expectAllClose(ropeInvFreq(cfg, 1000).invFreq, base(10000, 64));
    // base' = theta * ((factor * L / max) - (factor - 1))^(d / (d - 2)) with L = 4096: (4 - 1)^(64/62)
    expectAllClose(ropeInvFreq(cfg, 4096).invFreq, base(10000 * 3 ** (64 / 62), 64));
  });

  it('llama3: the Llama-3.1 config (theta 500000, factor 8, low 1, high 4, original 8192, headDim 128)', () => {
    const { invFreq, attentionScaling } = ropeInvFreq({
      headDim: 128,
      ropeTheta: 500000,
      maxPositionEmbeddings: 131072,
      scaling: { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 },
    });
    expect(attentionScaling).toBe(1);
    const want = base(500000, 128).map((f) => {
      const wavelen = (2 * Math.PI) / f;
      if (wavelen < 8192 / 4) return f; // high frequencies: unchanged
      if (wavelen > 8192 / 1) return f / 8; // low frequencies: interpolated by the factor
      const smooth = (8192 / wavelen - 1) / (4 - 1);
      return (1 - smooth) * (f / 8) + smooth * f;
    });
    expectAllClose(invFreq, want);
    // The three bands are all present for this config.
    const b = base(500000, 128);
    expect(invFreq[0]).toBe(1);
    expect(invFreq[63]).toBe(Math.fround(b[63]! / 8));
    const medium = b.findIndex((f) => (2 * Math.PI) / f >= 2048 && (2 * Math.PI) / f <= 8192);
    expect(medium).toBeGreaterThan(0);
    expect(invFreq[medium]!).toBeLessThan(b[medium]!);
    expect(invFreq[medium]!).toBeGreaterThan(b[medium]! / 8);
  });

  it('yarn: ramp between the beta_fast and beta_slow dimensions, attention factor 0.1 ln(s) + 1', () => {
    const scaling = { type: 'yarn', factor: 4, originalMaxPositionEmbeddings: 32768 } as const;
    const { invFreq, attentionScaling } = ropeInvFreq({ headDim: 128, ropeTheta: 1e6, maxPositionEmbeddings: 131072, scaling });
    expect(attentionScaling).toBeCloseTo(0.1 * Math.log(4) + 1, 12);
    // Correction dims: d * ln(L / (2 pi beta)) / (2 ln theta): 23.6 for beta 32 -> 23, 39.7 for beta 1 -> 40.
    const corr = (beta: number) => (128 * Math.log(32768 / (beta * 2 * Math.PI))) / (2 * Math.log(1e6));
    const lo = Math.floor(corr(32));
    const hi = Math.ceil(corr(1));
    expect([lo, hi]).toEqual([23, 40]);
    const b = base(1e6, 128);
    expectAllClose(invFreq, b.map((f, i) => {
      const ramp = Math.min(1, Math.max(0, (i - lo) / (hi - lo)));
      return f * (1 - ramp) + (f / 4) * ramp;
    }));
    expect(invFreq[10]).toBe(Math.fround(b[10]!));
    expect(invFreq[50]).toBe(Math.fround(b[50]! / 4));
  });

  it('yarn: mscale / mscale_all_dim, no truncation, factor from the context ratio', () => {
    const ds = ropeInvFreq({
      headDim: 64,
      ropeTheta: 10000,
      maxPositionEmbeddings: 163840,
      scaling: { type: 'yarn', factor: 40, mscale: 0.707, mscaleAllDim: 0.707, originalMaxPositionEmbeddings: 4096, betaFast: 32, betaSlow: 1 },
    });
    expect(ds.attentionScaling).toBe(1);
    const ratio = ropeInvFreq({
      headDim: 64,
      ropeTheta: 10000,
      maxPositionEmbeddings: 16384,
      scaling: { type: 'yarn', originalMaxPositionEmbeddings: 4096, truncate: false },
    });
    expect(ratio.attentionScaling).toBeCloseTo(0.1 * Math.log(4) + 1, 12);
    const corr = (beta: number) => (64 * Math.log(4096 / (beta * 2 * Math.PI))) / (2 * Math.log(10000));
    const lo = corr(32);
    const hi = corr(1);
    expectAllClose(ratio.invFreq, base(10000, 64).map((f, i) => {
      const ramp = Math.min(1, Math.max(0, (i - lo) / (hi - lo)));
      return f * (1 - ramp) + (f / 4) * ramp;
    }));
  });

  it('longrope: short factors up to the original context, long past it; sqrt(1 + ln s / ln L) amplitude', () => {
    const short = Array.from({ length: 16 }, (_, i) => 1 + i * 0.01);
    const long = Array.from({ length: 16 }, (_, i) => 1 + i * 0.5);
    const cfg = {
      headDim: 32,
      ropeTheta: 10000,
      maxPositionEmbeddings: 131072,
      scaling: { type: 'longrope', shortFactor: short, longFactor: long, originalMaxPositionEmbeddings: 4096 } as const,
    };
    const b = base(10000, 32);
    const s = ropeInvFreq(cfg, 100);
    expectAllClose(s.invFreq, b.map((f, i) => f / short[i]!));
    expect(s.attentionScaling).toBeCloseTo(Math.sqrt(1 + Math.log(32) / Math.log(4096)), 12);
    expectAllClose(ropeInvFreq(cfg, 5000).invFreq, b.map((f, i) => f / long[i]!));
    expect(() => ropeInvFreq({ ...cfg, headDim: 64 })).toThrow(RopeConfigError);
  });

  it('rejects bad configs with a named error', () => {
    expect(() => ropeInvFreq({ headDim: 64, ropeTheta: 10000, maxPositionEmbeddings: 1, partialRotaryFactor: 0.01 })).toThrow(RopeConfigError);
    expect(() =>
      ropeInvFreq({ headDim: 64, ropeTheta: 1e4, maxPositionEmbeddings: 1, scaling: { type: 'llama3', factor: 8, lowFreqFactor: 4, highFreqFactor: 1, originalMaxPositionEmbeddings: 8192 } }),
    ).toThrow(/high_freq_factor/);
  });
});

describe('parseRopeScaling', () => {
  it('no scaling: default with the top-level rope_theta (10000 when absent)', () => {
    expect(parseRopeScaling({ rope_theta: 1e6 })).toEqual({ ropeTheta: 1e6, scaling: { type: 'default' } });
    expect(parseRopeScaling({ rope_scaling: null })).toEqual({ ropeTheta: 10000, scaling: { type: 'default' } });
  });

  it('older rope_scaling with `type` or `rope_type`', () => {
    expect(parseRopeScaling({ rope_theta: 10000, rope_scaling: { type: 'linear', factor: 2 } })).toEqual({
      ropeTheta: 10000,
      scaling: { type: 'linear', factor: 2 },
    });
    const llama = parseRopeScaling({
      rope_theta: 500000,
      rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 },
    });
    expect(llama).toEqual({
      ropeTheta: 500000,
      scaling: { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 },
    });
  });

  it('newer rope_parameters holding rope_theta; partial_rotary_factor from either place', () => {
    expect(
      parseRopeScaling({ rope_parameters: { rope_type: 'yarn', rope_theta: 1e6, factor: 4, original_max_position_embeddings: 32768, partial_rotary_factor: 0.5 } }),
    ).toEqual({ ropeTheta: 1e6, scaling: { type: 'yarn', factor: 4, originalMaxPositionEmbeddings: 32768 }, partialRotaryFactor: 0.5 });
    expect(parseRopeScaling({ rope_parameters: { rope_type: 'default', rope_theta: 1e6 }, partial_rotary_factor: 0.25 })).toEqual({
      ropeTheta: 1e6,
      scaling: { type: 'default' },
      partialRotaryFactor: 0.25,
    });
  });

  it('longrope reads original_max_position_embeddings from the top level (Phi-3)', () => {
    const parsed = parseRopeScaling({
      original_max_position_embeddings: 4096,
      rope_scaling: { type: 'longrope', short_factor: [1, 1], long_factor: [2, 3] },
    });
    expect(parsed.scaling).toEqual({ type: 'longrope', shortFactor: [1, 1], longFactor: [2, 3], originalMaxPositionEmbeddings: 4096 });
  });

  it('per-layer-type rope_parameters need a layer type', () => {
    const config = {
      rope_parameters: {
        full_attention: { rope_type: 'linear', factor: 8, rope_theta: 1e6 },
        sliding_attention: { rope_type: 'default', rope_theta: 10000 },
      },
    };
    expect(() => parseRopeScaling(config)).toThrow(/layer type/);
    expect(parseRopeScaling(config, 'full_attention')).toEqual({ ropeTheta: 1e6, scaling: { type: 'linear', factor: 8 } });
    expect(parseRopeScaling(config, 'sliding_attention')).toEqual({ ropeTheta: 10000, scaling: { type: 'default' } });
  });

  it('rejects unknown types and missing fields', () => {
    expect(() => parseRopeScaling({ rope_scaling: { type: 'mrope' } })).toThrow(RopeConfigError);
    expect(() => parseRopeScaling({ rope_scaling: { type: 'linear' } })).toThrow(/factor/);
    expect(() => parseRopeScaling({ rope_scaling: { rope_type: 'llama3', factor: 8 } })).toThrow(/low_freq_factor/);
  });
});
