// Puts quantized linear weights on the GPU: checkpoint tensors quantized while loading (q8/q4),
// or GPTQ/AWQ tensors repacked. One tensor at a time: a float matrix is read and quantized a
// block of rows at a time straight into mapped buffers, so no full-precision copy is ever held.
// With `tiled`, each chunk's words and scales are stored in row tiles (src/tiles.ts, the software
// kernels' layout): a unit is one 16-byte vec4 of words, or one scale word.

import { storageUsage } from './buffers.ts';
import { bf16ToF32, f16ToF32 } from './dtype.ts';
import { repackAwq } from './awq.ts';
import { type RepackedQ4, actOrder, repackGptq } from './gptq.ts';
import type { LinearWeight, WeightChunk } from './ops/linear.ts';
import { type PrequantConfig, type QuantSpec, QuantError, groupsPerRow, quantizeRows, rowWords, checkSpec } from './quant.ts';
import type { Checkpoint } from './safetensors.ts';
import { TILE_ROWS, tileRows, tiledRows } from './tiles.ts';
import { READ_PIECE_BYTES, type UploadProgress } from './upload.ts';

export interface QuantUpload {
  /** chunks and quant of a LinearWeight (bias and dtype are the caller's). */
  weight: Pick<LinearWeight, 'rows' | 'cols' | 'chunks' | 'quant' | 'tiled'>;
  /** GPU bytes held (words, scales, permutation). */
  bytes: number;
  buffers: GPUBuffer[];
}

/**
 * Rows per buffer so that both words and scales of a chunk (a row's words outweigh its scales)
 * fit a binding of `limit` bytes. Tiled chunks hold whole tiles, so only the last one is padded.
 */
export function quantRowsPerChunk(limit: number, spec: QuantSpec, K: number, rows: number, tiled = false): number {
  const fit = Math.floor(limit / (rowWords(spec, K) * 4));
  const per = tiled ? Math.floor(fit / TILE_ROWS) * TILE_ROWS : fit;
  if (per < 1) throw new QuantError(`${tiled ? `a tile of ${TILE_ROWS} quantized rows` : 'one quantized row'} of ${K} columns exceeds the binding limit of ${limit} bytes`);
  return Math.min(rows, per);
}

function rowsPerChunk(device: GPUDevice, spec: QuantSpec, K: number, rows: number, tiled: boolean): number {
  const limit = Math.min(device.limits.maxStorageBufferBindingSize, device.limits.maxBufferSize);
  return quantRowsPerChunk(limit, spec, K, rows, tiled);
}

function mapped(device: GPUDevice, bytes: number, label: string): GPUBuffer {
  return device.createBuffer({ size: Math.max(4, bytes), usage: storageUsage(), mappedAtCreation: true, label });
}

/** Reads a float tensor's rows [r0, r1) as f32. */
async function readRows(ckpt: Checkpoint, name: string, K: number, r0: number, r1: number): Promise<Float32Array> {
  const info = ckpt.get(name);
  const size = info.dtype === 'F32' ? 4 : info.dtype === 'F16' || info.dtype === 'BF16' ? 2 : 0;
  if (!size) throw new QuantError(`tensor '${name}' has dtype ${info.dtype}; only F32, F16 and BF16 tensors can be quantized`);
  let bytes = await ckpt.read(name, r0 * K * size, r1 * K * size);
  if (bytes.byteOffset % 4) bytes = bytes.slice();
  const n = (r1 - r0) * K;
  if (size === 4) return new Float32Array(bytes.buffer, bytes.byteOffset, n);
  const h = new Uint16Array(bytes.buffer, bytes.byteOffset, n);
  const out = new Float32Array(n);
  const conv = info.dtype === 'BF16' ? bf16ToF32 : f16ToF32;
  for (let i = 0; i < n; i++) out[i] = conv(h[i]!);
  return out;
}

