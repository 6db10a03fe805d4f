// The load plan: every weight the loader will hold, decided once from config.json, the
// checkpoint's quantization and the kernels' layout, before anything is read. For each linear
// layer, how it is made (read as stored, quantized while loading, repacked from GPTQ/AWQ),
// whether it is in row tiles, and which projections are stacked into one weight (fuse.ts
// stackRefusal, on the planned shapes); for every tensor, the bytes it takes as stored (the
// linear formats' storedBytes, upload.ts's tiling rule). The memory check sums the plan
// (model.ts) and the loader executes it (weights.ts), so the two cannot count differently.

import type { ModelConfig } from './config.ts';
import type { WeightDtype } from './dtype.ts';
import { type StackShape, type Stacking, stackRefusal } from './fuse.ts';
import { isSparseLayer, moeTensorShapes, plannedTensorBytes } from './moe-weights.ts';
import { layerTensors } from './models/family.ts';
import { EMBED, FINAL_NORM, LM_HEAD, type LayerTensors, type LinearRole } from './models/tensors.ts';
import { GLU_BLOCK } from './ops/linear-epilogue.ts';
import { storedBytes } from './ops/linear-formats.ts';
import { LOAD_TIME_QUANT, type PrequantConfig, type QuantFormat, type QuantSpec } from './quant.ts';
import { tilesFit } from './upload.ts';

/** How the decoder's linear layers are stored: quantized while loading, or as a GPTQ/AWQ checkpoint stores them. */
export interface PlanOptions {
  quantize?: QuantFormat;
  prequant?: PrequantConfig;
  /**
   * With prequant: whether the layer `prefix` (e.g. model.layers.0.mlp.up_proj) is stored
   * quantized (its checkpoint has `prefix.qweight`); every decoder linear layer when omitted.
   */
  isPrequantized?: (prefix: string) => boolean;
  /**
   * With GPTQ: whether the layer's g_idx orders its columns other than as stored, so it keeps an
   * act-order permutation (quant-upload.ts permutedLayers); desc_act when omitted.
   */
  isPermuted?: (prefix: string) => boolean;
  /** Linear layers (and a tied embedding table) in row tiles, padded to whole tiles (src/tiles.ts). */
  tiles?: boolean;
  /** Rows per gate (then up) block of a stacked gate/up weight; the tiles' variant's by default. */
  gluBlock?: number;
}

/** Where a linear layer's weight comes from. */
export type LinearSource =
  | { kind: 'stored' }
  | { kind: 'quantize'; spec: QuantSpec & { symmetric: boolean } }
  | { kind: 'repack'; config: PrequantConfig };

export interface PlannedLinear {
  role: LinearRole;
  /** The weight's checkpoint name, its layer prefix (name less `.weight`) and its bias's name. */
  name: string;
  prefix: string;
  bias?: string;
  source: LinearSource;
  /** The weight as it will be held (what stacking looks at). */
  shape: StackShape & { tiled: boolean; bias: boolean };
}

/** Parts stacked into one weight (fuse.ts). */
export interface PlannedStack {
  parts: PlannedLinear[];
  how: Stacking;
  label: string;
}

export interface PlannedLayer {
  tensors: LayerTensors;
  /** In the order of tensors.linear. */
  linears: PlannedLinear[];
  qkv?: PlannedStack;
  gateUp?: PlannedStack;
}

/** What the plan counts: the weights' bytes by storage format, as DecoderWeights.bytesByFormat measures them. */
export interface LoadPlan {
  dtype: WeightDtype;
  tiles: boolean;
  gluBlock: number;
  prequant?: PrequantConfig;
  /** What the quantized linear layers are counted as: 'q8', 'q4', 'gptq' or 'awq'. */
  quantFormat?: string;
  /** The embedding table, in row tiles when tiled (a tied table is also the LM head). */
  embed: { tiled: boolean };
  /** An untied LM head's layout. */
  lmHead?: { tiled: boolean };
  layers: PlannedLayer[];
  /** Bytes by format: the load dtype, the quantized format ('q8', 'q4', 'gptq', 'awq'), 'other' (norms, biases, MoE layers). */
  bytesByFormat: Record<string, number>;
  /** All weight bytes, and of those the linear layers held quantized. */
  weightBytes: number;
  quantizedBytes: number;
}

