// Fused dequant matrix-matrix product for several tokens (prefill), over one row chunk of a
// quantized W:
//   y[t, colOffset + r] (+)= sum_k x[t, k] * W[r, k] (+ bias[colOffset + r])   t < tokens, r < rows.
// x is [tokens, K] f32, y is [tokens, N] f32 (row stride N). W and its scales are laid out as in
// src/quant.ts: rows padded to `groups` groups of G columns; the format (Q4, else q8) is one
// dequantisation snippet (kernels/dequant.wgsl). Weights are never expanded to
// a full-precision buffer; f32 arithmetic only (see matvec_q.wgsl for why no shader-f16 variant).
// Four kernels, one per way of reading x, chosen by entry point (ops/linear.ts):
//   tile  GPU: 64x64 output tiles through workgroup memory, weights dequantized into the tile
//         (kernels/matmul_tile.wgsl, with NORM as there).
//   sgx   software, subgroups of exactly 8 (SUBGROUPS): 4 rows x 16 tokens per thread, x read from
//         storage through subgroup broadcasts (kernels/subgroup_x.wgsl: lane l loads x[t, k + l]
//         and hands it to the other seven, one gather per eight columns instead of eight); tokens
//         from workgroup_id.y, one dispatch for all tokens; any K, the partial last group masked.
//   xu    software, K % 4 == 0, K <= 1020: 4 rows x 16 tokens per thread, x read through a 64 KiB
//         uniform window holding those 16 tokens, one dispatch per group of 16 tokens; each weight
//         word is dequantized once and serves 16 tokens. On lavapipe a storage load in a loop is a
//         per-lane scalar loop while a uniform load is one vector gather (see matmul.wgsl).
//   rows  software, any K: 4 rows x 4 tokens per thread, x from storage; each weight word serves
//         4 tokens and each x load 4 rows, and each group's raw sums are scaled once.
// The 16 accumulators of sgx and xu are named, not an array: lavapipe keeps them in registers.
// Defines: Q4 (else q8), TAIL (K % G != 0: x masked to k < K in the last group), BIAS, ACC,
// SPLIT, GLU (kernels/linear_store.wgsl), NORM (tile), SUBGROUPS (sgx is compiled), TILED
// (software: W and scales in row tiles, src/tiles.ts; a unit is one vec4<u32> of W, one scale word
// of the scales; rows padded with zeros to whole tiles, kernels/quant_rows.wgsl).
// Bindings: 0 params, 1 W chunk [rows, groups * G / EPV] vec4<u32> (xu: the same words as u32),
// 2 x [tokens, K] f32 (xu: the window starting at or before token tokenBase, as vec4s), 3 y
// [tokens, N] f32, 4 bias [N] f32 (BIAS), 5 scales [rows, groups] u32, 6 and 7 the other outputs
// (SPLIT), 8 gamma [K] f32 (NORM).

#include linear_io

override G: u32 = 32u;  // weights per group: a multiple of 32
override WG: u32 = 64u; // software workgroup size

@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read> wq: array<u32>;                // xu
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<uniform> xw: array<vec4<f32>, 4096>;          // xu
@group(0) @binding(5) var<storage, read> sc: array<u32>;
#if NORM
@group(0) @binding(8) var<storage, read> gamma: array<f32>;
#endif

#include dequant
#include linear_store
#include quant_rows

// ---- tile (GPU) ----

// Element (r, k) of the chunk, dequantized.
fn weight(r: u32, k: u32) -> f32 {
  let e = r * p.groups * G + k;
  return weightAt(w[e / EPV][(e % EPV) / EPW], e, sc[r * p.groups + k / G]);
}

#include matmul_tile

// ---- sgx and xu: 4 rows x 16 tokens ----

// Accumulators of 16 tokens (a<j>: the thread's token j, rows r0..r3) and where each token's x
// starts (xu: in the window, vec4s; sgx: in x, f32s).
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

// ---- sgx ----
#if SUBGROUPS
var<private> sgLane: u32; // the thread's subgroup_invocation_id
#include subgroup_x

// x[o + k + lane], zero from column K on when masked (the last group's padding meets it, and past
// K lies the next token or the end of x).
fn xsg(o: u32, k: u32, masked: bool) -> f32 {
  let i = k + sgLane;
  return select(x[o + min(i, p.K - 1u)], 0.0, masked && i >= p.K);
}

