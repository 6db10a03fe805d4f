// pipeline('text-generation', model): Transformers' TextGenerationPipeline over our
// engine. Call it with a chat (list of messages) to get the chat back with the
// assistant's reply appended, or with a string to get the continuation; a list of chats
// (or strings) is generated as one batch. Calls run on the generation loop (generate.ts)
// over one engine Batch, which keeps finished sequences cached: the next turn of a chat
// only prefills what is new.

import { loadModel, toFileSource, type FileSource, type Gpu, type LoadOptions, type Model } from '@webgpu-chat/engine';
import { ChatInputError, ContextLengthError, GenerationConfigError, ToolsUnsupportedError } from './errors.ts';
import { Generator, type Generation, type GenerationResult } from './generate.ts';
import { parseGenerationConfigJson, resolveGenerationConfig, type ResolvedGenerationConfig } from './sampling.ts';
import { Assistant } from './speculative.ts';
import { createReplyParser, detectReplyFormat, type ReplyFormat, type ReplyParser, type ReplyPiece, type ToolCallFormat } from './reply-parser.ts';
import { compileConstraint, responseFormatConstraint, type CompiledConstraint } from './constraint/constraint.ts';
import { ChatTemplates, renderPlain, validateMessages, type PLAIN_FALLBACK } from './template.ts';
import { ChatTokenizer } from './tokenizer.ts';
import { toolCallMessage } from './tools.ts';
import type { AssistantModel, ChatOutput, GenerateOptions, GenerationConfig, GenerationStats, Message, StreamEvent, TextOutput } from './types.ts';

export interface PipelineOptions {
  dtype?: LoadOptions['dtype'];
  /** Quantize the linear layers while loading ('q8' | 'q4'); see LoadOptions.quantize. */
  quantize?: LoadOptions['quantize'];
  /** Tokens of KV cache for the conversation (default: the engine's). */
  maxContext?: number;
  onProgress?: LoadOptions['onProgress'];
  gpu?: Gpu;
  /** For models without a chat template: 'plain' concatenates message contents (see PLAIN_FALLBACK). */
  templateFallback?: typeof PLAIN_FALLBACK;
  /** A Jinja chat template used instead of the model's (for models that ship none). */
  chatTemplate?: string;
  /** Load only the first n decoder layers: a truncated-layer draft for assisted generation. */
  numLayers?: number;
  /** Sequences generated together at most (a list of chats, or concurrent calls); default 1. */
  maxParallel?: number;
  /** Tokens of KV cache shared by the sequences (default maxContext × maxParallel). */
  kvTokens?: number;
  /** How the model writes tool calls, where its chat template doesn't show it (vLLM's --tool-call-parser). */
  toolCallParser?: ToolCallFormat;
}

/** The text a chat or string prompt renders to, and how it is encoded: the one prompt rule of every face. */
export interface RenderedPrompt {
  text: string;
  addSpecialTokens: boolean;
  /** A chat ending in an assistant message is continued, not answered. */
  continueFinalMessage: boolean;
}

export interface TextGenerationPipeline {
  (input: Message[], opts?: GenerateOptions): Promise<ChatOutput>;
  (input: string, opts?: GenerateOptions): Promise<TextOutput>;
  /** Several chats or strings, generated together (up to maxParallel at a time), outputs in input order. */
  (input: Message[][], opts?: GenerateOptions): Promise<ChatOutput[]>;
  (input: string[], opts?: GenerateOptions): Promise<TextOutput[]>;
  /** The same generation as a stream of text deltas. */
  stream(input: Message[] | string, opts?: GenerateOptions): AsyncIterable<StreamEvent>;
  /** The prompt text `input` renders to (template, plain fallback, continue_final_message). */
  renderPrompt(input: Message[] | string, opts?: GenerateOptions): RenderedPrompt;
  /** How the model writes reasoning and tool calls (read off its chat template). */
  readonly replyFormat: ReplyFormat;
  /**
   * A parser for the reply to a prompt (its text), or undefined where the reply is plain
   * text: no thinking tags or harmony channels, and no tools offered.
   */
  replyParser(promptText: string, tools: boolean): ReplyParser | undefined;
  /** Tokens of KV cache a call may use: prompt and reply together. */
  readonly maxContext: number;
  /** Statistics of the latest finished (or abandoned) call. */
  readonly lastStats: GenerationStats | undefined;
  readonly tokenizer: ChatTokenizer;
  readonly templates: ChatTemplates;
  readonly model: Model;
  /** The generation loop the calls run on (serve submits token-level requests to it directly). */
  readonly generator: Generator;
  /** The draft a GenerateOptions.assistant_model names, bound to this pipeline (loaded on first use). */
  assistant(a: AssistantModel): Promise<Assistant>;
  /** The defaults calls start from: Transformers' own, overridden by generation_config.json. */
  readonly generationConfig: GenerationConfig;
  /** Frees the generator, its KV cache and the model. */
  dispose(): void;
}

