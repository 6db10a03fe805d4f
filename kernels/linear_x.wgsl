// Snippet (#include linear_x): x [tokens, K] f32 (binding 2) of the dense linear kernels
// (matvec.wgsl, matmul.wgsl), typed for the way the kernel reads it: SGX, one value a lane
// (broadcast through the subgroup); SGXT (matvec), vec4s, a token a lane; XU, the 64 KiB uniform
// window (uniform arrays need 16-byte elements: 4096 vec4); else vec4s where VEC, single values
// otherwise.

#if SGX
@group(0) @binding(2) var<storage, read> x: array<f32>;
#else
#if SGXT
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
#else
#if XU
@group(0) @binding(2) var<uniform> x: array<vec4<f32>, 4096>;
#else
#if VEC
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
#else
@group(0) @binding(2) var<storage, read> x: array<f32>;
#endif
#endif
#endif
#endif
