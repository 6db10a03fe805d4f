// Prompt lookup on the CPU: the draft rule against Transformers' PromptLookupCandidateGenerator
// (hand cases, and the class itself on random sequences when the Python venv exists), the
// draft-length planner and step-cost estimates, and the generation loop over a TEST DOUBLE
// batch (fake-batch.ts): greedy output equal to plain decoding, logits processors and
// log-probabilities on verified rows, sampled output following the model's distribution.
import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import {
  ChatInputError,
  DraftLengthPlanner,
  expectedTokens,
  GenerationConfigError,
  Generator,
  lookupDraft,
  PromptLookupSource,
  resolveGenerationConfig,
  SeededRandom,
  StepCosts,
  type Assistant,
  type ChatTokenizer,
  type GenerationConfig,
  type GenerationRequest,
  type ItemRows,
  type LogitsProcessor,
} from '../src/index.ts';
import { FakeBatch, type Rule } from './fake-batch.ts';
import { hasPython, PYTHON } from './fixtures.ts';

describe('lookupDraft: Transformers\' prompt lookup candidates', () => {
  const none = new Set<number>();
  it('continues the first earlier occurrence of the longest matching n-gram', () => {
    expect(lookupDraft([1, 2, 3, 4, 1, 2], 2, 3, none)).toEqual([3, 4, 1]);
    // No earlier [7, 6]: the unigram [6] matches at 1.
    expect(lookupDraft([5, 6, 7, 6], 2, 2, none)).toEqual([7, 6]);
    // Left to right: the first [9, 1], not the nearest.
    expect(lookupDraft([9, 1, 8, 9, 1, 7, 9, 1], 2, 2, none)).toEqual([8, 9]);
    // max_matching_ngram_size 1 never looks at bigrams.
    expect(lookupDraft([3, 1, 4, 2, 1], 1, 1, none)).toEqual([4]);
    // The draft stops at the end of the sequence.
    expect(lookupDraft([1, 2, 1], 3, 5, none)).toEqual([2, 1]);
    expect(lookupDraft([1, 2, 3], 2, 4, none)).toEqual([]);
    expect(lookupDraft([7], 2, 4, none)).toEqual([]);
  });

  it('ends a draft before an EOS (an EOS right after the match gives no draft)', () => {
    expect(lookupDraft([1, 2, 0, 3, 1], 2, 4, new Set([0]))).toEqual([2]);
    expect(lookupDraft([1, 0, 5, 1], 2, 4, new Set([0]))).toEqual([]);
  });

  it.skipIf(!hasPython)('equals PromptLookupCandidateGenerator on random sequences', () => {
    const rng = new SeededRandom(5);
    const cases = Array.from({ length: 200 }, (_, i) => {
      const vocab = 2 + (i % 6);
      const seq = Array.from({ length: 1 + Math.floor(rng.next() * 30) }, () => Math.floor(rng.next() * vocab));
      return { seq, n: 1 + (i % 4), k: 1 + (i % 7), eos: i % 3 === 0 ? [0] : [] };
    });
    const script = `
import json, sys, torch
from transformers.generation.candidate_generator import PromptLookupCandidateGenerator
out = []
for c in json.load(sys.stdin):
    g = PromptLookupCandidateGenerator(eos_token_id=torch.tensor(c["eos"]) if c["eos"] else None, num_output_tokens=c["k"], max_matching_ngram_size=c["n"], max_length=10**6)
    ids = torch.tensor([c["seq"]])
    cand, _ = g.get_candidates(ids)
    out.append(cand[0, len(c["seq"]):].tolist())
print(json.dumps(out))`;
    const r = spawnSync(PYTHON, ['-c', script], { input: JSON.stringify(cases), encoding: 'utf8', env: { ...process.env, TRANSFORMERS_VERBOSITY: 'error' } });
    expect(r.status, r.stderr).toBe(0);
    const want = JSON.parse(r.stdout) as number[][];
    cases.forEach((c, i) => expect(lookupDraft(c.seq, c.n, c.k, new Set(c.eos)), JSON.stringify(c)).toEqual(want[i]));
  }, 60_000);
});

