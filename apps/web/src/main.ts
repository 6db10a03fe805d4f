// The page: forms and the message list. All model work happens in worker.ts; this file
// only sends Requests and renders Replies (protocol.ts).

import type { GenerationConfig, GenerationStats, Message } from '@webgpu-chat/chat';
import type { DtypeOption, LoadProgress } from '@webgpu-chat/engine';
import { renderMarkdown } from './markdown.ts';
import type { CacheEntry, DraftOption, FileRead, GpuSummary, LoadedModel, ModelSpec, Quantize, Reply, Request } from './protocol.ts';

const $ = <T extends HTMLElement = HTMLElement>(id: string) => document.getElementById(id) as T;
const input = (id: string) => $<HTMLInputElement>(id);

const worker = new Worker(new URL('./worker.ts', import.meta.url), { type: 'module' });
const send = (r: Request) => worker.postMessage(r);

let busy: 'load' | 'generate' | undefined;
let model: LoadedModel | undefined;
let history: Message[] = [];
let picked: { name: string; files: { path: string; blob: Blob }[] } | undefined;
/** The assistant message being streamed. */
let reply: { el: HTMLElement; body: HTMLElement; text: string; ids: number[] } | undefined;

const mib = (n: number) => (n >= 2 ** 20 ? `${(n / 2 ** 20).toFixed(1)} MiB` : `${(n / 1024).toFixed(1)} KiB`);

// Query parameters preset the load form, e.g. ?endpoint=http://127.0.0.1:8080/hub&repo=org/model.
const query = new URLSearchParams(location.search);
for (const [param, id] of [['endpoint', 'hub-endpoint'], ['repo', 'hub-repo'], ['url', 'folder-url']] as const) {
  const v = query.get(param);
  if (v !== null) input(id).value = v;
}

const HINTS: Record<string, string> = {
  NoAdapterError: 'WebGPU is not available here.',
  ConfigError: 'The model’s config.json describes something this engine cannot run.',
  ModelLoadError: 'The model could not be loaded.',
  FileSourceError: 'A model file is missing or could not be read.',
  NetworkError: 'The model’s server could not be reached.',
  CacheError: 'The browser cache refused the files.',
  SafetensorsError: 'The weights are missing or malformed.',
  UploadError: 'The weights could not be copied to the GPU.',
  TokenizerLoadError: 'The tokenizer files are missing or malformed.',
  TemplateError: 'The chat template failed.',
  GenerationConfigError: 'A generation setting is out of range.',
  QuantError: 'The weights could not be quantized.',
  DraftModelError: 'The draft model cannot serve this model.',
  ContextLengthError: 'The conversation is too long for the context.',
};

function showError(name: string, message: string): void {
  const el = $('error');
  el.textContent = `${HINTS[name] ?? 'Something went wrong.'}\n${name}: ${message}`;
  el.hidden = false;
}

function clearError(): void {
  $('error').hidden = true;
}

function refreshButtons(): void {
  $<HTMLButtonElement>('load-button').disabled = busy !== undefined;
  $<HTMLButtonElement>('send').disabled = busy !== undefined || !model;
  $<HTMLButtonElement>('stop').disabled = busy !== 'generate';
}

function setStatus(text: string, state: string): void {
  const el = $('load-status');
  el.textContent = text;
  el.dataset.state = state;
}

// ---- model loading -------------------------------------------------------------------

function kind(): ModelSpec['kind'] {
  return (document.querySelector<HTMLInputElement>('input[name=kind]:checked')?.value ?? 'hub') as ModelSpec['kind'];
}

const showKind = () => {
  for (const div of document.querySelectorAll<HTMLElement>('#load div[data-kind]')) div.hidden = div.dataset.kind !== kind();
};
for (const radio of document.querySelectorAll<HTMLInputElement>('input[name=kind]')) radio.addEventListener('change', showKind);
if (query.has('url')) {
  document.querySelector<HTMLInputElement>('input[name=kind][value=url]')!.checked = true;
  showKind();
}

