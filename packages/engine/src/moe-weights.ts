// Loads the sparse MLP of one MoE layer in the layout ops/moe.ts wants, from the tensors
// as each family publishes them: Mixtral's and Qwen's per-expert matrices are stacked
// (gate rows, then up rows, per expert); GPT-OSS's stacked input-major gate_up_proj
// [E, hidden, 2I] with gate/up interleaved is transposed and de-interleaved, and its MXFP4
// `*_blocks` / `*_scales` rows are permuted the same way (rows are independent in MXFP4).

import type { ModelConfig } from './config.ts';
import { familyOf } from './models/family.ts';
import { BYTES_PER_ELEMENT, encode16, f16ToF32, type WeightDtype } from './dtype.ts';
import type { LinearWeight } from './ops/linear.ts';
import type { ExpertChunk, ExpertWeights, MoeOptions, MoeWeights } from './ops/moe.ts';
import type { Checkpoint } from './safetensors.ts';
import { storageUsage } from './buffers.ts';
import { UploadError, type UploadProgress, uploadF32, uploadTensor } from './upload.ts';

/** GPT-OSS's SwiGLU slope (fixed in the reference implementation). */
export const GPT_OSS_ALPHA = 1.702;

export function isSparseLayer(c: ModelConfig, layer: number): boolean {
  return !!c.moe?.sparse_layers[layer];
}

export function moeOptions(c: ModelConfig, maxTokens: number): MoeOptions {
  const m = c.moe!;
  return {
    hidden: c.hidden_size,
    experts: m.num_experts,
    k: m.num_experts_per_tok,
    intermediate: m.expert_intermediate_size,
    routing: m.routing,
    normTopk: m.norm_topk_prob,
    ...(m.gpt_oss_experts ? { gptOss: { alpha: GPT_OSS_ALPHA, limit: m.swiglu_limit } } : {}),
    sharedIntermediate: m.shared_expert_intermediate_size,
    maxTokens,
  };
}

/** Checkpoint names of one sparse layer, as its family saves them (models/<family>.ts moeTensors). */
export interface MoeTensorNames {
  /** Router weight and optional bias. */
  router: [string, string | undefined];
  /** Per expert (gate, up, down) for per-expert layouts. */
  perExpert?: (e: number) => [string, string, string];
  /** GPT-OSS stacked tensors. */
  stacked?: { gateUp: string; down: string; gateUpBias: string; downBias: string };
  shared?: { gate: string; up: string; down: string; gateLogit: string };
}

function names(i: number, c: ModelConfig): MoeTensorNames {
  const f = familyOf(c);
  if (!f.moeTensors) throw new Error(`model_type ${c.model_type} names no expert tensors`);
  return f.moeTensors(i, c);
}

/** Every tensor name layer i's sparse MLP reads, with its shape. */
export function moeTensorShapes(i: number, c: ModelConfig): Map<string, number[]> {
  const m = c.moe!;
  const H = c.hidden_size;
  const I = m.expert_intermediate_size;
  const E = m.num_experts;
  const n = names(i, c);
  const out = new Map<string, number[]>();
  out.set(n.router[0], [E, H]);
  if (n.router[1]) out.set(n.router[1], [E]);
  if (n.perExpert) {
    for (let e = 0; e < E; e++) {
      const [g, u, d] = n.perExpert(e);
      out.set(g, [I, H]);
      out.set(u, [I, H]);
      out.set(d, [H, I]);
    }
  }
  if (n.shared) {
    const Is = m.shared_expert_intermediate_size;
    out.set(n.shared.gate, [Is, H]);
    out.set(n.shared.up, [Is, H]);
    out.set(n.shared.down, [H, Is]);
    out.set(n.shared.gateLogit, [1, H]);
  }
  if (n.stacked) {
    if (m.mxfp4) {
      out.set(`${n.stacked.gateUp}_blocks`, [E, 2 * I, H / 32, 16]);
      out.set(`${n.stacked.gateUp}_scales`, [E, 2 * I, H / 32]);
      out.set(`${n.stacked.down}_blocks`, [E, H, I / 32, 16]);
      out.set(`${n.stacked.down}_scales`, [E, H, I / 32]);
    } else {
      out.set(n.stacked.gateUp, [E, H, 2 * I]);
      out.set(n.stacked.down, [E, I, H]);
    }
    out.set(n.stacked.gateUpBias, [E, 2 * I]);
    out.set(n.stacked.downBias, [E, H]);
  }
  return out;
}

