// The families added after the first ones (phi3, gemma2, gemma3_text, smollm3, granite, olmo2)
// beyond parity.test.ts: bf16 checkpoints with dtype auto, and load-time q8/q4 against
// Transformers run on the same weights quantized and dequantized on the host by the loader's own
// quantizer (so the engine's quantized kernels and the family's wiring are checked exactly, and
// the resident bytes against the plan), the GPU kernel
// variant (norms folded into the linear ops) against Transformers, the checkpoint fix-ups
// (a gemma3 image-text checkpoint's language model) and bad input.
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigError } from '../src/config.ts';
import { directorySource } from '../src/files.ts';
import { loadModel, planMemory } from '../src/model.ts';
import { parseConfig } from '../src/models/family.ts';
import { LOAD_TIME_QUANT, type QuantFormat, dequantize, quantize } from '../src/quant.ts';
import { bf16ToF32 } from '../src/dtype.ts';
import { openCheckpoint } from '../src/safetensors.ts';
import { type TensorToWrite, writeSafetensors } from '../src/safetensors-writer.ts';
import type { Model } from '../src/types.ts';
import { writeGeneratedModel } from './generated-model.ts';
import { rng, testGpu } from './harness.ts';
import { expectParity } from './parity-check.ts';
import { compareLogprobs, makeReferenceModel, pythonAvailable, referenceLogits, type ReferenceFamily } from './transformers-reference.ts';

interface Case {
  family: ReferenceFamily;
  config?: Record<string, unknown>;
}

// Each family with the variations that make it differ switched on (as in parity.test.ts).
const CASES: Case[] = [
  { family: 'phi3', config: { partial_rotary_factor: 0.5 } },
  { family: 'gemma2', config: { num_hidden_layers: 3, sliding_window: 32, attn_logit_softcapping: 2.5, final_logit_softcapping: 5.5, query_pre_attn_scalar: 24 } },
  { family: 'gemma3_text', config: { num_hidden_layers: 3, layer_types: ['sliding_attention', 'full_attention', 'sliding_attention'], sliding_window: 40 } },
  { family: 'smollm3', config: { num_hidden_layers: 3, no_rope_layers: [1, 0, 1] } },
  { family: 'granite', config: { embedding_multiplier: 3.0, residual_multiplier: 0.5, attention_multiplier: 0.1, logits_scaling: 4.0 } },
  { family: 'olmo2' },
];

const PROMPT_LEN = 64;
const json = (dir: string) => JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
const python = pythonAvailable();
const models: Model[] = [];
afterAll(() => models.forEach((m) => m.dispose()));

async function load(dir: string, opts: Parameters<typeof loadModel>[1] = {}): Promise<Model> {
  const model = await loadModel(dir, { gpu: await testGpu(), maxContext: 256, ...opts });
  models.push(model);
  return model;
}

/** All positions' logits of `prompt` in one forward. */
async function logitsOf(model: Model, prompt: number[]): Promise<Float32Array> {
  const s = model.createSession();
  const V = model.info.vocabSize;
  const out = new Float32Array(prompt.length * V);
  s.forward(prompt, { allLogits: true });
  for (let t = 0; t < prompt.length; t++) out.set(await s.logits(t), t * V);
  s.dispose();
  return out;
}

/** The decoder's linear layers as checkpoints store them (Phi-3's fused ones included): what load-time quantization applies to. */
const LINEAR = /^model\.layers\.\d+\.(self_attn\.(q|k|v|o|qkv)_proj|mlp\.(gate|up|down|gate_up)_proj)\.weight$/;

