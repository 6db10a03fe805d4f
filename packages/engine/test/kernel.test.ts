import { describe, expect, it } from 'vitest';
import { packParams, paramsLayout, preprocess } from '../src/kernel.ts';

describe('kernel preprocessor', () => {
  const src = ['a', '#if X', 'x', '#if !Y', 'x-not-y', '#else', 'x-y', '#endif', '#else', 'not-x', '#endif', 'b'].join('\n');
  it('resolves nested #if / #if ! / #else', () => {
    expect(preprocess(src, {}).split('\n')).toEqual(['a', 'not-x', 'b']);
    expect(preprocess(src, { X: true }).split('\n')).toEqual(['a', 'x', 'x-not-y', 'b']);
    expect(preprocess(src, { X: true, Y: true }).split('\n')).toEqual(['a', 'x', 'x-y', 'b']);
  });
  it('pastes #include snippets with the same defines, only in active branches', () => {
    const withBf16 = preprocess('#include unpack16\nfn main() {}', { WBF16: true });
    expect(withBf16).toContain('fn unpack2');
    expect(withBf16).toContain('v << 16u');
    expect(preprocess('#if NO\n#include unpack16\n#endif', {})).not.toContain('unpack2');
    expect(() => preprocess('#include no_such_kernel', {})).toThrow(/unknown kernel family 'no_such_kernel'/);
  });
  it('rejects unbalanced and unknown directives', () => {
    expect(() => preprocess('#if X\nx', {})).toThrow(/#if without #endif/);
    expect(() => preprocess('#endif', {})).toThrow(/#endif without #if/);
    expect(() => preprocess('#define X', {})).toThrow(/unknown directive/);
  });
});

describe('params layout', () => {
  const layout = paramsLayout('struct Params {\n  rows: u32,\n  eps: f32, // comment\n  shift: i32,\n}');
  it('is read from the WGSL struct and packed in declaration order', () => {
    expect(layout.fields.map((f) => f.name)).toEqual(['rows', 'eps', 'shift']);
    expect(layout.byteSize).toBe(16);
    const dv = new DataView(packParams(layout, { rows: 7, eps: 0.5, shift: -3 }));
    expect([dv.getUint32(0, true), dv.getFloat32(4, true), dv.getInt32(8, true)]).toEqual([7, 0.5, -3]);
  });
  it('names missing, unknown and out-of-range values', () => {
    expect(() => packParams(layout, { rows: 1, eps: 0 })).toThrow(/missing param 'shift'/);
    expect(() => packParams(layout, { rows: 1, eps: 0, shift: 0, extra: 1 })).toThrow(/unknown param 'extra'/);
    expect(() => packParams(layout, { rows: -1, eps: 0, shift: 0 })).toThrow(/not a u32/);
  });
});
