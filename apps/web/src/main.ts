// The page: the model choice, the settings and the conversation. All model work happens in
// worker.ts; this file checks what the user typed, sends Requests and renders Replies
// (protocol.ts).

import type { GenerationConfig, GenerationStats, Message, ResponseFormat, ToolCallMessage } from '@webgpu-chat/chat';
import type { DtypeOption, LoadProgress } from '@webgpu-chat/engine';
import { checkNumber, checkRepoId, checkTools, checkUrl, type Checked, type NumberRule } from './fields.ts';
import knownModels from './known-models.json';
import { MessageList, type StreamingReply } from './messages.ts';
import type { CacheEntry, DraftOption, FileRead, GpuSummary, LoadedModel, ModelSpec, Quantize, Reply, Request, StopReason } from './protocol.ts';
import { rememberSettings } from './saved-settings.ts';
import { STOP_REASON_TEXT } from './stop-reason.ts';

const $ = <T extends HTMLElement = HTMLElement>(id: string) => document.getElementById(id) as T;
const input = (id: string) => $<HTMLInputElement>(id);
const button = (id: string) => $<HTMLButtonElement>(id);
const promptBox = $<HTMLTextAreaElement>('prompt');

const worker = new Worker(new URL('./worker.ts', import.meta.url), { type: 'module' });
const send = (r: Request) => worker.postMessage(r);

/** The model folder shipped beside the page (the dev and preview servers serve models/). */
const BUNDLED_URL = new URL('models/stories260K', document.baseURI).href;
/** Below this width the settings panel covers the chat instead of sitting beside it. */
const narrow = matchMedia('(max-width: 60rem)');

let loading = false;
let model: LoadedModel | undefined;
let history: Message[] = [];
let picked: { name: string; files: { path: string; blob: Blob }[] } | undefined;
/** The reply being generated. Replies of other ids (dropped by New chat) are ignored. */
let current: { id: number; reply: StreamingReply; maxNewTokens: number; calls: ToolCallMessage[] } | undefined;
/** Calls of the last reply still waiting for a result: the next messages answer them, in order. */
let pendingCalls: ToolCallMessage[] = [];
let nextId = 1;
const messages = new MessageList($('scroller'), $<HTMLOListElement>('messages'));

const mib = (n: number) => (n >= 2 ** 20 ? `${(n / 2 ** 20).toFixed(1)} MiB` : `${(n / 1024).toFixed(1)} KiB`);

// ---- model choices, remembered settings, query presets ---------------------------------

for (const m of knownModels) {
  const label = document.createElement('label');
  label.className = 'choice';
  const radio = document.createElement('input');
  radio.type = 'radio';
  radio.name = 'kind';
  radio.value = `known:${m.repo}`;
  const text = document.createElement('span');
  const small = document.createElement('small');
  small.className = 'muted';
  small.textContent = `Hugging Face Hub · ${m.size} · ${m.format} · needs the network once`;
  text.append(`${m.repo} `, small);
  label.append(radio, ' ', text);
  $('known-models').append(label);
}
rememberSettings($('settings'));
// A remembered choice that is no longer offered falls back to the bundled model.
if (!document.querySelector('input[name=kind]:checked')) document.querySelector<HTMLInputElement>('input[name=kind][value=bundled]')!.checked = true;

// Query parameters preset the form, e.g. ?endpoint=http://127.0.0.1:8080/hub&repo=org/model.
const query = new URLSearchParams(location.search);
for (const [param, id] of [['endpoint', 'hub-endpoint'], ['repo', 'hub-repo'], ['url', 'folder-url']] as const) {
  const v = query.get(param);
  if (v !== null) input(id).value = v;
}
const presetKind = query.has('url') ? 'url' : query.has('repo') ? 'hub' : undefined;
if (presetKind) document.querySelector<HTMLInputElement>(`input[name=kind][value="${presetKind}"]`)!.checked = true;

function choice(): string {
  return document.querySelector<HTMLInputElement>('input[name=kind]:checked')?.value ?? 'bundled';
}

const showKind = () => {
  const kind = choice().split(':')[0]!;
  for (const div of document.querySelectorAll<HTMLElement>('#load div[data-kind]')) div.hidden = !div.dataset.kind!.split(' ').includes(kind);
};
$('source').addEventListener('change', showKind);
showKind();

