// The engine's side of the page: owns the GPU device, the loaded pipeline and the
// browser's model cache. The page sends Requests (protocol.ts) and renders the Replies.

import { pipeline, PLAIN_FALLBACK, type TextGenerationPipeline } from '@webgpu-chat/chat';
import { blobSource, describeGpu, getGpu, urlSource, type FileSource } from '@webgpu-chat/engine';
import { cacheApiStore, cachingSource, groupByFolder, type CachingSource } from './cache.ts';
import { hubFolderUrl, type FileRead, type ModelSpec, type Reply, type Request } from './protocol.ts';

const scope = self as unknown as DedicatedWorkerGlobalScope;
const store = cacheApiStore();
let chat: TextGenerationPipeline | undefined;
let stopper: AbortController | undefined;

const send = (r: Reply) => scope.postMessage(r);

/** fetch() rejects with a bare "Failed to fetch" TypeError: say which server and the usual causes. */
class NetworkError extends Error {
  override name = 'NetworkError';
}

function openSource(spec: ModelSpec, useCache: boolean, onRead: (r: FileRead) => void): { source: FileSource; cache?: CachingSource; name: string } {
  if (spec.kind === 'files') {
    return { source: blobSource(new Map(spec.files.map((f) => [f.path, f.blob])), spec.name), name: spec.name };
  }
  const folder = spec.kind === 'hub' ? hubFolderUrl(spec.endpoint, spec.repo, spec.revision) : spec.url.replace(/\/+$/, '');
  const name = spec.kind === 'hub' ? spec.repo : folder;
  const net = urlSource(folder);
  if (!useCache) return { source: net, name };
  const cache = cachingSource(net, folder, store, onRead);
  return { source: cache, cache, name };
}

async function load(req: Extract<Request, { type: 'load' }>): Promise<void> {
  stopper?.abort();
  chat?.dispose();
  chat = undefined;
  const reads = new Map<string, FileRead>();
  const onRead = (r: FileRead) => {
    const seen = reads.get(r.file);
    const total = { ...r, bytes: (seen?.bytes ?? 0) + r.bytes };
    reads.set(r.file, total);
    send({ type: 'file', read: total });
  };
  const { source, cache, name } = openSource(req.model, req.useCache, onRead);
  const gpu = await getGpu();
  let p: TextGenerationPipeline;
  try {
    p = await pipeline('text-generation', source, {
      gpu,
      dtype: req.dtype,
      maxContext: req.maxContext,
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
  const info = p.model.info;
  send({
    type: 'loaded',
    model: {
      name,
      modelType: info.modelType,
      dtype: info.dtype,
      weightBytes: info.weightBytes,
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
  for await (const ev of p.stream(req.messages, { ...req.config, signal: stopper.signal })) {
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
