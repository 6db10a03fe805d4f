// The demo page in a real browser, as a new visitor meets it: builds it with Vite, serves it
// with `vite preview` (the app's own config, so models/ is served as the page will be),
// drives Debian's Chromium (WebGPU on SwiftShader, its bundled CPU Vulkan driver) with every
// host but 127.0.0.1 unresolvable, and walks through: the first open to the first token with
// no network, replies checked token for token against the same request under Node, a reload
// that remembers the settings and reads only the browser cache, New chat and Stop during a
// reply, honest stop reasons, a failed load after a good one, bad field values, a 390 px
// phone viewport, and an accessibility audit (axe-core) of each state. Screenshots of each
// go to test-output/web/.

import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import axe from 'axe-core';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { build, preview, type Plugin, type PreviewServer } from 'vite';
import { pipeline } from '@webgpu-chat/chat';
import { modelFilesMiddleware } from '../serve-models.ts';

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
 * The host rules make every name but 127.0.0.1 unresolvable: the page runs offline.
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
  '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1',
];

/**
 * Test-only folders beside the app's own /models/: a fake Hub serving stories260K at
 * /hub/{REPO}/resolve/main/ (and nothing for other repos), /test-models/no-weights/, the
 * same folder without its weights, and /test-blank, an empty page.
 */
function testMounts(): Plugin {
  const hub = modelFilesMiddleware(MODEL);
  const noWeights = (req: IncomingMessage, res: ServerResponse, next: () => void) => {
    if (req.url?.startsWith('/model.safetensors')) res.writeHead(404).end();
    else hub(req, res, next);
  };
  return {
    name: 'test-mounts',
    configurePreviewServer(server) {
      server.middlewares.use(`/hub/${REPO}/resolve/main`, hub);
      server.middlewares.use('/hub', (_req, res) => void res.writeHead(404).end());
      server.middlewares.use('/test-models/no-weights', noWeights);
      server.middlewares.use('/test-blank', (_req, res) => void res.writeHead(200, { 'content-type': 'text/html' }).end('<!doctype html><title>blank</title>'));
    },
  };
}

/**
 * The greedy reply's token ids under Node (Dawn on lavapipe), as the page's worker asks for
 * them: optionally with q8 linear layers and a self-q4 draft (the page's load settings).
 */
async function nodeReference(opts: { quantize?: 'q8'; selfQ4Draft?: boolean; jsonMode?: boolean } = {}): Promise<{ ids: number[]; promptTokens: number }> {
  const pipe = await pipeline('text-generation', MODEL, { templateFallback: 'plain', ...(opts.quantize ? { quantize: opts.quantize } : {}) });
  const draft = opts.selfQ4Draft ? await pipeline('text-generation', MODEL, { templateFallback: 'plain', quantize: 'q4' }) : undefined;
  try {
    const ids: number[] = [];
    const assisted = draft ? { assistant_model: draft } : {};
    const format = opts.jsonMode ? { response_format: { type: 'json_object' as const } } : {};
    for await (const ev of pipe.stream([{ role: 'user', content: PROMPT }], { do_sample: false, max_new_tokens: MAX_NEW_TOKENS, ...assisted, ...format })) {
      if (ev.tokenId !== null) ids.push(ev.tokenId);
    }
    if (draft) expect(pipe.lastStats?.speculative?.steps).toBeGreaterThan(0);
    return { ids, promptTokens: pipe.lastStats!.promptTokens };
  } finally {
    draft?.dispose();
    pipe.dispose();
  }
}

interface Reply {
  ids: number[];
  text: string;
  tokensPerSecond: number;
  ttftMs: number;
  promptTokens: number;
  stopReason: string | null;
  footer: string;
  acceptanceRate: string | null;
}

