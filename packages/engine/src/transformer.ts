// The dense decoder's forward pass, read top to bottom:
//   embed [× scale] → per layer (norm, q|k|v, [q/k norm], [RoPE], attention over the KV cache,
//   o_proj [→ norm] + residual, norm, gate|up with act·up, down_proj [→ norm] + residual — or on
//   MoE layers the routed experts, ops/moe.ts) → norm → LM head [→ scale, soft-cap].
// The bracketed steps and where the norms sit are the block variations a family declares
// (ModelConfig.block, the norms its checkpoint names: models/tensors.ts).
// q|k|v and gate|up are one op each where the loader stacked them (fuse.ts). On the GPU variant
// the norm before each of those and before the LM head runs inside that op (LinearOptions.norm);
// the software kernels keep it as its own op, since there it is a cheap pass while applying it in
// the linear kernels adds a per-lane load to every step of their hot loops.
// One Decoder is one batch's run state (activations, paged KV cache) over shared weights;
// every op, buffer and bind group is made here once and re-encoded each step. A step's tokens
// are runs of several sequences (ops/step-meta.ts): the matmuls treat rows alike, RoPE and
// attention read each row's position and block table, and the LM head runs over chosen rows.

import type { ModelConfig } from './config.ts';
import { emptyBuffer, storageUsage } from './buffers.ts';
import type { OpContext } from './ops/context.ts';
import { type KvCache, createAttention, createAttentionPartials, createKvCache } from './ops/attention.ts';
import { createEmbedding } from './ops/embedding.ts';
import { createLinear, type LinearOptions, type LinearWeight } from './ops/linear.ts';
import { normFolds } from './ops/linear-epilogue.ts';
import { createRmsNorm } from './ops/norm.ts';
import { createRope } from './ops/rope.ts';
import { StepMeta, type StepShape, type TokenRun } from './ops/step-meta.ts';
import { createAdd, createScaleCap, createSiluMul } from './ops/elementwise.ts';
import { type ParsedRope, type RopeConfig, ropeInvFreq } from './rope-frequencies.ts';
import type { RopeOp } from './ops/rope.ts';
import { createMoe, createMoeScratch } from './ops/moe.ts';
import { moeOptions } from './moe-weights.ts';
import type { DecoderWeights } from './weights.ts';
import type { OpKind, StepProfiler } from './profiler.ts';

/** The span a uniform binding of x covers (the WebGPU minimum for maxUniformBufferBindingSize). */
const UNIFORM_WINDOW_BYTES = 65536;

interface Encodable {
  kind: OpKind;
  encode(pass: GPUComputePassEncoder, shape: StepShape): void;
  destroy(): void;
}

export interface DecoderOptions {
  /** Most tokens one forward step runs (longer prompts are split into steps). */
  maxTokens: number;
  /** Rows of logits the LM head may write in one step. */
  maxLogitRows: number;
  /** Most sequences (runs) in one step. */
  maxRuns: number;
  /** Positions per KV block. */
  blockSize: number;
  /** KV blocks in each layer's pool. */
  numBlocks: number;
  /** Blocks of the longest sequence. */
  maxBlocks: number;
  /**
   * Batch invariance for steps of every size: run every linear layer through one kernel family,
   * so a row's logits never depend on how many rows share its step. Software variant: the matvec
   * (steps of up to MATVEC_MAX_TOKENS rows use it anyway; longer ones run in groups of that many
   * rows); GPU variant: the matmul (its matvec sums in another order).
   */
  batchInvariant?: boolean;
}

/** One step: ids (in run order), the runs, and the token rows whose logits to keep, in order. */
export interface DecoderStep {
  ids: Uint32Array<ArrayBuffer>;
  runs: readonly TokenRun[];
  logitRows: readonly number[];
}

