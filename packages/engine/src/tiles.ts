// Row tiles: the weight layout of the software (CPU-backed adapter) linear kernels.
//
// On lavapipe a workgroup runs as 8-lane SIMD loops, and a load whose address differs per lane
// becomes one scalar load per lane. With row-major weights, the 8 lanes of a matvec (4 rows each)
// read 32 rows a whole row apart: 32 streams that the CPU's prefetchers cannot follow once the
// weights leave the cache. In tiles, the 32 rows a SIMD group reads sit side by side, so each
// step of its loop reads one contiguous 512-byte piece and the group streams through one region
// (1.3-1.5x the matvec speed of row-major weights on the Qwen2.5-0.5B shapes).
//
// A row is cut into 16-byte units (8 weights of 16 bits, 4 of f32, 16 of int8, 32 of int4, or a
// single scale word with unitWords = 1). Thread t of a dispatch handles rows 4t .. 4t + 3; row
// r = 32 tile + 4 lane + j is thread 8 tile + lane's j-th row, and its unit u lies at unit index
//   ((tile * units + u) * 4 + j) * 8 + lane
// of the buffer (kernels/oct.wgsl `rowStarts`, quant_rows.wgsl `rowUnits`, embedding.wgsl `at`).
// Rows are padded with zeros to whole tiles, so the kernels need no bounds checks on the last
// tile's rows.

export const TILE_ROWS = 32;

/** Rows padded to whole tiles. */
export function tiledRows(rows: number): number {
  return Math.ceil(rows / TILE_ROWS) * TILE_ROWS;
}

/** Unit index of row r's unit u in a tiled buffer of `units` units per row. */
export function tiledUnit(r: number, u: number, units: number): number {
  const tile = Math.floor(r / TILE_ROWS);
  const inTile = r % TILE_ROWS;
  return ((tile * units + u) * 4 + (inTile % 4)) * 8 + Math.floor(inTile / 4);
}

/**
 * Rearranges row-major [rows, units] units of `unitWords` u32 words into tiles, into `out` (zeroed,
 * at least tiledRows(rows) rows long) or a new array; the padding rows stay zero.
 */
export function tileRows(src: Uint32Array, rows: number, units: number, unitWords: number, out?: Uint32Array): Uint32Array {
  if (src.length < rows * units * unitWords) throw new RangeError(`tileRows: ${src.length} words, need ${rows * units * unitWords}`);
  const size = tiledRows(rows) * units * unitWords;
  if (out && out.length < size) throw new RangeError(`tileRows: output has ${out.length} words, needs ${size}`);
  out ??= new Uint32Array(size);
  const rowWords = units * unitWords;
  for (let r = 0; r < rows; r++) {
    const tile = Math.floor(r / TILE_ROWS);
    const inTile = r % TILE_ROWS;
    // Consecutive units of a row are 32 units apart in the tile.
    let at = (tile * units * 32 + (inTile % 4) * 8 + Math.floor(inTile / 4)) * unitWords;
    const from = r * rowWords;
    if (unitWords === 4) {
      for (let u = 0; u < units; u++, at += 128) {
        const s = from + u * 4;
        out[at] = src[s]!;
        out[at + 1] = src[s + 1]!;
        out[at + 2] = src[s + 2]!;
        out[at + 3] = src[s + 3]!;
      }
    } else {
      for (let u = 0; u < units; u++, at += 32 * unitWords) {
        for (let w = 0; w < unitWords; w++) out[at + w] = src[from + u * unitWords + w]!;
      }
    }
  }
  return out;
}
