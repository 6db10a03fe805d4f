// Snippet (kernels/dequant.wgsl includes it without Q4): the q8 format's dequantisation, for every
// shape that reads it (matvec_q.wgsl, matmul_q.wgsl). src/quant.ts's layout: 4 int8 per u32
// (element k in byte k % 4 of word k / 4), a group's scale word the f32 bits of s, w = q * s. A
// shape sums a group's raw values times x in f32 and applies the scale once (no zero points:
// ZERO_POINTS false, so no sum of x).

const EPV = 16u; // weights per vec4<u32>
const EPW = 4u;  // weights per u32
const ZERO_POINTS = false;

// Raw values 4h .. 4h + 4 of word v (h < EPW / 4: always 0).
fn rawQuad(v: u32, h: u32) -> vec4<f32> {
  return vec4<f32>((vec4<i32>(bitcast<i32>(v)) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u));
}

// Raw values 8m .. 8m + 4 and 8m + 4 .. 8m + 8 of the unit q (two words each eight).
fn qlo(q: vec4<u32>, m: u32) -> vec4<f32> {
  return rawQuad(q[2u * m], 0u);
}

fn qhi(q: vec4<u32>, m: u32) -> vec4<f32> {
  return rawQuad(q[2u * m + 1u], 0u);
}

// Scale and zero point (none) of a scale word.
fn scaleZero(word: u32) -> vec2<f32> {
  return vec2<f32>(bitcast<f32>(word), 0.0);
}

// Four raw values dequantized with a group's scale.
fn deq4(q: vec4<f32>, s: vec2<f32>) -> vec4<f32> {
  return q * s.x;
}

// A group's result from its raw dot product d and its scale word (xs, the sum of x, is unused).
fn groupSum(d: f32, xs: f32, word: u32) -> f32 {
  return bitcast<f32>(word) * d;
}

// The same for four rows (scale words `words`) and one token.
fn groupSum4(d: vec4<f32>, xs: f32, words: vec4<u32>) -> vec4<f32> {
  return bitcast<vec4<f32>>(words) * d;
}

// Element e of a row (in `word`, the word holding it), dequantized with its group's scale word.
fn weightAt(word: u32, e: u32, sw: u32) -> f32 {
  return f32((bitcast<i32>(word) << (24u - 8u * (e % 4u))) >> 24u) * bitcast<f32>(sw);
}
