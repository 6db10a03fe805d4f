// Shared test helpers: the device, seeded random inputs and the comparison against
// float64 references (relative L2 error and max abs error; NaN never passes).
import { expect } from 'vitest';
import { getGpu, type Gpu } from '../src/device.ts';
import { KernelCache } from '../src/kernel.ts';

export async function testGpu(): Promise<Gpu> {
  return getGpu({ driver: (process.env.WEBGPU_DRIVER as 'lavapipe' | 'swiftshader' | undefined) ?? 'lavapipe' });
}

let caches = new WeakMap<GPUDevice, KernelCache>();
export function kernels(gpu: Gpu): KernelCache {
  let c = caches.get(gpu.device);
  if (!c) caches.set(gpu.device, (c = new KernelCache(gpu.device)));
  return c;
}

/** Mulberry32: small, fast and good enough for test data. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Uniform in [-scale, scale). */
export function randomArray(n: number, seed: number, scale = 1): Float32Array {
  const r = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (r() * 2 - 1) * scale;
  return out;
}

export interface Diff {
  relL2: number;
  maxAbs: number;
  nan: boolean;
}

export function diff(got: ArrayLike<number>, want: ArrayLike<number>): Diff {
  if (got.length !== want.length) throw new Error(`length ${got.length} != ${want.length}`);
  let num = 0;
  let den = 0;
  let maxAbs = 0;
  let nan = false;
  for (let i = 0; i < got.length; i++) {
    const g = got[i]!;
    const w = want[i]!;
    if (Number.isNaN(g) || Number.isNaN(w) || !Number.isFinite(g)) nan = true;
    const d = g - w;
    num += d * d;
    den += w * w;
    maxAbs = Math.max(maxAbs, Math.abs(d));
  }
  return { relL2: Math.sqrt(num / Math.max(den, 1e-300)), maxAbs, nan };
}

/** Asserts got ≈ want: relative L2 error ≤ relL2 and max abs error ≤ maxAbs (if given). */
export function expectClose(got: ArrayLike<number>, want: ArrayLike<number>, tol: { relL2: number; maxAbs?: number }, what = ''): Diff {
  const d = diff(got, want);
  expect(d.nan, `${what}: NaN or Inf in output`).toBe(false);
  expect(d.relL2, `${what}: relative L2 error`).toBeLessThanOrEqual(tol.relL2);
  if (tol.maxAbs !== undefined) expect(d.maxAbs, `${what}: max abs error`).toBeLessThanOrEqual(tol.maxAbs);
  return d;
}

/** RMSNorm of each of `rows` rows of `cols`, as Transformers computes it: x / sqrt(mean(x^2) + eps) * w, in float64. */
export function rmsNormRef(x: Float32Array, w: Float32Array, rows: number, cols: number, eps: number): Float64Array {
  const y = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    let s = 0;
    for (let i = 0; i < cols; i++) s += x[r * cols + i]! ** 2;
    const scale = 1 / Math.sqrt(s / cols + eps);
    for (let i = 0; i < cols; i++) y[r * cols + i] = x[r * cols + i]! * scale * w[i]!;
  }
  return y;
}
