// The token-level half of `serve`: POST /v1/completions as vLLM serves it (string or
// token-id prompts, several per request, echo, logprobs 0..20, return_token_ids,
// return_tokens_as_token_ids) and log-probabilities for /v1/chat/completions.
// Log-probabilities are the f32 log-softmax of the raw logits, before any sampling
// transform; every one is reduced on the GPU (top-k, logSumExp and the chosen token's
// logit per position, see the engine's reduceRows and scoreTokens).
// It runs on its own engine session beside the chat pipeline's (a second KV cache, made
// when the model is set), one request at a time (the server's queue), reusing the KV
// cache of a prefix shared with the previous request.

import type { ServerResponse } from 'node:http';
import { randomBytes } from 'node:crypto';
import { scoreTokens, type Session } from '@webgpu-chat/engine';
import {
  eosIds,
  nextToken,
  resolveGenerationConfig,
  SeededRandom,
  StopStringMatcher,
  StreamingDetokenizer,
  commonPrefixLength,
  type GenerationConfig,
  type Message,
  type TextGenerationPipeline,
} from '@webgpu-chat/chat';
import type { PromptEncoder } from './encoder.ts';
import { ApiError, EventStream, endStreamWithError, invalid, sendJson } from './http.ts';
import { MAX_LOGPROBS, checkContext, num, parseSamplingFields, type ChatRequest } from './requests.ts';

/** Tokens of context a token's text is decoded after (see pieceText). */
const PIECE_CONTEXT = 8;

/** OpenAI's default max_tokens for completions. */
const DEFAULT_COMPLETION_TOKENS = 16;

export interface CompletionRequest {
  /** One choice per prompt, as token ids. */
  prompts: number[][];
  maxTokens: number;
  config: GenerationConfig;
  echo: boolean;
  /** Alternatives per position, or null for no logprobs. */
  logprobs: number | null;
  stream: boolean;
  includeUsage: boolean;
  ignoreEos: boolean;
  returnTokenIds: boolean;
  tokensAsIds: boolean;
}

/** One position of a choice: the token, its log-probability (null for the first prompt token) and the alternatives. */
interface Position {
  id: number;
  logprob: number | null;
  top: [number, number][] | null;
}

function bool(b: Record<string, unknown>, key: string): boolean {
  const v = b[key];
  if (v === undefined || v === null) return false;
  if (typeof v !== 'boolean') throw invalid(`'${key}' must be a boolean`, key);
  return v;
}

const isIdList = (x: unknown): x is number[] => Array.isArray(x) && x.length > 0 && x.every((t) => typeof t === 'number');

export class TokenLevelApi {
  private session: Session | undefined;
  /** The ids the session's KV cache holds. */
  private cached: number[] = [];
  readonly vocabSize: number;
  readonly maxContext: number;

  constructor(
    readonly tm: TextGenerationPipeline,
    readonly modelId: string,
  ) {
    this.vocabSize = tm.model.info.vocabSize;
    this.session = tm.model.createSession();
    this.maxContext = Math.min(this.session.maxContext, tm.maxContext);
  }

  private sessionOf(): Session {
    if (!this.session) throw new ApiError(503, 'The model was unloaded', 'server_error', null, 'model_unloaded');
    return this.session;
  }

  dispose(): void {
    this.session?.dispose();
    this.session = undefined;
  }

  private checkModel(b: Record<string, unknown>): void {
    if (b.model !== undefined && typeof b.model !== 'string') throw invalid("'model' must be a string", 'model');
    if (typeof b.model === 'string' && b.model !== this.modelId) {
      throw new ApiError(404, `The model '${b.model}' does not exist; this server serves '${this.modelId}'`, 'not_found_error', 'model', 'model_not_found');
    }
  }

  private checkIds(ids: number[], param: string): number[] {
    for (const t of ids) {
      if (!Number.isInteger(t) || t < 0 || t >= this.vocabSize) {
        throw invalid(`${param}: token id ${JSON.stringify(t)} is outside the vocabulary (0..${this.vocabSize - 1})`, param, 'invalid_token_id');
      }
    }
    return ids;
  }

  /**
   * Tokenizes a prompt for a route with a context (off the event loop when long), refusing
   * it first from its length alone when it cannot fit whatever it tokenizes to.
   */
  private async encodePrompt(text: string, addSpecialTokens: boolean, encoder: PromptEncoder, maxTokens: number | undefined, param: string): Promise<number[]> {
    checkContext(this.tm.tokenizer.minTokens(text), maxTokens, this.maxContext, param, true);
    return encoder.encode(text, { addSpecialTokens });
  }