/** Every tensor name the load reads, with the shape config.json implies. */
export function expectedTensors(c: ModelConfig): Map<string, number[]> {
  const h = c.hidden_size;
  const shapes = linearShapes(c);
  const out = new Map<string, number[]>();
  out.set(EMBED, [c.vocab_size, h]);
  for (let i = 0; i < c.num_hidden_layers; i++) {
    const n = layerTensors(c, i);
    for (const [name, shape] of layerVectors(c, n)) out.set(name, shape);
    if (isSparseLayer(c, i)) for (const [name, shape] of moeTensorShapes(i, c)) out.set(name, shape);
    for (const [role, [w, b]] of linearEntries(n)) {
      out.set(w, shapes[role]);
      if (b) out.set(b, [shapes[role][0]]);
    }
  }
  out.set(FINAL_NORM, [h]);
  if (!c.tie_word_embeddings) out.set(LM_HEAD, [c.vocab_size, h]);
  return out;
}

/** [N, K] of each linear role. */
function linearShapes(c: ModelConfig): Record<LinearRole, [number, number]> {
  const h = c.hidden_size;
  const qDim = c.num_attention_heads * c.head_dim;
  const kvDim = c.num_key_value_heads * c.head_dim;
  return { q: [qDim, h], k: [kvDim, h], v: [kvDim, h], o: [h, qDim], gate: [c.intermediate_size, h], up: [c.intermediate_size, h], down: [h, c.intermediate_size] };
}

export const NORM_ROLES = ['attnNorm', 'attnOutNorm', 'mlpNorm', 'mlpOutNorm'] as const;

/** A layer's norm weights and attention sinks with their shapes (held in f32). */
function layerVectors(c: ModelConfig, n: LayerTensors): [string, number[]][] {
  const perHead = c.block.qkNorm === 'head';
  const out: [string, number[]][] = NORM_ROLES.flatMap((role) => (n[role] ? [[n[role], [c.hidden_size]] as [string, number[]]] : []));
  if (n.qNorm) out.push([n.qNorm, [perHead ? c.head_dim : c.num_attention_heads * c.head_dim]]);
  if (n.kNorm) out.push([n.kNorm, [perHead ? c.head_dim : c.num_key_value_heads * c.head_dim]]);
  if (n.sinks) out.push([n.sinks, [c.num_attention_heads]]);
  return out;
}

function linearEntries(n: LayerTensors): [LinearRole, [string, string | undefined]][] {
  return Object.entries(n.linear) as [LinearRole, [string, string | undefined]][];
}

/** How layer weight `prefix` [N, K] is made and held. */
function planLinear(role: LinearRole, name: string, bias: string | undefined, N: number, K: number, dtype: WeightDtype, o: PlanOptions): PlannedLinear {
  const prefix = name.replace(/\.weight$/, '');
  const tiles = !!o.tiles;
  const base = { role, name, prefix, ...(bias ? { bias } : {}) };
  const held = { dtype, rows: N, cols: K, bias: !!bias };
  if (o.prequant && (o.isPrequantized?.(prefix) ?? true)) {
    const groupSize = o.prequant.groupSize === -1 ? K : o.prequant.groupSize;
    const perm = o.prequant.method === 'gptq' && (o.isPermuted?.(prefix) ?? o.prequant.descAct);
    return { ...base, source: { kind: 'repack', config: o.prequant }, shape: { ...held, tiled: tiles, quant: { format: 'q4', groupSize, ...(perm ? { perm: true } : {}) } } };
  }
  if (o.quantize) {
    const spec = LOAD_TIME_QUANT[o.quantize];
    return { ...base, source: { kind: 'quantize', spec }, shape: { ...held, tiled: tiles, quant: { format: spec.format, groupSize: spec.groupSize } } };
  }
  return { ...base, source: { kind: 'stored' }, shape: { ...held, tiled: tilesFit([N, K], tiles) } };
}

