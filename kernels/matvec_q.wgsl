// Fused dequant matrix-vector product for one token (decode), or on the software variant for a few
// (a decode step over several sequences), over one row chunk of a quantized W:
//   y[t, colOffset + r] (+)= sum_k x[t, k] * W[r, k] (+ bias[colOffset + r])   for r in [0, rows),
// t in [tokenBase, tokenBase + TB) (software; the GPU shape runs token 0 only).
// W layout (src/quant.ts): each row padded with zero weights to `groups` groups of G columns;
// a group is G / EPV vec4<u32> loads. Q8: 16 int8 per vec4<u32> (element k in byte k % 4 of word
// k / 4), scale word = f32 bits of s, w = q * s. Else q4: 32 nibbles per vec4<u32> (element k in
// bits 4 (k % 8) of word k / 8), scale word = pack2x16float(s, z), w = (q - z) * s, computed as
// s * (sum q x - z * sum x) so the zero point costs one multiply per group. Each format's
// dequantisation is one snippet (kernels/dequant.wgsl), shared with matmul_q.wgsl.
// Each group's integer dot product is summed in f32 and scaled once: no shader-f16 is needed (f16
// partial sums would overflow on outlier activations: 127 * |x| * 32), and scales are decoded with
// the core unpack2x16float, so this one path serves adapters with and without shader-f16.
// Defines: Q4 (else q8), XU (x from a uniform buffer), TAIL (K % G != 0: the last group's x is
// masked to k < K), BIAS, ACC (y += rather than y =), SPLIT, GLU (kernels/linear_store.wgsl),
// GPU (TPR threads per row reduce through workgroup memory; else one thread per 4 rows, no
// barriers, x loaded once for 4 rows), NORM (GPU: the preceding RMSNorm applied here, as in
// matvec.wgsl),
// SGX (software, subgroups of 8: x from storage through subgroup broadcasts,
// kernels/subgroup_x.wgsl), SGXT (software, TB of 5..8, K % 4 == 0, subgroups of 8: lane l loads
// token min(l, TB - 1)'s eight values of x per step as two vec4 and broadcasts them, two loads for
// all the tokens instead of one per token; the same values, so the same sums, as SGX), TILED (software: W and scales in row tiles, src/tiles.ts, rows
// padded with zero words and scales to whole tiles; a unit is one vec4<u32> of W, one scale
// word of the scales).
// Software: override TB (1..TMAX) tokens per thread, each weight load serving all TB; every token's
// sums run in the same order whatever TB (as in matvec.wgsl), so a token's output is bit-identical
// in a dispatch of 1 or TB tokens. Without SGX, TB > 1 needs K % 4 == 0 (x rows as vec4).
// Bindings: 0 params, 1 W chunk [rows, groups * G / EPV] vec4<u32> (TILED: tiled), 2 x [tokens, K]
// f32 (XU: tokenBase 0, one token), 3 y [tokens, N] f32, 4 bias [N] f32 (BIAS only), 5 scales [rows, groups] u32 (TILED: tiled), 6 and 7 the
// other outputs (SPLIT), 8 gamma [K] f32 (NORM).

#include linear_io

override G: u32 = 32u; // weights per group: a multiple of 32

@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
#if SGX
@group(0) @binding(2) var<storage, read> x: array<f32>;
var<private> sgLane: u32;
#include subgroup_x

// x[k .. k + 8) of the token whose row starts at element b, through the subgroup, zero from K on
// when masked.
fn xs(b: u32, k: u32, masked: bool) -> f32 {
  let i = k + sgLane;
  return select(x[b + min(i, p.K - 1u)], 0.0, masked && i >= p.K);
}
#else
#if XU
// Uniform arrays need 16-byte elements; 4096 vec4 = the 64 KiB uniform binding limit.
@group(0) @binding(2) var<uniform> x: array<vec4<f32>, 4096>;
#else
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
#endif
#endif
@group(0) @binding(5) var<storage, read> sc: array<u32>;
#if NORM
@group(0) @binding(8) var<storage, read> gamma: array<vec4<f32>>;
#endif

