export * from './types.ts';
export * from './device.ts';
export * from './dtype.ts';
export * from './buffers.ts';
export * from './kernel.ts';
