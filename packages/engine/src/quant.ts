// Quantized weight formats: their layout in GPU buffers, the host-side quantizers used while
// loading, and float64 dequantization references for tests.
//
// Both formats keep a linear layer's W [N, K] row-major by output row, each row padded with
// zero weights to a whole number of groups of G input columns (G a multiple of 32), so a group
// is a whole number of vec4<u32> loads (kernels/matvec_q.wgsl, kernels/matmul_q.wgsl):
//   q8: element k of a row in u32 word k/4, byte k%4, two's-complement int8; w = q * s.
//       Scale word per (row, group): the f32 bits of s.
//   q4: element k in word k/8, bits 4*(k%8) .. +3, unsigned 0..15; w = (q - z) * s.
//       Scale word per (row, group): pack2x16float(s, z), s and z as f16 (z an integer 0..16,
//       exact in f16), so GPTQ and AWQ checkpoints map onto it without rounding.
// Scales are a separate buffer [rows, groups] u32 beside each row chunk of words.

import { f16ToF32, f32ToF16 } from './dtype.ts';

export type QuantFormat = 'q8' | 'q4';

export interface QuantSpec {
  format: QuantFormat;
  /** Input columns per scale; a multiple of 32. */
  groupSize: number;
}

/** How load-time quantization quantizes each format (chosen by measurement; see quant-accuracy.test.ts). */
export const LOAD_TIME_QUANT: Readonly<Record<QuantFormat, QuantSpec & { symmetric: boolean }>> = {
  q8: { format: 'q8', groupSize: 32, symmetric: true },
  q4: { format: 'q4', groupSize: 32, symmetric: false },
};

export class QuantError extends Error {
  override name = 'QuantError';
}

/** Weights per u32 word. */
export function perWord(format: QuantFormat): number {
  return format === 'q8' ? 4 : 8;
}

export function groupsPerRow(spec: QuantSpec, K: number): number {
  return Math.ceil(K / spec.groupSize);
}

/** u32 words of packed weights per row (a multiple of 4: whole vec4<u32> loads). */
export function rowWords(spec: QuantSpec, K: number): number {
  return (groupsPerRow(spec, K) * spec.groupSize) / perWord(spec.format);
}

export function checkSpec(spec: QuantSpec, what = 'quantized weight'): void {
  if (spec.format !== 'q8' && spec.format !== 'q4') throw new QuantError(`${what}: unknown format '${spec.format}' (supported: q8, q4)`);
  if (!(Number.isInteger(spec.groupSize) && spec.groupSize >= 32 && spec.groupSize % 32 === 0)) {
    throw new QuantError(`${what}: group size ${spec.groupSize} is not a positive multiple of 32`);
  }
}

/** Bytes of packed weights plus scales for a [rows, K] matrix. */
export function quantBytes(spec: QuantSpec, rows: number, K: number): number {
  return rows * (rowWords(spec, K) + groupsPerRow(spec, K)) * 4;
}

