// RoPE inverse frequencies and the cos/sin amplitude ("attention scaling") for each
// rope_type of Hugging Face Transformers (modeling_rope_utils.py), derived from the
// published formulas. Computed in float64 and rounded to f32 once at the end; HF
// computes in f32 throughout, so values may differ from HF by an ulp or so.

export class RopeConfigError extends Error {
  override name = 'RopeConfigError';
}

export type RopeScaling =
  | { type: 'default' }
  /** Position interpolation: every frequency divided by `factor`. */
  | { type: 'linear'; factor: number }
  /** Dynamic NTK: the base grows with the sequence length once it passes maxPositionEmbeddings. */
  | { type: 'dynamic'; factor: number }
  | {
      type: 'llama3';
      factor: number;
      lowFreqFactor: number;
      highFreqFactor: number;
      originalMaxPositionEmbeddings: number;
    }
  | {
      type: 'yarn';
      /**
       * When absent: maxPositionEmbeddings / originalMaxPositionEmbeddings. Used as given
       * otherwise, as Transformers 5 does (4.4x-4.5x replaced it by that ratio whenever
       * original_max_position_embeddings was present).
       */
      factor?: number;
      /** Overrides the amplitude derived from factor/mscale/mscaleAllDim. */
      attentionFactor?: number;
      betaFast?: number;
      betaSlow?: number;
      mscale?: number;
      mscaleAllDim?: number;
      /** When absent: maxPositionEmbeddings. */
      originalMaxPositionEmbeddings?: number;
      /** Round the correction range to whole dimensions (HF's default: true). */
      truncate?: boolean;
    }
  | {
      type: 'longrope';
      shortFactor: number[];
      longFactor: number[];
      factor?: number;
      attentionFactor?: number;
      originalMaxPositionEmbeddings?: number;
    };

export interface RopeConfig {
  headDim: number;
  ropeTheta: number;
  /** Fraction of headDim that is rotated (the rest passes through). Default 1. */
  partialRotaryFactor?: number;
  scaling?: RopeScaling;
  maxPositionEmbeddings: number;
}

export interface RopeFrequencies {
  /** [rotaryDim / 2]: angle of pair i at position p is p * invFreq[i] (in f32). */
  invFreq: Float32Array<ArrayBuffer>;
  /** Multiplies cos and sin (YaRN, LongRoPE); 1 otherwise. */
  attentionScaling: number;
}

/** Dimensions rotated: int(headDim * partialRotaryFactor), as HF computes it. */
export function rotaryDim(cfg: Pick<RopeConfig, 'headDim' | 'partialRotaryFactor'>): number {
  return Math.floor(cfg.headDim * (cfg.partialRotaryFactor ?? 1));
}

function baseInvFreq(base: number, dim: number): Float64Array {
  const out = new Float64Array(dim / 2);
  for (let i = 0; i < dim / 2; i++) out[i] = 1 / base ** ((2 * i) / dim);
  return out;
}

function need(v: number | undefined, what: string): number {
  if (v === undefined || !Number.isFinite(v)) throw new RopeConfigError(`rope scaling: '${what}' is required`);
  return v;
}

/**
 * Inverse frequencies for `cfg`. `seqLen` is the current sequence length (the highest
 * position in the forward pass + 1); only 'dynamic' and 'longrope' depend on it, as in
 * HF: dynamic NTK recomputes the base for seqLen > maxPositionEmbeddings, and LongRoPE
 * switches from short to long factors once seqLen > originalMaxPositionEmbeddings.
 * Callers of those types must recompute (and re-upload) when seqLen crosses those bounds.
 */
