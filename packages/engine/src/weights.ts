// Loads a dense decoder's weights onto the GPU, once, in the layout the ops want. Names come
// from the model's family (models/<family>.ts: its tensor names by role and its checkpoint
// fix-ups, applied before this runs); what happens here is the same for every family: the tied
// LM head reuses the embedding table, rotary_emb.inv_freq is ignored, any other tensor the
// model does not read is an error, and the projections that read the same input are stacked
// into one weight (fuse.ts): q|k|v, and gate with up where the epilogue has the activation.

import type { ModelConfig } from './config.ts';
import type { WeightDtype } from './dtype.ts';
import type { LinearWeight } from './ops/linear.ts';
import type { Checkpoint } from './safetensors.ts';
import { type GpuTensor, UploadError, UploadProgress, destroyTensor, uploadF32, uploadTensor } from './upload.ts';
import type { LoadProgress } from './types.ts';
import { isSparseLayer, loadMoeLayer, moeTensorShapes } from './moe-weights.ts';
import { layerTensors } from './models/family.ts';
import { EMBED, FINAL_NORM, LM_HEAD, type LayerTensors, type LinearRole } from './models/tensors.ts';
import { bufferFrom } from './buffers.ts';
import { decode16 } from './dtype.ts';
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
  // RMSNorm weights [hidden] by place (models/tensors.ts LayerTensors), with Gemma's 1 added.
  attnNorm?: GPUBuffer;
  attnOutNorm?: GPUBuffer;
  mlpNorm?: GPUBuffer;
  mlpOutNorm?: GPUBuffer;
  // q [heads * head_dim, hidden], k and v [kv_heads * head_dim, hidden] (+ bias): qkv stacks them.
  attnIn: AttentionInput;
  o: LinearWeight; // [hidden, heads * head_dim]
  qNorm?: GPUBuffer; // [head_dim] (Qwen3, Gemma 3) or [heads * head_dim] (OLMo 2)
  kNorm?: GPUBuffer; // [head_dim] or [kv_heads * head_dim]
  sinks?: GPUBuffer; // [heads] attention sink logits (GPT-OSS)
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

const NORM_ROLES = ['attnNorm', 'attnOutNorm', 'mlpNorm', 'mlpOutNorm'] as const;

/** Every tensor name the load reads, with the shape config.json implies. */
export function expectedTensors(c: ModelConfig): Map<string, number[]> {
  const h = c.hidden_size;
  const qDim = c.num_attention_heads * c.head_dim;
  const kvDim = c.num_key_value_heads * c.head_dim;
  const shapes: Record<LinearRole, [number, number]> = {
    q: [qDim, h],
    k: [kvDim, h],
    v: [kvDim, h],
    o: [h, qDim],
    gate: [c.intermediate_size, h],
    up: [c.intermediate_size, h],
    down: [h, c.intermediate_size],
  };
  const perHead = c.block.qkNorm === 'head';
  const out = new Map<string, number[]>();
  out.set(EMBED, [c.vocab_size, h]);
  for (let i = 0; i < c.num_hidden_layers; i++) {
    const n = layerTensors(c, i);
    for (const role of NORM_ROLES) if (n[role]) out.set(n[role], [h]);
    if (n.qNorm) out.set(n.qNorm, [perHead ? c.head_dim : qDim]);
    if (n.kNorm) out.set(n.kNorm, [perHead ? c.head_dim : kvDim]);
    if (n.sinks) out.set(n.sinks, [c.num_attention_heads]);
    if (isSparseLayer(c, i)) for (const [name, shape] of moeTensorShapes(i, c)) out.set(name, shape);
    for (const [role, [w, b]] of Object.entries(n.linear) as [LinearRole, [string, string | undefined]][]) {
      out.set(w, shapes[role]);
      if (b) out.set(b, [shapes[role][0]]);
    }
  }
  out.set(FINAL_NORM, [h]);
  if (!c.tie_word_embeddings) out.set(LM_HEAD, [c.vocab_size, h]);
  return out;
}

/**
 * Checkpoint tensors not read: RoPE tables some exporters save, a tied head saved anyway, and
 * the layers past the first c.num_hidden_layers of a checkpoint of `checkpointLayers` when only
 * those are loaded (a truncated-layer draft, LoadOptions.numLayers).
 */
function ignorable(name: string, c: ModelConfig, checkpointLayers: number): boolean {
  if (name.endsWith('.rotary_emb.inv_freq') || (c.tie_word_embeddings && name === LM_HEAD)) return true;
  const layer = /^model\.layers\.(\d+)\./.exec(name);
  return layer !== null && Number(layer[1]) >= c.num_hidden_layers && Number(layer[1]) < checkpointLayers;
}