#include dequant

// A unit (vec4<u32>) of W times x: EPV values of x, their sums (zero points) and under NORM their
// products with gamma and sums of squares.
#if Q4
// x[k .. k + 32)
struct XV {
  a: vec4<f32>, b: vec4<f32>, c: vec4<f32>, d: vec4<f32>,
  e: vec4<f32>, f: vec4<f32>, g: vec4<f32>, h: vec4<f32>,
}

#if !SGX
// x[k .. k + EPV) of the token whose row starts at vec4 b (and masked to k < K).
fn xv(b: u32, k: u32) -> XV {
  let i = b + k / 4u;
  return XV(x[i], x[i + 1u], x[i + 2u], x[i + 3u], x[i + 4u], x[i + 5u], x[i + 6u], x[i + 7u]);
}

fn xvm(b: u32, k: u32) -> XV {
  let i = b + k / 4u;
  return XV(m4(x[i], k), m4(x[i + 1u], k + 4u), m4(x[i + 2u], k + 8u), m4(x[i + 3u], k + 12u),
            m4(x[i + 4u], k + 16u), m4(x[i + 5u], k + 20u), m4(x[i + 6u], k + 24u), m4(x[i + 7u], k + 28u));
}
#endif

fn dotw(q: vec4<u32>, v: XV) -> f32 {
  return dot(qlo(q, 0u), v.a) + dot(qhi(q, 0u), v.b) + dot(qlo(q, 1u), v.c) + dot(qhi(q, 1u), v.d)
       + dot(qlo(q, 2u), v.e) + dot(qhi(q, 2u), v.f) + dot(qlo(q, 3u), v.g) + dot(qhi(q, 3u), v.h);
}

fn xsum(v: XV) -> f32 {
  return dot((v.a + v.b) + (v.c + v.d) + (v.e + v.f) + (v.g + v.h), vec4<f32>(1.0));
}

#if NORM
// x[k .. k + 32) times gamma, and the sum of their squares.
fn xg(k: u32, v: XV) -> XV {
  let i = k / 4u;
  return XV(v.a * gamma[i], v.b * gamma[i + 1u], v.c * gamma[i + 2u], v.d * gamma[i + 3u],
            v.e * gamma[i + 4u], v.f * gamma[i + 5u], v.g * gamma[i + 6u], v.h * gamma[i + 7u]);
}

fn xsq(v: XV) -> f32 {
  return dot(v.a, v.a) + dot(v.b, v.b) + dot(v.c, v.c) + dot(v.d, v.d) + dot(v.e, v.e) + dot(v.f, v.f) + dot(v.g, v.g) + dot(v.h, v.h);
}
#endif
#else
struct XV {
  a: vec4<f32>, b: vec4<f32>, c: vec4<f32>, d: vec4<f32>,
}

#if !SGX
// x[k .. k + EPV) of the token whose row starts at vec4 b (and masked to k < K).
fn xv(b: u32, k: u32) -> XV {
  let i = b + k / 4u;
  return XV(x[i], x[i + 1u], x[i + 2u], x[i + 3u]);
}

fn xvm(b: u32, k: u32) -> XV {
  let i = b + k / 4u;
  return XV(m4(x[i], k), m4(x[i + 1u], k + 4u), m4(x[i + 2u], k + 8u), m4(x[i + 3u], k + 12u));
}
#endif

fn dotw(q: vec4<u32>, v: XV) -> f32 {
  return dot(qlo(q, 0u), v.a) + dot(qhi(q, 0u), v.b) + dot(qlo(q, 1u), v.c) + dot(qhi(q, 1u), v.d);
}

fn xsum(v: XV) -> f32 {
  return 0.0;
}

#if NORM
fn xg(k: u32, v: XV) -> XV {
  let i = k / 4u;
  return XV(v.a * gamma[i], v.b * gamma[i + 1u], v.c * gamma[i + 2u], v.d * gamma[i + 3u]);
}

