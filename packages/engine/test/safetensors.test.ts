import { execFileSync } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { blobSource, directorySource } from '../src/files.ts';
import {
  DTYPE_BYTES,
  INDEX_FILE,
  MAX_HEADER_BYTES,
  SafetensorsError,
  openCheckpoint,
  readHeader,
  type SafetensorsDtype,
} from '../src/safetensors.ts';
import { writeSafetensors } from '../src/safetensors-writer.ts';

/** A safetensors file with a hand-written header, for inputs the writer refuses to make. */
function rawFile(header: unknown, dataBytes: number, lengthField?: number): Uint8Array<ArrayBuffer> {
  const json = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + dataBytes);
  new DataView(out.buffer).setUint32(0, lengthField ?? json.length, true);
  out.set(json, 8);
  return out;
}

function source(files: Record<string, Uint8Array<ArrayBuffer>>) {
  return blobSource(new Map(Object.entries(files).map(([k, v]) => [k, new Blob([v])])), 'test-folder');
}

const f32 = (...v: number[]) => new Float32Array(v);

describe('safetensors writer and reader', () => {
  it('round-trips tensors of every dtype with metadata, aligned data and a space-padded header', async () => {
    const dtypes = Object.keys(DTYPE_BYTES) as SafetensorsDtype[];
    const tensors = dtypes.map((dtype, i) => {
      const shape = [2, i + 1];
      const data = new Uint8Array(2 * (i + 1) * DTYPE_BYTES[dtype]).map((_, j) => (j * 7 + i) & 0xff);
      return { name: `t.${dtype}`, dtype, shape, data };
    });
    const file = writeSafetensors(tensors, { format: 'pt' });
    const headerLen = new DataView(file.buffer).getUint32(0, true);
    expect(headerLen % 8).toBe(0);
    const header = new TextDecoder().decode(file.subarray(8, 8 + headerLen));
    expect(header.trimEnd().endsWith('}')).toBe(true);
    expect(header.length - header.trimEnd().length).toBeLessThan(8);

    const ck = await openCheckpoint(source({ 'model.safetensors': file }));
    expect(ck.metadata).toEqual({ format: 'pt' });
    expect(ck.files).toEqual(['model.safetensors']);
    expect(ck.totalBytes).toBe(tensors.reduce((s, t) => s + t.data.length, 0));
    for (const t of tensors) {
      const info = ck.get(t.name);
      expect(info.dtype).toBe(t.dtype);
      expect(info.shape).toEqual(t.shape);
      expect(info.start % DTYPE_BYTES[t.dtype]).toBe(0);
      expect(await ck.read(t.name)).toEqual(t.data);
      expect(await ck.read(t.name, 1, 3)).toEqual(t.data.subarray(1, 3));
    }
    await expect(ck.read('t.F32', 0, 999)).rejects.toThrow(/outside its 16 bytes/);
    expect(() => ck.get('nope')).toThrow(/checkpoint in test-folder has no tensor 'nope'/);
  });

  it('reads a sharded checkpoint through its index', async () => {
    const a = writeSafetensors([{ name: 'a', dtype: 'F32', shape: [2], data: f32(1, 2) }]);
    const b = writeSafetensors([
      { name: 'b', dtype: 'F32', shape: [1], data: f32(3) },
      { name: 'c', dtype: 'BF16', shape: [2], data: new Uint16Array([0x3f80, 0x4000]) },
    ]);
    const index = JSON.stringify({ metadata: { total_size: 16 }, weight_map: { a: 's1.safetensors', b: 's2.safetensors', c: 's2.safetensors' } });
    const files = { [INDEX_FILE]: new TextEncoder().encode(index), 's1.safetensors': a, 's2.safetensors': b };
    const ck = await openCheckpoint(source(files));
    expect(ck.files).toEqual(['s1.safetensors', 's2.safetensors']);
    expect([...ck.tensors.keys()].sort()).toEqual(['a', 'b', 'c']);
    expect(ck.get('c').file).toBe('s2.safetensors');
    expect(new Float32Array((await ck.read('a')).slice().buffer)).toEqual(f32(1, 2));
    expect(new Uint16Array((await ck.read('c')).slice().buffer)).toEqual(new Uint16Array([0x3f80, 0x4000]));

    await expect(openCheckpoint(source({ ...files, 's2.safetensors': a }))).rejects.toThrow(
      /puts tensor 'b' in 's2.safetensors', which has no such tensor/,
    );
    const { ['s2.safetensors']: _, ...noShard } = files;
    await expect(openCheckpoint(source(noShard))).rejects.toThrow(/shard 's2.safetensors' listed in model.safetensors.index.json is missing from test-folder/);
    const ax = writeSafetensors([
      { name: 'a', dtype: 'F32', shape: [1], data: f32(5) },
      { name: 'x', dtype: 'F32', shape: [1], data: f32(6) },
    ]);
    const dupIndex = JSON.stringify({ weight_map: { a: 's1.safetensors', b: 's2.safetensors', x: 's3.safetensors' } });
    await expect(
      openCheckpoint(source({ [INDEX_FILE]: new TextEncoder().encode(dupIndex), 's1.safetensors': a, 's2.safetensors': b, 's3.safetensors': ax })),
    ).rejects.toThrow(/tensor 'a' appears in both 's1.safetensors' and 's3.safetensors'/);
    await expect(openCheckpoint(source({ [INDEX_FILE]: new TextEncoder().encode('{"weight_map": 3}') }))).rejects.toThrow(/no weight_map object/);
  });

  it('refuses to write inconsistent tensors', () => {
    expect(() => writeSafetensors([{ name: 'x', dtype: 'F32', shape: [3], data: f32(1, 2) }])).toThrow(/needs 12 bytes, got 8/);
    expect(() =>
      writeSafetensors([
        { name: 'x', dtype: 'F32', shape: [1], data: f32(1) },
        { name: 'x', dtype: 'F32', shape: [1], data: f32(1) },
      ]),
    ).toThrow(/duplicate/);
  });
});

