// Fused dequant matrix-matrix product for several tokens (prefill), over one row chunk of a
// quantized W:
//   y[t, colOffset + r] (+)= sum_k x[t, k] * W[r, k] (+ bias[colOffset + r])   t < tokens, r < rows.
// x is [tokens, K] f32, y is [tokens, N] f32 (row stride N). W and its scales are laid out as in
// matvec_q.wgsl (src/quant.ts): rows padded to `groups` groups of G columns; Q4: 8 nibbles per
// word, scale word pack2x16float(s, z), w = (q - z) * s; else q8: 4 int8 per word, scale word the
// f32 bits of s. Weights are never expanded to a full-precision buffer; f32 arithmetic only (see
// matvec_q.wgsl for why no shader-f16 variant).
// Defines: Q4 (else q8), TAIL (K % G != 0: x masked to k < K in the last group), BIAS, ACC,
// GPU (64x64 output tiles through workgroup memory, weights dequantized into the tile; else each
// thread computes 4 rows x 4 tokens, so each weight word serves 4 tokens and each x load 4 rows,
// and each group's integer sums are scaled once),
// XU (software, K % 4 == 0, K <= 1020: 4 rows x 16 tokens per thread, x read through a 64 KiB
// uniform window holding those 16 tokens, one dispatch per group of 16 tokens; each weight word is
// dequantized once and serves 16 tokens. On lavapipe a storage load in a loop is a per-lane scalar
// loop while a uniform load is one vector gather, see matmul.wgsl).
// Bindings: 0 params, 1 W chunk [rows, groups * G / EPV] vec4<u32> (XU: the same words as u32),
// 2 x [tokens, K] f32 (XU: the window starting at or before token tokenBase, as vec4s),
// 3 y [tokens, N] f32, 4 bias [N] f32 (BIAS only), 5 scales [rows, groups] u32.

struct Params {
  K: u32,
  rows: u32,
  colOffset: u32,
  N: u32,
  tokens: u32,
  groups: u32,
  tokenBase: u32, // XU: the group's first token
  xBase: u32,     // XU: where token tokenBase starts in the x window (in vec4s)
}

override G: u32 = 32u; // weights per group: a multiple of 32

@group(0) @binding(0) var<uniform> p: Params;
#if XU
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<uniform> x: array<vec4<f32>, 4096>;
#else
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
#endif
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
#if BIAS
@group(0) @binding(4) var<storage, read> bias: array<f32>;
#endif
@group(0) @binding(5) var<storage, read> sc: array<u32>;

#if Q4
const EPV = 32u; // weights per vec4<u32>
const EPW = 8u;  // weights per u32
#else
const EPV = 16u;
const EPW = 4u;
#endif

#include linear_store

fn store(t: u32, r: u32, v: f32) {
  storeAt(t * p.N + p.colOffset + r, r, v);
}

#if GPU
// Element (r, k) of the chunk, dequantized.
fn weight(r: u32, k: u32) -> f32 {
  let e = r * p.groups * G + k;
  let word = w[e / EPV][(e % EPV) / EPW];
  let sw = sc[r * p.groups + k / G];
#if Q4
  let sz = unpack2x16float(sw);
  return (f32((word >> (4u * (e % 8u))) & 15u) - sz.y) * sz.x;
#else
  return f32((bitcast<i32>(word) << (24u - 8u * (e % 4u))) >> 24u) * bitcast<f32>(sw);
#endif
}

#include matmul_tile
#else
override WG: u32 = 64u;

#if Q4
fn nib(v: u32, sh: vec4<u32>) -> vec4<f32> {
  return vec4<f32>((vec4<u32>(v) >> sh) & vec4<u32>(15u));
}
#else
fn byt(v: u32) -> vec4<f32> {
  return vec4<f32>((vec4<i32>(bitcast<i32>(v)) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u));
}
#endif