fn xsq(v: XV) -> f32 {
  return dot(v.a, v.a) + dot(v.b, v.b) + dot(v.c, v.c) + dot(v.d, v.d);
}
#endif
#endif

// x[k .. k + 4) with elements at or past K zeroed (they meet the zero padding of the last group,
// but past the end of x they may hold anything).
fn m4(v: vec4<f32>, k: u32) -> vec4<f32> {
  return select(vec4<f32>(0.0), v, vec4<u32>(k) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(p.K));
}

#include linear_store

#if GPU
#include matvec_rows

// Lanes of a row take whole groups in turn, so each reads its group's scale once.
@compute @workgroup_size(TPR * RPW)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let lane = lid % TPR;
  let r = (wg.x + wg.y * nwg.x) * RPW + lid / TPR;
  let rr = min(r, p.rows - 1u);
  let vpg = G / EPV;
  let full = p.K / G;
  var acc = 0.0;
  var ss = 0.0;
  for (var g = lane; g < p.groups; g += TPR) {
    var d = 0.0;
    var s = 0.0;
    for (var v = 0u; v < vpg; v++) {
      let k = g * G + v * EPV;
      var xx: XV;
      if (g < full) { xx = xv(0u, k); } else { xx = xvm(0u, k); }
#if NORM
      ss += xsq(xx);
      xx = xg(k, xx);
#endif
      d += dotw(w[(rr * p.groups + g) * vpg + v], xx);
      s += xsum(xx);
    }
    acc += groupSum(d, s, sc[rr * p.groups + g]);
  }
  finishRows(lid, (wg.x + wg.y * nwg.x) * RPW, acc, ss);
}
#else
#include matvec_threads

#include quant_rows

// Eight weights or values of x: elements 0..3 and 4..7.
struct O8 {
  a: vec4<f32>,
  b: vec4<f32>,
}

const OPU = EPV / 8u; // eights of weights per vec4<u32>

// Raw weights 8m .. 8m + 8 of the unit q.
fn w8q(q: vec4<u32>, m: u32) -> O8 {
  return O8(qlo(q, m), qhi(q, m));
}

// x[k .. k + 8) of the token whose row starts at b (SGX: element; else vec4), zero from K on when
// masked.
fn x8q(b: u32, k: u32, masked: bool) -> O8 {
#if SGX
  let v = xs(b, k, masked);
  return O8(bcastLo(v), bcastHi(v));
#else
  let i = b + k / 4u;
  if (masked) { return O8(m4(x[i], k), m4(x[i + 1u], k + 4u)); }
  return O8(x[i], x[i + 1u]);
#endif
}

fn dot8q(w: O8, v: O8) -> f32 {
  return dot(w.a, v.a) + dot(w.b, v.b);
}

// Eight weights of four rows times eight values of x.
fn rows4q(u0: O8, u1: O8, u2: O8, u3: O8, v: O8) -> vec4<f32> {
  return vec4<f32>(dot8q(u0, v), dot8q(u1, v), dot8q(u2, v), dot8q(u3, v));
}

// The sum of eight values of x (for zero points).
fn xsum8(v: O8) -> f32 {
  if (ZERO_POINTS) { return dot(v.a + v.b, vec4<f32>(1.0)); }
  return 0.0;
}