describe('safetensors bad input', () => {
  const good = { w: { dtype: 'F32', shape: [2, 2], data_offsets: [0, 16] } };
  const open = (bytes: Uint8Array<ArrayBuffer>) => openCheckpoint(source({ 'model.safetensors': bytes }));

  it('names the folder when there is no checkpoint', async () => {
    await expect(openCheckpoint(source({}))).rejects.toThrow(/no model.safetensors or model.safetensors.index.json in test-folder/);
  });

  it('rejects a file shorter than the length field', async () => {
    await expect(open(new Uint8Array(5))).rejects.toThrow(/'model.safetensors' in test-folder is truncated: 5 bytes/);
  });

  it('rejects a header length larger than the file', async () => {
    await expect(open(rawFile(good, 16, 4096))).rejects.toThrow(/header length 4096 is larger than the file/);
  });

  it('rejects a header length above the cap', async () => {
    const bytes = rawFile(good, 16);
    const dv = new DataView(bytes.buffer);
    dv.setUint32(0, 0, true);
    dv.setUint32(4, 1, true); // 2^32
    await expect(open(bytes)).rejects.toThrow(new RegExp(`exceeds the ${MAX_HEADER_BYTES}-byte limit`));
  });

  it('rejects a truncated data section', async () => {
    const file = writeSafetensors([{ name: 'w', dtype: 'F32', shape: [4], data: f32(1, 2, 3, 4) }]);
    await expect(open(file.subarray(0, file.length - 3))).rejects.toThrow(/tensor 'w' data_offsets \[0, 16\] run past the data section \(13 bytes\): the file is truncated/);
  });

  it('rejects offsets out of range', async () => {
    await expect(open(rawFile({ w: { dtype: 'F32', shape: [2], data_offsets: [24, 32] } }, 16))).rejects.toThrow(/tensor 'w'.*run past the data section/);
    await expect(open(rawFile({ w: { dtype: 'F32', shape: [2], data_offsets: [8, 0] } }, 16))).rejects.toThrow(/invalid data_offsets \[8,0\]/);
    await expect(open(rawFile({ w: { dtype: 'F32', shape: [2], data_offsets: [-8, 0] } }, 16))).rejects.toThrow(/invalid data_offsets/);
  });

  it('rejects overlapping tensors', async () => {
    const header = {
      a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] },
      b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] },
    };
    await expect(open(rawFile(header, 16))).rejects.toThrow(/tensors 'a' and 'b' overlap/);
  });

  it('rejects a data size that does not match shape × dtype', async () => {
    await expect(open(rawFile({ w: { dtype: 'BF16', shape: [3, 2], data_offsets: [0, 16] } }, 16))).rejects.toThrow(
      /tensor 'w' \(BF16 \[3,2\]\) needs 12 bytes but data_offsets \[0, 16\] hold 16/,
    );
  });

  it('rejects an unknown dtype, naming tensor and dtype', async () => {
    await expect(open(rawFile({ w: { dtype: 'F4', shape: [4], data_offsets: [0, 2] } }, 16))).rejects.toThrow(/tensor 'w' has unsupported dtype "F4"/);
  });

  it('rejects bad shapes, bad metadata and non-JSON headers', async () => {
    await expect(open(rawFile({ w: { dtype: 'F32', shape: [2.5], data_offsets: [0, 10] } }, 16))).rejects.toThrow(/tensor 'w' has an invalid shape/);
    await expect(open(rawFile({ __metadata__: { n: 3 } }, 0))).rejects.toThrow(/__metadata__.n must be a string/);
    const bytes = rawFile(good, 16);
    bytes[8] = 0x41;
    await expect(open(bytes)).rejects.toThrow(/header is not valid UTF-8 JSON/);
  });

  it('reads a header without reading the data', async () => {
    const reads: [number, number][] = [];
    const inner = source({ 'model.safetensors': writeSafetensors([{ name: 'w', dtype: 'U8', shape: [1 << 20], data: new Uint8Array(1 << 20) }]) });
    const spy = { ...inner, name: inner.name, range: (p: string, s: number, e: number) => (reads.push([s, e]), inner.range(p, s, e)) };
    const h = await readHeader(spy, 'model.safetensors');
    expect(h.tensors[0]!.end - h.tensors[0]!.start).toBe(1 << 20);
    expect(reads.every(([s, e]) => e - s < 1000)).toBe(true);
  });
});

