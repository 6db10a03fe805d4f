import { createServer, type Server } from 'node:http';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { blobSource, directorySource, FileSourceError, urlSource } from '../src/files.ts';
import type { FileSource } from '../src/types.ts';

const data = new Uint8Array(3 * 2 ** 20 + 5).map((_, i) => (i * 31 + (i >> 8)) & 0xff);
const files: Record<string, Uint8Array<ArrayBuffer>> = {
  'config.json': new TextEncoder().encode('{"a": "é"}'),
  'sub/shard.bin': data,
};

/** Every source must behave the same on the same folder. */
async function checkSource(src: FileSource): Promise<void> {
  expect(await src.text('config.json')).toBe('{"a": "é"}');
  expect(await src.text('nope.json')).toBeUndefined();
  expect(await src.size('sub/shard.bin')).toBe(data.length);
  expect(await src.size('nope.bin')).toBeUndefined();
  expect(await src.range('sub/shard.bin', 0, 8)).toEqual(data.subarray(0, 8));
  expect(await src.range('sub/shard.bin', 2 ** 20 + 3, 2 * 2 ** 20 + 11)).toEqual(data.subarray(2 ** 20 + 3, 2 * 2 ** 20 + 11));
  expect(await src.range('sub/shard.bin', data.length - 4, data.length)).toEqual(data.subarray(data.length - 4));
  expect((await src.range('sub/shard.bin', 10, 10)).length).toBe(0);
  await expect(src.range('nope.bin', 0, 4)).rejects.toThrow(new RegExp(`file 'nope.bin' not found in ${src.name.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
  await expect(src.range('sub/shard.bin', data.length - 4, data.length + 4)).rejects.toThrow(/runs past its end.*truncated/);
  await expect(src.range('../etc/passwd', 0, 4)).rejects.toThrow(FileSourceError);
  await expect(src.range('/etc/passwd', 0, 4)).rejects.toThrow(/expected a path relative to the model folder/);
}

describe('directorySource', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'files-test-'));
    await (await import('node:fs/promises')).mkdir(join(dir, 'sub'));
    for (const [k, v] of Object.entries(files)) await writeFile(join(dir, k), v);
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it('reads text, sizes and byte ranges, and names file and folder when one is missing', async () => {
    await checkSource(directorySource(dir));
  });

  it('treats a directory as no file', async () => {
    expect(await directorySource(dir).size('sub')).toBeUndefined();
  });
});

describe('urlSource', () => {
  let server: Server;
  let base: string;
  let requests: { url: string; range?: string; auth?: string }[] = [];
  let honourRange = true;

  beforeAll(async () => {
    server = createServer((req, res) => {
      const path = decodeURIComponent((req.url ?? '').replace(/^\/model\//, ''));
      requests.push({ url: path, auth: req.headers.authorization, ...(req.headers.range ? { range: req.headers.range } : {}) });
      const body = files[path];
      if (!body) {
        res.writeHead(404).end();
        return;
      }
      const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
      if (m && honourRange) {
        const start = Number(m[1]);
        if (start >= body.length) {
          res.writeHead(416, { 'Content-Range': `bytes */${body.length}` }).end();
          return;
        }
        const end = Math.min(Number(m[2]), body.length - 1);
        res.writeHead(206, { 'Content-Range': `bytes ${start}-${end}/${body.length}`, 'Content-Length': end - start + 1 });
        res.end(body.subarray(start, end + 1));
      } else {
        res.writeHead(200, { 'Content-Length': body.length }).end(body);
      }
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const addr = server.address() as { port: number };
    base = `http://127.0.0.1:${addr.port}/model/`;
  });
  afterAll(() => new Promise<void>((r) => server.close(() => r())));

  it('reads text, sizes and byte ranges with Range requests, sending the caller\'s headers', async () => {
    honourRange = true;
    requests = [];
    await checkSource(urlSource(base, { headers: new Headers({ Authorization: 'Bearer t' }) }));
    expect(requests.every((r) => r.auth === 'Bearer t')).toBe(true);
    const ranged = requests.filter((r) => r.url === 'sub/shard.bin');
    expect(ranged.length).toBeGreaterThan(0);
    expect(ranged.every((r) => r.range !== undefined)).toBe(true);
  });

  it('refuses a server that ignores Range instead of downloading the file per chunk', async () => {
    honourRange = false;
    const src = urlSource(base);
    expect(await src.size('sub/shard.bin')).toBe(data.length);
    expect(await src.range('sub/shard.bin', 0, 16)).toEqual(data.subarray(0, 16));
    await expect(src.range('sub/shard.bin', 16, 32)).rejects.toThrow(/ignored the HTTP Range request for 'sub\/shard.bin'/);
    honourRange = true;
  });
});

describe('blobSource', () => {
  it('reads a Map of Blobs', async () => {
    await checkSource(blobSource(new Map(Object.entries(files).map(([k, v]) => [k, new Blob([v])]))));
  });

  it('strips the picked folder from webkitRelativePath', async () => {
    const picked = Object.entries(files).map(([k, v]) => {
      const f = new File([v], k.split('/').pop()!);
      Object.defineProperty(f, 'webkitRelativePath', { value: `my-model/${k}` });
      return f;
    });
    await checkSource(blobSource(picked, 'my-model'));
  });
});
