// A plain float64 TypeScript forward pass of the same decoder, for unit tests and
// debugging. It is ours, so it is not the independent check (Transformers and
// llama2.c's transcript are); it catches wiring errors without Python.

import type { ModelConfig } from '../src/config.ts';
import { bf16ToF32, f16ToF32 } from '../src/dtype.ts';
import { ropeInvFreq } from '../src/rope-frequencies.ts';
import type { Checkpoint } from '../src/safetensors.ts';

export type Tensors = Map<string, Float64Array>;

export async function readTensors(ckpt: Checkpoint): Promise<Tensors> {
  const out: Tensors = new Map();
  for (const [name, t] of ckpt.tensors) {
    const bytes = await ckpt.read(name);
    const n = bytes.byteLength / (t.dtype === 'F32' ? 4 : 2);
    const v = new Float64Array(n);
    const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    for (let i = 0; i < n; i++) {
      v[i] = t.dtype === 'F32' ? dv.getFloat32(i * 4, true) : t.dtype === 'BF16' ? bf16ToF32(dv.getUint16(i * 2, true)) : f16ToF32(dv.getUint16(i * 2, true));
    }
    out.set(name, v);
  }
  return out;
}

function rmsnorm(x: Float64Array, w: Float64Array, eps: number): Float64Array {
  let s = 0;
  for (const v of x) s += v * v;
  const scale = 1 / Math.sqrt(s / x.length + eps);
  return x.map((v, i) => v * scale * w[i]!);
}

/** y = W x (+ b) with W [rows, cols]. */
function linear(W: Float64Array, x: Float64Array, rows: number, b?: Float64Array): Float64Array {
  const cols = x.length;
  const y = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let s = b ? b[r]! : 0;
    for (let k = 0; k < cols; k++) s += W[r * cols + k]! * x[k]!;
    y[r] = s;
  }
  return y;
}

/** Logits [T][vocab] of every position for `tokens` from position 0. */
export function referenceForward(c: ModelConfig, w: Tensors, tokens: number[]): Float64Array[] {
  const get = (n: string) => {
    const t = w.get(n);
    if (!t) throw new Error(`missing ${n}`);
    return t;
  };
  const opt = (n: string) => w.get(n);
  const h = c.hidden_size;
  const hd = c.head_dim;
  const nH = c.num_attention_heads;
  const nKv = c.num_key_value_heads;
  const { invFreq, attentionScaling } = ropeInvFreq({
    headDim: hd,
    ropeTheta: c.rope.ropeTheta,
    scaling: c.rope.scaling,
    maxPositionEmbeddings: c.max_position_embeddings,
    ...(c.rope.partialRotaryFactor !== undefined ? { partialRotaryFactor: c.rope.partialRotaryFactor } : {}),
  });
  const half = invFreq.length;
  const rope = (v: Float64Array, heads: number, pos: number) => {
    for (let hh = 0; hh < heads; hh++) {
      const o = hh * hd;
      for (let i = 0; i < half; i++) {
        const ang = Math.fround(pos * invFreq[i]!);
        const cos = Math.cos(ang) * attentionScaling;
        const sin = Math.sin(ang) * attentionScaling;
        const a = v[o + i]!;
        const b = v[o + i + half]!;
        v[o + i] = a * cos - b * sin;
        v[o + i + half] = b * cos + a * sin;
      }
    }
  };
  const E = get('model.embed_tokens.weight');
  const head = c.tie_word_embeddings ? E : get('lm_head.weight');
  const K: Float64Array[][] = Array.from({ length: c.num_hidden_layers }, () => []);
  const V: Float64Array[][] = Array.from({ length: c.num_hidden_layers }, () => []);
  const out: Float64Array[] = [];
  tokens.forEach((tok, pos) => {
    let x = E.slice(tok * h, (tok + 1) * h);
    for (let l = 0; l < c.num_hidden_layers; l++) {
      const p = `model.layers.${l}.`;
      const xn = rmsnorm(x, get(`${p}input_layernorm.weight`), c.rms_norm_eps);
      const q = linear(get(`${p}self_attn.q_proj.weight`), xn, nH * hd, opt(`${p}self_attn.q_proj.bias`));
      const k = linear(get(`${p}self_attn.k_proj.weight`), xn, nKv * hd, opt(`${p}self_attn.k_proj.bias`));
      const v = linear(get(`${p}self_attn.v_proj.weight`), xn, nKv * hd, opt(`${p}self_attn.v_proj.bias`));
      if (c.block.qkNorm === 'head') {
        for (let hh = 0; hh < nH; hh++) q.set(rmsnorm(q.slice(hh * hd, (hh + 1) * hd), get(`${p}self_attn.q_norm.weight`), c.rms_norm_eps), hh * hd);
        for (let hh = 0; hh < nKv; hh++) k.set(rmsnorm(k.slice(hh * hd, (hh + 1) * hd), get(`${p}self_attn.k_norm.weight`), c.rms_norm_eps), hh * hd);
      }
      rope(q, nH, pos);
      rope(k, nKv, pos);
      K[l]!.push(k);
      V[l]!.push(v);
      const window = c.layer_windows[l] ?? 0;
      const first = window ? Math.max(0, pos - window + 1) : 0;
      const att = new Float64Array(nH * hd);
      for (let hh = 0; hh < nH; hh++) {
        const kvh = Math.floor(hh / (nH / nKv));
        const scores: number[] = [];
        for (let j = first; j <= pos; j++) {
          let s = 0;
          for (let d = 0; d < hd; d++) s += q[hh * hd + d]! * K[l]![j]![kvh * hd + d]!;
          scores.push(s / Math.sqrt(hd));
        }
        const m = Math.max(...scores);
        const e = scores.map((s) => Math.exp(s - m));
        const z = e.reduce((a, b) => a + b, 0);
        for (let j = first; j <= pos; j++) {
          const pj = e[j - first]! / z;
          for (let d = 0; d < hd; d++) att[hh * hd + d]! += pj * V[l]![j]![kvh * hd + d]!;
        }
      }
      const o = linear(get(`${p}self_attn.o_proj.weight`), att, h, opt(`${p}self_attn.o_proj.bias`));
      x = x.map((v2, i) => v2 + o[i]!);
      const xn2 = rmsnorm(x, get(`${p}post_attention_layernorm.weight`), c.rms_norm_eps);
      const g = linear(get(`${p}mlp.gate_proj.weight`), xn2, c.intermediate_size, opt(`${p}mlp.gate_proj.bias`));
      const u = linear(get(`${p}mlp.up_proj.weight`), xn2, c.intermediate_size, opt(`${p}mlp.up_proj.bias`));
      const a = g.map((gv, i) => (gv / (1 + Math.exp(-gv))) * u[i]!);
      const d = linear(get(`${p}mlp.down_proj.weight`), a, h, opt(`${p}mlp.down_proj.bias`));
      x = x.map((v2, i) => v2 + d[i]!);
    }
    out.push(linear(head, rmsnorm(x, get('model.norm.weight'), c.rms_norm_eps), c.vocab_size));
  });
  return out;
}
