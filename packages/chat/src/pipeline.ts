// pipeline('text-generation', model): Transformers' TextGenerationPipeline over our
// engine. Call it with a chat (list of messages) to get the chat back with the
// assistant's reply appended, or with a string to get the continuation. One engine
// session per pipeline: successive calls reuse the KV cache of the shared prefix, so a
// multi-turn chat only prefills the new turn.

import { loadModel, toFileSource, type FileSource, type Gpu, type LoadOptions, type Model } from '@webgpu-chat/engine';
import { ChatInputError, ContextLengthError, GenerationConfigError } from './errors.ts';
import { SessionGenerator, type RunOptions } from './generate.ts';
import { parseGenerationConfigJson, resolveGenerationConfig, type ResolvedGenerationConfig } from './sampling.ts';
import { Assistant } from './speculative.ts';
import { ChatTemplates, renderPlain, validateMessages, type PLAIN_FALLBACK } from './template.ts';
import { ChatTokenizer } from './tokenizer.ts';
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
}

/** A prompt already rendered and encoded with renderPrompt (a server tokenizes off its event loop). */
export interface EncodedPrompt {
  promptIds: readonly number[];
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
  /** The same generation as a stream of text deltas. */
  stream(input: Message[] | string | EncodedPrompt, opts?: GenerateOptions): AsyncIterable<StreamEvent>;
  /** The prompt text `input` renders to (template, plain fallback, continue_final_message). */
  renderPrompt(input: Message[] | string, opts?: GenerateOptions): RenderedPrompt;
  /** Tokens of KV cache a call may use: prompt and reply together. */
  readonly maxContext: number;
  /** Statistics of the latest finished (or abandoned) call. */
  readonly lastStats: GenerationStats | undefined;
  readonly tokenizer: ChatTokenizer;
  readonly templates: ChatTemplates;
  readonly model: Model;
  /** The defaults calls start from: Transformers' own, overridden by generation_config.json. */
  readonly generationConfig: GenerationConfig;
  /** Frees the session and the model. */
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
  if (opts.onProgress !== undefined) load.onProgress = opts.onProgress;
  if (opts.gpu !== undefined) load.gpu = opts.gpu;
  if (opts.numLayers !== undefined) load.numLayers = opts.numLayers;
  const loaded = await loadModel(source, load);
  return createTextGenerationPipeline(loaded, files, opts);
}

/** Serializes calls: they share one session. */
class Mutex {
  private tail: Promise<void> = Promise.resolve();
  lock(): Promise<() => void> {
    let release!: () => void;
    const next = new Promise<void>((r) => (release = r));
    const ready = this.tail.then(() => release);
    this.tail = this.tail.then(() => next);
    return ready;
  }
}

interface Prepared {
  ids: number[];
  cfg: ResolvedGenerationConfig;
  output: (reply: string) => ChatOutput | TextOutput;
}

/** The pipeline over an already loaded model (it takes ownership: dispose() frees it). */
export function createTextGenerationPipeline(model: Model, files: ChatFiles, opts: Pick<PipelineOptions, 'templateFallback' | 'maxContext'> = {}): TextGenerationPipeline {
  const { tokenizer, templates, generationConfig } = files;
  const session = model.createSession(opts.maxContext !== undefined ? { maxContext: opts.maxContext } : {});
  const generator = new SessionGenerator(session, tokenizer, model.info.vocabSize);
  const mutex = new Mutex();
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
        loading = pipeline('text-generation', a, { maxContext: session.maxContext, gpu: model.gpu });
        ownedDrafts.set(a, loading);
        loading.catch(() => ownedDrafts.delete(a));
      }
      draft = await loading;
    } else draft = a;
    const draftModel = typeof draft === 'function' ? draft.model : draft;
    let assistant = assistants.get(draftModel);
    if (!assistant) {
      assistant = Assistant.open({ model, session, tokenizer }, typeof draft === 'function' ? { model: draft.model, tokenizer: draft.tokenizer } : { model: draft });
      assistants.set(draftModel, assistant);
    }
    return assistant;
  };

  const runOptions = async (o: GenerateOptions): Promise<RunOptions> => (o.assistant_model === undefined ? o : { ...o, assistant: await assistantFor(o.assistant_model) });

  const renderPrompt = (input: Message[] | string, o: GenerateOptions = {}): RenderedPrompt => {
    if (typeof input === 'string') return { text: input, addSpecialTokens: true, continueFinalMessage: false };
    validateMessages(input);
    // Transformers' pipeline: a chat ending in an assistant message is continued, not answered.
    const cont = o.continue_final_message ?? input[input.length - 1]!.role === 'assistant';
    const render = { ...o, continue_final_message: cont, add_generation_prompt: o.add_generation_prompt ?? !cont };
    // A template writes its own BOS and turn markers; the plain fallback needs the tokenizer's.
    if (templates.isEmpty && opts.templateFallback === 'plain') return { text: renderPlain(input), addSpecialTokens: true, continueFinalMessage: cont };
    return { text: templates.render(input, tokenizer, render), addSpecialTokens: false, continueFinalMessage: cont };
  };

  const prepare = (input: Message[] | string | EncodedPrompt, o: GenerateOptions): Prepared => {
    if (disposed) throw new ChatInputError('This pipeline has been disposed');
    const cfg = resolveGenerationConfig(generationConfig, o);
    if (typeof input === 'object' && 'promptIds' in input) return { ids: Array.from(input.promptIds), cfg, output: () => [{ generated_text: '' }] };
    const prompt = renderPrompt(input, o);
    const atLeast = tokenizer.minTokens(prompt.text);
    if (atLeast > session.maxContext) throw new ContextLengthError(atLeast, session.maxContext, true);
    const ids = tokenizer.encode(prompt.text, { addSpecialTokens: prompt.addSpecialTokens });
    if (typeof input === 'string') return { ids, cfg, output: (reply) => [{ generated_text: o.return_full_text ? input + reply : reply }] };
    const output = (reply: string): ChatOutput => {
      const last = input[input.length - 1]!;
      const chat = prompt.continueFinalMessage ? [...input.slice(0, -1), { ...last, content: last.content + reply }] : [...input, { role: 'assistant' as const, content: reply }];
      return [{ generated_text: chat }];
    };
    return { ids, cfg, output };
  };

  async function* stream(input: Message[] | string | EncodedPrompt, o: GenerateOptions = {}): AsyncGenerator<StreamEvent> {
    const p = prepare(input, o);
    const release = await mutex.lock();
    try {
      yield* generator.stream(p.ids, p.cfg, await runOptions(o));
    } finally {
      release();
    }
  }

  const call = async (input: Message[] | string, o: GenerateOptions = {}): Promise<ChatOutput | TextOutput> => {
    const p = prepare(input, o);
    const release = await mutex.lock();
    try {
      const r = await generator.run(p.ids, p.cfg, await runOptions(o));
      return p.output(r.text);
    } finally {
      release();
    }
  };

  return Object.defineProperties(call, {
    stream: { value: stream },
    renderPrompt: { value: renderPrompt },
    maxContext: { value: session.maxContext },
    lastStats: { get: () => generator.lastResult?.stats },
    tokenizer: { value: tokenizer },
    templates: { value: templates },
    model: { value: model },
    generationConfig: { value: generationConfig },
    dispose: {
      value: () => {
        if (disposed) return;
        disposed = true;
        for (const a of assistants.values()) a.dispose();
        for (const d of ownedDrafts.values()) d.then((p) => p.dispose(), () => {});
        session.dispose();
        model.dispose();
      },
    },
  }) as unknown as TextGenerationPipeline;
}
