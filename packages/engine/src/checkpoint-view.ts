// A checkpoint seen under other names: the tool of a family's load-time fix-ups
// (models/family.ts `sanitize`). Each tensor of the view is a tensor of the underlying
// checkpoint, or a range of its rows (a row range of a row-major tensor is one contiguous byte
// range, so a fused projection's parts read, quantize and upload like any other tensor).

import { type Checkpoint, DTYPE_BYTES, SafetensorsError, type TensorInfo, elementCount } from './safetensors.ts';

export interface ViewedTensor {
  /** The tensor's name in the underlying checkpoint. */
  from: string;
  /** Rows [start, end) of its first dimension; the whole tensor when absent. */
  rows?: [number, number];
}

/** A checkpoint holding exactly `tensors` (view name → source); sizes are the sources' bytes. */
export function viewCheckpoint(ckpt: Checkpoint, tensors: Iterable<[string, ViewedTensor]>): Checkpoint {
  const infos = new Map<string, TensorInfo>();
  const sources = new Map<string, { from: string; offset: number }>();
  let totalBytes = 0;
  for (const [name, v] of tensors) {
    if (infos.has(name)) throw new SafetensorsError(`checkpoint view names '${name}' twice`);
    const t = ckpt.get(v.from);
    let info: TensorInfo = { ...t, name };
    let offset = 0;
    if (v.rows) {
      const [a, b] = v.rows;
      const n = t.shape[0] ?? 0;
      if (!(Number.isInteger(a) && Number.isInteger(b) && 0 <= a && a < b && b <= n))
        throw new SafetensorsError(`tensor '${v.from}' of shape [${t.shape}] has no rows [${a}, ${b})`);
      const rowBytes = elementCount(t.shape.slice(1)) * DTYPE_BYTES[t.dtype];
      offset = a * rowBytes;
      info = { ...info, shape: [b - a, ...t.shape.slice(1)], start: t.start + offset, end: t.start + b * rowBytes };
    }
    infos.set(name, info);
    sources.set(name, { from: v.from, offset });
    totalBytes += info.end - info.start;
  }
  const get = (name: string): TensorInfo => {
    const t = infos.get(name);
    if (!t) throw new SafetensorsError(`checkpoint in ${ckpt.source.name} has no tensor '${name}'`);
    return t;
  };
  return {
    source: ckpt.source,
    files: ckpt.files,
    tensors: infos,
    metadata: ckpt.metadata,
    totalBytes,
    get,
    has: (name) => infos.has(name),
    read(name, start = 0, end?) {
      const t = get(name);
      const size = t.end - t.start;
      const stop = end ?? size;
      if (!(0 <= start && start <= stop && stop <= size))
        throw new SafetensorsError(`read of tensor '${name}' bytes [${start}, ${stop}) is outside its ${size} bytes`);
      const s = sources.get(name)!;
      return ckpt.read(s.from, s.offset + start, s.offset + stop);
    },
  };
}

/** The view that keeps every tensor but those in `replace`'s keys, and adds `add`. */
export function replaceTensors(ckpt: Checkpoint, replace: Set<string>, add: Iterable<[string, ViewedTensor]>): Checkpoint {
  const kept: [string, ViewedTensor][] = [...ckpt.tensors.keys()].filter((n) => !replace.has(n)).map((n) => [n, { from: n }]);
  return viewCheckpoint(ckpt, [...kept, ...add]);
}
