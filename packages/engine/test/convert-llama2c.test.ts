// Checks the committed models/stories260K folder: the converter reproduces it, its tensors
// match llama2.c's .bin (with wq/wk permuted to HF's rotate-half layout), its tokenizer agrees
// with llama2.c's own merge-by-score encoder (and Python `tokenizers` when the venv has it),
// and a float64 HF-layout forward pass over it reproduces llama2.c's committed greedy story.
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { convertLlama2c } from '../../../scripts/convert-llama2c.ts';
import { directorySource } from '../src/files.ts';
import { openCheckpoint, type Checkpoint } from '../src/safetensors.ts';

const root = fileURLToPath(new URL('../../../', import.meta.url));
const fixtures = join(root, '../shared/fixtures/stories260K');
const modelDir = join(root, 'models/stories260K');
const haveFixtures = existsSync(join(fixtures, 'stories260K.bin'));
const GENERATED = ['config.json', 'generation_config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json'];

// Dims of stories260K, from its README.
const DIM = 64, HIDDEN = 172, LAYERS = 5, HEADS = 8, KV_HEADS = 4, VOCAB = 512, SEQ = 512;
const HD = DIM / HEADS, KV_DIM = HD * KV_HEADS;

/** Reads the .bin with its own offset arithmetic, independent of the converter's reader. */
function binArrays(bytes: Uint8Array): Record<string, Float32Array> {
  const f = new Float32Array(bytes.slice(28).buffer);
  const out: Record<string, Float32Array> = {};
  let o = 0;
  const take = (name: string, n: number) => {
    out[name] = f.subarray(o, o + n);
    o += n;
  };
  take('emb', VOCAB * DIM);
  for (const [name, n] of [['rms_att', DIM], ['wq', DIM * DIM], ['wk', KV_DIM * DIM], ['wv', KV_DIM * DIM], ['wo', DIM * DIM], ['rms_ffn', DIM], ['w1', HIDDEN * DIM], ['w2', DIM * HIDDEN], ['w3', HIDDEN * DIM]] as const) {
    for (let l = 0; l < LAYERS; l++) take(`${name}${l}`, n);
  }
  take('rms_final', DIM);
  take('freq', SEQ * HD);
  expect(o).toBe(f.length);
  return out;
}

async function f32(ck: Checkpoint, name: string): Promise<Float32Array> {
  return new Float32Array((await ck.read(name)).slice().buffer);
}

interface Tok {
  encode(text: string): { ids: number[] };
  decode(ids: number[], opts?: { skip_special_tokens?: boolean }): string;
}

async function hfTokenizer(): Promise<Tok> {
  // @huggingface/tokenizers is a dependency of the chat package, resolved from there.
  const url = new URL('../../chat/node_modules/@huggingface/tokenizers/dist/tokenizers.mjs', import.meta.url).href;
  const mod = (await import(url)) as { Tokenizer: new (json: unknown, config: unknown) => Tok };
  const json = JSON.parse(await readFile(join(modelDir, 'tokenizer.json'), 'utf8'));
  const config = JSON.parse(await readFile(join(modelDir, 'tokenizer_config.json'), 'utf8'));
  return new mod.Tokenizer(json, config);
}

/** run.c's encode(): BOS, dummy-prefix space, UTF-8 code points or byte fallback, then merge the best-scoring pair until none is left. */
function llama2cEncode(text: string, pieces: { text: string; score: number }[]): number[] {
  const ids = new Map(pieces.map((p, i) => [p.text, i]));
  const toks = [1];
  if (text) toks.push(ids.get(' ')!);
  for (const ch of text) {
    const id = ids.get(ch);
    if (id !== undefined) toks.push(id);
    else for (const b of new TextEncoder().encode(ch)) toks.push(b + 3);
  }
  for (;;) {
    let best = -1e10, at = -1, bestId = -1;
    for (let i = 1; i < toks.length - 1; i++) {
      const id = ids.get(pieces[toks[i]!]!.text + pieces[toks[i + 1]!]!.text);
      if (id !== undefined && pieces[id]!.score > best) [best, at, bestId] = [pieces[id]!.score, i, id];
    }
    if (at < 0) return toks;
    toks.splice(at, 2, bestId);
  }
}

