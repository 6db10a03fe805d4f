import { describe, expect, it } from 'vitest';
import { checkNumber, checkRepoId, checkTools, checkUrl } from '../src/fields.ts';

describe('checkNumber', () => {
  it('accepts decimal numbers within the rule', () => {
    expect(checkNumber(' 0.9 ', { min: 0, above: true, max: 1 })).toEqual({ ok: true, value: 0.9 });
    expect(checkNumber('1e2', { min: 1, integer: true })).toEqual({ ok: true, value: 100 });
    expect(checkNumber('0', { min: 0 })).toEqual({ ok: true, value: 0 });
  });

  it('refuses what Number() would turn into something else', () => {
    expect(checkNumber('abc', { min: 0 })).toEqual({ ok: false, message: '“abc” is not a number.' });
    expect(checkNumber('', { min: 0 })).toEqual({ ok: false, message: 'Enter a number.' });
    expect(checkNumber('0x10', { min: 0 })).toEqual({ ok: false, message: '“0x10” is not a number.' });
    expect(checkNumber('1e999', { min: 0 })).toEqual({ ok: false, message: '“1e999” is too large.' });
  });

  it('names the allowed range', () => {
    expect(checkNumber('-5', { min: 16, integer: true })).toEqual({ ok: false, message: 'Must be at least 16.' });
    expect(checkNumber('0', { min: 0, above: true, max: 1 })).toEqual({ ok: false, message: 'Must be greater than 0 and at most 1.' });
    expect(checkNumber('1.5', { min: 1, integer: true })).toEqual({ ok: false, message: 'Enter a whole number, not 1.5.' });
  });
});

describe('checkRepoId and checkUrl', () => {
  it('wants owner/name', () => {
    expect(checkRepoId('Qwen/Qwen2.5-0.5B-Instruct')).toEqual({ ok: true, value: 'Qwen/Qwen2.5-0.5B-Instruct' });
    expect(checkRepoId('not a repo').ok).toBe(false);
    expect(checkRepoId('a/b/c').ok).toBe(false);
  });

  it('resolves relative URLs against the page and refuses other schemes', () => {
    expect(checkUrl('models/x/', 'http://127.0.0.1:5173/')).toEqual({ ok: true, value: 'http://127.0.0.1:5173/models/x' });
    expect(checkUrl('file:///tmp/x', 'http://127.0.0.1/').ok).toBe(false);
    expect(checkUrl('', 'http://127.0.0.1/').ok).toBe(false);
  });
});

describe('checkTools', () => {
  it('takes nothing, or a list of function tools', () => {
    expect(checkTools('  ')).toEqual({ ok: true, value: undefined });
    const tools = [{ type: 'function', function: { name: 'f' } }];
    expect(checkTools(JSON.stringify(tools))).toEqual({ ok: true, value: tools });
  });
  it('names what is wrong', () => {
    expect(checkTools('[{').ok).toBe(false);
    expect(checkTools('[]')).toMatchObject({ ok: false, message: expect.stringMatching(/^Expected a list of tools/) });
    expect(checkTools('[{"type": "function"}]')).toEqual({ ok: false, message: 'Tool 1 must be {"type": "function", "function": {"name": ...}}.' });
  });
});