// Columns k .. k + 8 of the 4 rows (weights 8m .. 8m + 8 of their units ua..ud; scales sa..sd)
// times the 16 tokens, each token's eight x loaded by the lanes and broadcast. Weights 0..3, then
// 4..7: fewer live registers than all eight at once.
fn oct(k: u32, m: u32, ua: vec4<u32>, ub: vec4<u32>, uc: vec4<u32>, ud: vec4<u32>, sa: vec2<f32>, sb: vec2<f32>, sc4: vec2<f32>, sd: vec2<f32>, o: Offs, masked: bool, a: ptr<function, Acc>) {
  var wa = deq4(qlo(ua, m), sa);
  var wb = deq4(qlo(ub, m), sb);
  var wc = deq4(qlo(uc, m), sc4);
  var wd = deq4(qlo(ud, m), sd);
  let x0 = xsg(o.o0, k, masked);
  (*a).a0 += d4(wa, wb, wc, wd, bcastLo(x0));
  let x1 = xsg(o.o1, k, masked);
  (*a).a1 += d4(wa, wb, wc, wd, bcastLo(x1));
  let x2 = xsg(o.o2, k, masked);
  (*a).a2 += d4(wa, wb, wc, wd, bcastLo(x2));
  let x3 = xsg(o.o3, k, masked);
  (*a).a3 += d4(wa, wb, wc, wd, bcastLo(x3));
  let x4 = xsg(o.o4, k, masked);
  (*a).a4 += d4(wa, wb, wc, wd, bcastLo(x4));
  let x5 = xsg(o.o5, k, masked);
  (*a).a5 += d4(wa, wb, wc, wd, bcastLo(x5));
  let x6 = xsg(o.o6, k, masked);
  (*a).a6 += d4(wa, wb, wc, wd, bcastLo(x6));
  let x7 = xsg(o.o7, k, masked);
  (*a).a7 += d4(wa, wb, wc, wd, bcastLo(x7));
  let x8 = xsg(o.o8, k, masked);
  (*a).a8 += d4(wa, wb, wc, wd, bcastLo(x8));
  let x9 = xsg(o.o9, k, masked);
  (*a).a9 += d4(wa, wb, wc, wd, bcastLo(x9));
  let x10 = xsg(o.o10, k, masked);
  (*a).a10 += d4(wa, wb, wc, wd, bcastLo(x10));
  let x11 = xsg(o.o11, k, masked);
  (*a).a11 += d4(wa, wb, wc, wd, bcastLo(x11));
  let x12 = xsg(o.o12, k, masked);
  (*a).a12 += d4(wa, wb, wc, wd, bcastLo(x12));
  let x13 = xsg(o.o13, k, masked);
  (*a).a13 += d4(wa, wb, wc, wd, bcastLo(x13));
  let x14 = xsg(o.o14, k, masked);
  (*a).a14 += d4(wa, wb, wc, wd, bcastLo(x14));
  let x15 = xsg(o.o15, k, masked);
  (*a).a15 += d4(wa, wb, wc, wd, bcastLo(x15));
  wa = deq4(qhi(ua, m), sa);
  wb = deq4(qhi(ub, m), sb);
  wc = deq4(qhi(uc, m), sc4);
  wd = deq4(qhi(ud, m), sd);
  (*a).a0 += d4(wa, wb, wc, wd, bcastHi(x0));
  (*a).a1 += d4(wa, wb, wc, wd, bcastHi(x1));
  (*a).a2 += d4(wa, wb, wc, wd, bcastHi(x2));
  (*a).a3 += d4(wa, wb, wc, wd, bcastHi(x3));
  (*a).a4 += d4(wa, wb, wc, wd, bcastHi(x4));
  (*a).a5 += d4(wa, wb, wc, wd, bcastHi(x5));
  (*a).a6 += d4(wa, wb, wc, wd, bcastHi(x6));
  (*a).a7 += d4(wa, wb, wc, wd, bcastHi(x7));
  (*a).a8 += d4(wa, wb, wc, wd, bcastHi(x8));
  (*a).a9 += d4(wa, wb, wc, wd, bcastHi(x9));
  (*a).a10 += d4(wa, wb, wc, wd, bcastHi(x10));
  (*a).a11 += d4(wa, wb, wc, wd, bcastHi(x11));
  (*a).a12 += d4(wa, wb, wc, wd, bcastHi(x12));
  (*a).a13 += d4(wa, wb, wc, wd, bcastHi(x13));
  (*a).a14 += d4(wa, wb, wc, wd, bcastHi(x14));
  (*a).a15 += d4(wa, wb, wc, wd, bcastHi(x15));
}

