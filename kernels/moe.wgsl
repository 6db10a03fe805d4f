// Mixture-of-experts routing and combining, on the GPU so no routing decision is read back.
// T tokens, E experts, k picked per token; slot s = t * k + j is token t's j-th pick.
//
// One kernel per entry point:
//   route    one thread per token: top-k of the router logits [T, E] (the larger logit
//            wins, the lower expert index on ties), then the family's weights:
//            SOFTMAX_FIRST (Qwen): softmax over all E, keep the k picked, divided by their
//            sum when NORM; otherwise (Mixtral, GPT-OSS): softmax over the k picked logits.
//   group    one thread per expert: lists the slots that picked it, in slot order, so the
//            expert kernels (moe_matmul.wgsl) run each active expert once over its tokens.
//   combine  one thread per output element: hidden[t, n] += sum_j out[t * k + j, n], in
//            j order (deterministic), plus SHARED's sigmoid(sharedGate[t]) * shared[t, n].

// Most experts a model may have: ROUTE and GROUP keep a bit per expert in registers.
const MAX_EXPERTS: u32 = 256u;

override WG: u32 = 64u;

struct RouteParams {
  tokens: u32,
  experts: u32,
  k: u32,
}

@group(0) @binding(0) var<uniform> routeParams: RouteParams;
// logits: [T, E] f32 (router bias included).
@group(0) @binding(1) var<storage, read> logits: array<f32>;
// sel: [T * k] u32 expert of each slot, best first.
@group(0) @binding(2) var<storage, read_write> sel: array<u32>;
// wts: [T * k] f32 weight of each slot.
@group(0) @binding(3) var<storage, read_write> wts: array<f32>;

@compute @workgroup_size(WG)
fn route(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let p = routeParams;
  let t = gid.x + gid.y * nwg.x * WG;
  if (t >= p.tokens) { return; }
  let base = t * p.experts;
  var taken: array<u32, MAX_EXPERTS / 32u>;
  var top = -3.4e38;
  var sum = 0.0;
  for (var j = 0u; j < p.k; j++) {
    var best = p.experts;
    var bestV = 0.0;
    for (var e = 0u; e < p.experts; e++) {
      if ((taken[e / 32u] & (1u << (e % 32u))) != 0u) { continue; }
      let v = logits[base + e];
      // Strictly greater: the first (lowest-index) of equal logits stays.
      if (best == p.experts || v > bestV) {
        best = e;
        bestV = v;
      }
    }
    taken[best / 32u] |= 1u << (best % 32u);
    sel[t * p.k + j] = best;
    if (j == 0u) { top = bestV; }
#if SOFTMAX_FIRST
    wts[t * p.k + j] = bestV;
#else
    let w = exp(bestV - top);
    wts[t * p.k + j] = w;
    sum += w;
#endif
  }
#if SOFTMAX_FIRST
  // top is the largest of all E logits, so it is the softmax's max as well.
  var all = 0.0;
  for (var e = 0u; e < p.experts; e++) { all += exp(logits[base + e] - top); }
  for (var j = 0u; j < p.k; j++) {
    let w = exp(wts[t * p.k + j] - top) / all;
    wts[t * p.k + j] = w;
    sum += w;
  }
#if NORM
  for (var j = 0u; j < p.k; j++) { wts[t * p.k + j] /= sum; }
#endif
#else
  for (var j = 0u; j < p.k; j++) { wts[t * p.k + j] /= sum; }
#endif
}

struct GroupParams {
  slots: u32,
  experts: u32,
}

@group(0) @binding(0) var<uniform> groupParams: GroupParams;
// picks: [slots] u32, route's sel.
@group(0) @binding(1) var<storage, read> picks: array<u32>;
// groups: [0] = active experts A; then for rank r < A (experts in increasing order)
// groups[1 + 3r ..] = (expert, first index in order, slot count).
@group(0) @binding(2) var<storage, read_write> groups: array<u32>;
// order: [slots] slot indices grouped by expert.
@group(0) @binding(3) var<storage, read_write> order: array<u32>;

@compute @workgroup_size(WG)
fn group(@builtin(global_invocation_id) gid: vec3<u32>) {
  let p = groupParams;
  let e = gid.x;
  if (e >= p.experts) { return; }
  // Every thread scans all slots (slots x experts is small: a prefill step at most).
  var present: array<u32, MAX_EXPERTS / 32u>;
  var before = 0u;
  var count = 0u;
  for (var s = 0u; s < p.slots; s++) {
    let x = picks[s];
    present[x / 32u] |= 1u << (x % 32u);
    before += select(0u, 1u, x < e);
    count += select(0u, 1u, x == e);
  }
  var rank = 0u;
  var nActive = 0u;
  for (var w = 0u; w < MAX_EXPERTS / 32u; w++) {
    nActive += countOneBits(present[w]);
    if (w < e / 32u) { rank += countOneBits(present[w]); }
  }
  rank += countOneBits(present[e / 32u] & ((1u << (e % 32u)) - 1u));
  if (e == 0u) { groups[0] = nActive; }
  if (count == 0u) { return; }
  groups[1u + 3u * rank] = e;
  groups[2u + 3u * rank] = before;
  groups[3u + 3u * rank] = count;
  var at = before;
  for (var s = 0u; s < p.slots; s++) {
    if (picks[s] == e) {
      order[at] = s;
      at++;
    }
  }
}

struct CombineParams {
  tokens: u32,
  cols: u32,
  k: u32,
}

@group(0) @binding(0) var<uniform> combineParams: CombineParams;
// slotOut: [T * k, cols] f32, each slot's weighted expert output.
@group(0) @binding(1) var<storage, read> slotOut: array<f32>;
// hidden: [T, cols] f32, the residual stream.
@group(0) @binding(2) var<storage, read_write> hidden: array<f32>;
#if SHARED
// sharedOut: [T, cols] f32 shared expert output; sharedGate: [T] f32 its gate logit.
@group(0) @binding(3) var<storage, read> sharedOut: array<f32>;
@group(0) @binding(4) var<storage, read> sharedGate: array<f32>;
#endif

@compute @workgroup_size(WG)
fn combine(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let p = combineParams;
  let idx = gid.x + gid.y * nwg.x * WG;
  if (idx >= p.tokens * p.cols) { return; }
  let n = idx % p.cols;
  let t = idx / p.cols;
  var s = 0.0;
  for (var j = 0u; j < p.k; j++) { s += slotOut[(t * p.k + j) * p.cols + n]; }
#if SHARED
  s += sharedOut[idx] / (1.0 + exp(-sharedGate[t]));
#endif
  hidden[idx] += s;
}
