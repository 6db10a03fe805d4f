// Checks for the page's text fields, before anything is sent to the worker: a value the
// browser would quietly turn into something else ("abc" into NaN into greedy decoding,
// 1e999 into Infinity) is refused with a message for the field instead.

export type Checked<T> = { ok: true; value: T } | { ok: false; message: string };

export interface NumberRule {
  /** Smallest allowed value; `above` makes it exclusive. */
  min?: number;
  above?: boolean;
  max?: number;
  integer?: boolean;
}

function range(rule: NumberRule): string {
  const lo = rule.min === undefined ? '' : rule.above ? `greater than ${rule.min}` : `at least ${rule.min}`;
  const hi = rule.max === undefined ? '' : `at most ${rule.max}`;
  return [lo, hi].filter(Boolean).join(' and ');
}

export function checkNumber(text: string, rule: NumberRule): Checked<number> {
  const t = text.trim();
  const kind = rule.integer ? 'a whole number' : 'a number';
  if (t === '') return { ok: false, message: `Enter ${kind}.` };
  // Number('') is 0 and Number('0x10') is 16: accept decimal notation only.
  if (!/^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i.test(t)) return { ok: false, message: `“${t}” is not ${kind}.` };
  const v = Number(t);
  if (!Number.isFinite(v)) return { ok: false, message: `“${t}” is too large.` };
  if (rule.integer && !Number.isInteger(v)) return { ok: false, message: `Enter ${kind}, not ${t}.` };
  const low = rule.min !== undefined && (rule.above ? v <= rule.min : v < rule.min);
  const high = rule.max !== undefined && v > rule.max;
  if (low || high) return { ok: false, message: `Must be ${range(rule)}.` };
  return { ok: true, value: v };
}

/** The Hub's "owner/name". */
export function checkRepoId(text: string): Checked<string> {
  const t = text.trim();
  if (!/^[\w.-]+\/[\w.-]+$/.test(t)) return { ok: false, message: `“${t}” is not a repository id: expected owner/name, e.g. HuggingFaceTB/SmolLM2-135M-Instruct.` };
  return { ok: true, value: t };
}

/** An http(s) URL, absolute or relative to the page. */
export function checkUrl(text: string, base: string): Checked<string> {
  const t = text.trim();
  if (t === '') return { ok: false, message: 'Enter a URL.' };
  let u: URL;
  try {
    u = new URL(t, base);
  } catch {
    return { ok: false, message: `“${t}” is not a URL.` };
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') return { ok: false, message: `“${t}” is not an http(s) URL.` };
  return { ok: true, value: u.href.replace(/\/+$/, '') };
}

/**
 * The tools field: empty (no tools), or OpenAI's JSON list of {type: "function", function:
 * {name, ...}}; the engine checks each entry fully when the reply starts.
 */
export function checkTools(text: string): Checked<unknown[] | undefined> {
  const t = text.trim();
  if (t === '') return { ok: true, value: undefined };
  let v: unknown;
  try {
    v = JSON.parse(t);
  } catch (e) {
    return { ok: false, message: `Not JSON: ${(e as Error).message}` };
  }
  if (!Array.isArray(v) || v.length === 0) return { ok: false, message: 'Expected a list of tools: [{"type": "function", "function": {"name": ...}}]' };
  const bad = v.findIndex((x) => typeof x !== 'object' || x === null || (x as { type?: unknown }).type !== 'function' || typeof (x as { function?: { name?: unknown } }).function?.name !== 'string');
  if (bad >= 0) return { ok: false, message: `Tool ${bad + 1} must be {"type": "function", "function": {"name": ...}}.` };
  return { ok: true, value: v };
}
