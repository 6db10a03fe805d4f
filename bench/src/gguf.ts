// Writes a Qwen2 safetensors folder (the bench's generated model) as a GGUF file, so llama.cpp
// runs the very same weights: matrices in f32/f16/bf16 or ggml's q8_0/q4_0 blocks, norms and
// biases in f32, and a Qwen byte-level BPE tokenizer (tokenizer.json) padded to the model's
// vocabulary size. In q8_0/q4_0 the embedding table (also the LM head when tied) stays f16,
// as our engine keeps embeddings and LM head at 16 bits when it quantizes: both engines then
// read the same kinds of bytes per token.
//
// GGUF v3 layout: magic, version, tensor count, metadata count, metadata key/values, tensor
// infos (name, dims innermost first, ggml type, offset), padding to 32 bytes, tensor data.
//
// ggml's blocks run along the innermost dimension (a matrix row), 32 values each:
//   q8_0: f16 scale d, then 32 int8 q; x = d * q, d = max|x| / 127.
//   q4_0: f16 scale d, then 16 bytes; byte j holds value j in its low nibble and value
//         j + 16 in its high nibble; x = d * (nibble - 8), d = (the value of largest |x|) / -8.

import { closeSync, openSync, readFileSync, readSync, statSync, writeSync } from 'node:fs';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16, parseHeader, type TensorInfo } from '@webgpu-chat/engine/internal';

export type GgufFormat = 'f32' | 'f16' | 'bf16' | 'q8_0' | 'q4_0';
export const GGUF_FORMATS: readonly GgufFormat[] = ['f32', 'f16', 'bf16', 'q8_0', 'q4_0'];
type FloatFormat = 'f32' | 'f16' | 'bf16';

export class GgufError extends Error {
  override name = 'GgufError';
}

const ALIGNMENT = 32;
const GGML_TYPE: Record<GgufFormat, number> = { f32: 0, f16: 1, q4_0: 2, q8_0: 8, bf16: 30 };
const BYTES: Record<FloatFormat, number> = { f32: 4, f16: 2, bf16: 2 };
/** Values per q8_0/q4_0 block, and each block's bytes (the f16 scale included). */
const QK = 32;
const BLOCK_BYTES = { q8_0: 2 + QK, q4_0: 2 + QK / 2 } as const;

function tensorBytes(type: GgufFormat, elements: number): number {
  return type === 'q8_0' || type === 'q4_0' ? (elements / QK) * BLOCK_BYTES[type] : elements * BYTES[type];
}
/** Metadata value types of the GGUF spec. */
const T = { u32: 4, i32: 5, f32: 6, bool: 7, string: 8, array: 9 } as const;
/** Token types of llama.cpp's vocabulary. */
const TOKEN_NORMAL = 1;
const TOKEN_CONTROL = 3;
const TOKEN_USER_DEFINED = 4;
const TOKEN_UNUSED = 5;
/** Bytes converted per read while streaming tensor data. */
const CHUNK_ELEMENTS = 1 << 22;

type Value =
  | { type: 'u32' | 'i32' | 'f32'; value: number }
  | { type: 'bool'; value: boolean }
  | { type: 'string'; value: string }
  | { type: 'strings'; value: string[] }
  | { type: 'i32s'; value: number[] };

class ByteWriter {
  private parts: Uint8Array[] = [];
  length = 0;
  private push(b: Uint8Array) {
    this.parts.push(b);
    this.length += b.length;
  }
  u32(v: number) {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, v, true);
    this.push(b);
  }
  i32(v: number) {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setInt32(0, v, true);
    this.push(b);
  }
  f32(v: number) {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, v, true);
    this.push(b);
  }
  u64(v: number) {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, BigInt(v), true);
    this.push(b);
  }
  str(s: string) {
    const b = new TextEncoder().encode(s);
    this.u64(b.length);
    this.push(b);
  }
  pad(to: number) {
    const n = (to - (this.length % to)) % to;
    if (n) this.push(new Uint8Array(n));
  }
  value(v: Value) {
    switch (v.type) {
      case 'u32': this.u32(T.u32); this.u32(v.value); break;
      case 'i32': this.u32(T.i32); this.i32(v.value); break;
      case 'f32': this.u32(T.f32); this.f32(v.value); break;
      case 'bool': this.u32(T.bool); this.push(new Uint8Array([v.value ? 1 : 0])); break;
      case 'string': this.u32(T.string); this.str(v.value); break;
      case 'strings': this.u32(T.array); this.u32(T.string); this.u64(v.value.length); for (const s of v.value) this.str(s); break;
      case 'i32s': this.u32(T.array); this.u32(T.i32); this.u64(v.value.length); for (const n of v.value) this.i32(n); break;
    }
  }
  bytes(): Uint8Array {
    const out = new Uint8Array(this.length);
    let o = 0;
    for (const p of this.parts) {
      out.set(p, o);
      o += p.length;
    }
    return out;
  }
}