/** <input webkitdirectory> gives paths like "folder/config.json": keep them relative to the folder. */
input('folder-input').addEventListener('change', () => {
  const files = [...(input('folder-input').files ?? [])];
  if (!files.length) return;
  const top = files[0]!.webkitRelativePath.split('/')[0] ?? 'folder';
  setPicked(top, files.map((f) => ({ path: f.webkitRelativePath.slice(top.length + 1) || f.name, blob: f })));
});

interface DirHandle {
  name: string;
  values(): AsyncIterable<{ kind: 'file' | 'directory'; name: string; getFile?: () => Promise<File> } & DirHandle>;
}

$('folder-pick').addEventListener('click', async () => {
  const pick = (window as unknown as { showDirectoryPicker?: () => Promise<DirHandle> }).showDirectoryPicker;
  if (!pick) {
    input('folder-input').click();
    return;
  }
  try {
    const dir = await pick();
    const files: { path: string; blob: Blob }[] = [];
    const walk = async (d: DirHandle, prefix: string) => {
      for await (const h of d.values()) {
        if (h.kind === 'file' && h.getFile) files.push({ path: prefix + h.name, blob: await h.getFile() });
        else if (h.kind === 'directory') await walk(h, `${prefix}${h.name}/`);
      }
    };
    await walk(dir, '');
    setPicked(dir.name, files);
  } catch (e) {
    if ((e as Error).name !== 'AbortError') showError((e as Error).name, (e as Error).message);
  }
});

function setPicked(name: string, files: { path: string; blob: Blob }[]): void {
  picked = { name, files };
  $('folder-name').textContent = `${name}: ${files.length} files`;
}

function modelSpec(): ModelSpec {
  switch (kind()) {
    case 'hub':
      return { kind: 'hub', repo: input('hub-repo').value.trim(), endpoint: input('hub-endpoint').value.trim(), revision: 'main' };
    case 'url':
      return { kind: 'url', url: input('folder-url').value.trim() };
    case 'files':
      if (!picked) throw new Error('pick a model folder first');
      return { kind: 'files', ...picked };
  }
}

$('load-button').addEventListener('click', () => {
  clearError();
  let spec: ModelSpec;
  try {
    spec = modelSpec();
  } catch (e) {
    showError('Error', (e as Error).message);
    return;
  }
  busy = 'load';
  model = undefined;
  refreshButtons();
  $('files').replaceChildren();
  $<HTMLProgressElement>('load-bar').value = 0;
  setStatus('Reading the model’s files…', 'loading');
  const quantize = $<HTMLSelectElement>('quantize').value as Quantize | '';
  const draft = $<HTMLSelectElement>('draft').value as DraftOption | '';
  send({
    type: 'load',
    model: spec,
    dtype: $<HTMLSelectElement>('dtype').value as DtypeOption,
    maxContext: Number(input('max-context').value) || 2048,
    useCache: input('use-cache').checked,
    ...(quantize ? { quantize } : {}),
    ...(draft ? { draft } : {}),
  });
});

function onProgress(p: LoadProgress): void {
  $<HTMLProgressElement>('load-bar').value = p.totalBytes ? p.loadedBytes / p.totalBytes : 0;
  setStatus(`${p.file}: ${mib(p.loadedBytes)} of ${mib(p.totalBytes)}, tensor ${p.loadedTensors} of ${p.totalTensors}`, 'loading');
}

function onFile(r: FileRead): void {
  const id = `file-${r.file}`;
  let li = document.getElementById(id);
  if (!li) {
    li = document.createElement('li');
    li.id = id;
    $('files').appendChild(li);
  }
  li.dataset.fromCache = String(r.fromCache);
  li.textContent = `${r.file}: ${mib(r.bytes)} ${r.fromCache ? 'from the browser cache' : 'downloaded'}`;
}

