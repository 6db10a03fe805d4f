// Causal grouped-query attention over a paged KV cache, for the tokens of several sequences
// in one step, with an optional sliding window and attention sinks.
//
// Cache layout: kCache, vCache [numBlocks, nKvHeads, blockSize, headDim] f32: a sequence's
// position j lives in block table[j / blockSize] at row j % blockSize, so one block's rows of
// one kv head are contiguous. Per-token metadata is in `stepMeta` (u32, ops/step-meta.ts):
// stepMeta[t] is token t's position, stepMeta[maxTokens + t] the word offset of its sequence's
// block table. Query row r = t * nHeads + h (the layout of q and out, [T, nHeads * headDim])
// at position pos attends to its own sequence's positions j in [max(0, pos + 1 - window), pos]
// (window 0: no window), using kv head h / (nHeads / nKvHeads).
//
// The positions are cut into `splits` ranges of splitLen (flash-decoding): each work item
// (r, s) runs an online softmax over its range and, with direct = 1 (one split), writes
// the normalised output; otherwise it writes its running max m, sum l and unnormalised
// accumulator to `part`, and the COMBINE variant merges the splits of each row. A split past
// a row's own range is empty (m = -big, l = 0) and weighs nothing in the combine.
//
// Kernels (entry points):
//   kvWrite   copies T new k/v rows into each token's cache slot.
//   splitSw   one thread per work item (CPU-backed adapters: no barriers), reading the
//             caches as vec4 (headDim is a multiple of 4, checked on the host).
//   splitSg   CPU-backed adapters with subgroups of exactly 8 (compiled with SUBGROUPS),
//             headDim % 8 == 0: one subgroup per group of up to 8 query rows of one kv head
//             and one sequence (stepMeta's row groups), sharing each cache row through broadcasts.
//   splitGpu  one workgroup per work item: a score per thread, shared-memory reductions,
//             and each thread accumulating a few output dims over the chunk's v rows.
//   combine   one thread per output element.
// Defines of the split kernels:
//   SINKS     a learned logit per head joins each row's softmax denominator (GPT-OSS):
//             split 0 starts from m = sink, l = 1 instead of m = -inf, l = 0.
//   SOFTCAP   scores are soft-capped, softcap · tanh(s / softcap) (Gemma 2).

override WG: u32 = 64u;

struct KvWriteParams {
  tokens: u32,
  nKvHeads: u32,
  headDim: u32,
  blockSize: u32,
  maxTokens: u32,
}

@group(0) @binding(0) var<uniform> kvWriteParams: KvWriteParams;
// kNew, vNew: [T, nKvHeads * headDim], as the projections wrote them (after RoPE on k).
@group(0) @binding(1) var<storage, read> kNew: array<f32>;
@group(0) @binding(2) var<storage, read> vNew: array<f32>;
@group(0) @binding(3) var<storage, read_write> kCacheOut: array<f32>;
@group(0) @binding(4) var<storage, read_write> vCacheOut: array<f32>;
// stepMeta (binding 6 of the split kernels): positions and block tables (ops/step-meta.ts).
@group(0) @binding(5) var<storage, read> writeMeta: array<u32>;

@compute @workgroup_size(WG)
fn kvWrite(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let w = kvWriteParams;
  let idx = gid.x + gid.y * nwg.x * WG;
  if (idx >= w.tokens * w.nKvHeads * w.headDim) { return; }
  let d = idx % w.headDim;
  let th = idx / w.headDim;
  let h = th % w.nKvHeads;
  let t = th / w.nKvHeads;
  let pos = writeMeta[t];
  let blk = writeMeta[writeMeta[w.maxTokens + t] + pos / w.blockSize];
  let dst = ((blk * w.nKvHeads + h) * w.blockSize + pos % w.blockSize) * w.headDim + d;
  kCacheOut[dst] = kNew[idx];
  vCacheOut[dst] = vNew[idx];
}

struct CombineParams {
  rows: u32,
  headDim: u32,
  splits: u32,
  accOffset: u32,
}

@group(0) @binding(0) var<uniform> combineParams: CombineParams;
// partIn: [rows * splits] pairs (m, l), then at accOffset [rows * splits, headDim] accumulators.
@group(0) @binding(1) var<storage, read> partIn: array<f32>;
// combined: [rows, headDim] = [T, nHeads * headDim].
@group(0) @binding(2) var<storage, read_write> combined: array<f32>;

