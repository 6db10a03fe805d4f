import { resolve } from 'node:path';
import { defineConfig } from 'vite';
import { serveModels } from './serve-models.ts';

// The engine reaches Node-only modules (Dawn's `webgpu` package, node:fs, node:os) through
// dynamic imports on paths a browser never takes: keep them out of the bundle.
const nodeOnly = ['webgpu', /^node:/];

export default defineConfig({
  root: import.meta.dirname,
  plugins: [serveModels(resolve(import.meta.dirname, '../../models'))],
  worker: { format: 'es', rollupOptions: { external: nodeOnly } },
  build: { target: 'es2022', rollupOptions: { external: nodeOnly } },
});
