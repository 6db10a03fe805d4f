import { describe, expect, it } from 'vitest';
import { ModelNotFoundError, modelUrlSource, requireConfig } from '../src/model-url-source.ts';

/** A server answering each path with a status, a content type and a body. */
function fakeFetch(answers: Record<string, { status: number; type: string; body: string }>): typeof fetch {
  return (async (input: RequestInfo | URL) => {
    const path = new URL(String(input)).pathname;
    const a = answers[path] ?? { status: 404, type: 'text/plain', body: 'not found' };
    return new Response(a.body, { status: a.status, headers: { 'content-type': a.type } });
  }) as typeof fetch;
}

const SPA = { status: 200, type: 'text/html', body: '<!doctype html><title>app</title>' };

describe('modelUrlSource', () => {
  it('reads a web page answered for a model file as missing, and says so', async () => {
    const src = modelUrlSource('http://x/models/m', fakeFetch({ '/models/m/tokenizer.json': SPA }));
    expect(await src.text('tokenizer.json')).toBeUndefined();
    expect(src.missingBecause('tokenizer.json')).toMatch(/^an HTML page \(HTTP 200, content-type text\/html\)$/);
    expect(await src.size('tokenizer.json')).toBeUndefined();
  });

  it('reads real files as they are', async () => {
    const src = modelUrlSource('http://x/m', fakeFetch({ '/m/config.json': { status: 200, type: 'application/json', body: '{"a":1}' } }));
    expect(await src.text('config.json')).toBe('{"a":1}');
    expect(src.missingBecause('config.json')).toBeUndefined();
  });
});

describe('requireConfig', () => {
  it('names a folder with no config.json, with the URL and the answer', async () => {
    const src = modelUrlSource('http://x/models/nothing', fakeFetch({}));
    const err = await requireConfig(src, src.missingBecause).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ModelNotFoundError);
    expect((err as Error).message).toBe('no model at http://x/models/nothing: config.json answered with HTTP 404');
  });

  it('names an unknown or private Hub repository', async () => {
    const src = modelUrlSource('http://hub/org/none/resolve/main', fakeFetch({ '/org/none/resolve/main/config.json': { status: 401, type: 'application/json', body: '{}' } }));
    await expect(requireConfig(src, src.missingBecause)).rejects.toThrow(/HTTP 401.*does not exist, or it is private or gated/);
  });

  it('passes a folder that has a config.json', async () => {
    const src = modelUrlSource('http://x/m', fakeFetch({ '/m/config.json': { status: 200, type: 'application/json', body: '{}' } }));
    await expect(requireConfig(src, src.missingBecause)).resolves.toBeUndefined();
  });
});
