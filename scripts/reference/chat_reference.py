"""Transformers' answers for the chat layer's parity tests (packages/chat/test).

Reads one JSON request on stdin and writes one JSON answer on stdout, so a test file
pays for importing Transformers once:

  {"folders": {"qwen3": "/path/with/tokenizer.json", ...},
   "cases": [
     {"tokenizer": "qwen3", "op": "encode", "text": "...", "add_special_tokens": true},
     {"tokenizer": "qwen3", "op": "encode_file", "text": "...", "add_special_tokens": true},
     {"tokenizer": "qwen3", "op": "decode", "ids": [..], "skip_special_tokens": false},
     {"tokenizer": "qwen3", "op": "chat", "messages": [..], "add_generation_prompt": true,
      "continue_final_message": false, "tools": null, "documents": null,
      "kwargs": {"enable_thinking": false}, "chat_template": null},
     {"tokenizer": "qwen3", "op": "parse_response", "text": "<think>..", "prefix": "..."}
   ]}

encode_file runs the Rust `tokenizers` library on tokenizer.json as written; encode runs
Transformers, which rebuilds some pipelines (v5's LlamaTokenizer) and can differ from it.

Answer: {"results": [...]} in case order: encode(_file) -> {"ids"}, decode -> {"text"},
chat -> {"text", "ids"} (ids from apply_chat_template(tokenize=True)), parse_response ->
{"parsed"} (`transformers serve`'s reply parsing: the response template it falls back to for
Qwen models, run by tokenizer.parse_response on the text's ids), or {"error": "..."}
when Transformers raises (the tests compare that we raise too).
"""
import functools
import json
import sys

from tokenizers import Tokenizer
from transformers import AutoTokenizer


def chat_kwargs(case):
    kw = dict(case.get("kwargs") or {})
    for key in ("add_generation_prompt", "continue_final_message", "tools", "documents", "chat_template"):
        if case.get(key) is not None:
            kw[key] = case[key]
    return kw


@functools.cache
def rust_tokenizer(folder):
    return Tokenizer.from_file(f"{folder}/tokenizer.json")


def run(tok, case, folder):
    op = case["op"]
    if op == "encode_file":
        rust = rust_tokenizer(folder)
        return {"ids": rust.encode(case["text"], add_special_tokens=case.get("add_special_tokens", True)).ids}
    if op == "encode":
        return {"ids": tok(case["text"], add_special_tokens=case.get("add_special_tokens", True))["input_ids"]}
    if op == "decode":
        return {"text": tok.decode(case["ids"], skip_special_tokens=case.get("skip_special_tokens", False))}
    if op == "chat":
        kw = chat_kwargs(case)
        text = tok.apply_chat_template(case["messages"], tokenize=False, **kw)
        enc = tok.apply_chat_template(case["messages"], tokenize=True, **kw)
        ids = enc["input_ids"] if hasattr(enc, "keys") else enc
        return {"text": text, "ids": list(ids)}
    if op == "parse_response":
        from transformers.cli.serving.utils import _RESPONSE_TEMPLATE_FALLBACKS

        template = next(v for types, v in _RESPONSE_TEMPLATE_FALLBACKS.items() if "qwen3" in types)
        ids = tok.encode(case["text"], add_special_tokens=False)
        return {"parsed": tok.parse_response(ids, template, prefix=case.get("prefix", ""))}
    raise ValueError(f"unknown op {op!r}")


def main():
    req = json.load(sys.stdin)
    toks = {name: AutoTokenizer.from_pretrained(folder) for name, folder in req["folders"].items()}
    results = []
    for case in req["cases"]:
        try:
            results.append(run(toks[case["tokenizer"]], case, req["folders"][case["tokenizer"]]))
        except Exception as e:  # the answer a test expects us to match is "it raised"
            results.append({"error": f"{type(e).__name__}: {e}"})
    json.dump({"results": results}, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()
