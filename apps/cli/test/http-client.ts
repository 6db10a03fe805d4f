// What the server tests read of a response: status, headers, the body as text and, when it
// parses, as JSON.
export interface Reply {
  status: number;
  headers: Headers;
  /** Tests index into OpenAI's JSON shapes freely. */
  json: any;
  text: string;
}

export async function fetchReply(url: string, init: RequestInit = {}): Promise<Reply> {
  const res = await fetch(url, init);
  const text = await res.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, headers: res.headers, json, text };
}

/** POST a JSON body (a string is sent as it is, to test malformed ones). */
export const postJsonTo = (url: string, body: unknown, signal?: AbortSignal): Promise<Reply> =>
  fetchReply(url, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: typeof body === 'string' ? body : JSON.stringify(body), ...(signal ? { signal } : {}) });
