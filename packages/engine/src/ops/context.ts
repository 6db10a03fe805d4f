// What every op needs to build its dispatches, and the params uniform each dispatch owns.
//
// An op is built once per model (pipelines, buffers and bind groups made up front) and
// then encoded into each forward pass with the sizes of that step (tokens, position).
// Each forward is its own submission, so rewriting a params uniform before encoding is
// ordered correctly against the previous step's use of it.

import type { DeviceInfo } from '../device.ts';
import { type Kernel, type KernelCache, packParams } from '../kernel.ts';

export type Variant = 'software' | 'gpu';

export interface OpContext {
  device: GPUDevice;
  kernels: KernelCache;
  /** Kernel shapes: 'software' for CPU-backed adapters (one thread per row), 'gpu' otherwise. */
  variant: Variant;
  /** The device has shader-f16 enabled. */
  f16: boolean;
  /** The device has subgroups enabled. */
  subgroups: boolean;
  /** The subgroup size when subgroups are enabled and the adapter has only one (lavapipe: 8). */
  subgroupSize?: number;
  limits: DeviceInfo['limits'];
}

/** A kernel's params uniform; `set` writes it only when a value changed. */
export class ParamsBuffer {
  readonly buffer: GPUBuffer;
  private last = '';
  constructor(
    private readonly device: GPUDevice,
    private readonly kernel: Kernel,
    values?: Record<string, number>,
  ) {
    if (!kernel.layout) throw new Error(`kernel ${kernel.key} has no Params struct`);
    this.buffer = device.createBuffer({
      size: kernel.layout.byteSize,
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
      label: `${kernel.family} params`,
    });
    if (values) this.set(values);
  }

  set(values: Record<string, number>): void {
    const key = JSON.stringify(values);
    if (key === this.last) return;
    this.last = key;
    this.device.queue.writeBuffer(this.buffer, 0, packParams(this.kernel.layout!, values));
  }

  destroy(): void {
    this.buffer.destroy();
  }
}