// Group g of 4 rows whose W starts at vec4 wr and scales at word sr, for TB tokens, eight weights
// at a time: each weight is loaded and unpacked once for all TB tokens, each x once for the four
// rows. A token's sums run in the same order whatever TB.
// SGXT: xt is where the row of x this lane loads starts (in vec4s).
fn group(g: u32, wr: vec4<u32>, sr: vec4<u32>, masked: bool, xt: u32, acc: ptr<function, array<vec4<f32>, TMAX>>) {
  let vpg = G / EPV;
  let base = wr + vec4<u32>(g * vpg * NEXT);
  var d: array<vec4<f32>, TMAX>;
  var s: array<f32, TMAX>;
  for (var v = 0u; v < vpg; v++) {
    let o = v * NEXT;
    let q0 = w[base.x + o];
    let q1 = w[base.y + o];
    let q2 = w[base.z + o];
    let q3 = w[base.w + o];
    for (var m = 0u; m < OPU; m++) {
      let k = g * G + v * EPV + 8u * m;
      let u0 = w8q(q0, m);
      let u1 = w8q(q1, m);
      let u2 = w8q(q2, m);
      let u3 = w8q(q3, m);
#if SGXT
      // Token t's x comes from lane t: written out per token because subgroupBroadcast takes
      // its lane as a constant expression.
      var xa = x[xt + k / 4u];
      var xb = x[xt + k / 4u + 1u];
      if (masked) {
        xa = m4(xa, k);
        xb = m4(xb, k + 4u);
      }
      var xx = O8(subgroupBroadcast(xa, 0u), subgroupBroadcast(xb, 0u));
      d[0] += rows4q(u0, u1, u2, u3, xx);
      s[0] += xsum8(xx);
      xx = O8(subgroupBroadcast(xa, 1u), subgroupBroadcast(xb, 1u));
      d[1] += rows4q(u0, u1, u2, u3, xx);
      s[1] += xsum8(xx);
      xx = O8(subgroupBroadcast(xa, 2u), subgroupBroadcast(xb, 2u));
      d[2] += rows4q(u0, u1, u2, u3, xx);
      s[2] += xsum8(xx);
      xx = O8(subgroupBroadcast(xa, 3u), subgroupBroadcast(xb, 3u));
      d[3] += rows4q(u0, u1, u2, u3, xx);
      s[3] += xsum8(xx);
      xx = O8(subgroupBroadcast(xa, 4u), subgroupBroadcast(xb, 4u));
      d[4] += rows4q(u0, u1, u2, u3, xx);
      s[4] += xsum8(xx);
      if (TB > 5u) {
        xx = O8(subgroupBroadcast(xa, 5u), subgroupBroadcast(xb, 5u));
        d[5] += rows4q(u0, u1, u2, u3, xx);
        s[5] += xsum8(xx);
      }
      if (TB > 6u) {
        xx = O8(subgroupBroadcast(xa, 6u), subgroupBroadcast(xb, 6u));
        d[6] += rows4q(u0, u1, u2, u3, xx);
        s[6] += xsum8(xx);
      }
      if (TB > 7u) {
        xx = O8(subgroupBroadcast(xa, 7u), subgroupBroadcast(xb, 7u));
        d[7] += rows4q(u0, u1, u2, u3, xx);
        s[7] += xsum8(xx);
      }
#else
      for (var t = 0u; t < TB; t++) {
#if SGX
        let xx = x8q((p.tokenBase + t) * p.K, k, masked);
#else
        let xx = x8q((p.tokenBase + t) * (p.K / 4u), k, masked);
#endif
        d[t] += rows4q(u0, u1, u2, u3, xx);
        s[t] += xsum8(xx);
      }
#endif
    }
  }
  let si = sr + vec4<u32>(g * NEXT);
  let s0 = sc[si.x];
  let s1 = sc[si.y];
  let s2 = sc[si.z];
  let s3 = sc[si.w];
  for (var t = 0u; t < TB; t++) {
    (*acc)[t] += vec4<f32>(groupSum(d[t].x, s[t], s0), groupSum(d[t].y, s[t], s1), groupSum(d[t].z, s[t], s2), groupSum(d[t].w, s[t], s3));
  }
}

// The thread's four rows, group by group.
fn accumulate(thread: u32, r0: u32, lane: u32, acc: ptr<function, array<vec4<f32>, TMAX>>) {
#if SGXT
  let xt = (p.tokenBase + min(lane, TB - 1u)) * (p.K / 4u);
#else
  let xt = 0u;
#endif
  let wr = rowUnits(thread, p.groups * (G / EPV));
  let sr = rowUnits(thread, p.groups);
  let full = p.K / G;
  for (var g = 0u; g < full; g++) {
    group(g, wr, sr, false, xt, acc);
  }
#if TAIL
  group(full, wr, sr, true, xt, acc);
#endif
}
#endif
