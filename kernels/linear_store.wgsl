// Snippet (#include linear_store): the epilogue of a linear layer, shared by matvec, matmul and their
// quantized twins. It reads p, y and bias as kernels/linear_io.wgsl declares them. Output column c
// (a row of the weight) of token t:
//   y[t * N + c] (+)= v + bias[c]
// SPLIT (a stacked q|k|v weight, src/fuse.ts): columns [0, n0) go to y [tokens, n0], [n0, n0 + n1)
// to y1 [tokens, n1] and the rest to y2 [tokens, N - n0 - n1] (bindings 6 and 7).
// GLU (gate and up interleaved in blocks of GB rows, src/fuse.ts): gate row c of block b and up
// row c + GB give output column j = b * GB + c % GB of y [tokens, N / 2] as silu(gate) * up.

#if SPLIT
@group(0) @binding(6) var<storage, read_write> y1: array<f32>;
@group(0) @binding(7) var<storage, read_write> y2: array<f32>;
#endif
#if GLU
override GB: u32 = 2u; // rows per block of gate (then of up)
#endif

fn biased(c: u32, v: f32) -> f32 {
#if BIAS
  return v + bias[c];
#else
  return v;
#endif
}

fn storeCol(t: u32, c: u32, v: f32) {
  let o = biased(c, v);
#if SPLIT
  if (c < p.n0) {
    y[t * p.n0 + c] = o;
  } else if (c < p.n0 + p.n1) {
    y1[t * p.n1 + c - p.n0] = o;
  } else {
    let n2 = p.N - p.n0 - p.n1;
    y2[t * n2 + c - p.n0 - p.n1] = o;
  }
#else
  let i = t * p.N + c;
#if ACC
  y[i] = o + y[i];
#else
  y[i] = o;
#endif
#endif
}

#if GLU
// SiLU as Transformers computes it in f32: x * sigmoid(x).
fn silu(x: f32) -> f32 {
  return x / (1.0 + exp(-x));
}

// Gate row c (a column of the weight, in the first half of its block) and its up row c + GB.
fn storeGlu(t: u32, c: u32, g: f32, u: f32) {
  let j = (c / (2u * GB)) * GB + c % GB;
  y[t * (p.N / 2u) + j] = silu(biased(c, g)) * biased(c + GB, u);
}
#endif

// Chunk rows r0 .. r0 + 3 of token t (a software thread's four rows), those past the chunk's end
// dropped. Under GLU (GB = 2) they are two gate rows and their two up rows.
fn store4(t: u32, r0: u32, v: vec4<f32>) {
  let c = p.colOffset + r0;
#if GLU
  if (r0 < p.rows) {
    storeGlu(t, c, v.x, v.z);
    storeGlu(t, c + 1u, v.y, v.w);
  }
#else
  if (r0 < p.rows) { storeCol(t, c, v.x); }
  if (r0 + 1u < p.rows) { storeCol(t, c + 1u, v.y); }
  if (r0 + 2u < p.rows) { storeCol(t, c + 2u, v.z); }
  if (r0 + 3u < p.rows) { storeCol(t, c + 3u, v.w); }
#endif
}
