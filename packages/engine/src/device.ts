// Finds a GPUDevice the same way in every runtime: navigator.gpu where it exists
// (browsers, Deno), else Dawn from the `webgpu` npm package (Node).

import { throttleDawnPolling } from './dawn-polling.ts';
import { requestAdapterQuietly } from './dawn-stderr.ts';

export interface DeviceInfo {
  vendor: string;
  architecture: string;
  description: string;
  /** A CPU-backed adapter (lavapipe, SwiftShader): kernels pick their software-friendly shapes. */
  isSoftware: boolean;
  features: string[];
  limits: {
    maxBufferSize: number;
    maxStorageBufferBindingSize: number;
    maxComputeWorkgroupStorageSize: number;
    maxComputeInvocationsPerWorkgroup: number;
    maxComputeWorkgroupSizeX: number;
    maxStorageBuffersPerShaderStage: number;
    maxComputeWorkgroupsPerDimension: number;
  };
  /** Which software Vulkan driver was selected under Node, if any. */
  driver?: string;
}

export interface Gpu {
  device: GPUDevice;
  info: DeviceInfo;
  hasF16: boolean;
  hasSubgroups: boolean;
  /** The subgroup size when subgroups are enabled and the adapter has only one. */
  subgroupSize?: number;
  hasTimestamps: boolean;
}

export interface DeviceOptions {
  /** Under Node on Linux: which software Vulkan driver to use when VK_ICD_FILENAMES is unset. */
  driver?: 'lavapipe' | 'swiftshader' | 'system';
  /** Refuse optional features (to test the f32-only paths on an adapter that has them). */
  disableFeatures?: GPUFeatureName[];
  powerPreference?: GPUPowerPreference;
}

const OPTIONAL_FEATURES: GPUFeatureName[] = ['shader-f16', 'subgroups', 'timestamp-query'];
const REQUESTED_LIMITS = [
  'maxBufferSize',
  'maxStorageBufferBindingSize',
  'maxComputeWorkgroupStorageSize',
  'maxComputeInvocationsPerWorkgroup',
  'maxComputeWorkgroupSizeX',
  'maxStorageBuffersPerShaderStage',
  'maxComputeWorkgroupsPerDimension',
] as const;

export const DRIVER_ICDS: Record<string, string[]> = {
  lavapipe: ['/usr/share/vulkan/icd.d/lvp_icd.json', '/usr/share/vulkan/icd.d/lvp_icd.x86_64.json'],
  swiftshader: ['/usr/lib/chromium/vk_swiftshader_icd.json'],
};

export class NoAdapterError extends Error {
  override name = 'NoAdapterError';
}

// Dawn frees its instance when the object returned by create() is garbage-collected,
// and the process then crashes at the next event processing. Keep it for good.
let dawnInstance: GPU | undefined;
let dawnDriver: string | undefined;

function isNode(): boolean {
  const g = globalThis as { process?: { versions?: { node?: string; deno?: string } }; Deno?: unknown };
  return !!g.process?.versions?.node && !g.Deno;
}

async function nodeGpu(options: DeviceOptions): Promise<GPU> {
  if (dawnInstance) return dawnInstance;
  const fs = await import('node:fs');
  const env = process.env;
  const driver = options.driver ?? (env.WEBGPU_DRIVER as DeviceOptions['driver']) ?? 'lavapipe';
  if (!env.VK_ICD_FILENAMES && driver !== 'system' && process.platform === 'linux') {
    const icd = DRIVER_ICDS[driver]?.find((p) => fs.existsSync(p));
    if (icd) {
      env.VK_ICD_FILENAMES = icd;
      dawnDriver = driver;
    }
  } else if (env.VK_ICD_FILENAMES) {
    dawnDriver = env.VK_ICD_FILENAMES;
  }
  let mod: { create: (flags: string[]) => GPU; globals: Record<string, unknown> };
  try {
    mod = (await import('webgpu')) as unknown as typeof mod;
  } catch (e) {
    throw new NoAdapterError(
      `Could not load the 'webgpu' package (Dawn for Node): ${(e as Error).message}. Run 'pnpm install' from the repository root.`,
    );
  }
  Object.assign(globalThis, mod.globals);
  throttleDawnPolling();
  dawnInstance = mod.create([]);
  return dawnInstance;
}