/** HF Qwen2 tensor name → llama.cpp's, or undefined for tensors llama.cpp does not take. */
function ggufName(hf: string): string | undefined {
  const fixed: Record<string, string> = {
    'model.embed_tokens.weight': 'token_embd.weight',
    'model.norm.weight': 'output_norm.weight',
    'lm_head.weight': 'output.weight',
  };
  if (fixed[hf]) return fixed[hf];
  const m = /^model\.layers\.(\d+)\.(.+)$/.exec(hf);
  if (!m) return undefined;
  const part: Record<string, string> = {
    'input_layernorm.weight': 'attn_norm.weight',
    'post_attention_layernorm.weight': 'ffn_norm.weight',
    'self_attn.q_proj.weight': 'attn_q.weight',
    'self_attn.q_proj.bias': 'attn_q.bias',
    'self_attn.k_proj.weight': 'attn_k.weight',
    'self_attn.k_proj.bias': 'attn_k.bias',
    'self_attn.v_proj.weight': 'attn_v.weight',
    'self_attn.v_proj.bias': 'attn_v.bias',
    'self_attn.o_proj.weight': 'attn_output.weight',
    'mlp.gate_proj.weight': 'ffn_gate.weight',
    'mlp.up_proj.weight': 'ffn_up.weight',
    'mlp.down_proj.weight': 'ffn_down.weight',
  };
  const p = part[m[2]!];
  return p ? `blk.${m[1]}.${p}` : undefined;
}

interface TokenizerJson {
  model: { type: string; vocab: Record<string, number>; merges: (string | [string, string])[] };
  added_tokens: { id: number; content: string; special: boolean }[];
}

/** The tokenizer metadata llama.cpp's 'gpt2' (byte-level BPE) vocabulary reads, padded to vocabSize. */
function tokenizerMetadata(tokenizerPath: string, vocabSize: number, bos: number, eos: number): [string, Value][] {
  const tj = JSON.parse(readFileSync(tokenizerPath, 'utf8')) as TokenizerJson;
  if (tj.model.type !== 'BPE') throw new GgufError(`${tokenizerPath}: expected a BPE tokenizer, got ${tj.model.type}`);
  const tokens: string[] = Array.from({ length: vocabSize }, (_, i) => `[PAD${i}]`);
  const types: number[] = new Array<number>(vocabSize).fill(TOKEN_UNUSED);
  for (const [tok, id] of Object.entries(tj.model.vocab)) {
    if (id < vocabSize) {
      tokens[id] = tok;
      types[id] = TOKEN_NORMAL;
    }
  }
  for (const a of tj.added_tokens) {
    if (a.id < vocabSize) {
      tokens[a.id] = a.content;
      types[a.id] = a.special ? TOKEN_CONTROL : TOKEN_USER_DEFINED;
    }
  }
  const merges = tj.model.merges.map((m) => (typeof m === 'string' ? m : m.join(' ')));
  return [
    ['tokenizer.ggml.model', { type: 'string', value: 'gpt2' }],
    ['tokenizer.ggml.pre', { type: 'string', value: 'qwen2' }],
    ['tokenizer.ggml.tokens', { type: 'strings', value: tokens }],
    ['tokenizer.ggml.token_type', { type: 'i32s', value: types }],
    ['tokenizer.ggml.merges', { type: 'strings', value: merges }],
    ['tokenizer.ggml.bos_token_id', { type: 'u32', value: bos }],
    ['tokenizer.ggml.eos_token_id', { type: 'u32', value: eos }],
    ['tokenizer.ggml.padding_token_id', { type: 'u32', value: bos }],
    ['tokenizer.ggml.add_bos_token', { type: 'bool', value: false }],
  ];
}

