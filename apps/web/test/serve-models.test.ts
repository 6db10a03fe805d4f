// The dev server answers models/ as a file server: real 404s for what is not there (Vite's
// own fallback would answer index.html with status 200) and byte ranges for the weights.

import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createServer, type ViteDevServer } from 'vite';

const APP = resolve(import.meta.dirname, '..');
const MODEL = resolve(APP, '../../models/stories260K');

describe('the dev server serves models/', () => {
  let server: ViteDevServer;
  let base: string;

  beforeAll(async () => {
    server = await createServer({ root: APP, configFile: join(APP, 'vite.config.ts'), logLevel: 'silent', server: { port: 0, host: '127.0.0.1' } });
    await server.listen();
    const addr = server.httpServer!.address() as { port: number };
    base = `http://127.0.0.1:${addr.port}`;
  });

  afterAll(async () => {
    await server?.close();
  });

  it('answers a model file with its bytes', async () => {
    const res = await fetch(`${base}/models/stories260K/config.json`);
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual(JSON.parse(readFileSync(join(MODEL, 'config.json'), 'utf8')));
  });

  it('answers a byte range of the weights as a Range request asks', async () => {
    const res = await fetch(`${base}/models/stories260K/model.safetensors`, { headers: { Range: 'bytes=8-15' } });
    expect(res.status).toBe(206);
    expect(res.headers.get('content-range')).toBe(`bytes 8-15/${readFileSync(join(MODEL, 'model.safetensors')).length}`);
    expect(new Uint8Array(await res.arrayBuffer())).toEqual(new Uint8Array(readFileSync(join(MODEL, 'model.safetensors')).subarray(8, 16)));
  });

  it('answers a missing file or folder with 404, not the page', async () => {
    for (const path of ['/models/stories260K/model.safetensors.index.json', '/models/no-such-model/config.json', '/models/', '/models/stories260K/']) {
      const res = await fetch(`${base}${path}`);
      expect(res.status, path).toBe(404);
      expect(res.headers.get('content-type'), path).not.toMatch(/html/);
    }
  });

  it('still answers the page itself', async () => {
    const res = await fetch(`${base}/`);
    expect(res.status).toBe(200);
    expect(await res.text()).toContain('<title>WebGPU chat</title>');
  });
});