/** The folder's files besides the weights: tokenizer, chat templates and generation defaults. */
export interface ChatFiles {
  tokenizer: ChatTokenizer;
  templates: ChatTemplates;
  generationConfig: GenerationConfig;
}

export async function loadChatFiles(source: FileSource, opts: { chatTemplate?: string } = {}): Promise<ChatFiles> {
  const tokenizer = await ChatTokenizer.load(source);
  const templates = opts.chatTemplate !== undefined ? new ChatTemplates({ default: opts.chatTemplate }) : await ChatTemplates.load(source, tokenizer.config);
  const gen = await source.text('generation_config.json');
  let generationConfig: GenerationConfig = {};
  if (gen !== undefined) {
    try {
      generationConfig = parseGenerationConfigJson(JSON.parse(gen));
    } catch (e) {
      throw new GenerationConfigError(`${source.name}/generation_config.json is unreadable: ${(e as Error).message}`);
    }
  }
  return { tokenizer, templates, generationConfig };
}


/** Loads a model folder (a path, URL or FileSource) and returns Transformers' text-generation pipeline. */
export async function pipeline(task: 'text-generation', model: string | FileSource, opts: PipelineOptions = {}): Promise<TextGenerationPipeline> {
  if (task !== 'text-generation') throw new ChatInputError(`Unknown task ${JSON.stringify(task)}: only 'text-generation' is supported`);
  const source = toFileSource(model);
  const files = await loadChatFiles(source, opts);
  const load: LoadOptions = {};
  if (opts.dtype !== undefined) load.dtype = opts.dtype;
  if (opts.quantize !== undefined) load.quantize = opts.quantize;
  if (opts.maxContext !== undefined) load.maxContext = opts.maxContext;
  const kvTokens = opts.kvTokens ?? (opts.maxContext !== undefined ? opts.maxContext * (opts.maxParallel ?? 1) : undefined);
  if (kvTokens !== undefined) load.kvTokens = kvTokens;
  if (opts.onProgress !== undefined) load.onProgress = opts.onProgress;
  if (opts.gpu !== undefined) load.gpu = opts.gpu;
  if (opts.numLayers !== undefined) load.numLayers = opts.numLayers;
  const loaded = await loadModel(source, load);
  return createTextGenerationPipeline(loaded, files, opts);
}

/** Sequences a batch keeps beyond the running ones: finished sequences cached for prefix reuse. */
const CACHED_SEQUENCES = 8;
/**
 * Prompt tokens one step prefills beside other requests' decoding: a longer chunk stalls
 * their next token for longer (64 tokens cost about 1.7 s on a 0.5B model on lavapipe, tens
 * of ms on a GPU). A lone conversation has nobody to stall and takes the batch's whole step.
 */
const SHARED_PREFILL_CHUNK = 64;

interface Prepared {
  ids: number[];
  cfg: ResolvedGenerationConfig;
  /** The reply's text keeps special tokens for its parser. */
  keepSpecialTokens: boolean;
  output: (reply: string) => ChatOutput | TextOutput;
}

/** An assistant message from a parsed reply: content, reasoning_content and tool_calls (OpenAI's shape). */
function parsedReply(pieces: ReplyPiece[], format: ReplyFormat): Message {
  const m: Message = { role: 'assistant', content: '' };
  let reasoning = '';
  const calls = [];
  for (const p of pieces) {
    if (p.kind === 'tool_call') calls.push(toolCallMessage(p.call, format.toolCalls));
    else if (p.kind === 'content') m.content += p.text;
    else reasoning += p.text;
  }
  if (reasoning) m.reasoning_content = reasoning;
  if (calls.length) m.tool_calls = calls;
  return m;
}