// Group g of 4 rows (W from vec4 wr, scales from word sr) times the 16 tokens. Masked (the partial
// last group), only the vec4s of W that reach below K are read.
fn groupX(g: u32, wr: vec4<u32>, sr: vec4<u32>, o: Offs, masked: bool, a: ptr<function, Acc>) {
  let si = sr + vec4<u32>(g * NEXT);
  let sa = scaleZero(sc[si.x]);
  let sb = scaleZero(sc[si.y]);
  let sc4 = scaleZero(sc[si.z]);
  let sd = scaleZero(sc[si.w]);
  let vpg = G / EPV;
  let base = wr + vec4<u32>(g * vpg * NEXT);
  var n = vpg;
  if (masked) { n = (p.K - g * G + EPV - 1u) / EPV; }
  for (var v = 0u; v < n; v++) {
    let k = g * G + v * EPV;
    let u = v * NEXT;
    let qa = w[base.x + u];
    let qb = w[base.y + u];
    let qc = w[base.z + u];
    let qd = w[base.w + u];
    for (var m = 0u; m < EPV / 8u; m++) {
      oct(k + 8u * m, m, qa, qb, qc, qd, sa, sb, sc4, sd, o, masked, a);
    }
  }
}

// 4 rows x 16 tokens per thread, x through subgroup broadcasts. Tokens come from workgroup_id.y,
// so one dispatch covers them all; threads past the last row keep running (clamped rows, no
// stores) so their subgroup stays whole.
@compute @workgroup_size(WG)
fn sgx(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
  sgLane = lane;
  let thread = gid.x;
  let r0 = thread * 4u;
  let wr = rowUnits(thread, p.groups * (G / EPV));
  let sr = rowUnits(thread, p.groups);
  let t0 = wg.y * 16u;
  let n = min(p.tokens - t0, 16u);
  // Tokens past the end repeat the last one (their sums are not stored).
  var o: Offs;
  o.o0 = (t0 + min(0u, n - 1u)) * p.K;
  o.o1 = (t0 + min(1u, n - 1u)) * p.K;
  o.o2 = (t0 + min(2u, n - 1u)) * p.K;
  o.o3 = (t0 + min(3u, n - 1u)) * p.K;
  o.o4 = (t0 + min(4u, n - 1u)) * p.K;
  o.o5 = (t0 + min(5u, n - 1u)) * p.K;
  o.o6 = (t0 + min(6u, n - 1u)) * p.K;
  o.o7 = (t0 + min(7u, n - 1u)) * p.K;
  o.o8 = (t0 + min(8u, n - 1u)) * p.K;
  o.o9 = (t0 + min(9u, n - 1u)) * p.K;
  o.o10 = (t0 + min(10u, n - 1u)) * p.K;
  o.o11 = (t0 + min(11u, n - 1u)) * p.K;
  o.o12 = (t0 + min(12u, n - 1u)) * p.K;
  o.o13 = (t0 + min(13u, n - 1u)) * p.K;
  o.o14 = (t0 + min(14u, n - 1u)) * p.K;
  o.o15 = (t0 + min(15u, n - 1u)) * p.K;
  var a: Acc;
  let full = p.K / G;
  for (var g = 0u; g < full; g++) {
    groupX(g, wr, sr, o, false, &a);
  }
#if TAIL
  groupX(full, wr, sr, o, true, &a);
#endif
  store4(t0, r0, a.a0);
  if (1u < n) { store4(t0 + 1u, r0, a.a1); }
  if (2u < n) { store4(t0 + 2u, r0, a.a2); }
  if (3u < n) { store4(t0 + 3u, r0, a.a3); }
  if (4u < n) { store4(t0 + 4u, r0, a.a4); }
  if (5u < n) { store4(t0 + 5u, r0, a.a5); }
  if (6u < n) { store4(t0 + 6u, r0, a.a6); }
  if (7u < n) { store4(t0 + 7u, r0, a.a7); }
  if (8u < n) { store4(t0 + 8u, r0, a.a8); }
  if (9u < n) { store4(t0 + 9u, r0, a.a9); }
  if (10u < n) { store4(t0 + 10u, r0, a.a10); }
  if (11u < n) { store4(t0 + 11u, r0, a.a11); }
  if (12u < n) { store4(t0 + 12u, r0, a.a12); }
  if (13u < n) { store4(t0 + 13u, r0, a.a13); }
  if (14u < n) { store4(t0 + 14u, r0, a.a14); }
  if (15u < n) { store4(t0 + 15u, r0, a.a15); }
}
#endif

