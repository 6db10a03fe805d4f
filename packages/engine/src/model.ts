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
import { expectedTensors, loadDecoderWeights } from './weights.ts';
import { tiledRows } from './tiles.ts';
import { inactiveExpertBytes, isSparseLayer, plannedTensorBytes } from './moe-weights.ts';
import { LOAD_TIME_QUANT, type PrequantConfig, type QuantFormat, quantBytes, readQuantizationConfig } from './quant.ts';

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

/** How the plan counts the decoder's linear layers: quantized while loading, or as a GPTQ/AWQ checkpoint stores them. */
export interface PlannedQuantization {
  quantize?: QuantFormat;
  prequant?: PrequantConfig;
  /**
   * With prequant: whether the layer `prefix` (e.g. model.layers.0.mlp.up_proj) is stored
   * quantized (its checkpoint has `prefix.qweight`); every decoder linear layer when omitted.
   */
  isPrequantized?: (prefix: string) => boolean;
  /** Linear layers (and a tied embedding table) in row tiles, padded to whole tiles (src/tiles.ts). */
  tiles?: boolean;
}

/** A dense decoder layer's linear weight (the matrices quantization applies to; MoE experts are not). */
const DECODER_LINEAR = /^model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight$/;

/** Bytes of a quantized [N, K] linear layer as loaded: packed weights and scales, plus GPTQ's act-order column permutation. */
function quantizedLinearBytes(q: PlannedQuantization, N: number, K: number): number | undefined {
  const rows = q.tiles ? tiledRows(N) : N;
  if (q.prequant) {
    const groupSize = q.prequant.groupSize === -1 ? K : q.prequant.groupSize;
    return quantBytes({ format: 'q4', groupSize }, rows, K) + (q.prequant.descAct ? 4 * K : 0);
  }
  if (q.quantize) return quantBytes(LOAD_TIME_QUANT[q.quantize], rows, K);
  return undefined;
}

/**
 * The projections weights.ts stacks (fuse.ts stackRefusal says when it can): each layer's q, k, v
 * and gate, up, when all parts of a group are stored alike. Planned for the software layout's
 * gate/up blocks (the only layout where stacking changes the bytes: tiles are padded once).
 */
function stackedGroups(c: ModelConfig, quant: PlannedQuantization): string[][] {
  const groups: string[][] = [];
  const alike = (names: string[]) => {
    if (!quant.prequant) return true;
    if (quant.prequant.descAct) return !names.some((n) => quant.isPrequantized?.(n.slice(0, -'.weight'.length)) ?? true);
    return new Set(names.map((n) => quant.isPrequantized?.(n.slice(0, -'.weight'.length)) ?? true)).size === 1;
  };
  for (let i = 0; i < c.num_hidden_layers; i++) {
    const p = `model.layers.${i}.`;
    const qkv = ['q', 'k', 'v'].map((x) => `${p}self_attn.${x}_proj.weight`);
    if (alike(qkv)) groups.push(qkv);
    const mlp = ['gate', 'up'].map((x) => `${p}mlp.${x}_proj.weight`);
    if (!isSparseLayer(c, i) && c.block.activation === 'silu' && c.intermediate_size % GLU_BLOCK.software === 0 && alike(mlp)) groups.push(mlp);
  }
  return groups;
}

/**
 * Memory a model needs: weights in `dtype` (the decoder's linear layers in their quantized
 * format when `quant` says so), the KV cache for maxContext tokens, and one step's activations.
 */
