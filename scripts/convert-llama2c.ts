// Converts a llama2.c checkpoint (legacy version-0 .bin) and its tokenizer (.bin) into a
// Hugging Face Llama folder: config.json, generation_config.json, model.safetensors (F32),
// tokenizer.json (SentencePiece BPE with byte fallback) and tokenizer_config.json.
//
//   npx tsx scripts/convert-llama2c.ts stories260K.bin tok512.bin models/stories260K
//
// Two layout changes happen on the way: llama2.c's RoPE rotates interleaved pairs
// (x[2i], x[2i+1]) while HF Llama rotates halves (x[i], x[i + head_dim/2]), so the rows of
// wq and wk are permuted per head (as llama2.c's export.py and HF's
// convert_llama_weights_to_hf.py do); and tokenizer pieces get back their `▁`.

import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { pathToFileURL } from 'node:url';
import { writeSafetensors, type TensorToWrite } from '@webgpu-chat/engine/internal';

export class ConvertError extends Error {
  override name = 'ConvertError';
}

export interface Llama2cConfig {
  dim: number;
  hiddenDim: number;
  nLayers: number;
  nHeads: number;
  nKvHeads: number;
  vocabSize: number;
  seqLen: number;
  /** The classifier reuses the token embedding (the header's vocab_size is positive). */
  sharedClassifier: boolean;
}

/** llama2.c's weights, named as in its run.c, each one layer's slice for per-layer arrays. */
export interface Llama2cWeights {
  config: Llama2cConfig;
  tokenEmbedding: Float32Array; // [vocab, dim]
  rmsAtt: Float32Array[]; // L × [dim]
  wq: Float32Array[]; // L × [dim, dim], interleaved RoPE pairs
  wk: Float32Array[]; // L × [kv_dim, dim], interleaved RoPE pairs
  wv: Float32Array[]; // L × [kv_dim, dim]
  wo: Float32Array[]; // L × [dim, dim]
  rmsFfn: Float32Array[]; // L × [dim]
  w1: Float32Array[]; // L × [hidden, dim] (gate)
  w2: Float32Array[]; // L × [dim, hidden] (down)
  w3: Float32Array[]; // L × [hidden, dim] (up)
  rmsFinal: Float32Array; // [dim]
  wcls?: Float32Array; // [vocab, dim], only when not shared
}

const HEADER_INTS = 7;
/** llama2.c's newer export formats start with this magic ("ak42"); only version 0 has none. */
const LLAMA2C_MAGIC = 0x616b3432;
/** Caps on header fields, far above any llama2.c model, so a corrupt header cannot ask for absurd sizes. */
const MAX_DIM = 1 << 20;
const MAX_LAYERS = 1024;

function aligned(bytes: Uint8Array): Uint8Array {
  return bytes.byteOffset % 4 === 0 ? bytes : bytes.slice();
}