/** Quantizes a [rows, K] float tensor into q8/q4 buffers while reading it; in row tiles when `tiled`. */
export async function uploadQuantized(
  device: GPUDevice,
  ckpt: Checkpoint,
  name: string,
  spec: QuantSpec & { symmetric: boolean },
  progress?: UploadProgress,
  tiled = false,
): Promise<QuantUpload> {
  checkSpec(spec, name);
  const info = ckpt.get(name);
  if (info.shape.length !== 2) throw new QuantError(`tensor '${name}' has shape [${info.shape}]; only matrices are quantized`);
  const [rows, K] = info.shape as [number, number];
  const rw = rowWords(spec, K);
  const groups = groupsPerRow(spec, K);
  const per = rowsPerChunk(device, spec, K, rows, tiled);
  // Tiled, a block is whole tiles, which it fills on its own: it is quantized row-major into
  // `staged` and tiled from there into the chunk at its own first row.
  const fit = Math.max(1, Math.floor(READ_PIECE_BYTES / (K * 4)));
  const block = tiled ? Math.max(1, Math.floor(fit / TILE_ROWS)) * TILE_ROWS : fit;
  const staged = tiled ? { words: new Uint32Array(Math.min(block, per) * rw), scales: new Uint32Array(Math.min(block, per) * groups) } : undefined;
  const chunks: WeightChunk[] = [];
  const buffers: GPUBuffer[] = [];
  let bytes = 0;
  try {
    for (let c0 = 0; c0 < rows; c0 += per) {
      const n = Math.min(per, rows - c0);
      const stored = tiled ? tiledRows(n) : n;
      const wb = mapped(device, stored * rw * 4, `${name} ${spec.format}${tiled ? ' tiled' : ''} [rows ${c0}..${c0 + n})`);
      buffers.push(wb);
      const sb = mapped(device, stored * groups * 4, `${name} scales`);
      buffers.push(sb);
      const out = { words: new Uint32Array(wb.getMappedRange()), scales: new Uint32Array(sb.getMappedRange()) };
      for (let r = 0; r < n; r += block) {
        const m = Math.min(block, n - r);
        const values = await readRows(ckpt, name, K, c0 + r, c0 + r + m);
        if (staged) {
          quantizeRows(values, m, K, spec, staged);
          // Row r starts a tile, so the block's tiles begin at its own row-major offset.
          tileRows(staged.words, m, rw / 4, 4, out.words.subarray(r * rw));
          tileRows(staged.scales, m, groups, 1, out.scales.subarray(r * groups));
        } else {
          quantizeRows(values, m, K, spec, out, r);
        }
        progress?.add(info.file, m * K * ((info.end - info.start) / (rows * K)), c0 + r + m === rows);
      }
      wb.unmap();
      sb.unmap();
      chunks.push({ buffer: wb, scales: sb, rowStart: c0, rows: n });
      bytes += wb.size + sb.size;
    }
  } catch (e) {
    buffers.forEach((b) => b.destroy());
    throw e;
  }
  return { weight: { rows, cols: K, chunks, quant: { format: spec.format, groupSize: spec.groupSize }, ...(tiled ? { tiled } : {}) }, bytes, buffers };
}

function words32(bytes: Uint8Array): Uint32Array {
  const b = bytes.byteOffset % 4 ? bytes.slice() : bytes;
  return new Uint32Array(b.buffer, b.byteOffset, b.byteLength / 4);
}

/** The tensor names a GPTQ/AWQ linear layer `prefix` (e.g. model.layers.0.mlp.up_proj) is stored as. */
export function prequantNames(prefix: string, cfg: PrequantConfig): string[] {
  const names = [`${prefix}.qweight`, `${prefix}.qzeros`, `${prefix}.scales`];
  return cfg.method === 'gptq' ? [...names, `${prefix}.g_idx`] : names;
}

/**
 * The GPTQ layers whose g_idx orders their columns other than as stored, by prefix: they keep an
 * act-order permutation and so are neither stacked nor read like the others (load-plan.ts).
 * A g_idx the repack would refuse is left to it, which names the problem.
 */
export async function permutedLayers(ckpt: Checkpoint, cfg: PrequantConfig): Promise<(prefix: string) => boolean> {
  const permuted = new Set<string>();
  if (cfg.method !== 'gptq') return () => false;
  for (const [name, info] of ckpt.tensors) {
    if (!name.endsWith('.g_idx') || info.dtype !== 'I32') continue;
    if (actOrder(new Int32Array(words32(await ckpt.read(name)).buffer.slice(0)))) permuted.add(name.slice(0, -'.g_idx'.length));
  }
  return (prefix) => permuted.has(prefix);
}

