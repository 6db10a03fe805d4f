// Snippet (#include oct): eight weights of a row at a time, for matvec.wgsl and matmul.wgsl's
// subgroup path. The including file declares w (array<vec4<u32>> for 16-bit weights, two per
// u32; array<vec4<f32>> for f32) and, under SGX, x as array<f32>.
// TILED: rows in tiles (src/tiles.ts), where a row's next 16-byte unit is 32 units further.
// SGX (software adapters with subgroups of exactly 8): x is read through the subgroup
// (kernels/subgroup_x.wgsl).

struct Oct {
  a: vec4<f32>,
  b: vec4<f32>,
}

#if TILED
const NEXT = 32u;
#else
const NEXT = 1u;
#endif
#if W16
const STEP = NEXT; // elements of w from one eight weights of a row to the next
#else
const STEP = 2u * NEXT;
#endif

// Where a software thread's four rows start in w (the element of their first eight weights): in
// a tile, neighbouring units 8 apart; row-major, rows r0 .. r0 + 3 clamped to the last.
fn rowStarts(thread: u32, r0: u32, last: u32, kc: u32) -> vec4<u32> {
#if TILED
  return vec4<u32>((thread / 8u) * kc * STEP + thread % 8u) + vec4<u32>(0u, 8u, 16u, 24u);
#else
  return min(vec4<u32>(r0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(last)) * kc * STEP;
#endif
}

// Eight weights from element i of w (the unit holding them, or for f32 the first of two).
fn w8(i: u32) -> Oct {
#if W16
  let q = w[i];
  return Oct(vec4<f32>(unpack2(q.x), unpack2(q.y)), vec4<f32>(unpack2(q.z), unpack2(q.w)));
#else
  return Oct(w[i], w[i + NEXT]);
#endif
}

// Weights 0..3 and 4..7 of the eight from element i of w, one half at a time (fewer live registers).
fn w4lo(i: u32) -> vec4<f32> {
#if W16
  let q = w[i];
  return vec4<f32>(unpack2(q.x), unpack2(q.y));
#else
  return w[i];
#endif
}

fn w4hi(i: u32) -> vec4<f32> {
#if W16
  let q = w[i];
  return vec4<f32>(unpack2(q.z), unpack2(q.w));
#else
  return w[i + NEXT];
#endif
}

fn dot8(a: Oct, b: Oct) -> f32 {
  return dot(a.a, b.a) + dot(a.b, b.b);
}

#if SGX
#include subgroup_x

// x[i .. i + 8) for the whole subgroup; `lane` is the caller's subgroup_invocation_id.
fn x8s(i: u32, lane: u32) -> Oct {
  let v = x[i + lane];
  return Oct(bcastLo(v), bcastHi(v));
}
#endif
