// Where a constrained sequence's tokens come from: one per step, sampled (or taken greedily)
// from the whole logits row after the constraint's mask. The row is read back whole because
// the mask covers every token; see ARCHITECTURE.md for why the mask is applied here rather
// than on the GPU.

import type { ItemRows, TokenSource } from '../generate.ts';
import { argmax, sampleFromLogits, type LogitsProcessor, type ResolvedGenerationConfig, type SeededRandom } from '../sampling.ts';
import type { CompiledConstraint, ConstraintMatcher } from './constraint.ts';

export class ConstrainedSource implements TokenSource {
  readonly holdsBackLast = false;
  private readonly matcher: Promise<ConstraintMatcher>;

  constructor(
    private readonly cfg: ResolvedGenerationConfig,
    private readonly rng: SeededRandom,
    constraint: CompiledConstraint,
    eos: Iterable<number>,
    private readonly processor: LogitsProcessor | undefined,
  ) {
    this.matcher = constraint.matcher(eos);
    // A matcher that fails to build fails the request at its first token.
    this.matcher.catch(() => {});
  }

  async plan(sequence: readonly number[]): Promise<{ tokens: number[]; logits: 'last' }> {
    return { tokens: [sequence.at(-1)!], logits: 'last' };
  }

  async take(sequence: readonly number[], planned: readonly number[], rows: ItemRows): Promise<{ tokens: number[]; keep: number }> {
    const matcher = await this.matcher;
    const logits = await rows.logits();
    this.processor?.(logits, sequence);
    await matcher.mask(logits);
    let id = sampleFromLogits(logits, this.cfg, this.rng, sequence);
    // A draw that rounding carried past the last allowed token: take the best allowed one.
    if (!(logits[id]! > -Infinity)) id = argmax(logits);
    matcher.accept(id);
    return { tokens: [id], keep: planned.length };
  }

  stats(): undefined {
    return undefined;
  }

  dispose(): void {
    this.matcher.then((m) => m.dispose(), () => {});
  }
}