/** Bytes a tensor of layer weights takes on the GPU (MXFP4 bytes as stored; vectors in f32). */
export function plannedTensorBytes(name: string, shape: number[], dtype: WeightDtype): number {
  const n = shape.reduce((a, b) => a * b, 1);
  if (name.endsWith('_blocks') || name.endsWith('_scales')) return n;
  return shape.length >= 2 ? n * BYTES_PER_ELEMENT[dtype] : n * 4;
}

/** Bytes of the experts a decode step does not read: (E - k) of E experts in every sparse layer. */
export function inactiveExpertBytes(c: ModelConfig, dtype: WeightDtype): number {
  const m = c.moe;
  if (!m) return 0;
  let total = 0;
  for (let i = 0; i < c.num_hidden_layers; i++) {
    if (!m.sparse_layers[i]) continue;
    const n = names(i, c);
    for (const [name, shape] of moeTensorShapes(i, c)) {
      if (name === n.router[0] || name === n.router[1] || (n.shared && Object.values(n.shared).includes(name))) continue;
      total += plannedTensorBytes(name, shape, dtype);
    }
  }
  return (total * (m.num_experts - m.num_experts_per_tok)) / m.num_experts;
}

const FLOAT_SOURCES = new Set(['F32', 'F16', 'BF16']);

/** Elements [start, start + count) of a float tensor as f32. */
async function readFloats(ckpt: Checkpoint, name: string, start: number, count: number): Promise<Float32Array> {
  const info = ckpt.get(name);
  if (!FLOAT_SOURCES.has(info.dtype)) throw new UploadError(`tensor '${name}' has dtype ${info.dtype}; expected F32, F16 or BF16`);
  const size = info.dtype === 'F32' ? 4 : 2;
  let bytes = await ckpt.read(name, start * size, (start + count) * size);
  if (bytes.byteOffset % 4) bytes = bytes.slice();
  if (info.dtype === 'F32') return new Float32Array(bytes.buffer, bytes.byteOffset, count).slice();
  const h = new Uint16Array(bytes.buffer, bytes.byteOffset, count);
  const out = new Float32Array(count);
  if (info.dtype === 'BF16') {
    const bits = new Uint32Array(out.buffer);
    for (let i = 0; i < count; i++) bits[i] = h[i]! << 16;
  } else {
    for (let i = 0; i < count; i++) out[i] = f16ToF32(h[i]!);
  }
  return out;
}

async function readBytes(ckpt: Checkpoint, name: string, start: number, count: number): Promise<Uint8Array> {
  const info = ckpt.get(name);
  if (info.dtype !== 'U8' && info.dtype !== 'F8_E8M0') throw new UploadError(`MXFP4 tensor '${name}' has dtype ${info.dtype}; expected U8`);
  return ckpt.read(name, start, start + count);
}

/** Writes n floats into `dst` (at a 4-byte aligned offset) in the target dtype. */
function encodeInto(values: Float32Array, dtype: WeightDtype, dst: Uint8Array): void {
  if (dtype === 'f32') dst.set(new Uint8Array(values.buffer, values.byteOffset, values.byteLength));
  else {
    const bits = encode16(values, dtype);
    dst.set(new Uint8Array(bits.buffer, 0, values.length * 2));
  }
}

/**
 * Stacks E experts into buffers of whole experts, each at most `limit` bytes. `fill` writes
 * expert e's bytes (and its MXFP4 scales) into the views it is given.
 */