/** Bytes a planned (or stacked) weight holds: its stored rows, and an act-order permutation. */
function plannedLinearBytes(s: StackShape): number {
  return storedBytes(s, { rows: s.rows }) + (s.quant?.perm ? 4 * s.cols : 0);
}

/** Plans the load of a model with config `c` in `dtype`. */
export function planLoad(c: ModelConfig, dtype: WeightDtype, o: PlanOptions = {}): LoadPlan {
  const tiles = !!o.tiles;
  const gluBlock = o.gluBlock ?? GLU_BLOCK[tiles ? 'software' : 'gpu'];
  const shapes = linearShapes(c);
  const quantFormat = o.prequant ? o.prequant.method : o.quantize;
  const bytesByFormat: Record<string, number> = {};
  const add = (format: string, n: number) => n && (bytesByFormat[format] = (bytesByFormat[format] ?? 0) + n);
  const vector = (shape: readonly number[]) => 4 * shape.reduce((a, b) => a * b, 1);
  // A linear weight (or a stack) as held: quantized ones under their format, biases under 'other'.
  const hold = (s: StackShape) => {
    add(s.quant ? quantFormat! : dtype, plannedLinearBytes(s));
    if (s.bias) add('other', 4 * s.rows);
  };

  const embed = { tiled: tilesFit([c.vocab_size, c.hidden_size], tiles && c.tie_word_embeddings) };
  add(dtype, storedBytes({ dtype, cols: c.hidden_size, tiled: embed.tiled }, { rows: c.vocab_size }));
  const layers: PlannedLayer[] = [];
  for (let i = 0; i < c.num_hidden_layers; i++) {
    const n = layerTensors(c, i);
    const linears = linearEntries(n).map(([role, [w, b]]) => planLinear(role, w, b, ...shapes[role], dtype, o));
    const byRole = (r: LinearRole) => linears.find((l) => l.role === r);
    const stack = (roles: LinearRole[], how: Stacking, label: string): PlannedStack | undefined => {
      const parts = roles.map(byRole);
      if (parts.some((p) => !p)) return undefined;
      const planned = parts as PlannedLinear[];
      return stackRefusal(planned.map((p) => p.shape), how) ? undefined : { parts: planned, how, label: `model.layers.${i}.${label}` };
    };
    const qkv = stack(['q', 'k', 'v'], { kind: 'split' }, 'self_attn.qkv');
    // The stacked op's epilogue applies SiLU; other activations run as their own op on gate and up.
    const gateUp = c.block.activation === 'silu' ? stack(['gate', 'up'], { kind: 'glu', block: gluBlock }, 'mlp.gate_up') : undefined;
    const stacked = [qkv, gateUp].flatMap((s) => s?.parts ?? []);
    for (const s of [qkv, gateUp]) {
      if (s) hold({ ...s.parts[0]!.shape, rows: s.parts.reduce((r, p) => r + p.shape.rows, 0) });
    }
    for (const l of linears) if (!stacked.includes(l)) hold(l.shape);
    add('other', layerVectors(c, n).reduce((s, [, shape]) => s + vector(shape), 0));
    if (isSparseLayer(c, i)) for (const [name, shape] of moeTensorShapes(i, c)) add('other', plannedTensorBytes(name, shape, dtype));
    layers.push({ tensors: n, linears, ...(qkv ? { qkv } : {}), ...(gateUp ? { gateUp } : {}) });
  }
  add('other', 4 * c.hidden_size);
  const lmHead = c.tie_word_embeddings ? undefined : { tiled: tilesFit([c.vocab_size, c.hidden_size], tiles) };
  if (lmHead) add(dtype, storedBytes({ dtype, cols: c.hidden_size, tiled: lmHead.tiled }, { rows: c.vocab_size }));
  const weightBytes = Object.values(bytesByFormat).reduce((s, b) => s + b, 0);
  return {
    dtype,
    tiles,
    gluBlock,
    ...(o.prequant ? { prequant: o.prequant } : {}),
    ...(quantFormat ? { quantFormat } : {}),
    embed,
    ...(lmHead ? { lmHead } : {}),
    layers,
    bytesByFormat,
    weightBytes,
    quantizedBytes: quantFormat ? (bytesByFormat[quantFormat] ?? 0) : 0,
  };
}
