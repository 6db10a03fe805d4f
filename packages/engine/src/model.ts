// loadModel: an HF model folder (path, URL or picked files) → weights on the GPU, and
// sessions that run tokens through them with a KV cache.

import { type ModelConfig, ConfigError } from './config.ts';
import { type Gpu, getGpu } from './device.ts';
import { BYTES_PER_ELEMENT, type WeightDtype } from './dtype.ts';
import { toFileSource } from './files.ts';
import { KernelCache } from './kernel.ts';
import { parseConfig } from './models/family.ts';
import type { OpContext } from './ops/context.ts';
import { createLogitsReducer, MAX_TOP_K, parseRows, rowResultWords, type LogitsReducer, type ReducedRow } from './ops/logits.ts';
import { type Checkpoint, openCheckpoint } from './safetensors.ts';
import { Decoder } from './transformer.ts';
import { GLU_BLOCK } from './ops/linear-epilogue.ts';
import type { StepProfiler } from './profiler.ts';
import type { DtypeOption, FileSource, LoadOptions, Model, ModelInfo, RowScore, Session, TopK } from './types.ts';
import { type DecoderWeights, expectedTensors, loadDecoderWeights } from './weights.ts';
import { tiledRows } from './tiles.ts';
import { inactiveExpertBytes, isSparseLayer, plannedTensorBytes } from './moe-weights.ts';
import { LOAD_TIME_QUANT, type PrequantConfig, type QuantFormat, quantBytes, readQuantizationConfig } from './quant.ts';

export class ModelLoadError extends Error {
  override name = 'ModelLoadError';
}

export class ContextOverflowError extends Error {
  override name = 'ContextOverflowError';
}

/** Tokens one prefill step runs: bounds activation memory; longer prompts take several steps. */
const MAX_STEP_TOKENS = 256;
/** Rows of logits kept per step when every position's logits are asked for (scoring, drafts). */
const MAX_LOGIT_ROWS = 64;
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
  const stored = ckpt.has('model.embed_tokens.weight') ? ckpt.get('model.embed_tokens.weight').dtype : undefined;
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
    if (!isSparseLayer(c, i) && c.intermediate_size % GLU_BLOCK.software === 0 && alike(mlp)) groups.push(mlp);
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
  const perToken = 3 * c.hidden_size + 2 * (c.num_attention_heads + c.num_key_value_heads) * c.head_dim + 3 * c.intermediate_size;
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
  return { ...c, num_hidden_layers: n, layer_windows: c.layer_windows.slice(0, n) };
}

const gib = (n: number) => `${(n / 2 ** 30).toFixed(2)} GiB`;

export async function loadModel(source: string | FileSource, opts: LoadOptions = {}): Promise<Model> {
  const src = toFileSource(source);
  const raw = await readConfig(src);
  const config = keepLayers(parseConfig(raw), opts.numLayers);
  const ckpt = await openCheckpoint(src);
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
  const plan = planMemory(config, dtype, maxContext, {
    ...(opts.quantize ? { quantize: opts.quantize } : {}),
    ...(prequant ? { prequant, isPrequantized: (prefix: string) => ckpt.has(`${prefix}.qweight`) } : {}),
    tiles,
  });
  const available = opts.maxMemoryBytes ?? (await availableMemory(gpu));
  const stored = prequant ? `${dtype}, linear layers ${prequant.method} int4` : opts.quantize ? `${dtype}, linear layers ${opts.quantize}` : dtype;
  if (available !== undefined && plan.total > available)
    throw new ModelLoadError(
      `model too large for this adapter: needs ${gib(plan.total)} (weights ${gib(plan.weightBytes)} in ${stored}, KV cache ${gib(plan.kvBytes)} for ${maxContext} tokens) but ${gib(available)} is available; try a smaller --max-context, dtype or --quantize`,
    );
  const rowBytes = config.hidden_size * BYTES_PER_ELEMENT[dtype];
  if (rowBytes > gpu.info.limits.maxStorageBufferBindingSize)
    throw new ModelLoadError(`one weight row (${rowBytes} bytes) exceeds this adapter's maxStorageBufferBindingSize (${gpu.info.limits.maxStorageBufferBindingSize})`);

  const kernels = new KernelCache(gpu.device);
  gpu.device.pushErrorScope('out-of-memory');
  const quant = { ...(opts.quantize ? { quantize: opts.quantize } : {}), ...(prequant ? { prequant } : {}) };
  const weights = await loadDecoderWeights(gpu.device, ckpt, config, dtype, opts.onProgress, quant, { tiles, gluBlock: GLU_BLOCK[variant], kernels });
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
  const sessions = new Set<DecoderSession>();
  return {
    gpu,
    info,
    createSession(o = {}) {
      const s = new DecoderSession(ctx, config, weights, Math.min(o.maxContext ?? maxContext, config.max_position_embeddings), () => sessions.delete(s));
      sessions.add(s);
      return s;
    },
    dispose() {
      for (const s of [...sessions]) s.dispose();
      weights.destroy();
    },
  };
}

