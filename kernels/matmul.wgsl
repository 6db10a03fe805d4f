// Matrix-matrix product for several tokens (prefill), over one row chunk of W:
//   y[t, colOffset + r] (+)= sum_k x[t, k] * W[r, k] (+ bias[colOffset + r])   t < tokens, r < rows.
// x is [tokens, K] f32, y is [tokens, N] f32 (row stride N, this chunk writes columns
// colOffset .. colOffset + rows). W is laid out as in matvec.wgsl: the chunk's rows, row-major
// [rows, K], f32 or bf16/f16 packed two per u32 from the chunk's own element 0.
// Entry points, one per shape (ops/linear.ts picks it as for matmul_q.wgsl; here the defines below
// also choose the bindings): tile (GPU), sgx (SGX), xu (XU), rows (the rest).
// Defines: WBF16 / WF16 (both imply W16; neither = f32), VEC (K % 4 == 0: four weights per load;
// software shape only, the GPU tiles load single elements),
// BIAS, ACC (y += rather than y =), SPLIT, GLU (kernels/linear_store.wgsl), GPU (64x64 output
// tiles through workgroup memory, kernels/matmul_tile.wgsl, with NORM: the preceding RMSNorm
// applied in the tile; else each thread computes 4 rows x 4 tokens, so each weight load serves 4
// tokens and each x load 4 rows),
// XU (software, VEC, K <= 1024: 4 rows x 16 tokens per thread, x read through a 64 KiB uniform
// window holding those 16 tokens; one dispatch per group of 16 tokens). On lavapipe every storage
// load inside a loop becomes a per-lane scalar loop while uniform loads become one vector gather,
// so x through a uniform binding and 16 tokens per weight load are 2x faster.
// TILED (software, VEC or SGX, K % 8 == 0: W in row tiles as for matvec.wgsl, src/tiles.ts),
// SGX (software, K % 8 == 0, subgroups of 8: 4 rows x 16 tokens per thread with x from storage
// through subgroup broadcasts, kernels/subgroup_x.wgsl; one dispatch for all tokens).
// Bindings: 0 params, 1 W chunk, 2 x [tokens, K] f32 (XU: the window starting at or before token
// tokenBase), 3 y [tokens, N] f32, 4 bias [N] f32 (BIAS only), 6 and 7 the other outputs (SPLIT),
// 8 gamma [K] f32 (NORM).

#include linear_io

#if SGX
#if W16
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
#else
@group(0) @binding(1) var<storage, read> w: array<vec4<f32>>;
#endif
#else
#if W16
#if VEC
@group(0) @binding(1) var<storage, read> w: array<vec2<u32>>;
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
#endif

#include linear_x
#if NORM
@group(0) @binding(8) var<storage, read> gamma: array<f32>;
#endif

#include unpack16
#if SGX
#include oct
#endif

#if !SGX
#if VEC
// Four weights starting at element 4 * c of the chunk.
fn w4(c: u32) -> vec4<f32> {
#if W16
  let q = w[c];
  return vec4<f32>(unpack2(q.x), unpack2(q.y));
#else
  return w[c];
#endif
}
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
#endif

#if TILED
#if W16
const EPU = 8u; // weights per 16-byte unit
#else
const EPU = 4u;
#endif

// Where row j (of 4) of `thread` starts; `r` (the row) is unused in tiles.
fn rowBase(thread: u32, j: u32, r: u32) -> u32 {
  return (thread / 8u) * (p.K / EPU) * 32u + thread % 8u + 8u * j;
}

// Index in w of weights 4c .. 4c + 3 of the row starting at `base`: a row's next unit is a
// tile's 32 rows further; a 16-bit unit holds two of w's vec2 elements.
fn wi(base: u32, c: u32) -> u32 {
#if W16
  return 2u * (base + 32u * (c / 2u)) + (c & 1u);
#else
  return base + 32u * c;
#endif
}
#else
fn rowBase(thread: u32, j: u32, r: u32) -> u32 {
  return r * (p.K / 4u);
}

