#!/usr/bin/env python3
"""Builds a tiny, randomly initialised Hugging Face causal LM folder for parity tests.

The config comes from the real Transformers config class of the family, so the folder
(config.json, model.safetensors[.index.json], generation_config.json) is exactly what
an engine meets in a real checkpoint, only small. Weights use a seeded normal with a
std far above HF's 0.02: in a 64-wide model that default gives near-flat logits, where
top-1 is decided by noise and parity tests would prove nothing.

  make_model.py --family llama --out DIR --seed 0 --dtype float32 \
      [--config-json '{"tie_word_embeddings": false}'] [--max-shard-size 40KB]
"""
import argparse
import json
import os
import sys

import torch
import transformers

# family -> (config class, overrides of the shared small defaults). MoE sizes are kept
# small enough that every expert is hit by a few tokens of a short prompt.
FAMILIES = {
    "llama": ("LlamaConfig", {}),
    "mistral": ("MistralConfig", {}),
    "qwen2": ("Qwen2Config", {}),
    "qwen3": ("Qwen3Config", {}),
    "mixtral": ("MixtralConfig", {"num_local_experts": 4, "num_experts_per_tok": 2}),
    "qwen2_moe": ("Qwen2MoeConfig", {
        "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
        "shared_expert_intermediate_size": 48,
    }),
    "qwen3_moe": ("Qwen3MoeConfig", {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32}),
    # gpt-oss keeps its real context length: its YaRN parameters (factor 32 over 4096
    # original positions) are only consistent with 131072 positions.
    "gpt_oss": ("GptOssConfig", {
        "num_local_experts": 4, "num_experts_per_tok": 2, "intermediate_size": 32,
        "max_position_embeddings": 131072,
    }),
    "phi3": ("Phi3Config", {}),
    "gemma2": ("Gemma2Config", {}),
    "gemma3_text": ("Gemma3TextConfig", {}),
    "smollm3": ("SmolLM3Config", {}),
    "granite": ("GraniteConfig", {}),
    "olmo2": ("Olmo2Config", {}),
}

# An odd vocab size catches kernels that assume a multiple of 2/4/64; bos/eos/pad are
# set inside it because several families default them to ids of the full-size vocab.
SMALL_DEFAULTS = {
    "vocab_size": 311,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-6,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", required=True, choices=sorted(FAMILIES))
    p.add_argument("--out", required=True, help="folder to write (created; existing model files are replaced)")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--dtype", required=True, choices=sorted(DTYPES))
    p.add_argument("--config-json", default="{}", help="JSON object of config fields overriding the small defaults")
    p.add_argument("--max-shard-size", default=None, help='e.g. "40KB": split the weights over several shards')
    p.add_argument("--weight-std", type=float, default=0.2, help="std of matrices (embeddings, projections, experts)")
    p.add_argument("--norm-noise", type=float, default=0.1, help="norm weights are 1 + this * N(0, 1)")
    p.add_argument("--bias-std", type=float, default=0.05, help="std of biases, attention sinks and other vectors")
    return p.parse_args(argv)


def build_config(family, overrides):
    cls_name, family_defaults = FAMILIES[family]
    cls = getattr(transformers, cls_name)
    kwargs = {**SMALL_DEFAULTS, **family_defaults, **overrides}
    # Passed to the constructor (never set afterwards) so derived fields such as
    # layer_types follow num_hidden_layers.
    return cls(**kwargs)


def init_weights(model, seed, weight_std, norm_noise, bias_std):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        # named_parameters lists a tied lm_head once, so tying survives.
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if p.ndim >= 2:
                p.copy_(noise * weight_std)
            elif "norm" in name:
                p.copy_(1.0 + noise * norm_noise)
            else:
                p.copy_(noise * bias_std)


def main(argv):
    args = parse_args(argv)
    try:
        overrides = json.loads(args.config_json)
    except json.JSONDecodeError as e:
        sys.exit(f"make_model: --config-json is not valid JSON: {e}")
    if not isinstance(overrides, dict):
        sys.exit("make_model: --config-json must be a JSON object")

    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    transformers.utils.logging.disable_progress_bar()
    config = build_config(args.family, overrides)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    init_weights(model, args.seed, args.weight_std, args.norm_noise, args.bias_std)
    dtype = DTYPES[args.dtype]
    model = model.to(dtype)
    model.config.dtype = dtype
    model.generation_config.bos_token_id = config.bos_token_id
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id

    os.makedirs(args.out, exist_ok=True)
    save_kwargs = {}
    if args.max_shard_size is not None:
        save_kwargs["max_shard_size"] = args.max_shard_size
    model.save_pretrained(args.out, **save_kwargs)
    if not os.path.exists(os.path.join(args.out, "config.json")):
        sys.exit(f"make_model: save_pretrained wrote no config.json in {args.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
