// Snippet (#include dequant): the quantized format's dequantisation, chosen by define, for the
// shapes that read quantized weights (matvec_q.wgsl, matmul_q.wgsl). Each format's snippet
// provides the same names: EPV and EPW (weights per vec4<u32> and per u32), ZERO_POINTS, rawQuad
// (raw values of a word), qlo / qhi (raw values of a unit, by eights), scaleZero (a scale word's
// scale and zero point), deq4 (four raw values dequantized), groupSum / groupSum4 (a group's
// result from its raw dot product and sum of x) and weightAt (one element, dequantized).
// A new format is one more snippet here and its descriptor in src/ops/linear-formats.ts.

#if Q4
#include dequant_q4
#else
#include dequant_q8
#endif
