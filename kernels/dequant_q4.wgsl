// Snippet (kernels/dequant.wgsl includes it under Q4): the q4 format's dequantisation, for every
// shape that reads it (matvec_q.wgsl, matmul_q.wgsl). src/quant.ts's layout: 8 nibbles per u32
// (element k in bits 4 (k % 8) of word k / 8), a group's scale word pack2x16float(s, z),
// w = (q - z) * s. A shape sums a group's raw values times x in f32 and applies the scale once,
// s * (sum q x - z * sum x), so the zero point costs one multiply per group (the shape sums x
// where ZERO_POINTS).

const EPV = 32u; // weights per vec4<u32>
const EPW = 8u;  // weights per u32
const ZERO_POINTS = true;

// Raw values 4h .. 4h + 4 of word v (h < EPW / 4).
fn rawQuad(v: u32, h: u32) -> vec4<f32> {
  return vec4<f32>((vec4<u32>(v) >> (vec4<u32>(0u, 4u, 8u, 12u) + vec4<u32>(16u * h))) & vec4<u32>(15u));
}

// Raw values 8m .. 8m + 4 and 8m + 4 .. 8m + 8 of the unit q (one word each eight).
fn qlo(q: vec4<u32>, m: u32) -> vec4<f32> {
  return rawQuad(q[m], 0u);
}

fn qhi(q: vec4<u32>, m: u32) -> vec4<f32> {
  return rawQuad(q[m], 1u);
}

// Scale and zero point of a scale word.
fn scaleZero(word: u32) -> vec2<f32> {
  return unpack2x16float(word);
}

// Four raw values dequantized with a group's scale and zero point.
fn deq4(q: vec4<f32>, s: vec2<f32>) -> vec4<f32> {
  return (q - s.y) * s.x;
}

// A group's result from its raw dot product d, its sum of x and its scale word.
fn groupSum(d: f32, xs: f32, word: u32) -> f32 {
  let sz = unpack2x16float(word);
  return sz.x * (d - sz.y * xs);
}

// The same for four rows (scale words `words`) and one token.
fn groupSum4(d: vec4<f32>, xs: f32, words: vec4<u32>) -> vec4<f32> {
  let a = unpack2x16float(words.x);
  let b = unpack2x16float(words.y);
  let c = unpack2x16float(words.z);
  let e = unpack2x16float(words.w);
  return vec4<f32>(a.x, b.x, c.x, e.x) * (d - vec4<f32>(a.y, b.y, c.y, e.y) * xs);
}

// Element e of a row (in `word`, the word holding it), dequantized with its group's scale word.
fn weightAt(word: u32, e: u32, sw: u32) -> f32 {
  let sz = unpack2x16float(sw);
  return (f32((word >> (4u * (e % 8u))) & 15u) - sz.y) * sz.x;
}
