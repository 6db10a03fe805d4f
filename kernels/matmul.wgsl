// Matrix-matrix product for several tokens (prefill), over one row chunk of W:
//   y[t, colOffset + r] (+)= sum_k x[t, k] * W[r, k] (+ bias[colOffset + r])   t < tokens, r < rows.
// x is [tokens, K] f32, y is [tokens, N] f32 (row stride N, this chunk writes columns
// colOffset .. colOffset + rows). W is laid out as in matvec.wgsl: the chunk's rows, row-major
// [rows, K], f32 or bf16/f16 packed two per u32 from the chunk's own element 0.
// Defines: WBF16 / WF16 (both imply W16; neither = f32), VEC (K % 4 == 0: four weights per load;
// software shape only, the GPU tiles load single elements),
// BIAS, ACC (y += rather than y =), GPU (64x64 output tiles through workgroup memory; else each
// thread computes 4 rows x 4 tokens, so each weight load serves 4 tokens and each x load 4 rows).
// Bindings: 0 params, 1 W chunk, 2 x [tokens, K] f32, 3 y [tokens, N] f32, 4 bias [N] f32 (BIAS only).

struct Params {
  K: u32,
  rows: u32,
  colOffset: u32,
  N: u32,
  tokens: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

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

#if VEC
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
#else
@group(0) @binding(2) var<storage, read> x: array<f32>;
#endif
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
#if BIAS
@group(0) @binding(4) var<storage, read> bias: array<f32>;
#endif

#if WBF16
fn unpack2(v: u32) -> vec2<f32> {
  return vec2<f32>(bitcast<f32>(v << 16u), bitcast<f32>(v & 0xffff0000u));
}
#endif
#if WF16
fn unpack2(v: u32) -> vec2<f32> {
  return unpack2x16float(v);
}
#endif

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

fn store(t: u32, r: u32, v: f32) {
  let i = t * p.N + p.colOffset + r;
  var o = v;
#if BIAS
  o += bias[p.colOffset + r];
#endif
#if ACC
  o += y[i];
#endif
  y[i] = o;
}

#if GPU
const BM = 64u; // rows per tile
const BT = 64u; // tokens per tile
const BK = 16u; // k per step

var<workgroup> ws: array<f32, 1024>; // [BM][BK]
var<workgroup> xs: array<f32, 1024>; // [BT][BK]

// 256 threads as 16 x 16, each computing 4 rows x 4 tokens of the 64 x 64 tile.
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let rowBase = wg.x * BM;
  let tokBase = wg.y * BT;
  let tr = lid % 16u;
  let tt = lid / 16u;
  var acc: array<vec4<f32>, 4>; // acc[i][j]: token tt + 16 i, row tr + 16 j
  for (var k0 = 0u; k0 < p.K; k0 += BK) {
    for (var i = 0u; i < 4u; i++) {
      let e = lid + i * 256u;
      let rk = e / BK;
      let k = k0 + e % BK;
      let r = rowBase + rk;
      var wv = 0.0;
      if (r < p.rows && k < p.K) { wv = w1(r * p.K + k); }
      ws[e] = wv;
      let t = tokBase + rk;
      var xv = 0.0;
      if (t < p.tokens && k < p.K) { xv = x[t * p.K + k]; }
      xs[e] = xv;
    }
    workgroupBarrier();
    for (var kk = 0u; kk < BK; kk++) {
      let wv = vec4<f32>(ws[tr * BK + kk], ws[(tr + 16u) * BK + kk], ws[(tr + 32u) * BK + kk], ws[(tr + 48u) * BK + kk]);
      for (var i = 0u; i < 4u; i++) {
        acc[i] += wv * xs[(tt + 16u * i) * BK + kk];
      }
    }
    workgroupBarrier();
  }
  for (var i = 0u; i < 4u; i++) {
    let t = tokBase + tt + 16u * i;
    if (t >= p.tokens) { continue; }
    for (var j = 0u; j < 4u; j++) {
      let r = rowBase + tr + 16u * j;
      if (r < p.rows) { store(t, r, acc[i][j]); }
    }
  }
}
#else
override WG: u32 = 64u;

// 4 rows x 4 tokens per thread in named accumulators, four k per step: lavapipe keeps them in
// registers (a private array indexed in a loop goes through memory, and eight k per step spills).
// Tokens come from workgroup_id so x's addresses are uniform across the workgroup.
@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
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
  for (var c = 0u; c < kc; c++) {
    let wa = w4(r0 * kc + c);
    let wb = w4(r1 * kc + c);
    let wc = w4(r2 * kc + c);
    let wd = w4(r3 * kc + c);
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

fn store4(t: u32, r0: u32, v: vec4<f32>) {
  let last = p.rows - 1u;
  store(t, r0, v.x);
  if (r0 + 1u <= last) { store(t, r0 + 1u, v.y); }
  if (r0 + 2u <= last) { store(t, r0 + 2u, v.z); }
  if (r0 + 3u <= last) { store(t, r0 + 3u, v.w); }
}
#endif