/** A copy of a bf16 folder in f32 whose linear layers are quantized and dequantized as loading with `format` does (row-wise groups along K). */
async function dequantizedFolder(from: string, format: QuantFormat): Promise<string> {
  const ckpt = await openCheckpoint(directorySource(from));
  const tensors: TensorToWrite[] = [];
  for (const [name, t] of ckpt.tensors) {
    const bits = new Uint16Array((await ckpt.read(name)).slice().buffer);
    let values = Float32Array.from(bits, bf16ToF32);
    if (LINEAR.test(name)) {
      const [rows, K] = t.shape as [number, number];
      const spec = LOAD_TIME_QUANT[format];
      values = Float32Array.from(dequantize(spec, quantize(values, rows, K, spec), rows, K));
    }
    tensors.push({ name, dtype: 'F32', shape: t.shape, data: values });
  }
  const dir = mkdtempSync(join(tmpdir(), `wgc-dequant-${format}-`));
  writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...json(from), dtype: 'float32' }));
  writeFileSync(join(dir, 'model.safetensors'), writeSafetensors(tensors, { format: 'pt' }));
  return dir;
}

describe.skipIf(!python.ok)('new families: dtype auto, q8 and q4 against Transformers', () => {
  for (const [i, c] of CASES.entries()) {
    it(`${c.family}: a bf16 checkpoint as stored, and quantized while loading`, async () => {
      const dir = await makeReferenceModel({ family: c.family, seed: 500 + i, dtype: 'bfloat16', ...(c.config ? { config: c.config } : {}) });
      const r = rng(40 + i);
      const prompt = Array.from({ length: PROMPT_LEN }, () => Math.floor(r() * 311));
      const check = async (model: Model, refDir: string, what: string) => {
        const cmp = compareLogprobs(await logitsOf(model, prompt), await referenceLogits(refDir, prompt, { dtype: 'float32' }), { minMargin: 1e-4 });
        console.log(`${c.family} ${what}: top-1 ${cmp.top1Agreement} over ${cmp.compared}, max |Δlogp| top-20 ${cmp.maxAbsErrTop20.toExponential(2)}, max KL ${cmp.maxKL.toExponential(2)}`);
        expect(cmp.top1Agreement).toBe(1);
        expect(cmp.maxAbsErrTop20).toBeLessThan(1e-3);
        expect(cmp.maxKL).toBeLessThan(1e-6);
      };
      const auto = await load(dir);
      expect(auto.info.dtype).toBe('bf16');
      await check(auto, dir, 'bf16 (dtype auto)');
      for (const format of ['q8', 'q4'] as const) {
        const model = await load(dir, { quantize: format });
        await check(model, await dequantizedFolder(dir, format), format);
        const plan = planMemory(model.info.config, 'bf16', 256, { quantize: format, tiles: model.info.variant === 'software' });
        expect(model.info.weightBytesByFormat?.[format]).toBe(plan.quantizedBytes);
        expect(model.info.weightBytes).toBe(plan.weightBytes);
      }
    });
  }
});

describe.skipIf(!python.ok)('new families on the GPU kernel variant (norms folded into the linear ops)', () => {
  for (const [i, c] of CASES.entries()) {
    it(`${c.family}: parity with Transformers`, async () => {
      const dir = await makeReferenceModel({ family: c.family, seed: 600 + i, dtype: 'float32', ...(c.config ? { config: c.config } : {}) });
      await expectParity(`${c.family} (gpu variant)`, await load(dir, { variant: 'gpu', maxContext: 512 }), dir, 70 + i);
    });
  }
});

/** Copies a model folder with its config replaced and its tensors renamed, dropped or added. */
async function rewriteFolder(
  from: string,
  config: Record<string, unknown>,
  rename: (name: string) => string | undefined,
  extra: TensorToWrite[] = [],
): Promise<string> {
  const ckpt = await openCheckpoint(directorySource(from));
  const tensors: TensorToWrite[] = [...extra];
  for (const [name, t] of ckpt.tensors) {
    const to = rename(name);
    if (to !== undefined) tensors.push({ name: to, dtype: t.dtype, shape: t.shape, data: await ckpt.read(name) });
  }
  const dir = mkdtempSync(join(tmpdir(), 'wgc-family-'));
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
  writeFileSync(join(dir, 'model.safetensors'), writeSafetensors(tensors, { format: 'pt' }));
  return dir;
}

