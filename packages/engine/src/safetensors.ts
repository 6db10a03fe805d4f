// Reads safetensors checkpoints: one `model.safetensors`, or shards listed by
// `model.safetensors.index.json`. Only headers are read up front; tensor bytes are
// fetched on demand through the FileSource, so a multi-GB file is never held whole.
//
// File layout: u64 little-endian header length N, N bytes of JSON
// ({name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}), then the
// data section; data_offsets are relative to the start of the data section.

import type { FileSource } from './types.ts';

export type SafetensorsDtype =
  | 'F64' | 'F32' | 'F16' | 'BF16'
  | 'I64' | 'I32' | 'I16' | 'I8'
  | 'U64' | 'U32' | 'U16' | 'U8'
  | 'BOOL' | 'F8_E4M3' | 'F8_E5M2' | 'F8_E8M0';

/** Bytes per element of each dtype we can lay out (sub-byte types such as F4 are refused). */
export const DTYPE_BYTES: Readonly<Record<SafetensorsDtype, number>> = {
  F64: 8, F32: 4, F16: 2, BF16: 2,
  I64: 8, I32: 4, I16: 2, I8: 1,
  U64: 8, U32: 4, U16: 2, U8: 1,
  BOOL: 1, F8_E4M3: 1, F8_E5M2: 1, F8_E8M0: 1,
};

/**
 * The safetensors reference implementation refuses headers over 100 MB (its MAX_HEADER_SIZE):
 * even checkpoints with hundreds of thousands of tensors stay far below, and it bounds the
 * memory a corrupt or hostile length field can make us allocate.
 */
export const MAX_HEADER_BYTES = 100_000_000;

/** No real tensor has this many dimensions; caps work on a malformed shape. */
export const MAX_RANK = 16;

export const SINGLE_FILE = 'model.safetensors';
export const INDEX_FILE = 'model.safetensors.index.json';

export class SafetensorsError extends Error {
  override name = 'SafetensorsError';
}

export interface TensorInfo {
  name: string;
  dtype: SafetensorsDtype;
  shape: number[];
  /** The file (relative to the model folder) holding the tensor. */
  file: string;
  /** Absolute byte offsets [start, end) of the tensor's data within `file`. */
  start: number;
  end: number;
}

export interface SafetensorsHeader {
  file: string;
  tensors: TensorInfo[];
  metadata: Record<string, string>;
  /** Byte offset of the data section (8 + header length). */
  dataStart: number;
  fileSize: number;
}

export interface Checkpoint {
  readonly source: FileSource;
  /** The safetensors files, in the order they were opened. */
  readonly files: string[];
  /** All tensors by name, in file order. */
  readonly tensors: ReadonlyMap<string, TensorInfo>;
  /** `__metadata__` of the first file (sharded checkpoints normally repeat it). */
  readonly metadata: Record<string, string>;
  /** Sum of all tensors' data sizes in bytes. */
  readonly totalBytes: number;
  /** The tensor's description; throws a SafetensorsError naming the checkpoint when it has no such tensor. */
  get(name: string): TensorInfo;
  has(name: string): boolean;
  /** Bytes [start, end) of one tensor's data (relative to the tensor; whole tensor by default). */
  read(name: string, start?: number, end?: number): Promise<Uint8Array>;
}