async function uploadStacked(
  device: GPUDevice,
  E: number,
  bytesPerExpert: number,
  scaleBytesPerExpert: number,
  limit: number,
  label: string,
  fill: (e: number, dst: Uint8Array, scales: Uint8Array | undefined) => Promise<void>,
): Promise<{ chunks: ExpertChunk[]; buffers: GPUBuffer[] }> {
  const perChunk = Math.min(E, Math.floor(limit / bytesPerExpert));
  if (perChunk < 1)
    throw new UploadError(`${label}: one expert is ${bytesPerExpert} bytes, more than the ${limit} bytes one GPU buffer may bind`);
  const chunks: ExpertChunk[] = [];
  const buffers: GPUBuffer[] = [];
  const make = (bytes: number, what: string) => {
    const b = device.createBuffer({ size: Math.max(4, Math.ceil(bytes / 4) * 4), usage: storageUsage(), mappedAtCreation: true, label: what });
    buffers.push(b);
    return b;
  };
  try {
    for (let start = 0; start < E; start += perChunk) {
      const n = Math.min(perChunk, E - start);
      const what = `${label} [experts ${start}..${start + n})`;
      const buffer = make(n * bytesPerExpert, what);
      const scales = scaleBytesPerExpert ? make(n * scaleBytesPerExpert, `${what} scales`) : undefined;
      const data = new Uint8Array(buffer.getMappedRange());
      const scaleData = scales ? new Uint8Array(scales.getMappedRange()) : undefined;
      for (let e = 0; e < n; e++) {
        await fill(
          start + e,
          data.subarray(e * bytesPerExpert, (e + 1) * bytesPerExpert),
          scaleData?.subarray(e * scaleBytesPerExpert, (e + 1) * scaleBytesPerExpert),
        );
      }
      buffer.unmap();
      scales?.unmap();
      chunks.push({ buffer, ...(scales ? { scales } : {}), expertStart: start, experts: n });
    }
  } catch (err) {
    buffers.forEach((b) => b.destroy());
    throw err;
  }
  return { chunks, buffers };
}

export interface LoadedMoe {
  weights: MoeWeights;
  buffers: GPUBuffer[];
  bytes: number;
}

