// Loads a dense decoder's weights onto the GPU, once, in the layout the ops want.
// Checkpoint fix-ups happen here and nowhere else: the tied LM head reuses the
// embedding table, rotary_emb.inv_freq and other unused tensors are ignored, and the
// projections that read the same input are stacked into one weight (fuse.ts): q|k|v, and
// gate with up.

import type { ModelConfig } from './config.ts';
import type { WeightDtype } from './dtype.ts';
import type { LinearWeight } from './ops/linear.ts';
import type { Checkpoint } from './safetensors.ts';
import { type GpuTensor, UploadError, UploadProgress, destroyTensor, uploadF32, uploadTensor } from './upload.ts';
import type { LoadProgress } from './types.ts';
import { isSparseLayer, loadMoeLayer, moeTensorShapes } from './moe-weights.ts';
import type { MoeWeights } from './ops/moe.ts';
import { LOAD_TIME_QUANT, type PrequantConfig, type QuantFormat } from './quant.ts';
import { type QuantUpload, prequantNames, uploadPrequantized, uploadQuantized } from './quant-upload.ts';
import { BYTES_PER_ELEMENT } from './dtype.ts';
import type { KernelCache } from './kernel.ts';
import { type Stacking, stackRefusal, stackWeights } from './fuse.ts';

/** q, k and v: stacked into one split weight, or apart where they cannot be (fuse.ts stackRefusal). */
export type AttentionInput = { qkv: LinearWeight } | { q: LinearWeight; k: LinearWeight; v: LinearWeight };
/** gate and up: interleaved into one glu weight, or apart. */
export type MlpInput = { gateUp: LinearWeight } | { gate: LinearWeight; up: LinearWeight };

export interface LayerWeights {
  inputNorm: GPUBuffer; // [hidden]
  // q [heads * head_dim, hidden], k and v [kv_heads * head_dim, hidden] (+ bias): qkv stacks them.
  attnIn: AttentionInput;
  o: LinearWeight; // [hidden, heads * head_dim]
  qNorm?: GPUBuffer; // [head_dim] (Qwen3)
  kNorm?: GPUBuffer; // [head_dim] (Qwen3)
  sinks?: GPUBuffer; // [heads] attention sink logits (GPT-OSS)
  postNorm: GPUBuffer; // [hidden]
  // The dense MLP (gate and up [intermediate, hidden], down [hidden, intermediate]), or on
  // sparse layers the mixture of experts (moe-weights.ts).
  mlpIn?: MlpInput;
  down?: LinearWeight;
  moe?: MoeWeights;
}

export interface DecoderWeights {
  embed: LinearWeight; // [vocab, hidden]
  layers: LayerWeights[];
  norm: GPUBuffer; // [hidden]
  lmHead: LinearWeight; // [vocab, hidden], the embedding table when tied
  /** Bytes of GPU memory held. */
  bytes: number;
  /** GPU bytes by storage format of the matrices ('bf16', 'q4', 'gptq', ...); 'other': norms, biases, MoE layers. */
  bytesByFormat: Record<string, number>;
  /** Linear weights held quantized: their bytes, and what they would take in the load dtype. */
  quantized: { bytes: number; denseBytes: number };
  destroy(): void;
}

/** How linear layers are stored: quantized while loading, or read from a GPTQ/AWQ checkpoint. */
export interface WeightQuantization {
  quantize?: QuantFormat;
  prequant?: PrequantConfig;
}

/** How the ops want the weights laid out (their kernel variant's choice). */
export interface WeightLayout {
  /** Linear layers (and a tied embedding table) in row tiles (src/tiles.ts): the software kernels' layout. */
  tiles: boolean;
  /** Rows per gate (then up) block of a stacked gate/up weight (ops/linear-epilogue.ts GLU_BLOCK). */
  gluBlock: number;
  /** Where the stacking kernel comes from. */
  kernels: KernelCache;
}

/** Bytes a linear weight's buffers hold. */
export function linearBytes(w: LinearWeight): number {
  return w.chunks.reduce((s, c) => s + c.buffer.size + (c.scales?.size ?? 0), 0) + (w.quant?.perm?.size ?? 0);
}

