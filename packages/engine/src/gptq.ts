// GPTQ int4 checkpoints (AutoGPTQ / Transformers' `quant_method: "gptq"`) repacked at load time
// into the q4 layout of src/quant.ts. The published layout of one linear layer W [N, K]:
//   qweight i32 [K / 8, N]: element (n, k) in qweight[k / 8, n], bits 4 (k % 8), packed along K;
//   qzeros  i32 [groups, N / 8]: zero of (group g, n) in qzeros[g, n / 8], bits 4 (n % 8), packed
//           along N, stored minus one in checkpoint_format 'gptq' (as is in 'gptq_v2');
//   scales  f16 [groups, N];  g_idx i32 [K]: the group of input column k;
//   w[n, k] = scales[g_idx[k], n] * (q[n, k] - zero[g_idx[k], n]).
// With desc_act false g_idx[k] = k / group_size, and qweight's rows transposed are our words
// exactly. With desc_act (act-order) g_idx is a permutation of the groups: the columns are sorted
// by group (each group must then hold group_size columns) and the layer gathers x in that order.

import { f32ToF16 } from './dtype.ts';
import { type PrequantConfig, QuantError } from './quant.ts';

export interface RepackedQ4 {
  /** [N, K / 8] q4 words (src/quant.ts). */
  words: Uint32Array;
  /** [N, groups] pack2x16float(scale, zero) words. */
  scales: Uint32Array;
  groupSize: number;
  /** Column j of `words` holds input column perm[j]; undefined when the identity. */
  perm?: Uint32Array;
}

/** The raw tensors of one GPTQ layer, as little-endian words (f16 scales as bit patterns). */
export interface GptqTensors {
  qweight: Uint32Array;
  qweightShape: readonly number[];
  qzeros: Uint32Array;
  qzerosShape: readonly number[];
  scales: Uint16Array;
  scalesShape: readonly number[];
  gIdx?: Int32Array;
}

const same = (a: readonly number[], b: readonly number[]) => a.length === b.length && a.every((d, i) => d === b[i]);

/** The group size in columns for a layer with K inputs (-1 in config.json: one group). */
export function resolveGroupSize(cfg: PrequantConfig, K: number, what: string): number {
  const G = cfg.groupSize === -1 ? K : cfg.groupSize;
  if (K % G !== 0) throw new QuantError(`${what}: group_size ${G} does not divide the input dimension ${K}`);
  if (G % 32 !== 0) throw new QuantError(`${what}: group_size ${G} is not a multiple of 32 (the kernels read 32 weights per load)`);
  return G;
}

/**
 * The column order g_idx implies (by group, stable): column j of the repacked words holds input
 * column perm[j]; undefined when that is the stored order.
 */
export function actOrder(gIdx: Int32Array): Uint32Array | undefined {
  const order = Array.from({ length: gIdx.length }, (_, k) => k).sort((a, b) => gIdx[a]! - gIdx[b]! || a - b);
  return order.some((k, j) => k !== j) ? Uint32Array.from(order) : undefined;
}

/** Checks a GPTQ layer's shapes against W [N, K] and the config, then repacks it. */
export function repackGptq(t: GptqTensors, N: number, K: number, cfg: PrequantConfig, what = 'gptq layer'): RepackedQ4 {
  if (K % 8 !== 0 || N % 8 !== 0) throw new QuantError(`${what}: GPTQ int4 needs both dimensions divisible by 8, got [${N}, ${K}]`);
  const G = resolveGroupSize(cfg, K, what);
  const groups = K / G;
  if (!same(t.qweightShape, [K / 8, N])) throw new QuantError(`${what}: qweight has shape [${t.qweightShape}], expected [${K / 8}, ${N}] for 4-bit weights [${N}, ${K}]`);
  if (!same(t.qzerosShape, [groups, N / 8])) throw new QuantError(`${what}: qzeros has shape [${t.qzerosShape}], expected [${groups}, ${N / 8}] for group_size ${G}`);
  if (!same(t.scalesShape, [groups, N])) throw new QuantError(`${what}: scales has shape [${t.scalesShape}], expected [${groups}, ${N}] for group_size ${G}`);

  // Column order: by group (stable), so group g is columns [g G, (g + 1) G).
  let perm: Uint32Array | undefined;
  if (t.gIdx) {
    if (t.gIdx.length !== K) throw new QuantError(`${what}: g_idx has ${t.gIdx.length} entries, expected ${K}`);
    const counts = new Int32Array(groups);
    for (let k = 0; k < K; k++) {
      const g = t.gIdx[k]!;
      if (!(g >= 0 && g < groups)) throw new QuantError(`${what}: g_idx[${k}] = ${g} is outside 0..${groups - 1}`);
      counts[g]!++;
    }
    const bad = counts.findIndex((c) => c !== G);
    if (bad >= 0) throw new QuantError(`${what}: group ${bad} has ${counts[bad]} columns in g_idx, expected group_size ${G}`);
    perm = actOrder(t.gIdx);
  }

  const kw = K / 8;
  const words = new Uint32Array(N * kw);
  if (!perm) {
    for (let r = 0; r < kw; r++) for (let n = 0; n < N; n++) words[n * kw + r] = t.qweight[r * N + n]!;
  } else {
    for (let n = 0; n < N; n++) {
      for (let j = 0; j < K; j++) {
        const k = perm[j]!;
        const q = (t.qweight[(k >> 3) * N + n]! >>> (4 * (k & 7))) & 15;
        words[n * kw + (j >> 3)]! |= q << (4 * (j & 7));
      }
    }
  }
  const scales = new Uint32Array(N * groups);
  for (let g = 0; g < groups; g++) {
    for (let n = 0; n < N; n++) {
      const z = ((t.qzeros[g * (N / 8) + (n >> 3)]! >>> (4 * (n & 7))) & 15) + cfg.zeroOffset;
      scales[n * groups + g] = (t.scales[g * N + n]! | (f32ToF16(z) << 16)) >>> 0;
    }
  }
  return { words, scales, groupSize: G, ...(perm ? { perm } : {}) };
}