export class Decoder {
  /** [maxTokens] u32 token ids of the current step. */
  private readonly ids: GPUBuffer;
  /** [maxLogitRows, vocab] f32 logits of the step's chosen rows. */
  readonly logits: GPUBuffer;
  private readonly meta: StepMeta; // positions and block tables of the step's tokens
  private readonly blockCopy: GPUBuffer; // [nKvHeads, blockSize, headDim] staging for copyBlock
  private readonly hidden: GPUBuffer; // [maxTokens, hidden] the residual stream
  private readonly lastHidden: GPUBuffer; // [maxLogitRows, hidden] rows that reach the LM head
  private readonly finalNormed: GPUBuffer; // [maxLogitRows, hidden]
  private readonly body: Encodable[] = [];
  private readonly head: Encodable[] = [];
  private readonly owned: GPUBuffer[] = [];
  /** Ops referenced from several steps, destroyed once. */
  private readonly owners: { destroy(): void }[] = [];
  /** Each layer's KV pool: the sequences' state, which the attention ops read and write. */
  private readonly kvCache: KvCache[] = [];
  /** LongRoPE's ops, whose factors follow the step's sequence length (as HF switches them per forward). */
  private readonly longRopes: { op: RopeOp; config: RopeConfig; original: number; long: boolean }[] = [];