interface Qwen2Config {
  model_type: string;
  hidden_size: number;
  intermediate_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  num_key_value_heads: number;
  vocab_size: number;
  max_position_embeddings: number;
  rms_norm_eps: number;
  rope_theta: number;
  bos_token_id?: number;
  eos_token_id?: number | number[];
}

export interface GgufSummary {
  path: string;
  format: GgufFormat;
  /** Bytes of weights a decode step reads: every matrix but the embedding, plus the LM head. */
  bytesPerToken: number;
}

/**
 * Converts `dir` (config.json + model.safetensors of a Qwen2 model, f32/bf16/f16) into a GGUF
 * file at `out` with matrices in `format`.
 */
export function writeQwen2Gguf(dir: string, out: string, format: GgufFormat, tokenizerPath: string): GgufSummary {
  const c = JSON.parse(readFileSync(`${dir}/config.json`, 'utf8')) as Qwen2Config;
  if (c.model_type !== 'qwen2') throw new GgufError(`${dir}: only qwen2 models are converted, got '${c.model_type}'`);
  const file = `${dir}/model.safetensors`;
  const fd = openSync(file, 'r');
  const lenBuf = Buffer.alloc(8);
  readSync(fd, lenBuf, 0, 8, 0);
  const headerLen = Number(lenBuf.readBigUInt64LE(0));
  const headerBytes = Buffer.alloc(headerLen);
  readSync(fd, headerBytes, 0, headerLen, 8);
  const header = parseHeader(new Uint8Array(headerBytes.buffer, headerBytes.byteOffset, headerLen), 'model.safetensors', statSync(file).size);

  const tensors: { name: string; info: TensorInfo; type: GgufFormat; bytes: number; offset: number }[] = [];
  let offset = 0;
  for (const info of header.tensors) {
    const name = ggufName(info.name);
    if (!name) continue;
    if (!['F32', 'BF16', 'F16'].includes(info.dtype)) throw new GgufError(`${info.name}: unsupported dtype ${info.dtype}`);
    const quantized = format === 'q8_0' || format === 'q4_0';
    const type: GgufFormat = info.shape.length === 1 ? 'f32' : quantized && name === 'token_embd.weight' ? 'f16' : format;
    if ((type === 'q8_0' || type === 'q4_0') && info.shape[info.shape.length - 1]! % QK !== 0)
      throw new GgufError(`${info.name}: rows of ${info.shape[info.shape.length - 1]} values do not split into ${type} blocks of ${QK}`);
    const bytes = tensorBytes(type, info.shape.reduce((a, b) => a * b, 1));
    tensors.push({ name, info, type, bytes, offset });
    offset += Math.ceil(bytes / ALIGNMENT) * ALIGNMENT;
  }
  const eos = Array.isArray(c.eos_token_id) ? c.eos_token_id[0]! : (c.eos_token_id ?? 151645);
  const meta: [string, Value][] = [
    ['general.architecture', { type: 'string', value: 'qwen2' }],
    ['general.name', { type: 'string', value: dir.split('/').pop() ?? 'qwen2' }],
    ['general.alignment', { type: 'u32', value: ALIGNMENT }],
    ['qwen2.context_length', { type: 'u32', value: c.max_position_embeddings }],
    ['qwen2.embedding_length', { type: 'u32', value: c.hidden_size }],
    ['qwen2.block_count', { type: 'u32', value: c.num_hidden_layers }],
    ['qwen2.feed_forward_length', { type: 'u32', value: c.intermediate_size }],
    ['qwen2.attention.head_count', { type: 'u32', value: c.num_attention_heads }],
    ['qwen2.attention.head_count_kv', { type: 'u32', value: c.num_key_value_heads }],
    ['qwen2.rope.freq_base', { type: 'f32', value: c.rope_theta }],
    ['qwen2.attention.layer_norm_rms_epsilon', { type: 'f32', value: c.rms_norm_eps }],
    ...tokenizerMetadata(tokenizerPath, c.vocab_size, c.bos_token_id ?? 151643, eos),
  ];

  const w = new ByteWriter();
  w.u32(0x46554747); // "GGUF"
  w.u32(3);
  w.u64(tensors.length);
  w.u64(meta.length);
  for (const [k, v] of meta) {
    w.str(k);
    w.value(v);
  }
  for (const t of tensors) {
    w.str(t.name);
    w.u32(t.info.shape.length);
    for (const d of [...t.info.shape].reverse()) w.u64(d);
    w.u32(GGML_TYPE[t.type]);
    w.u64(t.offset);
  }
  w.pad(ALIGNMENT);

  const outFd = openSync(out, 'w');
  try {
    writeSync(outFd, w.bytes());
    for (const t of tensors) {
      const src: FloatFormat = t.info.dtype === 'F32' ? 'f32' : t.info.dtype === 'BF16' ? 'bf16' : 'f16';
      const srcBytes = src === 'f32' ? 4 : 2;
      const n = t.info.end - t.info.start;
      for (let pos = 0; pos < n; pos += CHUNK_ELEMENTS * srcBytes) {
        const len = Math.min(CHUNK_ELEMENTS * srcBytes, n - pos);
        const buf = Buffer.alloc(len);
        readSync(fd, buf, 0, len, t.info.start + pos);
        writeSync(outFd, convert(new Uint8Array(buf.buffer, buf.byteOffset, len), src, t.type));
      }
      const pad = (ALIGNMENT - (t.bytes % ALIGNMENT)) % ALIGNMENT;
      if (pad) writeSync(outFd, new Uint8Array(pad));
    }
  } finally {
    closeSync(outFd);
    closeSync(fd);
  }
  const matrices = tensors.filter((t) => t.info.shape.length === 2);
  const embed = matrices.find((t) => t.name === 'token_embd.weight');
  const head = matrices.find((t) => t.name === 'output.weight') ?? embed;
  const bytesPerToken = matrices.filter((t) => t.name !== 'token_embd.weight' && t.name !== 'output.weight').reduce((s, t) => s + t.bytes, 0) + (head?.bytes ?? 0);
  return { path: out, format, bytesPerToken };
}

