// Compiles the WGSL kernel families in kernels/ into pipelines, one per variant key.
//
// A family is one .wgsl file holding one or more kernels, each a named `@compute` entry point
// (`main` where the file has one). Variants are chosen by defines (`#if NAME` / `#else` /
// `#endif`, for types and code paths) and WGSL `override` constants (for sizes);
// `#include NAME` pastes a shared snippet (kernels/NAME.wgsl, e.g. the 16-bit weight
// unpacking several families use); nothing else rewrites the source. A kernel's uniform is
// `struct <Entry>Params { ... }` (entry kvWrite: KvWriteParams) where its file declares one, else
// the file's `struct Params { ... }`, with 4-byte scalar fields; the byte packer is derived from
// that declaration, so the layout is written once.

import { WGSL } from './kernels.generated.ts';

export type Defines = Record<string, boolean | undefined>;
export type Constants = Record<string, number>;

export class KernelError extends Error {
  override name = 'KernelError';
}

export function kernelSource(family: string): string {
  const src = WGSL[family];
  if (src === undefined) throw new KernelError(`unknown kernel family '${family}' (have: ${Object.keys(WGSL).join(', ')})`);
  return src;
}

/** Resolves `#if NAME`, `#if !NAME`, `#else`, `#endif` and `#include NAME` lines. Nesting is allowed. */
export function preprocess(src: string, defines: Defines, including: string[] = []): string {
  const out: string[] = [];
  const stack: { active: boolean; parentActive: boolean }[] = [];
  let active = true;
  for (const line of src.split('\n')) {
    const t = line.trim();
    const m = /^#if\s+(!?)(\w+)\s*$/.exec(t);
    if (m) {
      const cond = !!defines[m[2]!] !== (m[1] === '!');
      stack.push({ active, parentActive: active });
      active = active && cond;
      stack[stack.length - 1]!.active = cond;
      continue;
    }
    if (t === '#else') {
      const top = stack[stack.length - 1];
      if (!top) throw new KernelError('#else without #if');
      active = top.parentActive && !top.active;
      continue;
    }
    if (t === '#endif') {
      const top = stack.pop();
      if (!top) throw new KernelError('#endif without #if');
      active = top.parentActive;
      continue;
    }
    const inc = /^#include\s+(\w+)\s*$/.exec(t);
    if (inc) {
      if (!active) continue;
      const name = inc[1]!;
      if (including.includes(name)) throw new KernelError(`#include cycle: ${[...including, name].join(' -> ')}`);
      out.push(preprocess(kernelSource(name), defines, [...including, name]));
      continue;
    }
    if (t.startsWith('#')) throw new KernelError(`unknown directive: ${t}`);
    if (active) out.push(line);
  }
  if (stack.length) throw new KernelError('#if without #endif');
  return out.join('\n');
}

type ScalarType = 'u32' | 'i32' | 'f32';
export interface ParamsLayout {
  fields: { name: string; type: ScalarType }[];
  byteSize: number;
}

/** Reads `struct Params { a: u32, b: f32, ... }` from a kernel's source. */
export function paramsLayout(src: string, struct = 'Params'): ParamsLayout {
  const m = new RegExp(`struct\\s+${struct}\\s*\\{([^}]*)\\}`).exec(src);
  if (!m) throw new KernelError(`no struct ${struct} in kernel source`);
  const fields = m[1]!
    .replace(/\/\/.*$/gm, '')
    .split(/[,;\n]/)
    .map((s) => s.trim())
    .filter(Boolean)
    .map((s) => {
      const f = /^(\w+)\s*:\s*(u32|i32|f32)$/.exec(s);
      if (!f) throw new KernelError(`struct ${struct}: only u32/i32/f32 fields are supported, got '${s}'`);
      return { name: f[1]!, type: f[2] as ScalarType };
    });
  // Uniform structs are padded to 16 bytes.
  return { fields, byteSize: Math.max(16, Math.ceil((fields.length * 4) / 16) * 16) };
}

export function packParams(layout: ParamsLayout, values: Record<string, number>): ArrayBuffer {
  const buf = new ArrayBuffer(layout.byteSize);
  const dv = new DataView(buf);
  const known = new Set(layout.fields.map((f) => f.name));
  for (const k of Object.keys(values)) if (!known.has(k)) throw new KernelError(`unknown param '${k}'`);
  layout.fields.forEach((f, i) => {
    const v = values[f.name];
    if (v === undefined) throw new KernelError(`missing param '${f.name}'`);
    if (f.type === 'f32') dv.setFloat32(i * 4, v, true);
    else if (f.type === 'i32') dv.setInt32(i * 4, v, true);
    else {
      if (!(v >= 0 && v <= 0xffffffff && Number.isInteger(v))) throw new KernelError(`param '${f.name}' = ${v} is not a u32`);
      dv.setUint32(i * 4, v, true);
    }
  });
  return buf;
}

