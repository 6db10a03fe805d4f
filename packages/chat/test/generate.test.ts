// The generation loop and the pipeline over a TEST DOUBLE of the engine (fake-batch.ts), so
// these tests check our loop (EOS, stop strings, budgets, abort, batching, prefix reuse,
// log-probabilities, block accounting), not a model.
import { describe, expect, it } from 'vitest';
import {
  ChatTemplates,
  ChatInputError,
  ContextLengthError,
  createTextGenerationPipeline,
  Generator,
  resolveGenerationConfig,
  type ChatTokenizer,
  type GenerationConfig,
  type GenerationRequest,
  type GenerationResult,
  type Message,
  type StreamEvent,
} from '../src/index.ts';
import { FakeBatch, fakeModel, type Rule } from './fake-batch.ts';
import { loadTokenizer } from './fixtures.ts';

async function collect<E extends StreamEvent>(it: AsyncIterable<E>): Promise<E[]> {
  const out: E[] = [];
  for await (const e of it) out.push(e);
  return out;
}

/** Replies with `script` once `skip` tokens follow the last `marker`, then EOS. */
function scriptRule(script: number[], marker: number, skip: number, eos: number): Rule {
  return (cached) => {
    const start = cached.lastIndexOf(marker);
    const n = start < 0 ? 0 : cached.length - start - 1 - skip;
    return script[n] ?? eos;
  };
}

async function setup(reply: string, maxContext = 4096) {
  const tok = await loadTokenizer('qwen3');
  // The reply follows "<|im_start|>assistant\n": the marker and two tokens.
  const script = tok.encode(reply, { addSpecialTokens: false });
  const marker = tok.tokenToId('<|im_start|>')!;
  const batch = new FakeBatch(scriptRule(script, marker, 2, tok.eos!.id), tok.vocabSize, maxContext);
  return { tok, batch, script };
}

const cfg = (c: GenerationConfig = {}) => resolveGenerationConfig(c);

/** A generator over the fake batch and one generation on it, run to its end. */
async function run(
  tok: ChatTokenizer,
  batch: FakeBatch,
  prompt: number[],
  config: ReturnType<typeof cfg>,
  extra: Partial<GenerationRequest> & { onText?: (d: string) => void } = {},
  g = new Generator(batch, tok, tok.vocabSize, { maxParallel: 4 }),
): Promise<GenerationResult> {
  const gen = g.generate({ promptIds: prompt, config, ...extra });
  for await (const e of gen) if (e.delta) extra.onText?.(e.delta);
  return gen.result;
}