  /** Validates a /v1/completions body (400 naming the param) into token-id prompts and flags. */
  async parseCompletionRequest(body: unknown, encoder: PromptEncoder): Promise<CompletionRequest> {
    if (typeof body !== 'object' || body === null || Array.isArray(body)) throw invalid('The request body must be a JSON object', null);
    const b = body as Record<string, unknown>;
    this.checkModel(b);
    const p = b.prompt;
    let raw: (string | number[])[];
    if (typeof p === 'string' || isIdList(p)) raw = [p];
    else if (Array.isArray(p) && p.length > 0 && p.every((x) => typeof x === 'string' || isIdList(x))) raw = p as (string | number[])[];
    else throw invalid("'prompt' must be a string, a non-empty list of token ids, or a non-empty list of either", 'prompt');
    const echo = bool(b, 'echo');
    const maxTokens = num(b, 'max_tokens', 0, Number.MAX_SAFE_INTEGER, true) ?? DEFAULT_COMPLETION_TOKENS;
    if (maxTokens === 0 && !echo) throw invalid("'max_tokens' 0 is only allowed with 'echo': true (to score the prompt)", 'max_tokens');
    const logprobs = num(b, 'logprobs', 0, MAX_LOGPROBS, true) ?? null;
    for (const k of ['n', 'best_of'] as const) {
      const v = num(b, k, 1, 128, true);
      if (v !== undefined && v !== 1) throw invalid(`Only '${k}': 1 is supported`, k, 'unsupported_value');
    }
    if (b.suffix !== undefined && b.suffix !== null) throw invalid("'suffix' is not supported", 'suffix', 'unsupported_value');
    for (const k of ['presence_penalty', 'frequency_penalty'] as const) {
      const v = num(b, k, -2, 2);
      if (v !== undefined && v !== 0) throw invalid(`'${k}' is not supported (use repetition_penalty)`, k, 'unsupported_value');
    }
    const so = b.stream_options;
    if (so !== undefined && so !== null && (typeof so !== 'object' || Array.isArray(so))) throw invalid("'stream_options' must be an object", 'stream_options');
    const config = parseSamplingFields(b);
    const prompts: number[][] = [];
    for (const [i, x] of raw.entries()) {
      const param = raw.length > 1 ? `prompt[${i}]` : 'prompt';
      const ids = typeof x === 'string' ? await this.encodePrompt(x, true, encoder, maxTokens, param) : this.checkIds(x, param);
      if (ids.length === 0) throw invalid(`${param} is empty: it encodes to no tokens`, param);
      checkContext(ids.length, maxTokens, this.maxContext, param);
      prompts.push(ids);
    }
    return {
      prompts,
      maxTokens,
      config,
      echo,
      logprobs,
      stream: bool(b, 'stream'),
      includeUsage: (so as { include_usage?: unknown } | undefined)?.include_usage === true,
      ignoreEos: bool(b, 'ignore_eos'),
      returnTokenIds: bool(b, 'return_token_ids'),
      tokensAsIds: bool(b, 'return_tokens_as_token_ids'),
    };
  }

  /**
   * The text `id` adds after `context` (the tokens before it): decoded after a few of
   * them, so a SentencePiece word keeps its leading space, as in the whole text.
   */
  private pieceText(context: readonly number[], id: number, skipSpecialTokens = false): string {
    const before = context.slice(-PIECE_CONTEXT);
    const head = this.tm.tokenizer.decode(before, { skipSpecialTokens });
    return this.tm.tokenizer.decode([...before, id], { skipSpecialTokens }).slice(head.length);
  }

  /** A token as the logprobs objects write it. */
  private tokenText(context: readonly number[], id: number, asIds: boolean): string {
    return asIds ? `token_id:${id}` : this.pieceText(context, id);
  }

  /**
   * Scores the prompt when asked (positions from the second token) and runs it through the
   * session, which then keeps the logits of its last position.
   */
  private async prefill(ids: number[], scoreK: number | null): Promise<Position[]> {
    const session = this.sessionOf();
    if (scoreK !== null) {
      session.truncate(0);
      this.cached = [];
      const scores = await scoreTokens(session, ids, { topK: scoreK });
      this.cached = [...ids];
      return [{ id: ids[0]!, logprob: null, top: null }, ...scores.map((s, i) => ({ id: ids[i + 1]!, logprob: s.logprob, top: Array.from(s.topIds, (t, j): [number, number] => [t, s.topLogprobs[j]!]) }))];
    }
    // The last prompt position is recomputed anyway: its logits are needed.
    const reused = Math.min(commonPrefixLength(this.cached, ids), ids.length - 1);
    session.truncate(reused);
    this.cached.length = reused;
    session.forward(ids.slice(reused));
    this.cached = [...ids];
    return [];
  }

