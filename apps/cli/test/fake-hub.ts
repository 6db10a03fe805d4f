// A local stand-in for the Hugging Face Hub on 127.0.0.1, answering the requests that
// @huggingface/hub (and Python's huggingface_hub) make to download a model:
//   GET  /api/models/ORG/NAME[/revision/REV]   repo info with sha and siblings
//   GET  /api/models/ORG/NAME/tree/REV         the file list (Python's snapshot_download)
//   GET|HEAD /ORG/NAME/resolve/REV/FILE        the file, with ETag (git blob sha1, or the
//        sha256 as X-Linked-Etag for "LFS" files), X-Repo-Commit, Content-Length, Range
// A gated repo answers 401 on resolve, a missing one 404 everywhere; a file can be set to
// break its first transfer halfway to exercise resuming.

import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface FakeRepo {
  files: Record<string, Uint8Array>;
  commit: string;
  gated?: boolean;
}

export interface FakeHub {
  url: string;
  /** Every request as "METHOD path" (query dropped), in order. */
  requests: string[];
  /** Range headers seen, by file. */
  ranges: Map<string, string[]>;
  /** The next full GET of this file sends this many bytes, then drops the connection. */
  breakAfter: Map<string, number>;
  repos: Map<string, FakeRepo>;
  close(): Promise<void>;
}

function gitBlobSha1(data: Uint8Array): string {
  return createHash('sha1').update(`blob ${data.byteLength}\0`).update(data).digest('hex');
}

function sha256(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Safetensors files are stored as LFS on the Hub: their ETag is the content's sha256. */
export function expectedEtag(file: string, data: Uint8Array): string {
  return file.endsWith('.safetensors') ? sha256(data) : gitBlobSha1(data);
}

function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json; charset=utf-8', 'Content-Length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

export async function startFakeHub(repos: Record<string, FakeRepo>): Promise<FakeHub> {
  const hub: Omit<FakeHub, 'url' | 'close'> = {
    requests: [],
    ranges: new Map(),
    breakAfter: new Map(),
    repos: new Map(Object.entries(repos)),
  };

  const notFound = (res: ServerResponse) =>
    sendJson(res, 404, { error: 'Repository not found' }, { 'X-Error-Code': 'RepoNotFound' });

  function handle(req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url ?? '/', 'http://x');
    const path = decodeURIComponent(url.pathname);
    hub.requests.push(`${req.method} ${path}`);
    const api = /^\/api\/models\/([^/]+\/[^/]+)(?:\/revision\/(.+))?$/.exec(path);
    if (api) {
      const repo = hub.repos.get(api[1]!);
      const rev = api[2] ?? 'main';
      if (!repo || (rev !== 'main' && rev !== 'HEAD' && rev !== repo.commit)) return notFound(res);
      return sendJson(res, 200, {
        _id: `id-${api[1]}`,
        id: api[1],
        sha: repo.commit,
        private: false,
        gated: repo.gated ? 'manual' : false,
        downloads: 0,
        likes: 0,
        lastModified: '2024-01-01T00:00:00.000Z',
        pipeline_tag: 'text-generation',
        siblings: Object.keys(repo.files).map((rfilename) => ({ rfilename })),
      });
    }
    // Python's snapshot_download lists the tree before fetching files.
    const tree = /^\/api\/models\/([^/]+\/[^/]+)\/tree\/([^/]+)$/.exec(path);
    if (tree) {
      const repo = hub.repos.get(tree[1]!);
      if (!repo || (tree[2] !== 'main' && tree[2] !== repo.commit)) return notFound(res);
      return sendJson(
        res,
        200,
        Object.entries(repo.files).map(([p, data]) => ({
          type: 'file',
          path: p,
          size: data.byteLength,
          oid: gitBlobSha1(data),
          ...(p.endsWith('.safetensors') ? { lfs: { oid: sha256(data), size: data.byteLength, pointerSize: 134 } } : {}),
        })),
      );
    }
    const resolve = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(path);
    if (!resolve) return sendJson(res, 404, { error: `no route ${path}` });
    const [, name, rev, file] = resolve as unknown as [string, string, string, string];
    const repo = hub.repos.get(name);
    if (!repo || (rev !== 'main' && rev !== repo.commit)) return notFound(res);
    if (repo.gated && req.headers.authorization !== 'Bearer hf_good') {
      return sendJson(
        res,
        401,
        { error: `Access to model ${name} is restricted. You must have access to it and be authenticated to access it. Please log in.` },
        { 'X-Error-Code': 'GatedRepo' },
      );
    }
    const data = repo.files[file];
    if (!data) return sendJson(res, 404, { error: 'Entry not found' }, { 'X-Error-Code': 'EntryNotFound' });
    const etag = expectedEtag(file, data);
    const headers: Record<string, string> = {
      'X-Repo-Commit': repo.commit,
      'Accept-Ranges': 'bytes',
      'Content-Type': 'application/octet-stream',
    };
    if (file.endsWith('.safetensors')) {
      headers['X-Linked-Etag'] = `"${etag}"`;
      headers['X-Linked-Size'] = String(data.byteLength);
    }
    headers['ETag'] = `"${etag}"`;
    const range = req.headers.range;
    let start = 0;
    let end = data.byteLength; // exclusive
    let status = 200;
    if (range) {
      hub.ranges.set(file, [...(hub.ranges.get(file) ?? []), range]);
      const m = /^bytes=(\d+)-(\d*)$/.exec(range);
      if (!m) return sendJson(res, 416, { error: 'bad range' });
      start = Number(m[1]);
      end = m[2] ? Math.min(Number(m[2]) + 1, data.byteLength) : data.byteLength;
      if (start >= data.byteLength) {
        res.writeHead(416, { 'Content-Range': `bytes */${data.byteLength}` });
        return void res.end();
      }
      status = 206;
      headers['Content-Range'] = `bytes ${start}-${end - 1}/${data.byteLength}`;
    }
    headers['Content-Length'] = String(end - start);
    res.writeHead(status, headers);
    if (req.method === 'HEAD') return void res.end();
    const cut = hub.breakAfter.get(file);
    if (cut !== undefined && end - start > 1) {
      hub.breakAfter.delete(file);
      res.write(data.subarray(start, start + cut), () => {
        // Let the bytes reach the client before the connection drops.
        setTimeout(() => res.socket?.destroy(), 50);
      });
      return;
    }
    res.end(data.subarray(start, end));
  }

  const server: Server = createServer(handle);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  return {
    ...hub,
    url: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}