// ---- xu ----

// Dequantized weights of rows r0..r3 at columns 4c .. 4c + 4, times the 16 tokens.
fn quad16(wa: vec4<f32>, wb: vec4<f32>, wc: vec4<f32>, wd: vec4<f32>, c: u32, o: Offs, a: ptr<function, Acc>) {
  (*a).a0 += d4(wa, wb, wc, wd, xw[o.o0 + c]);
  (*a).a1 += d4(wa, wb, wc, wd, xw[o.o1 + c]);
  (*a).a2 += d4(wa, wb, wc, wd, xw[o.o2 + c]);
  (*a).a3 += d4(wa, wb, wc, wd, xw[o.o3 + c]);
  (*a).a4 += d4(wa, wb, wc, wd, xw[o.o4 + c]);
  (*a).a5 += d4(wa, wb, wc, wd, xw[o.o5 + c]);
  (*a).a6 += d4(wa, wb, wc, wd, xw[o.o6 + c]);
  (*a).a7 += d4(wa, wb, wc, wd, xw[o.o7 + c]);
  (*a).a8 += d4(wa, wb, wc, wd, xw[o.o8 + c]);
  (*a).a9 += d4(wa, wb, wc, wd, xw[o.o9 + c]);
  (*a).a10 += d4(wa, wb, wc, wd, xw[o.o10 + c]);
  (*a).a11 += d4(wa, wb, wc, wd, xw[o.o11 + c]);
  (*a).a12 += d4(wa, wb, wc, wd, xw[o.o12 + c]);
  (*a).a13 += d4(wa, wb, wc, wd, xw[o.o13 + c]);
  (*a).a14 += d4(wa, wb, wc, wd, xw[o.o14 + c]);
  (*a).a15 += d4(wa, wb, wc, wd, xw[o.o15 + c]);
}

// Index in w (u32s) of word e of the row whose W starts at vec4 `base`.
fn wordAt(base: u32, e: u32) -> u32 {
  return 4u * (base + NEXT * (e / 4u)) + (e & 3u);
}