  constructor(
    private readonly ctx: OpContext,
    private readonly c: ModelConfig,
    w: DecoderWeights,
    readonly opts: DecoderOptions,
  ) {
    const T = opts.maxTokens;
    const h = c.hidden_size;
    const qDim = c.num_attention_heads * c.head_dim;
    const kvDim = c.num_key_value_heads * c.head_dim;
    const buf = (elems: number, label: string) => {
      const b = emptyBuffer(ctx.device, elems * 4, label);
      this.owned.push(b);
      return b;
    };
    // Inputs of linear layers may also be bound as a uniform (a 64 KiB window) by the
    // software matvec, which reads x faster that way on CPU-backed adapters.
    const linearInput = (elems: number, label: string) => {
      const b = ctx.device.createBuffer({
        // Whole 256-byte units, so a window can end at the buffer's end (uniform offsets are 256-aligned).
        size: Math.ceil(Math.max(elems * 4, UNIFORM_WINDOW_BYTES) / 256) * 256,
        usage: storageUsage() | GPUBufferUsage.UNIFORM,
        label,
      });
      this.owned.push(b);
      return b;
    };
    this.ids = buf(T, 'ids');
    this.meta = new StepMeta(ctx.device, {
      maxTokens: T,
      maxRuns: opts.maxRuns,
      maxBlocks: opts.maxBlocks,
      blockSize: opts.blockSize,
      groupSize: c.num_attention_heads / c.num_key_value_heads,
    });
    this.owners.push(this.meta);
    this.blockCopy = buf(kvDim * opts.blockSize, 'kv block copy');
    // [T, hidden]; a post-norm block's projections read it directly (OLMo 2), so it may be bound as x.
    this.hidden = linearInput(T * h, 'hidden');
    const b = c.block;
    // [T, hidden] an attention or MLP output on its way to a post-norm or a scaled residual add.
    const blockOut = b.norms !== 'pre' || b.residualScale !== 1 ? buf(T * h, 'block_out') : undefined;
    const normed = linearInput(T * h, 'normed'); // [T, hidden]
    const qRaw = buf(T * qDim, 'q_raw'); // [T, heads * head_dim] before q_norm
    const kRaw = buf(T * kvDim, 'k_raw'); // [T, kv_heads * head_dim] before k_norm
    const q = b.qkNorm !== 'none' ? buf(T * qDim, 'q') : qRaw;
    const k = b.qkNorm !== 'none' ? buf(T * kvDim, 'k') : kRaw;
    const v = buf(T * kvDim, 'v'); // [T, kv_heads * head_dim]
    const attnOut = linearInput(T * qDim, 'attn_out'); // [T, heads * head_dim]
    const stackedMlp = w.layers.every((L) => !L.mlpIn || 'gateUp' in L.mlpIn);
    const gate = stackedMlp ? undefined : buf(T * c.intermediate_size, 'gate'); // [T, intermediate]
    const up = stackedMlp ? undefined : buf(T * c.intermediate_size, 'up'); // [T, intermediate]
    const act = linearInput(T * c.intermediate_size, 'act'); // [T, intermediate]
    this.lastHidden = buf(opts.maxLogitRows * h, 'last_hidden');
    this.finalNormed = linearInput(opts.maxLogitRows * h, 'final_normed');
    this.logits = buf(opts.maxLogitRows * c.vocab_size, 'logits');

    const stepOp = (kind: OpKind, encode: Encodable['encode'], destroy: () => void = () => {}): Encodable => ({ kind, encode, destroy });
    const perToken = (kind: OpKind, op: { encode(pass: GPUComputePassEncoder, n: number): void; destroy(): void }, rowsPerToken = 1) =>
      stepOp(kind, (pass, { tokens }) => op.encode(pass, tokens * rowsPerToken), () => op.destroy());

    const heads = { nHeads: c.num_attention_heads, nKvHeads: c.num_key_value_heads, headDim: c.head_dim };
    const partials = createAttentionPartials(ctx, { nHeads: heads.nHeads, headDim: heads.headDim, maxTokens: T, maxLength: opts.maxBlocks * opts.blockSize });
    this.owned.push(partials.buffer);

    // q and k are the same buffers in every layer, so one RoPE op serves every layer with the same RoPE.
    const ropeSteps = new Map<ParsedRope, Encodable>();
    const ropeStep = (r: ParsedRope): Encodable => {
      const known = ropeSteps.get(r);
      if (known) return known;
      const config: RopeConfig = {
        headDim: c.head_dim,
        ropeTheta: r.ropeTheta,
        ...(r.partialRotaryFactor !== undefined ? { partialRotaryFactor: r.partialRotaryFactor } : {}),
        scaling: r.scaling,
        maxPositionEmbeddings: c.max_position_embeddings,
      };
      const rope = createRope(ctx, { ...heads, frequencies: ropeInvFreq(config) }, q, k, this.meta.buffer);
      this.owners.push(rope);
      if (r.scaling.type === 'longrope')
        this.longRopes.push({ op: rope, config, original: r.scaling.originalMaxPositionEmbeddings ?? c.max_position_embeddings, long: false });
      const step = stepOp('rope', (pass, { tokens }) => rope.encode(pass, tokens));
      ropeSteps.set(r, step);
      return step;
    };
    // Every MoE layer's scratch activations are the same buffers: layers run one after another.
    const moeScratch = c.moe ? createMoeScratch(ctx.device, moeOptions(c, T)) : undefined;
    if (moeScratch) this.owners.push(moeScratch);
    // The input of projections `ws` after the RMSNorm `gamma` of `from`: the norm runs inside
    // them where it folds (GPU variant), else as its own op on `ops` into `into`.
    const normedInput = (ops: Encodable[], from: GPUBuffer, gamma: GPUBuffer, into: GPUBuffer, ws: LinearWeight[]): { x: GPUBuffer; opts: LinearOptions } => {
      if (ws.every((lw) => normFolds(ctx.variant === 'gpu', lw))) return { x: from, opts: { norm: { weight: gamma, eps: c.rms_norm_eps } } };
      ops.push(perToken('norm', createRmsNorm(ctx, from, gamma, into, h, c.rms_norm_eps)));
      return { x: into, opts: {} };
    };
    const force: LinearOptions = opts.batchInvariant ? { force: ctx.variant === 'gpu' ? 'matmul' : 'matvec' } : {};
    const linearOp = (lw: LinearWeight, x: GPUBuffer, y: GPUBuffer | GPUBuffer[], o: LinearOptions) =>
      perToken('linear', createLinear(ctx, lw, x, y, { maxTokens: T, ...o, ...force }));
    // A block's output joins the residual: added by its last linear op, or through its post-norm
    // (accumulated by the norm) or a scaled add. `out` is what the last linear op writes.
    const residual = (outNorm: GPUBuffer | undefined): { out: GPUBuffer; accumulate: boolean; join: Encodable[] } => {
      if (outNorm) {
        // parseCommonConfig refuses post-norms together with a residual multiplier.
        return { out: blockOut!, accumulate: false, join: [perToken('norm', createRmsNorm(ctx, blockOut!, outNorm, this.hidden, h, c.rms_norm_eps, { accumulate: true }))] };
      }
      if (b.residualScale !== 1) return { out: blockOut!, accumulate: false, join: [perToken('elementwise', createAdd(ctx, this.hidden, blockOut!, b.residualScale), h)] };
      return { out: this.hidden, accumulate: true, join: [] };
    };
    this.body.push(perToken('embedding', createEmbedding(ctx, w.embed, this.ids, this.hidden, { maxTokens: T })));
    if (b.embeddingScale !== 1) this.body.push(perToken('elementwise', createScaleCap(ctx, this.hidden, { scale: b.embeddingScale }), h));
    w.layers.forEach((L, i) => {
      const a = L.attnIn;
      const attnWeights = 'qkv' in a ? [a.qkv] : [a.q, a.k, a.v];
      const inA = L.attnNorm ? normedInput(this.body, this.hidden, L.attnNorm, normed, attnWeights) : { x: this.hidden, opts: {} };
      if ('qkv' in a) {
        this.body.push(linearOp(a.qkv, inA.x, [qRaw, kRaw, v], inA.opts));
      } else {
        this.body.push(linearOp(a.q, inA.x, qRaw, inA.opts), linearOp(a.k, inA.x, kRaw, inA.opts), linearOp(a.v, inA.x, v, inA.opts));
      }
      if (b.qkNorm === 'head') {
        this.body.push(perToken('norm', createRmsNorm(ctx, qRaw, L.qNorm!, q, c.head_dim, c.rms_norm_eps), c.num_attention_heads));
        this.body.push(perToken('norm', createRmsNorm(ctx, kRaw, L.kNorm!, k, c.head_dim, c.rms_norm_eps), c.num_key_value_heads));
      } else if (b.qkNorm === 'projection') {
        this.body.push(perToken('norm', createRmsNorm(ctx, qRaw, L.qNorm!, q, qDim, c.rms_norm_eps)));
        this.body.push(perToken('norm', createRmsNorm(ctx, kRaw, L.kNorm!, k, kvDim, c.rms_norm_eps)));
      }
      const layerRope = c.layer_ropes[i];
      if (layerRope) this.body.push(ropeStep(layerRope));
      const window = c.layer_windows[i] ?? 0;
      const attnOpts = {
        ...heads,
        scale: b.attentionScale,
        ...(b.attentionSoftcap ? { softcap: b.attentionSoftcap } : {}),
        ...(window ? { slidingWindow: window } : {}),
        ...(L.sinks ? { sinks: L.sinks } : {}),
      };
      const cache = createKvCache(ctx, { numBlocks: opts.numBlocks, nKvHeads: heads.nKvHeads, blockSize: opts.blockSize, headDim: heads.headDim });
      this.kvCache.push(cache);
      const attn = createAttention(ctx, attnOpts, this.meta, cache, q, k, v, attnOut, partials);
      this.body.push(stepOp('attention', (pass, shape) => attn.encode(pass, shape), () => attn.destroy()));
      const afterAttn = residual(L.attnOutNorm);
      this.body.push(linearOp(L.o, attnOut, afterAttn.out, { accumulate: afterAttn.accumulate }), ...afterAttn.join);
      if (L.moe) {
        this.body.push(perToken('norm', createRmsNorm(ctx, this.hidden, L.mlpNorm!, normed, h, c.rms_norm_eps)));
        this.body.push(perToken('linear', createMoe(ctx, L.moe, moeScratch!, normed, this.hidden)));
        return;
      }
      const m = L.mlpIn!;
      const mlpWeights = 'gateUp' in m ? [m.gateUp] : [m.gate, m.up];
      const inM = L.mlpNorm ? normedInput(this.body, this.hidden, L.mlpNorm, normed, mlpWeights) : { x: this.hidden, opts: {} };
      if ('gateUp' in m) {
        this.body.push(linearOp(m.gateUp, inM.x, act, inM.opts));
      } else {
        this.body.push(linearOp(m.gate, inM.x, gate!, inM.opts), linearOp(m.up, inM.x, up!, inM.opts));
        this.body.push(perToken('elementwise', createSiluMul(ctx, c.intermediate_size, { gate: gate!, up: up! }, act, b.activation)));
      }
      const afterMlp = residual(L.mlpOutNorm);
      this.body.push(linearOp(L.down!, act, afterMlp.out, { accumulate: afterMlp.accumulate }), ...afterMlp.join);
    });
    const inH = normedInput(this.head, this.lastHidden, w.norm, this.finalNormed, [w.lmHead]);
    this.head.push(perToken('lm_head', createLinear(ctx, w.lmHead, inH.x, this.logits, { maxTokens: opts.maxLogitRows, ...inH.opts, ...force })));
    if (b.logitsDivisor !== 1 || b.finalLogitSoftcap)
      this.head.push(perToken('elementwise', createScaleCap(ctx, this.logits, { scale: 1 / b.logitsDivisor, cap: b.finalLogitSoftcap }), c.vocab_size));
  }