export function elementCount(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

function isDtype(s: unknown): s is SafetensorsDtype {
  return typeof s === 'string' && Object.prototype.hasOwnProperty.call(DTYPE_BYTES, s);
}

function isIndex(n: unknown): n is number {
  return typeof n === 'number' && Number.isSafeInteger(n) && n >= 0;
}

/**
 * Validates a header's JSON against the file: known dtypes, integer shapes, offsets inside the
 * data section, sizes equal to shape × dtype and no two tensors sharing bytes.
 */
export function parseHeader(headerBytes: Uint8Array, file: string, fileSize: number): SafetensorsHeader {
  const where = `safetensors file '${file}'`;
  const dataStart = 8 + headerBytes.length;
  let raw: unknown;
  try {
    raw = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(headerBytes));
  } catch (e) {
    throw new SafetensorsError(`${where}: header is not valid UTF-8 JSON (${(e as Error).message})`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new SafetensorsError(`${where}: header must be a JSON object`);
  }
  const dataSize = fileSize - dataStart;
  const metadata: Record<string, string> = {};
  const tensors: TensorInfo[] = [];
  for (const [name, entry] of Object.entries(raw as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) {
        throw new SafetensorsError(`${where}: __metadata__ must be an object of strings`);
      }
      for (const [k, v] of Object.entries(entry as Record<string, unknown>)) {
        if (typeof v !== 'string') throw new SafetensorsError(`${where}: __metadata__.${k} must be a string, got ${typeof v}`);
        metadata[k] = v;
      }
      continue;
    }
    const t = entry as { dtype?: unknown; shape?: unknown; data_offsets?: unknown } | null;
    if (typeof t !== 'object' || t === null) throw new SafetensorsError(`${where}: tensor '${name}' is not an object`);
    if (!isDtype(t.dtype)) {
      throw new SafetensorsError(
        `${where}: tensor '${name}' has unsupported dtype ${JSON.stringify(t.dtype)} (supported: ${Object.keys(DTYPE_BYTES).join(', ')})`,
      );
    }
    const shape = t.shape;
    if (!Array.isArray(shape) || shape.length > MAX_RANK || !shape.every(isIndex)) {
      throw new SafetensorsError(`${where}: tensor '${name}' has an invalid shape ${JSON.stringify(shape)}`);
    }
    const offs = t.data_offsets;
    if (!Array.isArray(offs) || offs.length !== 2 || !isIndex(offs[0]) || !isIndex(offs[1]) || offs[1] < offs[0]) {
      throw new SafetensorsError(`${where}: tensor '${name}' has invalid data_offsets ${JSON.stringify(offs)}`);
    }
    const [begin, end] = offs as [number, number];
    const want = elementCount(shape) * DTYPE_BYTES[t.dtype];
    if (end - begin !== want) {
      throw new SafetensorsError(
        `${where}: tensor '${name}' (${t.dtype} ${JSON.stringify(shape)}) needs ${want} bytes but data_offsets [${begin}, ${end}] hold ${end - begin}`,
      );
    }
    if (end > dataSize) {
      throw new SafetensorsError(
        `${where}: tensor '${name}' data_offsets [${begin}, ${end}] run past the data section (${Math.max(0, dataSize)} bytes): the file is truncated or corrupt`,
      );
    }
    tensors.push({ name, dtype: t.dtype, shape: shape as number[], file, start: dataStart + begin, end: dataStart + end });
  }
  const byStart = [...tensors].sort((a, b) => a.start - b.start || a.end - b.end);
  for (let i = 1; i < byStart.length; i++) {
    const prev = byStart[i - 1]!;
    const cur = byStart[i]!;
    if (cur.start < prev.end) {
      throw new SafetensorsError(`${where}: tensors '${prev.name}' and '${cur.name}' overlap in the data section`);
    }
  }
  return { file, tensors: byStart, metadata, dataStart, fileSize };
}

/** Reads and validates the header of one safetensors file of `src`. */
export async function readHeader(src: FileSource, file: string): Promise<SafetensorsHeader> {
  const fileSize = await src.size(file);
  if (fileSize === undefined) throw new SafetensorsError(`no file '${file}' in ${src.name}`);
  const where = `safetensors file '${file}' in ${src.name}`;
  if (fileSize < 8) throw new SafetensorsError(`${where} is truncated: ${fileSize} bytes, shorter than the 8-byte header length`);
  const lenBytes = await src.range(file, 0, 8);
  const view = new DataView(lenBytes.buffer, lenBytes.byteOffset, 8);
  const len = view.getUint32(0, true) + view.getUint32(4, true) * 2 ** 32;
  if (len > MAX_HEADER_BYTES) {
    throw new SafetensorsError(`${where}: header length ${len} exceeds the ${MAX_HEADER_BYTES}-byte limit; this is not a safetensors file or it is corrupt`);
  }
  if (8 + len > fileSize) {
    throw new SafetensorsError(`${where}: header length ${len} is larger than the file (${fileSize} bytes): the file is truncated or not safetensors`);
  }
  const headerBytes = await src.range(file, 8, 8 + len);
  try {
    return parseHeader(headerBytes, file, fileSize);
  } catch (e) {
    if (e instanceof SafetensorsError) e.message = e.message.replace(`safetensors file '${file}'`, where);
    throw e;
  }
}