#if XU
// Accumulators of the 16 tokens (a<j>: token tokenBase + j, rows r0..r3) and where each token's
// x starts in the window (vec4s). Named fields, not arrays: lavapipe keeps them in registers.
struct Acc {
  a0: vec4<f32>,
  a1: vec4<f32>,
  a2: vec4<f32>,
  a3: vec4<f32>,
  a4: vec4<f32>,
  a5: vec4<f32>,
  a6: vec4<f32>,
  a7: vec4<f32>,
  a8: vec4<f32>,
  a9: vec4<f32>,
  a10: vec4<f32>,
  a11: vec4<f32>,
  a12: vec4<f32>,
  a13: vec4<f32>,
  a14: vec4<f32>,
  a15: vec4<f32>,
}

struct Offs {
  o0: u32,
  o1: u32,
  o2: u32,
  o3: u32,
  o4: u32,
  o5: u32,
  o6: u32,
  o7: u32,
  o8: u32,
  o9: u32,
  o10: u32,
  o11: u32,
  o12: u32,
  o13: u32,
  o14: u32,
  o15: u32,
}

fn d4(wa: vec4<f32>, wb: vec4<f32>, wc: vec4<f32>, wd: vec4<f32>, xv: vec4<f32>) -> vec4<f32> {
  return vec4<f32>(dot(wa, xv), dot(wb, xv), dot(wc, xv), dot(wd, xv));
}

// Dequantized weights of rows r0..r3 at columns 4c .. 4c + 4, times the 16 tokens.
fn quad(wa: vec4<f32>, wb: vec4<f32>, wc: vec4<f32>, wd: vec4<f32>, c: u32, o: Offs, a: ptr<function, Acc>) {
  (*a).a0 += d4(wa, wb, wc, wd, x[o.o0 + c]);
  (*a).a1 += d4(wa, wb, wc, wd, x[o.o1 + c]);
  (*a).a2 += d4(wa, wb, wc, wd, x[o.o2 + c]);
  (*a).a3 += d4(wa, wb, wc, wd, x[o.o3 + c]);
  (*a).a4 += d4(wa, wb, wc, wd, x[o.o4 + c]);
  (*a).a5 += d4(wa, wb, wc, wd, x[o.o5 + c]);
  (*a).a6 += d4(wa, wb, wc, wd, x[o.o6 + c]);
  (*a).a7 += d4(wa, wb, wc, wd, x[o.o7 + c]);
  (*a).a8 += d4(wa, wb, wc, wd, x[o.o8 + c]);
  (*a).a9 += d4(wa, wb, wc, wd, x[o.o9 + c]);
  (*a).a10 += d4(wa, wb, wc, wd, x[o.o10 + c]);
  (*a).a11 += d4(wa, wb, wc, wd, x[o.o11 + c]);
  (*a).a12 += d4(wa, wb, wc, wd, x[o.o12 + c]);
  (*a).a13 += d4(wa, wb, wc, wd, x[o.o13 + c]);
  (*a).a14 += d4(wa, wb, wc, wd, x[o.o14 + c]);
  (*a).a15 += d4(wa, wb, wc, wd, x[o.o15 + c]);
}

