// RMSNorm over the last dimension: y[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * w.
// One workgroup per row; rows may be tokens (hidden norm) or tokens x heads (Qwen3's q/k norm).
//   ACCUMULATE  y[r, :] += the normed row instead (a norm on a block's output before it joins
//               the residual: Gemma 2/3's and OLMo 2's post-norms).
// Bindings: 0 params, 1 x [rows, cols] f32, 2 w [cols] f32, 3 y [rows, cols] f32 (may not alias x).

struct Params {
  rows: u32,
  cols: u32,
  eps: f32,
}

override WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row = wg.x + wg.y * nwg.x;
  if (row >= p.rows) { return; }
  let base = row * p.cols;
  var s = 0.0;
  for (var i = lid; i < p.cols; i += WG) {
    let v = x[base + i];
    s += v * v;
  }
  partial[lid] = s;
  workgroupBarrier();
  for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
    if (lid < stride) { partial[lid] += partial[lid + stride]; }
    workgroupBarrier();
  }
  let scale = inverseSqrt(partial[0] / f32(p.cols) + p.eps);
  for (var i = lid; i < p.cols; i += WG) {
#if ACCUMULATE
    y[base + i] += x[base + i] * scale * w[i];
#else
    y[base + i] = x[base + i] * scale * w[i];
#endif
  }
}