describe('generation loop', () => {
  it('greedy: stops at EOS, streams the reply, reads back only argmax', async () => {
    const { tok, batch } = await setup('Tokyo（東京）is big 🗼.');
    const prompt = tok.encode('<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n', { addSpecialTokens: false });
    const g = new Generator(batch, tok, tok.vocabSize, { maxParallel: 1 });
    const gen = g.generate({ promptIds: prompt, config: cfg() });
    const events = await collect(gen);
    expect(events.map((e) => e.delta).join('')).toBe('Tokyo（東京）is big 🗼.');
    expect(events.every((e) => !e.delta.includes('\uFFFD'))).toBe(true);
    const r = await gen.result;
    expect(r.stats.finishReason).toBe('stop');
    expect(r.tokenIds.at(-1)).toBe(tok.eos!.id);
    expect(batch.reads).toEqual({ argmax: r.tokenIds.length, topK: 0, logits: 0, reduce: 0 });
    // EOS is sampled but never run through the model.
    expect(batch.forwarded).toBe(prompt.length + r.tokenIds.length - 1);
  });

  it('max_new_tokens ends with finishReason length; 0 generates nothing', async () => {
    const { tok, batch } = await setup('one two three four five six');
    const prompt = tok.encode('<|im_start|>assistant\n', { addSpecialTokens: false });
    const r = await run(tok, batch, prompt, cfg({ max_new_tokens: 3 }));
    expect(r.tokenIds).toHaveLength(3);
    expect(r.stats.finishReason).toBe('length');
    expect(r.text).toBe('one two three');
    const z = await run(tok, batch, prompt, cfg({ max_new_tokens: 0 }));
    expect(z.tokenIds).toHaveLength(0);
    expect(z.stats.finishReason).toBe('length');
  });

  it('cuts a stop string split across tokens and never shows its start', async () => {
    const { tok, batch } = await setup('Answer: 42\nUser: more?');
    const prompt = tok.encode('<|im_start|>assistant\n', { addSpecialTokens: false });
    const seen: string[] = [];
    const r = await run(tok, batch, prompt, cfg({ stop: ['\nUser:'] }), { onText: (d) => seen.push(d) });
    expect(r.text).toBe('Answer: 42');
    expect(seen.join('')).toBe('Answer: 42');
    expect(r.stats.finishReason).toBe('stop');
  });

  it('extra eos_token_id ends generation on that token; ignoreEos runs through it', async () => {
    const { tok, batch, script } = await setup('a b c d');
    const prompt = tok.encode('<|im_start|>assistant\n', { addSpecialTokens: false });
    const r = await run(tok, batch, prompt, cfg({ eos_token_id: script[2]! }));
    expect(r.tokenIds).toEqual(script.slice(0, 3));
    expect(r.text).toBe(tok.decode(script.slice(0, 2)));
    const through = await run(tok, batch, prompt, cfg({ max_new_tokens: 6 }), { ignoreEos: true });
    expect(through.tokenIds).toHaveLength(6);
    expect(through.stats.finishReason).toBe('length');
  });

  it('an AbortSignal stops generation with finishReason abort, and leaving the iteration does too', async () => {
    const { tok, batch } = await setup('x '.repeat(50));
    const prompt = tok.encode('<|im_start|>assistant\n', { addSpecialTokens: false });
    const ac = new AbortController();
    let n = 0;
    const r = await run(tok, batch, prompt, cfg(), { signal: ac.signal, onText: () => ++n === 4 && ac.abort() });
    expect(r.stats.finishReason).toBe('abort');
    expect(r.tokenIds.length).toBeGreaterThanOrEqual(4);
    expect(r.tokenIds.length).toBeLessThan(10);
    const pre = await run(tok, batch, prompt, cfg(), { signal: AbortSignal.abort() });
    expect(pre.tokenIds).toHaveLength(0);
    const g = new Generator(batch, tok, tok.vocabSize, { maxParallel: 1 });
    const gen = g.generate({ promptIds: prompt, config: cfg() });
    for await (const e of gen) if (e.delta) break;
    expect((await gen.result).stats.finishReason).toBe('abort');
  });

  it('sampling with top_k reads k candidates; a seed reproduces the tokens', async () => {
    const { tok, batch } = await setup('the cat sat on the mat and then it slept');
    const prompt = tok.encode('<|im_start|>assistant\n', { addSpecialTokens: false });
    const c = cfg({ do_sample: true, top_k: 2, temperature: 1.5, seed: 7, max_new_tokens: 12 });
    const a = await run(tok, batch, prompt, c);
    expect(a.tokenIds.length).toBeGreaterThan(3);
    expect(batch.reads).toEqual({ argmax: 0, topK: a.tokenIds.length, logits: 0, reduce: 0 });
    const b = await run(tok, batch, prompt, c);
    expect(b.tokenIds).toEqual(a.tokenIds);
    const other = await run(tok, batch, prompt, { ...c, seed: 8 });
    expect(other.tokenIds).not.toEqual(a.tokenIds);
    const before = batch.reads.logits;
    const withPenalty = await run(tok, batch, prompt, { ...c, repetition_penalty: 1.2 });
    expect(batch.reads.logits - before).toBe(withPenalty.tokenIds.length);
  });

  it('a logits processor sees every row before sampling', async () => {
    const { tok, batch, script } = await setup('a b c d');
    const prompt = tok.encode('<|im_start|>assistant\n', { addSpecialTokens: false });
    const banned = script[1]!;
    const r = await run(tok, batch, prompt, cfg({ max_new_tokens: 3 }), { logitsProcessor: (l) => void (l[banned] = -Infinity) });
    // The fake's runner-up is id + 1: what the mask leaves at the banned step.
    expect(r.tokenIds).toEqual([script[0]!, (banned + 1) % tok.vocabSize, script[2]!]);
  });

  it('a prompt longer than the context is a ContextLengthError with both numbers', async () => {
    const { tok, batch } = await setup('x', 8);
    const prompt = tok.encode('<|im_start|>assistant\n one two three four five six seven', { addSpecialTokens: false });
    const g = new Generator(batch, tok, tok.vocabSize, { maxParallel: 1 });
    expect(() => g.generate({ promptIds: prompt, config: cfg() })).toThrow(ContextLengthError);
    expect(() => g.generate({ promptIds: prompt, config: cfg() })).toThrow(`The prompt is ${prompt.length} tokens but the context holds 8`);
    expect(() => g.generate({ promptIds: [tok.vocabSize + 5], config: cfg() })).toThrow(ChatInputError);
  });

  it('stops at the end of the context with finishReason length', async () => {
    const { tok, batch } = await setup('a b c d e f g h i j k l m n o p', 12);
    const prompt = tok.encode('<|im_start|>assistant\n', { addSpecialTokens: false });
    const r = await run(tok, batch, prompt, cfg());
    expect(r.stats.finishReason).toBe('length');
    expect(r.tokenIds).toHaveLength(12 - prompt.length + 1);
  });

  it('runs to the end of the context when the KV cache holds exactly one context', async () => {
    const { tok } = await setup('a');
    const prompt = tok.encode('<|im_start|>assistant\n', { addSpecialTokens: false });
    // The pipeline's cache for one conversation: kvTokens = maxContext, 3 blocks of 4.
    const batch = new FakeBatch(() => 7, tok.vocabSize, 12, 4, 12);
    const r = await run(tok, batch, prompt, cfg({ max_new_tokens: 100 }));
    expect(r.stats.finishReason).toBe('length');
    expect(r.tokenIds).toHaveLength(12 - prompt.length + 1);
  });

  it('log-probabilities of the generated tokens and of the prompt (echo), in one read per step', async () => {
    const { tok, batch, script } = await setup('a b c');
    const prompt = tok.encode('<|im_start|>assistant\n', { addSpecialTokens: false });
    const g = new Generator(batch, tok, tok.vocabSize, { maxParallel: 1 });
    const gen = g.generate({ promptIds: prompt, config: cfg(), logprobs: 2, promptLogprobs: 1 });
    const events = await collect(gen);
    const scores = await gen.promptScores;
    expect(scores).toHaveLength(prompt.length - 1);
    const r = await gen.result;
    expect(r.logprobs).toHaveLength(r.tokenIds.length);
    // The fake's favourite has logit 5, its runner-up 4, all else -5.
    const lse = Math.log(Math.exp(5) + Math.exp(4) + (tok.vocabSize - 2) * Math.exp(-5));
    expect(r.logprobs[0]!.logprob).toBeCloseTo(5 - lse, 4);
    expect(r.logprobs[0]!.top.map(([id]) => id)).toEqual([script[0]!, (script[0]! + 1) % tok.vocabSize]);
    expect(events.filter((e) => e.tokenId !== null).every((e) => e.logprob !== undefined)).toBe(true);
  });
});