function destroyLinear(w: LinearWeight): void {
  for (const c of w.chunks) {
    c.buffer.destroy();
    c.scales?.destroy();
  }
  w.quant?.perm?.destroy();
  w.bias?.destroy();
}

/** Checkpoint tensor names of one layer, as Transformers saves them. */
function layerNames(i: number, c: ModelConfig) {
  const p = `model.layers.${i}.`;
  const bias = (name: string, has: boolean) => (has ? `${p}${name}.bias` : undefined);
  return {
    inputNorm: `${p}input_layernorm.weight`,
    postNorm: `${p}post_attention_layernorm.weight`,
    qNorm: c.qk_norm ? `${p}self_attn.q_norm.weight` : undefined,
    kNorm: c.qk_norm ? `${p}self_attn.k_norm.weight` : undefined,
    sinks: c.attention_sinks ? `${p}self_attn.sinks` : undefined,
    linear: Object.fromEntries(Object.entries({
      q: [`${p}self_attn.q_proj.weight`, bias('self_attn.q_proj', c.attention_bias)],
      k: [`${p}self_attn.k_proj.weight`, bias('self_attn.k_proj', c.attention_bias)],
      v: [`${p}self_attn.v_proj.weight`, bias('self_attn.v_proj', c.attention_bias)],
      o: [`${p}self_attn.o_proj.weight`, bias('self_attn.o_proj', c.o_proj_bias)],
      gate: [`${p}mlp.gate_proj.weight`, bias('mlp.gate_proj', c.mlp_bias)],
      up: [`${p}mlp.up_proj.weight`, bias('mlp.up_proj', c.mlp_bias)],
      down: [`${p}mlp.down_proj.weight`, bias('mlp.down_proj', c.mlp_bias)],
    }).filter(([key]) => !isSparseLayer(c, i) || !['gate', 'up', 'down'].includes(key))) as Partial<Record<'q' | 'k' | 'v' | 'o' | 'gate' | 'up' | 'down', [string, string | undefined]>>,
  };
}

/** Every tensor name the load reads, with the shape config.json implies. */
export function expectedTensors(c: ModelConfig): Map<string, number[]> {
  const h = c.hidden_size;
  const qDim = c.num_attention_heads * c.head_dim;
  const kvDim = c.num_key_value_heads * c.head_dim;
  const shapes: Record<string, [number, number]> = {
    q: [qDim, h],
    k: [kvDim, h],
    v: [kvDim, h],
    o: [h, qDim],
    gate: [c.intermediate_size, h],
    up: [c.intermediate_size, h],
    down: [h, c.intermediate_size],
  };
  const out = new Map<string, number[]>();
  out.set('model.embed_tokens.weight', [c.vocab_size, h]);
  for (let i = 0; i < c.num_hidden_layers; i++) {
    const n = layerNames(i, c);
    out.set(n.inputNorm, [h]);
    out.set(n.postNorm, [h]);
    if (n.qNorm) out.set(n.qNorm, [c.head_dim]);
    if (n.kNorm) out.set(n.kNorm, [c.head_dim]);
    if (n.sinks) out.set(n.sinks, [c.num_attention_heads]);
    if (isSparseLayer(c, i)) for (const [name, shape] of moeTensorShapes(i, c)) out.set(name, shape);
    for (const [key, [w, b]] of Object.entries(n.linear)) {
      out.set(w, shapes[key]!);
      if (b) out.set(b, [shapes[key]![0]]);
    }
  }
  out.set('model.norm.weight', [h]);
  if (!c.tie_word_embeddings) out.set('lm_head.weight', [c.vocab_size, h]);
  return out;
}

