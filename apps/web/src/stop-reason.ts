// The footer's "why it stopped", from the loop's finish reason and what the worker knows.

import type { GenerationStats } from '@webgpu-chat/chat';
import type { StopReason } from './protocol.ts';

export function stopReason(
  stats: Pick<GenerationStats, 'finishReason' | 'newTokens'>,
  /** The last token sampled (null when no token was). */
  lastTokenId: number | null,
  eos: ReadonlySet<number>,
  /** The resolved max_new_tokens the reply ran with. */
  maxNewTokens: number,
): StopReason {
  switch (stats.finishReason) {
    case 'abort':
      return 'stopped';
    case 'stop':
      return lastTokenId !== null && eos.has(lastTokenId) ? 'eos' : 'stop-string';
    case 'length':
      // The loop's budget is min(max_new_tokens, room left in the context).
      return stats.newTokens >= maxNewTokens ? 'max-new-tokens' : 'context-full';
  }
}

export const STOP_REASON_TEXT: Record<StopReason, string> = {
  eos: 'ended by the model (EOS)',
  'stop-string': 'ended at a stop string',
  'max-new-tokens': 'stopped at max_new_tokens',
  'context-full': 'stopped: the context is full',
  stopped: 'stopped',
};