/** The pipeline over an already loaded model (it takes ownership: dispose() frees it). */
export function createTextGenerationPipeline(
  model: Model,
  files: ChatFiles,
  opts: Pick<PipelineOptions, 'templateFallback' | 'maxContext' | 'maxParallel' | 'kvTokens' | 'toolCallParser'> = {},
): TextGenerationPipeline {
  const { tokenizer, templates, generationConfig } = files;
  const replyFormat = detectReplyFormat(templates.isEmpty ? undefined : templates.select(true), tokenizer, opts.toolCallParser);
  const replyParser = (promptText: string, tools: boolean): ReplyParser | undefined =>
    tools || replyFormat.thinking || replyFormat.toolCalls === 'harmony' ? createReplyParser(replyFormat, promptText, { tools }) : undefined;
  const maxParallel = opts.maxParallel ?? 1;
  const maxContext = Math.min(opts.maxContext ?? model.info.maxContext, model.info.maxPositionEmbeddings);
  const batch = model.createBatch({
    maxSequences: maxParallel + CACHED_SEQUENCES,
    maxContext,
    kvTokens: opts.kvTokens ?? maxContext * maxParallel,
    // Requests side by side get the tokens each gets alone, where that is cheap: the software
    // kernels then run a prompt chunk beside decode rows on the several-token matvec too (a
    // lone conversation has no neighbours, and keeps the faster matmul prefill).
    batchInvariant: maxParallel > 1 && model.info.variant === 'software',
  });
  const generator = new Generator(batch, tokenizer, model.info.vocabSize, { maxParallel, ...(maxParallel > 1 ? { prefillChunk: SHARED_PREFILL_CHUNK } : {}) });
  let last: GenerationStats | undefined;
  let disposed = false;
  // Assisted generation: one draft session per draft model; folders named by path are
  // loaded once and owned (freed with this pipeline).
  const assistants = new Map<Model, Assistant>();
  const ownedDrafts = new Map<string | FileSource, Promise<TextGenerationPipeline>>();

  const assistantFor = async (a: AssistantModel): Promise<Assistant> => {
    let draft: TextGenerationPipeline | Model;
    if (typeof a === 'string' || 'range' in a) {
      let loading = ownedDrafts.get(a);
      if (!loading) {
        loading = pipeline('text-generation', a, { maxContext: generator.maxContext, gpu: model.gpu });
        ownedDrafts.set(a, loading);
        loading.catch(() => ownedDrafts.delete(a));
      }
      draft = await loading;
    } else draft = a;
    const draftModel = typeof draft === 'function' ? draft.model : draft;
    let assistant = assistants.get(draftModel);
    if (!assistant) {
      assistant = Assistant.open({ model, maxContext: generator.maxContext, tokenizer }, typeof draft === 'function' ? { model: draft.model, tokenizer: draft.tokenizer } : { model: draft });
      assistants.set(draftModel, assistant);
    }
    return assistant;
  };


  const renderPrompt = (input: Message[] | string, o: GenerateOptions = {}): RenderedPrompt => {
    if (typeof input === 'string') return { text: input, addSpecialTokens: true, continueFinalMessage: false };
    validateMessages(input);
    // Transformers' pipeline: a chat ending in an assistant message is continued, not answered.
    const cont = o.continue_final_message ?? input[input.length - 1]!.role === 'assistant';
    const render = { ...o, continue_final_message: cont, add_generation_prompt: o.add_generation_prompt ?? !cont };
    // A template writes its own BOS and turn markers; the plain fallback needs the tokenizer's.
    if (templates.isEmpty && opts.templateFallback === 'plain') {
      // Joined contents have no place for tools or calls: refused rather than dropped.
      if (o.tools?.length) throw new ToolsUnsupportedError('This model has no chat template, so it cannot be offered tools');
      if (input.some((m) => m.tool_calls?.length)) throw new ChatInputError('This model has no chat template to write tool calls with: the chat has an assistant message with tool_calls');
      return { text: renderPlain(input), addSpecialTokens: true, continueFinalMessage: cont };
    }
    return { text: templates.render(input, tokenizer, render), addSpecialTokens: false, continueFinalMessage: cont };
  };

  const prepare = (input: Message[] | string, o: GenerateOptions): Prepared => {
    if (disposed) throw new ChatInputError('This pipeline has been disposed');
    const cfg = resolveGenerationConfig(generationConfig, o);
    const prompt = renderPrompt(input, o);
    const atLeast = tokenizer.minTokens(prompt.text);
    if (atLeast > generator.maxContext) throw new ContextLengthError(atLeast, generator.maxContext, true);
    const ids = tokenizer.encode(prompt.text, { addSpecialTokens: prompt.addSpecialTokens });
    if (typeof input === 'string') return { ids, cfg, keepSpecialTokens: false, output: (reply) => [{ generated_text: o.return_full_text ? input + reply : reply }] };
    // Offered tools, the reply is read for calls (and reasoning), as is a harmony reply (its
    // channels are markup); otherwise it is the text as Transformers gives it.
    const tools = (o.tools?.length ?? 0) > 0;
    const parser = (tools || replyFormat.toolCalls === 'harmony') && !prompt.continueFinalMessage ? replyParser(prompt.text, tools) : undefined;
    const output = (reply: string): ChatOutput => {
      const last = input[input.length - 1]!;
      if (prompt.continueFinalMessage) return [{ generated_text: [...input.slice(0, -1), { ...last, content: last.content + reply }] }];
      const message = parser ? parsedReply([...parser.push(reply), ...parser.end()], replyFormat) : { role: 'assistant' as const, content: reply };
      return [{ generated_text: [...input, message] }];
    };
    return { ids, cfg, keepSpecialTokens: parser !== undefined && replyFormat.keepSpecialTokens, output };
  };

  const start = async (p: Prepared, o: GenerateOptions, constraint: CompiledConstraint | undefined): Promise<Generation> =>
    generator.generate({
      promptIds: p.ids,
      config: p.cfg,
      signal: o.signal,
      keepSpecialTokens: p.keepSpecialTokens,
      ...(o.assistant_model !== undefined ? { assistant: await assistantFor(o.assistant_model) } : {}),
      ...(constraint ? { constraint } : {}),
    });

  /** Runs a generation to its end, passing its text to onText; its stats become lastStats. */
  async function* run(p: Prepared, o: GenerateOptions): AsyncGenerator<StreamEvent, GenerationResult | undefined> {
    const spec = responseFormatConstraint(o.response_format);
    const constraint = spec ? await compileConstraint(spec, tokenizer, model.info.vocabSize) : undefined;
    let gen: Generation;
    try {
      gen = await start(p, o, constraint);
    } catch (e) {
      constraint?.dispose();
      throw e;
    }
    try {
      for await (const e of gen) {
        if (e.delta) o.onText?.(e.delta);
        yield e;
      }
    } finally {
      const r = await gen.result.catch(() => undefined);
      if (r) last = r.stats;
      constraint?.dispose();
    }
    return gen.result;
  }

  async function* stream(input: Message[] | string, o: GenerateOptions = {}): AsyncGenerator<StreamEvent> {
    yield* run(prepare(input, o), o);
  }

  const one = async (input: Message[] | string, o: GenerateOptions): Promise<ChatOutput | TextOutput> => {
    const p = prepare(input, o);
    const it = run(p, o);
    let r = await it.next();
    while (!r.done) r = await it.next();
    return p.output(r.value?.text ?? '');
  };

  const call = async (input: Message[] | string | Message[][] | string[], o: GenerateOptions = {}) => {
    const many = Array.isArray(input) && input.length > 0 && (Array.isArray(input[0]) || typeof input[0] === 'string');
    if (!many) return one(input as Message[] | string, o);
    return Promise.all((input as (Message[] | string)[]).map((x) => one(x, o)));
  };

  return Object.defineProperties(call, {
    stream: { value: stream },
    renderPrompt: { value: renderPrompt },
    replyFormat: { value: replyFormat },
    replyParser: { value: replyParser },
    maxContext: { value: generator.maxContext },
    generator: { value: generator },
    assistant: { value: assistantFor },
    lastStats: { get: () => last },
    tokenizer: { value: tokenizer },
    templates: { value: templates },
    model: { value: model },
    generationConfig: { value: generationConfig },
    dispose: {
      value: () => {
        if (disposed) return;
        disposed = true;
        generator.dispose();
        for (const a of assistants.values()) a.dispose();
        for (const d of ownedDrafts.values()) d.then((p) => p.dispose(), () => {});
        batch.dispose();
        model.dispose();
      },
    },
  }) as unknown as TextGenerationPipeline;
}