/** Checks names and shapes before anything is uploaded, so a bad checkpoint fails fast. */
export function checkCheckpoint(ckpt: Checkpoint, c: ModelConfig, prequant?: PrequantConfig): Map<string, number[]> {
  const expected = expectedTensors(c);
  // A GPTQ/AWQ layer stores qweight/qzeros/scales(/g_idx) instead of weight; their shapes are
  // checked against the config when the layer is repacked (quant-upload.ts).
  if (prequant) {
    for (const name of [...expected.keys()]) {
      const prefix = name.replace(/\.weight$/, '');
      if (prefix === name || !ckpt.has(`${prefix}.qweight`)) continue;
      expected.delete(name);
      for (const n of prequantNames(prefix, prequant)) if (!n.endsWith('.g_idx')) expected.set(n, []);
    }
  }
  // Some tied checkpoints still store lm_head.weight; it is the same matrix and is not read.
  const missing = [...expected.keys()].filter((n) => !ckpt.has(n));
  if (missing.length)
    throw new UploadError(
      `checkpoint ${ckpt.source.name} lacks ${missing.length} tensor(s) the config needs, e.g. ${missing.slice(0, 3).join(', ')}`,
    );
  for (const [name, shape] of expected) {
    if (prequant && shape.length === 0) continue;
    const got = ckpt.get(name).shape;
    if (got.length !== shape.length || got.some((d, i) => d !== shape[i]))
      throw new UploadError(`tensor ${name} has shape [${got}] but config.json implies [${shape}]`);
  }
  return expected;
}

function asLinear(t: GpuTensor, bias?: GPUBuffer): LinearWeight {
  return { dtype: t.dtype, rows: t.shape[0]!, cols: t.shape[1]!, chunks: t.chunks, ...(t.tiled ? { tiled: true } : {}), ...(bias ? { bias } : {}) };
}

