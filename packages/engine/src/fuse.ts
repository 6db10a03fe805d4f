// Stacks linear weights that read the same input into one weight, on the GPU at load time
// (kernels/stack_rows.wgsl), so one dispatch does the work of several and reads x once:
//   split: q, k and v one after another; the op writes each to its own output (LinearWeight.split).
//   glu:   gate and up interleaved in blocks of `block` rows (gate rows, then the same up rows);
//          the op writes silu(gate) * up (LinearWeight.glu, kernels/linear_store.wgsl).
// Any stored layout is stacked the same way (f32/bf16/f16 or q8/q4 words and scales, row-major or
// in row tiles): rows are copied unit by unit into freshly planned chunks, and the parts' buffers
// are released. The block sizes suit each kernel variant (ops/linear-epilogue.ts GLU_BLOCK).

import { storageUsage } from './buffers.ts';
import { BYTES_PER_ELEMENT, type WeightDtype } from './dtype.ts';
import { type KernelCache, grid, packParams } from './kernel.ts';
import { type LinearWeight, type WeightChunk, storedBytes, storedRows } from './ops/linear.ts';
import { type QuantSpec, groupsPerRow, rowWords } from './quant.ts';
import { TILE_ROWS } from './tiles.ts';

export type Stacking = { kind: 'split' } | { kind: 'glu'; block: number };

const WG = 64;
/** Row index past any part's rows: "no blocks" in stack_rows' row formula. */
const NO_BLOCK = 2 ** 31;

/** What stacking looks at of a weight: one held on the GPU (LinearWeight) or one planned (load-plan.ts). */
export interface StackShape {
  dtype: WeightDtype;
  rows: number;
  cols: number;
  tiled?: boolean;
  quant?: QuantSpec & { perm?: unknown };
  bias?: unknown;
  split?: unknown;
  glu?: unknown;
}

/** Why `parts` cannot be stacked as `how`, or undefined when they can. */
export function stackRefusal(parts: readonly StackShape[], how: Stacking): string | undefined {
  const [a] = parts;
  if (!a) return 'no weights';
  if (how.kind === 'split' && parts.length !== 3) return `split stacks 3 weights, got ${parts.length}`;
  if (how.kind === 'glu' && parts.length !== 2) return `glu stacks 2 weights, got ${parts.length}`;
  for (const w of parts) {
    if (w.cols !== a.cols) return `the weights read ${a.cols} and ${w.cols} columns`;
    if (w.dtype !== a.dtype || !!w.quant !== !!a.quant) return 'the weights are stored in different formats';
    if (w.quant && (w.quant.format !== a.quant!.format || w.quant.groupSize !== a.quant!.groupSize)) return 'the weights are quantized differently';
    if (w.quant?.perm) return 'a weight has an act-order column permutation';
    if (!!w.tiled !== !!a.tiled) return 'some weights are tiled and some not';
    if (!!w.bias !== !!a.bias) return 'some weights have a bias and some not';
    if (w.split || w.glu) return 'a weight is already stacked';
  }
  // 16-bit rows must be whole u32 words to be copied word by word.
  if (!a.quant && (a.cols * BYTES_PER_ELEMENT[a.dtype]) % 4 !== 0) return `a ${a.dtype} row of ${a.cols} columns is not whole words`;
  if (how.kind === 'glu') {
    if (parts[1]!.rows !== a.rows) return `gate has ${a.rows} rows and up ${parts[1]!.rows}`;
    if (a.rows % how.block !== 0) return `${a.rows} rows are not whole blocks of ${how.block}`;
  }
  return undefined;
}

/** One buffer kind of a weight (packed weights, or quantized scales): units per row and its buffer per chunk. */
interface Plane {
  units: number;
  wide: boolean;
  buffer(c: WeightChunk): GPUBuffer;
}

function planes(w: LinearWeight): Plane[] {
  if (w.quant) {
    return [
      { units: rowWords(w.quant, w.cols) / 4, wide: true, buffer: (c) => c.buffer },
      { units: groupsPerRow(w.quant, w.cols), wide: false, buffer: (c) => c.scales! },
    ];
  }
  const words = (w.cols * BYTES_PER_ELEMENT[w.dtype]) / 4;
  return [{ units: words % 4 === 0 ? words / 4 : words, wide: words % 4 === 0, buffer: (c) => c.buffer }];
}

/** Fused row of row s of part `i` (kernels/stack_rows.wgsl): block, stride and offset. */
function rowMap(parts: readonly LinearWeight[], i: number, how: Stacking): { block: number; stride: number; offset: number } {
  if (how.kind === 'glu') return { block: how.block, stride: 2 * how.block, offset: i * how.block };
  return { block: NO_BLOCK, stride: 0, offset: parts.slice(0, i).reduce((n, w) => n + w.rows, 0) };
}

const fusedRow = (m: { block: number; stride: number; offset: number }, s: number) => Math.floor(s / m.block) * m.stride + m.offset + (s % m.block);

