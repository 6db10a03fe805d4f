// The experts of a mixture-of-experts MLP, over stacked expert weights, for the active
// experts only: GROUP (moe.wgsl) lists each active expert's slots, and workgroup row y of
// the dispatch serves the y-th active expert. A decode step (one token) thus reads only its
// k experts' rows; a prefill step reads each active expert once per 4 of its slots.
//
//   UP    act[s, r] = f(gate_r · x[t], up_r · x[t]) for r < I, with t = s / k and the
//         expert's weights [2I, K]: gate rows 0..I-1, then up rows I..2I-1.
//         f: silu(g) * u, or with GPT_OSS (biases added first) clamp g above and u both
//         ways at limit, then (u + 1) * g * sigmoid(alpha * g).
//   DOWN  out[s, n] = (down_n · act[s] (+ bias)) * wts[s] for n < N, weights [N, K].
//
// Weights are one chunk of whole experts [expertStart, expertStart + expertCount), each
// expert's [rows, K] matrix row-major after the previous one. Formats: f32; WBF16 / WF16
// (W16) two per u32, element e in word e >> 1, low half first; MXFP4: e2m1 nibbles eight
// per u32, value e in bits 4 * (e % 8) of word e >> 3, with an e8m0 scale byte per 32
// values (value = e2m1 * 2^(scale - 127); scale 0 gives 0 rather than 2^-127). K % 8 == 0
// (K % 32 for MXFP4). One thread per 4 rows x 4 slots: weights are loaded once per 4 slots.
//
// Bindings: 0 params, 1 w chunk, 2 scales (MXFP4), 3 x [T, K] (UP) or act [T * k, K] (DOWN),
// 4 groups, 5 order (both from GROUP), 6 act [T * k, I] (UP) or out [T * k, N] (DOWN),
// 7 bias [E, 2I] or [E, N] f32 (BIAS, indexed by global expert), 8 wts [T * k] (DOWN).

struct Params {
  K: u32,
  rows: u32,
  k: u32,
  expertStart: u32,
  expertCount: u32,
  alpha: f32,
  limit: f32,
}

override WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
#if W16
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
#else
#if MXFP4
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> scales: array<u32>;
#else
@group(0) @binding(1) var<storage, read> w: array<vec4<f32>>;
#endif
#endif
@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> groups: array<u32>;
@group(0) @binding(5) var<storage, read> order: array<u32>;
@group(0) @binding(6) var<storage, read_write> y: array<f32>;
#if BIAS
@group(0) @binding(7) var<storage, read> bias: array<f32>;
#endif
#if DOWN
@group(0) @binding(8) var<storage, read> wts: array<f32>;
#endif

struct Oct {
  a: vec4<f32>,
  b: vec4<f32>,
}

#include unpack16
#if MXFP4
// e2m1 by nibble: bit 3 sign, bits 2-1 exponent, bit 0 mantissa.
var<private> E2M1: array<f32, 16> = array<f32, 16>(0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0);
#endif

// Eight weights from element e (a multiple of 8) of the chunk.
fn w8(e: u32) -> Oct {
#if W16
  let q = w[e >> 3u];
  return Oct(vec4<f32>(unpack2(q.x), unpack2(q.y)), vec4<f32>(unpack2(q.z), unpack2(q.w)));
#else
#if MXFP4
  let n = w[e >> 3u];
  let si = e >> 5u;
  let s = (scales[si >> 2u] >> (8u * (si & 3u))) & 0xffu;
  let scale = bitcast<f32>(s << 23u);
  return Oct(
    vec4<f32>(E2M1[n & 15u], E2M1[(n >> 4u) & 15u], E2M1[(n >> 8u) & 15u], E2M1[(n >> 12u) & 15u]) * scale,
    vec4<f32>(E2M1[(n >> 16u) & 15u], E2M1[(n >> 20u) & 15u], E2M1[(n >> 24u) & 15u], E2M1[n >> 28u]) * scale,
  );
#else
  return Oct(w[e >> 2u], w[(e >> 2u) + 1u]);
#endif
#endif
}

fn x8(e: u32) -> Oct {
  return Oct(x[e >> 2u], x[(e >> 2u) + 1u]);
}

fn dot8(a: Oct, b: Oct) -> f32 {
  return dot(a.a, b.a) + dot(a.b, b.b);
}

