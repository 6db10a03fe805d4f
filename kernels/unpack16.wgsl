// Snippet (#include unpack16): 16-bit weights packed two per u32, little-endian, unpacked to f32
// without shader-f16. WBF16: bfloat16 (the high half of an f32); WF16: IEEE half.

#if WBF16
fn unpack2(v: u32) -> vec2<f32> {
  return vec2<f32>(bitcast<f32>(v << 16u), bitcast<f32>(v & 0xffff0000u));
}
#endif
#if WF16
fn unpack2(v: u32) -> vec2<f32> {
  return unpack2x16float(v);
}
#endif
