// A mixture-of-experts MLP block (kernels/moe.wgsl, kernels/moe_matmul.wgsl):
//   router logits (linear) → route (top-k + weights) → group (slots by expert) →
//   UP (gate/up + activation, active experts only) → DOWN (weighted) → combine into the
//   residual, plus Qwen2-MoE's shared expert. Nothing is read back to JS: the active
//   experts are found on the GPU and the expert kernels skip the workgroups of the rest.

import type { WeightDtype } from '../dtype.ts';
import { bindGroup, dispatch, grid } from '../kernel.ts';
import { emptyBuffer } from '../buffers.ts';
import { type OpContext, ParamsBuffer } from './context.ts';
import { createSiluMul } from './elementwise.ts';
import { type LinearWeight, createLinear, weightDefines } from './linear.ts';

export class MoeError extends Error {
  override name = 'MoeError';
}

/** route and group keep a bit per expert in registers (MAX_EXPERTS in moe.wgsl). */
export const MAX_EXPERTS = 256;

export type ExpertFormat = WeightDtype | 'mxfp4';

/** Whole experts [expertStart, expertStart + experts) of a stacked expert weight. */
export interface ExpertChunk {
  /** f32 / 16-bit packed two per u32 / MXFP4 nibbles eight per u32. */
  buffer: GPUBuffer;
  /** MXFP4 only: e8m0 bytes, one per 32 values, four per u32. */
  scales?: GPUBuffer;
  expertStart: number;
  experts: number;
}

/** Stacked expert weights [experts, rows, cols], each expert's matrix row-major (N x K). */
export interface ExpertWeights {
  format: ExpertFormat;
  experts: number;
  rows: number;
  cols: number;
  /** In expert order, covering every expert once. */
  chunks: ExpertChunk[];
  /** f32 [experts, rows]. */
  bias?: GPUBuffer;
}

export interface MoeWeights {
  /** [E, hidden] (+ bias [E], GPT-OSS). */
  router: LinearWeight;
  /** [E, 2I, hidden]: each expert's gate rows, then its up rows. */
  gateUp: ExpertWeights;
  /** [E, hidden, I]. */
  down: ExpertWeights;
  /** Qwen2-MoE: a dense SwiGLU MLP added to every token, scaled by sigmoid(gateLogit · x). */
  shared?: { gate: LinearWeight; up: LinearWeight; down: LinearWeight; gateLogit: LinearWeight };
}

export interface MoeOptions {
  hidden: number;
  experts: number;
  /** Experts per token. */
  k: number;
  /** Rows of each expert's gate (and up). */
  intermediate: number;
  routing: 'topk_softmax' | 'softmax_topk';
  normTopk: boolean;
  /** GPT-OSS's clamped SwiGLU; biases come with the weights. */
  gptOss?: { alpha: number; limit: number };
  /** Rows of the shared expert, 0 for none. */
  sharedIntermediate: number;
  maxTokens: number;
}

/** Activations of one step, shared by every MoE layer of a decoder (layers run one after another). */
export interface MoeScratch {
  readonly opts: MoeOptions;
  logits: GPUBuffer; // [T, E] router logits
  sel: GPUBuffer; // [T * k] u32 expert per slot
  wts: GPUBuffer; // [T * k] f32 weight per slot
  groups: GPUBuffer; // [1 + 3E] u32 active experts (see moe.wgsl group)
  order: GPUBuffer; // [T * k] u32 slots grouped by expert
  act: GPUBuffer; // [T * k, I] expert activations
  out: GPUBuffer; // [T * k, hidden] weighted expert outputs
  shared?: { gate: GPUBuffer; up: GPUBuffer; act: GPUBuffer; out: GPUBuffer; logit: GPUBuffer };
  destroy(): void;
}

export interface MoeOp {
  /** hidden[0..tokens) += MoE(x[0..tokens)). */
  encode(pass: GPUComputePassEncoder, tokens: number): void;
  destroy(): void;
}

const WG = 64;
const ROWS_PER_THREAD = 4;

export function checkMoeOptions(o: MoeOptions): void {
  const int = (v: number) => Number.isInteger(v) && v >= 1;
  if (!int(o.experts) || o.experts > MAX_EXPERTS) throw new MoeError(`experts ${o.experts} outside 1..${MAX_EXPERTS}`);
  if (!int(o.k) || o.k > o.experts) throw new MoeError(`experts per token ${o.k} outside 1..${o.experts} (the number of experts)`);
  if (!int(o.hidden) || o.hidden % 8 !== 0) throw new MoeError(`hidden size ${o.hidden} must be a positive multiple of 8 for the expert kernels`);
  if (!int(o.intermediate) || o.intermediate % 8 !== 0)
    throw new MoeError(`expert intermediate size ${o.intermediate} must be a positive multiple of 8 for the expert kernels`);
  if (!int(o.maxTokens)) throw new MoeError(`maxTokens ${o.maxTokens} must be a positive integer`);
}

