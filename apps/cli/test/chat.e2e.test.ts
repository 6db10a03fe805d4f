// End to end: `chat` in a real terminal (tmux) through a short conversation with the
// in-session commands; `serve` as a process with `chat --url` on top; pipe mode.
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

const ROOT = resolve(import.meta.dirname, '../../..');
const CHAT = join(ROOT, 'apps/cli/bin/chat.mjs');
const SERVE = join(ROOT, 'apps/cli/bin/serve.mjs');
const GREEDY_20 = ', there was a little girl named Lily. She loved to play outsid';
const haveTmux = spawnSync('tmux', ['-V']).status === 0;
const tmp = mkdtempSync(join(tmpdir(), 'chat-e2e-'));

async function waitFor<T>(what: string, probe: () => T | undefined | Promise<T | undefined>, timeoutMs = 60_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

class Tmux {
  constructor(readonly name: string) {}
  static start(name: string, command: string): Tmux {
    spawnSync('tmux', ['kill-session', '-t', name]);
    execFileSync('tmux', ['new-session', '-d', '-s', name, '-x', '200', '-y', '60', command]);
    return new Tmux(name);
  }
  screen(): string {
    const r = spawnSync('tmux', ['capture-pane', '-p', '-J', '-t', this.name, '-S', '-1000'], { encoding: 'utf8' });
    return r.stdout ?? '';
  }
  send(...keys: string[]): void {
    execFileSync('tmux', ['send-keys', '-t', this.name, ...keys]);
  }
  /** Types a line literally, then Enter. */
  line(text: string): void {
    execFileSync('tmux', ['send-keys', '-t', this.name, '-l', text]);
    this.send('Enter');
  }
  /** Waits until `re` matches the screen (scroll-back included). */
  async expect(re: RegExp, timeoutMs = 60_000): Promise<string> {
    return waitFor(`${re} on the screen:\n${this.screen()}`, () => (re.test(this.screen()) ? this.screen() : undefined), timeoutMs);
  }
  kill(): void {
    spawnSync('tmux', ['kill-session', '-t', this.name]);
  }
}

const transcripts: string[] = [];
afterAll(() => {
  // The transcripts are the closing note's evidence; print them for the log.
  for (const t of transcripts) console.log(t);
});

describe.skipIf(!haveTmux)('chat in a terminal (tmux)', () => {
  it('runs a conversation with !help, !set, !status, !save, !clear, Ctrl-C and !exit', async () => {
    const save = join(tmp, 'saved.json');
    const t = Tmux.start('webgpu-chat-e2e', `cd ${ROOT} && node ${CHAT} max_new_tokens=20; echo "EXITED rc=$?"; sleep 60`);
    try {
      await t.expect(/Chatting with stories260K\. Commands:[\s\S]*!exit[\s\S]*\n> $/m);
      expect(t.screen()).toContain('using the bundled default story model');
      expect(t.screen()).toContain('has no chat template');
      expect(t.screen()).not.toContain('artificially reduced');

      t.line('!help');
      await t.expect(/> !help\nCommands:\n {2}!help/);

      t.line('Once upon a time');
      await t.expect(/> Once upon a time\n.*\n20 tokens in [\d.]+ s \([\d.]+ tokens\/s, TTFT \d+ ms\) \[max_new_tokens reached\]/);
      expect(t.screen()).toContain(`> Once upon a time\n${GREEDY_20}\n`);

      t.line('!set do_sample=true seed=5 max_new_tokens=12');
      await t.expect(/settings: do_sample=true max_new_tokens=12 seed=5/);
      t.line('!set top_p=2');
      await t.expect(/invalid value '2' for top_p: expected a number in \[0, 1\]/);

      t.line('!status');
      await t.expect(/last: +20 tokens in/);
      const status = t.screen();
      expect(status).toMatch(/model: +stories260K/);
      expect(status).toMatch(/dtype: +f32/);
      expect(status).toMatch(/adapter: +.+; maxBufferSize/);
      expect(status).toMatch(/context: +25 tokens used of 512/);

      t.line(' The dog');
      await t.expect(/> {2}The dog\n.*\n12 tokens in/);

      t.line(`!save ${save}`);
      await t.expect(new RegExp(`Saved to ${save}`));
      const saved = JSON.parse(readFileSync(save, 'utf8'));
      expect(saved.model).toBe('stories260K');
      expect(saved.settings.generation).toEqual({ max_new_tokens: 12, do_sample: true, seed: 5 });
      expect(saved.messages.map((m: { role: string }) => m.role)).toEqual(['user', 'assistant', 'user', 'assistant']);
      expect(saved.messages[1].content).toBe(GREEDY_20);

      t.line('!clear');
      await t.expect(/New conversation\./);
      t.line('!status');
      await t.expect(/!clear\nNew conversation\.\n> !status\n[\s\S]*context: +0 tokens used of 512[\s\S]*last: +no reply yet/);

      // Ctrl-C stops a long reply and the session goes on.
      t.line('!set do_sample=false max_new_tokens=500');
      await t.expect(/settings: do_sample=false max_new_tokens=500/);
      t.line('Once upon a time');
      await t.expect(/> Once upon a time\n, there was/);
      t.send('C-c');
      await t.expect(/\d+ tokens in [\d.]+ s .*\[stopped\]/);
      const stoppedAt = Number(/(\d+) tokens in [\d.]+ s .*\[stopped\]/.exec(t.screen())![1]);
      expect(stoppedAt).toBeLessThan(500);

      t.line('!load ' + save);
      await t.expect(/Loaded 4 messages from .*; settings: do_sample=true max_new_tokens=12 seed=5/);

      t.line('!exit');
      await t.expect(/EXITED rc=0/);
      transcripts.push(`--- chat transcript (tmux) ---\n${t.screen().replace(/\n+$/, '')}`);
    } finally {
      t.kill();
    }
  });

  it('Ctrl-D leaves the session', async () => {
    const t = Tmux.start('webgpu-chat-e2e-d', `cd ${ROOT} && node ${CHAT}; echo "EXITED rc=$?"; sleep 60`);
    try {
      await t.expect(/\n> $/m);
      t.send('C-d');
      await t.expect(/EXITED rc=0/);
    } finally {
      t.kill();
    }
  });
});

function run(cmd: string, args: string[], input: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((res) => {
    const p = spawn(cmd, args, { cwd: ROOT });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d) => (stderr += d));
    p.on('close', (code) => res({ code, stdout, stderr }));
    p.stdin.end(input);
  });
}

