// The generation loop and the pipeline over a TEST DOUBLE of the engine: FakeSession
// computes "logits" with a deterministic function of the tokens in its cache, so these
// tests check our loop (EOS, stop strings, budgets, abort, KV prefix reuse), not a model.
import { describe, expect, it } from 'vitest';
import type { Gpu, Model, ModelConfig, Session, TopK } from '@webgpu-chat/engine';
import {
  ChatTemplates,
  ContextLengthError,
  createTextGenerationPipeline,
  resolveGenerationConfig,
  SessionGenerator,
  type ChatTokenizer,
  type GenerationConfig,
  type Message,
  type StreamEvent,
} from '../src/index.ts';
import { loadTokenizer } from './fixtures.ts';

/** Next-token rule of the fake model: the favourite token after a cached sequence. */
type Rule = (cached: readonly number[]) => number;

class FakeSession implements Session {
  readonly cache: number[] = [];
  /** Tokens run through forward() over the session's life: the prefill work done. */
  forwarded = 0;
  reads = { argmax: 0, topK: 0, logits: 0 };
  disposed = false;
  constructor(
    private readonly rule: Rule,
    private readonly vocab: number,
    readonly maxContext: number,
  ) {}
  get length(): number {
    return this.cache.length;
  }
  forward(tokens: ArrayLike<number>): void {
    if (this.cache.length + tokens.length > this.maxContext) throw new Error('fake: context overflow');
    this.cache.push(...Array.from(tokens));
    this.forwarded += tokens.length;
  }
  private row(): Float32Array {
    if (this.cache.length === 0) throw new Error('fake: nothing forwarded');
    const l = new Float32Array(this.vocab).fill(-5);
    const fav = this.rule(this.cache);
    l[fav] = 5;
    l[(fav + 1) % this.vocab] = 4; // a runner-up, so sampling has a choice
    return l;
  }
  async argmax(): Promise<number> {
    this.reads.argmax++;
    const l = this.row();
    let best = 0;
    for (let i = 1; i < l.length; i++) if (l[i]! > l[best]!) best = i;
    return best;
  }
  async topK(k: number): Promise<TopK> {
    this.reads.topK++;
    const l = this.row();
    const ids = Int32Array.from(l.keys()).sort((a, b) => l[b]! - l[a]! || a - b).slice(0, k);
    return { ids, logits: Float32Array.from(ids, (i) => l[i]!), logSumExp: Math.log(l.reduce((s, x) => s + Math.exp(x), 0)) };
  }
  async logits(): Promise<Float32Array> {
    this.reads.logits++;
    return this.row();
  }
  truncate(length: number): void {
    if (length > this.cache.length) throw new Error('fake: truncate past length');
    this.cache.length = length;
  }
  dispose(): void {
    this.disposed = true;
  }
}

/** Replies with `script` once `skip` tokens follow the last `marker`, then EOS. */
function scriptRule(script: number[], marker: number, skip: number, eos: number): Rule {
  return (cached) => {
    const start = cached.lastIndexOf(marker);
    const n = start < 0 ? 0 : cached.length - start - 1 - skip;
    return script[n] ?? eos;
  };
}

function fakeModel(session: FakeSession, vocabSize: number): Model {
  return {
    // Test double: the loop reads only info.vocabSize and never touches the GPU or config.
    gpu: {} as Gpu,
    info: { modelType: 'fake', dtype: 'f32', weightBytes: 0, kvBytesPerToken: 0, vocabSize, maxPositionEmbeddings: session.maxContext, bytesPerToken: 0, config: {} as ModelConfig, variant: 'software' },
    createSession: () => session,
    createBatch: () => {
      throw new Error('the generate loop does not batch');
    },
    dispose: () => {},
  };
}

async function collect(it: AsyncIterable<StreamEvent>): Promise<StreamEvent[]> {
  const out: StreamEvent[] = [];
  for await (const e of it) out.push(e);
  return out;
}

async function setup(reply: string, maxContext = 4096) {
  const tok = await loadTokenizer('qwen3');
  // The reply follows "<|im_start|>assistant\n": the marker and two tokens.
  const script = tok.encode(reply, { addSpecialTokens: false });
  const marker = tok.tokenToId('<|im_start|>')!;
  const session = new FakeSession(scriptRule(script, marker, 2, tok.eos!.id), tok.vocabSize, maxContext);
  return { tok, session, script };
}

function loop(tok: ChatTokenizer, session: FakeSession) {
  return new SessionGenerator(session, tok, tok.vocabSize);
}

const cfg = (c: GenerationConfig = {}) => resolveGenerationConfig(c);