describe('StepCosts and DraftLengthPlanner', () => {
  it('estimates untimed step sizes from the timed ones; a first step (compiling) and stalls count little', () => {
    const c = new StepCosts();
    expect(c.estimate(3)).toBeUndefined();
    expect(c.relative(3)).toBeCloseTo(1.2);
    c.observe(1, 500); // the first step of a size compiles its kernels: not counted
    expect(c.estimate(1)).toBeUndefined();
    c.observe(1, 10);
    expect(c.estimate(1)).toBe(10);
    expect(c.estimate(3)).toBeCloseTo(12); // the prior's slope from the one timed size
    c.observe(5, 1);
    c.observe(5, 30);
    expect(c.estimate(3)).toBeCloseTo(12); // hopeful: from 1 along the prior's slope
    expect(c.estimate(9)).toBeCloseTo((30 * 1.8) / 1.4); // from 5 along the prior's slope
    expect(c.relative(5)).toBeCloseTo(3);
    c.observe(5, 40); // a running mean
    expect(c.estimate(5)).toBeCloseTo(33);
    c.observe(5, 1e6); // a stall moves it as a doubling would
    expect(c.estimate(5)).toBeCloseTo(33 + 0.3 * 33);
    c.observe(0, 5);
    c.observe(3, 5);
    c.observe(3, Number.NaN);
    expect(c.timed.map(([n]) => n)).toEqual([1, 5]);

    // Costs that jump past 8 tokens: sizes below the jump are not priced along the line to it.
    const j = new StepCosts();
    for (const [n, ms] of [[1, 10], [8, 16], [11, 60]] as const) for (let i = 0; i < 2; i++) j.observe(n, ms);
    expect(j.estimate(4)).toBeCloseTo(10 + (6 * 3) / 7); // the line from 1 to 8 is below the hopeful guess
    expect(j.estimate(9)).toBeCloseTo((16 * 1.8) / 1.7); // hopeful from 8, far below the line to 11
    expect(j.estimate(12)).toBeCloseTo((60 * 2.1) / 2.0);
  });

  it('expected tokens of a draft: the accepted run plus the model\'s own', () => {
    expect(expectedTokens(0, 0.7)).toBe(1);
    expect(expectedTokens(3, 0.5)).toBeCloseTo(1 + 0.5 + 0.25 + 0.125);
    expect(expectedTokens(4, 1)).toBe(5);
  });

  /** Steps that cost `perToken` one-token steps per extra token. */
  const linear = (perToken: number) => {
    const c = new StepCosts();
    for (let n = 1; n <= 16; n++) for (let i = 0; i < 2; i++) c.observe(n, 10 * (1 + perToken * (n - 1)));
    return c;
  };

  it('drafts long when verifying is cheap and drafts are accepted, short or not at all otherwise', () => {
    const cheap = new DraftLengthPlanner(linear(0.02));
    for (let i = 0; i < 10; i++) cheap.observe(8, 8);
    expect(cheap.next(10)).toBe(10);

    const steep = new DraftLengthPlanner(linear(0.3));
    for (let i = 0; i < 10; i++) steep.observe(2, 1);
    const k = steep.next(10);
    expect(k).toBeGreaterThan(0);
    expect(k).toBeLessThan(5);
    expect(steep.gain(k)).toBeGreaterThan(1);
  });

  it('pauses when drafts stop paying, probes after the pause, and pauses longer when the probe fails', () => {
    const p = new DraftLengthPlanner(linear(0.2));
    for (let i = 0; i < 10; i++) p.observe(4, 0);
    const run = (n: number) => Array.from({ length: n }, () => p.next(8));
    expect(run(4)).toEqual([0, 0, 0, 0]); // paused for 4 steps
    const probe = p.next(8);
    expect(probe).toBeGreaterThan(0);
    p.observe(probe, 0);
    expect(run(8).every((k) => k === 0)).toBe(true); // then for 8
    expect(p.next(8)).toBeGreaterThan(0);
    // A probe whose drafts are accepted resumes drafting.
    for (let i = 0; i < 6; i++) p.observe(8, 8);
    expect(p.next(8)).toBeGreaterThan(1);
  });

  it('tells a pause that no acceptance could pay (a draft that costs what the model does) from one a better acceptance would', () => {
    const heard: boolean[] = [];
    const bad = { accepted: 0.1, trials: 10 };
    // Verifying 2..9 tokens costs 1.1..1.8 steps: a free draft pays at full acceptance, one costing a whole step never does.
    const free = new DraftLengthPlanner(linear(0.1), { start: bad, pauseForGood: true, onPause: (h) => heard.push(h) });
    expect(free.next(8, 0)).toBe(0);
    const dear = new DraftLengthPlanner(linear(0.1), { start: bad, pauseForGood: true, onPause: (h) => heard.push(h) });
    expect(dear.next(8, 1)).toBe(0);
    expect(heard).toEqual([false, true]);
    expect(dear.hopeless(8, 0.5)).toBe(false); // 2 tokens for 1.1 + 0.5 steps would pay
  });

  it("a model draft's pause lasts the call; a later call starts paused or with a probe", () => {
    const costs = linear(0.1);
    const events: string[] = [];
    const hooks = { onPause: () => events.push('pause'), onProbe: (paid: boolean) => events.push(paid ? 'paid' : 'failed') };
    const bad = { accepted: 0.1, trials: 10 };
    const p = new DraftLengthPlanner(costs, { start: bad, pauseForGood: true, ...hooks });
    expect(Array.from({ length: 100 }, () => p.next(8, 0.5)).every((k) => k === 0)).toBe(true);
    expect(events).toEqual(['pause']);
    const skipped = new DraftLengthPlanner(costs, { start: { accepted: 10, trials: 10 }, paused: true, pauseForGood: true });
    expect(skipped.next(8)).toBe(0);
    const probe = new DraftLengthPlanner(costs, { start: bad, probeFirst: true, pauseForGood: true, ...hooks });
    const k = probe.next(8, 0.5);
    expect(k).toBeGreaterThan(0);
    probe.observe(k, 0, 0.5);
    expect(probe.next(8, 0.5)).toBe(0);
    expect(events).toEqual(['pause', 'failed', 'pause']);
  });
});