describe('demo page in Chromium', () => {
  let tmp: string;
  let server: PreviewServer | undefined;
  let base = '';
  /** Requests for model files the server saw (any /models/, /hub/ or /test-models/ path). */
  const modelRequests: string[] = [];
  let context: BrowserContext | undefined;
  let page: Page;
  let skipReason: string | undefined;
  let reference: ReturnType<typeof nodeReference> | undefined;
  const expected = () => (reference ??= nodeReference());

  beforeAll(async () => {
    if (!existsSync(CHROMIUM)) {
      skipReason = `no Chromium at ${CHROMIUM} (set CHROMIUM_PATH)`;
      return;
    }
    tmp = mkdtempSync(join(tmpdir(), 'web-e2e-'));
    const outDir = join(tmp, 'site');
    await build({ root: APP, configFile: join(APP, 'vite.config.ts'), logLevel: 'warn', build: { outDir, emptyOutDir: true } });
    server = await preview({ root: APP, configFile: join(APP, 'vite.config.ts'), logLevel: 'warn', build: { outDir }, preview: { port: 0, host: '127.0.0.1' }, plugins: [testMounts()] });
    server.httpServer.on('request', (req: IncomingMessage) => {
      // Vite's handler runs first, and its mounts cut their prefix from req.url.
      const url = (req as IncomingMessage & { originalUrl?: string }).originalUrl ?? req.url ?? '';
      if (/^\/(models|hub|test-models)\//.test(url)) modelRequests.push(`${req.headers.range ?? 'GET'} ${url}`);
    });
    base = `http://127.0.0.1:${(server.httpServer.address() as { port: number }).port}`;
    mkdirSync(OUTPUT, { recursive: true });
    context = await chromium.launchPersistentContext(join(tmp, 'profile'), { executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, viewport: { width: 1280, height: 800 } });
    page = context.pages()[0] ?? (await context.newPage());
    page.on('console', (m) => {
      // 404s for optional files (chat_template.jinja, the shard index) are expected.
      if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) console.error(`[page] ${m.text()}`);
    });
    // A page of the server's origin that isn't the app: a secure context, so navigator.gpu
    // is there, and the app's first open is still to come.
    await page.goto(`${base}/test-blank`);
    const adapter = await page.evaluate(async () => {
      if (!navigator.gpu) return 'navigator.gpu is missing';
      const a = await navigator.gpu.requestAdapter();
      return a ? '' : 'navigator.gpu.requestAdapter() returned null';
    });
    if (adapter) skipReason = `Chromium has no WebGPU adapter with ${CHROMIUM_ARGS.join(' ')}: ${adapter}`;
    if (skipReason) console.warn(`browser test skipped: ${skipReason}`);
  });

  afterAll(async () => {
    await context?.close();
    await server?.close();
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  const shot = (name: string) => page.screenshot({ path: join(OUTPUT, name) });

  /** axe-core's violations on the page as it is now (rule id, impact, first offending nodes). */
  async function audit(): Promise<string[]> {
    if (!(await page.evaluate(() => 'axe' in window))) await page.addScriptTag({ content: axe.source });
    const violations = await page.evaluate(async () => {
      const r = await (window as unknown as { axe: typeof axe }).axe.run(document, { resultTypes: ['violations'] });
      return r.violations.map((v) => `${v.id} (${v.impact}): ${v.nodes.slice(0, 3).map((n) => `${n.target.join(' ')} ${n.failureSummary ?? ''}`).join(', ')}`);
    });
    if (violations.length) console.warn(`axe-core:\n${violations.join('\n')}`);
    return violations;
  }

  const loadsEnded = async () => Number((await page.getAttribute('#load-status', 'data-loads-ended')) ?? 0);

  /** Clicks `trigger` (a load button) and waits for that load to end; returns the status. */
  async function load(trigger = '#load-button', { expectFailure = false } = {}): Promise<string> {
    await page.waitForSelector('#gpu[data-ready=true]', { timeout: 30_000 });
    const before = await loadsEnded();
    await page.click(trigger);
    await expect.poll(loadsEnded, { timeout: 120_000 }).toBe(before + 1);
    const failed = (await page.getAttribute('#load-status', 'data-state')) === 'failed';
    if (failed !== expectFailure) throw new Error(failed ? `loading failed: ${await page.textContent('#error')}` : 'the load was expected to fail');
    return (await page.textContent('#load-status')) ?? '';
  }

  async function setSettings(values: { do_sample?: boolean; max_new_tokens?: number }): Promise<void> {
    if (!(await page.isVisible('#settings'))) await page.click('#settings-toggle');
    if (values.do_sample !== undefined) await page.setChecked('#do_sample', values.do_sample);
    if (values.max_new_tokens !== undefined) await page.fill('#max_new_tokens', String(values.max_new_tokens));
  }

  /** The app with a model, for a test run on its own (-t): the earlier tests leave one loaded. */
  async function ensureModel(): Promise<void> {
    if (!page.url().startsWith(`${base}/`) || page.url().includes('/test-blank')) await page.goto(`${base}/`);
    if ((await page.textContent('#model-name')) === 'No model loaded') await load('#quick-load');
  }

  const lastReply = () => page.locator('.msg.assistant').last();

  async function readReply(): Promise<Reply> {
    const msg = lastReply();
    await msg.and(page.locator('[data-done=true]')).waitFor({ timeout: 120_000 });
    if (await page.locator('#error').isVisible()) throw new Error(`generation failed: ${await page.textContent('#error')}`);
    const stats = msg.locator('.stats');
    return {
      ids: ((await msg.getAttribute('data-token-ids')) ?? '').split(',').filter(Boolean).map(Number),
      text: (await msg.locator('.body').textContent()) ?? '',
      tokensPerSecond: Number(await stats.getAttribute('data-tokens-per-second')),
      ttftMs: Number(await stats.getAttribute('data-ttft-ms')),
      promptTokens: Number(await stats.getAttribute('data-prompt-tokens')),
      stopReason: await stats.getAttribute('data-stop-reason'),
      footer: (await stats.textContent()) ?? '',
      acceptanceRate: await stats.getAttribute('data-acceptance-rate'),
    };
  }

  /** Types a message in the composer and sends it with Enter. */
  async function ask(text = PROMPT): Promise<void> {
    await page.fill('#prompt', text);
    await page.press('#prompt', 'Enter');
  }

  async function chatGreedy(maxNewTokens = MAX_NEW_TOKENS): Promise<Reply> {
    await page.click('#new-chat');
    await setSettings({ do_sample: false, max_new_tokens: maxNewTokens });
    await ask();
    return readReply();
  }

  const noSideScroll = () => page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth && document.body.scrollWidth <= window.innerWidth);

  it('first open with no network: the bundled model is one click away and answers as under Node', async ({ skip }) => {
    if (skipReason) skip(skipReason);
    const ref = await expected();
    const opened = performance.now();
    await page.goto(`${base}/`);
    await page.waitForSelector('#gpu[data-ready=true]', { timeout: 30_000 });
    expect(await page.isVisible('#quick-load')).toBe(true);
    expect(await page.isChecked('input[name=kind][value=bundled]')).toBe(true);
    await shot('first-open-1280.png');
    expect(await audit()).toEqual([]);

    // Every state the status line passes through, and whether the reply showed a typing indicator.
    await page.evaluate(() => {
      const w = window as unknown as { seenStates: string[]; sawTyping: boolean };
      w.seenStates = [];
      w.sawTyping = false;
      const status = document.getElementById('load-status')!;
      new MutationObserver((records) => {
        for (const r of records) w.seenStates.push(r.oldValue ?? '');
      }).observe(status, { attributes: true, attributeFilter: ['data-state'], attributeOldValue: true });
      new MutationObserver(() => {
        if (document.querySelector('.msg.assistant .typing')) w.sawTyping = true;
      }).observe(document.getElementById('messages')!, { childList: true, subtree: true });
    });
    const seen = () =>
      page.evaluate(() => {
        const w = window as unknown as { seenStates: string[]; sawTyping: boolean };
        const states = [...w.seenStates, document.getElementById('load-status')!.dataset.state ?? ''];
        return { states: states.filter((x, i) => x !== states[i - 1]), sawTyping: w.sawTyping };
      });

    await setSettings({ do_sample: false, max_new_tokens: MAX_NEW_TOKENS });
    const status = await load('#quick-load');
    expect(status).toBe('Ready: stories260K');
    const detail = await page.textContent('#load-detail');
    expect(detail).toContain('llama');
    expect(await page.evaluate(() => document.activeElement?.id)).toBe('prompt');
    await ask();
    await page.locator('.msg.assistant[data-token-ids]').waitFor({ timeout: 60_000 });
    const firstTokenMs = performance.now() - opened;
    const first = await readReply();
    expect(first.ids).toEqual(ref.ids);
    expect(first.promptTokens).toBe(ref.promptTokens);
    expect(first.stopReason).toBe('max-new-tokens');
    expect(first.footer).toMatch(/; stopped at max_new_tokens$/);
    expect(await seen()).toEqual({ states: ['idle', 'loading', 'compiling', 'loaded', 'thinking', 'replying', 'loaded'], sawTyping: true });
    expect(await page.locator('.msg.user .who').textContent()).toBe('You');
    expect(await page.locator('.msg.assistant .who').textContent()).toBe('stories260K');
    expect(modelRequests.some((r) => r.endsWith('/models/stories260K/model.safetensors'))).toBe(true);
    console.log(
      `opening the page to the first token of the bundled model: ${firstTokenMs.toFixed(0)} ms ` +
        `(${detail}); the reply: ${first.tokensPerSecond} tokens/s, first token ${first.ttftMs} ms after sending; ${JSON.stringify(first.text)}`,
    );
    await shot('chat-1280.png');
    expect(await audit()).toEqual([]);
    await page.emulateMedia({ colorScheme: 'dark' });
    try {
      await shot('chat-dark-1280.png');
      expect(await audit()).toEqual([]);
    } finally {
      await page.emulateMedia({ colorScheme: 'light' });
    }
  }, 300_000);

  it('remembers the model and settings across a reload, and loads again from the browser cache alone', async ({ skip }) => {
    if (skipReason) skip(skipReason);
    const ref = await expected();
    await page.reload();
    expect(await page.isChecked('input[name=kind][value=bundled]')).toBe(true);
    expect(await page.isChecked('#do_sample')).toBe(false);
    expect(await page.inputValue('#max_new_tokens')).toBe(String(MAX_NEW_TOKENS));
    const downloaded = modelRequests.length;
    await load();
    expect(await page.getAttribute('#load-status', 'data-cached')).toBe('true');
    expect(modelRequests.slice(downloaded)).toEqual([]);
    expect(await page.getAttribute('[id="file-model.safetensors"]', 'data-from-cache')).toBe('true');
    expect((await chatGreedy()).ids).toEqual(ref.ids);

    await page.click('#cache-show');
    await expect.poll(() => page.textContent('#cache-list')).toContain('model.safetensors: 1020.5 KiB');
  }, 180_000);

  it('New chat during a reply drops it: the next prompt is sent alone', async ({ skip }) => {
    if (skipReason) skip(skipReason);
    await ensureModel();
    const ref = await expected();
    await page.click('#new-chat');
    await setSettings({ do_sample: false, max_new_tokens: 400 });
    await ask();
    await page.locator('.msg.assistant[data-token-ids]').waitFor({ timeout: 60_000 });
    await page.click('#new-chat');
    expect(await page.locator('.msg').count()).toBe(0);
    expect(await page.evaluate(() => document.activeElement?.id)).toBe('prompt');
    await setSettings({ max_new_tokens: MAX_NEW_TOKENS });
    await ask();
    const r = await readReply();
    expect(r.promptTokens).toBe(ref.promptTokens);
    expect(r.ids).toEqual(ref.ids);
    expect(await page.locator('.msg').count()).toBe(2);
    await shot('new-chat-1280.png');
  }, 180_000);

  it('Escape and Stop end a reply, say so, and give focus back to the composer', async ({ skip }) => {
    if (skipReason) skip(skipReason);
    await ensureModel();
    for (const how of ['Escape', 'button'] as const) {
      await page.click('#new-chat');
      await setSettings({ max_new_tokens: 400 });
      await ask();
      await page.locator('.msg.assistant[data-token-ids]').waitFor({ timeout: 60_000 });
      if (how === 'Escape') await page.keyboard.press('Escape');
      else await page.click('#stop');
      const r = await readReply();
      expect(r.stopReason, how).toBe('stopped');
      expect(r.footer, how).toMatch(/; stopped$/);
      expect(r.ids.length, how).toBeLessThan(400);
      expect(await page.evaluate(() => document.activeElement?.id), how).toBe('prompt');
      expect(await page.isEnabled('#send'), how).toBe(true);
    }
  }, 180_000);

  it('a full context is named as such, and a failed load keeps the working model', async ({ skip }) => {
    if (skipReason) skip(skipReason);
    await ensureModel();
    // The prompt of the plain-text template is 33 tokens: 15 tokens of room.
    await setSettings({});
    await page.fill('#max-context', '48');
    await load();
    expect(await page.textContent('#load-detail')).toContain('context 48');
    await page.click('#new-chat');
    await setSettings({ max_new_tokens: 100 });
    await ask();
    const full = await readReply();
    expect(full.stopReason).toBe('context-full');
    expect(full.footer).toMatch(/; stopped: the context is full$/);
    // The next turn can't fit: it fails with the reason, and is left out of the conversation.
    await ask();
    const failed = lastReply();
    await failed.and(page.locator('[data-done=true]')).waitFor({ timeout: 60_000 });
    expect(await page.textContent('#error')).toMatch(/^The conversation is too long for the context\.\nContextLengthError: The prompt is \d+ tokens but the context holds 48/);
    expect(await failed.locator('.stats').textContent()).toBe('This turn failed (see the error above) and is left out of the conversation.');
    expect(await page.isEnabled('#send')).toBe(true);

    for (const [url, message] of [
      [`${base}/test-models/no-weights`, /The weights are missing or malformed\.\nSafetensorsError: no model\.safetensors or model\.safetensors\.index\.json in http:.*no-weights/],
      [`${base}/models/no-such-model`, /There is no model at that address\.\nModelNotFoundError: no model at http:.*\/models\/no-such-model: config\.json answered with HTTP 404/],
    ] as const) {
      await page.check('input[name=kind][value=url]');
      await page.fill('#folder-url', url);
      const status = await load('#load-button', { expectFailure: true });
      expect(status).toBe('Loading failed; still using stories260K.');
      expect(await page.textContent('#error')).toMatch(message);
    }
    await shot('failed-load-1280.png');
    expect(await page.isEnabled('#send')).toBe(true);
    await page.click('#new-chat');
    await setSettings({ max_new_tokens: 5 });
    await ask();
    expect((await readReply()).ids.length).toBe(5);

    // A known Hub model with no network: the browser can't resolve huggingface.co.
    await page.check('input[name=kind][value="known:HuggingFaceTB/SmolLM2-135M-Instruct"]');
    await page.fill('#hub-endpoint', 'https://huggingface.co');
    await load('#load-button', { expectFailure: true });
    expect(await page.textContent('#error')).toMatch(/The model’s server could not be reached\.\nNetworkError: could not reach https:\/\/huggingface\.co\/HuggingFaceTB\/SmolLM2-135M-Instruct\/resolve\/main/);

    await page.check('input[name=kind][value=hub]');
    await page.fill('#hub-endpoint', `${base}/hub`);
    await page.fill('#hub-repo', 'local/no-such-repo');
    await load('#load-button', { expectFailure: true });
    expect(await page.textContent('#error')).toMatch(/ModelNotFoundError: no model at http:.*\/hub\/local\/no-such-repo\/resolve\/main: config\.json answered with HTTP 404/);
    await page.fill('#max-context', '2048');
  }, 240_000);

  it('refuses bad field values with a message beside the field, sending nothing', async ({ skip }) => {
    if (skipReason) skip(skipReason);
    await ensureModel();
    await page.click('#new-chat');
    expect(await page.isHidden('#top_p-error')).toBe(true);
    for (const [id, value, message] of [
      ['temperature', 'abc', '“abc” is not a number.'],
      ['temperature', '1e999', '“1e999” is too large.'],
      ['max_new_tokens', 'abc', '“abc” is not a whole number.'],
      ['top_p', '0', 'Must be greater than 0 and at most 1.'],
    ] as const) {
      await setSettings({});
      const good = await page.inputValue(`#${id}`);
      await page.fill(`#${id}`, value);
      await ask();
      expect(await page.textContent(`#${id}-error`), `${id}=${value}`).toBe(message);
      expect(await page.getAttribute(`#${id}`, 'aria-invalid')).toBe('true');
      expect(await page.evaluate(() => document.activeElement?.id)).toBe(id);
      expect(await page.locator('.msg').count()).toBe(0);
      if (id === 'top_p') {
        await shot('field-errors-1280.png');
        expect(await audit()).toEqual([]);
      }
      await page.fill(`#${id}`, good);
    }
    await page.fill('#max-context', '-5');
    await page.check('input[name=kind][value=hub]');
    await page.fill('#hub-repo', 'not a repo');
    const loads = await loadsEnded();
    await page.click('#load-button');
    expect(await page.textContent('#max-context-error')).toBe('Must be at least 16.');
    expect(await page.textContent('#hub-repo-error')).toMatch(/^“not a repo” is not a repository id/);
    expect(await loadsEnded()).toBe(loads);
    await page.fill('#max-context', '2048');
    await page.check('input[name=kind][value=bundled]');
    // The good values go through again.
    await ask();
    await readReply();
  }, 120_000);

  it('JSON mode holds the reply to JSON as under Node; prompt lookup keeps greedy tokens; tools are checked, and refused by a model without a chat template', async ({ skip }) => {
    if (skipReason) skip(skipReason);
    await ensureModel();
    const ref = await nodeReference({ jsonMode: true });
    await page.click('#new-chat');
    await setSettings({ do_sample: false, max_new_tokens: MAX_NEW_TOKENS });
    await page.setChecked('#json_mode', true);
    await ask();
    const r = await readReply();
    expect(r.ids).toEqual(ref.ids);
    expect(r.text.trimStart().startsWith('{')).toBe(true);
    await page.setChecked('#json_mode', false);

    // Prompt lookup keeps greedy output token for token, and reports its drafts in the footer.
    await page.setChecked('#prompt_lookup', true);
    const lookup = await chatGreedy();
    expect(lookup.ids).toEqual((await expected()).ids);
    expect(lookup.acceptanceRate).not.toBeNull();
    await page.setChecked('#prompt_lookup', false);

    await page.click('#new-chat');
    await page.fill('#tools', '{"not": "a list"}');
    await ask();
    expect(await page.textContent('#tools-error')).toMatch(/^Expected a list of tools/);
    expect(await page.evaluate(() => document.activeElement?.id)).toBe('tools');
    expect(await page.locator('.msg').count()).toBe(0);
    await page.fill('#tools', JSON.stringify([{ type: 'function', function: { name: 'get_weather', parameters: { type: 'object', properties: {} } } }]));
    await ask();
    await lastReply().and(page.locator('[data-done=true]')).waitFor({ timeout: 60_000 });
    expect(await page.textContent('#error')).toMatch(/has no chat template, so it cannot be offered tools/);
    await page.fill('#tools', '');
    expect(await audit()).toEqual([]);
  }, 180_000);

  it('at 390 px: one column, no sideways scroll, settings behind a button, replies followed unless the reader scrolls up', async ({ skip }) => {
    if (skipReason) skip(skipReason);
    try {
      await page.setViewportSize({ width: 390, height: 844 });
      await page.goto(`${base}/`);
      expect(await page.getAttribute('#settings-toggle', 'aria-expanded')).toBe('false');
      expect(await noSideScroll()).toBe(true);
      await shot('first-open-390.png');
      expect(await audit()).toEqual([]);
      await page.click('#settings-toggle');
      expect(await noSideScroll()).toBe(true);
      await shot('settings-390.png');
      await load();
      expect(await page.getAttribute('#settings-toggle', 'aria-expanded')).toBe('false');
      const chatWidth = await page.evaluate(() => document.getElementById('chat')!.getBoundingClientRect().width);
      expect(chatWidth).toBeGreaterThan(350);

      await page.click('#new-chat');
      await setSettings({ do_sample: false, max_new_tokens: 300 });
      await page.click('#settings-toggle');
      const overflows = () => page.evaluate(() => document.getElementById('scroller')!.scrollHeight > document.getElementById('scroller')!.clientHeight);
      const gap = () => page.evaluate(() => { const s = document.getElementById('scroller')!; return s.scrollHeight - s.scrollTop - s.clientHeight; });
      // Two turns at most: a third would not fit stories260K's 512 tokens.
      for (let turn = 0; turn < 2 && !(await overflows()); turn++) {
        await ask();
        await readReply();
      }
      expect(await overflows()).toBe(true);
      expect(await gap()).toBeLessThanOrEqual(48);
      expect(await noSideScroll()).toBe(true);
      await shot('chat-390.png');
      expect(await audit()).toEqual([]);

      // Scrolled up during a reply: the page stays where the reader is.
      await page.click('#new-chat');
      await setSettings({ max_new_tokens: 450 });
      await page.click('#settings-toggle');
      await ask();
      await page.waitForFunction(() => { const s = document.getElementById('scroller')!; return s.scrollHeight > s.clientHeight; }, undefined, { timeout: 60_000 });
      expect(await page.getAttribute('.msg.assistant', 'data-done')).toBeNull();
      await page.evaluate(() => document.getElementById('scroller')!.scrollTo({ top: 0 }));
      await readReply();
      expect(await page.evaluate(() => document.getElementById('scroller')!.scrollTop)).toBe(0);
    } finally {
      await page.setViewportSize({ width: 1280, height: 800 });
    }
  }, 240_000);

  it('loads a picked local folder', async ({ skip }) => {
    if (skipReason) skip(skipReason);
    await ensureModel();
    await setSettings({});
    await page.check('input[name=kind][value=files]');
    await page.setInputFiles('#folder-input', MODEL);
    expect(await load()).toBe('Ready: stories260K');
    expect((await chatGreedy()).ids).toEqual((await expected()).ids);
  }, 120_000);

  it('q8 weights with a self-q4 draft from the (fake) Hub: greedy tokens equal Node with the same settings, acceptance in the footer', async ({ skip }) => {
    if (skipReason) skip(skipReason);
    await ensureModel();
    const ref = await nodeReference({ quantize: 'q8', selfQ4Draft: true });
    await setSettings({});
    await page.check('input[name=kind][value=hub]');
    await page.fill('#hub-endpoint', `${base}/hub`);
    await page.fill('#hub-repo', REPO);
    await page.selectOption('#quantize', 'q8');
    await page.selectOption('#draft', 'self-q4');
    try {
      await load();
      const detail = await page.textContent('#load-detail');
      expect(detail).toContain('f32 weights with q8 (8-bit, group 32) linear layers');
      expect(detail).toContain('draft self-q4');
      const r = await chatGreedy();
      expect(r.ids).toEqual(ref.ids);
      expect(Number(r.acceptanceRate)).toBeGreaterThan(0);
      expect(r.footer).toMatch(/draft accepted \d+% of \d+ proposed tokens/);
    } finally {
      await page.selectOption('#quantize', '');
      await page.selectOption('#draft', '');
    }
    await page.click('#cache-clear');
    await expect.poll(() => page.textContent('#cache-list')).toContain('Nothing is cached.');
  }, 180_000);
});