interface IndexJson {
  weight_map: Record<string, string>;
}

function parseIndex(text: string, where: string): IndexJson {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new SafetensorsError(`${where} is not valid JSON (${(e as Error).message})`);
  }
  const wm = (raw as { weight_map?: unknown } | null)?.weight_map;
  if (typeof wm !== 'object' || wm === null || Array.isArray(wm)) throw new SafetensorsError(`${where} has no weight_map object`);
  for (const [k, v] of Object.entries(wm)) {
    if (typeof v !== 'string') throw new SafetensorsError(`${where}: weight_map['${k}'] must be a file name`);
  }
  return { weight_map: wm as Record<string, string> };
}

/**
 * Opens a model folder's safetensors weights: the shards named by model.safetensors.index.json
 * when it exists, else model.safetensors. Reads headers only.
 */
export async function openCheckpoint(src: FileSource): Promise<Checkpoint> {
  const indexText = await src.text(INDEX_FILE);
  let headers: SafetensorsHeader[];
  if (indexText !== undefined) {
    const where = `${INDEX_FILE} in ${src.name}`;
    const index = parseIndex(indexText, where);
    const shards = [...new Set(Object.values(index.weight_map))];
    if (shards.length === 0) throw new SafetensorsError(`${where} lists no tensors`);
    headers = [];
    for (const shard of shards) {
      if ((await src.size(shard)) === undefined) {
        throw new SafetensorsError(`shard '${shard}' listed in ${INDEX_FILE} is missing from ${src.name}`);
      }
      headers.push(await readHeader(src, shard));
    }
    const inShard = new Map(headers.map((h) => [h.file, new Set(h.tensors.map((t) => t.name))]));
    for (const [name, shard] of Object.entries(index.weight_map)) {
      if (!inShard.get(shard)!.has(name)) throw new SafetensorsError(`${where} puts tensor '${name}' in '${shard}', which has no such tensor`);
    }
  } else if ((await src.size(SINGLE_FILE)) !== undefined) {
    headers = [await readHeader(src, SINGLE_FILE)];
  } else {
    throw new SafetensorsError(`no ${SINGLE_FILE} or ${INDEX_FILE} in ${src.name}: is this a Hugging Face model folder with safetensors weights?`);
  }
  return makeCheckpoint(src, headers);
}

function makeCheckpoint(src: FileSource, headers: SafetensorsHeader[]): Checkpoint {
  const tensors = new Map<string, TensorInfo>();
  let totalBytes = 0;
  for (const h of headers) {
    for (const t of h.tensors) {
      const prev = tensors.get(t.name);
      if (prev) throw new SafetensorsError(`tensor '${t.name}' appears in both '${prev.file}' and '${t.file}' in ${src.name}`);
      tensors.set(t.name, t);
      totalBytes += t.end - t.start;
    }
  }
  const get = (name: string): TensorInfo => {
    const t = tensors.get(name);
    if (!t) throw new SafetensorsError(`checkpoint in ${src.name} has no tensor '${name}'`);
    return t;
  };
  return {
    source: src,
    files: headers.map((h) => h.file),
    tensors,
    metadata: headers[0]?.metadata ?? {},
    totalBytes,
    get,
    has: (name) => tensors.has(name),
    async read(name, start = 0, end?) {
      const t = get(name);
      const size = t.end - t.start;
      const stop = end ?? size;
      if (!(0 <= start && start <= stop && stop <= size)) {
        throw new SafetensorsError(`read of tensor '${name}' bytes [${start}, ${stop}) is outside its ${size} bytes`);
      }
      return src.range(t.file, t.start + start, t.start + stop);
    },
  };
}