describe.skipIf(!python.ok)('checkpoint fix-ups', () => {
  it('gemma3: the language model of an image-text checkpoint (text_config, language_model.model.* names) gives gemma3_text logits bit for bit', async () => {
    const text = await makeReferenceModel({ family: 'gemma3_text', seed: 700, dtype: 'float32' });
    const cfg = json(text);
    const vision: TensorToWrite = { name: 'vision_tower.vision_model.embeddings.patch_embedding.weight', dtype: 'F32', shape: [4, 3], data: new Float32Array(12) };
    for (const prefix of ['language_model.model.', 'model.language_model.']) {
      const mm = await rewriteFolder(
        text,
        { architectures: ['Gemma3ForConditionalGeneration'], model_type: 'gemma3', dtype: cfg.dtype, text_config: { ...cfg, model_type: 'gemma3_text' }, vision_config: { model_type: 'siglip_vision_model' } },
        (n) => n.replace(/^model\./, prefix),
        [vision],
      );
      const prompt = [2, 17, 250, 3, 99, 42, 42, 7, 310, 5];
      const [a, b] = [await load(text), await load(mm)];
      expect(b.info.modelType).toBe('gemma3');
      expect(await logitsOf(b, prompt)).toEqual(await logitsOf(a, prompt));
    }
  });

  it('phi3: a checkpoint with q/k/v and gate/up saved apart reads as Llama does; a GPTQ fused qkv_proj is refused by name', async () => {
    const fused = await makeReferenceModel({ family: 'phi3', seed: 701, dtype: 'float32' });
    const cfg = json(fused);
    const ckpt = await openCheckpoint(directorySource(fused));
    const qkv = ckpt.get('model.layers.0.self_attn.qkv_proj.weight');
    const [qDim, kvDim] = [64, 32];
    const parts: TensorToWrite[] = [];
    for (let l = 0; l < (cfg.num_hidden_layers as number); l++) {
      const p = `model.layers.${l}.`;
      const rows = async (name: string, a: number, b: number) => new Float32Array((await ckpt.read(name)).slice().buffer).slice(a * 64, b * 64);
      parts.push(
        { name: `${p}self_attn.q_proj.weight`, dtype: 'F32', shape: [qDim, 64], data: await rows(`${p}self_attn.qkv_proj.weight`, 0, qDim) },
        { name: `${p}self_attn.k_proj.weight`, dtype: 'F32', shape: [kvDim, 64], data: await rows(`${p}self_attn.qkv_proj.weight`, qDim, qDim + kvDim) },
        { name: `${p}self_attn.v_proj.weight`, dtype: 'F32', shape: [kvDim, 64], data: await rows(`${p}self_attn.qkv_proj.weight`, qDim + kvDim, qDim + 2 * kvDim) },
        { name: `${p}mlp.gate_proj.weight`, dtype: 'F32', shape: [96, 64], data: await rows(`${p}mlp.gate_up_proj.weight`, 0, 96) },
        { name: `${p}mlp.up_proj.weight`, dtype: 'F32', shape: [96, 64], data: await rows(`${p}mlp.gate_up_proj.weight`, 96, 192) },
      );
    }
    expect(qkv.shape).toEqual([qDim + 2 * kvDim, 64]);
    const apart = await rewriteFolder(fused, cfg, (n) => (/qkv_proj|gate_up_proj/.test(n) ? undefined : n), parts);
    const prompt = [1, 17, 250, 3, 99, 42, 42, 7, 310, 5];
    expect(await logitsOf(await load(apart), prompt)).toEqual(await logitsOf(await load(fused), prompt));

    const gptq = await rewriteFolder(fused, cfg, (n) => n, [{ name: 'model.layers.0.self_attn.qkv_proj.qweight', dtype: 'I32', shape: [8, 128], data: new Int32Array(8 * 128) }]);
    await expect(load(gptq)).rejects.toThrow(/quantized fused model\.layers\.0\.self_attn\.qkv_proj .*not supported for phi3/);
  });
});

