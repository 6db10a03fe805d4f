// Snippet (#include subgroup_x, SGX only): x read through a subgroup of exactly 8 lanes, each lane
// loading one of eight consecutive values and broadcasting it. On lavapipe every load inside a
// loop is a per-lane gather (its address never counts as uniform), while a broadcast is one
// register shuffle, so this cuts x's loads eightfold. Callers stay in uniform control flow.

// Values 0..3 and 4..7 of the eight the subgroup's lanes hold in v.
fn bcastLo(v: f32) -> vec4<f32> {
  return vec4<f32>(subgroupBroadcast(v, 0u), subgroupBroadcast(v, 1u), subgroupBroadcast(v, 2u), subgroupBroadcast(v, 3u));
}

fn bcastHi(v: f32) -> vec4<f32> {
  return vec4<f32>(subgroupBroadcast(v, 4u), subgroupBroadcast(v, 5u), subgroupBroadcast(v, 6u), subgroupBroadcast(v, 7u));
}
