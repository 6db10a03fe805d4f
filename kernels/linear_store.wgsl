// Snippet (#include linear_store): the epilogue of a linear layer's output element, shared by
// matvec, matmul and their quantized twins. The including file provides p.colOffset, y and,
// under BIAS, bias: y[i] (+)= v + bias[colOffset + r] for output column colOffset + r.

fn storeAt(i: u32, r: u32, v: f32) {
  var o = v;
#if BIAS
  o += bias[p.colOffset + r];
#endif
#if ACC
  o += y[i];
#endif
  y[i] = o;
}