export function planMemory(c: ModelConfig, dtype: WeightDtype, maxContext: number, quant: PlannedQuantization = {}): MemoryPlan {
  let weightBytes = 0;
  let quantizedBytes = 0;
  const tensors = expectedTensors(c);
  const isQuantized = (name: string) => DECODER_LINEAR.test(name) && (!quant.prequant || (quant.isPrequantized?.(name.slice(0, -'.weight'.length)) ?? true));
  // Bytes of a matrix [N, K] named `name` (or a stack of such matrices), as loaded.
  const matrixBytes = (name: string, N: number, K: number) => {
    const quantized = isQuantized(name) ? quantizedLinearBytes(quant, N, K) : undefined;
    if (quantized !== undefined) quantizedBytes += quantized;
    // Tiled matrices (src/upload.ts) are padded to whole tiles: chunks hold whole tiles but the last.
    const tiled = quant.tiles && K % 8 === 0 && (DECODER_LINEAR.test(name) || name === 'lm_head.weight' || (name === 'model.embed_tokens.weight' && c.tie_word_embeddings));
    weightBytes += quantized ?? plannedTensorBytes(name, tiled ? [tiledRows(N), K] : [N, K], dtype);
  };
  // q|k|v and gate|up are stacked at load (weights.ts) and padded to tiles once, as one matrix.
  const stacked = new Set<string>();
  for (const group of stackedGroups(c, quant)) {
    const [N, K] = [group.reduce((n, name) => n + tensors.get(name)![0]!, 0), tensors.get(group[0]!)![1]!];
    matrixBytes(group[0]!, N, K);
    group.forEach((name) => stacked.add(name));
  }
  for (const [name, shape] of tensors) {
    if (stacked.has(name)) continue;
    if (shape.length === 2) matrixBytes(name, shape[0]!, shape[1]!);
    else weightBytes += plannedTensorBytes(name, shape, dtype);
  }
  const kvBytes = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 4 * maxContext;
  const T = MAX_STEP_TOKENS;
  // A block output on its way to a post-norm or a scaled residual add takes one more row of hidden.
  const blockOut = c.block.norms !== 'pre' || c.block.residualScale !== 1 ? c.hidden_size : 0;
  const perToken = 3 * c.hidden_size + blockOut + 2 * (c.num_attention_heads + c.num_key_value_heads) * c.head_dim + 3 * c.intermediate_size;
  const activationBytes = 4 * (T * perToken + MAX_LOGIT_ROWS * c.vocab_size);
  return { weightBytes, quantizedBytes, kvBytes, activationBytes, total: weightBytes + kvBytes + activationBytes };
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
  const plan = planMemory(config, dtype, kvTokens, {
    ...(opts.quantize ? { quantize: opts.quantize } : {}),
    ...(prequant ? { prequant, isPrequantized: (prefix: string) => ckpt.has(`${prefix}.qweight`) } : {}),
    tiles,
  });
  const available = opts.maxMemoryBytes ?? (await availableMemory(gpu));
  const stored = prequant ? `${dtype}, linear layers ${prequant.method} int4` : opts.quantize ? `${dtype}, linear layers ${opts.quantize}` : dtype;
  if (available !== undefined && plan.total > available)
    throw new ModelLoadError(
      `model too large for this adapter: needs ${gib(plan.total)} (weights ${gib(plan.weightBytes)} in ${stored}, KV cache ${gib(plan.kvBytes)} for ${kvTokens} tokens) but ${gib(available)} is available; try a smaller --max-context or --parallel, dtype or --quantize`,
    );
  const rowBytes = config.hidden_size * BYTES_PER_ELEMENT[dtype];
  if (rowBytes > gpu.info.limits.maxStorageBufferBindingSize)
    throw new ModelLoadError(`one weight row (${rowBytes} bytes) exceeds this adapter's maxStorageBufferBindingSize (${gpu.info.limits.maxStorageBufferBindingSize})`);

  const kernels = new KernelCache(gpu.device);
  gpu.device.pushErrorScope('out-of-memory');
  const quant = { ...(opts.quantize ? { quantize: opts.quantize } : {}), ...(prequant ? { prequant } : {}) };
  const weights = await loadDecoderWeights(gpu.device, ckpt, config, dtype, opts.onProgress, quant, { tiles, gluBlock: GLU_BLOCK[variant], kernels }, full.num_hidden_layers);
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
    bytesPerToken:
      plan.weightBytes - (config.tie_word_embeddings ? 0 : config.vocab_size * rowBytes) - inactiveExpertBytes(config, dtype) -
      plan.quantizedBytes + weights.quantized.bytes,
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
