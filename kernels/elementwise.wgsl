// Elementwise ops on f32 activations, one thread per element; one kernel per entry point.
//   siluMul   out[r, c] = silu(gate[r, c]) * up[r, c] (the gated MLP). gate and up are read
//             through a row stride and offset, so they may be two [rows, cols] buffers or
//             the two halves of one fused [rows, 2 * cols] buffer bound twice. With GELU_TANH
//             the gate goes through GELU's tanh approximation instead (Gemma's GeGLU).
//   add       a[i] += scale * b[i] (the residual; Granite scales what joins it).
//   scaleCap  a[i] = cap * tanh(a[i] * scale / cap), or a[i] * scale when cap is 0 (embedding
//             multipliers, Granite's logit scaling, Gemma 2's final-logit soft-capping).
//   copy      dst[dstOffset + i] = src[srcOffset + i].

override WG: u32 = 64u;

struct SiluMulParams {
  rows: u32,
  cols: u32,
  gateStride: u32,
  gateOffset: u32,
  upStride: u32,
  upOffset: u32,
}

@group(0) @binding(0) var<uniform> siluMulParams: SiluMulParams;
@group(0) @binding(1) var<storage, read> gate: array<f32>;
@group(0) @binding(2) var<storage, read> up: array<f32>;
// out: [rows, cols].
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn siluMul(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let p = siluMulParams;
  let idx = gid.x + gid.y * nwg.x * WG;
  if (idx >= p.rows * p.cols) { return; }
  let c = idx % p.cols;
  let r = idx / p.cols;
  let g = gate[r * p.gateStride + p.gateOffset + c];
#if GELU_TANH
  // tanh saturates in f32 well before |x| = 15; clamping keeps exp-based tanh finite.
  let inner = clamp(0.7978845608028654 * (g + 0.044715 * g * g * g), -15.0, 15.0);
  out[idx] = 0.5 * g * (1.0 + tanh(inner)) * up[r * p.upStride + p.upOffset + c];
#else
  out[idx] = g / (1.0 + exp(-g)) * up[r * p.upStride + p.upOffset + c];
#endif
}

struct AddParams {
  count: u32,
  scale: f32,
}

@group(0) @binding(0) var<uniform> addParams: AddParams;
// a: updated in place by add and scaleCap.
@group(0) @binding(1) var<storage, read_write> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;

@compute @workgroup_size(WG)
fn add(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let p = addParams;
  let idx = gid.x + gid.y * nwg.x * WG;
  if (idx >= p.count) { return; }
  a[idx] += p.scale * b[idx];
}

struct ScaleCapParams {
  count: u32,
  scale: f32,
  cap: f32,
}

@group(0) @binding(0) var<uniform> scaleCapParams: ScaleCapParams;

@compute @workgroup_size(WG)
fn scaleCap(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let p = scaleCapParams;
  let idx = gid.x + gid.y * nwg.x * WG;
  if (idx >= p.count) { return; }
  let x = a[idx] * p.scale;
  if (p.cap > 0.0) {
    a[idx] = p.cap * tanh(clamp(x / p.cap, -15.0, 15.0));
  } else {
    a[idx] = x;
  }
}

struct CopyParams {
  count: u32,
  srcOffset: u32,
  dstOffset: u32,
}

@group(0) @binding(0) var<uniform> copyParams: CopyParams;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

@compute @workgroup_size(WG)
fn copy(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let p = copyParams;
  let idx = gid.x + gid.y * nwg.x * WG;
  if (idx >= p.count) { return; }
  dst[p.dstOffset + idx] = src[p.srcOffset + idx];
}
