#!/usr/bin/env python3
"""Reference token ids for crates/membound/tests/tokenizer.rs.

Usage (any Python 3.9+):
    python3 -m venv /tmp/tokvenv
    /tmp/tokvenv/bin/pip install tokenizers gguf regex numpy
    /tmp/tokvenv/bin/python scripts/gen_tokenizer_refs.py [SMOLLM2.gguf] [MINILM_DIR] [TOK512.bin]

Defaults are the membound cache (~/.cache/membound/models/..., or
$MEMBOUND_CACHE/models/...).

SmolLM2: the vocabulary, merges and control tokens are read from the GGUF
with the `gguf` package and tokenized twice, independently:
  1. with the Python `tokenizers` package (BPE model, digit splitting +
     byte-level pre-tokenizer, control tokens as special added tokens), the
     way SmolLM2's own tokenizer.json is configured;
  2. with a from-scratch byte-level BPE below, pre-tokenizing with llama.cpp's
     regexes for `tokenizer.ggml.pre = "smollm"` ("\\p{N}" then GPT-2's) and
     merging by rank.
The script stops if the two disagree, then prints the ids as Rust constants.

llama2xs-280K: tok512.bin read here and encoded with a literal port of
llama2.c run.c's encode (O(n^2) rescans; the Rust side uses a heap).

MiniLM: tokenizer.json loaded by the Python `tokenizers` package, padding and
truncation off (as membound loads it).
"""

import os
import struct
import sys
from pathlib import Path

import regex
from gguf import GGUFReader
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers


def cache_dir() -> Path:
    if os.environ.get("MEMBOUND_CACHE"):
        return Path(os.environ["MEMBOUND_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "membound"
    return Path.home() / ".cache" / "membound"


SMOL_DEFAULT = cache_dir() / "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_DEFAULT = cache_dir() / "models/minilm"
TOK512_DEFAULT = Path(__file__).resolve().parents[2] / "shared/models/llama2xs-280K/tok512.bin"
LILY = "Once upon a time, there was a little girl named Lily."
TIES = "aaaa bbbb eeeee  the the thethe   oooo!! Lily's mom said, \"Sleep now.\"\tzzz\n\nEND"
BYTES = "Tom said: \"東京, café!\"\n"

CHAT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
    "<|im_start|>assistant\n"
)

# (Rust constant name, text)
SMOL_CASES = [
    ("ENGLISH", "Hello, world! It's a test: don't panic; we'll see (maybe)."),
    ("NUMBERS", "In 2024, 1234567 people paid $3.50 each, i.e. 12.5%."),
    ("SPACES", "multiple   spaces  and\ttabs"),
    ("NEWLINES", "line one\nline two\n\n  indented\n"),
    ("NON_ASCII", "café naïve 東京 🚀"),
    ("CHAT", CHAT),
]


def gguf_vocab(path):
    r = GGUFReader(str(path))
    f = r.fields
    tokens = list(f["tokenizer.ggml.tokens"].contents())
    merges = list(f["tokenizer.ggml.merges"].contents())
    types = list(f["tokenizer.ggml.token_type"].contents())
    pre = f["tokenizer.ggml.pre"].contents()
    assert f["tokenizer.ggml.model"].contents() == "gpt2"
    assert pre == "smollm", pre
    return tokens, merges, types


def hf_tokenizer(tokens, merges, types):
    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tok = Tokenizer(models.BPE(vocab, pairs))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == 3]
    )
    return tok


def bytes_to_unicode():
    """GPT-2's byte -> printable character table."""
    keep = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


GPT2_RE = regex.compile(
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
)


def scratch_encode(text, tokens, merges, types):
    """Independent byte-level BPE: special tokens, \\p{N} isolation, GPT-2 regex, rank merges."""
    vocab = {t: i for i, t in enumerate(tokens)}
    rank = {tuple(m.split(" ", 1)): i for i, m in enumerate(merges)}
    b2u = bytes_to_unicode()
    specials = sorted((t for t, ty in zip(tokens, types) if ty == 3), key=len, reverse=True)
    special_re = regex.compile("(" + "|".join(regex.escape(s) for s in specials) + ")")

    def bpe(word):
        parts = list(word)
        while len(parts) > 1:
            best = min(
                ((rank.get((a, b), 1 << 60), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))),
            )
            if best[0] == 1 << 60:
                break
            a, b = parts[best[1]], parts[best[1] + 1]
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] == a and parts[i + 1] == b:
                    merged.append(a + b)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return [vocab[p] for p in parts]

    ids = []
    for chunk in special_re.split(text):
        if not chunk:
            continue
        if chunk in specials:
            ids.append(vocab[chunk])
            continue
        for piece in regex.split(r"(\p{N})", chunk):
            if not piece:
                continue
            for word in GPT2_RE.findall(piece):
                ids.extend(bpe("".join(b2u[b] for b in word.encode("utf-8"))))
    return ids