fn wi(base: u32, c: u32) -> u32 {
  return base + c;
}
#endif

#include linear_store

#if GPU
// Element (r, k) of the chunk as f32.
fn weight(r: u32, k: u32) -> f32 {
  return w1(r * p.K + k);
}

#include matmul_tile
#else
override WG: u32 = 64u;

#if SGX
// 4 rows x 16 tokens per thread, x through subgroup broadcasts (kernels/subgroup_x.wgsl), eight
// weights per step in two halves. Tokens come from workgroup_id.y, so one dispatch covers them
// all; threads past the last row keep running (clamped rows, no stores) so their subgroup stays
// whole.
@compute @workgroup_size(WG)
fn sgx(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
  let thread = gid.x;
  let r0 = thread * 4u;
  let last = p.rows - 1u;
  let kc = p.K / 8u;
  let i = rowStarts(thread, r0, last, kc);
  let t0 = wg.y * 16u;
  let n = min(p.tokens - t0, 16u);
  // Tokens past the end repeat the last one (their sums are not stored).
  let o0 = (t0 + min(0u, n - 1u)) * p.K;
  let o1 = (t0 + min(1u, n - 1u)) * p.K;
  let o2 = (t0 + min(2u, n - 1u)) * p.K;
  let o3 = (t0 + min(3u, n - 1u)) * p.K;
  let o4 = (t0 + min(4u, n - 1u)) * p.K;
  let o5 = (t0 + min(5u, n - 1u)) * p.K;
  let o6 = (t0 + min(6u, n - 1u)) * p.K;
  let o7 = (t0 + min(7u, n - 1u)) * p.K;
  let o8 = (t0 + min(8u, n - 1u)) * p.K;
  let o9 = (t0 + min(9u, n - 1u)) * p.K;
  let o10 = (t0 + min(10u, n - 1u)) * p.K;
  let o11 = (t0 + min(11u, n - 1u)) * p.K;
  let o12 = (t0 + min(12u, n - 1u)) * p.K;
  let o13 = (t0 + min(13u, n - 1u)) * p.K;
  let o14 = (t0 + min(14u, n - 1u)) * p.K;
  let o15 = (t0 + min(15u, n - 1u)) * p.K;
  var a0: vec4<f32>;
  var a1: vec4<f32>;
  var a2: vec4<f32>;
  var a3: vec4<f32>;
  var a4: vec4<f32>;
  var a5: vec4<f32>;
  var a6: vec4<f32>;
  var a7: vec4<f32>;
  var a8: vec4<f32>;
  var a9: vec4<f32>;
  var a10: vec4<f32>;
  var a11: vec4<f32>;
  var a12: vec4<f32>;
  var a13: vec4<f32>;
  var a14: vec4<f32>;
  var a15: vec4<f32>;
  for (var c = 0u; c < kc; c++) {
    let o = c * STEP;
    let k = 8u * c + lane;
    // Weights 0..3 of the eight, then 4..7: fewer live registers than all eight at once.
    var wa = w4lo(i.x + o);
    var wb = w4lo(i.y + o);
    var wc = w4lo(i.z + o);
    var wd = w4lo(i.w + o);
    let x0 = x[o0 + k];
    let l0 = bcastLo(x0);
    a0 += vec4<f32>(dot(wa, l0), dot(wb, l0), dot(wc, l0), dot(wd, l0));
    let x1 = x[o1 + k];
    let l1 = bcastLo(x1);
    a1 += vec4<f32>(dot(wa, l1), dot(wb, l1), dot(wc, l1), dot(wd, l1));
    let x2 = x[o2 + k];
    let l2 = bcastLo(x2);
    a2 += vec4<f32>(dot(wa, l2), dot(wb, l2), dot(wc, l2), dot(wd, l2));
    let x3 = x[o3 + k];
    let l3 = bcastLo(x3);
    a3 += vec4<f32>(dot(wa, l3), dot(wb, l3), dot(wc, l3), dot(wd, l3));
    let x4 = x[o4 + k];
    let l4 = bcastLo(x4);
    a4 += vec4<f32>(dot(wa, l4), dot(wb, l4), dot(wc, l4), dot(wd, l4));
    let x5 = x[o5 + k];
    let l5 = bcastLo(x5);
    a5 += vec4<f32>(dot(wa, l5), dot(wb, l5), dot(wc, l5), dot(wd, l5));
    let x6 = x[o6 + k];
    let l6 = bcastLo(x6);
    a6 += vec4<f32>(dot(wa, l6), dot(wb, l6), dot(wc, l6), dot(wd, l6));
    let x7 = x[o7 + k];
    let l7 = bcastLo(x7);
    a7 += vec4<f32>(dot(wa, l7), dot(wb, l7), dot(wc, l7), dot(wd, l7));
    let x8 = x[o8 + k];
    let l8 = bcastLo(x8);
    a8 += vec4<f32>(dot(wa, l8), dot(wb, l8), dot(wc, l8), dot(wd, l8));
    let x9 = x[o9 + k];
    let l9 = bcastLo(x9);
    a9 += vec4<f32>(dot(wa, l9), dot(wb, l9), dot(wc, l9), dot(wd, l9));
    let x10 = x[o10 + k];
    let l10 = bcastLo(x10);
    a10 += vec4<f32>(dot(wa, l10), dot(wb, l10), dot(wc, l10), dot(wd, l10));
    let x11 = x[o11 + k];
    let l11 = bcastLo(x11);
    a11 += vec4<f32>(dot(wa, l11), dot(wb, l11), dot(wc, l11), dot(wd, l11));
    let x12 = x[o12 + k];
    let l12 = bcastLo(x12);
    a12 += vec4<f32>(dot(wa, l12), dot(wb, l12), dot(wc, l12), dot(wd, l12));
    let x13 = x[o13 + k];
    let l13 = bcastLo(x13);
    a13 += vec4<f32>(dot(wa, l13), dot(wb, l13), dot(wc, l13), dot(wd, l13));
    let x14 = x[o14 + k];
    let l14 = bcastLo(x14);
    a14 += vec4<f32>(dot(wa, l14), dot(wb, l14), dot(wc, l14), dot(wd, l14));
    let x15 = x[o15 + k];
    let l15 = bcastLo(x15);
    a15 += vec4<f32>(dot(wa, l15), dot(wb, l15), dot(wc, l15), dot(wd, l15));
    wa = w4hi(i.x + o);
    wb = w4hi(i.y + o);
    wc = w4hi(i.z + o);
    wd = w4hi(i.w + o);
    let h0 = bcastHi(x0);
    a0 += vec4<f32>(dot(wa, h0), dot(wb, h0), dot(wc, h0), dot(wd, h0));
    let h1 = bcastHi(x1);
    a1 += vec4<f32>(dot(wa, h1), dot(wb, h1), dot(wc, h1), dot(wd, h1));
    let h2 = bcastHi(x2);
    a2 += vec4<f32>(dot(wa, h2), dot(wb, h2), dot(wc, h2), dot(wd, h2));
    let h3 = bcastHi(x3);
    a3 += vec4<f32>(dot(wa, h3), dot(wb, h3), dot(wc, h3), dot(wd, h3));
    let h4 = bcastHi(x4);
    a4 += vec4<f32>(dot(wa, h4), dot(wb, h4), dot(wc, h4), dot(wd, h4));
    let h5 = bcastHi(x5);
    a5 += vec4<f32>(dot(wa, h5), dot(wb, h5), dot(wc, h5), dot(wd, h5));
    let h6 = bcastHi(x6);
    a6 += vec4<f32>(dot(wa, h6), dot(wb, h6), dot(wc, h6), dot(wd, h6));
    let h7 = bcastHi(x7);
    a7 += vec4<f32>(dot(wa, h7), dot(wb, h7), dot(wc, h7), dot(wd, h7));
    let h8 = bcastHi(x8);
    a8 += vec4<f32>(dot(wa, h8), dot(wb, h8), dot(wc, h8), dot(wd, h8));
    let h9 = bcastHi(x9);
    a9 += vec4<f32>(dot(wa, h9), dot(wb, h9), dot(wc, h9), dot(wd, h9));
    let h10 = bcastHi(x10);
    a10 += vec4<f32>(dot(wa, h10), dot(wb, h10), dot(wc, h10), dot(wd, h10));
    let h11 = bcastHi(x11);
    a11 += vec4<f32>(dot(wa, h11), dot(wb, h11), dot(wc, h11), dot(wd, h11));
    let h12 = bcastHi(x12);
    a12 += vec4<f32>(dot(wa, h12), dot(wb, h12), dot(wc, h12), dot(wd, h12));
    let h13 = bcastHi(x13);
    a13 += vec4<f32>(dot(wa, h13), dot(wb, h13), dot(wc, h13), dot(wd, h13));
    let h14 = bcastHi(x14);
    a14 += vec4<f32>(dot(wa, h14), dot(wb, h14), dot(wc, h14), dot(wd, h14));
    let h15 = bcastHi(x15);
    a15 += vec4<f32>(dot(wa, h15), dot(wb, h15), dot(wc, h15), dot(wd, h15));
  }
  store4(t0, r0, a0);
  if (1u < n) { store4(t0 + 1u, r0, a1); }
  if (2u < n) { store4(t0 + 2u, r0, a2); }
  if (3u < n) { store4(t0 + 3u, r0, a3); }
  if (4u < n) { store4(t0 + 4u, r0, a4); }
  if (5u < n) { store4(t0 + 5u, r0, a5); }
  if (6u < n) { store4(t0 + 6u, r0, a6); }
  if (7u < n) { store4(t0 + 7u, r0, a7); }
  if (8u < n) { store4(t0 + 8u, r0, a8); }
  if (9u < n) { store4(t0 + 9u, r0, a9); }
  if (10u < n) { store4(t0 + 10u, r0, a10); }
  if (11u < n) { store4(t0 + 11u, r0, a11); }
  if (12u < n) { store4(t0 + 12u, r0, a12); }
  if (13u < n) { store4(t0 + 13u, r0, a13); }
  if (14u < n) { store4(t0 + 14u, r0, a14); }
  if (15u < n) { store4(t0 + 15u, r0, a15); }
}
#else
#if XU
// 4 rows x 16 tokens per thread in named accumulators (a<j>: token tokenBase + j, rows r0..r3).
@compute @workgroup_size(WG)
fn xu(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let thread = gid.x + gid.y * nwg.x * WG;
  let r0 = thread * 4u;
  if (r0 >= p.rows) { return; }
  let last = p.rows - 1u;
  let kc = p.K / 4u;
  let wa0 = rowBase(thread, 0u, r0);
  let wb0 = rowBase(thread, 1u, min(r0 + 1u, last));
  let wc0 = rowBase(thread, 2u, min(r0 + 2u, last));
  let wd0 = rowBase(thread, 3u, min(r0 + 3u, last));
  let n = min(p.tokens - p.tokenBase, 16u);
  // Tokens past the group's end repeat its last token (their sums are not stored).
  let o0 = p.xBase + min(0u, n - 1u) * kc;
  let o1 = p.xBase + min(1u, n - 1u) * kc;
  let o2 = p.xBase + min(2u, n - 1u) * kc;
  let o3 = p.xBase + min(3u, n - 1u) * kc;
  let o4 = p.xBase + min(4u, n - 1u) * kc;
  let o5 = p.xBase + min(5u, n - 1u) * kc;
  let o6 = p.xBase + min(6u, n - 1u) * kc;
  let o7 = p.xBase + min(7u, n - 1u) * kc;
  let o8 = p.xBase + min(8u, n - 1u) * kc;
  let o9 = p.xBase + min(9u, n - 1u) * kc;
  let o10 = p.xBase + min(10u, n - 1u) * kc;
  let o11 = p.xBase + min(11u, n - 1u) * kc;
  let o12 = p.xBase + min(12u, n - 1u) * kc;
  let o13 = p.xBase + min(13u, n - 1u) * kc;
  let o14 = p.xBase + min(14u, n - 1u) * kc;
  let o15 = p.xBase + min(15u, n - 1u) * kc;
  var a0: vec4<f32>;
  var a1: vec4<f32>;
  var a2: vec4<f32>;
  var a3: vec4<f32>;
  var a4: vec4<f32>;
  var a5: vec4<f32>;
  var a6: vec4<f32>;
  var a7: vec4<f32>;
  var a8: vec4<f32>;
  var a9: vec4<f32>;
  var a10: vec4<f32>;
  var a11: vec4<f32>;
  var a12: vec4<f32>;
  var a13: vec4<f32>;
  var a14: vec4<f32>;
  var a15: vec4<f32>;
  for (var c = 0u; c < kc; c++) {
    let wa = w4(wi(wa0, c));
    let wb = w4(wi(wb0, c));
    let wc = w4(wi(wc0, c));
    let wd = w4(wi(wd0, c));
    let x0 = x[o0 + c];
    a0 += vec4<f32>(dot(wa, x0), dot(wb, x0), dot(wc, x0), dot(wd, x0));
    let x1 = x[o1 + c];
    a1 += vec4<f32>(dot(wa, x1), dot(wb, x1), dot(wc, x1), dot(wd, x1));
    let x2 = x[o2 + c];
    a2 += vec4<f32>(dot(wa, x2), dot(wb, x2), dot(wc, x2), dot(wd, x2));
    let x3 = x[o3 + c];
    a3 += vec4<f32>(dot(wa, x3), dot(wb, x3), dot(wc, x3), dot(wd, x3));
    let x4 = x[o4 + c];
    a4 += vec4<f32>(dot(wa, x4), dot(wb, x4), dot(wc, x4), dot(wd, x4));
    let x5 = x[o5 + c];
    a5 += vec4<f32>(dot(wa, x5), dot(wb, x5), dot(wc, x5), dot(wd, x5));
    let x6 = x[o6 + c];
    a6 += vec4<f32>(dot(wa, x6), dot(wb, x6), dot(wc, x6), dot(wd, x6));
    let x7 = x[o7 + c];
    a7 += vec4<f32>(dot(wa, x7), dot(wb, x7), dot(wc, x7), dot(wd, x7));
    let x8 = x[o8 + c];
    a8 += vec4<f32>(dot(wa, x8), dot(wb, x8), dot(wc, x8), dot(wd, x8));
    let x9 = x[o9 + c];
    a9 += vec4<f32>(dot(wa, x9), dot(wb, x9), dot(wc, x9), dot(wd, x9));
    let x10 = x[o10 + c];
    a10 += vec4<f32>(dot(wa, x10), dot(wb, x10), dot(wc, x10), dot(wd, x10));
    let x11 = x[o11 + c];
    a11 += vec4<f32>(dot(wa, x11), dot(wb, x11), dot(wc, x11), dot(wd, x11));
    let x12 = x[o12 + c];
    a12 += vec4<f32>(dot(wa, x12), dot(wb, x12), dot(wc, x12), dot(wd, x12));
    let x13 = x[o13 + c];
    a13 += vec4<f32>(dot(wa, x13), dot(wb, x13), dot(wc, x13), dot(wd, x13));
    let x14 = x[o14 + c];
    a14 += vec4<f32>(dot(wa, x14), dot(wb, x14), dot(wc, x14), dot(wd, x14));
    let x15 = x[o15 + c];
    a15 += vec4<f32>(dot(wa, x15), dot(wb, x15), dot(wc, x15), dot(wd, x15));
  }
  let t = p.tokenBase;
  store4(t, r0, a0);
  if (1u < n) { store4(t + 1u, r0, a1); }
  if (2u < n) { store4(t + 2u, r0, a2); }
  if (3u < n) { store4(t + 3u, r0, a3); }
  if (4u < n) { store4(t + 4u, r0, a4); }
  if (5u < n) { store4(t + 5u, r0, a5); }
  if (6u < n) { store4(t + 6u, r0, a6); }
  if (7u < n) { store4(t + 7u, r0, a7); }
  if (8u < n) { store4(t + 8u, r0, a8); }
  if (9u < n) { store4(t + 9u, r0, a9); }
  if (10u < n) { store4(t + 10u, r0, a10); }
  if (11u < n) { store4(t + 11u, r0, a11); }
  if (12u < n) { store4(t + 12u, r0, a12); }
  if (13u < n) { store4(t + 13u, r0, a13); }
  if (14u < n) { store4(t + 14u, r0, a14); }
  if (15u < n) { store4(t + 15u, r0, a15); }
}
#else
// 4 rows x 4 tokens per thread in named accumulators, four k per step: lavapipe keeps them in
// registers (a private array indexed in a loop goes through memory, and eight k per step spills).
// Tokens come from workgroup_id so x's addresses are uniform across the workgroup.
@compute @workgroup_size(WG)
fn rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
  let r0 = gid.x * 4u;
  let t0 = wg.y * 4u;
  if (r0 >= p.rows || t0 >= p.tokens) { return; }
  let last = p.rows - 1u;
  let r1 = min(r0 + 1u, last);
  let r2 = min(r0 + 2u, last);
  let r3 = min(r0 + 3u, last);
  let tl = p.tokens - 1u;
  let t1 = min(t0 + 1u, tl);
  let t2 = min(t0 + 2u, tl);
  let t3 = min(t0 + 3u, tl);
  // a<i>: token t<i>, rows r0..r3
  var a0: vec4<f32>;
  var a1: vec4<f32>;
  var a2: vec4<f32>;
  var a3: vec4<f32>;
