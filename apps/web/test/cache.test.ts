// The caching FileSource under Node, over an in-memory store: a first load reads the
// network and stores whole files (including bytes the loader skipped), a second load
// reads nothing from the network.

import { describe, expect, it } from 'vitest';
import type { FileSource } from '@webgpu-chat/engine';
import { cachingSource, groupByFolder, type BlobStore } from '../src/cache.ts';

function memoryStore(): BlobStore & { data: Map<string, Blob | null> } {
  const data = new Map<string, Blob | null>();
  return {
    data,
    async get(key) {
      return data.get(key);
    },
    async put(key, blob) {
      data.set(key, blob);
    },
    async list() {
      return [...data].filter(([, b]) => b).map(([key, b]) => ({ key, bytes: b!.size }));
    },
    async clear() {
      data.clear();
    },
  };
}

/** A folder in memory that counts every read. */
function countingSource(files: Record<string, Uint8Array | string>): FileSource & { reads: string[] } {
  const reads: string[] = [];
  const bytes = (p: string) => {
    const f = files[p];
    return typeof f === 'string' ? new TextEncoder().encode(f) : f;
  };
  return {
    name: 'memory',
    reads,
    async text(p) {
      reads.push(`text ${p}`);
      const f = files[p];
      return f === undefined ? undefined : typeof f === 'string' ? f : new TextDecoder().decode(f);
    },
    async size(p) {
      reads.push(`size ${p}`);
      return bytes(p)?.length;
    },
    async range(p, start, end) {
      reads.push(`range ${p} ${start}-${end}`);
      const b = bytes(p);
      if (!b) throw new Error(`missing ${p}`);
      return b.slice(start, end);
    },
  };
}

const weights = Uint8Array.from({ length: 1000 }, (_, i) => (i * 7) % 251);

describe('cachingSource', () => {
  it('stores whole files on persist and serves the next load without the network', async () => {
    const net = countingSource({ 'config.json': '{"a":1}', 'w.bin': weights });
    const store = memoryStore();
    const first = cachingSource(net, 'https://host/m/', store);
    expect(await first.text('config.json')).toBe('{"a":1}');
    expect(await first.text('chat_template.jinja')).toBeUndefined();
    expect(await first.size('w.bin')).toBe(1000);
    // Overlapping and gapped reads, out of order: persist must fill [0,10), [500,600) and [900,1000).
    expect(await first.range('w.bin', 100, 500)).toEqual(weights.slice(100, 500));
    expect(await first.range('w.bin', 10, 200)).toEqual(weights.slice(10, 200));
    expect(await first.range('w.bin', 600, 900)).toEqual(weights.slice(600, 900));
    expect(store.data.size).toBe(0);
    await first.persist();
    expect(new Uint8Array(await store.data.get('https://host/m/w.bin')!.arrayBuffer())).toEqual(weights);
    expect(store.data.get('https://host/m/chat_template.jinja')).toBeNull();

    net.reads.length = 0;
    const reads: string[] = [];
    const second = cachingSource(net, 'https://host/m', store, (r) => reads.push(`${r.file} ${r.fromCache}`));
    expect(await second.text('config.json')).toBe('{"a":1}');
    expect(await second.text('chat_template.jinja')).toBeUndefined();
    expect(await second.size('w.bin')).toBe(1000);
    expect(await second.range('w.bin', 995, 1000)).toEqual(weights.slice(995, 1000));
    await expect(second.range('w.bin', 995, 1001)).rejects.toThrow(/runs past its end/);
    await second.persist();
    expect(net.reads).toEqual([]);
    expect(reads).toEqual(['config.json true', 'w.bin true']);
  });

  it('stores nothing when the load never reaches persist', async () => {
    const net = countingSource({ 'config.json': '{' });
    const store = memoryStore();
    const src = cachingSource(net, 'https://host/m', store);
    await src.text('config.json');
    expect(store.data.size).toBe(0);
  });

  it('groups stored files by folder', () => {
    expect(groupByFolder([{ key: 'https://h/a/b/x.json', bytes: 3 }, { key: 'https://h/a/b/y.bin', bytes: 5 }, { key: 'https://h/c/x.json', bytes: 1 }])).toEqual([
      { folder: 'https://h/a/b', files: [{ name: 'x.json', bytes: 3 }, { name: 'y.bin', bytes: 5 }] },
      { folder: 'https://h/c', files: [{ name: 'x.json', bytes: 1 }] },
    ]);
  });
});