/** Checks names and shapes before anything is uploaded, so a bad checkpoint fails fast. */
export function checkCheckpoint(ckpt: Checkpoint, c: ModelConfig, prequant?: PrequantConfig, checkpointLayers = c.num_hidden_layers): Map<string, number[]> {
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
  const missing = [...expected.keys()].filter((n) => !ckpt.has(n));
  if (missing.length)
    throw new UploadError(
      `checkpoint ${ckpt.source.name} lacks ${missing.length} tensor(s) the config needs, e.g. ${missing.slice(0, 3).join(', ')}`,
    );
  // A tensor the model would not read is a variant we do not handle (a bias, a norm, a layer
  // the config does not describe): refused rather than silently left out.
  // GPTQ exporters also save a (zero) bias for every quantized layer; as in Transformers, a bias
  // the architecture does not have is not read.
  const quantPart = (n: string, part: string) => prequant !== undefined && n.endsWith(`.${part}`) && expected.has(`${n.slice(0, -part.length)}qweight`);
  const read = (n: string) => expected.has(n) || quantPart(n, 'g_idx') || quantPart(n, 'bias');
  const unexpected = [...ckpt.tensors.keys()].filter((n) => !read(n) && !ignorable(n, c, checkpointLayers));
  if (unexpected.length)
    throw new UploadError(
      `checkpoint ${ckpt.source.name} holds ${unexpected.length} tensor(s) a ${c.model_type} model with this config.json does not use, e.g. ${unexpected.slice(0, 3).join(', ')}`,
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
  /** Layers the checkpoint holds, when `c` keeps only its first ones (LoadOptions.numLayers). */
  checkpointLayers = c.num_hidden_layers,
): Promise<DecoderWeights> {
  const { tiles } = layout;
  const shapes = expectedTensors(c);
  const expected = checkCheckpoint(ckpt, c, quant.prequant, checkpointLayers);
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
  // RMSNorm weights, applied as (1 + w) by Gemma: the 1 is added here, in f32 as HF does.
  const norm = async (name: string) => {
    if (!c.block.normPlusOne) return vector(name);
    const b = bufferFrom(device, plusOne(ckpt.get(name).dtype, await ckpt.read(name), name), name);
    progress.add(ckpt.get(name).file, ckpt.get(name).end - ckpt.get(name).start, true);
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
    const embedT = await matrix(EMBED, tiles && c.tie_word_embeddings);
    const layers: LayerWeights[] = [];
    for (let i = 0; i < c.num_hidden_layers; i++) {
      const n: LayerTensors = layerTensors(c, i);
      const lin: Partial<Record<LinearRole, LinearWeight>> = {};
      for (const [key, [w, b]] of Object.entries(n.linear) as [LinearRole, [string, string | undefined]][]) {
        lin[key] = await linear(w, b);
      }
      const { q, k, v, o, gate, up, down } = lin as Record<LinearRole, LinearWeight>;
      const qkv = stack([q, k, v], { kind: 'split' }, `model.layers.${i}.self_attn.qkv`);
      // The stacked op's epilogue applies SiLU; other activations run as their own op on gate and up.
      const gateUp = gate && up && c.block.activation === 'silu' ? stack([gate, up], { kind: 'glu', block: layout.gluBlock }, `model.layers.${i}.mlp.gate_up`) : undefined;
      linears.push(...loose);
      loose = [];
      const norms: Partial<Record<(typeof NORM_ROLES)[number], GPUBuffer>> = {};
      for (const role of NORM_ROLES) if (n[role]) norms[role] = await norm(n[role]);
      layers.push({
        ...norms,
        ...(n.qNorm ? { qNorm: await norm(n.qNorm) } : {}),
        ...(n.kNorm ? { kNorm: await norm(n.kNorm) } : {}),
        ...(n.sinks ? { sinks: await vector(n.sinks) } : {}),
        ...(isSparseLayer(c, i) ? { moe: await moeLayer(i) } : {}),
        attnIn: qkv ? { qkv } : { q, k, v },
        o,
        ...(gate && up ? { mlpIn: gateUp ? { gateUp } : { gate, up } } : {}),
        ...(down ? { down } : {}),
      });
    }
    const finalNorm = await norm(FINAL_NORM);
    const embed = asLinear(embedT);
    const lmHead = c.tie_word_embeddings ? embed : asLinear(await matrix(LM_HEAD, tiles));
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
      norm: finalNorm,
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

/** 1 + w in f32 for a norm weight stored as w (Gemma's RMSNorm). */
function plusOne(dtype: string, bytes: Uint8Array, name: string): Float32Array<ArrayBuffer> {
  let w: Float32Array;
  if (dtype === 'F32') w = new Float32Array(bytes.slice().buffer);
  else if (dtype === 'BF16' || dtype === 'F16') w = decode16(new Uint16Array(bytes.slice().buffer), dtype === 'BF16' ? 'bf16' : 'f16');
  else throw new UploadError(`norm weight ${name} is ${dtype}; expected F32, BF16 or F16`);
  return Float32Array.from(w, (x) => 1 + x);
}