function onLoaded(m: LoadedModel, files: FileRead[]): void {
  model = m;
  const cached = files.filter((f) => f.fromCache).length;
  const source = files.length === 0 ? '' : cached === files.length ? ', all files from the browser cache' : cached ? `, ${cached} of ${files.length} files from the browser cache` : '';
  const weights = m.quantization ? `${m.dtype} weights with ${m.quantization} linear layers` : `${m.dtype} weights`;
  const draft = m.draft ? `, draft ${m.draft.name} (${mib(m.draft.weightBytes)})` : '';
  setStatus(`${m.name}: ${m.modelType}, ${weights} (${mib(m.weightBytes)} on the GPU)${draft}, context ${m.maxContext}${source}.`, 'loaded');
  $('load-status').dataset.cached = String(files.length > 0 && cached === files.length);
  $<HTMLProgressElement>('load-bar').value = 1;
  $('template-note').hidden = m.hasChatTemplate;
  newChat();
}

// ---- cache ---------------------------------------------------------------------------

$('cache-show').addEventListener('click', () => send({ type: 'cache-list' }));
$('cache-clear').addEventListener('click', () => send({ type: 'cache-clear' }));

function onCache(entries: CacheEntry[]): void {
  const list = $('cache-list');
  list.replaceChildren();
  if (!entries.length) {
    const li = document.createElement('li');
    li.textContent = 'Nothing is cached.';
    list.appendChild(li);
  }
  for (const e of entries) {
    const li = document.createElement('li');
    const total = e.files.reduce((a, f) => a + f.bytes, 0);
    li.textContent = `${e.folder} (${mib(total)})`;
    const files = document.createElement('ul');
    for (const f of e.files) {
      const fl = document.createElement('li');
      fl.textContent = `${f.name}: ${mib(f.bytes)}`;
      files.appendChild(fl);
    }
    li.appendChild(files);
    list.appendChild(li);
  }
}

// ---- chat ----------------------------------------------------------------------------

function addMessage(role: 'user' | 'assistant', text: string): HTMLElement {
  const li = document.createElement('li');
  li.className = `msg ${role}`;
  const body = document.createElement('div');
  body.className = 'body';
  if (role === 'user') body.textContent = text;
  else body.append(renderMarkdown(document, text));
  li.appendChild(body);
  $('messages').appendChild(li);
  li.scrollIntoView({ block: 'end' });
  return li;
}

function generationConfig(): GenerationConfig {
  const num = (id: string) => Number(input(id).value);
  return {
    do_sample: input('do_sample').checked,
    temperature: num('temperature'),
    top_p: num('top_p'),
    top_k: num('top_k'),
    max_new_tokens: num('max_new_tokens'),
  };
}

function newChat(): void {
  if (busy === 'generate') send({ type: 'stop' });
  history = [];
  $('messages').replaceChildren();
}

$('new-chat').addEventListener('click', newChat);
$('stop').addEventListener('click', () => send({ type: 'stop' }));

$('composer').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const text = $<HTMLTextAreaElement>('prompt').value;
  if (!model || busy || !text.trim()) return;
  clearError();
  $<HTMLTextAreaElement>('prompt').value = '';
  history.push({ role: 'user', content: text });
  addMessage('user', text);
  const el = addMessage('assistant', '');
  reply = { el, body: el.querySelector<HTMLElement>('.body')!, text: '', ids: [] };
  const system = $<HTMLTextAreaElement>('system').value.trim();
  busy = 'generate';
  refreshButtons();
  send({ type: 'generate', messages: system ? [{ role: 'system', content: system }, ...history] : history, config: generationConfig() });
});

$('prompt').addEventListener('keydown', (ev) => {
  if (ev.key === 'Enter' && !ev.shiftKey) {
    ev.preventDefault();
    $<HTMLFormElement>('composer').requestSubmit();
  }
});

function onToken(delta: string, tokenId: number | null): void {
  if (!reply) return;
  reply.text += delta;
  if (tokenId !== null) reply.ids.push(tokenId);
  reply.el.dataset.tokenIds = reply.ids.join(',');
  reply.body.replaceChildren(renderMarkdown(document, reply.text));
}

