#!/usr/bin/env python3
"""Independent float64 NumPy forward pass of all-MiniLM-L6-v2 for one sentence.

Reads model.safetensors with a tiny hand-written reader (no torch, no
safetensors package), runs BERT (post-LayerNorm, erf GeLU, absolute
positions, token type 0), mean-pools over every token and L2-normalises, as
sentence-transformers does. Prints the first 8 values and the norm of the
un-normalised mean, the constants pinned in crates/membound/tests/bert.rs.

Usage: python3 scripts/ref_minilm.py [MODEL_DIR]
(default: $MEMBOUND_CACHE or ~/.cache/membound, then models/minilm)
"""

import json
import math
import os
import struct
import sys

import numpy as np

# "A man is eating food." as tokenized by the model's tokenizer.json:
# [CLS] a man is eating food . [SEP]
IDS = [101, 1037, 2158, 2003, 5983, 2833, 1012, 102]


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    dtypes = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "I64": "<i8"}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        s, e = info["data_offsets"]
        arr = np.frombuffer(data[base + s : base + e], dtype=dtypes[info["dtype"]])
        out[name] = arr.reshape(info["shape"]).astype(np.float64)
    return out


def layer_norm(x, g, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def gelu(x):
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def main():
    if len(sys.argv) > 1:
        d = sys.argv[1]
    else:
        cache = os.environ.get("MEMBOUND_CACHE") or os.path.expanduser("~/.cache/membound")
        d = os.path.join(cache, "models", "minilm")
    cfg = json.load(open(os.path.join(d, "config.json")))
    w = read_safetensors(os.path.join(d, "model.safetensors"))
    H, nh, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["layer_norm_eps"]
    hd = H // nh
    n = len(IDS)
    x = (
        w["embeddings.word_embeddings.weight"][IDS]
        + w["embeddings.position_embeddings.weight"][:n]
        + w["embeddings.token_type_embeddings.weight"][0]
    )
    x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
    for l in range(cfg["num_hidden_layers"]):
        p = lambda s: w[f"encoder.layer.{l}.{s}"]
        lin = lambda v, s: v @ p(s + ".weight").T + p(s + ".bias")
        q = lin(x, "attention.self.query").reshape(n, nh, hd).transpose(1, 0, 2)
        k = lin(x, "attention.self.key").reshape(n, nh, hd).transpose(1, 0, 2)
        v = lin(x, "attention.self.value").reshape(n, nh, hd).transpose(1, 0, 2)
        s = q @ k.transpose(0, 2, 1) / math.sqrt(hd)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        ctx = (s @ v).transpose(1, 0, 2).reshape(n, H)
        x = layer_norm(
            x + lin(ctx, "attention.output.dense"),
            p("attention.output.LayerNorm.weight"),
            p("attention.output.LayerNorm.bias"),
            eps,
        )
        h = gelu(lin(x, "intermediate.dense"))
        x = layer_norm(
            x + lin(h, "output.dense"), p("output.LayerNorm.weight"), p("output.LayerNorm.bias"), eps
        )
    mean = x.mean(0)
    norm = np.linalg.norm(mean)
    emb = mean / norm
    print("ids:", IDS)
    print("first 8:", [float(f"{v:.9g}") for v in emb[:8]])
    print("norm of the mean before normalising:", float(f"{norm:.9g}"))
    print("first 8 hidden values of token 0:", [float(f"{v:.9g}") for v in x[0, :8]])


if __name__ == "__main__":
    main()
