// The same greedy generation under Node (Dawn) and Deno (its built-in WebGPU) gives the
// same tokens; and `chat` itself runs under Deno.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
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