fn store4(t: u32, r0: u32, v: vec4<f32>) {
  let last = p.rows - 1u;
  store(t, r0, v.x);
  if (r0 + 1u <= last) { store(t, r0 + 1u, v.y); }
  if (r0 + 2u <= last) { store(t, r0 + 2u, v.z); }
  if (r0 + 3u <= last) { store(t, r0 + 3u, v.w); }
}

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let r0 = (gid.x + gid.y * nwg.x * WG) * 4u;
  if (r0 >= p.rows) { return; }
  let last = p.rows - 1u;
  let ra = r0;
  let rb = min(r0 + 1u, last);
  let rc = min(r0 + 2u, last);
  let rd = min(r0 + 3u, last);
  let wpg = G / EPW; // words per group
  let kc = p.K / 4u;
  let n = min(p.tokens - p.tokenBase, 16u);
  // Tokens past the group's end repeat its last token (their sums are not stored).
  var o: Offs;
  o.o0 = p.xBase + min(0u, n - 1u) * kc;
  o.o1 = p.xBase + min(1u, n - 1u) * kc;
  o.o2 = p.xBase + min(2u, n - 1u) * kc;
  o.o3 = p.xBase + min(3u, n - 1u) * kc;
  o.o4 = p.xBase + min(4u, n - 1u) * kc;
  o.o5 = p.xBase + min(5u, n - 1u) * kc;
  o.o6 = p.xBase + min(6u, n - 1u) * kc;
  o.o7 = p.xBase + min(7u, n - 1u) * kc;
  o.o8 = p.xBase + min(8u, n - 1u) * kc;
  o.o9 = p.xBase + min(9u, n - 1u) * kc;
  o.o10 = p.xBase + min(10u, n - 1u) * kc;
  o.o11 = p.xBase + min(11u, n - 1u) * kc;
  o.o12 = p.xBase + min(12u, n - 1u) * kc;
  o.o13 = p.xBase + min(13u, n - 1u) * kc;
  o.o14 = p.xBase + min(14u, n - 1u) * kc;
  o.o15 = p.xBase + min(15u, n - 1u) * kc;
  var a: Acc;
  for (var g = 0u; g < p.groups; g++) {
    let sa = sc[ra * p.groups + g];
    let sb = sc[rb * p.groups + g];
    let scc = sc[rc * p.groups + g];
    let sd = sc[rd * p.groups + g];
    let k0 = g * G;
    // The last group may be partial (TAIL): its words past K hold padding, and x there is the next token.
    let words = (min(p.K - k0, G) + EPW - 1u) / EPW;
#if Q4
    let za = unpack2x16float(sa);
    let zb = unpack2x16float(sb);
    let zc = unpack2x16float(scc);
    let zd = unpack2x16float(sd);
    let lo = vec4<u32>(0u, 4u, 8u, 12u);
    let hi = vec4<u32>(16u, 20u, 24u, 28u);
#endif
    for (var j = 0u; j < words; j++) {
      let e = g * wpg + j;
      let qa = w[ra * p.groups * wpg + e];
      let qb = w[rb * p.groups * wpg + e];
      let qc = w[rc * p.groups * wpg + e];
      let qd = w[rd * p.groups * wpg + e];
      let k = k0 + j * EPW;
#if Q4
      quad((nib(qa, lo) - za.y) * za.x, (nib(qb, lo) - zb.y) * zb.x, (nib(qc, lo) - zc.y) * zc.x, (nib(qd, lo) - zd.y) * zd.x, k / 4u, o, &a);
#if TAIL
      if (k + 4u >= p.K) { break; }
#endif
      quad((nib(qa, hi) - za.y) * za.x, (nib(qb, hi) - zb.y) * zb.x, (nib(qc, hi) - zc.y) * zc.x, (nib(qd, hi) - zd.y) * zd.x, k / 4u + 1u, o, &a);
#else
      quad(byt(qa) * bitcast<f32>(sa), byt(qb) * bitcast<f32>(sb), byt(qc) * bitcast<f32>(scc), byt(qd) * bitcast<f32>(sd), k / 4u, o, &a);
#endif
    }
  }
  let t = p.tokenBase;
  store4(t, r0, a.a0);
  if (1u < n) { store4(t + 1u, r0, a.a1); }
  if (2u < n) { store4(t + 2u, r0, a.a2); }
  if (3u < n) { store4(t + 3u, r0, a.a3); }
  if (4u < n) { store4(t + 4u, r0, a.a4); }
  if (5u < n) { store4(t + 5u, r0, a.a5); }
  if (6u < n) { store4(t + 6u, r0, a.a6); }
  if (7u < n) { store4(t + 7u, r0, a.a7); }
  if (8u < n) { store4(t + 8u, r0, a.a8); }
  if (9u < n) { store4(t + 9u, r0, a.a9); }
  if (10u < n) { store4(t + 10u, r0, a.a10); }
  if (11u < n) { store4(t + 11u, r0, a.a11); }
  if (12u < n) { store4(t + 12u, r0, a.a12); }
  if (13u < n) { store4(t + 13u, r0, a.a13); }
  if (14u < n) { store4(t + 14u, r0, a.a14); }
  if (15u < n) { store4(t + 15u, r0, a.a15); }
}
#else
// Per group: d<i> = integer dot products of token t<i> with rows r0..r3, s = x sums per token.
struct Sums {
  d0: vec4<f32>, d1: vec4<f32>, d2: vec4<f32>, d3: vec4<f32>,
  s: vec4<f32>,
}

