import { describe, expect, it } from 'vitest';
import { entryPoints, packParams, paramsLayout, preprocess } from '../src/kernel.ts';
import { kernels, testGpu } from './harness.ts';

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
  const layout = paramsLayout('struct Params {\n  rows: u32,\n  eps: f32, // a comment, with commas, in it\n  shift: i32,\n}');
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

describe('named entry points', () => {
  it('are read from the source in order, whatever the attributes between @compute and fn', () => {
    const src = '@compute @workgroup_size(64)\nfn stats(@builtin(local_invocation_index) l: u32) {}\nfn helper() {}\n@compute @workgroup_size(WG, 1)\nfn scan() {}';
    expect(entryPoints(src)).toEqual(['stats', 'scan']);
  });
  it('key the cache apart, and an unknown one is named with those the file has', async () => {
    const cache = kernels(await testGpu());
    const stats = cache.get('logits', {}, {}, 'stats');
    const sort = cache.get('logits', {}, {}, 'sort');
    expect(stats.key).not.toBe(sort.key);
    expect(cache.get('logits', {}, {}, 'stats')).toBe(stats);
    expect(() => cache.get('logits', {}, {}, 'main')).toThrow(/'logits' has no entry point 'main'.*has: stats, rows, reduce, prefilter, hist, scan, compact, sort/);
  });

  it("take their own <Entry>Params where the file declares one, else the file's Params", async () => {
    const cache = kernels(await testGpu());
    const fields = (family: string, entry: string) => cache.get(family, {}, {}, entry).layout?.fields.map((f) => f.name);
    expect(fields('elementwise', 'add')).toEqual(['count', 'scale']);
    expect(fields('elementwise', 'copy')).toEqual(['count', 'srcOffset', 'dstOffset']);
    expect(fields('attention', 'kvWrite')).toEqual(['tokens', 'nKvHeads', 'headDim', 'blockSize', 'maxTokens']);
    expect(fields('attention', 'splitGpu')).toContain('splits');
  });
});
