// Reductions over one logits row x[0 .. vocab) (starting at element rowOffset of the logits buffer),
// leaving a few words in `res` for the host to read:
//   res[0] argmax (ties -> lowest index), res[1] max, res[2] logSumExp (as f32 bits),
//   res[4 .. 4+k) top-k ids (highest first, ties -> lowest id), res[4+k .. 4+2k) their logits.
// Top-k is an exact radix select on a 56-bit key per element: hi = the logit's bits mapped to an
// order-preserving u32, lo = 0xffffff - index. Keys are distinct, larger key = larger logit then
// lower index, so exactly k elements have a key >= the k-th largest key, found 8 bits at a time.
// The selection only looks at keys >= floorHi, a lower bound of the k-th largest: each thread of
// stats takes the max of a disjoint subset, so when at least k threads saw elements, at least k
// elements are >= the smallest of those maxima. prefilter lists the indices of keys >= floorHi;
// when they fit in FILT_CAP, the selection passes run over that list instead of the whole row.
// Each pass is one entry point (one pipeline), in the order they run:
//   stats   workgroup b over [b*blockLen, (b+1)*blockLen): max, its first index, sum exp(x - max),
//           smallest per-thread max -> blocks[b]
//   reduce  one workgroup: combines blocks -> res[0..2]; resets the selection state, sets floorHi
//   prefilter appends the indices of keys >= floorHi to filt (counting past FILT_CAP)
//   hist    (override D = digit 0..6) histogram of digit D of the keys whose higher digits equal the prefix so far
//   scan    (D) one thread: picks the bucket holding the k-th largest key, extends the prefix
//   compact appends the k elements whose key >= the selected key to cand (in any order)
//   sort    one workgroup: bitonic sort of the k candidates -> res ids and logits
// And for several rows at once without top-k (a verification step's argmaxes, log-probabilities):
//   rows    workgroup r over the whole row at rowsIn[r].x: argmax, max, logSumExp and the logit of
//           id rowsIn[r].y (NONE: 0) -> rowsOut[4r .. 4r+4)
// Bindings (each pass uses its own subset; auto layouts keep only those): 0 params, 1 logits f32,
// 2 blocks, 3 res u32, 4 sel (selection state and histograms), 5 cand [256] (key hi, index),
// 6 filt [FILT_CAP] indices, 7 rowsIn (element offset, target id) per row, 8 rowsOut. A binding
// a pass writes and another reads is declared twice, once per access mode.

struct Params {
  vocab: u32,
  rowOffset: u32,
  blockLen: u32,
  numBlocks: u32,
  k: u32,
}

struct Block {
  m: f32,
  idx: u32,
  s: f32,
  tmin: f32,
}

struct Sel {
  prefixHi: u32,
  prefixLo: u32,
  kRem: u32,
  floorHi: u32,
  count: atomic<u32>,
  filtered: atomic<u32>,
  hist: array<atomic<u32>, 1792>, // 7 digits x 256 buckets
}

const NONE = 0xffffffffu;
const MAXK = 256u;
const FILT_CAP = 16384u;

override WG: u32 = 64u; // workgroup size of prefilter, hist and compact
override D: u32 = 0u;   // hist and scan: the digit, 0..6

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> blocksOut: array<Block>; // stats
@group(0) @binding(2) var<storage, read> blocks: array<Block>;          // reduce
@group(0) @binding(3) var<storage, read_write> res: array<u32>;
@group(0) @binding(4) var<storage, read_write> sel: Sel;
@group(0) @binding(5) var<storage, read_write> cand: array<vec2<u32>, MAXK>;
@group(0) @binding(6) var<storage, read_write> filtOut: array<u32, FILT_CAP>; // prefilter
@group(0) @binding(6) var<storage, read> filt: array<u32, FILT_CAP>;          // hist, compact
@group(0) @binding(7) var<storage, read> rowsIn: array<vec2<u32>>;
@group(0) @binding(8) var<storage, read_write> rowsOut: array<u32>;

// The lowest finite f32: x >= LOWEST is false only for -inf (and NaN). A -inf constant cannot be written in WGSL.
const LOWEST = -0x1.fffffep+127f;
const HIGHEST = 0x1.fffffep+127f;
const SWG = 64u; // stats workgroup size

// Running (max, first index of max, sum of exp(x - max)) and its merge; -inf entries add nothing.
struct Stat {
  m: f32,
  idx: u32,
  s: f32,
}

fn scaled(s: f32, m: f32, to: f32) -> f32 {
  return select(0.0, s * exp(m - to), m >= LOWEST);
}

fn merge(a: Stat, b: Stat) -> Stat {
  if (b.idx == NONE) { return a; }
  if (a.idx == NONE) { return b; }
  let m = max(a.m, b.m);
  var idx = min(a.idx, b.idx);
  if (a.m > b.m) { idx = a.idx; } else if (b.m > a.m) { idx = b.idx; }
  return Stat(m, idx, scaled(a.s, a.m, m) + scaled(b.s, b.m, m));
}