export async function loadDecoderWeights(
  device: GPUDevice,
  ckpt: Checkpoint,
  c: ModelConfig,
  dtype: WeightDtype,
  onProgress: ((p: LoadProgress) => void) | undefined,
  quant: WeightQuantization,
  layout: WeightLayout,
): Promise<DecoderWeights> {
  const { tiles } = layout;
  const shapes = expectedTensors(c);
  const expected = checkCheckpoint(ckpt, c, quant.prequant);
  const gIdx = [...expected.keys()].filter((n) => n.endsWith('.qweight')).map((n) => n.replace(/qweight$/, 'g_idx')).filter((n) => ckpt.has(n));
  const progress = new UploadProgress(ckpt, [...expected.keys(), ...gIdx], onProgress ?? (() => {}));
  // Everything held, for destroy(); the linear layers are counted by format at the end.
  const linears: LinearWeight[] = [];
  // The current layer's linear weights until they are stacked or kept.
  let loose: LinearWeight[] = [];
  const tensors: GpuTensor[] = [];
  const small: GPUBuffer[] = [];
  let denseOfQuantized = 0;
  const quantFormat = quant.prequant ? quant.prequant.method : quant.quantize;
  // Linear layers of the decoder body are quantized (or read quantized); embeddings and the LM head keep the load dtype.
  const linear = async (w: string, biasName?: string): Promise<LinearWeight> => {
    const prefix = w.replace(/\.weight$/, '');
    const bias = biasName ? await uploadF32(device, ckpt, biasName, { progress, label: biasName }) : undefined;
    let u: QuantUpload | undefined;
    const [N, K] = shapes.get(w)! as [number, number];
    try {
      if (quant.prequant && ckpt.has(`${prefix}.qweight`)) u = await uploadPrequantized(device, ckpt, prefix, N, K, quant.prequant, progress, tiles);
      else if (quant.quantize) u = await uploadQuantized(device, ckpt, w, LOAD_TIME_QUANT[quant.quantize], progress, tiles);
    } catch (e) {
      bias?.destroy();
      throw e;
    }
    let weight: LinearWeight;
    if (u) {
      denseOfQuantized += N * K * BYTES_PER_ELEMENT[dtype];
      weight = { dtype, ...u.weight, ...(bias ? { bias } : {}) };
    } else {
      weight = asLinear(await matrix(w, tiles, false), bias);
    }
    loose.push(weight);
    return weight;
  };
  const matrix = async (name: string, tiled: boolean, keep = true) => {
    const t = await uploadTensor(device, ckpt, name, { dtype, progress, label: name, tiled });
    if (keep) tensors.push(t);
    return t;
  };
  const vector = async (name: string) => {
    const b = await uploadF32(device, ckpt, name, { progress, label: name });
    small.push(b);
    return b;
  };
  const moeLayer = async (i: number) => {
    const m = await loadMoeLayer(device, ckpt, c, i, dtype, progress);
    small.push(...m.buffers);
    return m.weights;
  };
  // Stacked where the parts allow it; each weight (stacked or not) is held in `linears`.
  const stack = (parts: LinearWeight[], how: Stacking, label: string): LinearWeight | undefined => {
    if (stackRefusal(parts, how)) return undefined;
    const w = stackWeights(device, layout.kernels, parts, how, { label });
    loose = loose.filter((p) => !parts.includes(p));
    linears.push(w);
    return w;
  };
  try {
    // A tied table is also the LM head, so it takes the linear layers' layout.
    const embedT = await matrix('model.embed_tokens.weight', tiles && c.tie_word_embeddings);
    const layers: LayerWeights[] = [];
    for (let i = 0; i < c.num_hidden_layers; i++) {
      const n = layerNames(i, c);
      const lin = {} as Partial<Record<keyof typeof n.linear, LinearWeight>>;
      for (const [key, [w, b]] of Object.entries(n.linear) as [keyof typeof n.linear, [string, string | undefined]][]) {
        lin[key] = await linear(w, b);
      }
      const { q, k, v, o, gate, up, down } = lin as Record<keyof typeof n.linear, LinearWeight>;
      const qkv = stack([q, k, v], { kind: 'split' }, `model.layers.${i}.self_attn.qkv`);
      const gateUp = gate && up ? stack([gate, up], { kind: 'glu', block: layout.gluBlock }, `model.layers.${i}.mlp.gate_up`) : undefined;
      linears.push(...loose);
      loose = [];
      layers.push({
        inputNorm: await vector(n.inputNorm),
        postNorm: await vector(n.postNorm),
        ...(n.qNorm ? { qNorm: await vector(n.qNorm) } : {}),
        ...(n.kNorm ? { kNorm: await vector(n.kNorm) } : {}),
        ...(n.sinks ? { sinks: await vector(n.sinks) } : {}),
        ...(isSparseLayer(c, i) ? { moe: await moeLayer(i) } : {}),
        attnIn: qkv ? { qkv } : { q, k, v },
        o,
        ...(gate && up ? { mlpIn: gateUp ? { gateUp } : { gate, up } } : {}),
        ...(down ? { down } : {}),
      });
    }
    const norm = await vector('model.norm.weight');
    const embed = asLinear(embedT);
    const lmHead = c.tie_word_embeddings ? embed : asLinear(await matrix('lm_head.weight', tiles));
    const bytesByFormat: Record<string, number> = {};
    const add = (f: string, n: number) => n && (bytesByFormat[f] = (bytesByFormat[f] ?? 0) + n);
    let quantizedBytes = 0;
    let otherBytes = small.reduce((s, b) => s + b.size, 0);
    for (const w of linears) {
      if (w.quant) quantizedBytes += linearBytes(w);
      else add(dtype, linearBytes(w));
      otherBytes += w.bias?.size ?? 0;
    }
    add(dtype, tensors.reduce((s, t) => s + t.bytes, 0));
    if (quantFormat) add(quantFormat, quantizedBytes);
    add('other', otherBytes);
    return {
      bytesByFormat,
      quantized: { bytes: quantizedBytes, denseBytes: denseOfQuantized },
      embed,
      layers,
      norm,
      lmHead,
      bytes: Object.values(bytesByFormat).reduce((s, n) => s + n, 0),
      destroy() {
        tensors.forEach(destroyTensor);
        linears.forEach(destroyLinear);
        small.forEach((b) => b.destroy());
      },
    };
  } catch (e) {
    tensors.forEach(destroyTensor);
    [...linears, ...loose].forEach(destroyLinear);
    small.forEach((b) => b.destroy());
    throw e;
  }
}
