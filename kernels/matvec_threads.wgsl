// Snippet (#include matvec_threads): the software matvec's kernel, shared by matvec.wgsl and
// matvec_q.wgsl. One thread per four rows and TB tokens (1..TMAX), each weight load serving all
// TB; the including file provides
//   fn accumulate(thread: u32, r0: u32, lane: u32, acc: ptr<function, array<vec4<f32>, TMAX>>)
// which adds token tokenBase + t's sums of rows r0 .. r0 + 3 to acc[t] (lane: the thread's
// subgroup_invocation_id under SUBGROUPS, else 0), and the linear_store epilogue.

override WG: u32 = 64u;
override TB: u32 = 1u; // tokens per thread
const TMAX = 8u;       // the most TB may be

@compute @workgroup_size(WG)
fn main(
  @builtin(global_invocation_id) gid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
#if SUBGROUPS
  @builtin(subgroup_invocation_id) lane: u32,
#endif
) {
  let thread = gid.x + gid.y * nwg.x * WG;
  let r0 = thread * 4u;
#if SUBGROUPS
  // Threads past the last row keep running (clamped rows, no stores) so the subgroup stays whole.
#if SGX
  sgLane = lane;
#endif
  let l = lane;
#else
  if (r0 >= p.rows) { return; }
  let l = 0u;
#endif
  var acc: array<vec4<f32>, TMAX>;
  accumulate(thread, r0, l, &acc);
  for (var t = 0u; t < TB; t++) {
    store4(p.tokenBase + t, r0, acc[t]);
  }
}
