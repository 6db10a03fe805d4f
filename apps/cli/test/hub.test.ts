// Hub downloads against a local fake Hub (HF_ENDPOINT → 127.0.0.1): the cache layout
// Python's huggingface_hub uses, reuse without requests, offline mode, resuming, errors.
import { execFile, spawnSync } from 'node:child_process';
import { existsSync, lstatSync, mkdtempSync, readFileSync, readlinkSync, realpathSync, rmSync, writeFileSync, mkdirSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  HubAccessError,
  HubNetworkError,
  HubOfflineError,
  RepoNotFoundError,
  hubEnv,
  parseRepoId,
  resolveModel,
  type DownloadProgress,
  type HubEnv,
} from '../src/hub.ts';
import { expectedEtag, startFakeHub, type FakeHub } from './fake-hub.ts';

const COMMIT = 'a'.repeat(8) + '0123456789abcdef0123456789abcdef';
const COMMIT2 = 'b'.repeat(40);

function bytes(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    out[i] = x >>> 24;
  }
  return out;
}

const text = (s: string) => new TextEncoder().encode(s);

const shardedFiles: Record<string, Uint8Array> = {
  'config.json': text('{"model_type":"llama","hidden_size":8}'),
  'generation_config.json': text('{"do_sample":false}'),
  'tokenizer.json': text('{"model":{"type":"BPE"}}'),
  'tokenizer_config.json': text('{}'),
  'model.safetensors.index.json': text(
    JSON.stringify({ weight_map: { a: 'model-00001-of-00002.safetensors', b: 'model-00002-of-00002.safetensors' } }),
  ),
  'model-00001-of-00002.safetensors': bytes(300_000, 1),
  'model-00002-of-00002.safetensors': bytes(200_000, 2),
  // Not needed: must never be fetched.
  'README.md': text('# tiny'),
  'pytorch_model.bin': bytes(1000, 3),
  'model-00003-unlisted.safetensors': bytes(100, 4),
};

const singleFiles: Record<string, Uint8Array> = {
  'config.json': text('{"model_type":"llama"}'),
  'tokenizer.json': text('{}'),
  'model.safetensors': bytes(150_000, 5),
};

let hub: FakeHub;
const tmpRoots: string[] = [];

function freshEnv(extra: Partial<HubEnv> = {}): HubEnv {
  const dir = mkdtempSync(join(tmpdir(), 'hfcache-'));
  tmpRoots.push(dir);
  return { endpoint: hub.url, offline: false, cacheDir: dir, ...extra };
}

beforeAll(async () => {
  hub = await startFakeHub({
    'tiny-org/sharded': { files: shardedFiles, commit: COMMIT },
    'tiny-org/single': { files: singleFiles, commit: COMMIT2 },
    'tiny-org/gated': { files: singleFiles, commit: COMMIT2, gated: true },
  });
});

afterAll(async () => {
  await hub.close();
  for (const d of tmpRoots) rmSync(d, { recursive: true, force: true });
});

describe('parseRepoId', () => {
  it('reads org/name and an optional @revision', () => {
    expect(parseRepoId('Qwen/Qwen2.5-0.5B-Instruct')).toEqual({ repo: 'Qwen/Qwen2.5-0.5B-Instruct', revision: 'main' });
    expect(parseRepoId('a/b@v1.0')).toEqual({ repo: 'a/b', revision: 'v1.0' });
    expect(parseRepoId('a/b@refs/pr/1')).toEqual({ repo: 'a/b', revision: 'refs/pr/1' });
    expect(parseRepoId('just-a-name')).toBeUndefined();
    expect(parseRepoId('a/b/c')).toBeUndefined();
    expect(parseRepoId('../x')).toBeUndefined();
  });
});

describe('hubEnv', () => {
  it('honours HF_HOME, HF_HUB_CACHE, HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE', async () => {
    const home = mkdtempSync(join(tmpdir(), 'hfhome-'));
    tmpRoots.push(home);
    expect(await hubEnv({ HF_HOME: home })).toEqual({ endpoint: 'https://huggingface.co', offline: false, cacheDir: join(home, 'hub') });
    writeFileSync(join(home, 'token'), 'hf_saved\n');
    const e = await hubEnv({ HF_HOME: home, HF_HUB_CACHE: '/x/cache', HF_ENDPOINT: 'http://h:1/', HF_HUB_OFFLINE: 'TRUE' });
    expect(e).toEqual({ endpoint: 'http://h:1', token: 'hf_saved', offline: true, cacheDir: '/x/cache' });
    expect((await hubEnv({ HF_HOME: home, HF_TOKEN: 'hf_env', HF_HUB_OFFLINE: '0' })).token).toBe('hf_env');
    expect((await hubEnv({ HF_HOME: home, HF_HUB_OFFLINE: '0' })).offline).toBe(false);
  });
});