export interface QuantRows {
  /** [rows, rowWords] packed weights. */
  words: Uint32Array;
  /** [rows, groups] scale words. */
  scales: Uint32Array;
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
function f32Bits(v: number): number {
  f32[0] = v;
  return u32[0]!;
}
function bitsF32(b: number): number {
  u32[0] = b;
  return f32[0]!;
}
/** The f16 value nearest to v, as a number. */
function toF16(v: number): number {
  return f16ToF32(f32ToF16(v));
}

/**
 * Quantizes `rows` rows of K values (row-major, f32) into words and scales, written at row
 * `at` of the outputs (so a tensor can be quantized a piece at a time into one mapped buffer).
 * q8 is symmetric (s = max|w| / 127); q4 is symmetric (s = max|w| / 8 with the sign of the
 * extreme, z = 8, as llama.cpp's q4_0) or asymmetric (s = (max - min) / 15 over a range that
 * includes 0, z = round(-min / s), as GPTQ's min-max quantizer).
 */
export function quantizeRows(
  values: Float32Array,
  rows: number,
  K: number,
  spec: QuantSpec & { symmetric: boolean },
  out: QuantRows,
  at = 0,
): void {
  checkSpec(spec);
  const G = spec.groupSize;
  const groups = groupsPerRow(spec, K);
  const rw = rowWords(spec, K);
  const q4 = spec.format === 'q4';
  if (values.length < rows * K) throw new QuantError(`quantizeRows: ${values.length} values for ${rows} x ${K}`);
  if (out.words.length < (at + rows) * rw || out.scales.length < (at + rows) * groups) throw new QuantError('quantizeRows: output too small');
  for (let r = 0; r < rows; r++) {
    const row = r * K;
    const wBase = (at + r) * rw;
    out.words.fill(0, wBase, wBase + rw);
    for (let g = 0; g < groups; g++) {
      const k0 = g * G;
      const k1 = Math.min(K, k0 + G);
      let lo = 0;
      let hi = 0;
      for (let k = k0; k < k1; k++) {
        const v = values[row + k]!;
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
      let s: number;
      let z: number;
      let scaleWord: number;
      if (!q4) {
        s = Math.fround(Math.max(-lo, hi) / 127);
        z = 0;
        scaleWord = f32Bits(s);
      } else {
        if (spec.symmetric) {
          const ext = -lo > hi ? lo : hi;
          s = toF16(-ext / 8);
          z = 8;
        } else {
          s = toF16((hi - lo) / 15);
          z = s === 0 ? 0 : Math.min(15, Math.max(0, Math.round(-lo / s)));
        }
        scaleWord = (f32ToF16(s) | (f32ToF16(z) << 16)) >>> 0;
      }
      out.scales[(at + r) * groups + g] = scaleWord;
      const inv = s === 0 ? 0 : 1 / s;
      for (let k = k0; k < k1; k++) {
        const v = values[row + k]!;
        if (q4) {
          const q = Math.min(15, Math.max(0, Math.round(v * inv) + z));
          out.words[wBase + (k >> 3)]! |= q << (4 * (k & 7));
        } else {
          const q = Math.min(127, Math.max(-127, Math.round(v * inv)));
          out.words[wBase + (k >> 2)]! |= (q & 0xff) << (8 * (k & 3));
        }
      }
    }
  }
}

/** Quantizes a whole [rows, K] matrix (tests, small tensors). */
export function quantize(values: Float32Array, rows: number, K: number, spec: QuantSpec & { symmetric: boolean }): QuantRows {
  const out = { words: new Uint32Array(rows * rowWords(spec, K)), scales: new Uint32Array(rows * groupsPerRow(spec, K)) };
  quantizeRows(values, rows, K, spec, out);
  return out;
}

/** The integer stored for element (r, k): int8 for q8, 0..15 for q4. */
export function storedInt(spec: QuantSpec, words: Uint32Array, K: number, r: number, k: number): number {
  const rw = rowWords(spec, K);
  if (spec.format === 'q4') return (words[r * rw + (k >> 3)]! >>> (4 * (k & 7))) & 15;
  return ((words[r * rw + (k >> 2)]! << (24 - 8 * (k & 3))) | 0) >> 24;
}

/** Scale and zero point of (row, group) as the kernels decode them. */
export function groupScale(spec: QuantSpec, scales: Uint32Array, K: number, r: number, g: number): { scale: number; zero: number } {
  const w = scales[r * groupsPerRow(spec, K) + g]!;
  if (spec.format === 'q8') return { scale: bitsF32(w), zero: 0 };
  return { scale: f16ToF32(w & 0xffff), zero: f16ToF32(w >>> 16) };
}

/** float64 dequantization of a [rows, K] matrix: what the fused kernels multiply by. */
export function dequantize(spec: QuantSpec, q: QuantRows, rows: number, K: number): Float64Array {
  const out = new Float64Array(rows * K);
  for (let r = 0; r < rows; r++) {
    for (let k = 0; k < K; k++) {
      const { scale, zero } = groupScale(spec, q.scales, K, r, Math.floor(k / spec.groupSize));
      out[r * K + k] = (storedInt(spec, q.words, K, r, k) - zero) * scale;
    }
  }
  return out;
}

/** A pre-quantized checkpoint's `quantization_config`, as far as we read it. */
export interface PrequantConfig {
  method: 'gptq' | 'awq';
  bits: 4;
  /** Input columns per group; -1 in config.json (one group over all of K) is kept as -1. */
  groupSize: number;
  /** GPTQ: columns quantized in activation order (g_idx is then a permutation of groups). */
  descAct: boolean;
  /** GPTQ: symmetric quantization (zero points all 8). */
  sym: boolean;
  /** GPTQ's original 'gptq' format stores zero points minus one; 'gptq_v2' stores them as is. */
  zeroOffset: number;
}

const SUPPORTED_PREQUANT = "quant_method 'gptq' (bits 4) or 'awq' (bits 4, version 'gemm', zero_point true)";

/** Reads config.json's quantization_config; undefined when the checkpoint is not pre-quantized. */
export function readQuantizationConfig(raw: Record<string, unknown>): PrequantConfig | undefined {
  const qc = raw.quantization_config;
  if (qc === undefined || qc === null) return undefined;
  if (typeof qc !== 'object') throw new QuantError(`quantization_config must be an object, got ${JSON.stringify(qc)}`);
  const q = qc as Record<string, unknown>;
  const method = String(q.quant_method ?? '').toLowerCase();
  if (method !== 'gptq' && method !== 'awq') {
    throw new QuantError(`quantization_config.quant_method '${String(q.quant_method)}' is not supported; supported: ${SUPPORTED_PREQUANT}`);
  }
  const bits = q.bits ?? q.w_bit;
  if (bits !== 4) throw new QuantError(`${method} checkpoints with bits ${String(bits)} are not supported; supported: ${SUPPORTED_PREQUANT}`);
  const groupSize = q.group_size ?? q.q_group_size ?? 128;
  if (!(typeof groupSize === 'number' && Number.isInteger(groupSize) && (groupSize > 0 || groupSize === -1))) {
    throw new QuantError(`quantization_config.group_size ${JSON.stringify(groupSize)} is not a positive integer or -1`);
  }
  if (method === 'awq') {
    const version = String(q.version ?? 'gemm').toLowerCase();
    if (version !== 'gemm') throw new QuantError(`AWQ version '${version}' is not supported; supported: ${SUPPORTED_PREQUANT}`);
    if (q.zero_point === false) throw new QuantError(`AWQ with zero_point false is not supported; supported: ${SUPPORTED_PREQUANT}`);
    return { method, bits: 4, groupSize, descAct: false, sym: false, zeroOffset: 0 };
  }
  const format = String(q.checkpoint_format ?? 'gptq').toLowerCase();
  if (format !== 'gptq' && format !== 'gptq_v2') throw new QuantError(`GPTQ checkpoint_format '${format}' is not supported (supported: gptq, gptq_v2)`);
  return { method, bits: 4, groupSize, descAct: q.desc_act === true, sym: q.sym !== false, zeroOffset: format === 'gptq' ? 1 : 0 };
}