// ---- errors, status, buttons -----------------------------------------------------------

const HINTS: Record<string, string> = {
  NoAdapterError: 'WebGPU is not available here.',
  ConfigError: 'The model’s config.json describes something this engine cannot run.',
  ModelLoadError: 'The model could not be loaded.',
  ModelNotFoundError: 'There is no model at that address.',
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
  OutOfMemoryError: 'The GPU ran out of memory.',
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
  const generating = current !== undefined;
  button('load-button').disabled = loading || generating;
  button('quick-load').disabled = loading || generating;
  button('send').disabled = loading || generating || !model;
  button('stop').disabled = !generating;
  $('welcome').hidden = !messages.isEmpty || model !== undefined;
}

/** What the loaded model is (shown under the status while it is in use). */
let modelDetail = '';

/** The live status line: the phase only (progress numbers go to the quieter detail line). */
function setStatus(text: string, state: string, detail = modelDetail): void {
  const el = $('load-status');
  if (el.textContent !== text) el.textContent = text;
  el.dataset.state = state;
  $('load-detail').textContent = detail;
}

function setSettingsOpen(open: boolean): void {
  $('settings').hidden = !open;
  button('settings-toggle').setAttribute('aria-expanded', String(open));
  document.body.dataset.settings = open ? 'open' : 'closed';
}
button('settings-toggle').addEventListener('click', () => setSettingsOpen($('settings').hidden));
setSettingsOpen(!narrow.matches);

// ---- field checks ----------------------------------------------------------------------

/** Shows a field's message beside it (or clears it); true when the field is fine. */
function mark<T>(id: string, r: Checked<T>): r is { ok: true; value: T } {
  const el = $(`${id}-error`);
  el.hidden = r.ok;
  el.textContent = r.ok ? '' : r.message;
  if (r.ok) input(id).removeAttribute('aria-invalid');
  else input(id).setAttribute('aria-invalid', 'true');
  return r.ok;
}

const RULES: Record<string, NumberRule> = {
  'max-context': { min: 16, integer: true },
  temperature: { min: 0 },
  top_p: { min: 0, above: true, max: 1 },
  top_k: { min: 0, integer: true },
  max_new_tokens: { min: 1, integer: true },
};

const number = (id: string) => {
  const r = checkNumber(input(id).value, RULES[id]!);
  return mark(id, r) ? r.value : undefined;
};

for (const id of Object.keys(RULES)) input(id).addEventListener('change', () => number(id));

/** Focuses the first field with a message; true when there was one. */
function focusInvalid(ids: string[]): boolean {
  const bad = ids.find((id) => input(id).getAttribute('aria-invalid') === 'true' && !input(id).closest('[hidden]'));
  if (!bad) return false;
  if ($('settings').hidden) setSettingsOpen(true);
  input(bad).focus();
  return true;
}

// ---- model loading -------------------------------------------------------------------

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

