// The dense decoder's forward pass, read top to bottom:
//   embed → per layer (norm, q/k/v, [q/k norm], RoPE, attention over the KV cache,
//   o_proj + residual, norm, gate/up, SiLU·up, down_proj + residual) → norm → LM head.
// One Decoder is one session's run state (activations, KV cache) over shared weights;
// every op, buffer and bind group is made here once and re-encoded each step.

import type { ModelConfig } from './config.ts';
import { emptyBuffer } from './buffers.ts';
import type { OpContext } from './ops/context.ts';
import { createAttention, type AttentionOp } from './ops/attention.ts';
import { createEmbedding } from './ops/embedding.ts';
import { createLinear } from './ops/linear.ts';
import { createRmsNorm } from './ops/norm.ts';
import { createRope } from './ops/rope.ts';
import { createSiluMul } from './ops/elementwise.ts';
import { ropeInvFreq } from './rope-frequencies.ts';
import type { DecoderWeights } from './weights.ts';

interface Encodable {
  encode(pass: GPUComputePassEncoder, tokens: number, startPos: number): void;
  destroy(): void;
}

export interface DecoderOptions {
  maxContext: number;
  /** Most tokens one forward step runs (longer prompts are split into steps). */
  maxTokens: number;
  /** Rows of logits the LM head may write in one step (1, or maxTokens for scoring). */
  maxLogitRows: number;
}

export class Decoder {
  /** [maxTokens] u32 token ids of the current step. */
  readonly ids: GPUBuffer;
  /** [maxLogitRows, vocab] f32 logits of the step's last row(s). */
  readonly logits: GPUBuffer;
  private readonly hidden: GPUBuffer; // [maxTokens, hidden] the residual stream
  private readonly lastHidden: GPUBuffer; // [maxLogitRows, hidden] rows that reach the LM head
  private readonly finalNormed: GPUBuffer; // [maxLogitRows, hidden]
  private readonly body: Encodable[] = [];
  private readonly head: Encodable[] = [];
  private readonly owned: GPUBuffer[] = [];
  /** Ops referenced from several steps, destroyed once. */
  private readonly owners: { destroy(): void }[] = [];
  private readonly attention: AttentionOp[] = [];

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
    this.ids = buf(T, 'ids');
    this.hidden = buf(T * h, 'hidden'); // [T, hidden]
    const normed = buf(T * h, 'normed'); // [T, hidden]
    const qRaw = buf(T * qDim, 'q_raw'); // [T, heads * head_dim] before q_norm
    const kRaw = buf(T * kvDim, 'k_raw'); // [T, kv_heads * head_dim] before k_norm
    const q = c.qk_norm ? buf(T * qDim, 'q') : qRaw;
    const k = c.qk_norm ? buf(T * kvDim, 'k') : kRaw;
    const v = buf(T * kvDim, 'v'); // [T, kv_heads * head_dim]
    const attnOut = buf(T * qDim, 'attn_out'); // [T, heads * head_dim]
    const gate = buf(T * c.intermediate_size, 'gate'); // [T, intermediate]
    const up = buf(T * c.intermediate_size, 'up'); // [T, intermediate]
    const act = buf(T * c.intermediate_size, 'act'); // [T, intermediate]
    this.lastHidden = buf(opts.maxLogitRows * h, 'last_hidden');
    this.finalNormed = buf(opts.maxLogitRows * h, 'final_normed');
    this.logits = buf(opts.maxLogitRows * c.vocab_size, 'logits');

    const stepOp = (encode: (pass: GPUComputePassEncoder, tokens: number, startPos: number) => void, destroy: () => void = () => {}) => ({ encode, destroy });
    const perToken = (op: { encode(pass: GPUComputePassEncoder, n: number): void; destroy(): void }, rowsPerToken = 1) =>
      stepOp((pass, tokens) => op.encode(pass, tokens * rowsPerToken), () => op.destroy());

    const freqs = ropeInvFreq({
      headDim: c.head_dim,
      ropeTheta: c.rope.ropeTheta,
      ...(c.rope.partialRotaryFactor !== undefined ? { partialRotaryFactor: c.rope.partialRotaryFactor } : {}),
      scaling: c.rope.scaling,
      maxPositionEmbeddings: c.max_position_embeddings,
    });
    const heads = { nHeads: c.num_attention_heads, nKvHeads: c.num_key_value_heads, headDim: c.head_dim };