export function readLlama2cCheckpoint(fileBytes: Uint8Array, file = 'checkpoint'): Llama2cWeights {
  const bytes = aligned(fileBytes);
  if (bytes.length < HEADER_INTS * 4) throw new ConvertError(`${file}: ${bytes.length} bytes is too short for a llama2.c header`);
  const head = new Int32Array(bytes.buffer, bytes.byteOffset, HEADER_INTS);
  if (head[0] === LLAMA2C_MAGIC) {
    throw new ConvertError(`${file}: llama2.c export format version ≥ 1 (magic "ak42"); only the legacy version-0 format is supported`);
  }
  const [dim, hiddenDim, nLayers, nHeads, nKvHeads, vocabRaw, seqLen] = Array.from(head) as [number, number, number, number, number, number, number];
  const config: Llama2cConfig = {
    dim, hiddenDim, nLayers, nHeads, nKvHeads, vocabSize: Math.abs(vocabRaw), seqLen, sharedClassifier: vocabRaw > 0,
  };
  const dims = [dim, hiddenDim, nHeads, nKvHeads, Math.abs(vocabRaw), seqLen];
  if (dims.some((d) => d <= 0 || d > MAX_DIM) || nLayers <= 0 || nLayers > MAX_LAYERS || dim % nHeads || nHeads % nKvHeads || (dim / nHeads) % 2) {
    throw new ConvertError(`${file}: implausible llama2.c header ${JSON.stringify(config)}`);
  }
  const headDim = dim / nHeads;
  const kvDim = headDim * nKvHeads;
  const V = config.vocabSize;
  const L = nLayers;
  const perLayer = 2 * dim + 2 * dim * dim + 2 * kvDim * dim + 3 * hiddenDim * dim;
  const floats = V * dim + L * perLayer + dim + seqLen * headDim + (config.sharedClassifier ? 0 : V * dim);
  const want = HEADER_INTS * 4 + floats * 4;
  if (bytes.length !== want) {
    throw new ConvertError(`${file}: ${bytes.length} bytes, but a version-0 checkpoint with header ${JSON.stringify(config)} has ${want}`);
  }
  let off = HEADER_INTS * 4;
  const take = (n: number) => {
    const a = new Float32Array(bytes.buffer, bytes.byteOffset + off, n).slice();
    off += n * 4;
    return a;
  };
  const layers = (n: number) => Array.from({ length: L }, () => take(n));
  const tokenEmbedding = take(V * dim);
  const rmsAtt = layers(dim);
  const wq = layers(dim * dim);
  const wk = layers(kvDim * dim);
  const wv = layers(kvDim * dim);
  const wo = layers(dim * dim);
  const rmsFfn = layers(dim);
  const w1 = layers(hiddenDim * dim);
  const w2 = layers(dim * hiddenDim);
  const w3 = layers(hiddenDim * dim);
  const rmsFinal = take(dim);
  off += seqLen * headDim * 4; // freq_cis_real and freq_cis_imag [seq_len, head_dim/2]: unused
  const w: Llama2cWeights = { config, tokenEmbedding, rmsAtt, wq, wk, wv, wo, rmsFfn, w1, w2, w3, rmsFinal };
  if (!config.sharedClassifier) w.wcls = take(V * dim);
  return w;
}

/**
 * Reorders each head's rows from interleaved RoPE pairs to HF's halves: HF row h*hd + j is
 * llama2.c row h*hd + 2j, and HF row h*hd + hd/2 + j is llama2.c row h*hd + 2j + 1.
 */
export function interleavedToHalves(w: Float32Array, nHeads: number, cols: number): Float32Array {
  const rows = w.length / cols;
  const hd = rows / nHeads;
  const out = new Float32Array(w.length);
  for (let h = 0; h < nHeads; h++) {
    for (let j = 0; j < hd / 2; j++) {
      out.set(w.subarray((h * hd + 2 * j) * cols, (h * hd + 2 * j + 1) * cols), (h * hd + j) * cols);
      out.set(w.subarray((h * hd + 2 * j + 1) * cols, (h * hd + 2 * j + 2) * cols), (h * hd + hd / 2 + j) * cols);
    }
  }
  return out;
}

export function hfTensors(w: Llama2cWeights): TensorToWrite[] {
  const { dim, hiddenDim, nHeads, nKvHeads, vocabSize } = w.config;
  const kvDim = (dim / nHeads) * nKvHeads;
  const t = (name: string, shape: number[], data: Float32Array): TensorToWrite => ({ name, dtype: 'F32', shape, data });
  const out = [t('model.embed_tokens.weight', [vocabSize, dim], w.tokenEmbedding)];
  for (let i = 0; i < w.config.nLayers; i++) {
    const p = `model.layers.${i}`;
    out.push(
      t(`${p}.input_layernorm.weight`, [dim], w.rmsAtt[i]!),
      t(`${p}.self_attn.q_proj.weight`, [dim, dim], interleavedToHalves(w.wq[i]!, nHeads, dim)),
      t(`${p}.self_attn.k_proj.weight`, [kvDim, dim], interleavedToHalves(w.wk[i]!, nKvHeads, dim)),
      t(`${p}.self_attn.v_proj.weight`, [kvDim, dim], w.wv[i]!),
      t(`${p}.self_attn.o_proj.weight`, [dim, dim], w.wo[i]!),
      t(`${p}.post_attention_layernorm.weight`, [dim], w.rmsFfn[i]!),
      t(`${p}.mlp.gate_proj.weight`, [hiddenDim, dim], w.w1[i]!),
      t(`${p}.mlp.down_proj.weight`, [dim, hiddenDim], w.w2[i]!),
      t(`${p}.mlp.up_proj.weight`, [hiddenDim, dim], w.w3[i]!),
    );
  }
  out.push(t('model.norm.weight', [dim], w.rmsFinal));
  if (w.wcls) out.push(t('lm_head.weight', [vocabSize, dim], w.wcls));
  return out;
}