button('folder-pick').addEventListener('click', async () => {
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

/** The model the form names, or undefined after marking what is wrong. */
function modelSpec(): ModelSpec | undefined {
  const c = choice();
  const endpoint = () => {
    const r = checkUrl(input('hub-endpoint').value, location.href);
    return mark('hub-endpoint', r) ? r.value : undefined;
  };
  if (c === 'bundled') return { kind: 'url', url: BUNDLED_URL, name: 'stories260K' };
  if (c.startsWith('known:')) {
    const e = endpoint();
    return e === undefined ? undefined : { kind: 'hub', repo: c.slice('known:'.length), endpoint: e, revision: 'main' };
  }
  if (c === 'hub') {
    const repo = checkRepoId(input('hub-repo').value);
    const e = endpoint();
    return mark('hub-repo', repo) && e !== undefined ? { kind: 'hub', repo: repo.value, endpoint: e, revision: 'main' } : undefined;
  }
  if (c === 'url') {
    const r = checkUrl(input('folder-url').value, location.href);
    return mark('folder-url', r) ? { kind: 'url', url: r.value } : undefined;
  }
  if (!picked) {
    showError('Error', 'pick a model folder first');
    return undefined;
  }
  return { kind: 'files', ...picked };
}

let loadStarted = 0;
/** When the load's warm-up (kernel compilation) began. */
let compileStarted = 0;

function startLoad(): void {
  clearError();
  const spec = modelSpec();
  const maxContext = number('max-context');
  if (!spec || maxContext === undefined) {
    focusInvalid(['hub-repo', 'hub-endpoint', 'folder-url', 'max-context']);
    return;
  }
  loading = true;
  loadStarted = performance.now();
  // On a phone the panel covers the chat, where the progress shows.
  if (narrow.matches) setSettingsOpen(false);
  refreshButtons();
  $('files').replaceChildren();
  const bar = $<HTMLProgressElement>('load-bar');
  bar.hidden = false;
  bar.value = 0;
  setStatus('Loading the model…', 'loading', '');
  const quantize = $<HTMLSelectElement>('quantize').value as Quantize | '';
  const draft = $<HTMLSelectElement>('draft').value as DraftOption | '';
  send({
    type: 'load',
    model: spec,
    dtype: $<HTMLSelectElement>('dtype').value as DtypeOption,
    maxContext,
    useCache: input('use-cache').checked,
    ...(quantize ? { quantize } : {}),
    ...(draft ? { draft } : {}),
  });
}

button('load-button').addEventListener('click', startLoad);
button('quick-load').addEventListener('click', () => {
  document.querySelector<HTMLInputElement>('input[name=kind][value=bundled]')!.checked = true;
  $('source').dispatchEvent(new Event('change', { bubbles: true }));
  startLoad();
});

function onProgress(p: LoadProgress): void {
  const share = p.totalBytes ? p.loadedBytes / p.totalBytes : 0;
  $<HTMLProgressElement>('load-bar').value = share;
  const seconds = (performance.now() - loadStarted) / 1000;
  const speed = seconds > 0 ? `, ${mib(p.loadedBytes / seconds)}/s` : '';
  setStatus('Loading the model…', 'loading', `${(100 * share).toFixed(0)}%: ${mib(p.loadedBytes)} of ${mib(p.totalBytes)}${speed} (${p.file})`);
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

/** Counts finished loads (done or failed) on the status line, for scripts that wait for one. */
function countLoadEnd(): void {
  const el = $('load-status');
  el.dataset.loadsEnded = String(Number(el.dataset.loadsEnded ?? 0) + 1);
}

function onLoaded(m: LoadedModel, files: FileRead[]): void {
  model = m;
  const cached = files.filter((f) => f.fromCache).length;
  const source = files.length === 0 ? '' : cached === files.length ? ', all files from the browser cache' : cached ? `, ${cached} of ${files.length} files from the browser cache` : '';
  const weights = m.quantization ? `${m.dtype} weights with ${m.quantization} linear layers` : `${m.dtype} weights`;
  const draft = m.draft ? `, draft ${m.draft.name} (${mib(m.draft.weightBytes)})` : '';
  const now = performance.now();
  const seconds = (from: number) => `${((now - from) / 1000).toFixed(1)} s`;
  modelDetail = `${m.modelType}, ${weights} (${mib(m.weightBytes)} on the GPU)${draft}, context ${m.maxContext}${source}; loaded in ${seconds(loadStarted)}, of which compiling kernels ${seconds(compileStarted)}.`;
  setStatus(`Ready: ${m.name}`, 'loaded');
  $('load-status').dataset.cached = String(files.length > 0 && cached === files.length);
  $('load-bar').hidden = true;
  $('model-name').textContent = m.name;
  $('template-note').hidden = m.hasChatTemplate;
  newChat();
  promptBox.focus();
}

// ---- cache ---------------------------------------------------------------------------

button('cache-show').addEventListener('click', () => send({ type: 'cache-list' }));
button('cache-clear').addEventListener('click', () => send({ type: 'cache-clear' }));

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

/** The settings a reply runs with, or undefined after marking the fields that are wrong. */
/** Tokens a prompt-lookup draft proposes at most (Transformers' usual 10; the loop sizes each draft by measured cost). */
const PROMPT_LOOKUP_TOKENS = 10;

function generationConfig(): GenerationConfig | undefined {
  const values = {
    temperature: number('temperature'),
    top_p: number('top_p'),
    top_k: number('top_k'),
    max_new_tokens: number('max_new_tokens'),
  };
  const { temperature, top_p, top_k, max_new_tokens } = values;
  if (temperature === undefined || top_p === undefined || top_k === undefined || max_new_tokens === undefined) return undefined;
  return { do_sample: input('do_sample').checked, temperature, top_p, top_k, max_new_tokens, ...(input('prompt_lookup').checked ? { prompt_lookup_num_tokens: PROMPT_LOOKUP_TOKENS } : {}) };
}

/** Moves focus to the composer unless the user is working elsewhere on the page. */
function focusComposer(): void {
  const active = document.activeElement;
  if (!active || active === document.body || active.closest('#composer') || active.id === 'new-chat') promptBox.focus();
}

/** Stops the running reply; its end (with what it wrote so far) arrives as 'done'. */
function stop(): void {
  if (!current) return;
  send({ type: 'stop', id: current.id });
  setStatus('Stopping…', 'stopping');
}

/** Drops the conversation: a running reply is stopped, and its late replies are ignored. */
function newChat(): void {
  if (current) send({ type: 'stop', id: current.id });
  current = undefined;
  history = [];
  pendingCalls = [];
  showPendingCall();
  messages.clear();
  if (model) setStatus(`Ready: ${model.name}`, 'loaded');
  refreshButtons();
}

button('new-chat').addEventListener('click', () => {
  newChat();
  promptBox.focus();
});
button('stop').addEventListener('click', () => {
  promptBox.focus();
  stop();
});
document.addEventListener('keydown', (ev) => {
  if (ev.key !== 'Escape') return;
  if (current) {
    ev.preventDefault();
    stop();
    promptBox.focus();
  } else if (narrow.matches && !$('settings').hidden) {
    setSettingsOpen(false);
    button('settings-toggle').focus();
  }
});

$('composer').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const text = promptBox.value;
  if (!model || current || loading || !text.trim()) return;
  clearError();
  const config = generationConfig();
  const tools = toolsField();
  if (!config || tools === null) {
    focusInvalid([...Object.keys(RULES), 'tools']);
    return;
  }
  promptBox.value = '';
  const call = pendingCalls.shift();
  if (call) {
    // A tool's result, for the oldest call still waiting.
    history.push({ role: 'tool', content: text, tool_call_id: call.id, name: call.function.name });
    messages.addUser(text, `Result of ${call.function.name}`);
    showPendingCall();
    if (pendingCalls.length) return;
  } else {
    history.push({ role: 'user', content: text });
    messages.addUser(text);
  }
  const speaker = model.name.split('/').pop() ?? 'Model';
  current = { id: nextId++, reply: messages.addAssistant(speaker), maxNewTokens: config.max_new_tokens!, calls: [] };
  setStatus('Thinking…', 'thinking');
  refreshButtons();
  const system = $<HTMLTextAreaElement>('system').value.trim();
  const responseFormat: ResponseFormat | undefined = input('json_mode').checked ? { type: 'json_object' } : undefined;
  send({
    type: 'generate',
    id: current.id,
    messages: system ? [{ role: 'system', content: system }, ...history] : [...history],
    config,
    ...(tools ? { tools } : {}),
    ...(responseFormat ? { responseFormat } : {}),
  });
});

/** The tools field, checked: undefined when empty, null (with a message beside it) when malformed. */
function toolsField(): unknown[] | undefined | null {
  const r = checkTools($<HTMLTextAreaElement>('tools').value);
  return mark('tools', r) ? r.value : null;
}
$('tools').addEventListener('change', () => toolsField());

/** The composer says whose result the next message is, while calls wait. */
function showPendingCall(): void {
  const next = pendingCalls[0];
  promptBox.placeholder = next ? `Result of ${next.function.name}(${String(next.function.arguments)})` : 'Message (Enter sends, Shift+Enter new line, Esc stops)';
  $('prompt-label').textContent = next ? `Result of the tool call ${next.function.name}` : 'Message';
}

promptBox.addEventListener('keydown', (ev) => {
  if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
    ev.preventDefault();
    $<HTMLFormElement>('composer').requestSubmit();
  }
});