describe('bad input', () => {
  it('a tensor the config does not describe is refused by name', async () => {
    // Qwen2's q/k/v biases in a checkpoint whose config says llama without attention_bias.
    const dir = writeGeneratedModel({ modelType: 'qwen2', seed: 5 });
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...json(dir), model_type: 'llama', architectures: ['LlamaForCausalLM'] }));
    await expect(load(dir)).rejects.toThrow(/holds 6 tensor\(s\) a llama model with this config\.json does not use, e\.g\. model\.layers\.0\.self_attn\.q_proj\.bias/);
  });

  it('a layer the config does not describe is refused; the layers a truncated-layer load leaves out are not', async () => {
    const dir = writeGeneratedModel({ seed: 6, config: { num_hidden_layers: 3 } });
    expect((await load(dir, { numLayers: 1 })).info.config.num_hidden_layers).toBe(1);
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...json(dir), num_hidden_layers: 2 }));
    await expect(load(dir)).rejects.toThrow(/does not use, e\.g\. model\.layers\.2\./);
  });

  it('unsupported model types list every supported one; aliases and variants name what they lack', () => {
    expect(() => parseConfig({ model_type: 'falcon' })).toThrow(/unsupported model_type "falcon".*supported: .*gemma2.*gemma3_text.*granite.*mistral.*olmo2.*phi3.*smollm3/);
    const base = { hidden_size: 64, intermediate_size: 96, num_hidden_layers: 2, num_attention_heads: 4, vocab_size: 311 };
    expect(parseConfig({ ...base, model_type: 'mistral', sliding_window: 8 }).layer_windows).toEqual([8, 8]);
    expect(() => parseConfig({ ...base, model_type: 'gemma2', hidden_activation: 'relu' })).toThrow(/unsupported hidden_act "relu"/);
    expect(() => parseConfig({ ...base, model_type: 'phi3', rope_scaling: { type: 'su', short_factor: [1], long_factor: [1] } })).toThrow(/unsupported rope type 'su'/);
    expect(() => parseConfig({ ...base, model_type: 'smollm3', no_rope_layers: [1] })).toThrow(ConfigError);
    expect(() => parseConfig({ ...base, model_type: 'granite', residual_multiplier: 0 })).toThrow(/'residual_multiplier' must be a positive number/);
    expect(() => parseConfig({ model_type: 'gemma3' })).toThrow(/needs a text_config/);
  });

  it('gemma3: text_config fields left out take Gemma3TextConfig defaults (5 local layers to 1 global, local RoPE base)', () => {
    const c = parseConfig({ model_type: 'gemma3', torch_dtype: 'bfloat16', text_config: { hidden_size: 2560, num_hidden_layers: 12, rope_scaling: { rope_type: 'linear', factor: 8 } } });
    expect(c.dtype).toBe('bf16');
    expect(c.vocab_size).toBe(262208);
    expect(c.layer_windows).toEqual([4096, 4096, 4096, 4096, 4096, 0, 4096, 4096, 4096, 4096, 4096, 0]);
    expect(c.layer_ropes[0]).toEqual({ ropeTheta: 10000, scaling: { type: 'default' } });
    expect(c.layer_ropes[5]).toEqual({ ropeTheta: 1000000, scaling: { type: 'linear', factor: 8 } });
    expect(c.block.attentionScale).toBeCloseTo(1 / 16, 12);
    expect(c.block.embeddingScale).toBe(Math.fround(Math.sqrt(2560)));
    expect(c.tie_word_embeddings).toBe(true);
  });
});