export function hfConfig(c: Llama2cConfig): Record<string, unknown> {
  return {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    hidden_size: c.dim,
    intermediate_size: c.hiddenDim,
    num_hidden_layers: c.nLayers,
    num_attention_heads: c.nHeads,
    num_key_value_heads: c.nKvHeads,
    head_dim: c.dim / c.nHeads,
    vocab_size: c.vocabSize,
    max_position_embeddings: c.seqLen,
    hidden_act: 'silu',
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    rope_scaling: null,
    attention_bias: false,
    attention_dropout: 0,
    mlp_bias: false,
    tie_word_embeddings: c.sharedClassifier,
    bos_token_id: 1,
    eos_token_id: 2,
    initializer_range: 0.02,
    pretraining_tp: 1,
    use_cache: true,
    torch_dtype: 'float32',
  };
}

export interface Llama2cPiece {
  score: number;
  /** The piece as UTF-8 text with `▁` for spaces (and `<s>`/`</s>` for BOS/EOS). */
  text: string;
}

export function readLlama2cTokenizer(fileBytes: Uint8Array, vocabSize: number, file = 'tokenizer'): Llama2cPiece[] {
  const view = new DataView(fileBytes.buffer, fileBytes.byteOffset, fileBytes.byteLength);
  const dec = new TextDecoder('utf-8', { fatal: true });
  const pieces: Llama2cPiece[] = [];
  let off = 4; // int32 max_token_length, not needed
  for (let i = 0; i < vocabSize; i++) {
    if (off + 8 > fileBytes.length) throw new ConvertError(`${file}: truncated at token ${i} of ${vocabSize}`);
    const score = view.getFloat32(off, true);
    const len = view.getInt32(off + 4, true);
    off += 8;
    if (len < 0 || off + len > fileBytes.length) throw new ConvertError(`${file}: token ${i} has an invalid length ${len}`);
    let text: string;
    try {
      text = dec.decode(fileBytes.subarray(off, off + len));
    } catch {
      throw new ConvertError(`${file}: token ${i} is not valid UTF-8`);
    }
    off += len;
    // llama2.c's tokenizer.py wrote BOS/EOS as "\n<s>\n" / "\n</s>\n" and `▁` as a space.
    if (i === 1 || i === 2) text = text.trim();
    pieces.push({ score, text: text.replaceAll(' ', '▁') });
  }
  if (off !== fileBytes.length) throw new ConvertError(`${file}: ${fileBytes.length - off} bytes left after ${vocabSize} tokens; wrong vocabulary size?`);
  const expect = ['<unk>', '<s>', '</s>'];
  expect.forEach((s, i) => {
    if (pieces[i]?.text !== s) throw new ConvertError(`${file}: token ${i} is '${pieces[i]?.text}', expected '${s}'`);
  });
  return pieces;
}

/**
 * Merges as transformers' SentencePiece→BPE converter (generate_merges) derives them: every
 * split of a piece into two pieces of the vocabulary, ordered by the piece's score (highest
 * first), then by longer left part, then longer right part; splits of one piece by the ids
 * of their parts. BPE by merge rank then reproduces SentencePiece's merge-by-score.
 */
export function mergesFromScores(pieces: readonly Llama2cPiece[]): [string, string][] {
  const vocab = new Map<string, number>();
  pieces.forEach((p, i) => vocab.set(p.text, i));
  const merges: { l: string; r: string; score: number; ll: number; lr: number }[] = [];
  for (const p of pieces) {
    const chars = [...p.text]; // Python slices by code point
    const local: typeof merges = [];
    for (let k = 1; k < chars.length; k++) {
      const l = chars.slice(0, k).join('');
      const r = chars.slice(k).join('');
      if (vocab.has(l) && vocab.has(r)) local.push({ l, r, score: p.score, ll: k, lr: chars.length - k });
    }
    local.sort((a, b) => vocab.get(a.l)! - vocab.get(b.l)! || vocab.get(a.r)! - vocab.get(b.r)!);
    merges.push(...local);
  }
  merges.sort((a, b) => b.score - a.score || b.ll - a.ll || b.lr - a.lr);
  return merges.map((m) => [m.l, m.r]);
}

