// Snippet (#include matvec_rows): the GPU matvec's row reduction and epilogue, shared by
// matvec.wgsl and matvec_q.wgsl. TPR threads per row, RPW rows per workgroup; each thread hands
// in its partial dot product s and, under NORM, its partial sum of x^2 ss. The row sums meet in
// workgroup memory and leave through linear_store (GLU: a workgroup holds whole blocks of gate
// rows and their up rows).

override TPR: u32 = 32u; // threads per row, a power of two
override RPW: u32 = 8u;  // rows per workgroup (GLU: a multiple of 2 GB, so gate and up rows meet)

var<workgroup> red: array<f32, TPR * RPW>;
#if NORM
var<workgroup> red2: array<f32, TPR * RPW>; // sums of x^2
#endif

// Called by every thread of the workgroup; row0 is the workgroup's first row of the chunk.
fn finishRows(lid: u32, row0: u32, s: f32, ss: f32) {
  let lane = lid % TPR;
  red[lid] = s;
#if NORM
  red2[lid] = ss;
#endif
  workgroupBarrier();
  for (var h = TPR / 2u; h > 0u; h >>= 1u) {
    if (lane < h) {
      red[lid] += red[lid + h];
#if NORM
      red2[lid] += red2[lid + h];
#endif
    }
    workgroupBarrier();
  }
  // Row i of the workgroup's sum is red[i * TPR].
#if NORM
  let scale = inverseSqrt(red2[0] / f32(p.K) + p.eps);
#else
  let scale = 1.0;
#endif
#if GLU
  // Thread i < RPW / 2 writes the i-th gate row of the workgroup's blocks with its up row.
  let gi = (lid / GB) * 2u * GB + lid % GB;
  if (lid < RPW / 2u && row0 + gi < p.rows) {
    storeGlu(0u, p.colOffset + row0 + gi, red[gi * TPR] * scale, red[(gi + GB) * TPR] * scale);
  }
#else
  let r = row0 + lid / TPR;
  if (lane == 0u && r < p.rows) { storeCol(0u, p.colOffset + r, red[lid] * scale); }
#endif
}