def llama2c_vocab(path):
    data = Path(path).read_bytes()
    off, pieces, scores = 4, [], []
    while off < len(data):
        score, n = struct.unpack_from("<fi", data, off)
        off += 8
        pieces.append(data[off : off + n])
        scores.append(score)
        off += n
    return pieces, scores


def runc_encode(text, pieces, scores, bos=True):
    """llama2.c run.c encode(): BOS, dummy prefix, codepoints / byte fallback, best-score merges."""
    lookup = {}
    for i, p in enumerate(pieces):
        lookup.setdefault(p, i)
    toks = [1] if bos else []
    if text:
        toks.append(lookup[b" "])
    for ch in text:
        b = ch.encode("utf-8")
        if b in lookup:
            toks.append(lookup[b])
        else:
            toks.extend(x + 3 for x in b)
    while True:
        best, best_id, best_i = -1e10, -1, -1
        for i in range(len(toks) - 1):
            j = lookup.get(pieces[toks[i]] + pieces[toks[i + 1]], -1)
            if j != -1 and scores[j] > best:
                best, best_id, best_i = scores[j], j, i
        if best_i == -1:
            break
        toks[best_i : best_i + 2] = [best_id]
    return toks


def rust_array(name, ids):
    body = ", ".join(str(i) for i in ids)
    return f"const {name}: [u32; {len(ids)}] = [{body}];"


def main():
    smol = Path(sys.argv[1]) if len(sys.argv) > 1 else SMOL_DEFAULT
    minilm = Path(sys.argv[2]) if len(sys.argv) > 2 else MINILM_DEFAULT
    tokens, merges, types = gguf_vocab(smol)
    tok = hf_tokenizer(tokens, merges, types)
    print(f"// SmolLM2 ({smol.name}): {len(tokens)} tokens, {len(merges)} merges")
    for name, text in SMOL_CASES + [("STREAM", "東京 🚀")]:
        ids = tok.encode(text, add_special_tokens=False).ids
        scratch = scratch_encode(text, tokens, merges, types)
        if ids != scratch:
            sys.exit(f"{name}: tokenizers {ids} != from-scratch BPE {scratch}")
        if tok.decode(ids, skip_special_tokens=False) != text:
            sys.exit(f"{name}: decode does not round-trip")
        print(f"/// {text!r}")
        print(rust_array(f"SMOL_{name}", ids))
    print(f"// <|im_end|> = {tok.token_to_id('<|im_end|>')}")

    tok512 = Path(sys.argv[3]) if len(sys.argv) > 3 else TOK512_DEFAULT
    pieces, scores = llama2c_vocab(tok512)
    print(f"/// llama2xs-280K (run.c encode with BOS): {LILY!r}")
    print(rust_array("LILY_IDS", runc_encode(LILY, pieces, scores)))
    print(f"/// llama2xs-280K (run.c encode with BOS): {TIES!r}")
    print(rust_array("TIES_IDS", runc_encode(TIES, pieces, scores)))
    print(f"/// llama2xs-280K (run.c encode without BOS): {BYTES!r}")
    print(rust_array("BYTES_IDS", runc_encode(BYTES, pieces, scores, bos=False)))

    mini = Tokenizer.from_file(str(minilm / "tokenizer.json"))
    # The file pads to 128 and truncates at 128; membound turns both off
    # (its encode returns real tokens only, and never drops text).
    mini.no_padding()
    mini.no_truncation()
    for special in (True, False):
        ids = mini.encode("Hello world", add_special_tokens=special).ids
        suffix = "SPECIAL" if special else "PLAIN"
        print(f"/// MiniLM 'Hello world', add_special_tokens={special}")
        print(rust_array(f"MINILM_HELLO_{suffix}", ids))


if __name__ == "__main__":
    main()
