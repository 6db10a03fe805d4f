// The engine's test helpers for other packages' tests and bench ('@webgpu-chat/engine/testing'):
// generated models, float64 references, Transformers references, paths, seeded randomness.

export { REPO_ROOT, BUNDLED_MODEL } from './paths.ts';
export { rng, testGpu, expectClose } from './harness.ts';
export { writeGeneratedModel, type GeneratedModelOptions } from './generated-model.ts';
export { readTensors, referenceForward } from './reference-model.ts';
export { makeReferenceModel, pythonAvailable, referenceLogits, type ReferenceFamily } from './transformers-reference.ts';
export { makeQuantWeight, makeWeight, opContext } from './weights-helper.ts';