// x[t, k .. k + 4), zeroed at or past K when masked.
fn x4(t: u32, k: u32, masked: bool) -> vec4<f32> {
  let b = t * p.K + k;
  let v = vec4<f32>(x[b], x[b + 1u], x[b + 2u], x[b + 3u]);
  if (!masked) { return v; }
  return select(vec4<f32>(0.0), v, vec4<u32>(k) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(p.K));
}

#if Q4
// One word per row (q.x .. q.w for rows r0..r3): 8 weights from column k.
fn word(q: vec4<u32>, k: u32, t: vec4<u32>, masked: bool, a: ptr<function, Sums>) {
  let lo = vec4<u32>(0u, 4u, 8u, 12u);
  let hi = vec4<u32>(16u, 20u, 24u, 28u);
  let wa0 = nib(q.x, lo); let wa1 = nib(q.x, hi);
  let wb0 = nib(q.y, lo); let wb1 = nib(q.y, hi);
  let wc0 = nib(q.z, lo); let wc1 = nib(q.z, hi);
  let wd0 = nib(q.w, lo); let wd1 = nib(q.w, hi);
  var x0 = x4(t.x, k, masked); var x1 = x4(t.x, k + 4u, masked);
  (*a).d0 += vec4<f32>(dot(wa0, x0) + dot(wa1, x1), dot(wb0, x0) + dot(wb1, x1), dot(wc0, x0) + dot(wc1, x1), dot(wd0, x0) + dot(wd1, x1));
  var s = vec4<f32>(0.0);
  s.x = dot(x0 + x1, vec4<f32>(1.0));
  x0 = x4(t.y, k, masked); x1 = x4(t.y, k + 4u, masked);
  (*a).d1 += vec4<f32>(dot(wa0, x0) + dot(wa1, x1), dot(wb0, x0) + dot(wb1, x1), dot(wc0, x0) + dot(wc1, x1), dot(wd0, x0) + dot(wd1, x1));
  s.y = dot(x0 + x1, vec4<f32>(1.0));
  x0 = x4(t.z, k, masked); x1 = x4(t.z, k + 4u, masked);
  (*a).d2 += vec4<f32>(dot(wa0, x0) + dot(wa1, x1), dot(wb0, x0) + dot(wb1, x1), dot(wc0, x0) + dot(wc1, x1), dot(wd0, x0) + dot(wd1, x1));
  s.z = dot(x0 + x1, vec4<f32>(1.0));
  x0 = x4(t.w, k, masked); x1 = x4(t.w, k + 4u, masked);
  (*a).d3 += vec4<f32>(dot(wa0, x0) + dot(wa1, x1), dot(wb0, x0) + dot(wb1, x1), dot(wc0, x0) + dot(wc1, x1), dot(wd0, x0) + dot(wd1, x1));
  s.w = dot(x0 + x1, vec4<f32>(1.0));
  (*a).s += s;
}