@compute @workgroup_size(WG)
fn combine(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let c = combineParams;
  let idx = gid.x + gid.y * nwg.x * WG;
  if (idx >= c.rows * c.headDim) { return; }
  let d = idx % c.headDim;
  let row = idx / c.headDim;
  let first = row * c.splits;
  var m = -3.4e38;
  for (var s = 0u; s < c.splits; s++) { m = max(m, partIn[2u * (first + s)]); }
  var l = 0.0;
  var acc = 0.0;
  for (var s = 0u; s < c.splits; s++) {
    let w = exp(partIn[2u * (first + s)] - m);
    l += w * partIn[2u * (first + s) + 1u];
    acc += w * partIn[c.accOffset + (first + s) * c.headDim + d];
  }
  combined[idx] = acc / l;
}

// The split kernels' uniform and bindings.
struct Params {
  tokens: u32,
  nHeads: u32,
  nKvHeads: u32,
  headDim: u32,
  blockSize: u32,
  maxTokens: u32,
  groupBase: u32,
  groups: u32,
  window: u32,
  splits: u32,
  splitLen: u32,
  scale: f32,
  direct: u32,
  accOffset: u32,
  softcap: f32,
}

// Largest head dimension (checked on the host).
const MAX_D: u32 = 256u;
const NEG_BIG: f32 = -3.4e38;

@group(0) @binding(0) var<uniform> p: Params;
// q: [T, nHeads * headDim] (after RoPE).
@group(0) @binding(1) var<storage, read> q: array<f32>;
// Bindings 2 and 3: the caches, as f32 (kCache, vCache) or as vec4 (splitSw's kCache4, vCache4).
@group(0) @binding(2) var<storage, read> kCache: array<f32>;
@group(0) @binding(3) var<storage, read> vCache: array<f32>;
// out: [T, nHeads * headDim], written when direct = 1.
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
// part: split partials (see COMBINE), written when direct = 0.
@group(0) @binding(5) var<storage, read_write> part: array<f32>;
// stepMeta: positions, block tables and row groups (ops/step-meta.ts).
@group(0) @binding(6) var<storage, read> stepMeta: array<u32>;
#if SINKS
// sinks: [nHeads] f32.
@group(0) @binding(7) var<storage, read> sinks: array<f32>;
#endif

// The softmax's starting max and sum for split s of query row `row`.
fn startML(s: u32, row: u32) -> vec2<f32> {
#if SINKS
  if (s == 0u) { return vec2<f32>(sinks[row % p.nHeads], 1.0); }
#endif
  return vec2<f32>(NEG_BIG, 0.0);
}

// A scaled q·k as the softmax sees it: soft-capped to softcap · tanh(s / softcap) where set (Gemma 2).
fn capped(s: f32) -> f32 {
#if SOFTCAP
  return p.softcap * tanh(clamp(s / p.softcap, -15.0, 15.0));
#else
  return s;
#endif
}

// The first position a query at `pos` attends to.
fn firstKey(pos: u32) -> u32 {
  if (p.window > 0u && pos + 1u > p.window) { return pos + 1u - p.window; }
  return 0u;
}

// Index in the caches of position j's row of kv head kvh, for the block table at word `table` of stepMeta.
fn cacheRow(table: u32, j: u32, kvh: u32) -> u32 {
  let blk = stepMeta[table + j / p.blockSize];
  return ((blk * p.nKvHeads + kvh) * p.blockSize + j % p.blockSize) * p.headDim;
}

// The end of the block holding position j (the key loops look a block up once per block).
fn blockEnd(j: u32, end: u32) -> u32 {
  return min(end, (j / p.blockSize + 1u) * p.blockSize);
}

struct Item {
  row: u32,
  kvh: u32,
  table: u32,
  begin: u32,
  end: u32,
}

fn item(i: u32) -> Item {
  let s = i % p.splits;
  let row = i / p.splits;
  let h = row % p.nHeads;
  let t = row / p.nHeads;
  let pos = stepMeta[t];
  let kvh = h / (p.nHeads / p.nKvHeads);
  return Item(row, kvh, stepMeta[p.maxTokens + t], max(firstKey(pos), s * p.splitLen), min(pos + 1u, (s + 1u) * p.splitLen));
}

// The head dimension in vec4s, as a pipeline constant so the compiler can unroll the dim
// loops and keep qv/acc in registers (2-3x faster on lavapipe than a runtime bound).
override HD4: u32 = 16u;