fn dot4(wv: Oct, x0: Oct, x1: Oct, x2: Oct, x3: Oct) -> vec4<f32> {
  return vec4<f32>(dot8(wv, x0), dot8(wv, x1), dot8(wv, x2), dot8(wv, x3));
}

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
  let g = wg.y;
  if (g >= groups[0]) { return; }
  let e = groups[1u + 3u * g];
  if (e < p.expertStart || e >= p.expertStart + p.expertCount) { return; }
  let first = groups[2u + 3u * g];
  let count = groups[3u + 3u * g];
  let r0 = gid.x * 4u;
  if (r0 >= p.rows) { return; }
  let K = p.K;
  let last = p.rows - 1u;
#if UP
  let wRows = 2u * p.rows;
#else
  let wRows = p.rows;
#endif
  let eBase = (e - p.expertStart) * wRows;
  var rowBase: array<u32, 4>;
  for (var r = 0u; r < 4u; r++) { rowBase[r] = (eBase + min(r0 + r, last)) * K; }
#if UP
  let upOff = p.rows * K;
#endif

  for (var i = first; i < first + count; i += 4u) {
    let end = first + count - 1u;
    var slot: array<u32, 4>;
    var inBase: array<u32, 4>;
    for (var q = 0u; q < 4u; q++) {
      slot[q] = order[min(i + q, end)];
#if UP
      inBase[q] = (slot[q] / p.k) * K;
#else
      inBase[q] = slot[q] * K;
#endif
    }
    var acc: array<vec4<f32>, 4>;
#if UP
    var accUp: array<vec4<f32>, 4>;
#endif
    for (var r = 0u; r < 4u; r++) {
      acc[r] = vec4<f32>(0.0);
#if UP
      accUp[r] = vec4<f32>(0.0);
#endif
    }
    if (i == end) {
      // A lone slot (every decode step): one dot per row instead of four.
      // Scalars, not the private arrays: lavapipe keeps them in registers.
      let b0 = rowBase[0];
      let b1 = rowBase[1];
      let b2 = rowBase[2];
      let b3 = rowBase[3];
      let xb = inBase[0];
      var a = vec4<f32>(0.0);
#if UP
      var u = vec4<f32>(0.0);
#endif
      for (var c = 0u; c < K; c += 8u) {
        let x0 = x8(xb + c);
        a += vec4<f32>(dot8(w8(b0 + c), x0), dot8(w8(b1 + c), x0), dot8(w8(b2 + c), x0), dot8(w8(b3 + c), x0));
#if UP
        u += vec4<f32>(dot8(w8(b0 + upOff + c), x0), dot8(w8(b1 + upOff + c), x0), dot8(w8(b2 + upOff + c), x0), dot8(w8(b3 + upOff + c), x0));
#endif
      }
      for (var r = 0u; r < 4u; r++) {
        acc[r].x = a[r];
#if UP
        accUp[r].x = u[r];
#endif
      }
    } else {
    for (var c = 0u; c < K; c += 8u) {
      let x0 = x8(inBase[0] + c);
      let x1 = x8(inBase[1] + c);
      let x2 = x8(inBase[2] + c);
      let x3 = x8(inBase[3] + c);
      for (var r = 0u; r < 4u; r++) {
        acc[r] += dot4(w8(rowBase[r] + c), x0, x1, x2, x3);
#if UP
        accUp[r] += dot4(w8(rowBase[r] + upOff + c), x0, x1, x2, x3);
#endif
      }
    }
    }
    for (var r = 0u; r < 4u; r++) {
      let row = r0 + r;
      if (row > last) { break; }
      for (var q = 0u; q < 4u; q++) {
        if (i + q > end) { break; }
        var v = acc[r][q];
#if UP
        var u = accUp[r][q];
#if BIAS
        v += bias[e * wRows + row];
        u += bias[e * wRows + p.rows + row];
#endif
#if GPT_OSS
        let gc = min(v, p.limit);
        let uc = clamp(u, -p.limit, p.limit);
        y[slot[q] * p.rows + row] = (uc + 1.0) * gc / (1.0 + exp(-p.alpha * gc));
#else
        y[slot[q] * p.rows + row] = v / (1.0 + exp(-v)) * u;
#endif
#else
#if BIAS
        v += bias[e * wRows + row];
#endif
        y[slot[q] * p.rows + row] = v * wts[slot[q]];
#endif
      }
    }
  }
}
