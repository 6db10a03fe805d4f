// Keeps a downloaded model folder in the browser so the next load is offline and fast.
// cachingSource wraps a network FileSource: a stored file is served from its Blob
// (ranges are Blob slices), a missing one is read from the network while the pieces the
// loader asked for are kept; persist() then fetches whatever the loader skipped and
// stores each file whole. Files the folder lacks are stored as missing, so an offline
// load does not ask the network whether an optional file exists.

import type { FileSource } from '@webgpu-chat/engine';
import type { CacheEntry, FileRead } from './protocol.ts';

/** Blobs by key (a file's URL). */
export interface BlobStore {
  /** The stored file, null when it is stored as missing, undefined when not stored. */
  get(key: string): Promise<Blob | null | undefined>;
  put(key: string, blob: Blob | null): Promise<void>;
  /** Every stored key with its size in bytes (missing files are left out). */
  list(): Promise<{ key: string; bytes: number }[]>;
  clear(): Promise<void>;
}

const CACHE_NAME = 'webgpu-chat-models';
/** Cache.put keeps headers, so the size is known without reading the body. */
const SIZE_HEADER = 'x-file-size';

/** The Cache API (window or worker, secure contexts only). */
export function cacheApiStore(name = CACHE_NAME): BlobStore {
  const open = () => {
    if (typeof caches === 'undefined') throw new Error('the Cache API is unavailable (the page must be served over https or from localhost)');
    return caches.open(name);
  };
  return {
    async get(key) {
      const res = await (await open()).match(key);
      if (!res) return undefined;
      return res.status === 404 ? null : res.blob();
    },
    async put(key, blob) {
      const res = blob
        ? new Response(blob, { headers: { 'content-type': 'application/octet-stream', [SIZE_HEADER]: String(blob.size) } })
        : new Response(null, { status: 404 });
      await (await open()).put(key, res);
    },
    async list() {
      const cache = await open();
      const out: { key: string; bytes: number }[] = [];
      for (const req of await cache.keys()) {
        const res = await cache.match(req);
        if (res && res.status !== 404) out.push({ key: req.url, bytes: Number(res.headers.get(SIZE_HEADER) ?? 0) });
      }
      return out;
    },
    async clear() {
      if (typeof caches !== 'undefined') await caches.delete(name);
    },
  };
}

/** Stored files grouped by model folder. */
export function groupByFolder(items: { key: string; bytes: number }[]): CacheEntry[] {
  const folders = new Map<string, CacheEntry>();
  for (const { key, bytes } of items) {
    const cut = key.lastIndexOf('/');
    const folder = key.slice(0, cut);
    let entry = folders.get(folder);
    if (!entry) folders.set(folder, (entry = { folder, files: [] }));
    entry.files.push({ name: key.slice(cut + 1), bytes });
  }
  return [...folders.values()];
}

export interface CachingSource extends FileSource {
  /** Stores the files read so far whole, fetching the byte ranges the loader skipped. */
  persist(): Promise<void>;
}

interface Partial {
  size: number;
  /** Pieces read from the network, by start offset. */
  pieces: Map<number, Blob>;
}

export function cachingSource(inner: FileSource, folderKey: string, store: BlobStore, onRead?: (r: FileRead) => void): CachingSource {
  const key = (path: string) => `${folderKey.replace(/\/+$/, '')}/${path}`;
  const partial = new Map<string, Partial>();
  const stored = new Map<string, Blob | null>();
  /** Written by persist() only, so a load that fails (a malformed file) leaves nothing behind. */
  const toStore = new Map<string, Blob | null>();

  const lookup = async (path: string): Promise<Blob | null | undefined> => {
    if (stored.has(path)) return stored.get(path);
    const hit = await store.get(key(path));
    if (hit !== undefined) {
      stored.set(path, hit);
      if (hit) onRead?.({ file: path, bytes: hit.size, fromCache: true });
    }
    return hit;
  };

  return {
    name: inner.name,
    async text(path) {
      const hit = await lookup(path);
      if (hit !== undefined) return hit?.text();
      const text = await inner.text(path);
      const blob = text === undefined ? null : new Blob([text]);
      toStore.set(path, blob);
      if (blob) onRead?.({ file: path, bytes: blob.size, fromCache: false });
      return text;
    },
    async size(path) {
      const hit = await lookup(path);
      if (hit !== undefined) return hit?.size;
      const size = await inner.size(path);
      if (size === undefined) toStore.set(path, null);
      else if (!partial.has(path)) partial.set(path, { size, pieces: new Map() });
      return size;
    },
    async range(path, start, end) {
      const hit = await lookup(path);
      if (hit) {
        if (end > hit.size) throw new Error(`byte range [${start}, ${end}) of cached '${path}' runs past its end (${hit.size} bytes): clear the cache`);
        return new Uint8Array(await hit.slice(start, end).arrayBuffer());
      }
      const bytes = await inner.range(path, start, end);
      const p = partial.get(path);
      if (p) {
        p.pieces.set(start, new Blob([bytes as Uint8Array<ArrayBuffer>]));
        onRead?.({ file: path, bytes: end - start, fromCache: false });
      }
      return bytes;
    },
    async persist() {
      for (const [path, p] of partial) {
        if (toStore.has(path)) continue;
        const parts: Blob[] = [];
        let at = 0;
        for (const [start, blob] of [...p.pieces].sort((a, b) => a[0] - b[0])) {
          const end = start + blob.size;
          if (end <= at) continue;
          if (start > at) parts.push(new Blob([(await inner.range(path, at, start)) as Uint8Array<ArrayBuffer>]));
          parts.push(start < at ? blob.slice(at - start) : blob);
          at = end;
        }
        if (at < p.size) parts.push(new Blob([(await inner.range(path, at, p.size)) as Uint8Array<ArrayBuffer>]));
        toStore.set(path, new Blob(parts));
      }
      partial.clear();
      for (const [path, blob] of toStore) await store.put(key(path), blob);
      toStore.clear();
    },
  };
}
