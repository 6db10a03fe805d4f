// The engine's public surface: load a model from a folder of files, run sessions and batches on
// it, and the errors and types of that. Everything else (kernels, ops, loaders, formats) is
// internal; bench and tests reach it through '@webgpu-chat/engine/internal' (src/internal.ts),
// and the test helpers through '@webgpu-chat/engine/testing' (test/testing.ts).

export { loadModel, ModelLoadError, ContextOverflowError } from './model.ts';
export { getGpu, describeGpu, type Gpu, type DeviceInfo } from './device.ts';
export { directorySource, urlSource, blobSource, toFileSource, FileSourceError } from './files.ts';
export { KvCacheFullError, BatchError } from './batch.ts';
export { scoreTokens } from './scoring.ts';
export type { Model, ModelInfo, Session, Batch, Sequence, StepItem, StepTime, RowScore, TopK, LoadOptions, LoadProgress, DtypeOption, FileSource } from './types.ts';