class DecoderSession implements Session {
  private len = 0;
  private decoder: Decoder;
  private reducer: LogitsReducer;
  private pending: GPUCommandEncoder | undefined;
  /** Rows of logits the last step left in the logits buffer. */
  private logitRows = 0;
  private disposed = false;
  /** When set, every op is timed (see StepProfiler); reads collect the timings. */
  profiler: StepProfiler | undefined;

  constructor(
    private readonly ctx: OpContext,
    private readonly c: ModelConfig,
    weights: DecoderWeights,
    readonly maxContext: number,
    private readonly onDispose: () => void,
  ) {
    this.decoder = new Decoder(ctx, c, weights, {
      maxContext,
      maxTokens: MAX_STEP_TOKENS,
      maxLogitRows: Math.min(MAX_LOGIT_ROWS, Math.floor(ctx.limits.maxStorageBufferBindingSize / (c.vocab_size * 4))),
    });
    this.reducer = createLogitsReducer(ctx, this.decoder.logits, c.vocab_size);
  }

  get length(): number {
    return this.len;
  }

  forward(tokens: ArrayLike<number>, opts: { allLogits?: boolean } = {}): void {
    this.check();
    const n = tokens.length;
    if (n === 0) throw new RangeError('forward() needs at least one token');
    if (this.len + n > this.maxContext)
      throw new ContextOverflowError(`${this.len} cached + ${n} new tokens exceed the context of ${this.maxContext} tokens`);
    const ids = Uint32Array.from(tokens as ArrayLike<number>);
    for (const id of ids)
      if (id >= this.c.vocab_size) throw new RangeError(`token id ${id} is outside the vocabulary (size ${this.c.vocab_size})`);
    const maxRows = this.decoder.opts.maxLogitRows;
    if (opts.allLogits && n > maxRows) throw new RangeError(`allLogits is limited to ${maxRows} tokens per forward; got ${n}`);
    const step = this.decoder.opts.maxTokens;
    for (let at = 0; at < n; at += step) {
      const count = Math.min(step, n - at);
      const last = at + count === n;
      // ids are rewritten for each step, so the previous step must be submitted first.
      this.flush();
      this.ctx.device.queue.writeBuffer(this.decoder.ids, 0, ids, at, count);
      const enc = this.ctx.device.createCommandEncoder();
      const rows = last && opts.allLogits ? count : 1;
      this.decoder.encode(enc, count, this.len, rows, this.profiler);
      this.pending = enc;
      this.len += count;
      this.logitRows = rows;
    }
  }

  async argmax(row?: number): Promise<number> {
    const r = this.keptRow(row);
    this.submitReduction((pass) => this.reducer.encodeArgmax(pass, r * this.c.vocab_size));
    const id = await this.reducer.readArgmax();
    await this.profiler?.collect();
    return id;
  }

  async topK(k: number, row?: number): Promise<TopK> {
    const r = this.keptRow(row);
    this.submitReduction((pass) => this.reducer.encodeTopK(pass, k, r * this.c.vocab_size));
    const top = await this.reducer.readTopK();
    await this.profiler?.collect();
    return top;
  }