describe('prompt lookup under the measured schedule', () => {
  /** Steps that cost 1 + 0.2 per extra token, in one-token steps. */
  const costs = new StepCosts();
  for (let n = 1; n <= 16; n++) for (let i = 0; i < 2; i++) costs.observe(n, 10 * (1 + 0.2 * (n - 1)));
  const BLOCK = Array.from({ length: 16 }, (_, i) => 1 + i);
  const after = (last: number, skip: number) => BLOCK[(BLOCK.indexOf(last) + skip) % BLOCK.length]!;

  /** Plans and takes one step of `sequence` with a model whose greedy choice is truth(prefix); returns the draft length. */
  async function step(src: PromptLookupSource, sequence: number[], truth: (prefix: readonly number[]) => number): Promise<number> {
    const planned = await src.plan(sequence, 100);
    const drafted = planned.tokens.slice(1);
    const best = (i: number) => truth([...sequence, ...drafted.slice(0, i)]);
    const rows = {
      count: planned.tokens.length,
      argmax: async (row?: number) => best(row ?? 0),
      reduce: async (at: readonly number[]) => at.map((i) => ({ argmax: best(i), ids: new Int32Array(), logits: new Float32Array(), logSumExp: 0, targetLogit: NaN })),
    } as unknown as ItemRows;
    const taken = await src.take(sequence, planned.tokens, rows);
    sequence.push(...taken.tokens);
    return drafted.length;
  }

  it('keeps drafting a copy in full after fresh matches stopped paying', async () => {
    const cfg = resolveGenerationConfig({ prompt_lookup_num_tokens: 8, max_matching_ngram_size: 1, num_assistant_tokens_schedule: 'measured' });
    const src = new PromptLookupSource(cfg, new SeededRandom(1), 32, new Set(), costs, undefined);
    const sequence = [...BLOCK, 1];
    // Free text: every match drafts the block's next token, but the model skips one.
    const fresh: number[] = [];
    for (let i = 0; i < 12; i++) fresh.push(await step(src, sequence, (p) => after(p.at(-1)!, 2)));
    expect(fresh.slice(-4)).toEqual([0, 0, 0, 0]); // paused
    // The model starts copying the block: once a probe is accepted whole, the copy is drafted in full.
    const copy: number[] = [];
    for (let i = 0; i < 12; i++) copy.push(await step(src, sequence, (p) => after(p.at(-1)!, 1)));
    const firstAccepted = copy.findIndex((k) => k > 0);
    expect(firstAccepted).toBeGreaterThanOrEqual(0);
    expect(copy.slice(firstAccepted + 1, firstAccepted + 6)).toContain(8);
    expect(src.stats().acceptedTokens).toBeGreaterThan(16);
  });

  it('a pause counts steps that had a match: steps without one leave the schedule alone', async () => {
    const cfg = resolveGenerationConfig({ prompt_lookup_num_tokens: 8, max_matching_ngram_size: 1, num_assistant_tokens_schedule: 'measured' });
    const src = new PromptLookupSource(cfg, new SeededRandom(1), 256, new Set(), costs, undefined);
    const sequence = [...BLOCK, 1];
    const drafts: number[] = [];
    for (let i = 0; i < 12; i++) drafts.push(await step(src, sequence, (p) => after(p.at(-1)!, 2)));
    expect(drafts.at(-1)).toBe(0); // paused
    // Many steps of new tokens: nothing to match, nothing drafted, no planner step spent.
    for (let i = 0; i < 40; i++) expect(await step(src, sequence, (p) => 100 + p.length)).toBe(0);
    // The next match still finds the pause running: the evidence against fresh matches stands.
    expect(await step(src, sequence, () => 1)).toBe(0);
    expect(await step(src, sequence, (p) => after(p.at(-1)!, 2))).toBe(0);
  });
});