/** First part row in [lo, hi) whose fused row is at least `f` (hi if none): the map is increasing. */
function firstAtLeast(m: { block: number; stride: number; offset: number }, lo: number, hi: number, f: number): number {
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (fusedRow(m, mid) >= f) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

/**
 * Stacks `parts` (see stackRefusal) into one weight whose chunks each fit one binding, and
 * destroys the parts' buffers (chunks, scales, biases) once the copies are queued.
 */
export function stackWeights(
  device: GPUDevice,
  kernels: KernelCache,
  parts: readonly LinearWeight[],
  how: Stacking,
  opts: { label?: string; /** Most bytes one chunk may bind; default the device's limit. */ maxBindingBytes?: number } = {},
): LinearWeight {
  const label = opts.label ?? 'stacked';
  const refusal = stackRefusal(parts, how);
  if (refusal) throw new Error(`cannot stack these weights: ${refusal}`);
  const a = parts[0]!;
  const rows = parts.reduce((n, w) => n + w.rows, 0);
  const kinds = planes(a);
  const tiled = !!a.tiled;
  const quant = a.quant ? { format: a.quant.format, groupSize: a.quant.groupSize } : undefined;
  const shape = { dtype: a.dtype, cols: a.cols, tiled, ...(quant ? { quant } : {}) };

  // Chunks hold whole tiles and whole gate/up blocks; the packed-weights plane is the largest.
  const limit = opts.maxBindingBytes ?? Math.min(device.limits.maxStorageBufferBindingSize, device.limits.maxBufferSize);
  const multiple = Math.max(tiled ? TILE_ROWS : 1, how.kind === 'glu' ? 2 * how.block : 1);
  const rowBytes = kinds[0]!.units * (kinds[0]!.wide ? 16 : 4);
  const perChunk = Math.floor(Math.floor(limit / rowBytes) / multiple) * multiple;
  if (perChunk < 1) throw new Error(`cannot stack these weights: ${multiple} rows of ${rowBytes} bytes exceed the binding limit of ${limit} bytes`);
  const chunks: WeightChunk[] = [];
  const buffer = (bytes: number, what: string) => device.createBuffer({ size: Math.max(16, bytes), usage: storageUsage(), label: `${label} ${what}` });
  for (let r = 0; r < rows; r += perChunk) {
    const span = { rowStart: r, rows: Math.min(perChunk, rows - r) };
    const what = `[rows ${r}..${r + span.rows})`;
    if (quant) {
      const stored = storedRows(shape, span);
      chunks.push({
        ...span,
        buffer: buffer(stored * rowWords(quant, a.cols) * 4, what),
        scales: buffer(stored * groupsPerRow(quant, a.cols) * 4, `scales ${what}`),
      });
    } else {
      chunks.push({ ...span, buffer: buffer(storedBytes(shape, span), what) });
    }
  }
  const bias = a.bias ? buffer(rows * 4, 'bias') : undefined;

  const kernel = (wide: boolean, tiledCopy: boolean) => kernels.get('stack_rows', { WIDE: wide, TILED: tiledCopy }, { WG });
  const uniforms: GPUBuffer[] = [];
  const enc = device.createCommandEncoder({ label });
  const pass = enc.beginComputePass();
  const copy = (k: ReturnType<typeof kernel>, src: GPUBuffer, dst: GPUBuffer, values: Record<string, number>) => {
    const data = packParams(k.layout!, values);
    const u = device.createBuffer({ size: data.byteLength, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
    device.queue.writeBuffer(u, 0, data);
    uniforms.push(u);
    const group = device.createBindGroup({
      layout: k.pipeline.getBindGroupLayout(0),
      entries: [
        { binding: 0, resource: { buffer: u } },
        { binding: 1, resource: { buffer: src } },
        { binding: 2, resource: { buffer: dst } },
      ],
    });
    pass.setPipeline(k.pipeline);
    pass.setBindGroup(0, group);
    pass.dispatchWorkgroups(...grid(Math.ceil((values.rows! * values.units!) / WG), device.limits.maxComputeWorkgroupsPerDimension));
  };
  parts.forEach((w, i) => {
    const m = rowMap(parts, i, how);
    for (const plane of kinds) {
      const k = kernel(plane.wide, tiled);
      for (const sc of w.chunks) {
        for (const dc of chunks) {
          const first = firstAtLeast(m, sc.rowStart, sc.rowStart + sc.rows, dc.rowStart);
          const end = firstAtLeast(m, first, sc.rowStart + sc.rows, dc.rowStart + dc.rows);
          if (end <= first) continue;
          copy(k, plane.buffer(sc), plane.buffer(dc), { units: plane.units, first, rows: end - first, srcStart: sc.rowStart, dstStart: dc.rowStart, ...m });
        }
      }
    }
    if (bias) copy(kernel(false, false), w.bias!, bias, { units: 1, first: 0, rows: w.rows, srcStart: 0, dstStart: 0, ...m });
  });
  pass.end();
  device.queue.submit([enc.finish()]);
  // Buffers used by queued work stay alive until it completes.
  for (const u of uniforms) u.destroy();
  for (const w of parts) {
    for (const c of w.chunks) {
      c.buffer.destroy();
      c.scales?.destroy();
    }
    w.bias?.destroy();
  }
  return {
    ...shape,
    rows,
    chunks,
    ...(bias ? { bias } : {}),
    ...(how.kind === 'split' ? { split: parts.map((w) => w.rows) as [number, number, number] } : { glu: how.block }),
  };
}
