// Loads a dense decoder's weights onto the GPU, once, in the layout the ops want. Names come
// from the model's family (models/<family>.ts: its tensor names by role and its checkpoint
// fix-ups, applied before this runs); what happens here is the same for every family: the tied
// LM head reuses the embedding table, rotary_emb.inv_freq is ignored, any other tensor the
// model does not read is an error, and the projections that read the same input are stacked
// into one weight (fuse.ts): q|k|v, and gate with up where the epilogue has the activation.

import type { ModelConfig } from './config.ts';
import type { LinearWeight } from './ops/linear.ts';
import type { Checkpoint } from './safetensors.ts';
import { type GpuTensor, UploadError, UploadProgress, destroyTensor, uploadF32, uploadTensor } from './upload.ts';
import type { LoadProgress } from './types.ts';
import { isSparseLayer, loadMoeLayer } from './moe-weights.ts';
import { EMBED, FINAL_NORM, LM_HEAD, type LinearRole } from './models/tensors.ts';
import { bufferFrom } from './buffers.ts';
import { decode16 } from './dtype.ts';
import type { ExpertWeights, MoeWeights } from './ops/moe.ts';
import type { PrequantConfig } from './quant.ts';
import { type QuantUpload, prequantNames, uploadPrequantized, uploadQuantized } from './quant-upload.ts';
import type { KernelCache } from './kernel.ts';
import { type LoadPlan, type PlannedLinear, type PlannedStack, NORM_ROLES, expectedTensors } from './load-plan.ts';
import { stackWeights } from './fuse.ts';

/** q, k and v: stacked into one split weight, or apart where they cannot be (load-plan.ts). */
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
  /** Of `bytes`, what a decode step reads: all but an untied embedding table and the experts no token picks. */
  bytesPerToken: number;
  destroy(): void;
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

/** Bytes of the experts' weights (and their biases) of a sparse layer. */
function expertBytes(m: MoeWeights): number {
  const of = (e: ExpertWeights) => e.chunks.reduce((s, c) => s + c.buffer.size + (c.scales?.size ?? 0), 0) + (e.bias?.size ?? 0);
  return of(m.gateUp) + of(m.down);
}

/** Loads the weights as `plan` (load-plan.ts) lays them out. */
export async function loadDecoderWeights(
  device: GPUDevice,
  ckpt: Checkpoint,
  c: ModelConfig,
  plan: LoadPlan,
  onProgress: ((p: LoadProgress) => void) | undefined,
  /** Where the stacking kernel comes from. */
  kernels: KernelCache,
  /** Layers the checkpoint holds, when `c` keeps only its first ones (LoadOptions.numLayers). */
  checkpointLayers = c.num_hidden_layers,
): Promise<DecoderWeights> {
  const { dtype } = plan;
  const expected = checkCheckpoint(ckpt, c, plan.prequant, checkpointLayers);
  const gIdx = [...expected.keys()].filter((n) => n.endsWith('.qweight')).map((n) => n.replace(/qweight$/, 'g_idx')).filter((n) => ckpt.has(n));
  const progress = new UploadProgress(ckpt, [...expected.keys(), ...gIdx], onProgress ?? (() => {}));
  // Everything held, for destroy(); the linear layers are counted by format at the end.
  const linears: LinearWeight[] = [];
  // The current layer's linear weights until they are stacked or kept.
  let loose: LinearWeight[] = [];
  const tensors: GpuTensor[] = [];
  const small: GPUBuffer[] = [];
  let inactiveExperts = 0;
  const linear = async (l: PlannedLinear): Promise<LinearWeight> => {
    const bias = l.bias ? await uploadF32(device, ckpt, l.bias, { progress, label: l.bias }) : undefined;
    let u: QuantUpload | undefined;
    const { rows: N, cols: K, tiled } = l.shape;
    try {
      if (l.source.kind === 'repack') u = await uploadPrequantized(device, ckpt, l.prefix, N, K, l.source.config, progress, tiled);
      else if (l.source.kind === 'quantize') u = await uploadQuantized(device, ckpt, l.name, l.source.spec, progress, tiled);
    } catch (e) {
      bias?.destroy();
      throw e;
    }
    const weight = u ? { dtype, ...u.weight, ...(bias ? { bias } : {}) } : asLinear(await matrix(l.name, tiled, false), bias);
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
    const moe = c.moe!;
    inactiveExperts += (expertBytes(m.weights) * (moe.num_experts - moe.num_experts_per_tok)) / moe.num_experts;
    return m.weights;
  };
  // The plan's stacks: fuse.ts refuses parts that are not what the plan said they would be.
  const stack = (s: PlannedStack | undefined, lin: Partial<Record<LinearRole, LinearWeight>>): LinearWeight | undefined => {
    if (!s) return undefined;
    const parts = s.parts.map((p) => lin[p.role]!);
    const w = stackWeights(device, kernels, parts, s.how, { label: s.label });
    loose = loose.filter((p) => !parts.includes(p));
    linears.push(w);
    return w;
  };
  try {
    const embedT = await matrix(EMBED, plan.embed.tiled);
    const layers: LayerWeights[] = [];
    for (const [i, pl] of plan.layers.entries()) {
      const n = pl.tensors;
      const lin: Partial<Record<LinearRole, LinearWeight>> = {};
      for (const l of pl.linears) lin[l.role] = await linear(l);
      const { q, k, v, o, gate, up, down } = lin as Record<LinearRole, LinearWeight>;
      const qkv = stack(pl.qkv, lin);
      const gateUp = stack(pl.gateUp, lin);
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
    const lmHead = plan.lmHead ? asLinear(await matrix(LM_HEAD, plan.lmHead.tiled)) : embed;
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
    if (plan.quantFormat) add(plan.quantFormat, quantizedBytes);
    add('other', otherBytes);
    const bytes = Object.values(bytesByFormat).reduce((s, n) => s + n, 0);
    return {
      bytesByFormat,
      bytesPerToken: bytes - (plan.lmHead ? embedT.bytes : 0) - inactiveExperts,
      embed,
      layers,
      norm: finalNorm,
      lmHead,
      bytes,
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