// Per row: s * (d - z * sum x), for one token's d and x sum.
fn deq4(d: vec4<f32>, xs: f32, words: vec4<u32>) -> vec4<f32> {
  let a = unpack2x16float(words.x);
  let b = unpack2x16float(words.y);
  let c = unpack2x16float(words.z);
  let e = unpack2x16float(words.w);
  return vec4<f32>(a.x, b.x, c.x, e.x) * (d - vec4<f32>(a.y, b.y, c.y, e.y) * xs);
}
#else
// One word per row (q.x .. q.w for rows r0..r3): 4 weights from column k.
fn word(q: vec4<u32>, k: u32, t: vec4<u32>, masked: bool, a: ptr<function, Sums>) {
  let wa = byt(q.x);
  let wb = byt(q.y);
  let wc = byt(q.z);
  let wd = byt(q.w);
  var xv = x4(t.x, k, masked);
  (*a).d0 += vec4<f32>(dot(wa, xv), dot(wb, xv), dot(wc, xv), dot(wd, xv));
  xv = x4(t.y, k, masked);
  (*a).d1 += vec4<f32>(dot(wa, xv), dot(wb, xv), dot(wc, xv), dot(wd, xv));
  xv = x4(t.z, k, masked);
  (*a).d2 += vec4<f32>(dot(wa, xv), dot(wb, xv), dot(wc, xv), dot(wd, xv));
  xv = x4(t.w, k, masked);
  (*a).d3 += vec4<f32>(dot(wa, xv), dot(wb, xv), dot(wc, xv), dot(wd, xv));
}

fn deq4(d: vec4<f32>, xs: f32, words: vec4<u32>) -> vec4<f32> {
  return bitcast<vec4<f32>>(words) * d;
}
#endif

// Adds group g of rows r (x4) times tokens t (x4) to the accumulators a<i> (token t<i>).
fn group(g: u32, r: vec4<u32>, t: vec4<u32>, masked: bool, acc: ptr<function, array<vec4<f32>, 4>>) {
  let vpg = G / EPV;
  let base = r * (p.groups * vpg) + vec4<u32>(g * vpg);
  var a: Sums;
  for (var v = 0u; v < vpg; v++) {
    let k = g * G + v * EPV;
    let qa = w[base.x + v];
    let qb = w[base.y + v];
    let qc = w[base.z + v];
    let qd = w[base.w + v];
    word(vec4<u32>(qa.x, qb.x, qc.x, qd.x), k, t, masked, &a);
    word(vec4<u32>(qa.y, qb.y, qc.y, qd.y), k + EPW, t, masked, &a);
    word(vec4<u32>(qa.z, qb.z, qc.z, qd.z), k + 2u * EPW, t, masked, &a);
    word(vec4<u32>(qa.w, qb.w, qc.w, qd.w), k + 3u * EPW, t, masked, &a);
  }
  let si = r * p.groups + vec4<u32>(g);
  let words = vec4<u32>(sc[si.x], sc[si.y], sc[si.z], sc[si.w]);
  (*acc)[0] += deq4(a.d0, a.s.x, words);
  (*acc)[1] += deq4(a.d1, a.s.y, words);
  (*acc)[2] += deq4(a.d2, a.s.z, words);
  (*acc)[3] += deq4(a.d3, a.s.w, words);
}

// Tokens come from workgroup_id so x's addresses are uniform across the workgroup.
@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
  let r0 = gid.x * 4u;
  let t0 = wg.y * 4u;
  if (r0 >= p.rows || t0 >= p.tokens) { return; }
  let last = p.rows - 1u;
  let r = min(vec4<u32>(r0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(last));
  let tl = p.tokens - 1u;
  let t = min(vec4<u32>(t0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(tl));
  var acc: array<vec4<f32>, 4>; // acc[i]: token t[i], rows r0..r3
  let full = p.K / G;
  for (var g = 0u; g < full; g++) {
    group(g, r, t, false, &acc);
  }
#if TAIL
  group(full, r, t, true, &acc);
#endif
  for (var i = 0u; i < 4u; i++) {
    if (t0 + i > tl) { break; }
    let v = acc[i];
    store(t[i], r0, v.x);
    if (r0 + 1u <= last) { store(t[i], r0 + 1u, v.y); }
    if (r0 + 2u <= last) { store(t[i], r0 + 2u, v.z); }
    if (r0 + 3u <= last) { store(t[i], r0 + 3u, v.w); }
  }
}
#endif
#endif