/** The names of the `@compute` entry points in a kernel's (preprocessed) source, in order. */
export function entryPoints(src: string): string[] {
  return [...src.matchAll(/@compute\b[^;{]*?\bfn\s+(\w+)/g)].map((m) => m[1]!);
}

export interface Kernel {
  pipeline: GPUComputePipeline;
  layout: ParamsLayout | undefined;
  family: string;
  key: string;
}

interface Module {
  module: GPUShaderModule;
  code: string;
  entries: string[];
}

/** The uniform layout of entry point `entry`: its own `<Entry>Params`, else the file's `Params`, else none. */
function entryLayout(code: string, entry: string): ParamsLayout | undefined {
  const own = `${entry[0]!.toUpperCase()}${entry.slice(1)}Params`;
  for (const struct of [own, 'Params']) if (new RegExp(`struct\\s+${struct}\\s*\\{`).test(code)) return paramsLayout(code, struct);
  return undefined;
}

/**
 * Pipelines compiled lazily and cached by (family, defines, entry point, constants). The entry
 * points of one (family, defines) share one shader module.
 */
export class KernelCache {
  private cache = new Map<string, Kernel>();
  private modules = new Map<string, Module>();
  constructor(
    readonly device: GPUDevice,
    private readonly baseDefines: Defines = {},
  ) {}

  get(family: string, defines: Defines = {}, constants: Constants = {}, entry = 'main'): Kernel {
    const all = { ...this.baseDefines, ...defines };
    const defKey = Object.keys(all)
      .filter((k) => all[k])
      .sort()
      .join(',');
    const constKey = Object.keys(constants)
      .sort()
      .map((k) => `${k}=${constants[k]}`)
      .join(',');
    const moduleKey = `${family}|${defKey}`;
    const key = `${family}${entry === 'main' ? '' : `.${entry}`}|${defKey}|${constKey}`;
    let k = this.cache.get(key);
    if (!k) {
      const m = this.module(moduleKey, family, all);
      if (!m.entries.includes(entry)) {
        throw new KernelError(`kernel family '${family}' has no entry point '${entry}' with these defines (has: ${m.entries.join(', ') || 'none'})`);
      }
      const pipeline = this.device.createComputePipeline({
        layout: 'auto',
        compute: { module: m.module, entryPoint: entry, constants },
        label: key,
      });
      k = { pipeline, layout: entryLayout(m.code, entry), family, key };
      this.cache.set(key, k);
    }
    return k;
  }

  private module(key: string, family: string, defines: Defines): Module {
    let m = this.modules.get(key);
    if (!m) {
      let code = preprocess(kernelSource(family), defines);
      if (defines.F16) code = `enable f16;\n${code}`;
      if (defines.SUBGROUPS) code = `enable subgroups;\n${code}`;
      const module = this.device.createShaderModule({ code, label: key });
      m = { module, code, entries: entryPoints(code) };
      this.modules.set(key, m);
    }
    return m;
  }
}

export function uniformBuffer(device: GPUDevice, kernel: Kernel, values: Record<string, number>): GPUBuffer {
  if (!kernel.layout) throw new KernelError(`kernel ${kernel.key} has no Params struct`);
  const data = packParams(kernel.layout, values);
  const buf = device.createBuffer({
    size: data.byteLength,
    usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    label: `${kernel.family} params`,
  });
  device.queue.writeBuffer(buf, 0, data);
  return buf;
}

export type Binding = GPUBuffer | GPUBufferBinding;

/** Bind group for bindings 0..n-1 in order. */
export function bindGroup(device: GPUDevice, kernel: Kernel, bindings: Binding[]): GPUBindGroup {
  return device.createBindGroup({
    layout: kernel.pipeline.getBindGroupLayout(0),
    entries: bindings.map((b, i) => ({ binding: i, resource: 'buffer' in b ? b : { buffer: b } })),
    label: kernel.key,
  });
}

export function dispatch(
  pass: GPUComputePassEncoder,
  kernel: Kernel,
  group: GPUBindGroup,
  x: number,
  y = 1,
  z = 1,
): void {
  pass.setPipeline(kernel.pipeline);
  pass.setBindGroup(0, group);
  pass.dispatchWorkgroups(x, y, z);
}

/** Splits a 1-D count of workgroups over x and y to stay under maxComputeWorkgroupsPerDimension. */
export function grid(workgroups: number, maxPerDim = 65535): [number, number] {
  if (workgroups <= maxPerDim) return [Math.max(1, workgroups), 1];
  const y = Math.ceil(workgroups / maxPerDim);
  return [Math.ceil(workgroups / y), y];
}