fn key_hi(v: f32) -> u32 {
  let b = bitcast<u32>(v);
  return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

fn key_lo(i: u32) -> u32 {
  return 0xffffffu - i;
}

// One thread's Stat over elements start + lid, start + lid + SWG, ... < end of the row at rowOffset.
fn scan_range(rowOffset: u32, start: u32, end: u32, lid: u32) -> Stat {
  var st = Stat(LOWEST, NONE, 0.0);
  // Ascending indices per thread, so a strict > keeps the first of equal maxima.
  for (var i = start + lid; i < end; i += SWG) {
    let v = logits[rowOffset + i];
    if (st.idx == NONE || v > st.m) {
      st = Stat(v, i, scaled(st.s, st.m, v) + select(0.0, 1.0, v >= LOWEST));
    } else if (v >= LOWEST) {
      st.s += exp(v - st.m);
    }
  }
  return st;
}

var<workgroup> statsSt: array<Stat, SWG>;
var<workgroup> statsMin: array<f32, SWG>;

@compute @workgroup_size(SWG)
fn stats(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let b = wg.x + wg.y * nwg.x;
  let start = b * p.blockLen;
  let end = min(start + p.blockLen, p.vocab);
  let st = scan_range(p.rowOffset, start, end, lid);
  statsSt[lid] = st;
  statsMin[lid] = select(HIGHEST, st.m, st.idx != NONE);
  workgroupBarrier();
  for (var h = SWG / 2u; h > 0u; h >>= 1u) {
    if (lid < h) {
      statsSt[lid] = merge(statsSt[lid], statsSt[lid + h]);
      statsMin[lid] = min(statsMin[lid], statsMin[lid + h]);
    }
    workgroupBarrier();
  }
  if (lid == 0u && b < p.numBlocks) {
    let r = statsSt[0];
    blocksOut[b] = Block(r.m, r.idx, r.s, statsMin[0]);
  }
}

@compute @workgroup_size(SWG)
fn rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row = rowsIn[wg.x];
  statsSt[lid] = scan_range(row.x, 0u, p.vocab, lid);
  workgroupBarrier();
  for (var h = SWG / 2u; h > 0u; h >>= 1u) {
    if (lid < h) { statsSt[lid] = merge(statsSt[lid], statsSt[lid + h]); }
    workgroupBarrier();
  }
  if (lid == 0u) {
    let r = statsSt[0];
    let at = 4u * wg.x;
    rowsOut[at] = r.idx;
    rowsOut[at + 1u] = bitcast<u32>(r.m);
    rowsOut[at + 2u] = bitcast<u32>(r.m + log(r.s));
    rowsOut[at + 3u] = select(0u, bitcast<u32>(logits[row.x + min(row.y, p.vocab - 1u)]), row.y != NONE);
  }
}

var<workgroup> wst: array<Stat, 256>;
var<workgroup> wmin: array<f32, 256>;
var<workgroup> wcount: array<u32, 256>;

@compute @workgroup_size(256)
fn reduce(@builtin(local_invocation_index) lid: u32) {
  var st = Stat(LOWEST, NONE, 0.0);
  var tmin = HIGHEST;
  var threads = 0u; // stats threads that saw at least one element
  for (var b = lid; b < p.numBlocks; b += 256u) {
    let x = blocks[b];
    st = merge(st, Stat(x.m, x.idx, x.s));
    tmin = min(tmin, x.tmin);
    threads += min(SWG, p.vocab - b * p.blockLen);
  }
  wst[lid] = st;
  wmin[lid] = tmin;
  wcount[lid] = threads;
  for (var i = lid; i < 1792u; i += 256u) { atomicStore(&sel.hist[i], 0u); }
  workgroupBarrier();
  for (var h = 128u; h > 0u; h >>= 1u) {
    if (lid < h) {
      wst[lid] = merge(wst[lid], wst[lid + h]);
      wmin[lid] = min(wmin[lid], wmin[lid + h]);
      wcount[lid] += wcount[lid + h];
    }
    workgroupBarrier();
  }
  if (lid == 0u) {
    let r = wst[0];
    sel.floorHi = select(0u, key_hi(wmin[0]), wcount[0] >= p.k);
    res[0] = r.idx;
    res[1] = bitcast<u32>(r.m);
    res[2] = bitcast<u32>(r.m + log(r.s));
    sel.prefixHi = 0u;
    sel.prefixLo = 0u;
    sel.kRem = p.k;
    atomicStore(&sel.count, 0u);
    atomicStore(&sel.filtered, 0u);
  }
}

@compute @workgroup_size(WG)
fn prefilter(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let floor = sel.floorHi;
  for (var i = gid.x + gid.y * nwg.x * WG; i < p.vocab; i += nwg.x * nwg.y * WG) {
    if (key_hi(logits[p.rowOffset + i]) >= floor) {
      let slot = atomicAdd(&sel.filtered, 1u);
      if (slot < FILT_CAP) { filtOut[slot] = i; }
    }
  }
}

