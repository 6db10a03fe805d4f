// Creating storage buffers from host data and reading them back.

// GPUBufferUsage is a global only once a WebGPU implementation is loaded, so read it late.
export function storageUsage(): number {
  return GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
}

/** A storage buffer holding `data` (its size rounded up to 4 bytes, at least 4). */
export function bufferFrom(device: GPUDevice, data: ArrayBufferView, label?: string): GPUBuffer {
  const size = Math.max(4, Math.ceil(data.byteLength / 4) * 4);
  const buf = device.createBuffer({ size, usage: storageUsage(), mappedAtCreation: true, ...(label ? { label } : {}) });
  new Uint8Array(buf.getMappedRange()).set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  buf.unmap();
  return buf;
}

export function emptyBuffer(device: GPUDevice, bytes: number, label?: string): GPUBuffer {
  return device.createBuffer({ size: Math.max(4, Math.ceil(bytes / 4) * 4), usage: storageUsage(), ...(label ? { label } : {}) });
}

/** Copies `bytes` of `src` from `offset` to a mappable buffer and returns them. */
export async function readBuffer(device: GPUDevice, src: GPUBuffer, bytes = src.size, offset = 0): Promise<ArrayBuffer> {
  const size = Math.ceil(bytes / 4) * 4;
  const staging = device.createBuffer({ size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const enc = device.createCommandEncoder();
  enc.copyBufferToBuffer(src, offset, staging, 0, size);
  device.queue.submit([enc.finish()]);
  await staging.mapAsync(GPUMapMode.READ);
  const out = staging.getMappedRange().slice(0, bytes);
  staging.unmap();
  staging.destroy();
  return out;
}

export async function readF32(device: GPUDevice, src: GPUBuffer, count?: number, offsetElems = 0): Promise<Float32Array> {
  const n = count ?? (src.size / 4 - offsetElems);
  return new Float32Array(await readBuffer(device, src, n * 4, offsetElems * 4));
}

export async function readU32(device: GPUDevice, src: GPUBuffer, count?: number, offsetElems = 0): Promise<Uint32Array> {
  const n = count ?? (src.size / 4 - offsetElems);
  return new Uint32Array(await readBuffer(device, src, n * 4, offsetElems * 4));
}
