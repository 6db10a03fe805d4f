// Matrix-vector product for one token (decode's hot path), or on the software variant for a few
// (a decode step over several sequences), over one row chunk of W:
//   y[t, colOffset + r] (+)= sum_k x[t, k] * W[r, k] (+ bias[colOffset + r])   for r in [0, rows),
// t in [tokenBase, tokenBase + TB) (software; the GPU shape runs token 0 only).
// through the linear_store epilogue (SPLIT: q|k|v to three outputs; GLU: silu(gate) * up).
// W is the chunk's rows, row-major [rows, K], in f32 or in bf16/f16 packed two per u32 from the
// chunk's own element 0 (element e in word e >> 1, low half when e is even); 16-bit weights are
// unpacked here, so no shader-f16 is needed.
// Defines: WBF16 / WF16 (weight format; both imply W16; neither = f32), VEC (K % 8 == 0: eight
// weights per load), XU (x read from a uniform buffer; VEC only), BIAS, ACC (y += rather than y =),
// SPLIT, GLU (kernels/linear_store.wgsl),
// GPU (TPR threads per row reducing through workgroup memory; else one thread per 4 rows, no barriers),
// NORM (GPU: x is the residual stream and the kernel applies the RMSNorm that precedes this layer:
// y = (W (x * gamma)) / sqrt(mean(x^2) + eps), the mean reduced alongside the dot products),
// TILED (software, VEC: W in row tiles, src/tiles.ts, rows padded to whole tiles), SGX (software,
// VEC, subgroups of 8: x through subgroup broadcasts, kernels/subgroup_x.wgsl; x is then storage),
// SGXT (software, VEC, TB of 5..8, subgroups of 8: lane l loads token min(l, TB - 1)'s eight values
// of x per step as two vec4 and broadcasts them, two loads for all the tokens instead of one per
// token; the same values, so the same sums, as SGX).
// Software: override TB (1..TMAX) tokens per thread, each weight load serving all TB; every token's
// sums run in the same order whatever TB (the loop over tokens is inside the loop over K), so a
// token's output is bit-identical in a dispatch of 1 or TB tokens (batch invariance of decode steps).
// Bindings: 0 params, 1 W chunk, 2 x [tokens, K] f32 (XU: tokenBase 0 and TB * K <= 16384),
// 3 y [tokens, N] f32, 4 bias [N] f32 (BIAS only),
// 6 and 7 the other outputs (SPLIT), 8 gamma [K] f32 (NORM).

#include linear_io

#if W16
#if VEC
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
#else
@group(0) @binding(1) var<storage, read> w: array<u32>;
#endif
#else
#if VEC
@group(0) @binding(1) var<storage, read> w: array<vec4<f32>>;
#else
@group(0) @binding(1) var<storage, read> w: array<f32>;
#endif
#endif

#include linear_x
#if SGX
var<private> sgLane: u32;
#endif

#if NORM
#if VEC
@group(0) @binding(8) var<storage, read> gamma: array<vec4<f32>>;
#else
@group(0) @binding(8) var<storage, read> gamma: array<f32>;
#endif
#endif

#include unpack16

#if VEC
#include oct

// Eight values x[tokenBase + t, 8c .. 8c + 8).
#if SGX
fn x8(t: u32, c: u32) -> Oct {
  return x8s((p.tokenBase + t) * p.K + 8u * c, sgLane);
}
#else
fn x8(t: u32, c: u32) -> Oct {
  let i = (p.tokenBase + t) * (p.K / 4u) + 2u * c;
  return Oct(x[i], x[i + 1u]);
}
#endif
#else
fn w1(e: u32) -> f32 {
#if W16
  let v = unpack2(w[e >> 1u]);
  return select(v.x, v.y, (e & 1u) == 1u);
#else
  return w[e];
#endif
}
#endif

#include linear_store

#if GPU
#include matvec_rows
#if NORM
// Eight values of x times gamma.
fn xg8(c: u32, v: Oct) -> Oct {
  return Oct(v.a * gamma[2u * c], v.b * gamma[2u * c + 1u]);
}
#endif

@compute @workgroup_size(TPR * RPW)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let lane = lid % TPR;
  let r = (wg.x + wg.y * nwg.x) * RPW + lid / TPR;
  let rr = min(r, p.rows - 1u);
  var s = 0.0;
  var ss = 0.0;