/** Converts a chunk (whole blocks: CHUNK_ELEMENTS and every row length are multiples of 32). */
function convert(bytes: Uint8Array, from: FloatFormat, to: GgufFormat): Uint8Array {
  if (from === to) return bytes;
  const n = bytes.length / BYTES[from];
  const f32 =
    from === 'f32'
      ? new Float32Array(bytes.buffer, bytes.byteOffset, n)
      : Float32Array.from(new Uint16Array(bytes.buffer, bytes.byteOffset, n), from === 'bf16' ? bf16ToF32 : f16ToF32);
  if (to === 'f32') return new Uint8Array(f32.buffer, f32.byteOffset, f32.byteLength);
  if (to === 'q8_0' || to === 'q4_0') return quantizeBlocks(f32, to);
  const out = new Uint16Array(n);
  const enc = to === 'bf16' ? f32ToBf16 : f32ToF16;
  for (let i = 0; i < n; i++) out[i] = enc(f32[i]!);
  return new Uint8Array(out.buffer);
}

/** ggml's reference quantizers (quantize_row_q8_0_ref / quantize_row_q4_0_ref), block by block. */
export function quantizeBlocks(x: Float32Array, to: 'q8_0' | 'q4_0'): Uint8Array {
  if (x.length % QK !== 0) throw new GgufError(`${x.length} values do not split into ${to} blocks of ${QK}`);
  const blocks = x.length / QK;
  const size = BLOCK_BYTES[to];
  const out = new Uint8Array(blocks * size);
  const view = new DataView(out.buffer);
  for (let b = 0; b < blocks; b++) {
    const at = b * size;
    const base = b * QK;
    let amax = 0;
    let max = 0;
    for (let j = 0; j < QK; j++) {
      const v = x[base + j]!;
      if (Math.abs(v) > amax) {
        amax = Math.abs(v);
        max = v;
      }
    }
    if (to === 'q8_0') {
      const d = amax / 127;
      const id = d ? 1 / d : 0;
      view.setUint16(at, f32ToF16(d), true);
      // C's roundf: halves away from zero.
      for (let j = 0; j < QK; j++) view.setInt8(at + 2 + j, Math.sign(x[base + j]! * id) * Math.round(Math.abs(x[base + j]! * id)));
    } else {
      const d = max / -8;
      const id = d ? 1 / d : 0;
      view.setUint16(at, f32ToF16(d), true);
      // (int8_t)(v + 8.5f) truncates toward zero; v >= -8 keeps it non-negative.
      const nibble = (v: number) => Math.min(15, Math.trunc(v * id + 8.5));
      for (let j = 0; j < QK / 2; j++) out[at + 2 + j] = nibble(x[base + j]!) | (nibble(x[base + QK / 2 + j]!) << 4);
    }
  }
  return out;
}