  /**
   * One choice: the prompt's positions (with echo), then each generated token as it comes.
   * Yields batches of positions with the text they add; returns why it stopped.
   */
  private async *choice(
    ids: number[],
    req: Pick<CompletionRequest, 'maxTokens' | 'config' | 'echo' | 'logprobs' | 'ignoreEos'> & { continueText: boolean },
    signal: AbortSignal,
  ): AsyncGenerator<{ positions: Position[]; text: string }, 'stop' | 'length'> {
    const session = this.sessionOf();
    const cfg = resolveGenerationConfig(this.tm.generationConfig, req.config);
    const wantScores = req.echo && req.logprobs !== null;
    try {
      const prompt = await this.prefill(ids, wantScores ? req.logprobs : null);
      if (req.echo) {
        const text = this.tm.tokenizer.decode(ids, { skipSpecialTokens: true });
        yield { positions: wantScores ? prompt : ids.map((id) => ({ id, logprob: null, top: null })), text };
      }
      if (req.maxTokens === 0) return 'length';
      const rng = new SeededRandom(cfg.seed);
      const eos = req.ignoreEos ? new Set<number>() : eosIds(cfg.eos_token_id, this.tm.tokenizer);
      const detok = new StreamingDetokenizer(this.tm.tokenizer, { skipSpecialTokens: true });
      // A completion continues its prompt's text (" park" after "to the"): the detokenizer
      // starts from the prompt's last tokens. A chat reply starts fresh, as the pipeline's.
      if (req.continueText) for (const t of ids.slice(-PIECE_CONTEXT)) detok.push(t);
      const stopper = new StopStringMatcher(cfg.stop);
      const sequence = [...ids];
      let reason: 'stop' | 'length' = 'length';
      for (let n = 0; n < req.maxTokens; n++) {
        signal.throwIfAborted();
        if (n > 0) {
          session.forward([sequence.at(-1)!]);
          this.cached.push(sequence.at(-1)!);
        }
        const id = await nextToken(session, cfg, rng, this.vocabSize, sequence);
        let pos: Position = { id, logprob: null, top: null };
        if (req.logprobs !== null) {
          const [r] = await session.reduceRows!([session.length - 1], req.logprobs, [id]);
          const lse = r!.logSumExp;
          pos = { id, logprob: r!.targetLogit - lse, top: Array.from(r!.ids, (t, j): [number, number] => [t, r!.logits[j]! - lse]) };
        }
        sequence.push(id);
        if (eos.has(id)) {
          // The EOS is a position of the completion (its logprob counts) but adds no text.
          reason = 'stop';
          yield { positions: [pos], text: '' };
          break;
        }
        const r = stopper.push(detok.push(id));
        yield { positions: [pos], text: r.text };
        if (r.stopped) return 'stop';
      }
      // Text held back (an incomplete character, a possible stop string's start) comes out last.
      const tail = stopper.push(detok.flush()).text + (stopper.stopped ? '' : stopper.flush());
      if (tail) yield { positions: [], text: tail };
      return stopper.stopped ? 'stop' : reason;
    } catch (e) {
      // After a failed or aborted read the cache's contents are unknown.
      this.cached = [];
      throw e;
    }
  }

  /**
   * OpenAI's completions logprobs object for positions that follow the tokens of `seq`
   * (which then takes them), starting at text offset `offset`.
   */
  private completionLogprobs(positions: Position[], asIds: boolean, seq: number[], offset: number) {
    const tokens: string[] = [];
    const tokenLogprobs: (number | null)[] = [];
    const top: (Record<string, number> | null)[] = [];
    const offsets: number[] = [];
    for (const p of positions) {
      const context = seq.slice(-PIECE_CONTEXT);
      const t = this.tokenText(context, p.id, asIds);
      offsets.push(offset);
      // Offsets into `text`, which leaves special tokens out.
      offset += this.pieceText(context, p.id, true).length;
      seq.push(p.id);
      tokens.push(t);
      tokenLogprobs.push(p.logprob);
      if (p.top === null) top.push(null);
      else {
        // vLLM's shape: the k best and the chosen token (which may be outside them).
        const m: Record<string, number> = {};
        for (const [id, lp] of p.top) {
          const key = this.tokenText(context, id, asIds);
          if (!(key in m)) m[key] = lp;
        }
        if (!(t in m) && p.logprob !== null) m[t] = p.logprob;
        top.push(m);
      }
    }
    return { value: { tokens, token_logprobs: tokenLogprobs, top_logprobs: top, text_offset: offsets }, offset };
  }

