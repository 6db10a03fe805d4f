// AWQ int4 checkpoints (AutoAWQ's GEMM layout, `quant_method: "awq"`, version "gemm") repacked
// at load time into the q4 layout of src/quant.ts. The published layout of W [N, K]:
//   qweight i32 [K, N / 8]: eight output columns per word, packed along N; nibble i (bits 4 i)
//           of qweight[k, c] holds column 8 c + AWQ_ORDER[i];
//   qzeros  i32 [groups, N / 8]: zero points packed the same way;
//   scales  f16 [groups, N];  w[n, k] = scales[k / G, n] * (q[n, k] - zero[k / G, n]).

import { f32ToF16 } from './dtype.ts';
import type { RepackedQ4 } from './gptq.ts';
import { resolveGroupSize } from './gptq.ts';
import { type PrequantConfig, QuantError } from './quant.ts';

/** Which of a word's eight columns each nibble holds (AutoAWQ's pack order). */
export const AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7] as const;

export interface AwqTensors {
  qweight: Uint32Array;
  qweightShape: readonly number[];
  qzeros: Uint32Array;
  qzerosShape: readonly number[];
  scales: Uint16Array;
  scalesShape: readonly number[];
}

const same = (a: readonly number[], b: readonly number[]) => a.length === b.length && a.every((d, i) => d === b[i]);

/** The int4 value of (column n) in a word packed in AWQ order. */
function awqNibble(word: number, n: number): number {
  return (word >>> (4 * AWQ_NIBBLE_OF[n & 7]!)) & 15;
}
/** Inverse of AWQ_ORDER: the nibble holding column j of a word. */
const AWQ_NIBBLE_OF = AWQ_ORDER.map((_, j) => AWQ_ORDER.indexOf(j as (typeof AWQ_ORDER)[number]));

export function repackAwq(t: AwqTensors, N: number, K: number, cfg: PrequantConfig, what = 'awq layer'): RepackedQ4 {
  if (K % 8 !== 0 || N % 8 !== 0) throw new QuantError(`${what}: AWQ int4 needs both dimensions divisible by 8, got [${N}, ${K}]`);
  const G = resolveGroupSize(cfg, K, what);
  const groups = K / G;
  const nw = N / 8;
  if (!same(t.qweightShape, [K, nw])) throw new QuantError(`${what}: qweight has shape [${t.qweightShape}], expected [${K}, ${nw}] for 4-bit weights [${N}, ${K}]`);
  if (!same(t.qzerosShape, [groups, nw])) throw new QuantError(`${what}: qzeros has shape [${t.qzerosShape}], expected [${groups}, ${nw}] for group_size ${G}`);
  if (!same(t.scalesShape, [groups, N])) throw new QuantError(`${what}: scales has shape [${t.scalesShape}], expected [${groups}, ${N}] for group_size ${G}`);
  const kw = K / 8;
  const words = new Uint32Array(N * kw);
  for (let k = 0; k < K; k++) {
    for (let n = 0; n < N; n++) {
      const q = awqNibble(t.qweight[k * nw + (n >> 3)]!, n);
      words[n * kw + (k >> 3)]! |= q << (4 * (k & 7));
    }
  }
  const scales = new Uint32Array(N * groups);
  for (let g = 0; g < groups; g++) {
    for (let n = 0; n < N; n++) {
      const z = awqNibble(t.qzeros[g * nw + (n >> 3)]!, n);
      scales[n * groups + g] = (t.scales[g * N + n]! | (f32ToF16(z) << 16)) >>> 0;
    }
  }
  return { words, scales, groupSize: G };
}
