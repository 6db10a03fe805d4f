// Timing variants of one job side by side on a machine whose speed drifts: the variants take
// turns, a round at a time, each round starting one variant later than the one before (so no
// variant always runs first after a switch), and rounds go on until every variant has run
// `minRounds` times and the whole took `budgetMs`, or `maxRounds` were run.

export interface TurnsOptions {
  minRounds: number;
  maxRounds: number;
  budgetMs: number;
}

/** Runs `variants` in turns; results[v][r] is variant v's result in round r. */
export async function inTurns<T>(variants: readonly (() => Promise<T>)[], o: TurnsOptions): Promise<T[][]> {
  const results = variants.map((): T[] => []);
  const t0 = performance.now();
  for (let r = 0; r < o.maxRounds && (r < o.minRounds || performance.now() - t0 < o.budgetMs); r++) {
    for (let i = 0; i < variants.length; i++) {
      const v = (r + i) % variants.length;
      results[v]!.push(await variants[v]!());
    }
  }
  return results;
}

/** A timed run: its new tokens and milliseconds. */
export interface TimedRun {
  stats: { newTokens: number; totalMs: number };
}

/**
 * The median over rounds of a variant's tokens/s over the baseline's in the same round:
 * each ratio pairs runs made close together in time, and the median drops a round that a
 * stall (another process, a collection) hit on one side.
 */
export function pairedSpeedup(variant: readonly (readonly TimedRun[])[], baseline: readonly (readonly TimedRun[])[]): number {
  const rate = (rs: readonly TimedRun[]) => rs.reduce((s, r) => s + r.stats.newTokens, 0) / rs.reduce((s, r) => s + r.stats.totalMs, 0);
  const ratios = variant.map((rs, r) => rate(rs) / rate(baseline[r]!)).sort((a, b) => a - b);
  const mid = ratios.length >> 1;
  return ratios.length % 2 ? ratios[mid]! : (ratios[mid - 1]! + ratios[mid]!) / 2;
}