  async logits(row?: number): Promise<Float32Array> {
    const r = this.keptRow(row);
    const V = this.c.vocab_size;
    const staging = this.ctx.device.createBuffer({ size: V * 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    const enc = this.takeEncoder();
    enc.copyBufferToBuffer(this.decoder.logits, r * V * 4, staging, 0, V * 4);
    this.profiler?.finish(enc);
    this.ctx.device.queue.submit([enc.finish()]);
    await staging.mapAsync(GPUMapMode.READ);
    const out = new Float32Array(staging.getMappedRange().slice(0));
    staging.unmap();
    staging.destroy();
    await this.profiler?.collect();
    return out;
  }

  async reduceRows(rows: readonly number[], k: number, targets?: readonly (number | undefined)[]): Promise<RowScore[]> {
    if (targets && targets.length !== rows.length) throw new RangeError(`reduceRows: ${targets.length} targets for ${rows.length} rows`);
    const V = this.c.vocab_size;
    // Checked before the pending forward is taken, so a bad argument loses no work.
    if (!(Number.isInteger(k) && k >= 0 && k <= Math.min(MAX_TOP_K, V))) throw new RangeError(`reduceRows: k ${k} outside 0..${Math.min(MAX_TOP_K, V)}`);
    const reduced: ReducedRow[] = rows.map((row, i) => {
      const t = targets?.[i];
      if (t !== undefined && !(Number.isInteger(t) && t >= 0 && t < V)) throw new RangeError(`reduceRows: target id ${t} is outside the vocabulary (size ${V})`);
      return t === undefined ? { offset: this.keptRow(row) * V } : { offset: this.keptRow(row) * V, target: t };
    });
    if (reduced.length === 0) return [];
    const bytes = reduced.length * rowResultWords(k) * 4;
    const staging = this.ctx.device.createBuffer({ size: bytes, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST, label: 'reduced rows readback' });
    try {
      const enc = this.takeEncoder();
      this.reducer.encodeRows(enc, k, reduced, staging);
      this.profiler?.finish(enc);
      this.ctx.device.queue.submit([enc.finish()]);
      await staging.mapAsync(GPUMapMode.READ);
      const words = new Uint32Array(staging.getMappedRange().slice(0));
      staging.unmap();
      await this.profiler?.collect();
      return parseRows(words, k, reduced);
    } finally {
      staging.destroy();
    }
  }

  truncate(length: number): void {
    this.check();
    if (!(Number.isInteger(length) && length >= 0 && length <= this.len)) throw new RangeError(`cannot truncate ${this.len} cached tokens to ${length}`);
    // Stale cache rows past `length` are overwritten by the next forward and never read before.
    this.len = length;
    this.logitRows = 0;
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.flush();
    this.decoder.destroy();
    this.reducer.destroy();
    this.onDispose();
  }

  /** Index in the logits buffer of position `row` (default: the last forwarded one). */
  private keptRow(row: number | undefined): number {
    this.check();
    if (this.logitRows === 0) throw new Error('no logits yet: call forward() first');
    if (row === undefined) return this.logitRows - 1;
    const r = row - (this.len - this.logitRows);
    if (!(Number.isInteger(row) && r >= 0 && r < this.logitRows))
      throw new RangeError(`logits of position ${row} are not kept (have positions ${this.len - this.logitRows}..${this.len - 1}; forward with allLogits)`);
    return r;
  }

  /** Appends a logits reduction to the pending step and submits them together. */
  private submitReduction(encode: (pass: GPUComputePassEncoder) => void): void {
    const enc = this.takeEncoder();
    const pass = this.profiler ? this.profiler.pass(enc, 'sampling') : enc.beginComputePass();
    encode(pass);
    pass.end();
    this.profiler?.finish(enc);
    this.ctx.device.queue.submit([enc.finish()]);
  }

  private takeEncoder(): GPUCommandEncoder {
    const enc = this.pending ?? this.ctx.device.createCommandEncoder();
    this.pending = undefined;
    return enc;
  }

  private flush(): void {
    if (!this.pending) return;
    this.profiler?.finish(this.pending);
    this.ctx.device.queue.submit([this.pending.finish()]);
    this.pending = undefined;
  }

  private check(): void {
    if (this.disposed) throw new Error('session was disposed');
  }
}

export { ConfigError };
