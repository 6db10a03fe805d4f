// The demo page in a real browser: builds it with Vite, serves it and the stories260K
// folder from one local server, drives Debian's Chromium (WebGPU on SwiftShader, its
// bundled CPU Vulkan driver), chats greedily and checks the token ids against the same
// request under Node, then reloads and checks the second load comes from the browser cache.

import { createReadStream, existsSync, mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join, normalize, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { build } from 'vite';
import { pipeline } from '@webgpu-chat/chat';

const ROOT = resolve(import.meta.dirname, '../../..');
const APP = resolve(import.meta.dirname, '..');
const MODEL = join(ROOT, 'models/stories260K');
const OUTPUT = join(ROOT, 'test-output/web');
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const PROMPT = 'Once upon a time';
const MAX_NEW_TOKENS = 20;
const REPO = 'local/stories260K';

/**
 * Headless Chromium has no GPU here: `--use-webgpu-adapter=swiftshader` with Vulkan enabled
 * gives Dawn's SwiftShader adapter ("google swiftshader", no shader-f16). Chromium loads its
 * own libvulkan and SwiftShader ICD, so VK_ICD_FILENAMES pointing at lavapipe changes nothing.
 */
const CHROMIUM_ARGS = [
  '--enable-unsafe-webgpu',
  '--enable-features=Vulkan',
  '--use-webgpu-adapter=swiftshader',
  '--no-sandbox',
  '--disable-gpu-sandbox',
  '--disable-background-networking',
  '--disable-component-update',
  '--no-first-run',
];

/**
 * Serves the built page at /, the model folder at /hub/{REPO}/resolve/main/ and
 * /models/stories260K/, and the same folder without its weights at /models/no-weights/.
 * Byte ranges are served as HTTP Range requests ask.
 */
function serve(site: string): Promise<{ server: Server; base: string; modelRequests: string[] }> {
  const modelRequests: string[] = [];
  const mounts: [string, string][] = [
    [`/hub/${REPO}/resolve/main/`, MODEL],
    ['/models/stories260K/', MODEL],
    ['/models/no-weights/', MODEL],
    ['/', site],
  ];
  const types: Record<string, string> = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css', '.json': 'application/json' };
  const server = createServer((req, res) => {
    const path = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname);
    const [prefix, dir] = mounts.find(([p]) => path.startsWith(p))!;
    if (dir === MODEL) modelRequests.push(`${req.headers.range ?? 'GET'} ${path}`);
    const rel = normalize(path.slice(prefix.length) || 'index.html');
    const file = join(dir, rel);
    const hidden = prefix === '/models/no-weights/' && rel === 'model.safetensors';
    if (hidden || rel.startsWith('..') || !existsSync(file) || !statSync(file).isFile()) {
      res.writeHead(404).end();
      return;
    }
    const size = statSync(file).size;
    const headers: Record<string, string> = { 'content-type': types[rel.slice(rel.lastIndexOf('.'))] ?? 'application/octet-stream', 'accept-ranges': 'bytes' };
    const m = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
    if (m) {
      const start = Number(m[1]);
      const end = m[2] ? Math.min(Number(m[2]), size - 1) : size - 1;
      if (start >= size) {
        res.writeHead(416, { 'content-range': `bytes */${size}` }).end();
        return;
      }
      res.writeHead(206, { ...headers, 'content-range': `bytes ${start}-${end}/${size}`, 'content-length': String(end - start + 1) });
      createReadStream(file, { start, end }).pipe(res);
    } else {
      res.writeHead(200, { ...headers, 'content-length': String(size) });
      createReadStream(file).pipe(res);
    }
  });
  return new Promise((ok) =>
    server.listen(0, '127.0.0.1', () => {
      const addr = server.address() as { port: number };
      ok({ server, base: `http://127.0.0.1:${addr.port}`, modelRequests });
    }),
  );
}

/**
 * The greedy reply's token ids under Node (Dawn on lavapipe), as the page's worker asks for
 * them: optionally with q8 linear layers and a self-q4 draft (the page's load settings).
 */