    // q and k are the same buffers in every layer, so one RoPE op serves them all.
    const rope = createRope(ctx, { ...heads, frequencies: freqs }, q, k);
    const ropeStep = stepOp((pass, tokens, startPos) => rope.encode(pass, tokens, startPos));
    this.owners.push(rope);
    this.body.push(perToken(createEmbedding(ctx, w.embed, this.ids, this.hidden, { maxTokens: T })));
    w.layers.forEach((L, i) => {
      this.body.push(perToken(createRmsNorm(ctx, this.hidden, L.inputNorm, normed, h, c.rms_norm_eps)));
      this.body.push(perToken(createLinear(ctx, L.q, normed, qRaw, { maxTokens: T })));
      this.body.push(perToken(createLinear(ctx, L.k, normed, kRaw, { maxTokens: T })));
      this.body.push(perToken(createLinear(ctx, L.v, normed, v, { maxTokens: T })));
      if (c.qk_norm) {
        this.body.push(perToken(createRmsNorm(ctx, qRaw, L.qNorm!, q, c.head_dim, c.rms_norm_eps), c.num_attention_heads));
        this.body.push(perToken(createRmsNorm(ctx, kRaw, L.kNorm!, k, c.head_dim, c.rms_norm_eps), c.num_key_value_heads));
      }
      this.body.push(ropeStep);
      const window = c.layer_windows[i] ?? 0;
      const attn = createAttention(ctx, { ...heads, maxContext: opts.maxContext, ...(window ? { slidingWindow: window } : {}) }, q, k, v, attnOut);
      this.attention.push(attn);
      this.body.push(stepOp((pass, tokens, startPos) => attn.encode(pass, tokens, startPos), () => attn.destroy()));
      this.body.push(perToken(createLinear(ctx, L.o, attnOut, this.hidden, { accumulate: true, maxTokens: T })));
      this.body.push(perToken(createRmsNorm(ctx, this.hidden, L.postNorm, normed, h, c.rms_norm_eps)));
      this.body.push(perToken(createLinear(ctx, L.gate, normed, gate, { maxTokens: T })));
      this.body.push(perToken(createLinear(ctx, L.up, normed, up, { maxTokens: T })));
      this.body.push(perToken(createSiluMul(ctx, c.intermediate_size, { gate, up }, act)));
      this.body.push(perToken(createLinear(ctx, L.down, act, this.hidden, { accumulate: true, maxTokens: T })));
    });
    this.head.push(perToken(createRmsNorm(ctx, this.lastHidden, w.norm, this.finalNormed, h, c.rms_norm_eps)));
    this.head.push(perToken(createLinear(ctx, w.lmHead, this.finalNormed, this.logits, { maxTokens: opts.maxLogitRows })));
  }

  /**
   * Records one step: `tokens` ids (already written to `ids`) at positions startPos..,
   * and the LM head over the last `logitRows` of them.
   */
  encode(enc: GPUCommandEncoder, tokens: number, startPos: number, logitRows: number): void {
    if (tokens < 1 || tokens > this.opts.maxTokens) throw new RangeError(`step of ${tokens} tokens outside 1..${this.opts.maxTokens}`);
    if (logitRows < 1 || logitRows > Math.min(tokens, this.opts.maxLogitRows)) throw new RangeError(`logit rows ${logitRows} out of range`);
    let pass = enc.beginComputePass();
    for (const op of this.body) op.encode(pass, tokens, startPos);
    pass.end();
    const h = this.c.hidden_size * 4;
    enc.copyBufferToBuffer(this.hidden, (tokens - logitRows) * h, this.lastHidden, 0, logitRows * h);
    pass = enc.beginComputePass();
    for (const op of this.head) op.encode(pass, logitRows, startPos);
    pass.end();
  }

  /** KV cache buffers, for memory accounting. */
  kvBytes(): number {
    return this.attention.reduce((s, a) => s + a.kCache.size + a.vCache.size, 0);
  }

  destroy(): void {
    for (const op of [...this.body, ...this.head, ...this.owners]) op.destroy();
    for (const b of this.owned) b.destroy();
  }
}