@group(0) @binding(2) var<storage, read> kCache4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> vCache4: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn splitSw(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * WG;
  if (i >= p.tokens * p.nHeads * p.splits) { return; }
  let it = item(i);
  var qv: array<vec4<f32>, MAX_D / 4u>;
  var acc: array<vec4<f32>, MAX_D / 4u>;
  for (var d = 0u; d < HD4; d++) {
    let b = it.row * HD4 * 4u + d * 4u;
    qv[d] = vec4(q[b], q[b + 1u], q[b + 2u], q[b + 3u]) * p.scale;
    acc[d] = vec4(0.0);
  }
  let ml = startML(i % p.splits, it.row);
  var m = ml.x;
  var l = ml.y;
  var j = it.begin;
  while (j < it.end) {
    let stop = blockEnd(j, it.end);
    var base = cacheRow(it.table, j, it.kvh) / 4u;
    for (; j < stop; j++) {
      var s4 = vec4(0.0);
      for (var d = 0u; d < HD4; d++) { s4 += qv[d] * kCache4[base + d]; }
      let s = capped(s4.x + s4.y + s4.z + s4.w);
      if (s > m) {
        let corr = exp(m - s);
        l *= corr;
        for (var d = 0u; d < HD4; d++) { acc[d] *= corr; }
        m = s;
      }
      let w = exp(s - m);
      l += w;
      for (var d = 0u; d < HD4; d++) { acc[d] += w * vCache4[base + d]; }
      base += HD4;
    }
  }
  let D = HD4 * 4u;
  if (p.direct == 1u) {
    for (var d = 0u; d < D; d++) { out[it.row * D + d] = acc[d / 4u][d % 4u] / l; }
  } else {
    part[2u * i] = m;
    part[2u * i + 1u] = l;
    for (var d = 0u; d < D; d++) { part[p.accOffset + i * D + d] = acc[d / 4u][d % 4u]; }
  }
}

#if SUBGROUPS
// One subgroup of exactly 8 lanes (one workgroup) per work item, on CPU-backed adapters: the
// lanes are one row group of stepMeta, up to 8 query rows of one sequence that read the same kv
// head, consecutive in token-major order (row r: token r / G, head kvh * G + r % G,
// G = nHeads / nKvHeads). They walk the union of their key ranges together; each lane loads
// PL = headDim / 8 values of a cache row and subgroup broadcasts hand them to all eight, so a
// cache row is loaded once per 8 query rows. (On lavapipe every load in a loop is a per-lane
// gather: the per-row kernel loads each cache row once per query row.) Work item
// i = group * splits + s, groups ordered by kv head. Loops run to override constants so qv
// and acc stay in registers (constant indices).
const MAX_PL: u32 = MAX_D / 8u;
override PL: u32 = 8u; // headDim / 8

@compute @workgroup_size(8)
fn splitSg(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
  let i = wg.x + wg.y * nwg.x;
  let G = p.nHeads / p.nKvHeads;
  let s = i % p.splits;
  let grp = (i / p.splits) % p.groups;
  let kvh = i / p.splits / p.groups;
  if (kvh >= p.nKvHeads) { return; }
  let first = stepMeta[p.groupBase + 2u * grp];
  let last = first + stepMeta[p.groupBase + 2u * grp + 1u] - 1u;
  // The group's rows are one sequence's, token-major: the first row has its earliest position, the last its latest.
  let jBegin = max(firstKey(stepMeta[first / G]), s * p.splitLen);
  let jEnd = min(stepMeta[last / G] + 1u, (s + 1u) * p.splitLen);
  let table = stepMeta[p.maxTokens + first / G];
  let live = first + lane <= last;
  let r = min(first + lane, last);
  let t = r / G;
  let row = t * p.nHeads + kvh * G + r % G;
  let pos = stepMeta[t];
  let begin = max(firstKey(pos), s * p.splitLen);
  let end = min(pos + 1u, (s + 1u) * p.splitLen);
  let D = 8u * PL;
  var qv: array<f32, MAX_D>;
  var acc: array<f32, MAX_D>;
  for (var d = 0u; d < D; d++) {
    qv[d] = q[row * D + d] * p.scale;
    acc[d] = 0.0;
  }
  let ml = startML(s, row);
  var m = ml.x;
  var l = ml.y;
  var kv: array<f32, MAX_PL>;
  var j = jBegin;
  while (j < jEnd) {
    let stop = blockEnd(j, jEnd);
    var base = cacheRow(table, j, kvh) + lane * PL;
    for (; j < stop; j++) {
      for (var e = 0u; e < PL; e++) { kv[e] = kCache[base + e]; }
      var sc = 0.0;
      for (var e = 0u; e < PL; e++) {
        let v = kv[e];
        sc += qv[e] * subgroupBroadcast(v, 0u) + qv[PL + e] * subgroupBroadcast(v, 1u)
            + qv[2u * PL + e] * subgroupBroadcast(v, 2u) + qv[3u * PL + e] * subgroupBroadcast(v, 3u)
            + qv[4u * PL + e] * subgroupBroadcast(v, 4u) + qv[5u * PL + e] * subgroupBroadcast(v, 5u)
            + qv[6u * PL + e] * subgroupBroadcast(v, 6u) + qv[7u * PL + e] * subgroupBroadcast(v, 7u);
      }
      sc = capped(sc);
      let valid = live && j >= begin && j < end;
      let mNew = select(m, max(m, sc), valid);
      let corr = exp(m - mNew);
      let w = select(0.0, exp(sc - mNew), valid);
      l = l * corr + w;
      m = mNew;
      for (var e = 0u; e < PL; e++) { kv[e] = vCache[base + e]; }
      for (var e = 0u; e < PL; e++) {
        let v = kv[e];
        acc[e] = acc[e] * corr + w * subgroupBroadcast(v, 0u);
        acc[PL + e] = acc[PL + e] * corr + w * subgroupBroadcast(v, 1u);
        acc[2u * PL + e] = acc[2u * PL + e] * corr + w * subgroupBroadcast(v, 2u);
        acc[3u * PL + e] = acc[3u * PL + e] * corr + w * subgroupBroadcast(v, 3u);
        acc[4u * PL + e] = acc[4u * PL + e] * corr + w * subgroupBroadcast(v, 4u);
        acc[5u * PL + e] = acc[5u * PL + e] * corr + w * subgroupBroadcast(v, 5u);
        acc[6u * PL + e] = acc[6u * PL + e] * corr + w * subgroupBroadcast(v, 6u);
        acc[7u * PL + e] = acc[7u * PL + e] * corr + w * subgroupBroadcast(v, 7u);
      }
      base += D;
    }
  }
  if (!live) { return; }
  if (p.direct == 1u) {
    for (var d = 0u; d < D; d++) { out[row * D + d] = acc[d] / l; }
  } else {
    let item = row * p.splits + s;
    part[2u * item] = m;
    part[2u * item + 1u] = l;
    for (var d = 0u; d < D; d++) { part[p.accOffset + item * D + d] = acc[d]; }
  }
}
#endif

