#!/usr/bin/env node
// Installed `serve` command: runs the TypeScript source through tsx's loader (no build step).
import { register } from 'tsx/esm/api';

register();
await import('../src/serve.ts');
