// Elementwise ops on f32 activations, one thread per element.
//   SILU_MUL  out[r, c] = silu(gate[r, c]) * up[r, c] (the gated MLP). gate and up are read
//             through a row stride and offset, so they may be two [rows, cols] buffers or
//             the two halves of one fused [rows, 2 * cols] buffer bound twice.
//   ADD       a[i] += b[i] (the residual).
//   COPY      dst[dstOffset + i] = src[srcOffset + i].

#if SILU_MUL
struct Params {
  rows: u32,
  cols: u32,
  gateStride: u32,
  gateOffset: u32,
  upStride: u32,
  upOffset: u32,
}
#endif
#if ADD
struct Params {
  count: u32,
}
#endif
#if COPY
struct Params {
  count: u32,
  srcOffset: u32,
  dstOffset: u32,
}
#endif

override WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;

#if SILU_MUL
@group(0) @binding(1) var<storage, read> gate: array<f32>;
@group(0) @binding(2) var<storage, read> up: array<f32>;
// out: [rows, cols].
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let idx = gid.x + gid.y * nwg.x * WG;
  if (idx >= p.rows * p.cols) { return; }
  let c = idx % p.cols;
  let r = idx / p.cols;
  let g = gate[r * p.gateStride + p.gateOffset + c];
  out[idx] = g / (1.0 + exp(-g)) * up[r * p.upStride + p.upOffset + c];
}
#endif

#if ADD
@group(0) @binding(1) var<storage, read_write> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let idx = gid.x + gid.y * nwg.x * WG;
  if (idx >= p.count) { return; }
  a[idx] += b[idx];
}
#endif

#if COPY
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let idx = gid.x + gid.y * nwg.x * WG;
  if (idx >= p.count) { return; }
  dst[p.dstOffset + idx] = src[p.srcOffset + idx];
}
#endif