describe('warm-up', () => {
  it("starts the step costs from the batch's warm-up timings, whose next timing then counts; refuses a busy generator", async () => {
    const { tok, batch } = await setup('Hello there.');
    const g = new Generator(batch, tok, tok.vocabSize, { maxParallel: 4 });
    await g.warmUp();
    expect(g.stepCosts.timed).toEqual([
      [1, 2],
      [2, 4],
      [3, 6],
    ]);
    // Unseeded, a size's first timing is taken for its compile and skipped; a seeded one moves the mean.
    g.stepCosts.observe(2, 14);
    expect(g.stepCosts.estimate(2)).toBeCloseTo(4 + 0.3 * (8 - 4));
    const busy = g.generate({ promptIds: tok.encode('Hi'), config: cfg({ max_new_tokens: 2 }) });
    await expect(g.warmUp()).rejects.toThrow(/idle generator/);
    await busy.result;
  });
});

describe('continuous batching', () => {
  const prompts = (tok: ChatTokenizer, n: number) => Array.from({ length: n }, (_, i) => tok.encode(`<|im_start|>user\nq${i} ${'x '.repeat(i * 3)}<|im_end|>\n<|im_start|>assistant\n`, { addSpecialTokens: false }));

  it('requests stepped together give what each gives alone, in fewer steps', async () => {
    const { tok, batch } = await setup('one two three four five six seven eight');
    const ps = prompts(tok, 5);
    const alone: number[][] = [];
    for (const p of ps) alone.push((await run(tok, batch, p, cfg({ max_new_tokens: 6 }), {}, new Generator(batch, tok, tok.vocabSize, { maxParallel: 1 }))).tokenIds);
    const stepsAlone = batch.steps.length;
    const argmaxReads = batch.reads.argmax;
    const g = new Generator(batch, tok, tok.vocabSize, { maxParallel: 8 });
    const together = await Promise.all(ps.map((p) => run(tok, batch, p, cfg({ max_new_tokens: 6 }), {}, g)));
    expect(together.map((r) => r.tokenIds)).toEqual(alone);
    expect(batch.steps.length - stepsAlone).toBeLessThan(stepsAlone / 2);
    expect(batch.steps.at(-2)!.length).toBeGreaterThan(1);
    // A step's greedy rows come back in one reduction, not one read each.
    expect(batch.reads.reduce).toBeGreaterThan(0);
    expect(batch.reads.argmax - argmaxReads).toBeLessThan(ps.length * 2);
  });

  it('maxParallel caps the running sequences; the rest wait and then run', async () => {
    const { tok, batch } = await setup('a b c d');
    const g = new Generator(batch, tok, tok.vocabSize, { maxParallel: 2 });
    const gens = prompts(tok, 5).map((p) => g.generate({ promptIds: p, config: cfg() }));
    expect(g.stats.waiting + g.stats.running).toBe(5);
    const results = await Promise.all(gens.map((x) => x.result));
    expect(results.every((r) => r.text === 'a b c d')).toBe(true);
    expect(Math.max(...batch.steps.map((s) => s.length))).toBe(2);
  });

  it('a cancelled request leaves at the next step; the others finish; every block comes back', async () => {
    const { tok, batch } = await setup('x '.repeat(40));
    const g = new Generator(batch, tok, tok.vocabSize, { maxParallel: 8 });
    const acs = prompts(tok, 6).map(() => new AbortController());
    const gens = prompts(tok, 6).map((p, i) => g.generate({ promptIds: p, config: cfg({ max_new_tokens: 30 }), signal: acs[i]!.signal }));
    let seen = 0;
    for await (const e of gens[0]!) if (e.delta && ++seen === 3) for (const ac of acs.slice(0, 3)) ac.abort();
    const results = await Promise.all(gens.map((x) => x.result));
    expect(results.slice(0, 3).every((r) => r.stats.finishReason === 'abort')).toBe(true);
    expect(results.slice(3).every((r) => r.stats.finishReason === 'length' && r.tokenIds.length === 30)).toBe(true);
    g.dispose();
    expect(batch.usedBlocks).toBe(0);
    expect(batch.liveSequences).toBe(0);
  });

  it('a prompt that starts like a finished one forks its cached prefix (reported as reused)', async () => {
    const { tok, batch } = await setup('fine thanks');
    const g = new Generator(batch, tok, tok.vocabSize, { maxParallel: 2 });
    const system = '<|im_start|>system\n' + 'You are a careful assistant. '.repeat(8) + '<|im_end|>\n';
    const p1 = tok.encode(`${system}<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n`, { addSpecialTokens: false });
    const p2 = tok.encode(`${system}<|im_start|>user\nhow are you<|im_end|>\n<|im_start|>assistant\n`, { addSpecialTokens: false });
    const shared = p1.findIndex((t, i) => t !== p2[i]);
    await run(tok, batch, p1, cfg(), {}, g);
    const before = batch.forwarded;
    const r2 = await run(tok, batch, p2, cfg(), {}, g);
    expect(r2.stats.reusedTokens).toBe(shared);
    expect(batch.forwarded - before).toBe(p2.length - shared + r2.tokenIds.length - 1);
    expect(g.stats.cachedPromptTokens).toBe(shared);
  });

  it('n choices of one prompt share its prefill: the later ones wait for it, then fork', async () => {
    const { tok, batch } = await setup('a b');
    const g = new Generator(batch, tok, tok.vocabSize, { maxParallel: 4 });
    const p = prompts(tok, 4)[3]!;
    const rs = await Promise.all([0, 1, 2].map(() => run(tok, batch, p, cfg(), {}, g)));
    expect(rs.map((r) => r.stats.reusedTokens)).toEqual([0, p.length - 1, p.length - 1]);
  });

  it('a request that can never fit the KV cache is refused; one that fits later waits', async () => {
    const { tok } = await setup('a b c d e f');
    const small = new FakeBatch(() => 7, tok.vocabSize, 64, 4, 64);
    const g = new Generator(small, tok, tok.vocabSize, { maxParallel: 4 });
    const p = Array.from({ length: 30 }, (_, i) => 100 + i);
    const gens = [0, 1].map(() => g.generate({ promptIds: p, config: cfg({ max_new_tokens: 10 }) }));
    // Each needs 12 of the 16 blocks: the second waits for the first.
    expect(g.stats.running).toBe(1);
    expect(g.stats.waiting).toBe(1);
    const rs = await Promise.all(gens.map((x) => x.result));
    expect(rs.every((r) => r.tokenIds.length === 10)).toBe(true);
    const tooBig = new FakeBatch(() => 7, tok.vocabSize, 64, 4, 32);
    expect(() => new Generator(tooBig, tok, tok.vocabSize, { maxParallel: 1 }).generate({ promptIds: p, config: cfg({ max_new_tokens: 10 }) })).toThrow(ContextLengthError);
  });
});

