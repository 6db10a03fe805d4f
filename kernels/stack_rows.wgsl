// Load-time copy of rows of one weight ("part") into a fused weight that stacks several parts'
// rows (src/fuse.ts: q|k|v one after another, or gate and up interleaved block by block).
// A row is `units` units of one u32 (WIDE off: scales, biases) or one vec4<u32> (WIDE: packed
// weights). Part row s goes to fused row
//   (s / block) * stride + offset + s % block
// (block >= every row count for plain stacking). Rows are read from one chunk of the part and
// written to one chunk of the fused weight, both row-major or both in row tiles (TILED,
// src/tiles.ts); the caller splits the copy so that every row it names lies in both chunks.
// Bindings: 0 params, 1 src (the part's chunk), 2 dst (the fused chunk).
// Grid: one thread per unit copied, x (and y past the dispatch limit) in order.

struct Params {
  units: u32,     // units per row
  first: u32,     // first part row copied
  rows: u32,      // part rows copied
  srcStart: u32,  // first part row of the source chunk
  dstStart: u32,  // first fused row of the destination chunk
  block: u32,
  stride: u32,
  offset: u32,
}

override WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
#if WIDE
@group(0) @binding(1) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<u32>>;
#else
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;
#endif

// Index of unit u of row r of a chunk (src/tiles.ts `tiledUnit` when tiled).
fn at(r: u32, u: u32) -> u32 {
#if TILED
  return (((r / 32u) * p.units + u) * 4u + r % 4u) * 8u + (r % 32u) / 4u;
#else
  return r * p.units + u;
#endif
}

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * WG;
  if (i >= p.rows * p.units) { return; }
  let s = p.first + i / p.units;
  let u = i % p.units;
  let f = (s / p.block) * p.stride + p.offset + s % p.block;
  dst[at(f - p.dstStart, u)] = src[at(s - p.srcStart, u)];
}
