// The engine's side of the page: owns the GPU device, the loaded pipeline and the
// browser's model cache. The page sends Requests (protocol.ts) and renders the Replies.
// Loads and replies run one at a time, in the order asked: a reply starts after the last
// has ended, and a load stops the running reply first.

import { eosIds, pipeline, PLAIN_FALLBACK, resolveGenerationConfig, type ReplyPiece, type TextGenerationPipeline } from '@webgpu-chat/chat';
import { blobSource, describeGpu, getGpu, type FileSource } from '@webgpu-chat/engine';
import { cacheApiStore, cachingSource, groupByFolder, type CachingSource } from './cache.ts';
import { modelUrlSource, requireConfig } from './model-url-source.ts';
import { hubFolderUrl, type FileRead, type LoadedModel, type ModelSpec, type Reply, type Request } from './protocol.ts';
import { stopReason } from './stop-reason.ts';

const scope = self as unknown as DedicatedWorkerGlobalScope;
const store = cacheApiStore();

interface Loaded {
  chat: TextGenerationPipeline;
  /** The draft replies are decoded with (speculative decoding), if any. */
  draft: TextGenerationPipeline | undefined;
  name: string;
}
let loaded: Loaded | undefined;
/** The reply being generated: its id and its stop switch. */
let running: { id: number; stopper: AbortController } | undefined;
/** Replies stopped before their turn came (ids rise, so one at or below the last started has ended). */
const stoppedEarly = new Set<number>();
let lastStarted = -1;
/** Loads and replies, one after another. */
let queue: Promise<unknown> = Promise.resolve();

function inTurn<T>(op: () => Promise<T>): Promise<T> {
  const done = queue.then(op);
  queue = done.catch(() => {});
  return done;
}

const send = (r: Reply) => scope.postMessage(r);

/** fetch() rejects with a bare "Failed to fetch" TypeError: say which server and the usual causes. */
class NetworkError extends Error {
  override name = 'NetworkError';
}

/** A prompt of a few tokens: a warm-up reply compiles the prefill and decode kernels before the first real one. */
const WARM_UP_PROMPT = 'Hello there';

interface OpenedSource {
  source: FileSource;
  cache?: CachingSource;
  name: string;
  /** Why a file read as missing, where the source can tell. */
  missingBecause: (path: string) => string | undefined;
  /** The same folder again, without progress reports: where a self-q4 draft reads (from the browser cache once persisted). */
  again: () => FileSource;
}

function openSource(spec: ModelSpec, useCache: boolean, onRead: (r: FileRead) => void): OpenedSource {
  if (spec.kind === 'files') {
    const files = () => blobSource(new Map(spec.files.map((f) => [f.path, f.blob])), spec.name);
    return { source: files(), name: spec.name, again: files, missingBecause: () => undefined };
  }
  const folder = spec.kind === 'hub' ? hubFolderUrl(spec.endpoint, spec.repo, spec.revision) : spec.url.replace(/\/+$/, '');
  const name = spec.kind === 'hub' ? spec.repo : (spec.name ?? folder);
  const net = modelUrlSource(folder);
  const opened = { name, missingBecause: net.missingBecause };
  if (!useCache) return { ...opened, source: net, again: () => net };
  const cache = cachingSource(net, folder, store, onRead);
  return { ...opened, source: cache, cache, again: () => cachingSource(net, folder, store) };
}

function dispose(m: Loaded | undefined): void {
  m?.draft?.dispose();
  m?.chat.dispose();
}

const networkError = (e: unknown, where: string) =>
  e instanceof TypeError && /fetch/i.test(e.message)
    ? new NetworkError(`could not reach ${where} (${e.message}): offline, blocked, or the server does not allow cross-origin requests`)
    : e;

/**
 * Loads the new model beside the working one, which is dropped only once the new one is
 * ready: a load that fails leaves the page with the model it had.
 */
async function load(req: Extract<Request, { type: 'load' }>): Promise<void> {
  const reads = new Map<string, FileRead>();
  const onRead = (r: FileRead) => {
    const seen = reads.get(r.file);
    const total = { ...r, bytes: (seen?.bytes ?? 0) + r.bytes };
    reads.set(r.file, total);
    send({ type: 'file', read: total });
  };
  const { source, cache, name, again, missingBecause } = openSource(req.model, req.useCache, onRead);
  const gpu = await getGpu();
  const opts = { gpu, dtype: req.dtype, maxContext: req.maxContext, templateFallback: PLAIN_FALLBACK } as const;
  let next: Loaded | undefined;
  try {
    await requireConfig(source, missingBecause);
    const chat = await pipeline('text-generation', source, {
      ...opts,
      ...(req.quantize ? { quantize: req.quantize } : {}),
      onProgress: (progress) => send({ type: 'progress', progress }),
    });
    next = { chat, draft: undefined, name };
    if (req.draft === 'self-q4') {
      next.draft = await pipeline('text-generation', again(), {
        ...opts,
        quantize: 'q4',
        onProgress: (progress) => send({ type: 'progress', progress: { ...progress, file: `draft (q4): ${progress.file}` } }),
      });
    }
    send({ type: 'compiling' });
    for await (const _ of chat.stream(WARM_UP_PROMPT, { do_sample: false, max_new_tokens: 2 }));
  } catch (e) {
    dispose(next);
    throw networkError(e, source.name);
  }
  // The model is usable even when the browser refuses to store it (quota, private mode).
  let cacheError: string | undefined;
  try {
    await cache?.persist();
  } catch (e) {
    cacheError = `${(e as Error).name}: ${(e as Error).message}`;
  }
  dispose(loaded);
  loaded = next;
  send({ type: 'loaded', model: describe(next, req.maxContext), files: [...reads.values()], ...(cacheError ? { cacheError } : {}) });
}