export function ropeInvFreq(cfg: RopeConfig, seqLen?: number): RopeFrequencies {
  const dim = rotaryDim(cfg);
  if (dim < 2 || dim % 2 !== 0) throw new RopeConfigError(`rotary dimension ${dim} must be even and >= 2`);
  if (!(cfg.ropeTheta > 1)) throw new RopeConfigError(`rope_theta must be > 1, got ${cfg.ropeTheta}`);
  const s = cfg.scaling ?? { type: 'default' };
  const half = dim / 2;
  let inv: Float64Array;
  let attentionScaling = 1;
  switch (s.type) {
    case 'default':
      inv = baseInvFreq(cfg.ropeTheta, dim);
      break;
    case 'linear': {
      const factor = need(s.factor, 'factor');
      inv = baseInvFreq(cfg.ropeTheta, dim).map((f) => f / factor);
      break;
    }
    case 'dynamic': {
      const factor = need(s.factor, 'factor');
      const max = cfg.maxPositionEmbeddings;
      const len = Math.max(seqLen ?? max, max);
      const base = cfg.ropeTheta * ((factor * len) / max - (factor - 1)) ** (dim / (dim - 2));
      inv = baseInvFreq(base, dim);
      break;
    }
    case 'llama3': {
      const factor = need(s.factor, 'factor');
      const low = need(s.lowFreqFactor, 'low_freq_factor');
      const high = need(s.highFreqFactor, 'high_freq_factor');
      const old = need(s.originalMaxPositionEmbeddings, 'original_max_position_embeddings');
      if (!(high > low)) throw new RopeConfigError(`llama3 rope: high_freq_factor (${high}) must exceed low_freq_factor (${low})`);
      const lowWavelen = old / low;
      const highWavelen = old / high;
      inv = baseInvFreq(cfg.ropeTheta, dim).map((f) => {
        const wavelen = (2 * Math.PI) / f;
        if (wavelen < highWavelen) return f;
        if (wavelen > lowWavelen) return f / factor;
        const smooth = (old / wavelen - low) / (high - low);
        return ((1 - smooth) * f) / factor + smooth * f;
      });
      break;
    }
    case 'yarn': {
      const original = s.originalMaxPositionEmbeddings ?? cfg.maxPositionEmbeddings;
      const factor = s.factor ?? cfg.maxPositionEmbeddings / original;
      const mscaleOf = (scale: number, m = 1) => (scale <= 1 ? 1 : 0.1 * m * Math.log(scale) + 1);
      if (s.attentionFactor !== undefined) attentionScaling = s.attentionFactor;
      else if (s.mscale && s.mscaleAllDim) attentionScaling = mscaleOf(factor, s.mscale) / mscaleOf(factor, s.mscaleAllDim);
      else attentionScaling = mscaleOf(factor);
      const betaFast = s.betaFast || 32;
      const betaSlow = s.betaSlow || 1;
      // The dimension at which a frequency completes `rotations` turns over the original context.
      const correctionDim = (rotations: number) =>
        (dim * Math.log(original / (rotations * 2 * Math.PI))) / (2 * Math.log(cfg.ropeTheta));
      let lo = correctionDim(betaFast);
      let hi = correctionDim(betaSlow);
      if (s.truncate ?? true) {
        lo = Math.floor(lo);
        hi = Math.ceil(hi);
      }
      lo = Math.max(lo, 0);
      hi = Math.min(hi, dim - 1);
      if (lo === hi) hi += 0.001;
      const base = baseInvFreq(cfg.ropeTheta, dim);
      inv = new Float64Array(half);
      for (let i = 0; i < half; i++) {
        const ramp = Math.min(1, Math.max(0, (i - lo) / (hi - lo)));
        const extrapolation = 1 - ramp; // weight of the unscaled frequency
        inv[i] = (base[i]! / factor) * (1 - extrapolation) + base[i]! * extrapolation;
      }
      break;
    }
    case 'longrope': {
      const original = s.originalMaxPositionEmbeddings ?? cfg.maxPositionEmbeddings;
      const factor = s.factor ?? cfg.maxPositionEmbeddings / original;
      if (s.attentionFactor !== undefined) attentionScaling = s.attentionFactor;
      else attentionScaling = factor <= 1 ? 1 : Math.sqrt(1 + Math.log(factor) / Math.log(original));
      const ext = seqLen !== undefined && seqLen > original ? s.longFactor : s.shortFactor;
      if (ext.length !== half) throw new RopeConfigError(`longrope factors need ${half} entries (rotary dim ${dim}), got ${ext.length}`);
      const base = baseInvFreq(cfg.ropeTheta, dim);
      inv = base.map((f, i) => f / ext[i]!);
      break;
    }
    default:
      throw new RopeConfigError(`unknown rope type '${(s as { type: string }).type}'`);
  }
  return { invFreq: Float32Array.from(inv), attentionScaling };
}

