// Snippet (#include quant_rows): where the 4 rows of a software thread of matvec_q.wgsl and
// matmul_q.wgsl start in their words and scales, row-major or in row tiles (TILED, src/tiles.ts).
// The including file provides p.rows.

#if TILED
// A row's next unit (vec4 of W, word of scales) is a tile's 32 rows further (src/tiles.ts).
const NEXT = 32u;

// Unit 0 of each of the thread's 4 rows, in a buffer of `units` units per row: neighbouring units
// 8 apart in its tile. The padding rows of the last tile are zero, so no clamping.
fn rowUnits(thread: u32, units: u32) -> vec4<u32> {
  return vec4<u32>((thread / 8u) * units * 32u + thread % 8u) + vec4<u32>(0u, 8u, 16u, 24u);
}
#else
const NEXT = 1u;

fn rowUnits(thread: u32, units: u32) -> vec4<u32> {
  let r = min(vec4<u32>(thread * 4u) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(p.rows - 1u));
  return r * units;
}
#endif