var<workgroup> digitHist: array<atomic<u32>, 256>;

@compute @workgroup_size(WG)
fn hist(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  for (var i = lid; i < 256u; i += WG) { atomicStore(&digitHist[i], 0u); }
  workgroupBarrier();
  let ph = sel.prefixHi;
  let pl = sel.prefixLo;
  let floor = sel.floorHi;
  // The prefiltered list when it fit, else the whole row.
  let nf = atomicLoad(&sel.filtered);
  let useList = nf <= FILT_CAP;
  let n = select(p.vocab, nf, useList);
  // Masks of the digits already chosen (none for D = 0 and D = 4).
  // Shift amounts are masked to 0..31: some compilers fold the override D into both branches,
  // and the branch not taken for this digit would shift by 32 or more, which they reject.
  let d = D;
  var maskHi = 0xffffffffu;
  var maskLo = 0u;
  if (d < 4u) {
    maskHi = ~(0xffffffffu >> ((8u * d) & 31u));
  } else {
    maskLo = ~(0xffffffu >> ((8u * (d - 4u)) & 31u)) & 0xffffffu;
  }
  for (var j = (wg.x + wg.y * nwg.x) * WG + lid; j < n; j += nwg.x * nwg.y * WG) {
    var i = j;
    if (useList) { i = filt[j]; }
    let hi = key_hi(logits[p.rowOffset + i]);
    let lo = key_lo(i);
    if (hi < floor || (hi & maskHi) != ph || (lo & maskLo) != pl) { continue; }
    var digit: u32;
    if (d < 4u) { digit = (hi >> ((24u - 8u * d) & 31u)) & 255u; } else { digit = (lo >> ((16u - 8u * (d - 4u)) & 31u)) & 255u; }
    atomicAdd(&digitHist[digit], 1u);
  }
  workgroupBarrier();
  for (var i = lid; i < 256u; i += WG) {
    let c = atomicLoad(&digitHist[i]);
    if (c > 0u) { atomicAdd(&sel.hist[d * 256u + i], c); }
  }
}

@compute @workgroup_size(1)
fn scan() {
  let d = D;
  var need = sel.kRem;
  var b = 255u;
  loop {
    let c = atomicLoad(&sel.hist[d * 256u + b]);
    if (c >= need || b == 0u) { break; }
    need -= c;
    b -= 1u;
  }
  sel.kRem = need;
  if (d < 4u) {
    sel.prefixHi |= b << ((24u - 8u * d) & 31u);
  } else {
    sel.prefixLo |= b << ((16u - 8u * (d - 4u)) & 31u);
  }
}

@compute @workgroup_size(WG)
fn compact(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let ph = sel.prefixHi;
  let pl = sel.prefixLo;
  let nf = atomicLoad(&sel.filtered);
  let useList = nf <= FILT_CAP;
  let n = select(p.vocab, nf, useList);
  for (var j = gid.x + gid.y * nwg.x * WG; j < n; j += nwg.x * nwg.y * WG) {
    var i = j;
    if (useList) { i = filt[j]; }
    let hi = key_hi(logits[p.rowOffset + i]);
    if (hi > ph || (hi == ph && key_lo(i) >= pl)) {
      let slot = atomicAdd(&sel.count, 1u);
      if (slot < MAXK) { cand[slot] = vec2<u32>(hi, i); }
    }
  }
}

var<workgroup> keys: array<vec2<u32>, MAXK>; // (key hi, key lo)

fn greater(a: vec2<u32>, b: vec2<u32>) -> bool {
  return a.x > b.x || (a.x == b.x && a.y > b.y);
}

@compute @workgroup_size(256)
fn sort(@builtin(local_invocation_index) lid: u32) {
  let c = cand[lid];
  // (0, 0) sorts below every real key (key hi 0 would be a NaN pattern).
  keys[lid] = select(vec2<u32>(0u, 0u), vec2<u32>(c.x, key_lo(c.y)), lid < p.k);
  workgroupBarrier();
  for (var size = 2u; size <= MAXK; size <<= 1u) {
    for (var stride = size / 2u; stride > 0u; stride >>= 1u) {
      let j = lid ^ stride;
      if (j > lid) {
        let a = keys[lid];
        let b = keys[j];
        // Descending where (lid & size) == 0, so the final merge leaves the whole array descending.
        if (greater(b, a) == ((lid & size) == 0u)) {
          keys[lid] = b;
          keys[j] = a;
        }
      }
      workgroupBarrier();
    }
  }
  if (lid < p.k) {
    let id = 0xffffffu - keys[lid].y;
    res[4u + lid] = id;
    res[4u + p.k + lid] = bitcast<u32>(logits[p.rowOffset + id]);
  }
}
