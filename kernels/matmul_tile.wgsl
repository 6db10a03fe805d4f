// Snippet (#include matmul_tile): the GPU shape of a prefill matmul, entry point `tile`, shared
// by matmul.wgsl and matmul_q.wgsl. 64 x 64 output tiles (rows x tokens) through workgroup memory.
// The including file provides p (K, rows, tokens, colOffset, eps), x [tokens, K] f32, `fn weight(r, k) -> f32`
// (element (r, k) of the chunk, dequantized or unpacked), the linear_store epilogue and, under
// NORM, gamma [K] f32: x is then the residual stream and each token's RMSNorm is applied here
// (x * gamma on the way into the tile, 1 / sqrt(mean(x^2) + eps) on the way out).
// GLU needs GB = 16: a thread's rows tr, tr + 16 (and tr + 32, tr + 48) are a gate row and its up row.

const BM = 64u; // rows per tile
const BT = 64u; // tokens per tile
const BK = 16u; // k per step

var<workgroup> ws: array<f32, 1024>; // [BM][BK] weights as f32
var<workgroup> xs: array<f32, 1024>; // [BT][BK]

// 256 threads as 16 x 16, each computing 4 rows x 4 tokens of the 64 x 64 tile.
@compute @workgroup_size(256)
fn tile(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let rowBase = wg.x * BM;
  let tokBase = wg.y * BT;
  let tr = lid % 16u;
  let tt = lid / 16u;
  var acc: array<vec4<f32>, 4>; // acc[i][j]: token tt + 16 i, row tr + 16 j
  var ss = vec4<f32>(0.0); // NORM: ss[i], x^2 summed over this thread's k of token lid / 16 + 16 i
  for (var k0 = 0u; k0 < p.K; k0 += BK) {
    for (var i = 0u; i < 4u; i++) {
      let e = lid + i * 256u;
      let rk = e / BK;
      let k = k0 + e % BK;
      let r = rowBase + rk;
      var wv = 0.0;
      if (r < p.rows && k < p.K) { wv = weight(r, k); }
      ws[e] = wv;
      let t = tokBase + rk;
      var xv = 0.0;
      if (t < p.tokens && k < p.K) { xv = x[t * p.K + k]; }
#if NORM
      ss[i] += xv * xv;
      xv *= gamma[min(k, p.K - 1u)];
#endif
      xs[e] = xv;
    }
    workgroupBarrier();
    for (var kk = 0u; kk < BK; kk++) {
      let wv = vec4<f32>(ws[tr * BK + kk], ws[(tr + 16u) * BK + kk], ws[(tr + 32u) * BK + kk], ws[(tr + 48u) * BK + kk]);
      for (var i = 0u; i < 4u; i++) {
        acc[i] += wv * xs[(tt + 16u * i) * BK + kk];
      }
    }
    workgroupBarrier();
  }
  var scale = vec4<f32>(1.0); // scale[i]: of token tt + 16 i
#if NORM
  // Token j's partial sums sit at xs[16 j .. 16 j + 16) once every thread has put down its own.
  for (var i = 0u; i < 4u; i++) { xs[lid + i * 256u] = ss[i]; }
  workgroupBarrier();
  for (var i = 0u; i < 4u; i++) {
    var sum = 0.0;
    for (var kk = 0u; kk < BK; kk++) { sum += xs[(tt + 16u * i) * BK + kk]; }
    scale[i] = inverseSqrt(sum / f32(p.K) + p.eps);
  }
#endif
  for (var i = 0u; i < 4u; i++) {
    let t = tokBase + tt + 16u * i;
    if (t >= p.tokens) { continue; }
    let a = acc[i] * scale[i];
#if GLU
    for (var j = 0u; j < 4u; j += 2u) {
      let r = rowBase + tr + 16u * j;
      if (r < p.rows) { storeGlu(t, p.colOffset + r, a[j], a[j + 1u]); }
    }
#else
    for (var j = 0u; j < 4u; j++) {
      let r = rowBase + tr + 16u * j;
      if (r < p.rows) { storeCol(t, p.colOffset + r, a[j]); }
    }
#endif
  }
}
