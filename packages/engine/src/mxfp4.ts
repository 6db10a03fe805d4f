// MXFP4 (OCP microscaling FP4) as GPT-OSS publishes its expert weights: a tensor
// [..., rows, cols] is stored as `*_blocks` u8 [..., rows, cols / 32, 16], two e2m1 values per
// byte (the even column in the low nibble), and `*_scales` u8 [..., rows, cols / 32], one e8m0
// exponent per 32 values: value = e2m1 * 2^(scale - 127). Kernels dequantize inside the
// matmul (kernels/moe_matmul.wgsl); these helpers are the reference for tests, and the packer
// writes test checkpoints.

export class Mxfp4Error extends Error {
  override name = 'Mxfp4Error';
}

/** Values per e8m0 scale (one block of 16 bytes). */
export const MXFP4_BLOCK = 32;

/** e2m1 by nibble: bit 3 sign, bits 2-1 exponent (bias 1), bit 0 mantissa. */
export const E2M1_VALUES: readonly number[] = [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0, -0.5, -1, -1.5, -2, -3, -4, -6];

export function e2m1ToF32(nibble: number): number {
  if (!(Number.isInteger(nibble) && nibble >= 0 && nibble < 16)) throw new Mxfp4Error(`e2m1 nibble ${nibble} outside 0..15`);
  return E2M1_VALUES[nibble]!;
}

/** 2^(byte - 127); 255 is NaN. */
export function e8m0ToF32(byte: number): number {
  if (!(Number.isInteger(byte) && byte >= 0 && byte < 256)) throw new Mxfp4Error(`e8m0 byte ${byte} outside 0..255`);
  return byte === 255 ? NaN : 2 ** (byte - 127);
}

function checkShape(rows: number, cols: number): void {
  if (!(Number.isInteger(rows) && rows >= 1 && Number.isInteger(cols) && cols >= 1 && cols % MXFP4_BLOCK === 0))
    throw new Mxfp4Error(`MXFP4 needs a positive row count and a column count that is a multiple of ${MXFP4_BLOCK}, got [${rows}, ${cols}]`);
}

/** [rows, cols] floats from blocks [rows, cols / 32, 16] and scales [rows, cols / 32]. */
export function dequantizeMxfp4(blocks: Uint8Array, scales: Uint8Array, rows: number, cols: number): Float32Array {
  checkShape(rows, cols);
  if (blocks.length !== (rows * cols) / 2 || scales.length !== (rows * cols) / MXFP4_BLOCK)
    throw new Mxfp4Error(`MXFP4 [${rows}, ${cols}] needs ${(rows * cols) / 2} block bytes and ${(rows * cols) / MXFP4_BLOCK} scales, got ${blocks.length} and ${scales.length}`);
  const out = new Float32Array(rows * cols);
  for (let i = 0; i < rows * cols; i += 2) {
    const b = blocks[i >> 1]!;
    const s = e8m0ToF32(scales[Math.floor(i / MXFP4_BLOCK)]!);
    out[i] = E2M1_VALUES[b & 15]! * s;
    out[i + 1] = E2M1_VALUES[b >> 4]! * s;
  }
  return out;
}

/** The nibble of the e2m1 value nearest to v (|v| <= 6 after scaling); ties to the even mantissa. */
function nearestE2m1(v: number): number {
  const a = Math.abs(v);
  let best = 0;
  for (let n = 1; n < 8; n++) {
    const d = Math.abs(E2M1_VALUES[n]! - a) - Math.abs(E2M1_VALUES[best]! - a);
    if (d < 0 || (d === 0 && (n & 1) === 0)) best = n;
  }
  return best | (v < 0 && best !== 0 ? 8 : 0);
}

/**
 * Quantizes [rows, cols] floats to MXFP4: each group of 32 gets the smallest power-of-two scale
 * that brings its largest magnitude within e2m1's range (6), each value the nearest e2m1.
 */
export function quantizeMxfp4(values: ArrayLike<number>, rows: number, cols: number): { blocks: Uint8Array; scales: Uint8Array } {
  checkShape(rows, cols);
  if (values.length !== rows * cols) throw new Mxfp4Error(`quantizeMxfp4: ${values.length} values for [${rows}, ${cols}]`);
  const blocks = new Uint8Array((rows * cols) / 2);
  const scales = new Uint8Array((rows * cols) / MXFP4_BLOCK);
  for (let g = 0; g < scales.length; g++) {
    let amax = 0;
    for (let i = 0; i < MXFP4_BLOCK; i++) amax = Math.max(amax, Math.abs(values[g * MXFP4_BLOCK + i]!));
    const exp = amax > 0 ? Math.min(127, Math.max(-126, Math.ceil(Math.log2(amax / 6)))) : -126;
    scales[g] = exp + 127;
    for (let i = 0; i < MXFP4_BLOCK; i += 2) {
      const at = g * MXFP4_BLOCK + i;
      const lo = nearestE2m1(values[at]! / 2 ** exp);
      const hi = nearestE2m1(values[at + 1]! / 2 ** exp);
      blocks[at >> 1] = lo | (hi << 4);
    }
  }
  return { blocks, scales };
}