@compute @workgroup_size(WG)
fn xu(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let thread = gid.x + gid.y * nwg.x * WG;
  let r0 = thread * 4u;
  if (r0 >= p.rows) { return; }
  let wpg = G / EPW; // words per group
  let wr = rowUnits(thread, p.groups * (G / EPV));
  let sr = rowUnits(thread, p.groups);
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
    let si = sr + vec4<u32>(g * NEXT);
    let sa = scaleZero(sc[si.x]);
    let sb = scaleZero(sc[si.y]);
    let scc = scaleZero(sc[si.z]);
    let sd = scaleZero(sc[si.w]);
    let k0 = g * G;
    // The last group may be partial (TAIL): its words past K hold padding, and x there is the next token.
    let words = (min(p.K - k0, G) + EPW - 1u) / EPW;
    for (var j = 0u; j < words; j++) {
      let e = g * wpg + j;
      let qa = wq[wordAt(wr.x, e)];
      let qb = wq[wordAt(wr.y, e)];
      let qc = wq[wordAt(wr.z, e)];
      let qd = wq[wordAt(wr.w, e)];
      let k = k0 + j * EPW;
      quad16(deq4(rawQuad(qa, 0u), sa), deq4(rawQuad(qb, 0u), sb), deq4(rawQuad(qc, 0u), scc), deq4(rawQuad(qd, 0u), sd), k / 4u, o, &a);
      if (EPW == 8u) {
#if TAIL
        if (k + 4u >= p.K) { break; }
#endif
        quad16(deq4(rawQuad(qa, 1u), sa), deq4(rawQuad(qb, 1u), sb), deq4(rawQuad(qc, 1u), scc), deq4(rawQuad(qd, 1u), sd), k / 4u + 1u, o, &a);
      }
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

// ---- rows ----

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
  let wa0 = rawQuad(q.x, 0u); let wa1 = rawQuad(q.x, 1u);
  let wb0 = rawQuad(q.y, 0u); let wb1 = rawQuad(q.y, 1u);
  let wc0 = rawQuad(q.z, 0u); let wc1 = rawQuad(q.z, 1u);
  let wd0 = rawQuad(q.w, 0u); let wd1 = rawQuad(q.w, 1u);
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
#else
// One word per row (q.x .. q.w for rows r0..r3): 4 weights from column k.
fn word(q: vec4<u32>, k: u32, t: vec4<u32>, masked: bool, a: ptr<function, Sums>) {
  let wa = rawQuad(q.x, 0u);
  let wb = rawQuad(q.y, 0u);
  let wc = rawQuad(q.z, 0u);
  let wd = rawQuad(q.w, 0u);
  var xv = x4(t.x, k, masked);
  (*a).d0 += vec4<f32>(dot(wa, xv), dot(wb, xv), dot(wc, xv), dot(wd, xv));
  xv = x4(t.y, k, masked);
  (*a).d1 += vec4<f32>(dot(wa, xv), dot(wb, xv), dot(wc, xv), dot(wd, xv));
  xv = x4(t.z, k, masked);
  (*a).d2 += vec4<f32>(dot(wa, xv), dot(wb, xv), dot(wc, xv), dot(wd, xv));
  xv = x4(t.w, k, masked);
  (*a).d3 += vec4<f32>(dot(wa, xv), dot(wb, xv), dot(wc, xv), dot(wd, xv));
}
#endif

// Adds group g of 4 rows (W from vec4 wr, scales from word sr) times tokens t (x4) to the
// accumulators a<i> (token t<i>).
fn group(g: u32, wr: vec4<u32>, sr: vec4<u32>, t: vec4<u32>, masked: bool, acc: ptr<function, array<vec4<f32>, 4>>) {
  let vpg = G / EPV;
  let base = wr + vec4<u32>(g * vpg * NEXT);
  var a: Sums;
  for (var v = 0u; v < vpg; v++) {
    let k = g * G + v * EPV;
    let o = v * NEXT;
    let qa = w[base.x + o];
    let qb = w[base.y + o];
    let qc = w[base.z + o];
    let qd = w[base.w + o];
    word(vec4<u32>(qa.x, qb.x, qc.x, qd.x), k, t, masked, &a);
    word(vec4<u32>(qa.y, qb.y, qc.y, qd.y), k + EPW, t, masked, &a);
    word(vec4<u32>(qa.z, qb.z, qc.z, qd.z), k + 2u * EPW, t, masked, &a);
    word(vec4<u32>(qa.w, qb.w, qc.w, qd.w), k + 3u * EPW, t, masked, &a);
  }
  let si = sr + vec4<u32>(g * NEXT);
  let words = vec4<u32>(sc[si.x], sc[si.y], sc[si.z], sc[si.w]);
  (*acc)[0] += groupSum4(a.d0, a.s.x, words);
  (*acc)[1] += groupSum4(a.d1, a.s.y, words);
  (*acc)[2] += groupSum4(a.d2, a.s.z, words);
  (*acc)[3] += groupSum4(a.d3, a.s.w, words);
}

// 4 rows x 4 tokens per thread, x from storage, each group's raw sums scaled once. Tokens come
// from workgroup_id so x's addresses are uniform across the workgroup.
@compute @workgroup_size(WG)
fn rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
  let r0 = gid.x * 4u;
  let t0 = wg.y * 4u;
  if (r0 >= p.rows || t0 >= p.tokens) { return; }
  let wr = rowUnits(gid.x, p.groups * (G / EPV));
  let sr = rowUnits(gid.x, p.groups);
  let tl = p.tokens - 1u;
  let t = min(vec4<u32>(t0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(tl));
  var acc: array<vec4<f32>, 4>; // acc[i]: token t[i], rows r0..r3
  let full = p.K / G;
  for (var g = 0u; g < full; g++) {
    group(g, wr, sr, t, false, &acc);
  }
#if TAIL
  group(full, wr, sr, t, true, &acc);
#endif
  for (var i = 0u; i < 4u; i++) {
    if (t0 + i > tl) { break; }
    store4(t[i], r0, acc[i]);
  }
}
