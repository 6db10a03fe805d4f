// Numerically stable softmax over the last dimension: y[r, :] = exp(x[r, :] - max) / sum.
// Bindings: 0 params, 1 x [rows, cols] f32, 2 y [rows, cols] f32 (may not alias x).
//   SOFTMAX_SW  one thread per row (CPU-backed adapters: no barriers).
//   otherwise   one workgroup per row with shared-memory reductions.

struct Params {
  rows: u32,
  cols: u32,
}

override WG: u32 = 64u;
const BLOCK: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

#if SOFTMAX_SW
@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let row = gid.x + gid.y * nwg.x * WG;
  if (row >= p.rows) { return; }
  let base = row * p.cols;
  var m = -3.4e38;
  for (var i = 0u; i < p.cols; i++) { m = max(m, x[base + i]); }
  // Blocked sum: a running f32 sum over a 150k-wide row would lose ~1e-4 relative.
  var s = 0.0;
  for (var b = 0u; b < p.cols; b += BLOCK) {
    var bs = 0.0;
    for (var i = b; i < min(b + BLOCK, p.cols); i++) { bs += exp(x[base + i] - m); }
    s += bs;
  }
  let inv = 1.0 / s;
  for (var i = 0u; i < p.cols; i++) { y[base + i] = exp(x[base + i] - m) * inv; }
}
#else
var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row = wg.x + wg.y * nwg.x;
  if (row >= p.rows) { return; }
  let base = row * p.cols;
  var m = -3.4e38;
  for (var i = lid; i < p.cols; i += WG) { m = max(m, x[base + i]); }
  red[lid] = m;
  workgroupBarrier();
  for (var st = WG / 2u; st > 0u; st >>= 1u) {
    if (lid < st) { red[lid] = max(red[lid], red[lid + st]); }
    workgroupBarrier();
  }
  m = red[0];
  workgroupBarrier();
  var s = 0.0;
  for (var i = lid; i < p.cols; i += WG) { s += exp(x[base + i] - m); }
  red[lid] = s;
  workgroupBarrier();
  for (var st = WG / 2u; st > 0u; st >>= 1u) {
    if (lid < st) { red[lid] += red[lid + st]; }
    workgroupBarrier();
  }
  let inv = 1.0 / red[0];
  for (var i = lid; i < p.cols; i += WG) { y[base + i] = exp(x[base + i] - m) * inv; }
}
#endif