async function nodeReference(opts: { quantize?: 'q8'; selfQ4Draft?: boolean } = {}): Promise<number[]> {
  const pipe = await pipeline('text-generation', MODEL, { templateFallback: 'plain', ...(opts.quantize ? { quantize: opts.quantize } : {}) });
  const draft = opts.selfQ4Draft ? await pipeline('text-generation', MODEL, { templateFallback: 'plain', quantize: 'q4' }) : undefined;
  try {
    const ids: number[] = [];
    const assisted = draft ? { assistant_model: draft } : {};
    for await (const ev of pipe.stream([{ role: 'user', content: PROMPT }], { do_sample: false, max_new_tokens: MAX_NEW_TOKENS, ...assisted })) {
      if (ev.tokenId !== null) ids.push(ev.tokenId);
    }
    if (draft) expect(pipe.lastStats?.speculative?.steps).toBeGreaterThan(0);
    return ids;
  } finally {
    draft?.dispose();
    pipe.dispose();
  }
}

describe('demo page in Chromium', () => {
  let tmp: string;
  let site: Awaited<ReturnType<typeof serve>> | undefined;
  let context: BrowserContext | undefined;
  let page: Page;
  let skipReason: string | undefined;
  let reference: Promise<number[]> | undefined;
  const expectedIds = () => (reference ??= nodeReference());

  beforeAll(async () => {
    if (!existsSync(CHROMIUM)) {
      skipReason = `no Chromium at ${CHROMIUM} (set CHROMIUM_PATH)`;
      return;
    }
    tmp = mkdtempSync(join(tmpdir(), 'web-e2e-'));
    await build({ root: APP, configFile: join(APP, 'vite.config.ts'), logLevel: 'warn', build: { outDir: join(tmp, 'site'), emptyOutDir: true } });
    site = await serve(join(tmp, 'site'));
    context = await chromium.launchPersistentContext(join(tmp, 'profile'), { executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
    page = context.pages()[0] ?? (await context.newPage());
    page.on('console', (m) => {
      // 404s for optional files (chat_template.jinja, the shard index) are expected.
      if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) console.error(`[page] ${m.text()}`);
    });
    await page.goto(`${site.base}/?endpoint=${encodeURIComponent(`${site.base}/hub`)}&repo=${REPO}`);
    const adapter = await page.evaluate(async () => {
      if (!navigator.gpu) return 'navigator.gpu is missing';
      const a = await navigator.gpu.requestAdapter();
      return a ? '' : 'navigator.gpu.requestAdapter() returned null';
    });
    if (adapter) skipReason = `Chromium has no WebGPU adapter with ${CHROMIUM_ARGS.join(' ')}: ${adapter}`;
  });

  afterAll(async () => {
    await context?.close();
    site?.server.close();
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  async function load(): Promise<string> {
    await page.waitForSelector('#gpu[data-ready=true]', { timeout: 30_000 });
    await page.click('#load-button');
    await page.waitForSelector('#load-status:is([data-state=loaded], [data-state=failed])', { timeout: 120_000 });
    if ((await page.getAttribute('#load-status', 'data-state')) === 'failed') throw new Error(`loading failed: ${await page.textContent('#error')}`);
    return (await page.textContent('#load-status')) ?? '';
  }

  async function chatGreedy(maxNewTokens = MAX_NEW_TOKENS): Promise<{ ids: number[]; text: string; tokensPerSecond: number; ttftMs: number; acceptanceRate: string | null }> {
    await page.click('#new-chat');
    await page.uncheck('#do_sample');
    await page.fill('#max_new_tokens', String(maxNewTokens));
    await page.fill('#prompt', PROMPT);
    await page.click('#send');
    const msg = page.locator('.msg.assistant[data-done=true]');
    await msg.waitFor({ timeout: 120_000 });
    const err = await page.locator('#error').isVisible();
    if (err) throw new Error(`generation failed: ${await page.textContent('#error')}`);
    const stats = msg.locator('.stats');
    return {
      ids: ((await msg.getAttribute('data-token-ids')) ?? '').split(',').filter(Boolean).map(Number),
      text: (await msg.locator('.body').textContent()) ?? '',
      tokensPerSecond: Number(await stats.getAttribute('data-tokens-per-second')),
      ttftMs: Number(await stats.getAttribute('data-ttft-ms')),
      acceptanceRate: await stats.getAttribute('data-acceptance-rate'),
    };
  }

  it('chats with stories260K on WebGPU, greedy tokens equal Node, and reloads from the browser cache', async ({ skip }) => {
    if (skipReason) skip(skipReason);
    const expected = await expectedIds();
    expect(expected.length).toBe(MAX_NEW_TOKENS);

    const gpuText = await page.locator('#gpu').textContent();
    expect(gpuText).toMatch(/shader-f16 (available|not available)/);

    const status = await load();
    expect(status).toContain('llama');
    const downloaded = site!.modelRequests.length;
    expect(site!.modelRequests.some((r) => r.endsWith('model.safetensors'))).toBe(true);

    const first = await chatGreedy();
    expect(first.ids).toEqual(expected);
    expect(first.text.length).toBeGreaterThan(0);
    expect(first.tokensPerSecond).toBeGreaterThan(0);
    mkdirSync(OUTPUT, { recursive: true });
    await page.screenshot({ path: join(OUTPUT, 'chat.png'), fullPage: true });
    console.log(`page reported ${first.tokensPerSecond} tokens/s, first token after ${first.ttftMs} ms; reply: ${JSON.stringify(first.text)}`);

    // Second load: a fresh page (worker and GPU state gone), files from the Cache API only.
    await page.reload();
    await load();
    expect(await page.getAttribute('#load-status', 'data-cached')).toBe('true');
    expect(site!.modelRequests.slice(downloaded)).toEqual([]);
    expect(await page.getAttribute('[id="file-model.safetensors"]', 'data-from-cache')).toBe('true');
    const second = await chatGreedy();
    expect(second.ids).toEqual(expected);

    await page.click('#cache-show');
    await expect.poll(() => page.textContent('#cache-list')).toContain('model.safetensors: 1020.5 KiB');
    await page.click('#cache-clear');
    await expect.poll(() => page.textContent('#cache-list')).toContain('Nothing is cached.');
  }, 300_000);

  it('loads a picked local folder, and the stop button ends a reply', async ({ skip }) => {
    if (skipReason) skip(skipReason);
    await page.check('input[name=kind][value=files]');
    await page.setInputFiles('#folder-input', MODEL);
    await load();
    expect(await page.textContent('#load-status')).toContain('stories260K: llama');
    expect((await chatGreedy()).ids).toEqual(await expectedIds());

    await page.click('#new-chat');
    await page.fill('#max_new_tokens', '400');
    await page.fill('#prompt', PROMPT);
    await page.click('#send');
    await page.waitForSelector('.msg.assistant[data-token-ids]');
    await page.click('#stop');
    const msg = page.locator('.msg.assistant[data-done=true]');
    await msg.waitFor({ timeout: 60_000 });
    expect(await msg.locator('.stats').textContent()).toMatch(/, stopped$/);
    expect(((await msg.getAttribute('data-token-ids')) ?? '').split(',').length).toBeLessThan(400);
  }, 120_000);

  it('q8 weights with a self-q4 draft: greedy tokens equal Node with the same settings, acceptance in the footer', async ({ skip }) => {
    if (skipReason) skip(skipReason);
    const expected = await nodeReference({ quantize: 'q8', selfQ4Draft: true });
    await page.check('input[name=kind][value=url]');
    await page.fill('#folder-url', `${site!.base}/models/stories260K`);
    await page.selectOption('#quantize', 'q8');
    await page.selectOption('#draft', 'self-q4');
    try {
      const status = await load();
      expect(status).toContain('f32 weights with q8 (8-bit, group 32) linear layers');
      expect(status).toContain('draft self-q4');
      const r = await chatGreedy();
      expect(r.ids).toEqual(expected);
      expect(Number(r.acceptanceRate)).toBeGreaterThan(0);
      expect(await page.locator('.msg.assistant[data-done=true] .stats').textContent()).toMatch(/draft accepted \d+% of \d+ proposed tokens/);
    } finally {
      await page.selectOption('#quantize', '');
      await page.selectOption('#draft', '');
    }
  }, 180_000);

  it('says which file is missing when a folder URL lacks the weights', async ({ skip }) => {
    if (skipReason) skip(skipReason);
    await page.check('input[name=kind][value=url]');
    await page.fill('#folder-url', `${site!.base}/models/no-weights`);
    await page.click('#load-button');
    await page.waitForSelector('#load-status[data-state=failed]', { timeout: 60_000 });
    expect(await page.textContent('#error')).toMatch(/The weights are missing or malformed\.\nSafetensorsError: no model\.safetensors or model\.safetensors\.index\.json in http:.*no-weights/);
  }, 120_000);
});