function readTok512(bytes: Uint8Array): { text: string; score: number }[] {
  const dv = new DataView(bytes.buffer, bytes.byteOffset);
  const out = [];
  let o = 4;
  for (let i = 0; i < VOCAB; i++) {
    const score = dv.getFloat32(o, true);
    const len = dv.getInt32(o + 4, true);
    out.push({ score, text: new TextDecoder().decode(bytes.subarray(o + 8, o + 8 + len)) });
    o += 8 + len;
  }
  return out;
}

/** Greedy decoding with a float64 HF Llama forward pass (rotate-half RoPE, GQA, tied head). */
async function greedy(ck: Checkpoint, steps: number): Promise<number[]> {
  const cfg = JSON.parse(await readFile(join(modelDir, 'config.json'), 'utf8'));
  const W: Record<string, Float32Array> = {};
  for (const name of ck.tensors.keys()) W[name] = await f32(ck, name);
  const matvec = (w: Float32Array, x: Float64Array, rows: number) => {
    const cols = x.length;
    const y = new Float64Array(rows);
    for (let r = 0; r < rows; r++) {
      let s = 0;
      for (let c = 0; c < cols; c++) s += w[r * cols + c]! * x[c]!;
      y[r] = s;
    }
    return y;
  };
  const rmsnorm = (x: Float64Array, w: Float32Array) => {
    let ss = 0;
    for (const v of x) ss += v * v;
    const s = 1 / Math.sqrt(ss / x.length + cfg.rms_norm_eps);
    return x.map((v, i) => v * s * w[i]!);
  };
  const rope = (v: Float64Array, heads: number, pos: number) => {
    for (let h = 0; h < heads; h++) {
      for (let i = 0; i < HD / 2; i++) {
        const a = pos * cfg.rope_theta ** (-(2 * i) / HD);
        const [x1, x2] = [v[h * HD + i]!, v[h * HD + i + HD / 2]!];
        v[h * HD + i] = x1 * Math.cos(a) - x2 * Math.sin(a);
        v[h * HD + i + HD / 2] = x2 * Math.cos(a) + x1 * Math.sin(a);
      }
    }
  };
  const kCache: Float64Array[][] = Array.from({ length: LAYERS }, () => []);
  const vCache: Float64Array[][] = Array.from({ length: LAYERS }, () => []);
  const out: number[] = [];
  let token = 1;
  for (let pos = 0; pos < steps; pos++) {
    let x = Float64Array.from(W['model.embed_tokens.weight']!.subarray(token * DIM, (token + 1) * DIM));
    for (let l = 0; l < LAYERS; l++) {
      const p = `model.layers.${l}.`;
      const h = rmsnorm(x, W[`${p}input_layernorm.weight`]!);
      const q = matvec(W[`${p}self_attn.q_proj.weight`]!, h, DIM);
      const k = matvec(W[`${p}self_attn.k_proj.weight`]!, h, KV_DIM);
      const v = matvec(W[`${p}self_attn.v_proj.weight`]!, h, KV_DIM);
      rope(q, HEADS, pos);
      rope(k, KV_HEADS, pos);
      kCache[l]!.push(k);
      vCache[l]!.push(v);
      const att = new Float64Array(DIM);
      for (let hh = 0; hh < HEADS; hh++) {
        const kv = Math.floor(hh / (HEADS / KV_HEADS)) * HD;
        const scores = kCache[l]!.map((kt) => {
          let s = 0;
          for (let i = 0; i < HD; i++) s += q[hh * HD + i]! * kt[kv + i]!;
          return s / Math.sqrt(HD);
        });
        const m = Math.max(...scores);
        const e = scores.map((s) => Math.exp(s - m));
        const z = e.reduce((a, b) => a + b, 0);
        e.forEach((w, t) => {
          for (let i = 0; i < HD; i++) att[hh * HD + i] += (w / z) * vCache[l]![t]![kv + i]!;
        });
      }
      x = x.map((xv, i) => xv + matvec(W[`${p}self_attn.o_proj.weight`]!, att, DIM)[i]!);
      const h2 = rmsnorm(x, W[`${p}post_attention_layernorm.weight`]!);
      const g = matvec(W[`${p}mlp.gate_proj.weight`]!, h2, HIDDEN);
      const u = matvec(W[`${p}mlp.up_proj.weight`]!, h2, HIDDEN);
      const act = g.map((gv, i) => (gv / (1 + Math.exp(-gv))) * u[i]!);
      const down = matvec(W[`${p}mlp.down_proj.weight`]!, act, DIM);
      x = x.map((xv, i) => xv + down[i]!);
    }
    const logits = matvec(W['model.embed_tokens.weight']!, rmsnorm(x, W['model.norm.weight']!), VOCAB);
    token = logits.indexOf(Math.max(...logits));
    out.push(token);
  }
  return out;
}