const SPECIAL = ['<unk>', '<s>', '</s>'];

export function tokenizerJson(pieces: readonly Llama2cPiece[]): Record<string, unknown> {
  const vocab: Record<string, number> = {};
  pieces.forEach((p, i) => {
    if (p.text in vocab) throw new ConvertError(`tokenizer: piece '${p.text}' appears twice (ids ${vocab[p.text]} and ${i})`);
    vocab[p.text] = i;
  });
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: SPECIAL.map((content, id) => ({
      id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true,
    })),
    // SentencePiece's add_dummy_prefix and its whitespace symbol, as in Llama 2's tokenizer.json.
    normalizer: {
      type: 'Sequence',
      normalizers: [
        { type: 'Prepend', prepend: '▁' },
        { type: 'Replace', pattern: { String: ' ' }, content: '▁' },
      ],
    },
    pre_tokenizer: null,
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [
        { SpecialToken: { id: '<s>', type_id: 0 } },
        { Sequence: { id: 'A', type_id: 0 } },
        { SpecialToken: { id: '<s>', type_id: 1 } },
        { Sequence: { id: 'B', type_id: 1 } },
      ],
      special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } },
    },
    decoder: {
      type: 'Sequence',
      decoders: [
        { type: 'Replace', pattern: { String: '▁' }, content: ' ' },
        { type: 'ByteFallback' },
        { type: 'Fuse' },
        { type: 'Strip', content: ' ', start: 1, stop: 0 },
      ],
    },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: '<unk>',
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      vocab,
      merges: mergesFromScores(pieces).map(([l, r]) => `${l} ${r}`),
    },
  };
}

export function tokenizerConfig(maxLength: number): Record<string, unknown> {
  const decoder: Record<string, unknown> = {};
  SPECIAL.forEach((content, id) => {
    decoder[id] = { content, lstrip: false, normalized: false, rstrip: false, single_word: false, special: true };
  });
  return {
    add_bos_token: true,
    add_eos_token: false,
    added_tokens_decoder: decoder,
    bos_token: '<s>',
    clean_up_tokenization_spaces: false,
    eos_token: '</s>',
    legacy: true,
    model_max_length: maxLength,
    pad_token: null,
    sp_model_kwargs: {},
    spaces_between_special_tokens: false,
    tokenizer_class: 'LlamaTokenizer',
    unk_token: '<unk>',
  };
}

const json = (v: unknown) => `${JSON.stringify(v, null, 2)}\n`;

/** Writes the HF folder; returns the file names written. */
export async function convertLlama2c(binPath: string, tokPath: string, outDir: string): Promise<string[]> {
  const weights = readLlama2cCheckpoint(new Uint8Array(await readFile(binPath)), binPath);
  const pieces = readLlama2cTokenizer(new Uint8Array(await readFile(tokPath)), weights.config.vocabSize, tokPath);
  const c = weights.config;
  const files: Record<string, string | Uint8Array> = {
    'config.json': json(hfConfig(c)),
    'generation_config.json': json({ bos_token_id: 1, eos_token_id: 2 }),
    'model.safetensors': writeSafetensors(hfTensors(weights), { format: 'pt' }),
    'tokenizer.json': json(tokenizerJson(pieces)),
    'tokenizer_config.json': json(tokenizerConfig(c.seqLen)),
  };
  await mkdir(outDir, { recursive: true });
  for (const [name, data] of Object.entries(files)) await writeFile(`${outDir}/${name}`, data);
  return Object.keys(files);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const [bin, tok, out] = process.argv.slice(2);
  if (!bin || !tok || !out) {
    console.error('usage: npx tsx scripts/convert-llama2c.ts MODEL.bin TOKENIZER.bin OUTDIR');
    process.exit(2);
  }
  const written = await convertLlama2c(bin, tok, out);
  console.log(`wrote ${written.join(', ')} to ${out}`);
}
