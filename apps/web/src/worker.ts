// The engine's side of the page: owns the GPU device, the loaded pipeline and the
// browser's model cache. The page sends Requests (protocol.ts) and renders the Replies.

import { pipeline, PLAIN_FALLBACK, type TextGenerationPipeline } from '@webgpu-chat/chat';
import { blobSource, describeGpu, getGpu, urlSource, type FileSource } from '@webgpu-chat/engine';
import { cacheApiStore, cachingSource, groupByFolder, type CachingSource } from './cache.ts';
import { hubFolderUrl, type FileRead, type ModelSpec, type Reply, type Request } from './protocol.ts';

const scope = self as unknown as DedicatedWorkerGlobalScope;
const store = cacheApiStore();
let chat: TextGenerationPipeline | undefined;
/** The draft model generations are decoded with (speculative decoding), if any. */
let draft: TextGenerationPipeline | undefined;
let stopper: AbortController | undefined;

const send = (r: Reply) => scope.postMessage(r);

/** fetch() rejects with a bare "Failed to fetch" TypeError: say which server and the usual causes. */
class NetworkError extends Error {
  override name = 'NetworkError';
}

interface OpenedSource {
  source: FileSource;
  cache?: CachingSource;
  name: string;
  /** The same folder again, without progress reports: where a self-q4 draft reads (from the browser cache once persisted). */
  again: () => FileSource;
}

function openSource(spec: ModelSpec, useCache: boolean, onRead: (r: FileRead) => void): OpenedSource {
  if (spec.kind === 'files') {
    const files = () => blobSource(new Map(spec.files.map((f) => [f.path, f.blob])), spec.name);
    return { source: files(), name: spec.name, again: files };
  }
  const folder = spec.kind === 'hub' ? hubFolderUrl(spec.endpoint, spec.repo, spec.revision) : spec.url.replace(/\/+$/, '');
  const name = spec.kind === 'hub' ? spec.repo : folder;
  const net = urlSource(folder);
  if (!useCache) return { source: net, name, again: () => net };
  const cache = cachingSource(net, folder, store, onRead);
  return { source: cache, cache, name, again: () => cachingSource(net, folder, store) };
}

function disposeModels(): void {
  draft?.dispose();
  draft = undefined;
  chat?.dispose();
  chat = undefined;
}

async function load(req: Extract<Request, { type: 'load' }>): Promise<void> {
  stopper?.abort();
  disposeModels();
  const reads = new Map<string, FileRead>();
  const onRead = (r: FileRead) => {
    const seen = reads.get(r.file);
    const total = { ...r, bytes: (seen?.bytes ?? 0) + r.bytes };
    reads.set(r.file, total);
    send({ type: 'file', read: total });
  };
  const { source, cache, name, again } = openSource(req.model, req.useCache, onRead);
  const gpu = await getGpu();
  let p: TextGenerationPipeline;
  try {
    p = await pipeline('text-generation', source, {
      gpu,
      dtype: req.dtype,
      maxContext: req.maxContext,
      ...(req.quantize ? { quantize: req.quantize } : {}),
      templateFallback: PLAIN_FALLBACK,
      onProgress: (progress) => send({ type: 'progress', progress }),
    });
  } catch (e) {
    if (e instanceof TypeError && /fetch/i.test(e.message)) {
      throw new NetworkError(`could not reach ${source.name} (${e.message}): offline, blocked, or the server does not allow cross-origin requests`);
    }
    throw e;
  }
  chat = p;
  // The model is usable even when the browser refuses to store it (quota, private mode).
  let cacheError: string | undefined;
  try {
    await cache?.persist();
  } catch (e) {
    cacheError = `${(e as Error).name}: ${(e as Error).message}`;
  }
  if (req.draft === 'self-q4') {
    try {
      draft = await pipeline('text-generation', again(), {
        gpu,
        dtype: req.dtype,
        maxContext: req.maxContext,
        quantize: 'q4',
        templateFallback: PLAIN_FALLBACK,
        onProgress: (progress) => send({ type: 'progress', progress: { ...progress, file: `draft (q4): ${progress.file}` } }),
      });
    } catch (e) {
      disposeModels();
      throw e;
    }
  }
  const info = p.model.info;
  const q = info.quantization;
  send({
    type: 'loaded',
    model: {
      name,
      modelType: info.modelType,
      dtype: info.dtype,
      weightBytes: info.weightBytes,
      ...(q ? { quantization: `${q.method} (${q.bits}-bit, group ${q.groupSize})` } : {}),
      ...(draft ? { draft: { name: 'self-q4' as const, weightBytes: draft.model.info.weightBytes } } : {}),
      maxContext: Math.min(req.maxContext, info.maxPositionEmbeddings),
      hasChatTemplate: !p.templates.isEmpty,
    },
    files: [...reads.values()],
    ...(cacheError ? { cacheError } : {}),
  });
}

async function generate(req: Extract<Request, { type: 'generate' }>): Promise<void> {
  if (!chat) throw new Error('no model is loaded: load one first');
  stopper = new AbortController();
  const p = chat;
  const assisted = draft ? { assistant_model: draft } : {};
  for await (const ev of p.stream(req.messages, { ...req.config, ...assisted, signal: stopper.signal })) {
    send({ type: 'token', delta: ev.delta, tokenId: ev.tokenId });
  }
  if (p.lastStats) send({ type: 'done', stats: p.lastStats });
}

async function handle(req: Request): Promise<void> {
  switch (req.type) {
    case 'gpu': {
      const gpu = await getGpu();
      send({ type: 'gpu', gpu: { info: gpu.info, hasF16: gpu.hasF16, description: describeGpu(gpu.info) } });
      return;
    }
    case 'load':
      return load(req);
    case 'generate':
      return generate(req);
    case 'stop':
      stopper?.abort();
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
    send({ type: 'error', op: req.type, name: err.name, message: err.message });
  });
};