/** A tokenizer with one piece per id and no special tokens: the loop detokenizes and finds EOS with it. */
const stubTokenizer = { eos: undefined, decode: (ids: readonly number[]) => ids.map((i) => `<${i}>`).join('') } as unknown as ChatTokenizer;
const EOS = 0;

/** A fake model that mostly copies: the token after the previous occurrence of the last token, with a twist every `period` positions. */
function copyRule(vocab: number, period: number): Rule {
  return (cached) => {
    const last = cached.at(-1)!;
    const i = cached.lastIndexOf(last, -2);
    if (cached.length % period === 0 || i < 0) return 1 + ((last * 7 + cached.length) % (vocab - 1));
    return cached[i + 1]!;
  };
}

/** One generator per fake batch: a generator keeps finished sequences cached in its batch. */
const generators = new WeakMap<FakeBatch, Generator>();
function generatorOf(batch: FakeBatch): Generator {
  let g = generators.get(batch);
  if (!g) generators.set(batch, (g = new Generator(batch, stubTokenizer, batch.vocab, { maxParallel: 4 })));
  return g;
}

/** One generation on the batch's generator, to its end. */
async function generate(batch: FakeBatch, prompt: number[], c: GenerationConfig, extra: Partial<GenerationRequest> = {}, g = generatorOf(batch)) {
  return g.generate({ promptIds: prompt, config: resolveGenerationConfig({ eos_token_id: EOS, ...c }), ...extra }).result;
}