#if VEC
  let kc = p.K / 4u;
  let wa0 = rowBase(gid.x, 0u, r0);
  let wb0 = rowBase(gid.x, 1u, r1);
  let wc0 = rowBase(gid.x, 2u, r2);
  let wd0 = rowBase(gid.x, 3u, r3);
  for (var c = 0u; c < kc; c++) {
    let wa = w4(wi(wa0, c));
    let wb = w4(wi(wb0, c));
    let wc = w4(wi(wc0, c));
    let wd = w4(wi(wd0, c));
    let x0 = x[t0 * kc + c];
    a0 += vec4<f32>(dot(wa, x0), dot(wb, x0), dot(wc, x0), dot(wd, x0));
    let x1 = x[t1 * kc + c];
    a1 += vec4<f32>(dot(wa, x1), dot(wb, x1), dot(wc, x1), dot(wd, x1));
    let x2 = x[t2 * kc + c];
    a2 += vec4<f32>(dot(wa, x2), dot(wb, x2), dot(wc, x2), dot(wd, x2));
    let x3 = x[t3 * kc + c];
    a3 += vec4<f32>(dot(wa, x3), dot(wb, x3), dot(wc, x3), dot(wd, x3));
  }
#else
  let K = p.K;
  for (var k = 0u; k < K; k++) {
    let wv = vec4<f32>(w1(r0 * K + k), w1(r1 * K + k), w1(r2 * K + k), w1(r3 * K + k));
    a0 += wv * x[t0 * K + k];
    a1 += wv * x[t1 * K + k];
    a2 += wv * x[t2 * K + k];
    a3 += wv * x[t3 * K + k];
  }
#endif
  store4(t0, r0, a0);
  if (t0 + 1u <= tl) { store4(t1, r0, a1); }
  if (t0 + 2u <= tl) { store4(t2, r0, a2); }
  if (t0 + 3u <= tl) { store4(t3, r0, a3); }
}
#endif
#endif
#endif
