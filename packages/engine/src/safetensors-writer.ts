// Writes a safetensors file in memory (tests and the llama2.c converter generate models with it).

import { DTYPE_BYTES, SafetensorsError, elementCount, type SafetensorsDtype } from './safetensors.ts';

export interface TensorToWrite {
  name: string;
  dtype: SafetensorsDtype;
  shape: number[];
  /** Little-endian element data, exactly shape × dtype bytes. */
  data: ArrayBufferView;
}

/**
 * Serialises tensors into one safetensors file. Data follows the header without gaps (the
 * reference reader rejects holes); tensors are ordered by element size, largest first, as the
 * reference writer does, so every tensor starts aligned to its element size.
 */
export function writeSafetensors(tensors: readonly TensorToWrite[], metadata?: Record<string, string>): Uint8Array<ArrayBuffer> {
  const names = new Set<string>();
  for (const t of tensors) {
    if (t.name === '__metadata__' || names.has(t.name)) throw new SafetensorsError(`writeSafetensors: duplicate or reserved tensor name '${t.name}'`);
    names.add(t.name);
    if (!Object.prototype.hasOwnProperty.call(DTYPE_BYTES, t.dtype)) throw new SafetensorsError(`writeSafetensors: tensor '${t.name}' has unknown dtype '${t.dtype}'`);
    const want = elementCount(t.shape) * DTYPE_BYTES[t.dtype];
    if (t.data.byteLength !== want) {
      throw new SafetensorsError(`writeSafetensors: tensor '${t.name}' (${t.dtype} ${JSON.stringify(t.shape)}) needs ${want} bytes, got ${t.data.byteLength}`);
    }
  }
  const ordered = [...tensors].sort((a, b) => DTYPE_BYTES[b.dtype] - DTYPE_BYTES[a.dtype]);
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length) header.__metadata__ = metadata;
  let offset = 0;
  for (const t of ordered) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.data.byteLength] };
    offset += t.data.byteLength;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  // The format pads the header with spaces so the data section starts 8-byte aligned.
  const headerLen = Math.ceil(json.length / 8) * 8;
  const out = new Uint8Array(8 + headerLen + offset);
  const view = new DataView(out.buffer);
  view.setUint32(0, headerLen, true);
  view.setUint32(4, 0, true);
  out.set(json, 8);
  out.fill(0x20, 8 + json.length, 8 + headerLen);
  let pos = 8 + headerLen;
  for (const t of ordered) {
    out.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), pos);
    pos += t.data.byteLength;
  }
  return out;
}
