import { describe, expect, it } from 'vitest';
import { TILE_ROWS, tileRows, tiledRows, tiledUnit } from '../src/tiles.ts';

describe('tileRows', () => {
  for (const [rows, units, unitWords] of [[1, 1, 4], [37, 3, 4], [64, 5, 1], [70, 2, 2], [32, 7, 4]] as const) {
    it(`puts every unit where tiledUnit says and zero-pads: ${rows} rows x ${units} units of ${unitWords} words`, () => {
      const src = Uint32Array.from({ length: rows * units * unitWords }, (_, i) => i + 1);
      const out = tileRows(src, rows, units, unitWords);
      expect(out.length).toBe(tiledRows(rows) * units * unitWords);
      const seen = new Uint8Array(out.length);
      for (let r = 0; r < rows; r++) {
        for (let u = 0; u < units; u++) {
          for (let w = 0; w < unitWords; w++) {
            const at = tiledUnit(r, u, units) * unitWords + w;
            expect(out[at]).toBe(src[(r * units + u) * unitWords + w]);
            seen[at] = 1;
          }
        }
      }
      for (let i = 0; i < out.length; i++) if (!seen[i]) expect(out[i]).toBe(0);
    });
  }

  it('keeps a SIMD group of 8 threads (4 rows each) on one contiguous piece per unit', () => {
    // Thread t's row j is row 4t + j; for a fixed unit, the 32 rows of a tile cover 32 consecutive units.
    const units = 6;
    for (let u = 0; u < units; u++) {
      const at = Array.from({ length: TILE_ROWS }, (_, r) => tiledUnit(TILE_ROWS + r, u, units)).sort((a, b) => a - b);
      expect(at[TILE_ROWS - 1]! - at[0]!).toBe(TILE_ROWS - 1);
    }
  });

  it('rejects a source shorter than its shape', () => {
    expect(() => tileRows(new Uint32Array(3), 1, 1, 4)).toThrow(RangeError);
  });
});