describe('resolveModel against a fake Hub', () => {
  it('uses an existing local folder as is, without requests', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'localmodel-'));
    tmpRoots.push(dir);
    const before = hub.requests.length;
    expect(await resolveModel(dir, { env: freshEnv() })).toEqual({ path: dir, source: 'local' });
    expect(hub.requests.length).toBe(before);
  });

  it('downloads only the needed files into the HF cache layout, then reuses it with no request', async () => {
    const env = freshEnv();
    const progress: DownloadProgress[] = [];
    hub.requests.length = 0;
    const r = await resolveModel('tiny-org/sharded', { env, onProgress: (p) => progress.push(p) });
    const repoDir = join(env.cacheDir, 'models--tiny-org--sharded');
    expect(r).toEqual({ path: join(repoDir, 'snapshots', COMMIT), source: 'download', repo: 'tiny-org/sharded', revision: 'main', commit: COMMIT });
    expect(readFileSync(join(repoDir, 'refs', 'main'), 'utf8')).toBe(COMMIT);

    const wanted = Object.keys(shardedFiles).filter((f) => !['README.md', 'pytorch_model.bin', 'model-00003-unlisted.safetensors'].includes(f));
    for (const f of wanted) {
      const p = join(r.path, f);
      expect(lstatSync(p).isSymbolicLink(), f).toBe(true);
      // Relative links into blobs/, named by ETag, as huggingface_hub writes them.
      expect(readlinkSync(p)).toBe(`../../blobs/${expectedEtag(f, shardedFiles[f]!)}`);
      expect(new Uint8Array(readFileSync(p))).toEqual(shardedFiles[f]);
    }
    for (const f of ['README.md', 'pytorch_model.bin', 'model-00003-unlisted.safetensors']) {
      expect(existsSync(join(r.path, f)), f).toBe(false);
      expect(hub.requests.some((q) => q.endsWith(`/${f}`)), f).toBe(false);
    }
    const done = progress.filter((p) => p.done).map((p) => p.file);
    expect(done.sort()).toEqual(wanted.sort());
    expect(progress.find((p) => p.file === 'model-00001-of-00002.safetensors' && p.done)).toMatchObject({ loaded: 300_000, total: 300_000 });

    hub.requests.length = 0;
    const again = await resolveModel('tiny-org/sharded', { env });
    expect(again).toEqual({ ...r, source: 'cache' });
    expect(hub.requests).toEqual([]);
  });

  it('reuses blobs already in the cache and fills in a partial snapshot', async () => {
    const env = freshEnv();
    await resolveModel('tiny-org/single', { env });
    const snap = join(env.cacheDir, 'models--tiny-org--single', 'snapshots', COMMIT2);
    rmSync(join(snap, 'model.safetensors'));
    hub.requests.length = 0;
    const r = await resolveModel('tiny-org/single', { env });
    expect(r.source).toBe('download');
    expect(new Uint8Array(readFileSync(join(snap, 'model.safetensors')))).toEqual(singleFiles['model.safetensors']);
    // Only the info call and the size/ETag probe: the blob was already there.
    expect(hub.requests.filter((q) => q.includes('/resolve/'))).toEqual([`GET /tiny-org/single/resolve/${COMMIT2}/model.safetensors`]);
  });

  it('reuses a cache written by Python huggingface_hub (refs/main → snapshots → blobs) without requests', async () => {
    const env = freshEnv();
    const repoDir = join(env.cacheDir, 'models--tiny-org--single');
    mkdirSync(join(repoDir, 'blobs'), { recursive: true });
    mkdirSync(join(repoDir, 'snapshots', COMMIT2), { recursive: true });
    mkdirSync(join(repoDir, 'refs'), { recursive: true });
    writeFileSync(join(repoDir, 'refs', 'main'), COMMIT2);
    for (const [f, data] of Object.entries(singleFiles)) {
      const etag = expectedEtag(f, data);
      writeFileSync(join(repoDir, 'blobs', etag), data);
      symlinkSync(`../../blobs/${etag}`, join(repoDir, 'snapshots', COMMIT2, f));
    }
    hub.requests.length = 0;
    const r = await resolveModel('tiny-org/single', { env });
    expect(r).toMatchObject({ source: 'cache', commit: COMMIT2, path: join(repoDir, 'snapshots', COMMIT2) });
    expect(await resolveModel(`tiny-org/single@${COMMIT2}`, { env: { ...env, offline: true } })).toMatchObject({ source: 'cache' });
    expect(hub.requests).toEqual([]);
  });

  it('resumes an interrupted download with a Range request', async () => {
    const env = freshEnv();
    hub.breakAfter.set('model.safetensors', 64_000);
    hub.ranges.delete('model.safetensors');
    const err = await resolveModel('tiny-org/single', { env }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HubNetworkError);
    expect((err as Error).message).toMatch(/interrupted at \d+ of 150000 bytes.*run again to resume/);
    const blobs = join(env.cacheDir, 'models--tiny-org--single', 'blobs');
    const partial = join(blobs, `${expectedEtag('model.safetensors', singleFiles['model.safetensors']!)}.incomplete`);
    const got = lstatSync(partial).size;
    expect(got).toBeGreaterThan(0);
    expect(got).toBeLessThan(150_000);

    const r = await resolveModel('tiny-org/single', { env });
    expect(new Uint8Array(readFileSync(join(r.path, 'model.safetensors')))).toEqual(singleFiles['model.safetensors']);
    expect(hub.ranges.get('model.safetensors')).toContain(`bytes=${got}-149999`);
    expect(existsSync(partial)).toBe(false);
  });

  it('offline mode: a clear error when nothing is cached, no request made', async () => {
    hub.requests.length = 0;
    const err = await resolveModel('tiny-org/single', { env: freshEnv({ offline: true }) }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HubOfflineError);
    expect((err as Error).message).toMatch(/HF_HUB_OFFLINE is set and 'tiny-org\/single@main' is not .*in the cache/);
    expect(hub.requests).toEqual([]);
  });

  it('a missing repo is a RepoNotFoundError', async () => {
    const err = await resolveModel('tiny-org/nope', { env: freshEnv() }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RepoNotFoundError);
    expect((err as Error).message).toMatch(/'tiny-org\/nope@main' not found at http:\/\/127\.0\.0\.1:\d+.*set HF_TOKEN/);
  });

  it('a gated repo without a token is a HubAccessError telling to set HF_TOKEN; the right token works', async () => {
    const err = await resolveModel('tiny-org/gated', { env: freshEnv() }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HubAccessError);
    expect((err as Error).message).toMatch(/gated or private \(401\).*set HF_TOKEN/);
    const bad = await resolveModel('tiny-org/gated', { env: freshEnv({ token: 'hf_bad' }) }).catch((e: unknown) => e);
    expect(bad).toBeInstanceOf(HubAccessError);
    expect((bad as Error).message).toMatch(/this token has no access/);
    const ok = await resolveModel('tiny-org/gated', { env: freshEnv({ token: 'hf_good' }) });
    expect(ok.source).toBe('download');
  });

  it('no network is a HubNetworkError naming the endpoint', async () => {
    // A port nothing listens on: bind one, note it, close it.
    const { createServer } = await import('node:net');
    const srv = createServer();
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    const port = (srv.address() as { port: number }).port;
    await new Promise<void>((r) => srv.close(() => r()));
    const err = await resolveModel('tiny-org/single', { env: freshEnv({ endpoint: `http://127.0.0.1:${port}` }) }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HubNetworkError);
    expect((err as Error).message).toMatch(new RegExp(`cannot reach http://127.0.0.1:${port} .*ECONNREFUSED`));
  });

  it('a name that is neither a folder nor a repo id is a clear error', async () => {
    await expect(resolveModel('./no/such/folder', { env: freshEnv() })).rejects.toThrow(/neither a model folder nor a Hub repo id/);
  });
});

