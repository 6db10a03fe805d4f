// MXFP4 as published: e2m1 nibbles (even column low) and e8m0 scales per 32 values.
// Known bytes must dequantize exactly, quantizing representable values must round-trip,
// and the GPU expert kernel must see the same values (moe.test.ts runs it on MXFP4 too).
import { describe, expect, it } from 'vitest';
import { E2M1_VALUES, Mxfp4Error, dequantizeMxfp4, e2m1ToF32, e8m0ToF32, quantizeMxfp4 } from '../src/mxfp4.ts';

describe('mxfp4', () => {
  it('decodes every e2m1 nibble and e8m0 exponent exactly', () => {
    expect([0, 1, 2, 3, 4, 5, 6, 7].map(e2m1ToF32)).toEqual([0, 0.5, 1, 1.5, 2, 3, 4, 6]);
    expect([9, 10, 11, 12, 13, 14, 15].map(e2m1ToF32)).toEqual([-0.5, -1, -1.5, -2, -3, -4, -6]);
    expect(Object.is(e2m1ToF32(8), -0)).toBe(true);
    expect(e8m0ToF32(127)).toBe(1);
    expect(e8m0ToF32(128)).toBe(2);
    expect(e8m0ToF32(120)).toBe(2 ** -7);
    expect(e8m0ToF32(254)).toBe(2 ** 127);
    expect(e8m0ToF32(255)).toBeNaN();
    expect(() => e2m1ToF32(16)).toThrow(Mxfp4Error);
  });

  it('dequantizes known blocks: low nibble first, one scale per 32 values', () => {
    // Row 0: byte 0 = 0x2f (low 0xf = -6, high 0x2 = 1), the rest 0x71 (0.5, 6); scale 2^-1.
    // Row 1: bytes 0x9a (-1, -0.5), scale 2^3.
    const blocks = new Uint8Array(32);
    blocks.fill(0x71, 0, 16);
    blocks[0] = 0x2f;
    blocks.fill(0x9a, 16, 32);
    const scales = new Uint8Array([126, 130]);
    const v = dequantizeMxfp4(blocks, scales, 2, 32);
    expect(Array.from(v.subarray(0, 4))).toEqual([-3, 0.5, 0.25, 3]);
    expect(Array.from(v.subarray(32, 36))).toEqual([-8, -4, -8, -4]);
    expect(() => dequantizeMxfp4(blocks, scales, 2, 48)).toThrow(/multiple of 32/);
  });

  it('round-trips values that MXFP4 represents exactly', () => {
    const values = new Float32Array(64);
    for (let i = 0; i < 32; i++) values[i] = E2M1_VALUES[i % 16]! * 2 ** -5; // largest 6 * 2^-5
    for (let i = 32; i < 64; i++) values[i] = E2M1_VALUES[(i * 7) % 16]! * 2 ** 10;
    const q = quantizeMxfp4(values, 2, 32);
    expect(Array.from(q.scales)).toEqual([127 - 5, 127 + 10]);
    // -0 comes back as +0.
    expect(Array.from(dequantizeMxfp4(q.blocks, q.scales, 2, 32), (v) => v + 0)).toEqual(Array.from(values, (v) => v + 0));
  });
});