function onDone(stats: GenerationStats): void {
  if (!reply) return;
  history.push({ role: 'assistant', content: reply.text });
  const s = document.createElement('small');
  s.className = 'stats muted';
  s.dataset.tokensPerSecond = stats.decodeTokensPerSecond.toFixed(2);
  s.dataset.ttftMs = stats.timeToFirstTokenMs.toFixed(0);
  const why = stats.finishReason === 'length' ? ', stopped at max_new_tokens' : stats.finishReason === 'abort' ? ', stopped' : '';
  const spec = stats.speculative;
  if (spec) s.dataset.acceptanceRate = spec.acceptanceRate.toFixed(3);
  const draft = spec
    ? `; draft accepted ${(100 * spec.acceptanceRate).toFixed(0)}% of ${spec.draftedTokens} proposed tokens, ${spec.meanAcceptedTokens.toFixed(2)} per step`
    : '';
  s.textContent =
    `${stats.newTokens} tokens in ${(stats.totalMs / 1000).toFixed(2)} s: ${stats.decodeTokensPerSecond.toFixed(1)} tokens/s, ` +
    `first token after ${stats.timeToFirstTokenMs.toFixed(0)} ms (${stats.promptTokens} prompt tokens, ${stats.reusedTokens} reused)${draft}${why}`;
  reply.el.appendChild(s);
  reply.el.dataset.done = 'true';
  reply = undefined;
}

// ---- worker replies ------------------------------------------------------------------

function showGpu(g: GpuSummary): void {
  const l = g.info.limits;
  $('gpu').textContent =
    `Adapter: ${[g.info.vendor, g.info.architecture, g.info.description].filter(Boolean).join(' ') || 'unknown'}${g.info.isSoftware ? ' (software)' : ''}; ` +
    `shader-f16 ${g.hasF16 ? 'available' : 'not available (f32 kernels)'}; ` +
    `max buffer ${mib(l.maxBufferSize)}, max storage binding ${mib(l.maxStorageBufferBindingSize)}, workgroup storage ${l.maxComputeWorkgroupStorageSize} B`;
  $('gpu').dataset.ready = 'true';
}

worker.onmessage = (ev: MessageEvent<Reply>) => {
  const r = ev.data;
  switch (r.type) {
    case 'gpu':
      return showGpu(r.gpu);
    case 'progress':
      return onProgress(r.progress);
    case 'file':
      return onFile(r.read);
    case 'loaded':
      busy = undefined;
      onLoaded(r.model, r.files);
      if (r.cacheError) showError('CacheError', `the model works but could not be kept in this browser: ${r.cacheError}`);
      return refreshButtons();
    case 'token':
      return onToken(r.delta, r.tokenId);
    case 'done':
      busy = undefined;
      onDone(r.stats);
      return refreshButtons();
    case 'cache':
      return onCache(r.entries);
    case 'error':
      showError(r.name, r.message);
      if (r.op === 'gpu') {
        $('gpu').textContent = 'No WebGPU adapter.';
        return;
      }
      if (r.op === 'load') setStatus('Loading failed.', 'failed');
      if (r.op === 'load' || r.op === 'generate') {
        busy = undefined;
        if (reply) reply.el.dataset.done = 'true';
        reply = undefined;
        refreshButtons();
      }
  }
};

worker.onerror = (ev) => showError('WorkerError', ev.message || 'the engine’s worker failed to start');

if (!('gpu' in navigator)) {
  $('gpu').textContent = 'No WebGPU adapter.';
  showError('NoAdapterError', 'this browser does not expose navigator.gpu. Use Chrome or Edge 113+, Safari 26+, or Firefox 141+ (or enable WebGPU in its settings); the page must be served over https or from localhost.');
} else {
  send({ type: 'gpu' });
}
refreshButtons();