#if VEC
  let kc = p.K / 8u;
  // Neighbouring threads read neighbouring 16- or 32-byte pieces of the row: coalesced.
  for (var c = lane; c < kc; c += TPR) {
    let xv = x8(0u, c);
#if NORM
    ss += dot8(xv, xv);
    s += dot8(w8((rr * kc + c) * STEP), xg8(c, xv));
#else
    s += dot8(w8((rr * kc + c) * STEP), xv);
#endif
  }
#else
  for (var k = lane; k < p.K; k += TPR) {
    let xk = x[k];
#if NORM
    ss += xk * xk;
    s += w1(rr * p.K + k) * (xk * gamma[k]);
#else
    s += w1(rr * p.K + k) * xk;
#endif
  }
#endif
  finishRows(lid, (wg.x + wg.y * nwg.x) * RPW, s, ss);
}
#else
#include matvec_threads

#if VEC
// Eight weights of four rows times eight values of x.
fn rows4(q0: Oct, q1: Oct, q2: Oct, q3: Oct, xv: Oct) -> vec4<f32> {
  return vec4<f32>(dot8(q0, xv), dot8(q1, xv), dot8(q2, xv), dot8(q3, xv));
}
#endif

// Four rows per thread: x is loaded once for four rows (+45-60% on lavapipe); TB tokens per
// thread: each weight load serves TB tokens.
fn accumulate(thread: u32, r0: u32, lane: u32, acc: ptr<function, array<vec4<f32>, TMAX>>) {
  let last = p.rows - 1u;
#if SGXT
  let xt = (p.tokenBase + min(lane, TB - 1u)) * (p.K / 4u);
#endif
#if VEC
  let kc = p.K / 8u;
  let i = rowStarts(thread, r0, last, kc);
  for (var c = 0u; c < kc; c++) {
    let o = c * STEP;
    let q0 = w8(i.x + o);
    let q1 = w8(i.y + o);
    let q2 = w8(i.z + o);
    let q3 = w8(i.w + o);
#if SGXT
    let xa = x[xt + 2u * c];
    let xb = x[xt + 2u * c + 1u];
    (*acc)[0] += rows4(q0, q1, q2, q3, Oct(subgroupBroadcast(xa, 0u), subgroupBroadcast(xb, 0u)));
    (*acc)[1] += rows4(q0, q1, q2, q3, Oct(subgroupBroadcast(xa, 1u), subgroupBroadcast(xb, 1u)));
    if (TB > 2u) { (*acc)[2] += rows4(q0, q1, q2, q3, Oct(subgroupBroadcast(xa, 2u), subgroupBroadcast(xb, 2u))); }
    if (TB > 3u) { (*acc)[3] += rows4(q0, q1, q2, q3, Oct(subgroupBroadcast(xa, 3u), subgroupBroadcast(xb, 3u))); }
    if (TB > 4u) { (*acc)[4] += rows4(q0, q1, q2, q3, Oct(subgroupBroadcast(xa, 4u), subgroupBroadcast(xb, 4u))); }
    if (TB > 5u) { (*acc)[5] += rows4(q0, q1, q2, q3, Oct(subgroupBroadcast(xa, 5u), subgroupBroadcast(xb, 5u))); }
    if (TB > 6u) { (*acc)[6] += rows4(q0, q1, q2, q3, Oct(subgroupBroadcast(xa, 6u), subgroupBroadcast(xb, 6u))); }
    if (TB > 7u) { (*acc)[7] += rows4(q0, q1, q2, q3, Oct(subgroupBroadcast(xa, 7u), subgroupBroadcast(xb, 7u))); }
#else
    for (var t = 0u; t < TB; t++) {
      (*acc)[t] += rows4(q0, q1, q2, q3, x8(t, c));
    }
#endif
  }
#else
  let K = p.K;
  let r1 = min(r0 + 1u, last);
  let r2 = min(r0 + 2u, last);
  let r3 = min(r0 + 3u, last);
  for (var k = 0u; k < K; k++) {
    let wk = vec4<f32>(w1(r0 * K + k), w1(r1 * K + k), w1(r2 * K + k), w1(r3 * K + k));
    for (var t = 0u; t < TB; t++) {
      (*acc)[t] += wk * x[(p.tokenBase + t) * K + k];
    }
  }
#endif
}
#endif