function describe(m: Loaded, maxContext: number): LoadedModel {
  const info = m.chat.model.info;
  const q = info.quantization;
  return {
    name: m.name,
    modelType: info.modelType,
    dtype: info.dtype,
    weightBytes: info.weightBytes,
    ...(q ? { quantization: `${q.method} (${q.bits}-bit, group ${q.groupSize})` } : {}),
    ...(m.draft ? { draft: { name: 'self-q4' as const, weightBytes: m.draft.model.info.weightBytes } } : {}),
    maxContext: Math.min(maxContext, info.maxPositionEmbeddings),
    hasChatTemplate: !m.chat.templates.isEmpty,
  };
}

async function generate(req: Extract<Request, { type: 'generate' }>): Promise<void> {
  lastStarted = req.id;
  const stoppedBefore = stoppedEarly.delete(req.id);
  if (!loaded) throw new Error('no model is loaded: load one first');
  const { chat, draft } = loaded;
  const stopper = new AbortController();
  if (stoppedBefore) stopper.abort();
  running = { id: req.id, stopper };
  try {
    const cfg = resolveGenerationConfig(chat.generationConfig, req.config);
    let last: number | null = null;
    // A constrained reply (JSON mode) decodes without the draft, whose proposals the mask would
    // overrule; prompt lookup replaces the draft model (one drafter at a time), as on serve.
    const assisted = draft && !req.responseFormat && !req.config.prompt_lookup_num_tokens ? { assistant_model: draft } : {};
    const options = { ...req.config, ...assisted, ...(req.tools ? { tools: req.tools } : {}), ...(req.responseFormat ? { response_format: req.responseFormat } : {}), signal: stopper.signal };
    // Reasoning and tool calls are split from the answer wherever the model's format marks them.
    const parser = chat.replyParser(chat.renderPrompt(req.messages, options).text, (req.tools?.length ?? 0) > 0);
    const forward = (pieces: ReplyPiece[], tokenId: number | null) => {
      let text = '';
      for (const p of pieces) {
        if (p.kind === 'content') text += p.text;
        else if (p.kind === 'reasoning') send({ type: 'reasoning', id: req.id, delta: p.text });
        else send({ type: 'tool-call', id: req.id, call: p.call });
      }
      send({ type: 'token', id: req.id, delta: text, tokenId });
    };
    for await (const ev of chat.stream(req.messages, options)) {
      if (ev.tokenId !== null) last = ev.tokenId;
      if (parser) forward(parser.push(ev.delta), ev.tokenId);
      else send({ type: 'token', id: req.id, delta: ev.delta, tokenId: ev.tokenId });
    }
    if (parser) forward(parser.end(), null);
    const stats = chat.lastStats;
    if (stats) send({ type: 'done', id: req.id, stats, stopReason: stopReason(stats, last, eosIds(cfg.eos_token_id, chat.tokenizer), cfg.max_new_tokens) });
  } finally {
    running = undefined;
  }
}

async function handle(req: Request): Promise<void> {
  switch (req.type) {
    case 'gpu': {
      const gpu = await getGpu();
      send({ type: 'gpu', gpu: { info: gpu.info, hasF16: gpu.hasF16, description: describeGpu(gpu.info) } });
      return;
    }
    case 'load':
      running?.stopper.abort();
      return inTurn(() => load(req));
    case 'generate':
      return inTurn(() => generate(req));
    case 'stop':
      if (running?.id === req.id) running.stopper.abort();
      else if (req.id > lastStarted) stoppedEarly.add(req.id);
      return;
    case 'cache-list':
      send({ type: 'cache', entries: groupByFolder(await store.list()) });
      return;
    case 'cache-clear':
      await store.clear();
      send({ type: 'cache', entries: [] });
      return;
  }
}

scope.onmessage = (ev: MessageEvent<Request>) => {
  const req = ev.data;
  handle(req).catch((e: unknown) => {
    const err = e instanceof Error ? e : new Error(String(e));
    send({
      type: 'error',
      op: req.type,
      name: err.name,
      message: err.message,
      ...(req.type === 'generate' ? { id: req.id } : {}),
      ...(req.type === 'load' && loaded ? { kept: loaded.name } : {}),
    });
  });
};