function onToken(id: number, delta: string, tokenId: number | null): void {
  if (current?.id !== id) return;
  if (current.reply.text === '' && delta) setStatus('Replying…', 'replying');
  current.reply.append(delta, tokenId);
}

function onDone(id: number, stats: GenerationStats, why: StopReason): void {
  if (current?.id !== id) return;
  const { reply, calls } = current;
  history.push({ role: 'assistant', content: reply.text, ...(calls.length ? { tool_calls: calls } : {}) });
  pendingCalls = [...calls];
  showPendingCall();
  const s = document.createElement('small');
  s.className = 'stats muted';
  s.dataset.tokensPerSecond = stats.decodeTokensPerSecond.toFixed(2);
  s.dataset.ttftMs = stats.timeToFirstTokenMs.toFixed(0);
  s.dataset.promptTokens = String(stats.promptTokens);
  s.dataset.stopReason = why;
  const spec = stats.speculative;
  if (spec) s.dataset.acceptanceRate = spec.acceptanceRate.toFixed(3);
  const draft = spec
    ? `; draft accepted ${(100 * spec.acceptanceRate).toFixed(0)}% of ${spec.draftedTokens} proposed tokens, ${spec.meanAcceptedTokens.toFixed(2)} per step`
    : '';
  s.textContent =
    `${stats.newTokens} tokens in ${(stats.totalMs / 1000).toFixed(2)} s: ${stats.decodeTokensPerSecond.toFixed(1)} tokens/s, ` +
    `first token after ${stats.timeToFirstTokenMs.toFixed(0)} ms (${stats.promptTokens} prompt tokens, ${stats.reusedTokens} reused)${draft}; ${STOP_REASON_TEXT[why]}`;
  reply.finish(s);
  current = undefined;
  setStatus(`Ready: ${model?.name ?? ''}`, 'loaded');
  refreshButtons();
  focusComposer();
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

function onError(r: Extract<Reply, { type: 'error' }>): void {
  if (r.op === 'generate' && r.id !== current?.id) return;
  showError(r.name, r.message);
  if (r.op === 'gpu') {
    $('gpu').textContent = 'No WebGPU adapter.';
    return;
  }
  if (r.op === 'load') {
    loading = false;
    $('load-bar').hidden = true;
    setStatus(r.kept ? `Loading failed; still using ${r.kept}.` : 'Loading failed.', 'failed');
    countLoadEnd();
  }
  if (r.op === 'generate' && current) {
    // The failed turn is taken back, so the next message is not sent after an unanswered one.
    history.pop();
    const note = document.createElement('small');
    note.className = 'stats muted';
    note.textContent = 'This turn failed (see the error above) and is left out of the conversation.';
    current.reply.finish(note);
    current = undefined;
    setStatus(model ? `Ready: ${model.name}` : 'No model loaded.', model ? 'loaded' : 'idle');
    focusComposer();
  }
  refreshButtons();
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
    case 'compiling':
      compileStarted = performance.now();
      $<HTMLProgressElement>('load-bar').removeAttribute('value');
      return setStatus('Compiling kernels…', 'compiling', 'A short warm-up reply builds the GPU programs, so the first real reply starts at once.');
    case 'loaded':
      loading = false;
      onLoaded(r.model, r.files);
      countLoadEnd();
      if (r.cacheError) showError('CacheError', `the model works but could not be kept in this browser: ${r.cacheError}`);
      return refreshButtons();
    case 'token':
      return onToken(r.id, r.delta, r.tokenId);
    case 'reasoning':
      if (current?.id === r.id) current.reply.reason(r.delta);
      return;
    case 'tool-call':
      if (current?.id === r.id) {
        const call: ToolCallMessage = { id: `call_${current.id}_${current.calls.length}`, type: 'function', function: r.call };
        current.calls.push(call);
        current.reply.toolCall(r.call.name, r.call.arguments);
      }
      return;
    case 'done':
      return onDone(r.id, r.stats, r.stopReason);
    case 'cache':
      return onCache(r.entries);
    case 'error':
      return onError(r);
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