describe('prompt lookup in the generation loop (fake batch)', () => {
  const prompts = [
    [5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5],
    [3, 4, 3, 4, 3, 4, 10, 11, 3],
    [2, 9, 2, 9, 12],
    [7],
  ];

  it('greedy: the same tokens as plain decoding, for every schedule, n-gram size and draft length', async () => {
    for (const period of [5, 13, 1000]) {
      const batch = new FakeBatch(copyRule(16, period), 16, 256);
      for (const prompt of prompts) {
        const plain = await generate(batch, prompt, { max_new_tokens: 40 });
        for (const [k, n, schedule] of [[1, 1, 'constant'], [4, 2, 'constant'], [10, 3, 'measured'], [63, 2, 'heuristic']] as const) {
          const r = await generate(batch, prompt, { max_new_tokens: 40, prompt_lookup_num_tokens: k, max_matching_ngram_size: n, num_assistant_tokens_schedule: schedule });
          expect(r.tokenIds, `period ${period}, prompt ${prompt}, k ${k}`).toEqual(plain.tokenIds);
          expect(r.stats.finishReason).toBe(plain.stats.finishReason);
        }
      }
    }
  });

  it('accepts most of a copying reply, in fewer steps than tokens', async () => {
    const batch = new FakeBatch(copyRule(16, 1000), 16, 256);
    const r = await generate(batch, prompts[0]!, { max_new_tokens: 40, prompt_lookup_num_tokens: 8, num_assistant_tokens_schedule: 'constant' });
    const s = r.stats.speculative!;
    expect(s.acceptanceRate).toBeGreaterThan(0.9);
    expect(s.steps).toBeLessThan(10);
    expect(r.tokenIds).toHaveLength(40);
    // Greedy verification reads every row's argmax in one read.
    expect(batch.reads.argmax + batch.reads.topK + batch.reads.logits).toBeLessThan(2 * s.steps);
  });

  it('budgets and EOS end a reply where plain decoding ends it', async () => {
    const batch = new FakeBatch((cached) => (cached.length >= 14 ? EOS : copyRule(16, 1000)(cached)), 16, 256);
    for (const max of [1, 2, 3, 7]) {
      const plain = await generate(batch, prompts[0]!, { max_new_tokens: max });
      const r = await generate(batch, prompts[0]!, { max_new_tokens: max, prompt_lookup_num_tokens: 5, num_assistant_tokens_schedule: 'constant' });
      expect(r.tokenIds).toEqual(plain.tokenIds);
    }
    const r = await generate(batch, prompts[0]!, { max_new_tokens: 30, prompt_lookup_num_tokens: 5 });
    expect(r.tokenIds.at(-1)).toBe(EOS);
    expect(r.stats.finishReason).toBe('stop');
  });

  it('a logits processor sees each verified row with its own prefix, as in plain decoding', async () => {
    const batch = new FakeBatch(copyRule(16, 7), 16, 256);
    // Forbids the favourite token at every 4th position: a draft that copied it is rejected there.
    const calls: number[][] = [];
    const processor = (log: number[][]): LogitsProcessor => (logits, previous) => {
      log.push([...previous]);
      if (previous.length % 4 === 0) logits[logits.indexOf(Math.max(...logits))] = -Infinity;
    };
    const plainCalls: number[][] = [];
    const plain = await generate(batch, prompts[1]!, { max_new_tokens: 30 }, { logitsProcessor: processor(plainCalls) });
    const r = await generate(batch, prompts[1]!, { max_new_tokens: 30, prompt_lookup_num_tokens: 6, num_assistant_tokens_schedule: 'constant' }, { logitsProcessor: processor(calls) });
    expect(r.tokenIds).toEqual(plain.tokenIds);
    expect(calls).toEqual(plainCalls);
    expect(r.stats.speculative!.acceptedTokens).toBeGreaterThan(0);
  });

  it('log-probabilities of accepted tokens equal those of plain decoding', async () => {
    const batch = new FakeBatch(copyRule(16, 6), 16, 256);
    const plain = await generate(batch, prompts[0]!, { max_new_tokens: 20 }, { logprobs: 3 });
    const r = await generate(batch, prompts[0]!, { max_new_tokens: 20, prompt_lookup_num_tokens: 6 }, { logprobs: 3 });
    expect(r.tokenIds).toEqual(plain.tokenIds);
    expect(r.logprobs).toEqual(plain.logprobs);
  });

  it('refuses a draft model with prompt lookup, and bad sizes by name', async () => {
    const batch = new FakeBatch(copyRule(16, 5), 16, 256);
    const g = new Generator(batch, stubTokenizer, 16, { maxParallel: 1 });
    const assistant = {} as Assistant;
    expect(() => g.generate({ promptIds: [1, 2], config: resolveGenerationConfig({ prompt_lookup_num_tokens: 4 }), assistant })).toThrow(ChatInputError);
    expect(() => g.generate({ promptIds: [1, 2], config: resolveGenerationConfig({ prompt_lookup_num_tokens: 4 }), assistant })).toThrow(/prompt_lookup_num_tokens.*draft model/);
    for (const bad of [{ prompt_lookup_num_tokens: -1 }, { prompt_lookup_num_tokens: 2.5 }, { prompt_lookup_num_tokens: 64 }]) {
      expect(() => resolveGenerationConfig(bad)).toThrow(GenerationConfigError);
      expect(() => resolveGenerationConfig(bad)).toThrow(/prompt_lookup_num_tokens must be an integer in 0..63/);
    }
    for (const bad of [0, -2, 1.5, 33]) expect(() => resolveGenerationConfig({ max_matching_ngram_size: bad })).toThrow(/max_matching_ngram_size must be an integer in 1..32/);
    for (const bad of [-0.1, 1.5, Number.NaN]) expect(() => resolveGenerationConfig({ assistant_confidence_threshold: bad })).toThrow(/assistant_confidence_threshold must be a number in \[0, 1\]/);
    expect(resolveGenerationConfig()).toMatchObject({ prompt_lookup_num_tokens: 0, max_matching_ngram_size: 2, assistant_confidence_threshold: 0.4, num_assistant_tokens_schedule: 'measured' });
  });

  it('sampled: the first tokens follow the model\'s distribution (chi-square against plain sampling\'s exact probabilities)', async () => {
    const V = 5;
    // Each row: favourite 5, runner-up 4, the rest -5 (fake-batch.ts); the favourite copies.
    const batch = new FakeBatch(copyRule(V, 1000), V, 4096, 16, 1 << 16);
    const g = new Generator(batch, stubTokenizer, V, { maxParallel: 1 });
    const prompt = [1, 2, 3, 1, 2, 3, 1];
    const c = { do_sample: true, temperature: 1, top_k: 0, max_new_tokens: 3, prompt_lookup_num_tokens: 3, num_assistant_tokens_schedule: 'constant' as const };
    const counts = new Map<string, number>();
    const N = 3000;
    for (let seed = 0; seed < N; seed++) {
      const r = await g.generate({ promptIds: prompt, config: resolveGenerationConfig({ ...c, seed }), ignoreEos: true }).result;
      const key = r.tokenIds.slice(0, 2).join(',');
      counts.set(key, (counts.get(key) ?? 0) + 1);
    }
    // The exact probability of each first two tokens, from the fake's rows.
    const probs = (cached: number[]) => {
      const fav = copyRule(V, 1000)(cached);
      const l = new Array(V).fill(-5);
      l[fav] = 5;
      l[(fav + 1) % V] = 4;
      const z = l.reduce((s, x) => s + Math.exp(x), 0);
      return l.map((x) => Math.exp(x) / z);
    };
    let stat = 0;
    let df = -1;
    const p0 = probs(prompt);
    for (let a = 0; a < V; a++) {
      const p1 = probs([...prompt, a]);
      for (let b = 0; b < V; b++) {
        const e = p0[a]! * p1[b]! * N;
        if (e < 5) continue;
        stat += ((counts.get(`${a},${b}`) ?? 0) - e) ** 2 / e;
        df++;
      }
    }
    // The 0.999 quantile of chi-square with df degrees of freedom (Wilson-Hilferty).
    const critical = df * (1 - 2 / (9 * df) + 3.09 * Math.sqrt(2 / (9 * df))) ** 3;
    expect(stat).toBeLessThan(critical);
  }, 60_000);
});