describe('pipeline over the fake engine', () => {
  it('multi-turn chat reuses the KV cache of the shared prefix', async () => {
    const { tok, batch } = await setup('Paris, of course! 🇫🇷');
    const templates = ChatTemplates.fromConfig(tok.config);
    const pipe = createTextGenerationPipeline(fakeModel(batch), { tokenizer: tok, templates, generationConfig: {} });
    const chat: Message[] = [
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: 'Capital of France?' },
    ];
    const out1 = await pipe(chat, { max_new_tokens: 50 });
    expect(out1[0].generated_text).toEqual([...chat, { role: 'assistant', content: 'Paris, of course! 🇫🇷' }]);
    const s1 = pipe.lastStats!;
    expect(s1.reusedTokens).toBe(0);
    expect(batch.forwarded).toBe(s1.promptTokens + s1.newTokens - 1);

    const chat2 = [...out1[0].generated_text, { role: 'user' as const, content: 'And of Italy?' }];
    const before = batch.forwarded;
    const out2 = await pipe(chat2, { max_new_tokens: 50 });
    expect(out2[0].generated_text.at(-1)).toEqual({ role: 'assistant', content: 'Paris, of course! 🇫🇷' });
    const s2 = pipe.lastStats!;
    // Everything of turn 1 the model computed (prompt + reply, not the final EOS) is reused.
    const prompt2 = tok.encode(templates.render(chat2, tok, { add_generation_prompt: true }), { addSpecialTokens: false });
    expect(s2.promptTokens).toBe(prompt2.length);
    expect(s2.reusedTokens).toBe(s1.promptTokens + s1.newTokens - 1);
    expect(batch.forwarded - before).toBe(s2.promptTokens - s2.reusedTokens + s2.newTokens - 1);

    // The same prompt again recomputes only its last position.
    await pipe(chat2, { max_new_tokens: 1 });
    expect(pipe.lastStats!.reusedTokens).toBe(prompt2.length - 1);
    pipe.dispose();
    expect(batch.disposed).toBe(true);
  });

  it('string prompts return only the new text unless return_full_text; continue_final_message extends the turn', async () => {
    const { tok, batch } = await setup(' and more');
    // Plain ChatML (Qwen3's own template adds an empty <think> block to a continued turn).
    const templates = new ChatTemplates({
      default:
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}{% if not loop.last %}<|im_end|>\n{% endif %}{% endfor %}" +
        "{% if add_generation_prompt %}<|im_end|>\n<|im_start|>assistant\n{% endif %}",
    });
    const pipe = createTextGenerationPipeline(fakeModel(batch), { tokenizer: tok, templates, generationConfig: { max_new_tokens: 10 } });
    // The fake replies after the last <|im_start|> + one token, so write the prompt that way.
    const prompt = '<|im_start|>assistant\nSo';
    const [{ generated_text: only }] = await pipe(prompt);
    expect(only).toBe(tok.decode(tok.encode(' and more', { addSpecialTokens: false }).slice(1)));
    const [{ generated_text: full }] = await pipe(prompt, { return_full_text: true });
    expect(full).toBe(prompt + only);
    const chat: Message[] = [{ role: 'user', content: 'hi' }, { role: 'assistant', content: 'Hello' }];
    const [{ generated_text: cont }] = await pipe(chat);
    expect(cont).toHaveLength(2);
    expect(cont[1]!.content.startsWith('Hello')).toBe(true);
    expect(cont[1]!.content.length).toBeGreaterThan('Hello'.length);
  });

  it('streams events; concurrent calls take turns on maxParallel 1', async () => {
    const { tok, batch } = await setup('streamed reply');
    const pipe = createTextGenerationPipeline(fakeModel(batch), { tokenizer: tok, templates: ChatTemplates.fromConfig(tok.config), generationConfig: {} });
    const chat: Message[] = [{ role: 'user', content: 'go' }];
    const [events, other] = await Promise.all([collect(pipe.stream(chat)), pipe(chat)]);
    expect(events.map((e) => e.delta).join('')).toBe('streamed reply');
    expect(other[0].generated_text.at(-1)!.content).toBe('streamed reply');
    expect(Math.max(...batch.steps.map((s) => s.length))).toBe(1);
  });

  it('a list of chats is generated as one batch, outputs in input order', async () => {
    const { tok, batch } = await setup('same answer');
    const pipe = createTextGenerationPipeline(fakeModel(batch), { tokenizer: tok, templates: ChatTemplates.fromConfig(tok.config), generationConfig: {} }, { maxParallel: 4 });
    const chats: Message[][] = ['a', 'bb', 'ccc'].map((q) => [{ role: 'user', content: q }]);
    const outs = await pipe(chats);
    expect(outs).toHaveLength(3);
    outs.forEach((o, i) => expect(o[0].generated_text).toEqual([...chats[i]!, { role: 'assistant', content: 'same answer' }]));
    expect(Math.max(...batch.steps.map((s) => s.length))).toBe(3);
  });

  it('a chat for a model without a template needs the explicit plain fallback', async () => {
    const l2 = await loadTokenizer('llama2');
    const script = l2.encode(' there was a cat.', { addSpecialTokens: false });
    const batch = new FakeBatch((c) => script[c.length - 5] ?? l2.eos!.id, l2.vocabSize, 64);
    const files = { tokenizer: l2, templates: ChatTemplates.fromConfig(l2.config), generationConfig: {} };
    const chat: Message[] = [{ role: 'user', content: 'Once upon a time' }];
    await expect(createTextGenerationPipeline(fakeModel(batch), files)(chat)).rejects.toThrow(/no chat template/);
    const pipe = createTextGenerationPipeline(fakeModel(batch), files, { templateFallback: 'plain' });
    expect(l2.encode('Once upon a time')).toHaveLength(5); // BOS + 4: the fake's script starts after them
    const out = await pipe(chat);
    // Transformers 5's LlamaTokenizer encodes ' there' as '▁there' (no lone '▁'), and a reply's
    // first word loses its '▁' in decoding, as Transformers' decode does.
    expect(script[0]).toBe(l2.encode('there', { addSpecialTokens: false })[0]);
    expect(out[0].generated_text.at(-1)).toEqual({ role: 'assistant', content: 'there was a cat.' });
  });
});
