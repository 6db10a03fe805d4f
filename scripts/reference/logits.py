#!/usr/bin/env python3
"""Runs a Hugging Face causal LM folder on token ids: the reference for parity tests.

  logits.py --model DIR --tokens-json FILE --out FILE [--greedy N] [--dtype float32] [--topk 20]

FILE (tokens) holds a JSON list of ids, one sequence. The prompt goes through one
forward pass (eager attention, so no fused kernel hides a difference). --out gets JSON:

  { "vocab": V, "positions": T, "dtype": ..., "topk": K,
    "top_ids": [[...K] * T], "top_logprobs": [[...K] * T], "argmax": [...T],
    "logprobs_file": "<out>.logprobs.f32", "greedy": [...N] (with --greedy) }

and <out>.logprobs.f32 holds the full log_softmax rows, float32 little-endian [T, V],
computed in float32 whatever the model dtype. Greedy decoding is a plain argmax loop
over the KV cache: no eos stop, no logits processors, so token i+1 of it is exactly the
argmax after token i.
"""
import argparse
import json
import sys

import torch
import transformers

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="Hugging Face model folder")
    p.add_argument("--tokens-json", required=True, help="file holding a JSON list of token ids")
    p.add_argument("--out", required=True, help="JSON output; the log-softmax rows go to OUT.logprobs.f32")
    p.add_argument("--greedy", type=int, default=0, help="also decode this many tokens greedily")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="dtype to run the model in")
    p.add_argument("--topk", type=int, default=20)
    return p.parse_args(argv)


def read_tokens(path, vocab):
    with open(path) as f:
        tokens = json.load(f)
    if not isinstance(tokens, list) or not tokens:
        sys.exit(f"logits: {path} must hold a non-empty JSON list of token ids")
    for i, t in enumerate(tokens):
        if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < vocab:
            sys.exit(f"logits: token {i} is {t!r}, not an integer id in [0, {vocab})")
    return tokens


def greedy_decode(model, out, n):
    """Extends the prompt whose forward pass gave `out` by n argmax tokens."""
    ids = []
    past = out.past_key_values
    nxt = int(out.logits[0, -1].float().argmax())
    for i in range(n):
        ids.append(nxt)
        if i + 1 == n:
            break
        step = model(input_ids=torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
        past = step.past_key_values
        nxt = int(step.logits[0, -1].float().argmax())
    return ids


def main(argv):
    args = parse_args(argv)
    if args.greedy < 0 or args.topk < 1:
        sys.exit("logits: --greedy must be >= 0 and --topk >= 1")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    transformers.utils.logging.disable_progress_bar()

    model = transformers.AutoModelForCausalLM.from_pretrained(
        args.model, dtype=DTYPES[args.dtype], attn_implementation="eager")
    model.eval()
    vocab = model.config.vocab_size
    tokens = read_tokens(args.tokens_json, vocab)

    with torch.no_grad():
        out = model(input_ids=torch.tensor([tokens]), use_cache=args.greedy > 0)
        logits = out.logits[0].float()  # [T, V]
        if logits.shape != (len(tokens), vocab):
            sys.exit(f"logits: model returned logits {tuple(logits.shape)}, expected {(len(tokens), vocab)}")
        logprobs = torch.log_softmax(logits, dim=-1)
        k = min(args.topk, vocab)
        top = torch.topk(logprobs, k, dim=-1)
        greedy = greedy_decode(model, out, args.greedy) if args.greedy > 0 else None

    bin_path = args.out + ".logprobs.f32"
    logprobs.numpy().astype("<f4").tofile(bin_path)
    result = {
        "vocab": vocab,
        "positions": len(tokens),
        "dtype": args.dtype,
        "topk": k,
        "top_ids": top.indices.tolist(),
        "top_logprobs": top.values.tolist(),
        "argmax": logprobs.argmax(dim=-1).tolist(),
        "logprobs_file": bin_path,
    }
    if greedy is not None:
        result["greedy"] = greedy
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1:])
