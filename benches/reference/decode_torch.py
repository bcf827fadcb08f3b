#!/usr/bin/env python3
"""PyTorch eager reference for `membound bench decode --synthetic`.

Builds the same LLaMA shape with Hugging Face transformers (random
initialisation, f16, on the GPU), then times greedy decode one token at a
time with the KV cache, the way `membound bench decode` does: each token is
a forward of one token followed by a host read of the argmax. It prints and
optionally writes JSON, so docs/benchmarks.md can report our tokens/s over
this one, measured on the same machine in the same run.

    python3 benches/reference/decode_torch.py --model llama-8b --json torch-decode.json
"""
import argparse
import json
import statistics
import time

import torch

SHAPES = {
    # dim, hidden, layers, heads, kv heads, vocab, tied
    "llama-1b": (2048, 8192, 16, 32, 8, 128256, True),
    "llama-8b": (4096, 14336, 32, 32, 8, 128256, False),
}


def build(name):
    from transformers import LlamaConfig, LlamaForCausalLM

    dim, hidden, layers, heads, kv, vocab, tied = SHAPES[name]
    cfg = LlamaConfig(
        hidden_size=dim,
        intermediate_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        vocab_size=vocab,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        tie_word_embeddings=tied,
    )
    cfg._attn_implementation = "eager"
    torch.set_default_dtype(torch.float16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg)
    model.eval()
    return model


@torch.no_grad()
def decode(model, tokens, warm_up):
    from transformers import DynamicCache

    cache = DynamicCache()
    tok = torch.tensor([[1]], device="cuda")
    times = []
    for i in range(warm_up + tokens):
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = model(input_ids=tok, past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        nxt = int(out.logits[0, -1].argmax())  # host read, as ours
        if i >= warm_up:
            times.append(time.perf_counter() - t)
        tok = torch.tensor([[nxt]], device="cuda")
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-8b", choices=sorted(SHAPES))
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--warm-up", type=int, default=16)
    ap.add_argument("--json")
    a = ap.parse_args()
    import transformers

    model = build(a.model)
    params = sum(p.numel() for p in model.parameters())
    med = decode(model, a.tokens, a.warm_up)
    row = {
        "model": a.model,
        "framework": f"torch {torch.__version__} eager, transformers {transformers.__version__}",
        "device": torch.cuda.get_device_name(),
        "dtype": "f16",
        "params": params,
        "ms_per_token": med * 1e3,
        "tokens_per_s": 1.0 / med,
    }
    print(json.dumps(row, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(row, f, indent=2)


if __name__ == "__main__":
    main()
