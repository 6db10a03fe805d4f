// The engine's internals for bench and tests ('@webgpu-chat/engine/internal'): everything the
// public entry (src/index.ts) exports, and the pieces below it. Not a stable API.

export * from './index.ts';
export * from './types.ts';
export * from './device.ts';
export * from './dtype.ts';
export * from './buffers.ts';
export * from './kernel.ts';
export * from './config.ts';
export { supportedModelTypes, parseConfig } from './models/family.ts';
export { planMemory, type MemoryPlan } from './model.ts';
export { openCheckpoint, parseHeader, SafetensorsError, type Checkpoint, type TensorInfo } from './safetensors.ts';
export { writeSafetensors, type TensorToWrite } from './safetensors-writer.ts';
export { StepProfiler, type OpKind } from './profiler.ts';
export { ScoringError, MAX_SCORE_ROWS, MAX_SCORE_TOP_K, type ScoreOptions, type TokenScore } from './scoring.ts';
export { inactiveExpertBytes } from './moe-weights.ts';
export { expectedTensors } from './load-plan.ts';
export { createLinear, type LinearOptions, type LinearWeight } from './ops/linear.ts';
