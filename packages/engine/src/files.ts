// Where a model folder's files come from: a directory (Node, Deno), a URL (HTTP Range
// requests; browsers and Node), or files the user picked in a browser (Blob.slice).
// Node modules are imported lazily so a browser bundle never pulls them in.

import type { FileSource } from './types.ts';

export class FileSourceError extends Error {
  override name = 'FileSourceError';
}

/** Folder-relative paths only: a model's index must not reach outside its folder. */
function checkPath(path: string, folder: string): string {
  const parts = path.split('/');
  if (!path || path.startsWith('/') || /^[a-zA-Z]:/.test(path) || path.includes('\\') || parts.some((p) => p === '..' || p === '')) {
    throw new FileSourceError(`invalid file name '${path}' in ${folder}: expected a path relative to the model folder`);
  }
  return path;
}

function missing(path: string, folder: string): FileSourceError {
  return new FileSourceError(`file '${path}' not found in ${folder}`);
}

function checkRange(path: string, folder: string, start: number, end: number, size?: number): void {
  if (!(Number.isSafeInteger(start) && Number.isSafeInteger(end) && 0 <= start && start <= end)) {
    throw new FileSourceError(`invalid byte range [${start}, ${end}) of '${path}' in ${folder}`);
  }
  if (size !== undefined && end > size) {
    throw new FileSourceError(`byte range [${start}, ${end}) of '${path}' in ${folder} runs past its end (${size} bytes): the file is truncated`);
  }
}

function isNotFound(e: unknown): boolean {
  const code = (e as { code?: string } | null)?.code;
  return code === 'ENOENT' || code === 'ENOTDIR' || (e as Error | null)?.name === 'NotFound';
}

/** A folder on disk, read with positional reads (a range never loads the rest of the file). */
export function directorySource(dir: string): FileSource {
  const name = dir;
  const fsp = () => import('node:fs/promises');
  const full = (path: string) => `${dir.replace(/\/+$/, '')}/${checkPath(path, name)}`;
  return {
    name,
    async text(path) {
      try {
        return await (await fsp()).readFile(full(path), 'utf8');
      } catch (e) {
        if (isNotFound(e)) return undefined;
        throw e;
      }
    },
    async size(path) {
      try {
        const st = await (await fsp()).stat(full(path));
        return st.isFile() ? st.size : undefined;
      } catch (e) {
        if (isNotFound(e)) return undefined;
        throw e;
      }
    },
    async range(path, start, end) {
      checkRange(path, name, start, end);
      let fh;
      try {
        fh = await (await fsp()).open(full(path), 'r');
      } catch (e) {
        if (isNotFound(e)) throw missing(path, name);
        throw e;
      }
      try {
        const out = new Uint8Array(end - start);
        let got = 0;
        while (got < out.length) {
          const { bytesRead } = await fh.read(out, got, out.length - got, start + got);
          if (bytesRead === 0) {
            const { size } = await fh.stat();
            throw new FileSourceError(`byte range [${start}, ${end}) of '${path}' in ${name} runs past its end (${size} bytes): the file is truncated`);
          }
          got += bytesRead;
        }
        return out;
      } finally {
        await fh.close();
      }
    },
  };
}

/**
 * Files under `baseUrl` (e.g. https://huggingface.co/ORG/MODEL/resolve/main). Ranges use HTTP
 * Range requests; a server that ignores them is an error unless the whole file was asked for,
 * since falling back would download the whole file once per chunk.
 */
/** Tries of one request that fails at the network level (reset connection, refused). */
const NETWORK_ATTEMPTS = 3;

