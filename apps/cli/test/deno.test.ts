// The same greedy generation under Node (Dawn) and Deno (its built-in WebGPU) gives the
// same tokens; `chat` itself runs under Deno, and `chat` and `serve` run as README says.
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = resolve(import.meta.dirname, '../../..');
const DENO = join(ROOT, 'apps/cli/node_modules/.bin/deno');
const CONFIG = join(ROOT, 'apps/cli/deno.json');
const SCRIPT = join(ROOT, 'apps/cli/test/greedy-tokens.ts');
// Deno's WebGPU (wgpu) goes through Vulkan too: point it at lavapipe unless told otherwise.
const LAVAPIPE = '/usr/share/vulkan/icd.d/lvp_icd.json';
const denoEnv = { ...process.env, ...(!process.env.VK_ICD_FILENAMES && existsSync(LAVAPIPE) ? { VK_ICD_FILENAMES: LAVAPIPE } : {}) };

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((res) => {
    const p = spawn(cmd, args, { cwd: ROOT, env });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d) => (stderr += d));
    p.on('close', (code) => res({ code, stdout, stderr }));
    p.stdin.end();
  });
}

const denoRun = (args: string[]) => run(DENO, ['run', '-A', '--unstable-webgpu', '--config', CONFIG, ...args], denoEnv);

describe.skipIf(!existsSync(DENO))('Node and Deno', () => {
  it('greedy decoding gives the same tokens under both', async (ctx) => {
    const deno = await denoRun([SCRIPT]);
    if (deno.code !== 0 && /NoAdapterError|No WebGPU adapter/.test(deno.stderr)) {
      ctx.skip(`Deno found no WebGPU adapter: ${deno.stderr.trim().split('\n').at(-1)}`);
    }
    expect(deno.code, deno.stderr).toBe(0);
    const node = await run('node', ['--import', 'tsx', SCRIPT]);
    expect(node.code, node.stderr).toBe(0);
    const d = JSON.parse(deno.stdout) as { ids: number[]; text: string };
    const n = JSON.parse(node.stdout) as { ids: number[]; text: string };
    expect(n.ids).toHaveLength(24);
    expect(d.ids).toEqual(n.ids);
    expect(d.text).toBe(n.text);
  });

  it('constrained decoding (XGrammar in WebAssembly) gives the same tokens under both', async () => {
    const script = join(ROOT, 'apps/cli/test/constraint-deno.ts');
    const deno = await denoRun([script]);
    expect(deno.code, deno.stderr).toBe(0);
    const node = await run('node', ['--import', 'tsx', script]);
    expect(node.code, node.stderr).toBe(0);
    const d = JSON.parse(deno.stdout) as { ids: number[]; text: string };
    expect(d).toEqual(JSON.parse(node.stdout));
    expect(JSON.parse(d.text)).toMatchObject({ ok: expect.any(Boolean), n: expect.any(Number) });
    // serve's worker thread for the engine starts under Deno and walks the same tokens.
    const worker = await denoRun([join(ROOT, 'apps/cli/test/constraint-thread-deno.ts')]);
    expect(worker.code, worker.stderr).toBe(0);
    expect(JSON.parse(worker.stdout)).toEqual(d);
  });

  it('chat --json runs under Deno', async (ctx) => {
    const r = await denoRun([join(ROOT, 'apps/cli/src/chat.ts'), '--json', '--prompt', 'Once upon a time', 'max_new_tokens=20']);
    if (r.code !== 0 && /NoAdapterError|No WebGPU adapter/.test(r.stderr)) ctx.skip('Deno found no WebGPU adapter');
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({
      model: 'stories260K',
      reply: ', there was a little girl named Lily. She loved to play outsid',
      usage: { prompt_tokens: 5, completion_tokens: 20 },
    });
  });
});

async function until<T>(what: () => string, probe: () => T | undefined | Promise<T | undefined>): Promise<T> {
  for (const end = Date.now() + 60_000; Date.now() < end; await new Promise((r) => setTimeout(r, 200))) {
    const v = await probe();
    if (v !== undefined) return v;
  }
  throw new Error(`timed out waiting for ${what()}`);
}

/** The command lines of README's "Under Deno" block, comments dropped. */
function readmeDenoCommands(): string[] {
  const block = /^## Under Deno\n[\s\S]*?```sh\n([\s\S]*?)```/m.exec(readFileSync(join(ROOT, 'README.md'), 'utf8'))?.[1] ?? '';
  return block.split('\n').map((l) => l.replace(/#.*/, '').trim()).filter(Boolean);
}

describe.skipIf(!existsSync(DENO))("README's Deno commands", () => {
  const [cd, chat, serve] = readmeDenoCommands();

  it('chat runs as README says', async (ctx) => {
    expect(cd).toBe('cd apps/cli');
    expect(chat).toMatch(/ src\/chat\.ts$/);
    const r = await run('sh', ['-c', `${cd} && ${chat} --json --prompt 'Once upon a time' max_new_tokens=20`], denoEnv);
    if (r.code !== 0 && /NoAdapterError|No WebGPU adapter/.test(r.stderr)) ctx.skip('Deno found no WebGPU adapter');
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ model: 'stories260K', reply: ', there was a little girl named Lily. She loved to play outsid' });
  });

  it('serve runs as README says', async (ctx) => {
    expect(serve).toMatch(/ src\/serve\.ts --port 8000$/);
    // Its own process group, so that pnpm and the Deno it starts stop together.
    const p = spawn('sh', ['-c', `${cd} && exec ${serve.replace('--port 8000', '--port 0')}`], { cwd: ROOT, env: denoEnv, detached: true });
    let log = '';
    p.stderr.on('data', (d) => (log += d));
    try {
      const url = await until(() => `serve to listen:\n${log}`, () => /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(log)?.[1]);
      const health = await until(() => `/health ok:\n${log}`, async () => {
        if (/NoAdapterError|No WebGPU adapter/.test(log)) ctx.skip('Deno found no WebGPU adapter');
        const r = await fetch(`${url}/health`).catch(() => undefined);
        return r?.status === 200 ? r.json() : undefined;
      });
      expect(health).toMatchObject({ status: 'ok', model: 'stories260K' });
    } finally {
      process.kill(-p.pid!, 'SIGTERM');
    }
  });
});
