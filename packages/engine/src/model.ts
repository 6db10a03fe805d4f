// loadModel: an HF model folder (path, URL or picked files) → weights on the GPU, and
// sessions that run tokens through them with a KV cache.

import { type ModelConfig, ConfigError } from './config.ts';
import { type Gpu, getGpu } from './device.ts';
import { BYTES_PER_ELEMENT, type WeightDtype } from './dtype.ts';
import { toFileSource } from './files.ts';
import { KernelCache } from './kernel.ts';
import { familyOf, parseConfig } from './models/family.ts';
import { EMBED } from './models/tensors.ts';
import type { OpContext } from './ops/context.ts';
import { type Checkpoint, openCheckpoint } from './safetensors.ts';
import { ContextOverflowError, DecoderBatch, MAX_LOGIT_ROWS, MAX_STEP_TOKENS } from './batch.ts';
import { DecoderSession } from './session.ts';
import { GLU_BLOCK } from './ops/linear-epilogue.ts';
import type { BatchOptions, DtypeOption, FileSource, LoadOptions, Model, ModelInfo } from './types.ts';
import { loadDecoderWeights } from './weights.ts';
import { type LoadPlan, type PlanOptions, planLoad } from './load-plan.ts';
import { permutedLayers } from './quant-upload.ts';
import { LOAD_TIME_QUANT, readQuantizationConfig } from './quant.ts';

export class ModelLoadError extends Error {
  override name = 'ModelLoadError';
}

const DEFAULT_MAX_CONTEXT = 4096;

async function readConfig(src: FileSource): Promise<Record<string, unknown>> {
  const text = await src.text('config.json');
  if (text === undefined) throw new ModelLoadError(`no config.json in ${src.name}: is this a Hugging Face model folder?`);
  try {
    return JSON.parse(text) as Record<string, unknown>;
  } catch (e) {
    throw new ModelLoadError(`config.json in ${src.name} is not valid JSON: ${(e as Error).message}`);
  }
}

const SAFETENSORS_DTYPES: Record<string, WeightDtype | undefined> = { F32: 'f32', F16: 'f16', BF16: 'bf16' };

/** 'auto' follows what the checkpoint actually stores (its embedding table), then config.json. */
function chooseDtype(opt: DtypeOption, ckpt: Checkpoint, c: ModelConfig): WeightDtype {
  if (opt !== 'auto') return opt;
  const stored = ckpt.has(EMBED) ? ckpt.get(EMBED).dtype : undefined;
  return (stored && SAFETENSORS_DTYPES[stored]) ?? c.dtype;
}

export interface MemoryPlan {
  weightBytes: number;
  /** Of weightBytes: the linear layers held quantized (packed weights and scales). */
  quantizedBytes: number;
  kvBytes: number;
  activationBytes: number;
  total: number;
}

/** Memory a load plan needs: its weights, the KV cache for maxContext tokens, and one step's activations. */
export function memoryOf(plan: LoadPlan, c: ModelConfig, maxContext: number): MemoryPlan {
  const kvBytes = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 4 * maxContext;
  const T = MAX_STEP_TOKENS;
  // A block output on its way to a post-norm or a scaled residual add takes one more row of hidden.
  const blockOut = c.block.norms !== 'pre' || c.block.residualScale !== 1 ? c.hidden_size : 0;
  const perToken = 3 * c.hidden_size + blockOut + 2 * (c.num_attention_heads + c.num_key_value_heads) * c.head_dim + 3 * c.intermediate_size;
  const activationBytes = 4 * (T * perToken + MAX_LOGIT_ROWS * c.vocab_size);
  const { weightBytes, quantizedBytes } = plan;
  return { weightBytes, quantizedBytes, kvBytes, activationBytes, total: weightBytes + kvBytes + activationBytes };
}

/**
 * Memory a model needs: weights in `dtype` (the decoder's linear layers in their quantized
 * format when `o` says so), laid out as the loader would (load-plan.ts), the KV cache for
 * maxContext tokens, and one step's activations.
 */
export function planMemory(c: ModelConfig, dtype: WeightDtype, maxContext: number, o: PlanOptions = {}): MemoryPlan {
  return memoryOf(planLoad(c, dtype, o), c, maxContext);
}

/** Memory the adapter can give: system RAM for a CPU-backed adapter under Node; otherwise unknown. */
async function availableMemory(gpu: Gpu): Promise<number | undefined> {
  const g = globalThis as { process?: { versions?: { node?: string } }; Deno?: unknown };
  if (!gpu.info.isSoftware || !g.process?.versions?.node) return undefined;
  const os = await import('node:os');
  return os.totalmem();
}

/** The config of the first `n` layers (a truncated-layer draft); the whole config without n. */
function keepLayers(c: ModelConfig, n: number | undefined): ModelConfig {
  if (n === undefined) return c;
  if (!(Number.isInteger(n) && n >= 1 && n <= c.num_hidden_layers))
    throw new ModelLoadError(`numLayers must be an integer in 1..${c.num_hidden_layers} (the model's layers), got ${n}`);
  return { ...c, num_hidden_layers: n, layer_windows: c.layer_windows.slice(0, n), layer_ropes: c.layer_ropes.slice(0, n) };
}

const gib = (n: number) => `${(n / 2 ** 30).toFixed(2)} GiB`;

