// Integer ranges as digit patterns: [lo, hi] becomes alternatives such as "1" [0-4] [0-9] |
// "150", the classic split by digit count and leading digit. XGrammar 0.1.27's own range
// rule admits values past the bound (maximum 150 lets 151..159 through), so bounded
// integers are written into the grammar from here.

/** The largest integer a JSON number keeps exactly in JavaScript: the default bound either way. */
export const MAX_JSON_INTEGER = Number.MAX_SAFE_INTEGER;

/** One digit position: a digit range, repeated `times` times. */
interface Digits {
  lo: number;
  hi: number;
  times: number;
}

/** Alternatives of digit sequences (no sign) matching exactly the decimal forms of [a, b], 0 <= a <= b. */
export function unsignedRange(a: number, b: number): Digits[][] {
  const out: Digits[][] = [];
  const len = (n: number) => String(n).length;
  for (let d = len(a); d <= len(b); d++) {
    const lo = Math.max(a, d === 1 ? 0 : 10 ** (d - 1));
    const hi = Math.min(b, 10 ** d - 1);
    if (lo <= hi) out.push(...sameLength(String(lo), String(hi)));
  }
  return out;
}

/** Digit strings of one length from `a` to `b` (leading zeros allowed: these may be suffixes). */
function sameLength(a: string, b: string): Digits[][] {
  const n = a.length;
  if (n === 0) return [[]];
  const a0 = Number(a[0]);
  const b0 = Number(b[0]);
  const rest = n - 1;
  if (a0 === b0) return sameLength(a.slice(1), b.slice(1)).map((s) => [{ lo: a0, hi: a0, times: 1 }, ...s]);
  const all = (k: number): Digits[] => (k > 0 ? [{ lo: 0, hi: 9, times: k }] : []);
  const out: Digits[][] = [];
  const aTail = a.slice(1);
  const bTail = b.slice(1);
  // From a to a0 99..9; the middle leading digits with anything after; b0 00..0 to b.
  const aFull = /^0*$/.test(aTail);
  const bFull = /^9*$/.test(bTail);
  const midLo = aFull ? a0 : a0 + 1;
  const midHi = bFull ? b0 : b0 - 1;
  if (!aFull) out.push(...sameLength(aTail, '9'.repeat(rest)).map((s) => [{ lo: a0, hi: a0, times: 1 }, ...s]));
  if (midLo <= midHi) out.push([{ lo: midLo, hi: midHi, times: 1 }, ...all(rest)]);
  if (!bFull) out.push(...sameLength('0'.repeat(rest), bTail).map((s) => [{ lo: b0, hi: b0, times: 1 }, ...s]));
  return out;
}

export interface SignedAlternative {
  negative: boolean;
  digits: Digits[];
}

/** Alternatives for the integers in [lo, hi] (finite, within ±MAX_JSON_INTEGER). */
export function integerRange(lo: number, hi: number): SignedAlternative[] {
  const out: SignedAlternative[] = [];
  if (lo < 0) {
    // -x for x in [max(1, -hi), -lo]
    for (const digits of unsignedRange(Math.max(1, -hi), -lo)) out.push({ negative: true, digits });
  }
  if (hi >= 0) for (const digits of unsignedRange(Math.max(0, lo), hi)) out.push({ negative: false, digits });
  return out;
}

/** The alternatives as an EBNF expression. */
export function integerRangeEbnf(lo: number, hi: number): string {
  const alt = (a: SignedAlternative) =>
    [a.negative ? '"-"' : '', ...a.digits.map((d) => (d.lo === d.hi ? `"${d.lo}"` : `[${d.lo}-${d.hi}]`) + (d.times > 1 ? `{${d.times}}` : ''))].filter(Boolean).join(' ');
  return `(${integerRange(lo, hi).map(alt).join(' | ')})`;
}

/** The same alternatives as a JavaScript RegExp (for tests). */
export function integerRangeRegExp(lo: number, hi: number): RegExp {
  const alt = (a: SignedAlternative) => (a.negative ? '-' : '') + a.digits.map((d) => `[${d.lo}-${d.hi}]` + (d.times > 1 ? `{${d.times}}` : '')).join('');
  return new RegExp(`^(?:${integerRange(lo, hi).map(alt).join('|')})$`);
}