export async function loadMoeLayer(
  device: GPUDevice,
  ckpt: Checkpoint,
  c: ModelConfig,
  i: number,
  dtype: WeightDtype,
  progress: UploadProgress,
): Promise<LoadedMoe> {
  const m = c.moe!;
  const H = c.hidden_size;
  const I = m.expert_intermediate_size;
  const E = m.num_experts;
  const n = names(i, c);
  const limit = Math.min(device.limits.maxStorageBufferBindingSize, device.limits.maxBufferSize);
  const buffers: GPUBuffer[] = [];
  // Progress in source bytes; a stacked tensor is read in E equal parts.
  const done = (name: string, parts = 1, index = 0) => {
    const t = ckpt.get(name);
    progress.add(t.file, (t.end - t.start) / parts, index === parts - 1);
  };
  const linear = async (name: string, bias?: string): Promise<LinearWeight> => {
    const t = await uploadTensor(device, ckpt, name, { dtype, progress, label: name });
    buffers.push(...t.chunks.map((ch) => ch.buffer));
    const b = bias ? await uploadF32(device, ckpt, bias, { progress, label: bias }) : undefined;
    if (b) buffers.push(b);
    return { dtype, rows: t.shape[0]!, cols: t.shape[1]!, chunks: t.chunks, ...(b ? { bias: b } : {}) };
  };
  const f32Buffer = (values: Float32Array, label: string) => {
    const b = device.createBuffer({ size: values.byteLength, usage: storageUsage(), mappedAtCreation: true, label });
    new Float32Array(b.getMappedRange()).set(values);
    b.unmap();
    buffers.push(b);
    return b;
  };
  const stacked = async (rows: number, cols: number, format: ExpertWeights['format'], label: string, fill: Parameters<typeof uploadStacked>[6]) => {
    const mx = format === 'mxfp4';
    const r = await uploadStacked(device, E, mx ? (rows * cols) / 2 : rows * cols * BYTES_PER_ELEMENT[format], mx ? rows * cols / 32 : 0, limit, label, fill);
    buffers.push(...r.buffers);
    return { format, experts: E, rows, cols, chunks: r.chunks } as ExpertWeights;
  };

  try {
    const router = await linear(n.router[0], n.router[1]);
    let gateUp: ExpertWeights;
    let down: ExpertWeights;
    if (n.perExpert) {
      const per = n.perExpert;
      gateUp = await stacked(2 * I, H, dtype, `layer ${i} gate/up experts`, async (e, dst) => {
        const [g, u] = per(e);
        const half = I * H * BYTES_PER_ELEMENT[dtype];
        encodeInto(await readFloats(ckpt, g, 0, I * H), dtype, dst.subarray(0, half));
        done(g);
        encodeInto(await readFloats(ckpt, u, 0, I * H), dtype, dst.subarray(half));
        done(u);
      });
      down = await stacked(H, I, dtype, `layer ${i} down experts`, async (e, dst) => {
        const d = per(e)[2];
        encodeInto(await readFloats(ckpt, d, 0, H * I), dtype, dst);
        done(d);
      });
    } else {
      const s = n.stacked!;
      if (m.mxfp4) {
        // Blocks are [E, rows, cols / 32, 16] and scales [E, rows, cols / 32]: out x in already.
        const rowBytes = H / 2;
        const rowScales = H / 32;
        gateUp = await stacked(2 * I, H, 'mxfp4', `layer ${i} gate/up experts`, async (e, dst, sc) => {
          const blocks = await readBytes(ckpt, `${s.gateUp}_blocks`, e * 2 * I * rowBytes, 2 * I * rowBytes);
          const scales = await readBytes(ckpt, `${s.gateUp}_scales`, e * 2 * I * rowScales, 2 * I * rowScales);
          // Row 2j is gate j, row 2j + 1 up j: gate rows first, then up rows.
          for (let j = 0; j < 2 * I; j++) {
            const to = (j % 2) * I + (j >> 1);
            dst.set(blocks.subarray(j * rowBytes, (j + 1) * rowBytes), to * rowBytes);
            sc!.set(scales.subarray(j * rowScales, (j + 1) * rowScales), to * rowScales);
          }
          done(`${s.gateUp}_blocks`, E, e);
          done(`${s.gateUp}_scales`, E, e);
        });
        down = await stacked(H, I, 'mxfp4', `layer ${i} down experts`, async (e, dst, sc) => {
          const blocks = await readBytes(ckpt, `${s.down}_blocks`, (e * H * I) / 2, (H * I) / 2);
          const scales = await readBytes(ckpt, `${s.down}_scales`, (e * H * I) / 32, (H * I) / 32);
          dst.set(blocks);
          sc!.set(scales);
          done(`${s.down}_blocks`, E, e);
          done(`${s.down}_scales`, E, e);
        });
      } else {
        gateUp = await stacked(2 * I, H, dtype, `layer ${i} gate/up experts`, async (e, dst) => {
          const src = await readFloats(ckpt, s.gateUp, e * H * 2 * I, H * 2 * I); // [H, 2I]
          const t = new Float32Array(2 * I * H);
          for (let h = 0; h < H; h++)
            for (let j = 0; j < 2 * I; j++) t[((j % 2) * I + (j >> 1)) * H + h] = src[h * 2 * I + j]!;
          encodeInto(t, dtype, dst);
          done(s.gateUp, E, e);
        });
        down = await stacked(H, I, dtype, `layer ${i} down experts`, async (e, dst) => {
          const src = await readFloats(ckpt, s.down, e * I * H, I * H); // [I, H]
          const t = new Float32Array(H * I);
          for (let r = 0; r < I; r++) for (let h = 0; h < H; h++) t[h * I + r] = src[r * H + h]!;
          encodeInto(t, dtype, dst);
          done(s.down, E, e);
        });
      }
      const gub = await readFloats(ckpt, s.gateUpBias, 0, E * 2 * I);
      const deint = new Float32Array(E * 2 * I);
      for (let e = 0; e < E; e++) for (let j = 0; j < 2 * I; j++) deint[e * 2 * I + (j % 2) * I + (j >> 1)] = gub[e * 2 * I + j]!;
      gateUp.bias = f32Buffer(deint, s.gateUpBias);
      done(s.gateUpBias);
      const db = await uploadF32(device, ckpt, s.downBias, { progress, label: s.downBias });
      buffers.push(db);
      down.bias = db;
    }
    const shared = n.shared
      ? { gate: await linear(n.shared.gate), up: await linear(n.shared.up), down: await linear(n.shared.down), gateLogit: await linear(n.shared.gateLogit) }
      : undefined;
    return { weights: { router, gateUp, down, ...(shared ? { shared } : {}) }, buffers, bytes: buffers.reduce((a, b) => a + b.size, 0) };
  } catch (err) {
    buffers.forEach((b) => b.destroy());
    throw err;
  }
}