describe('chat without a terminal', () => {
  it('pipe mode: all of stdin is one prompt, only the reply on stdout', async () => {
    const r = await run('node', [CHAT, 'max_new_tokens=20'], 'Once upon a time\n');
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(`${GREEDY_20}\n`);
    expect(r.stderr).toMatch(/20 tokens in [\d.]+ s/);
  });

  it('stderr carries no Dawn limit warnings (a newcomer reads them as a fault)', async () => {
    // stderr through a shell pipe, as `| tee` gives it: a Node parent's 'pipe' is a socket,
    // which the engine leaves alone (packages/engine/src/dawn-stderr.ts).
    const r = await run('sh', ['-c', `node ${CHAT} --prompt 'Once upon a time' max_new_tokens=5 2>&1 >/dev/null | cat`], '');
    expect(r.stdout).toMatch(/5 tokens in [\d.]+ s/);
    expect(r.stdout).not.toMatch(/artificially reduced/);
  });

  it('--json gives the result as JSON', async () => {
    const r = await run('node', [CHAT, '--json', '--prompt', 'Once upon a time', 'max_new_tokens=20'], '');
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({
      model: 'stories260K',
      reply: GREEDY_20,
      finish_reason: 'length',
      usage: { prompt_tokens: 5, completion_tokens: 20, total_tokens: 25 },
    });
  });

  it('--draft self-q4 and --draft FOLDER: the same greedy reply, acceptance on the summary line', async () => {
    for (const draft of ['self-q4', join(ROOT, 'models/stories260K')]) {
      const r = await run('node', [CHAT, '--draft', draft, 'max_new_tokens=20', 'num_assistant_tokens=4'], 'Once upon a time\n');
      expect(r.code).toBe(0);
      expect(r.stdout).toBe(`${GREEDY_20}\n`);
      expect(r.stderr).toMatch(/20 tokens in [\d.]+ s \(.*, draft acceptance \d+% \([\d.]+ accepted per step of [\d.]+ drafted, \d+ steps\)\)/);
    }
  });

  it('--draft and --quantize with --url are serve options: exit 2', async () => {
    const r = await run('node', [CHAT, '--url', 'http://127.0.0.1:9', '--draft', 'self-q4'], 'hi');
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--draft is an option of `serve` when chat uses --url/);
  });

  it('bad flags exit 2 with the valid keys', async () => {
    const r = await run('node', [CHAT, 'temprature=1'], '');
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/unknown generation flag 'temprature'\. Valid keys: do_sample/);
  });
});