  /** LongRoPE: short factors while the step's sequences fit the original context, long ones past it (HF's rule, per step). */
  private updateRopes(runs: readonly TokenRun[]): void {
    if (this.longRopes.length === 0) return;
    const seqLen = Math.max(...runs.map((r) => r.position + r.tokens));
    for (const r of this.longRopes) {
      const long = seqLen > r.original;
      if (long === r.long) continue;
      r.op.setFrequencies(ropeInvFreq(r.config, seqLen));
      r.long = long;
    }
  }

  /**
   * Records one step: writes its ids and metadata (so the previous step must have been
   * submitted), runs every token, and the LM head over `logitRows` (none: no head).
   */
  encode(enc: GPUCommandEncoder, step: DecoderStep, profiler?: StepProfiler): void {
    const { ids, runs, logitRows } = step;
    if (ids.length < 1 || ids.length > this.opts.maxTokens) throw new RangeError(`step of ${ids.length} tokens outside 1..${this.opts.maxTokens}`);
    if (logitRows.length > this.opts.maxLogitRows) throw new RangeError(`${logitRows.length} logit rows exceed ${this.opts.maxLogitRows}`);
    if (logitRows.some((r) => !(Number.isInteger(r) && r >= 0 && r < ids.length))) throw new RangeError('logit row outside the step');
    this.ctx.device.queue.writeBuffer(this.ids, 0, ids);
    this.updateRopes(runs);
    const shape = this.meta.write(runs);
    if (shape.tokens !== ids.length) throw new RangeError(`runs hold ${shape.tokens} tokens, ids ${ids.length}`);
    const run = (ops: Encodable[], s: StepShape) => {
      if (profiler) {
        for (const op of ops) {
          const pass = profiler.pass(enc, op.kind);
          op.encode(pass, s);
          pass.end();
        }
        return;
      }
      const pass = enc.beginComputePass();
      for (const op of ops) op.encode(pass, s);
      pass.end();
    };
    run(this.body, shape);
    if (logitRows.length === 0) return;
    // The chosen rows, as runs of consecutive token rows, one copy each.
    const h = this.c.hidden_size * 4;
    for (let i = 0; i < logitRows.length; ) {
      let n = 1;
      while (i + n < logitRows.length && logitRows[i + n] === logitRows[i]! + n) n++;
      enc.copyBufferToBuffer(this.hidden, logitRows[i]! * h, this.lastHidden, i * h, n * h);
      i += n;
    }
    run(this.head, { ...shape, tokens: logitRows.length });
  }

  /** Records copying KV block `from` to block `to` in every layer (copy-on-write of a shared block). */
  copyBlock(enc: GPUCommandEncoder, from: number, to: number): void {
    const bytes = this.blockCopy.size;
    for (const layer of this.kvCache)
      for (const cache of [layer.k, layer.v]) {
        // A buffer cannot be both source and destination of one copy.
        enc.copyBufferToBuffer(cache, from * bytes, this.blockCopy, 0, bytes);
        enc.copyBufferToBuffer(this.blockCopy, 0, cache, to * bytes, bytes);
      }
  }

  /** KV cache buffers, for memory accounting. */
  kvBytes(): number {
    return this.kvCache.reduce((s, c) => s + c.k.size + c.v.size, 0);
  }

  destroy(): void {
    for (const op of [...this.body, ...this.head, ...this.owners]) op.destroy();
    for (const b of this.owned) b.destroy();
    for (const c of this.kvCache) {
      c.k.destroy();
      c.v.destroy();
    }
  }
}