describe.skipIf(!haveFixtures)(`stories260K conversion (needs ${fixtures})`, () => {
  let tmp: string;
  let ck: Checkpoint;
  let bin: Record<string, Float32Array>;
  beforeAll(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'convert-llama2c-'));
    ck = await openCheckpoint(directorySource(modelDir));
    bin = binArrays(new Uint8Array(await readFile(join(fixtures, 'stories260K.bin'))));
  });
  afterAll(() => rm(tmp, { recursive: true, force: true }));

  it('re-running the converter reproduces the committed folder byte for byte', async () => {
    const written = await convertLlama2c(join(fixtures, 'stories260K.bin'), join(fixtures, 'tok512.bin'), tmp);
    expect(written.sort()).toEqual(GENERATED);
    for (const f of GENERATED) {
      const [a, b] = await Promise.all([readFile(join(tmp, f)), readFile(join(modelDir, f))]);
      expect(a.equals(b), `${f} differs from the committed models/stories260K/${f}`).toBe(true);
    }
    for (const f of ['LICENSE', 'README.md']) expect(existsSync(join(modelDir, f)), f).toBe(true);
  });

  it('writes a tied-embedding Llama config and HF tensor names', async () => {
    const cfg = JSON.parse(await readFile(join(modelDir, 'config.json'), 'utf8'));
    expect(cfg).toMatchObject({
      architectures: ['LlamaForCausalLM'], model_type: 'llama', hidden_size: DIM, intermediate_size: HIDDEN,
      num_hidden_layers: LAYERS, num_attention_heads: HEADS, num_key_value_heads: KV_HEADS, head_dim: HD,
      vocab_size: VOCAB, max_position_embeddings: SEQ, rms_norm_eps: 1e-5, rope_theta: 10000,
      tie_word_embeddings: true, bos_token_id: 1, eos_token_id: 2, torch_dtype: 'float32',
    });
    expect(ck.tensors.size).toBe(2 + 9 * LAYERS);
    expect(ck.has('lm_head.weight')).toBe(false);
    for (const t of ck.tensors.values()) expect(t.dtype).toBe('F32');
    expect(ck.get('model.layers.4.mlp.down_proj.weight').shape).toEqual([DIM, HIDDEN]);
    expect(ck.get('model.layers.0.self_attn.k_proj.weight').shape).toEqual([KV_DIM, DIM]);
  });

  it('holds the .bin values, with wq/wk rows moved from interleaved pairs to halves', async () => {
    expect(await f32(ck, 'model.embed_tokens.weight')).toEqual(bin.emb);
    expect(await f32(ck, 'model.norm.weight')).toEqual(bin.rms_final);
    for (let l = 0; l < LAYERS; l++) {
      const p = `model.layers.${l}.`;
      expect(await f32(ck, `${p}input_layernorm.weight`)).toEqual(bin[`rms_att${l}`]);
      expect(await f32(ck, `${p}post_attention_layernorm.weight`)).toEqual(bin[`rms_ffn${l}`]);
      expect(await f32(ck, `${p}self_attn.v_proj.weight`)).toEqual(bin[`wv${l}`]);
      expect(await f32(ck, `${p}self_attn.o_proj.weight`)).toEqual(bin[`wo${l}`]);
      expect(await f32(ck, `${p}mlp.gate_proj.weight`)).toEqual(bin[`w1${l}`]);
      expect(await f32(ck, `${p}mlp.down_proj.weight`)).toEqual(bin[`w2${l}`]);
      expect(await f32(ck, `${p}mlp.up_proj.weight`)).toEqual(bin[`w3${l}`]);
      for (const [name, src, heads] of [['q_proj', 'wq', HEADS], ['k_proj', 'wk', KV_HEADS]] as const) {
        const hf = await f32(ck, `${p}self_attn.${name}.weight`);
        const raw = bin[`${src}${l}`]!;
        expect(hf).not.toEqual(raw);
        const row = (a: Float32Array, r: number) => a.subarray(r * DIM, (r + 1) * DIM);
        for (const [h, j] of [[0, 0], [0, 3], [1, 1], [heads - 1, 2]] as const) {
          expect(row(hf, h * HD + j), `${name} head ${h} pair ${j} first`).toEqual(row(raw, h * HD + 2 * j));
          expect(row(hf, h * HD + HD / 2 + j), `${name} head ${h} pair ${j} second`).toEqual(row(raw, h * HD + 2 * j + 1));
        }
      }
    }
  });

  it("tokenizes like llama2.c's encoder and round-trips text", async () => {
    const tok = await hfTokenizer();
    const pieces = readTok512(new Uint8Array(await readFile(join(fixtures, 'tok512.bin'))));
    const story = await readFile(join(fixtures, 'expected_greedy200.txt'), 'utf8');
    const texts = [story, 'Once upon a time, there was a little girl named Lily.', '  two  spaces\nand 2024 digits', 'naïve café 日本 🙂', 'x', ''];
    for (const text of texts) {
      const ids = tok.encode(text).ids;
      expect(ids, JSON.stringify(text.slice(0, 30))).toEqual(llama2cEncode(text, pieces));
      expect(tok.decode(ids, { skip_special_tokens: true })).toBe(text);
    }
  });

  it('matches Python tokenizers when the reference venv has it', async (ctx) => {
    const py = join(root, '.venv/bin/python');
    const script = 'import sys,json; from tokenizers import Tokenizer; t=Tokenizer.from_file(sys.argv[1]); print(json.dumps([t.encode(s).ids for s in json.loads(sys.stdin.read())]))';
    const texts = ['Once upon a time, Tom and Sue went to the park.', '  two  spaces\nnewline', 'naïve café 日本 🙂', ''];
    let out: string;
    try {
      out = execFileSync(py, ['-c', script, join(modelDir, 'tokenizer.json')], { input: JSON.stringify(texts), encoding: 'utf8', stdio: ['pipe', 'pipe', 'ignore'] });
    } catch {
      ctx.skip(`no ${py} with the 'tokenizers' package (scripts/setup-python.sh makes it)`);
      return;
    }
    const tok = await hfTokenizer();
    expect(JSON.parse(out)).toEqual(texts.map((t) => tok.encode(t).ids));
  });

  it("a float64 HF-layout forward pass reproduces llama2.c's greedy 200-token story", async () => {
    const ids = await greedy(ck, 200);
    const story = await readFile(join(fixtures, 'expected_greedy200.txt'), 'utf8');
    expect((await hfTokenizer()).decode(ids, { skip_special_tokens: true })).toBe(story);
  });
});
