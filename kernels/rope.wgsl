// Rotary position embedding, Hugging Face's rotate-half layout, in place on q and k.
// For each token t (at its own position: tokens of several sequences share a step), head, and
// pair i < half (half = rotaryDim / 2):
//   x[i]        = x[i] * c - x[i + half] * s
//   x[i + half] = x[i + half] * c + x[i] * s
// with angle = f32(pos) * invFreq[i] rounded to f32 (as HF computes it), c = cos * scaling,
// s = sin * scaling. Dimensions past rotaryDim are left alone (partial rotary).
// One thread per (token, head, pair); q heads first, then k heads.
// Bindings: 0 params, 1 q [T, nHeads * headDim] f32, 2 k [T, nKvHeads * headDim] f32,
// 3 invFreq [half] f32, 4 positions [T] u32 (a step's meta, ops/step-meta.ts, starts with them).

struct Params {
  tokens: u32,
  nHeads: u32,
  nKvHeads: u32,
  headDim: u32,
  half: u32,
  scaling: f32,
}

override WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> q: array<f32>;
@group(0) @binding(2) var<storage, read_write> k: array<f32>;
@group(0) @binding(3) var<storage, read> invFreq: array<f32>;
@group(0) @binding(4) var<storage, read> positions: array<u32>;

// Cody-Waite reduction of an f32 angle into about [-pi, pi] before cos/sin: WGSL only
// bounds cos/sin accuracy on [-pi, pi], and GPUs' fast sin is poor for large angles.
// 2*pi = C1 + C2 + C3, where C1 and C2 have few enough mantissa bits that k * C1 and
// k * C2 are exact for k < 2^16 (angles up to ~4e5 rad).
const INV_TWO_PI: f32 = 0.15915494309189535;
const C1: f32 = 6.28125;
const C2: f32 = 0.0019378662109375;
const C3: f32 = -2.559031372584286e-6;

fn reduce(a: f32) -> f32 {
  let n = round(a * INV_TWO_PI);
  return ((a - n * C1) - n * C2) - n * C3;
}

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let idx = gid.x + gid.y * nwg.x * WG;
  let heads = p.nHeads + p.nKvHeads;
  if (idx >= p.tokens * heads * p.half) { return; }
  let i = idx % p.half;
  let th = idx / p.half;
  let head = th % heads;
  let t = th / heads;
  let angle = f32(positions[t]) * invFreq[i];
  let r = reduce(angle);
  let c = cos(r) * p.scaling;
  let s = sin(r) * p.scaling;
  if (head < p.nHeads) {
    let base = (t * p.nHeads + head) * p.headDim + i;
    let x0 = q[base];
    let x1 = q[base + p.half];
    q[base] = x0 * c - x1 * s;
    q[base + p.half] = x1 * c + x0 * s;
  } else {
    let base = (t * p.nKvHeads + head - p.nHeads) * p.headDim + i;
    let x0 = k[base];
    let x1 = k[base + p.half];
    k[base] = x0 * c - x1 * s;
    k[base + p.half] = x1 * c + x0 * s;
  }
}