// Python's huggingface_hub (from the reference venv, when present) must find our download
// offline, and we must find its download without a request.
const python = join(realpathSync(join(import.meta.dirname, '../../..')), '.venv/bin/python');
const havePython =
  existsSync(python) && spawnSync(python, ['-c', 'import huggingface_hub'], { encoding: 'utf8' }).status === 0;

describe.skipIf(!havePython)('interoperates with Python huggingface_hub', () => {
  it('Python reads our cache offline', async () => {
    const env = freshEnv();
    const r = await resolveModel('tiny-org/sharded', { env });
    const py = spawnSync(
      python,
      ['-c', "from huggingface_hub import snapshot_download; print(snapshot_download('tiny-org/sharded', allow_patterns=['*.json', '*.safetensors']))"],
      { encoding: 'utf8', env: { ...process.env, HF_HUB_CACHE: env.cacheDir, HF_HUB_OFFLINE: '1', HF_ENDPOINT: hub.url } },
    );
    expect(py.stderr).toBe('');
    expect(py.stdout.trim()).toBe(r.path);
  });

  it('we reuse a download made by Python, with no request', async () => {
    const env = freshEnv();
    // Asynchronously: the fake Hub answering Python lives in this process.
    const py = await new Promise<{ code: number; stdout: string; stderr: string }>((res) => {
      execFile(
        python,
        ['-c', "from huggingface_hub import snapshot_download; print(snapshot_download('tiny-org/single', allow_patterns=['*.json', '*.safetensors']))"],
        { encoding: 'utf8', env: { ...process.env, HF_HUB_CACHE: env.cacheDir, HF_ENDPOINT: hub.url, HF_HUB_DISABLE_PROGRESS_BARS: '1', HF_HUB_DISABLE_TELEMETRY: '1' } },
        (err, stdout, stderr) => res({ code: err ? 1 : 0, stdout, stderr }),
      );
    });
    expect(py.code, py.stderr).toBe(0);
    hub.requests.length = 0;
    const r = await resolveModel('tiny-org/single', { env });
    expect(r).toMatchObject({ source: 'cache', path: py.stdout.trim() });
    expect(hub.requests).toEqual([]);
  });
});