  /** Serves a parsed /v1/completions request; returns what it did, for the server's log. */
  async completions(req: CompletionRequest, res: ServerResponse, signal: AbortSignal): Promise<{ finishReason: string; completionTokens: number }> {
    const id = `cmpl-${randomBytes(12).toString('hex')}`;
    const base = { id, object: 'text_completion', created: Math.floor(Date.now() / 1000), model: this.modelId };
    const promptTokens = req.prompts.reduce((a, p) => a + p.length, 0);
    let completionTokens = 0;
    let finish = 'stop';
    const usage = () => ({ prompt_tokens: promptTokens, completion_tokens: completionTokens, total_tokens: promptTokens + completionTokens });
    let sse: EventStream | undefined;
    const choices = [];
    try {
      for (const [index, ids] of req.prompts.entries()) {
        const it = this.choice(ids, { ...req, continueText: true }, signal);
        let text = '';
        let offset = 0;
        // The tokens before the next position (the prompt, unless it is echoed).
        const seq = req.echo ? [] : [...ids];
        const positions: Position[] = [];
        const generated: number[] = [];
        let step = await it.next();
        if (req.stream) sse ??= new EventStream(res);
        let echoed = req.echo;
        while (!step.done) {
          const { positions: ps, text: t } = step.value;
          if (!echoed) {
            for (const p of ps) generated.push(p.id);
            completionTokens += ps.length;
          }
          if (req.stream) {
            const lp = req.logprobs === null ? null : this.completionLogprobs(ps, req.tokensAsIds, seq, offset);
            if (lp) offset = lp.offset;
            sse!.send({ ...base, choices: [{ index, text: t, logprobs: lp?.value ?? null, finish_reason: null, stop_reason: null, ...(req.returnTokenIds ? { token_ids: ps.map((p) => p.id) } : {}) }] });
          } else {
            positions.push(...ps);
            text += t;
          }
          echoed = false;
          step = await it.next();
        }
        const reason = step.value;
        if (reason === 'length') finish = 'length';
        const tokenIds = req.returnTokenIds ? { prompt_token_ids: ids, token_ids: generated } : {};
        if (sse) sse.send({ ...base, choices: [{ index, text: '', logprobs: null, finish_reason: reason, stop_reason: null, ...tokenIds }] });
        else {
          const lp = req.logprobs === null ? null : this.completionLogprobs(positions, req.tokensAsIds, seq, 0).value;
          choices.push({ index, text, logprobs: lp, finish_reason: reason, stop_reason: null, ...tokenIds });
        }
      }
    } catch (e) {
      if (!sse) throw e;
      endStreamWithError(sse, e, signal);
      return { finishReason: signal.aborted ? 'abort' : 'error', completionTokens };
    }
    if (sse) {
      if (req.includeUsage) sse.send({ ...base, choices: [], usage: usage() });
      sse.end();
    } else sendJson(res, 200, { ...base, choices, usage: usage() });
    return { finishReason: finish, completionTokens };
  }

  /** The prompt a chat renders to, as token ids: the pipeline's rule (template or plain fallback, continue_final_message). */
  chatIds(request: ChatRequest, encoder: PromptEncoder): Promise<number[]> {
    const prompt = this.tm.renderPrompt(request.messages);
    return this.encodePrompt(prompt.text, prompt.addSpecialTokens, encoder, request.config.max_new_tokens, 'messages');
  }

