import { describe, expect, it } from 'vitest';
import { stopReason } from '../src/stop-reason.ts';

const eos = new Set([2]);

describe('stopReason', () => {
  it('tells an EOS token from a stop string', () => {
    expect(stopReason({ finishReason: 'stop', newTokens: 5 }, 2, eos, 100)).toBe('eos');
    expect(stopReason({ finishReason: 'stop', newTokens: 5 }, 7, eos, 100)).toBe('stop-string');
  });

  it('tells max_new_tokens from a full context', () => {
    expect(stopReason({ finishReason: 'length', newTokens: 100 }, 7, eos, 100)).toBe('max-new-tokens');
    expect(stopReason({ finishReason: 'length', newTokens: 40 }, 7, eos, 100)).toBe('context-full');
  });

  it('reports a stopped reply as stopped', () => {
    expect(stopReason({ finishReason: 'abort', newTokens: 3 }, 7, eos, 100)).toBe('stopped');
  });
});
