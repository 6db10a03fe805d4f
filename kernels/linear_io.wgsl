// Snippet (#include linear_io): the uniform and the outputs every linear kernel (matvec, matvec_q,
// matmul, matmul_q) declares alike, so ops/linear.ts writes one Params for all of them. Each
// kernel reads the fields its shape needs; the weight, x and gamma bindings are its own.

struct Params {
  K: u32,
  rows: u32,      // the chunk's rows
  colOffset: u32, // the chunk's first row in the weight
  N: u32,         // the weight's rows
  tokens: u32,    // matmul: tokens in the step
  groups: u32,    // quantized: groups per row
  tokenBase: u32, // the dispatch's first token (software matvec, xu matmul)
  xBase: u32,     // xu matmul: where token tokenBase starts in the x window (in vec4s)
  n0: u32,        // SPLIT: columns of the first output
  n1: u32,        // SPLIT: columns of the second
  eps: f32,       // NORM
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
#if BIAS
@group(0) @binding(4) var<storage, read> bias: array<f32>;
#endif
