// The repository's models/ folder on the dev and preview servers, at /models/. Vite answers
// any path it has no file for with index.html and status 200 (the single-page fallback), so
// a model folder served that way seems to hold every file the loader asks for, each one a web
// page. Here a missing file is a real 404, and byte ranges are answered as Range requests ask
// (sirv, the static server Vite itself is built on).

import { existsSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import sirv from 'sirv';
import type { Plugin } from 'vite';

export type Middleware = (req: IncomingMessage, res: ServerResponse, next: () => void) => void;

/** Files under `dir`, with 404 for anything else: no index.html, no extension guessing, no dotfiles. */
export function modelFilesMiddleware(dir: string): Middleware {
  const notFound = (_req: IncomingMessage, res: ServerResponse) => {
    res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8' }).end('not found');
  };
  if (!existsSync(dir)) return notFound;
  const files = sirv(dir, { dev: true, etag: true, extensions: [], dotfiles: false, single: false, onNoMatch: notFound });
  return (req, res) => files(req, res, () => notFound(req, res));
}

/** Serves `dir` at `/models/` in `vite` (dev) and `vite preview`. */
export function serveModels(dir: string): Plugin {
  const middleware = modelFilesMiddleware(dir);
  return {
    name: 'serve-models',
    configureServer(server) {
      server.middlewares.use('/models', middleware);
    },
    configurePreviewServer(server) {
      server.middlewares.use('/models', middleware);
    },
  };
}