/** Reads one GPTQ/AWQ layer W [N, K], checks it and repacks it into q4 buffers; in row tiles when `tiled`. */
export async function uploadPrequantized(
  device: GPUDevice,
  ckpt: Checkpoint,
  prefix: string,
  N: number,
  K: number,
  cfg: PrequantConfig,
  progress?: UploadProgress,
  tiled = false,
): Promise<QuantUpload> {
  const need = (suffix: string, dtypes: string[]) => {
    const name = `${prefix}.${suffix}`;
    if (!ckpt.has(name)) throw new QuantError(`${cfg.method.toUpperCase()} layer ${prefix} has no ${suffix} tensor (${name})`);
    const info = ckpt.get(name);
    if (!dtypes.includes(info.dtype)) throw new QuantError(`${name} has dtype ${info.dtype}, expected ${dtypes.join(' or ')}`);
    return info;
  };
  const qw = need('qweight', ['I32', 'U32']);
  const qz = need('qzeros', ['I32', 'U32']);
  const sc = need('scales', ['F16']);
  const read = async (name: string) => {
    const b = await ckpt.read(name);
    progress?.add(ckpt.get(name).file, b.byteLength, true);
    return b;
  };
  const qweight = words32(await read(qw.name));
  const qzeros = words32(await read(qz.name));
  const sb = await read(sc.name);
  const s = sb.byteOffset % 2 ? sb.slice() : sb;
  const scales = new Uint16Array(s.buffer, s.byteOffset, s.byteLength / 2);
  const base = { qweight, qweightShape: qw.shape, qzeros, qzerosShape: qz.shape, scales, scalesShape: sc.shape };
  let r: RepackedQ4;
  if (cfg.method === 'gptq') {
    const gName = `${prefix}.g_idx`;
    let gIdx: Int32Array | undefined;
    if (ckpt.has(gName)) {
      need('g_idx', ['I32']);
      gIdx = new Int32Array(words32(await read(gName)).buffer.slice(0));
    } else if (cfg.descAct) {
      throw new QuantError(`GPTQ layer ${prefix} has desc_act true but no g_idx tensor (${gName})`);
    }
    r = repackGptq({ ...base, ...(gIdx ? { gIdx } : {}) }, N, K, cfg, prefix);
  } else {
    r = repackAwq(base, N, K, cfg, prefix);
  }
  return uploadRepacked(device, r, N, K, prefix, tiled);
}

/** Uploads repacked q4 words and scales (and a column permutation) in row chunks; in row tiles when `tiled`. */
export function uploadRepacked(device: GPUDevice, r: RepackedQ4, N: number, K: number, label: string, tiled = false): QuantUpload {
  const spec: QuantSpec = { format: 'q4', groupSize: r.groupSize };
  const rw = rowWords(spec, K);
  const groups = groupsPerRow(spec, K);
  const per = rowsPerChunk(device, spec, K, N, tiled);
  const chunks: WeightChunk[] = [];
  const buffers: GPUBuffer[] = [];
  let bytes = 0;
  // `tile`: data is [rows, units] units of unitWords words, stored in row tiles.
  const put = (data: Uint32Array, l: string, tile?: { rows: number; units: number; unitWords: number }) => {
    const b = mapped(device, tile ? tiledRows(tile.rows) * tile.units * tile.unitWords * 4 : data.byteLength, l);
    if (tile) tileRows(data, tile.rows, tile.units, tile.unitWords, new Uint32Array(b.getMappedRange()));
    else new Uint32Array(b.getMappedRange(), 0, data.length).set(data);
    b.unmap();
    buffers.push(b);
    bytes += b.size;
    return b;
  };
  for (let c0 = 0; c0 < N; c0 += per) {
    const n = Math.min(per, N - c0);
    const buffer = put(r.words.subarray(c0 * rw, (c0 + n) * rw), `${label} q4${tiled ? ' tiled' : ''} [rows ${c0}..${c0 + n})`, tiled ? { rows: n, units: rw / 4, unitWords: 4 } : undefined);
    const scales = put(r.scales.subarray(c0 * groups, (c0 + n) * groups), `${label} scales`, tiled ? { rows: n, units: groups, unitWords: 1 } : undefined);
    chunks.push({ buffer, scales, rowStart: c0, rows: n });
  }
  const perm = r.perm ? put(r.perm, `${label} column order`) : undefined;
  return { weight: { rows: N, cols: K, chunks, quant: { ...spec, ...(perm ? { perm } : {}) }, ...(tiled ? { tiled } : {}) }, bytes, buffers };
}