describe('serve as a process, chat --url on top', () => {
  let serve: ChildProcess | undefined;
  afterAll(() => serve?.kill('SIGTERM'));

  it('serves over HTTP and chat talks to it', async () => {
    serve = spawn('node', [SERVE, '--port', '0'], { cwd: ROOT });
    let log = '';
    serve.stderr!.on('data', (d) => (log += d));
    const url = await waitFor('serve to listen', () => /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(log)?.[1]);
    await waitFor('/health ok', async () => ((await fetch(`${url}/health`).catch(() => undefined))?.status === 200 ? true : undefined));
    expect(log).toContain('using the bundled default story model');

    const piped = await run('node', [CHAT, '--url', url, 'max_new_tokens=20', 'do_sample=false'], 'Once upon a time');
    expect(piped.stderr).toMatch(/20 tokens in/);
    expect(piped.stdout).toBe(`${GREEDY_20}\n`);

    const raw = await fetch(`${url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ model: 'stories260K', messages: [{ role: 'user', content: 'Once upon a time' }], max_tokens: 8, temperature: 0, stream: true }),
    });
    const sse = await raw.text();
    expect(sse.endsWith('data: [DONE]\n\n')).toBe(true);
    transcripts.push(`--- serve exchange (POST /v1/chat/completions, stream: true) ---\n${sse}`);

    // serve --draft: the same greedy text; acceptance in the request's log line, not in the response.
    const drafted = spawn('node', [SERVE, '--port', '0', '--draft', 'self-q4'], { cwd: ROOT });
    try {
      let dlog = '';
      drafted.stderr!.on('data', (d) => (dlog += d));
      const durl = await waitFor('serve --draft to listen', () => /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(dlog)?.[1]);
      await waitFor('/health ok', async () => ((await fetch(`${durl}/health`).catch(() => undefined))?.status === 200 ? true : undefined));
      expect(await (await fetch(`${durl}/health`)).json()).toMatchObject({ draft: 'self-q4' });
      const viaDraft = await run('node', [CHAT, '--url', durl, 'max_new_tokens=20', 'do_sample=false'], 'Once upon a time');
      expect(viaDraft.stdout).toBe(`${GREEDY_20}\n`);
      await waitFor('the request log line', () => (/serve: chatcmpl-\w+ length: 20 tokens, .*draft acceptance \d+%/.test(dlog) ? true : undefined));
    } finally {
      drafted.kill('SIGTERM');
    }

    if (haveTmux) {
      const t = Tmux.start('webgpu-chat-e2e-url', `cd ${ROOT} && node ${CHAT} --url ${url} max_new_tokens=20; echo "EXITED rc=$?"; sleep 60`);
      try {
        await t.expect(/\n> $/m);
        t.line('Once upon a time');
        await t.expect(/20 tokens in/);
        expect(t.screen()).toContain(`> Once upon a time\n${GREEDY_20}\n`);
        t.line('!status');
        await t.expect(new RegExp(`runs: +${url.replace(/[.]/g, '\\.')}[\\s\\S]*dtype: +f32`));
        t.line('!exit');
        await t.expect(/EXITED rc=0/);
        transcripts.push(`--- chat --url transcript (tmux) ---\n${t.screen().replace(/\n+$/, '')}`);
      } finally {
        t.kill();
      }
    }
  });
});