export interface ParsedRope {
  ropeTheta: number;
  scaling: RopeScaling;
  /** From rope_parameters or the config's top level, when given. */
  partialRotaryFactor?: number;
}

const num = (v: unknown): number | undefined => (typeof v === 'number' && Number.isFinite(v) ? v : undefined);
const nums = (v: unknown, what: string): number[] => {
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'number')) throw new RopeConfigError(`rope scaling: '${what}' must be a list of numbers`);
  return v as number[];
};
const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * Reads RoPE settings from a config.json object: the older `rope_scaling` (type under
 * `type` or `rope_type`, with `rope_theta` at the top level) or the newer
 * `rope_parameters` (which also holds `rope_theta`). Per-layer-type rope_parameters
 * (a dict of dicts keyed by layer type) need `layerType` to pick one.
 */
export function parseRopeScaling(config: Record<string, unknown>, layerType?: string): ParsedRope {
  let params: Record<string, unknown> | undefined;
  const rp = config.rope_parameters;
  if (isRecord(rp)) {
    const nested = Object.values(rp).some(isRecord);
    if (nested) {
      if (layerType === undefined) throw new RopeConfigError(`rope_parameters is per layer type (${Object.keys(rp).join(', ')}); pass a layer type`);
      const sub = rp[layerType];
      if (!isRecord(sub)) throw new RopeConfigError(`rope_parameters has no entry for layer type '${layerType}'`);
      params = sub;
    } else params = rp;
  } else if (isRecord(config.rope_scaling)) {
    params = config.rope_scaling;
  }
  const p = params ?? {};
  const ropeTheta = num(p.rope_theta) ?? num(config.rope_theta) ?? 10000;
  const partialRotaryFactor = num(p.partial_rotary_factor) ?? num(config.partial_rotary_factor);
  const type = (p.rope_type ?? p.type ?? 'default') as string;
  // Phi-3 keeps original_max_position_embeddings at the top level of the config.
  const original = num(p.original_max_position_embeddings) ?? num(config.original_max_position_embeddings);
  const opt = <T extends object>(o: T): T =>
    Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T;
  let scaling: RopeScaling;
  switch (type) {
    case 'default':
      scaling = { type: 'default' };
      break;
    case 'linear':
    case 'dynamic':
      scaling = { type, factor: need(num(p.factor), 'factor') };
      break;
    case 'llama3':
      scaling = {
        type,
        factor: need(num(p.factor), 'factor'),
        lowFreqFactor: need(num(p.low_freq_factor), 'low_freq_factor'),
        highFreqFactor: need(num(p.high_freq_factor), 'high_freq_factor'),
        originalMaxPositionEmbeddings: need(original, 'original_max_position_embeddings'),
      };
      break;
    case 'yarn':
      scaling = opt({
        type,
        factor: num(p.factor),
        attentionFactor: num(p.attention_factor),
        betaFast: num(p.beta_fast),
        betaSlow: num(p.beta_slow),
        mscale: num(p.mscale),
        mscaleAllDim: num(p.mscale_all_dim),
        originalMaxPositionEmbeddings: original,
        truncate: typeof p.truncate === 'boolean' ? p.truncate : undefined,
      });
      break;
    case 'longrope':
      scaling = opt({
        type,
        shortFactor: nums(p.short_factor, 'short_factor'),
        longFactor: nums(p.long_factor, 'long_factor'),
        factor: num(p.factor),
        attentionFactor: num(p.attention_factor),
        originalMaxPositionEmbeddings: original,
      });
      break;
    default:
      throw new RopeConfigError(`unsupported rope type '${type}' (supported: default, linear, dynamic, llama3, yarn, longrope)`);
  }
  return partialRotaryFactor === undefined ? { ropeTheta, scaling } : { ropeTheta, scaling, partialRotaryFactor };
}