  /** /v1/chat/completions with logprobs: true (OpenAI's chat logprobs shape), for the prompt `ids` (chatIds). */
  async chat(request: ChatRequest, ids: number[], res: ServerResponse, signal: AbortSignal): Promise<{ finishReason: string; completionTokens: number }> {
    const k = request.logprobs ?? 0;
    const budget = request.config.max_new_tokens ?? this.maxContext - ids.length;
    const id = `chatcmpl-${randomBytes(12).toString('hex')}`;
    const base = { id, created: Math.floor(Date.now() / 1000), model: this.modelId, system_fingerprint: null };
    const seq = [...ids];
    const bytes = (t: string) => Array.from(Buffer.from(t, 'utf8'));
    const entry = (p: Position) => {
      const context = seq.slice(-PIECE_CONTEXT);
      const token = this.pieceText(context, p.id);
      seq.push(p.id);
      return {
        token,
        logprob: p.logprob!,
        bytes: bytes(token),
        top_logprobs: (p.top ?? []).map(([t, logprob]) => {
          const s = this.pieceText(context, t);
          return { token: s, logprob, bytes: bytes(s) };
        }),
      };
    };
    const it = this.choice(ids, { maxTokens: budget, config: request.config, echo: false, logprobs: k, ignoreEos: false, continueText: false }, signal);
    const content: ReturnType<typeof entry>[] = [];
    let text = '';
    let n = 0;
    let step = await it.next();
    const usage = () => ({ prompt_tokens: ids.length, completion_tokens: n, total_tokens: ids.length + n });
    if (request.stream) {
      const sse = new EventStream(res);
      const chunk = (delta: Record<string, string>, logprobs: unknown, finish: string | null) => ({
        ...base,
        object: 'chat.completion.chunk',
        choices: [{ index: 0, delta, logprobs, finish_reason: finish }],
        ...(request.includeUsage ? { usage: null } : {}),
      });
      sse.send(chunk({ role: 'assistant', content: '' }, null, null));
      try {
        while (!step.done) {
          n += step.value.positions.length;
          sse.send(chunk({ content: step.value.text }, { content: step.value.positions.map(entry), refusal: null }, null));
          step = await it.next();
        }
      } catch (e) {
        endStreamWithError(sse, e, signal);
        return { finishReason: signal.aborted ? 'abort' : 'error', completionTokens: n };
      }
      sse.send(chunk({}, null, step.value));
      if (request.includeUsage) sse.send({ ...base, object: 'chat.completion.chunk', choices: [], usage: usage() });
      sse.end();
      return { finishReason: step.value, completionTokens: n };
    }
    while (!step.done) {
      n += step.value.positions.length;
      content.push(...step.value.positions.map(entry));
      text += step.value.text;
      step = await it.next();
    }
    sendJson(res, 200, {
      ...base,
      object: 'chat.completion',
      choices: [{ index: 0, message: { role: 'assistant', content: text, refusal: null }, logprobs: { content, refusal: null }, finish_reason: step.value }],
      usage: usage(),
    });
    return { finishReason: step.value, completionTokens: n };
  }

  /** POST /tokenize: {content, add_special} → {tokens} (llama-server's names). */
  async tokenize(body: unknown, encoder: PromptEncoder): Promise<{ tokens: number[] }> {
    const b = objectBody(body);
    if (typeof b.content !== 'string') throw invalid("'content' must be a string", 'content');
    if (b.add_special !== undefined && typeof b.add_special !== 'boolean') throw invalid("'add_special' must be a boolean", 'add_special');
    return { tokens: await encoder.encode(b.content, { addSpecialTokens: b.add_special === true }) };
  }

  /** POST /detokenize: {tokens} → {content}. */
  detokenize(body: unknown): { content: string } {
    const b = objectBody(body);
    if (!Array.isArray(b.tokens) || !b.tokens.every((t) => typeof t === 'number')) throw invalid("'tokens' must be a list of token ids", 'tokens');
    return { content: this.tm.tokenizer.decode(this.checkIds(b.tokens as number[], 'tokens')) };
  }

  /** POST /apply-template: {messages, add_generation_prompt, tools, chat_template_kwargs} → {prompt}. */
  applyTemplate(body: unknown, messages: Message[]): { prompt: string } {
    const b = objectBody(body);
    if (b.tools !== undefined && b.tools !== null && !Array.isArray(b.tools)) throw invalid("'tools' must be a list", 'tools');
    const kw = b.chat_template_kwargs;
    if (kw !== undefined && kw !== null && (typeof kw !== 'object' || Array.isArray(kw))) throw invalid("'chat_template_kwargs' must be an object", 'chat_template_kwargs');
    if (b.add_generation_prompt !== undefined && typeof b.add_generation_prompt !== 'boolean') throw invalid("'add_generation_prompt' must be a boolean", 'add_generation_prompt');
    return {
      prompt: this.tm.renderPrompt(messages, {
        add_generation_prompt: b.add_generation_prompt !== false,
        continue_final_message: false,
        ...(Array.isArray(b.tools) ? { tools: b.tools } : {}),
        ...(kw ? { chat_template_kwargs: kw as Record<string, unknown> } : {}),
      }).text,
    };
  }
}

function objectBody(body: unknown): Record<string, unknown> {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw invalid('The request body must be a JSON object', null);
  return body as Record<string, unknown>;
}
