// Resolves MODEL to a folder on disk: a local folder as is, or a Hub repo id downloaded
// into the Hugging Face cache layout that Python's huggingface_hub uses
//   $HF_HUB_CACHE/models--ORG--NAME/{blobs/ETAG, snapshots/COMMIT/FILE -> ../../blobs/ETAG, refs/REV}
// so a model fetched by Python `transformers` is reused here and vice versa.
//
// @huggingface/hub supplies the cache path, the repo info and the per-file download
// (including Xet-backed files). Its downloadFileToCacheDir is not used: it has no
// progress and cannot resume, and this module needs both.

import { createWriteStream } from 'node:fs';
import { mkdir, readFile, rename, stat, symlink, copyFile, rm, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import {
  HubApiError,
  downloadFile,
  fileDownloadInfo,
  getHFHubCachePath,
  getRepoFolderName,
  modelInfo,
} from '@huggingface/hub';

export class HubError extends Error {
  override name = 'HubError';
}
/** 404: no such repo (or a private one the token cannot see). */
export class RepoNotFoundError extends HubError {
  override name = 'RepoNotFoundError';
}
/** 401/403: a gated or private repo and no token, or a token without access. */
export class HubAccessError extends HubError {
  override name = 'HubAccessError';
}
/** The endpoint could not be reached (connection refused, DNS, reset) and nothing usable is cached. */
export class HubNetworkError extends HubError {
  override name = 'HubNetworkError';
}
/** HF_HUB_OFFLINE is set and the model is not (completely) in the cache. */
export class HubOfflineError extends HubError {
  override name = 'HubOfflineError';
}

export interface HubEnv {
  endpoint: string;
  token?: string;
  offline: boolean;
  cacheDir: string;
}

const TRUE_VALUES = new Set(['1', 'on', 'yes', 'true']);

/** Reads the HF_* variables the way huggingface_hub does (token: HF_TOKEN, else the token file under HF_HOME). */
export async function hubEnv(env: Record<string, string | undefined> = process.env): Promise<HubEnv> {
  const hfHome = env.HF_HOME ?? join(env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'huggingface');
  let token = env.HF_TOKEN || env.HUGGING_FACE_HUB_TOKEN || undefined;
  if (!token) {
    try {
      token = (await readFile(env.HF_TOKEN_PATH ?? join(hfHome, 'token'), 'utf8')).trim() || undefined;
    } catch {
      // No saved token: anonymous access.
    }
  }
  // getHFHubCachePath reads process.env; compute it the same way from `env` so tests can pass their own.
  const cacheDir =
    env === process.env ? getHFHubCachePath() : (env.HF_HUB_CACHE ?? env.HUGGINGFACE_HUB_CACHE ?? join(hfHome, 'hub'));
  return {
    endpoint: (env.HF_ENDPOINT || 'https://huggingface.co').replace(/\/+$/, ''),
    ...(token ? { token } : {}),
    offline: TRUE_VALUES.has((env.HF_HUB_OFFLINE ?? '').toLowerCase()),
    cacheDir,
  };
}

export interface RepoRef {
  repo: string;
  revision: string;
}

const REPO_RE = /^([A-Za-z0-9][\w.-]*)\/([A-Za-z0-9][\w.-]*)(?:@([\w./-]+))?$/;
const COMMIT_RE = /^[0-9a-f]{40}$/;

/** `org/name` or `org/name@revision` → repo and revision (default main); undefined when it is not a repo id. */
export function parseRepoId(spec: string): RepoRef | undefined {
  const m = REPO_RE.exec(spec);
  if (!m || m[1]!.endsWith('.') || spec.includes('..')) return undefined;
  return { repo: `${m[1]}/${m[2]}`, revision: m[3] ?? 'main' };
}

/** Files a model needs; everything else in the repo (other weight formats, READMEs) is skipped. */
export const NEEDED_FILES = [
  'config.json',
  'generation_config.json',
  'tokenizer.json',
  'tokenizer_config.json',
  'chat_template.jinja',
  'special_tokens_map.json',
] as const;
const INDEX_FILE = 'model.safetensors.index.json';

export interface DownloadProgress {
  file: string;
  /** Bytes of this file on disk (including a resumed part). */
  loaded: number;
  total: number;
  /** Bytes fetched in this run (to compute a speed that ignores a resumed part). */
  fetched: number;
  /** Milliseconds since this file's transfer started. */
  elapsedMs: number;
  fileIndex: number;
  fileCount: number;
  done: boolean;
}

export interface ResolveOptions {
  env?: HubEnv;
  onProgress?: (p: DownloadProgress) => void;
  fetch?: typeof fetch;
}

export interface ResolvedModel {
  /** A folder holding config.json, the tokenizer and the weights. */
  path: string;
  source: 'local' | 'cache' | 'download';
  repo?: string;
  revision?: string;
  commit?: string;
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

async function isDirectory(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isDirectory();
  } catch {
    return false;
  }
}

function repoFolder(cacheDir: string, repo: string): string {
  return join(cacheDir, getRepoFolderName({ type: 'model', name: repo }));
}

/** Shard names from a safetensors index, each checked to stay inside the snapshot. */
function shardsOf(indexText: string, where: string): string[] {
  let map: unknown;
  try {
    map = (JSON.parse(indexText) as { weight_map?: unknown }).weight_map;
  } catch (e) {
    throw new HubError(`${where}: ${INDEX_FILE} is not valid JSON (${(e as Error).message})`);
  }
  if (!map || typeof map !== 'object') throw new HubError(`${where}: ${INDEX_FILE} has no weight_map`);
  const shards = [...new Set(Object.values(map as Record<string, unknown>))];
  for (const s of shards) {
    if (typeof s !== 'string' || !/^[\w.-]+(\/[\w.-]+)*$/.test(s) || s.split('/').includes('..')) {
      throw new HubError(`${where}: ${INDEX_FILE} names an invalid shard ${JSON.stringify(s)}`);
    }
  }
  return shards as string[];
}

/** A snapshot is usable when it has config.json and all its weights (every shard its index lists). */
async function snapshotComplete(dir: string): Promise<boolean> {
  if (!(await exists(join(dir, 'config.json')))) return false;
  if (await exists(join(dir, INDEX_FILE))) {
    const shards = shardsOf(await readFile(join(dir, INDEX_FILE), 'utf8'), dir);
    for (const s of shards) if (!(await exists(join(dir, s)))) return false;
    return shards.length > 0;
  }
  return exists(join(dir, 'model.safetensors'));
}

/** The cached snapshot folder for repo@revision (a commit, or a ref recorded under refs/), if complete. */
export async function cachedSnapshot(cacheDir: string, ref: RepoRef): Promise<{ path: string; commit: string } | undefined> {
  const folder = repoFolder(cacheDir, ref.repo);
  let commit = ref.revision;
  if (!COMMIT_RE.test(commit)) {
    try {
      commit = (await readFile(join(folder, 'refs', ref.revision), 'utf8')).trim();
    } catch {
      return undefined;
    }
  }
  const path = join(folder, 'snapshots', commit);
  return (await snapshotComplete(path)) ? { path, commit } : undefined;
}

function networkCode(e: unknown): string | undefined {
  let cur: unknown = e;
  for (let depth = 0; cur && depth < 4; depth++) {
    const code = (cur as { code?: unknown }).code;
    if (typeof code === 'string') return code;
    cur = (cur as { cause?: unknown }).cause;
  }
  return undefined;
}

function isNetworkError(e: unknown): boolean {
  if (e instanceof HubApiError || e instanceof HubError) return false;
  // Node's fetch throws TypeError('fetch failed') with the socket error as cause; Deno a TypeError with the message.
  return e instanceof TypeError || /ECONNREFUSED|ENOTFOUND|EAI_AGAIN|ECONNRESET|ETIMEDOUT|EHOSTUNREACH|ENETUNREACH/.test(String(networkCode(e)));
}

function translateError(e: unknown, ref: RepoRef, env: HubEnv): unknown {
  const id = `${ref.repo}@${ref.revision}`;
  if (e instanceof HubApiError) {
    if (e.statusCode === 404) {
      return new RepoNotFoundError(
        `Hub repo '${id}' not found at ${env.endpoint}: check the name and revision${env.token ? '' : ' (if it is private, set HF_TOKEN)'}`,
      );
    }
    if (e.statusCode === 401 || e.statusCode === 403) {
      return new HubAccessError(
        env.token
          ? `access to '${ref.repo}' was refused (${e.statusCode}) with the token in HF_TOKEN: it is gated or private and this token has no access. Accept the model's conditions at ${env.endpoint}/${ref.repo} with the token's account.`
          : `'${ref.repo}' is gated or private (${e.statusCode}): request access at ${env.endpoint}/${ref.repo}, then set HF_TOKEN to a token of that account (or run 'huggingface-cli login').`,
      );
    }
    return new HubError(`Hub request for '${id}' failed: ${e.message}`);
  }
  if (isNetworkError(e)) {
    const why = networkCode(e) ?? (e as Error).message;
    return new HubNetworkError(
      `cannot reach ${env.endpoint} to download '${id}' (${why}) and it is not in the cache at ${env.cacheDir}. Check the network or HF_ENDPOINT, or use a local folder.`,
    );
  }
  return e;
}

async function linkSnapshotFile(blobPath: string, pointerPath: string): Promise<void> {
  await mkdir(dirname(pointerPath), { recursive: true });
  await rm(pointerPath, { force: true });
  try {
    // Relative, as huggingface_hub writes it, so the cache folder can be moved.
    await symlink(relative(dirname(pointerPath), blobPath), pointerPath);
  } catch {
    await copyFile(blobPath, pointerPath);
  }
}

/** huggingface_hub's blob name: the ETag without a weak marker and quotes. */
export function normalizeEtag(etag: string): string {
  return etag.replace(/^W\//, '').replace(/^"|"$/g, '');
}

interface FileJob {
  file: string;
  index: number;
  count: number;
}

async function downloadOne(
  job: FileJob,
  ctx: { ref: RepoRef; commit: string; folder: string; env: HubEnv; opts: ResolveOptions },
): Promise<void> {
  const { ref, commit, folder, env, opts } = ctx;
  const pointerPath = join(folder, 'snapshots', commit, job.file);
  if (await exists(pointerPath)) return;
  const common = {
    repo: { type: 'model' as const, name: ref.repo },
    path: job.file,
    revision: commit,
    hubUrl: env.endpoint,
    ...(env.token ? { accessToken: env.token } : {}),
    ...(opts.fetch ? { fetch: opts.fetch } : {}),
  };
  const info = await fileDownloadInfo(common);
  if (!info) throw new HubError(`'${job.file}' is listed in '${ref.repo}@${commit}' but the Hub has no such file`);
  const etag = normalizeEtag(info.etag);
  if (!/^[\w.-]+$/.test(etag)) throw new HubError(`unexpected ETag ${JSON.stringify(info.etag)} for '${job.file}'`);
  const blobPath = join(folder, 'blobs', etag);
  await mkdir(dirname(blobPath), { recursive: true });
  if (!(await exists(blobPath))) {
    const incomplete = `${blobPath}.incomplete`;
    let offset = 0;
    try {
      offset = (await stat(incomplete)).size;
    } catch {
      // Nothing to resume.
    }
    if (offset > info.size) {
      await rm(incomplete);
      offset = 0;
    }
    const started = Date.now();
    let loaded = offset;
    const report = (done: boolean) =>
      opts.onProgress?.({
        file: job.file,
        loaded,
        total: info.size,
        fetched: loaded - offset,
        elapsedMs: Date.now() - started,
        fileIndex: job.index,
        fileCount: job.count,
        done,
      });
    if (offset < info.size) {
      const blob = await downloadFile({ ...common, downloadInfo: info });
      if (!blob) throw new HubError(`'${job.file}' vanished from '${ref.repo}@${commit}' during the download`);
      // A Range request for the rest when a previous run left a partial file.
      const body = (offset > 0 ? blob.slice(offset) : blob).stream();
      const out = createWriteStream(incomplete, { flags: offset > 0 ? 'a' : 'w' });
      const closed = new Promise<void>((res, rej) => {
        out.on('close', res);
        out.on('error', rej);
      });
      try {
        let lastReport = 0;
        for await (const chunk of body as unknown as AsyncIterable<Uint8Array>) {
          if (!out.write(chunk)) await new Promise<void>((r) => out.once('drain', () => r()));
          loaded += chunk.byteLength;
          if (Date.now() - lastReport > 100) {
            lastReport = Date.now();
            report(false);
          }
        }
      } catch (e) {
        out.end();
        await closed.catch(() => {});
        const why = typeof e === 'string' ? e : (e as Error).message;
        throw new HubNetworkError(
          `download of '${job.file}' from ${env.endpoint} was interrupted at ${loaded} of ${info.size} bytes (${why}); run again to resume`,
        );
      }
      out.end();
      await closed;
    }
    const size = (await stat(incomplete)).size;
    if (size !== info.size) {
      throw new HubNetworkError(`download of '${job.file}' ended at ${size} of ${info.size} bytes; run again to resume`);
    }
    await rename(incomplete, blobPath);
    report(true);
  }
  await linkSnapshotFile(blobPath, pointerPath);
}

/** Downloads the files a model needs from repo@revision into the cache; returns the snapshot folder. */
export async function downloadModel(ref: RepoRef, opts: ResolveOptions = {}): Promise<ResolvedModel> {
  const env = opts.env ?? (await hubEnv());
  const folder = repoFolder(env.cacheDir, ref.repo);
  const info = await modelInfo({
    name: ref.repo,
    revision: ref.revision,
    hubUrl: env.endpoint,
    additionalFields: ['sha', 'filePaths'],
    ...(env.token ? { accessToken: env.token } : {}),
    ...(opts.fetch ? { fetch: opts.fetch } : {}),
  });
  const commit = info.sha;
  if (!commit || !COMMIT_RE.test(commit)) throw new HubError(`the Hub returned no commit for '${ref.repo}@${ref.revision}'`);
  if (!COMMIT_RE.test(ref.revision)) {
    const refPath = join(folder, 'refs', ref.revision);
    await mkdir(dirname(refPath), { recursive: true });
    await writeFile(refPath, commit);
  }
  const siblings = new Set(info.filePaths);
  if (!siblings.has('config.json')) {
    throw new HubError(`'${ref.repo}@${ref.revision}' has no config.json: it is not a Transformers model repo`);
  }
  const ctx = { ref, commit, folder, env, opts };
  const files: string[] = NEEDED_FILES.filter((f) => siblings.has(f));
  let shards: string[];
  if (siblings.has(INDEX_FILE)) {
    await downloadOne({ file: INDEX_FILE, index: 0, count: 1 }, ctx);
    shards = shardsOf(await readFile(join(folder, 'snapshots', commit, INDEX_FILE), 'utf8'), `${ref.repo}@${commit}`);
    const missing = shards.filter((s) => !siblings.has(s));
    if (missing.length) throw new HubError(`${INDEX_FILE} of '${ref.repo}' lists shards the repo does not have: ${missing.join(', ')}`);
  } else if (siblings.has('model.safetensors')) {
    shards = ['model.safetensors'];
  } else {
    throw new HubError(
      `'${ref.repo}@${ref.revision}' has no safetensors weights (model.safetensors or ${INDEX_FILE}); other formats are not supported`,
    );
  }
  const all = [...files, ...shards];
  for (let i = 0; i < all.length; i++) await downloadOne({ file: all[i]!, index: i, count: all.length }, ctx);
  return { path: join(folder, 'snapshots', commit), source: 'download', repo: ref.repo, revision: ref.revision, commit };
}

/**
 * MODEL → a folder: an existing local folder as is; else a Hub repo id, served from the
 * cache when a complete snapshot of that revision is there (no request at all), else
 * downloaded. Offline mode and network failures fall back to the cache or fail clearly.
 */
export async function resolveModel(spec: string, opts: ResolveOptions = {}): Promise<ResolvedModel> {
  const local = resolve(spec.startsWith('~/') ? join(homedir(), spec.slice(2)) : spec);
  if (await isDirectory(local)) return { path: local, source: 'local' };
  const ref = parseRepoId(spec);
  if (!ref) {
    throw new HubError(`'${spec}' is neither a model folder nor a Hub repo id (org/name or org/name@revision)`);
  }
  const env = opts.env ?? (await hubEnv());
  const cached = await cachedSnapshot(env.cacheDir, ref);
  if (cached) return { path: cached.path, source: 'cache', repo: ref.repo, revision: ref.revision, commit: cached.commit };
  if (env.offline) {
    throw new HubOfflineError(
      `HF_HUB_OFFLINE is set and '${ref.repo}@${ref.revision}' is not (completely) in the cache at ${env.cacheDir}. Unset HF_HUB_OFFLINE to download it.`,
    );
  }
  try {
    return await downloadModel(ref, { ...opts, env });
  } catch (e) {
    throw translateError(e, ref, env);
  }
}

function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v.toFixed(v < 10 ? 2 : 1)} ${units[u]}`;
}

/** A progress line with bytes and speed, redrawn in place on a TTY; one line per finished file otherwise. */
export function progressPrinter(stream: NodeJS.WriteStream = process.stderr): (p: DownloadProgress) => void {
  return (p) => {
    const speed = p.elapsedMs > 0 ? (p.fetched * 1000) / p.elapsedMs : 0;
    const pct = p.total ? ((100 * p.loaded) / p.total).toFixed(0).padStart(3) : '100';
    const line = `[${p.fileIndex + 1}/${p.fileCount}] ${p.file} ${pct}% ${formatBytes(p.loaded)} / ${formatBytes(p.total)} ${formatBytes(speed)}/s`;
    if (stream.isTTY) {
      stream.write(`\r\x1b[2K${line}${p.done ? '\n' : ''}`);
    } else if (p.done) {
      stream.write(`downloaded ${line}\n`);
    }
  };
}