export async function loadModel(source: string | FileSource, opts: LoadOptions = {}): Promise<Model> {
  const src = toFileSource(source);
  const raw = await readConfig(src);
  const full = parseConfig(raw);
  const config = keepLayers(full, opts.numLayers);
  const family = familyOf(config);
  const opened = await openCheckpoint(src);
  const ckpt = family.sanitize ? family.sanitize(opened, config) : opened;
  const dtype = chooseDtype(opts.dtype ?? 'auto', ckpt, config);
  const gpu = opts.gpu ?? (await getGpu());
  const maxContext = Math.min(opts.maxContext ?? DEFAULT_MAX_CONTEXT, config.max_position_embeddings);

  // GPT-OSS's MXFP4 covers only its experts, which moe-weights.ts loads as they are.
  const prequant = config.moe?.mxfp4 ? undefined : readQuantizationConfig(raw);
  if (prequant && opts.quantize)
    throw new ModelLoadError(`${src.name} is already quantized (${prequant.method}); load it without quantize '${opts.quantize}'`);
  if (opts.quantize !== undefined && !(opts.quantize in LOAD_TIME_QUANT))
    throw new ModelLoadError(`quantize '${String(opts.quantize)}' is not supported (supported: ${Object.keys(LOAD_TIME_QUANT).join(', ')})`);

  // CPU-backed adapters get the software kernels, whose linear weights are stored in row tiles.
  const variant = opts.variant ?? (gpu.info.isSoftware ? 'software' : 'gpu');
  const tiles = variant === 'software';
  // A batch's pool may hold several sequences' context: plan for what the caller will allocate.
  const kvTokens = Math.max(opts.kvTokens ?? maxContext, maxContext);
  const plan = planLoad(config, dtype, {
    ...(opts.quantize ? { quantize: opts.quantize } : {}),
    ...(prequant ? { prequant, isPrequantized: (prefix: string) => ckpt.has(`${prefix}.qweight`), isPermuted: await permutedLayers(ckpt, prequant) } : {}),
    tiles,
    gluBlock: GLU_BLOCK[variant],
  });
  const memory = memoryOf(plan, config, kvTokens);
  const available = opts.maxMemoryBytes ?? (await availableMemory(gpu));
  const stored = prequant ? `${dtype}, linear layers ${prequant.method} int4` : opts.quantize ? `${dtype}, linear layers ${opts.quantize}` : dtype;
  if (available !== undefined && memory.total > available)
    throw new ModelLoadError(
      `model too large for this adapter: needs ${gib(memory.total)} (weights ${gib(memory.weightBytes)} in ${stored}, KV cache ${gib(memory.kvBytes)} for ${kvTokens} tokens) but ${gib(available)} is available; try a smaller --max-context or --parallel, dtype or --quantize`,
    );
  const rowBytes = config.hidden_size * BYTES_PER_ELEMENT[dtype];
  if (rowBytes > gpu.info.limits.maxStorageBufferBindingSize)
    throw new ModelLoadError(`one weight row (${rowBytes} bytes) exceeds this adapter's maxStorageBufferBindingSize (${gpu.info.limits.maxStorageBufferBindingSize})`);

  const kernels = new KernelCache(gpu.device);
  gpu.device.pushErrorScope('out-of-memory');
  const weights = await loadDecoderWeights(gpu.device, ckpt, config, plan, opts.onProgress, kernels, full.num_hidden_layers);
  const oom = await gpu.device.popErrorScope();
  if (oom) {
    weights.destroy();
    throw new ModelLoadError(`the adapter ran out of memory while loading ${gib(plan.weightBytes)} of weights: ${oom.message}`);
  }

  const ctx: OpContext = {
    device: gpu.device,
    kernels,
    variant,
    f16: gpu.hasF16,
    subgroups: gpu.hasSubgroups,
    ...(gpu.subgroupSize ? { subgroupSize: gpu.subgroupSize } : {}),
    limits: gpu.info.limits,
  };
  const kvBytesPerToken = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * 4;
  const info: ModelInfo = {
    modelType: config.model_type,
    dtype,
    weightBytes: weights.bytes,
    kvBytesPerToken,
    vocabSize: config.vocab_size,
    maxPositionEmbeddings: config.max_position_embeddings,
    maxContext,
    bytesPerToken: weights.bytesPerToken,
    weightBytesByFormat: weights.bytesByFormat,
    ...(prequant
      ? { quantization: { method: prequant.method, bits: 4 as const, groupSize: prequant.groupSize } }
      : opts.quantize
        ? { quantization: { method: opts.quantize, bits: opts.quantize === 'q8' ? (8 as const) : (4 as const), groupSize: LOAD_TIME_QUANT[opts.quantize].groupSize } }
        : {}),
    config,
    variant: ctx.variant,
  };
  const batches = new Set<DecoderBatch>();
  const createBatch = (o: BatchOptions): DecoderBatch => {
    const b = new DecoderBatch(ctx, config, weights, { ...o, maxContext: o.maxContext ?? maxContext }, () => batches.delete(b));
    batches.add(b);
    return b;
  };
  return {
    gpu,
    info,
    createSession(o = {}) {
      // One sequence with blocks for its whole context: it never waits for the pool.
      const ctxLen = Math.min(o.maxContext ?? maxContext, config.max_position_embeddings);
      return new DecoderSession(createBatch({ maxSequences: 1, maxContext: ctxLen, kvTokens: ctxLen }), config.vocab_size);
    },
    createBatch,
    dispose() {
      for (const b of [...batches]) b.dispose();
      weights.destroy();
    },
  };
}

export { ConfigError, ContextOverflowError };