export function createMoeScratch(device: GPUDevice, o: MoeOptions): MoeScratch {
  checkMoeOptions(o);
  const T = o.maxTokens;
  const S = T * o.k;
  const owned: GPUBuffer[] = [];
  const buf = (elems: number, label: string) => {
    const b = emptyBuffer(device, elems * 4, label);
    owned.push(b);
    return b;
  };
  const Is = o.sharedIntermediate;
  return {
    opts: o,
    logits: buf(T * o.experts, 'moe router logits'),
    sel: buf(S, 'moe sel'),
    wts: buf(S, 'moe wts'),
    groups: buf(1 + 3 * o.experts, 'moe groups'),
    order: buf(S, 'moe order'),
    act: buf(S * o.intermediate, 'moe act'),
    out: buf(S * o.hidden, 'moe out'),
    ...(Is > 0
      ? { shared: { gate: buf(T * Is, 'shared gate'), up: buf(T * Is, 'shared up'), act: buf(T * Is, 'shared act'), out: buf(T * o.hidden, 'shared out'), logit: buf(T, 'shared gate logit') } }
      : {}),
    destroy: () => owned.forEach((b) => b.destroy()),
  };
}

/** Checks a stacked expert weight against the shape the block needs. */
export function checkExperts(w: ExpertWeights, experts: number, rows: number, cols: number, what: string): void {
  if (w.experts !== experts || w.rows !== rows || w.cols !== cols)
    throw new MoeError(`${what}: experts [${w.experts}, ${w.rows}, ${w.cols}], expected [${experts}, ${rows}, ${cols}]`);
  if (w.format === 'mxfp4' && cols % 32 !== 0) throw new MoeError(`${what}: MXFP4 needs K % 32 == 0, got ${cols}`);
  let next = 0;
  for (const [i, c] of w.chunks.entries()) {
    if (c.expertStart !== next || !(Number.isInteger(c.experts) && c.experts >= 1))
      throw new MoeError(`${what}: chunk ${i} holds experts from ${c.expertStart}, expected ${next}`);
    if ((w.format === 'mxfp4') !== (c.scales !== undefined)) throw new MoeError(`${what}: chunk ${i} scales must be given exactly for MXFP4`);
    next += c.experts;
  }
  if (next !== experts) throw new MoeError(`${what}: chunks hold ${next} of ${experts} experts`);
  if (w.bias && w.bias.size < experts * rows * 4) throw new MoeError(`${what}: bias holds fewer than ${experts} x ${rows} values`);
}

function formatDefines(f: ExpertFormat) {
  return f === 'mxfp4' ? { MXFP4: true } : weightDefines(f);
}