function noAdapterMessage(): string {
  if (isNode() && process.platform === 'linux') {
    return (
      'No WebGPU adapter found. Without a GPU, install a software Vulkan driver: on Debian 12, ' +
      "'apt-get install -t bookworm-backports mesa-vulkan-drivers libvulkan1' (Mesa 25; bookworm's own Mesa 22 is too old for Dawn), " +
      "or run 'bash scripts/setup.sh'. Set VK_ICD_FILENAMES to choose a driver."
    );
  }
  return 'No WebGPU adapter found. Use a browser with WebGPU enabled (Chrome/Edge 113+, or --enable-unsafe-webgpu) or Deno with --unstable-webgpu.';
}

/** Returns the process-wide GPU, creating it on first use with the adapter's real limits and optional features. */
let shared: Promise<Gpu> | undefined;
export function getGpu(options: DeviceOptions = {}): Promise<Gpu> {
  shared ??= requestGpu(options).catch((e) => {
    shared = undefined;
    throw e;
  });
  return shared;
}

export async function requestGpu(options: DeviceOptions = {}): Promise<Gpu> {
  const nav = (globalThis as { navigator?: { gpu?: GPU } }).navigator;
  const gpu = nav?.gpu ?? (isNode() ? await nodeGpu(options) : undefined);
  if (!gpu) throw new NoAdapterError(noAdapterMessage());
  const adapterOptions: GPURequestAdapterOptions = { powerPreference: options.powerPreference ?? 'high-performance' };
  const adapter = await (gpu === dawnInstance ? requestAdapterQuietly(gpu, adapterOptions) : gpu.requestAdapter(adapterOptions));
  if (!adapter) throw new NoAdapterError(noAdapterMessage());

  const disabled = new Set(options.disableFeatures ?? []);
  const requiredFeatures = OPTIONAL_FEATURES.filter((f) => adapter.features.has(f) && !disabled.has(f));
  const requiredLimits: Record<string, number> = {};
  for (const name of REQUESTED_LIMITS) requiredLimits[name] = adapter.limits[name];
  const device = await adapter.requestDevice({ requiredFeatures, requiredLimits });
  device.addEventListener?.('uncapturederror', (ev) => {
    console.error('WebGPU error:', (ev as GPUUncapturedErrorEvent).error.message);
  });

  const ai = adapter.info ?? ({} as GPUAdapterInfo);
  const legacyFallback = (adapter as unknown as { isFallbackAdapter?: boolean }).isFallbackAdapter;
  const infoFallback = (ai as unknown as { isFallbackAdapter?: boolean }).isFallbackAdapter;
  const text = `${ai.vendor} ${ai.architecture} ${ai.description} ${ai.device}`.toLowerCase();
  const isSoftware =
    !!legacyFallback || !!infoFallback || /llvmpipe|lavapipe|swiftshader|software|cpu/.test(text);
  const limits = {} as DeviceInfo['limits'];
  for (const name of REQUESTED_LIMITS) limits[name] = device.limits[name];
  const info: DeviceInfo = {
    vendor: ai.vendor ?? '',
    architecture: ai.architecture ?? '',
    description: ai.description ?? '',
    isSoftware,
    features: [...device.features].sort(),
    limits,
    ...(dawnDriver ? { driver: dawnDriver } : {}),
  };
  const sg = ai as unknown as { subgroupMinSize?: number; subgroupMaxSize?: number };
  const fixedSubgroup = device.features.has('subgroups') && sg.subgroupMinSize !== undefined && sg.subgroupMinSize === sg.subgroupMaxSize;
  return {
    device,
    info,
    hasF16: device.features.has('shader-f16'),
    hasSubgroups: device.features.has('subgroups'),
    ...(fixedSubgroup ? { subgroupSize: sg.subgroupMinSize } : {}),
    hasTimestamps: device.features.has('timestamp-query'),
  };
}

export function describeGpu(info: DeviceInfo): string {
  const mib = (n: number) => `${Math.round(n / 2 ** 20)} MiB`;
  const name = [info.vendor, info.architecture, info.description].filter(Boolean).join(' ') || 'unknown adapter';
  return (
    `${name}${info.isSoftware ? ' (software)' : ''}; maxBufferSize ${mib(info.limits.maxBufferSize)}, ` +
    `maxStorageBufferBindingSize ${mib(info.limits.maxStorageBufferBindingSize)}, ` +
    `workgroup storage ${info.limits.maxComputeWorkgroupStorageSize} B; features: ${info.features.join(', ') || 'none'}`
  );
}