describe('safetensors interop with the Python reference implementation', () => {
  const py = fileURLToPath(new URL('../../../.venv/bin/python', import.meta.url));
  // Python writes a file we read, and reads back the file we write, reporting what it sees.
  const script = `
import sys, json, numpy as np
from safetensors.numpy import save_file, load_file
d = sys.argv[1]
save_file({"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([-1, 2], dtype=np.int64),
           "c": np.array([1.5, -2.25], dtype=np.float16), "d": np.array([True, False, True])}, d + "/py.safetensors", metadata={"k": "v"})
t = load_file(d + "/ours.safetensors")
print(json.dumps({k: [str(v.dtype), list(v.shape), v.astype(np.float64).ravel().tolist()] for k, v in sorted(t.items())}))
`;

  it('reads files it writes and writes files it reads', async (ctx) => {
    const dir = await mkdtemp(join(tmpdir(), 'safetensors-py-'));
    try {
      await writeFile(
        join(dir, 'ours.safetensors'),
        writeSafetensors([
          { name: 'x', dtype: 'F32', shape: [2, 2], data: f32(1, 2, 3, 4) },
          { name: 'y', dtype: 'I8', shape: [3], data: new Int8Array([-1, 0, 7]) },
          { name: 'z', dtype: 'F16', shape: [1], data: new Uint16Array([0x3c00]) },
        ]),
      );
      let out: string;
      try {
        out = execFileSync(py, ['-c', script, dir], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
      } catch {
        ctx.skip(`no ${py} with safetensors and numpy (scripts/setup-python.sh makes it)`);
        return;
      }
      expect(JSON.parse(out)).toEqual({ x: ['float32', [2, 2], [1, 2, 3, 4]], y: ['int8', [3], [-1, 0, 7]], z: ['float16', [1], [1]] });
      const src = directorySource(dir);
      const h = await readHeader(src, 'py.safetensors');
      expect(h.metadata).toEqual({ k: 'v' });
      const byName = Object.fromEntries(h.tensors.map((t) => [t.name, t]));
      expect(byName.a).toMatchObject({ dtype: 'F32', shape: [2, 3] });
      expect(byName.b).toMatchObject({ dtype: 'I64', shape: [2] });
      expect(byName.d).toMatchObject({ dtype: 'BOOL', shape: [3] });
      const file = new Uint8Array(await readFile(join(dir, 'py.safetensors')));
      const at = (n: string) => file.slice(byName[n]!.start, byName[n]!.end).buffer;
      expect([...new Float32Array(at('a'))]).toEqual([0, 1, 2, 3, 4, 5]);
      expect([...new BigInt64Array(at('b'))]).toEqual([-1n, 2n]);
      expect([...new Uint16Array(at('c'))]).toEqual([0x3e00, 0xc080]);
      expect([...new Uint8Array(at('d'))]).toEqual([1, 0, 1]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