export function urlSource(baseUrl: string, init?: RequestInit): FileSource {
  const base = baseUrl.replace(/\/+$/, '');
  const url = (path: string) => `${base}/${checkPath(path, base).split('/').map(encodeURIComponent).join('/')}`;
  const get = async (path: string, range?: string) => {
    const headers = new Headers(init?.headers);
    if (range) headers.set('Range', range);
    // GETs are idempotent: retry a request that failed at the network level, as happens when a
    // server closes an idle keep-alive connection just as the next request reuses it.
    for (let attempt = 1; ; attempt++) {
      try {
        return await fetch(url(path), { ...init, headers });
      } catch (e) {
        if (attempt >= NETWORK_ATTEMPTS || init?.signal?.aborted) throw e;
      }
    }
  };
  const fail = (path: string, res: Response) => new FileSourceError(`fetching '${path}' from ${base} failed: HTTP ${res.status} ${res.statusText}`);
  return {
    name: base,
    async text(path) {
      const res = await get(path);
      if (res.status === 404) return undefined;
      if (!res.ok) throw fail(path, res);
      return res.text();
    },
    async size(path) {
      // A one-byte range answers with the total in Content-Range even where HEAD is not allowed
      // or a redirect drops Content-Length.
      const res = await get(path, 'bytes=0-0');
      if (res.status === 404) return undefined;
      if (res.status === 416) return 0;
      if (!res.ok) throw fail(path, res);
      if (res.status === 206) {
        await res.body?.cancel();
        const total = /\/(\d+)\s*$/.exec(res.headers.get('content-range') ?? '')?.[1];
        if (total === undefined) {
          throw new FileSourceError(
            `${base} answered a Range request for '${path}' without a readable Content-Range header (cross-origin servers must list it in Access-Control-Expose-Headers)`,
          );
        }
        return Number(total);
      }
      const len = res.headers.get('content-length');
      if (res.status === 200 && len !== null) {
        await res.body?.cancel();
        return Number(len);
      }
      return (await res.arrayBuffer()).byteLength;
    },
    async range(path, start, end) {
      checkRange(path, base, start, end);
      if (start === end) return new Uint8Array(0);
      const res = await get(path, `bytes=${start}-${end - 1}`);
      if (res.status === 404) throw missing(path, base);
      if (res.status === 416) throw new FileSourceError(`byte range [${start}, ${end}) of '${path}' in ${base} runs past its end: the file is truncated`);
      if (!res.ok) throw fail(path, res);
      const body = new Uint8Array(await res.arrayBuffer());
      if (res.status === 200) {
        if (start === 0 && body.length >= end) return body.subarray(0, end);
        throw new FileSourceError(`${base} ignored the HTTP Range request for '${path}'; serve the model from a server that supports Range requests`);
      }
      if (body.length !== end - start) {
        throw new FileSourceError(`byte range [${start}, ${end}) of '${path}' in ${base} runs past its end (got ${body.length} bytes): the file is truncated`);
      }
      return body;
    },
  };
}

/**
 * Files picked in a browser. A File[] from `<input type=file webkitdirectory>` carries paths
 * like "folder/config.json"; the top folder is dropped so paths are relative to the model folder.
 */
export function blobSource(files: Map<string, Blob> | File[], name = 'the selected files'): FileSource {
  const map = new Map<string, Blob>();
  if (files instanceof Map) {
    for (const [k, v] of files) map.set(k, v);
  } else {
    for (const f of files) {
      const rel = (f as File & { webkitRelativePath?: string }).webkitRelativePath || f.name;
      map.set(rel.includes('/') ? rel.slice(rel.indexOf('/') + 1) : rel, f);
    }
  }
  return {
    name,
    async text(path) {
      return map.get(checkPath(path, name))?.text();
    },
    async size(path) {
      return map.get(checkPath(path, name))?.size;
    },
    async range(path, start, end) {
      const blob = map.get(checkPath(path, name));
      if (!blob) throw missing(path, name);
      checkRange(path, name, start, end, blob.size);
      return new Uint8Array(await blob.slice(start, end).arrayBuffer());
    },
  };
}

/** A path, an http(s) URL, or a FileSource as it is. */
export function toFileSource(source: string | FileSource): FileSource {
  if (typeof source !== 'string') return source;
  return /^https?:\/\//.test(source) ? urlSource(source) : directorySource(source);
}