describe('generation loop', () => {
  it('greedy: stops at EOS, streams the reply, reads back only argmax', async () => {
    const { tok, session } = await setup('Tokyo（東京）is big 🗼.');
    const prompt = tok.encode('<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n', { addSpecialTokens: false });
    const g = loop(tok, session);
    const events = await collect(g.stream(prompt, cfg()));
    expect(events.map((e) => e.delta).join('')).toBe('Tokyo（東京）is big 🗼.');
    expect(events.every((e) => !e.delta.includes('\uFFFD'))).toBe(true);
    const r = g.lastResult!;
    expect(r.stats.finishReason).toBe('stop');
    expect(r.tokenIds.at(-1)).toBe(tok.eos!.id);
    expect(session.reads).toEqual({ argmax: r.tokenIds.length, topK: 0, logits: 0 });
    // EOS is sampled but never forwarded.
    expect(session.length).toBe(prompt.length + r.tokenIds.length - 1);
  });

  it('max_new_tokens ends with finishReason length; 0 generates nothing', async () => {
    const { tok, session } = await setup('one two three four five six');
    const prompt = tok.encode('<|im_start|>assistant\n', { addSpecialTokens: false });
    const r = await loop(tok, session).run(prompt, cfg({ max_new_tokens: 3 }));
    expect(r.tokenIds).toHaveLength(3);
    expect(r.stats.finishReason).toBe('length');
    expect(r.text).toBe('one two three');
    const z = await loop(tok, session).run(prompt, cfg({ max_new_tokens: 0 }));
    expect(z.tokenIds).toHaveLength(0);
  });

  it('cuts a stop string split across tokens and never shows its start', async () => {
    const { tok, session } = await setup('Answer: 42\nUser: more?');
    const prompt = tok.encode('<|im_start|>assistant\n', { addSpecialTokens: false });
    const seen: string[] = [];
    const r = await loop(tok, session).run(prompt, cfg({ stop: ['\nUser:'] }), { onText: (d) => seen.push(d) });
    expect(r.text).toBe('Answer: 42');
    expect(seen.join('')).toBe('Answer: 42');
    expect(r.stats.finishReason).toBe('stop');
  });

  it('extra eos_token_id ends generation on that token', async () => {
    const { tok, session, script } = await setup('a b c d');
    const prompt = tok.encode('<|im_start|>assistant\n', { addSpecialTokens: false });
    const r = await loop(tok, session).run(prompt, cfg({ eos_token_id: script[2]! }));
    expect(r.tokenIds).toEqual(script.slice(0, 3));
    expect(r.text).toBe(tok.decode(script.slice(0, 2)));
  });

  it('an AbortSignal stops generation with finishReason abort', async () => {
    const { tok, session } = await setup('x '.repeat(50));
    const prompt = tok.encode('<|im_start|>assistant\n', { addSpecialTokens: false });
    const ac = new AbortController();
    let n = 0;
    const r = await loop(tok, session).run(prompt, cfg(), { signal: ac.signal, onText: () => ++n === 4 && ac.abort() });
    expect(r.stats.finishReason).toBe('abort');
    expect(r.tokenIds).toHaveLength(4);
    const pre = await loop(tok, session).run(prompt, cfg(), { signal: AbortSignal.abort() });
    expect(pre.tokenIds).toHaveLength(0);
  });

  it('sampling with top_k reads k candidates; a seed reproduces the tokens', async () => {
    const { tok, session } = await setup('the cat sat on the mat and then it slept');
    const prompt = tok.encode('<|im_start|>assistant\n', { addSpecialTokens: false });
    const c = cfg({ do_sample: true, top_k: 2, temperature: 1.5, seed: 7, max_new_tokens: 12 });
    const a = await loop(tok, session).run(prompt, c);
    expect(a.tokenIds.length).toBeGreaterThan(3);
    expect(session.reads).toEqual({ argmax: 0, topK: a.tokenIds.length, logits: 0 });
    const b = await loop(tok, session).run(prompt, c);
    expect(b.tokenIds).toEqual(a.tokenIds);
    const other = await loop(tok, session).run(prompt, { ...c, seed: 8 });
    expect(other.tokenIds).not.toEqual(a.tokenIds);
    const withPenalty = await loop(tok, session).run(prompt, { ...c, repetition_penalty: 1.2 });
    expect(session.reads.logits).toBe(withPenalty.tokenIds.length);
  });

  it('a prompt longer than the context is a ContextLengthError with both numbers', async () => {
    const { tok, session } = await setup('x', 8);
    const prompt = tok.encode('<|im_start|>assistant\n one two three four five six seven', { addSpecialTokens: false });
    await expect(loop(tok, session).run(prompt, cfg())).rejects.toThrow(ContextLengthError);
    await expect(loop(tok, session).run(prompt, cfg())).rejects.toThrow(`The prompt is ${prompt.length} tokens but the context holds 8`);
  });

  it('stops at the end of the context with finishReason length', async () => {
    const { tok, session } = await setup('a b c d e f g h i j k l m n o p', 12);
    const prompt = tok.encode('<|im_start|>assistant\n', { addSpecialTokens: false });
    const r = await loop(tok, session).run(prompt, cfg());
    expect(r.stats.finishReason).toBe('length');
    expect(r.tokenIds).toHaveLength(12 - prompt.length + 1);
  });
});

