// A model folder at a URL, as the worker reads it. Two things the engine's urlSource can't
// tell: a server that answers a missing file with a web page (a single-page app's fallback,
// status 200), and a folder that isn't there at all, which the loader would otherwise report
// as the first optional file it missed ("has no tokenizer.json").

import { FileSourceError, urlSource, type FileSource } from '@webgpu-chat/engine';

/** The folder has no model: no config.json where one was asked for. */
export class ModelNotFoundError extends Error {
  override name = 'ModelNotFoundError';
}

export interface ModelUrlSource extends FileSource {
  /** Why `path` read as missing: "HTTP 404", "an HTML page", ...; undefined when it wasn't. */
  missingBecause(path: string): string | undefined;
}

const isHtml = (res: Response, path: string) => /^text\/html\b/i.test(res.headers.get('content-type') ?? '') && !/\.html?$/i.test(path);

/** urlSource, with an HTML answer to a model file taken as "not found". */
export function modelUrlSource(baseUrl: string, fetcher: typeof fetch = fetch): ModelUrlSource {
  const inner = urlSource(baseUrl);
  const base = inner.name;
  const why = new Map<string, string>();
  const url = (path: string) => `${base}/${path.split('/').map(encodeURIComponent).join('/')}`;
  /** The answer to a probe, or the reason the file counts as missing. */
  const probe = async (path: string, init?: RequestInit): Promise<Response | undefined> => {
    const res = await fetcher(url(path), init);
    if (res.status === 404 || isHtml(res, path)) {
      why.set(path, res.status === 404 ? 'HTTP 404' : `an HTML page (HTTP ${res.status}, content-type ${res.headers.get('content-type')})`);
      await res.body?.cancel();
      return undefined;
    }
    return res;
  };
  return {
    name: base,
    missingBecause: (path) => why.get(path),
    async text(path) {
      const res = await probe(path);
      if (!res) return undefined;
      if (!res.ok) throw new FileSourceError(`fetching '${path}' from ${base} failed: HTTP ${res.status} ${res.statusText}`.trim());
      return res.text();
    },
    async size(path) {
      const res = await probe(path, { headers: { Range: 'bytes=0-0' } });
      if (!res) return undefined;
      await res.body?.cancel();
      return inner.size(path);
    },
    range: (path, start, end) => inner.range(path, start, end),
  };
}

/**
 * Reads config.json first, so a folder that isn't there is named as such, with the URL and
 * the server's answer, instead of as the first file the loader misses.
 */
export async function requireConfig(source: FileSource, describe: (path: string) => string | undefined): Promise<void> {
  let text: string | undefined;
  try {
    text = await source.text('config.json');
  } catch (e) {
    if (e instanceof FileSourceError && /HTTP 40[13]\b/.test(e.message)) {
      throw new ModelNotFoundError(`${e.message}: the repository does not exist, or it is private or gated (this page sends no Hub token)`);
    }
    throw e;
  }
  if (text === undefined) {
    const answer = describe('config.json');
    throw new ModelNotFoundError(`no model at ${source.name}: config.json ${answer ? `answered with ${answer}` : 'is not there'}`);
  }
}
