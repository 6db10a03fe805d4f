// Embedding lookup over one row chunk of the table: out[t, c] = E[ids[t], c] as f32 for the tokens
// whose id falls in [rowStart, rowStart + rows). The dispatch with zeroInvalid = 1 also writes
// zeros for ids >= vocab, so an out-of-range id never reads out of bounds and leaves no stale row.
// E chunk: its rows, row-major [rows, cols], f32 or bf16/f16 packed two per u32 from the chunk's
// own element 0 (element e in word e >> 1, low half when e is even).
// Defines: WBF16 / WF16 (both imply W16; neither = f32), TILED (the chunk in row tiles, src/tiles.ts).
// Bindings: 0 params, 1 E chunk, 2 ids [tokens] u32, 3 out [tokens, cols] f32.
// Grid: x covers cols (one element per thread), y = token.

struct Params {
  cols: u32,
  rowStart: u32,
  rows: u32,
  vocab: u32,
  zeroInvalid: u32,
}

override WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
#if W16
@group(0) @binding(1) var<storage, read> e: array<u32>;
#else
@group(0) @binding(1) var<storage, read> e: array<f32>;
#endif
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

#if W16
const EPU = 8u; // elements per 16-byte unit
#else
const EPU = 4u;
#endif

// Element index in e of element c of the chunk's row r.
fn at(r: u32, c: u32) -> u32 {
#if TILED
  let u = ((r / 32u * (p.cols / EPU) + c / EPU) * 4u + r % 4u) * 8u + r % 32u / 4u;
  return u * EPU + c % EPU;
#else
  return r * p.cols + c;
#endif
}

fn load(i: u32) -> f32 {
#if WBF16
  let v = e[i >> 1u];
  return bitcast<f32>(select(v << 16u, v & 0xffff0000u, (i & 1u) == 1u));
#endif
#if WF16
  let v = unpack2x16float(e[i >> 1u]);
  return select(v.x, v.y, (i & 1u) == 1u);
#endif
#if !W16
  return e[i];
#endif
}

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let c = gid.x;
  let t = gid.y;
  if (c >= p.cols) { return; }
  let id = ids[t];
  if (id >= p.rowStart && id - p.rowStart < p.rows) {
    out[t * p.cols + c] = load(at(id - p.rowStart, c));
  } else if (p.zeroInvalid == 1u && id >= p.vocab) {
    out[t * p.cols + c] = 0.0;
  }
}