describe('pipeline over the fake engine', () => {
  it('multi-turn chat reuses the KV cache of the shared prefix', async () => {
    const { tok, session } = await setup('Paris, of course! 🇫🇷');
    const templates = ChatTemplates.fromConfig(tok.config);
    const pipe = createTextGenerationPipeline(fakeModel(session, tok.vocabSize), { tokenizer: tok, templates, generationConfig: {} });
    const chat: Message[] = [
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: 'Capital of France?' },
    ];
    const out1 = await pipe(chat, { max_new_tokens: 50 });
    expect(out1[0].generated_text).toEqual([...chat, { role: 'assistant', content: 'Paris, of course! 🇫🇷' }]);
    const s1 = pipe.lastStats!;
    expect(s1.reusedTokens).toBe(0);
    expect(session.forwarded).toBe(s1.promptTokens + s1.newTokens - 1);

    const chat2 = [...out1[0].generated_text, { role: 'user' as const, content: 'And of Italy?' }];
    const before = session.forwarded;
    const out2 = await pipe(chat2, { max_new_tokens: 50 });
    expect(out2[0].generated_text.at(-1)).toEqual({ role: 'assistant', content: 'Paris, of course! 🇫🇷' });
    const s2 = pipe.lastStats!;
    // Everything of turn 1 the session computed (prompt + reply, not the final EOS) is reused.
    const prompt2 = tok.encode(templates.render(chat2, tok, { add_generation_prompt: true }), { addSpecialTokens: false });
    expect(s2.promptTokens).toBe(prompt2.length);
    expect(s2.reusedTokens).toBe(s1.promptTokens + s1.newTokens - 1);
    expect(session.forwarded - before).toBe(s2.promptTokens - s2.reusedTokens + s2.newTokens - 1);

    // The same prompt again recomputes only its last position.
    await pipe(chat2, { max_new_tokens: 1 });
    expect(pipe.lastStats!.reusedTokens).toBe(prompt2.length - 1);
    pipe.dispose();
    expect(session.disposed).toBe(true);
  });

  it('string prompts return only the new text unless return_full_text; continue_final_message extends the turn', async () => {
    const { tok, session } = await setup(' and more');
    // Plain ChatML (Qwen3's own template adds an empty <think> block to a continued turn).
    const templates = new ChatTemplates({
      default:
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}{% if not loop.last %}<|im_end|>\n{% endif %}{% endfor %}" +
        "{% if add_generation_prompt %}<|im_end|>\n<|im_start|>assistant\n{% endif %}",
    });
    const pipe = createTextGenerationPipeline(fakeModel(session, tok.vocabSize), { tokenizer: tok, templates, generationConfig: { max_new_tokens: 10 } });
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

  it('streams events and serializes concurrent calls on its one session', async () => {
    const { tok, session } = await setup('streamed reply');
    const pipe = createTextGenerationPipeline(fakeModel(session, tok.vocabSize), { tokenizer: tok, templates: ChatTemplates.fromConfig(tok.config), generationConfig: {} });
    const chat: Message[] = [{ role: 'user', content: 'go' }];
    const [events, other] = await Promise.all([collect(pipe.stream(chat)), pipe(chat)]);
    expect(events.map((e) => e.delta).join('')).toBe('streamed reply');
    expect(other[0].generated_text.at(-1)!.content).toBe('streamed reply');
  });

  it('a chat for a model without a template needs the explicit plain fallback', async () => {
    const l2 = await loadTokenizer('llama2');
    const script = l2.encode(' there was a cat.', { addSpecialTokens: false });
    const session = new FakeSession((c) => script[c.length - 5] ?? l2.eos!.id, l2.vocabSize, 64);
    const files = { tokenizer: l2, templates: ChatTemplates.fromConfig(l2.config), generationConfig: {} };
    const chat: Message[] = [{ role: 'user', content: 'Once upon a time' }];
    await expect(createTextGenerationPipeline(fakeModel(session, l2.vocabSize), files)(chat)).rejects.toThrow(/no chat template/);
    const pipe = createTextGenerationPipeline(fakeModel(session, l2.vocabSize), files, { templateFallback: 'plain' });
    expect(l2.encode('Once upon a time')).toHaveLength(5); // BOS + 4: the fake's script starts after them
    const out = await pipe(chat);
    // '▁' + '▁there': the decoder strips one leading space, as Transformers' decode does.
    expect(out[0].generated_text.at(-1)).toEqual({ role: 'assistant', content: ' there was a cat.' });
  });
});