// Each thread owns output dims lid, lid + WG, ... (at most ACC of them: headDim <= ACC * WG).
const ACC: u32 = 4u;

var<workgroup> qs: array<f32, MAX_D>;
var<workgroup> probs: array<f32, WG>;
var<workgroup> red: array<f32, WG>;
// The cache index of each position of the chunk, looked up once by its thread.
var<workgroup> rowAt: array<u32, WG>;

@compute @workgroup_size(WG)
fn splitGpu(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = wg.x + wg.y * nwg.x;
  if (i >= p.tokens * p.nHeads * p.splits) { return; }
  let it = item(i);
  let D = p.headDim;
  for (var d = lid; d < D; d += WG) { qs[d] = q[it.row * D + d] * p.scale; }
  workgroupBarrier();
  let ml = startML(i % p.splits, it.row);
  var m = ml.x;
  var l = ml.y;
  var acc: array<f32, ACC>;
  for (var c = it.begin; c < it.end; c += WG) {
    let j = c + lid;
    var s = NEG_BIG;
    if (j < it.end) {
      let base = cacheRow(it.table, j, it.kvh);
      rowAt[lid] = base;
      s = 0.0;
      for (var d = 0u; d < D; d++) { s += qs[d] * kCache[base + d]; }
      s = capped(s);
    }
    red[lid] = s;
    workgroupBarrier();
    for (var st = WG / 2u; st > 0u; st >>= 1u) {
      if (lid < st) { red[lid] = max(red[lid], red[lid + st]); }
      workgroupBarrier();
    }
    let mNew = max(m, red[0]);
    workgroupBarrier();
    var w = 0.0;
    if (j < it.end) { w = exp(s - mNew); }
    probs[lid] = w;
    red[lid] = w;
    workgroupBarrier();
    for (var st = WG / 2u; st > 0u; st >>= 1u) {
      if (lid < st) { red[lid] += red[lid + st]; }
      workgroupBarrier();
    }
    let corr = exp(m - mNew);
    l = l * corr + red[0];
    m = mNew;
    let n = min(WG, it.end - c);
    for (var a = 0u; a < ACC; a++) {
      let d = lid + a * WG;
      if (d < D) {
        var sum = acc[a] * corr;
        for (var jj = 0u; jj < n; jj++) { sum += probs[jj] * vCache[rowAt[jj] + d]; }
        acc[a] = sum;
      }
    }
    workgroupBarrier();
  }
  if (p.direct == 1u) {
    for (var a = 0u; a < ACC; a++) {
      let d = lid + a * WG;
      if (d < D) { out[it.row * D + d] = acc[a] / l; }
    }
  } else {
    if (lid == 0u) {
      part[2u * i] = m;
      part[2u * i + 1u] = l;
    }
    for (var a = 0u; a < ACC; a++) {
      let d = lid + a * WG;
      if (d < D) { part[p.accOffset + i * D + d] = acc[a]; }
    }
  }
}
