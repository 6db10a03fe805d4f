// Column gather for activation-order (GPTQ desc_act) weights: out[t, j] = x[t, perm[j]].
// The loader sorts such a weight's columns by group, so its input must be permuted the same way
// before the fused dequant kernels read it; the permutation is one pass over [tokens, K].
// Bindings: 0 params, 1 perm [K] u32, 2 x [tokens, K] f32, 3 out [tokens, K] f32.
// Grid: x covers K (one element per thread), y = token.

struct Params {
  K: u32,
}

override WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> perm: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let j = gid.x;
  if (j >= p.K) { return; }
  let row = gid.y * p.K;
  out[row + j] = x[row + perm[j]];
}