/** x: [maxTokens, hidden] f32 (normed); hidden: [maxTokens, hidden] f32, the residual added to. */
export function createMoe(ctx: OpContext, w: MoeWeights, scratch: MoeScratch, x: GPUBuffer, hidden: GPUBuffer): MoeOp {
  const o = scratch.opts;
  const { experts: E, k, hidden: H, intermediate: I, maxTokens: T } = o;
  if (w.router.rows !== E || w.router.cols !== H) throw new MoeError(`router is [${w.router.rows}, ${w.router.cols}], expected [${E}, ${H}]`);
  checkExperts(w.gateUp, E, 2 * I, H, 'gate/up experts');
  checkExperts(w.down, E, H, I, 'down experts');
  if (!!o.gptOss !== (!!w.gateUp.bias && !!w.down.bias)) throw new MoeError('GPT-OSS experts need both expert biases; other families have none');
  if ((o.sharedIntermediate > 0) !== !!w.shared) throw new MoeError('shared expert weights and sharedIntermediate disagree');
  if (x.size < T * H * 4 || hidden.size < T * H * 4) throw new MoeError(`x and hidden must hold ${T} x ${H} f32`);
  const dev = ctx.device;
  const maxDim = ctx.limits.maxComputeWorkgroupsPerDimension;
  const s = scratch;

  const router = createLinear(ctx, w.router, x, s.logits, { maxTokens: T });
  const route = ctx.kernels.get('moe', { SOFTMAX_FIRST: o.routing === 'softmax_topk', NORM: o.normTopk }, { WG }, 'route');
  const routeParams = new ParamsBuffer(dev, route);
  const routeGroup = bindGroup(dev, route, [routeParams.buffer, s.logits, s.sel, s.wts]);
  const group = ctx.kernels.get('moe', {}, { WG }, 'group');
  const groupParams = new ParamsBuffer(dev, group);
  const groupGroup = bindGroup(dev, group, [groupParams.buffer, s.sel, s.groups, s.order]);

  const expertDispatches = (ew: ExpertWeights, up: boolean, input: GPUBuffer, output: GPUBuffer) => {
    const defines = { ...formatDefines(ew.format), UP: up, DOWN: !up, BIAS: !!ew.bias, GPT_OSS: up && !!o.gptOss };
    const kernel = ctx.kernels.get('moe_matmul', defines, { WG });
    return ew.chunks.map((c) => {
      const params = new ParamsBuffer(dev, kernel, {
        K: ew.cols, rows: up ? I : H, k, expertStart: c.expertStart, expertCount: c.experts,
        alpha: o.gptOss?.alpha ?? 0, limit: o.gptOss?.limit ?? 0,
      });
      const entries: GPUBindGroupEntry[] = [
        { binding: 0, resource: { buffer: params.buffer } },
        { binding: 1, resource: { buffer: c.buffer } },
        { binding: 3, resource: { buffer: input } },
        { binding: 4, resource: { buffer: s.groups } },
        { binding: 5, resource: { buffer: s.order } },
        { binding: 6, resource: { buffer: output } },
      ];
      if (c.scales) entries.push({ binding: 2, resource: { buffer: c.scales } });
      if (ew.bias) entries.push({ binding: 7, resource: { buffer: ew.bias } });
      if (!up) entries.push({ binding: 8, resource: { buffer: s.wts } });
      const g = dev.createBindGroup({ layout: kernel.pipeline.getBindGroupLayout(0), entries, label: kernel.key });
      return { kernel, params, group: g, rows: up ? I : H };
    });
  };
  const ups = expertDispatches(w.gateUp, true, x, s.act);
  const downs = expertDispatches(w.down, false, s.act, s.out);

  const combine = ctx.kernels.get('moe', { SHARED: !!w.shared }, { WG }, 'combine');
  const combineParams = new ParamsBuffer(dev, combine);
  const combineGroup = bindGroup(dev, combine, [combineParams.buffer, s.out, hidden, ...(w.shared ? [s.shared!.out, s.shared!.logit] : [])]);

  const shared = w.shared
    ? [
        createLinear(ctx, w.shared.gate, x, s.shared!.gate, { maxTokens: T }),
        createLinear(ctx, w.shared.up, x, s.shared!.up, { maxTokens: T }),
        createSiluMul(ctx, o.sharedIntermediate, { gate: s.shared!.gate, up: s.shared!.up }, s.shared!.act),
        createLinear(ctx, w.shared.down, s.shared!.act, s.shared!.out, { maxTokens: T }),
        createLinear(ctx, w.shared.gateLogit, x, s.shared!.logit, { maxTokens: T }),
      ]
    : [];

  return {
    encode(pass, tokens) {
      if (!(Number.isInteger(tokens) && tokens >= 1 && tokens <= T)) throw new MoeError(`tokens ${tokens} outside 1..${T}`);
      const slots = tokens * k;
      router.encode(pass, tokens);
      routeParams.set({ tokens, experts: E, k });
      dispatch(pass, route, routeGroup, ...grid(Math.ceil(tokens / WG), maxDim));
      groupParams.set({ slots, experts: E });
      dispatch(pass, group, groupGroup, Math.ceil(E / WG));
      // One workgroup row per possible active expert; rows past the active count return at once.
      const groupsY = Math.min(E, slots);
      for (const d of [...ups, ...downs]) dispatch(pass, d.kernel, d.group, Math.ceil(d.rows / ROWS_PER_THREAD / WG), groupsY);
      for (const op of shared) op.encode(pass, tokens);
      combineParams.set({ tokens, cols: H, k });
      dispatch(pass, combine, combineGroup, ...grid(Math.ceil((tokens * H) / WG), maxDim));
    },
    destroy() {
      for (const op of [router, ...shared]) op.destroy();
      for (const p of [routeParams, groupParams, combineParams, ...ups.map((d) => d.params), ...downs.map((d) => d.params)]) p.destroy();
    },
  };
}
