#!/usr/bin/env python3
"""Generate the reference vectors for crates/membound-tensor/tests/dequant_reference.rs.

For each ggml block type, a few blocks of seeded random bytes are dequantized
with gguf-py (the `gguf` package, tested with 0.19.0) and written as

    <TYPE>.blocks   the raw blocks
    <TYPE>.f32      the expected output, little-endian f32

Random bytes would put NaN or Inf in the f16 scale fields, so every scale/min
field is overwritten with a chosen finite value: zeros (both signs), f16
subnormals, the f16 extremes, and otherwise values of either sign with
magnitudes log-uniform in [1e-3, 0.1], like real weights.

gguf-py has no dequantizer for Q8_1 and Q8_K (ggml's activation formats). For
those two the expected output is computed here with numpy as `f32(d) * f32(q)`,
the single rounded multiply that ggml's `dequantize_row_q8_K` performs and that
Q8_0 (whose formula Q8_1 shares) uses.

sizes.json records gguf-py's GGML_QUANT_SIZES (block size, type size) for
every type id it knows, for checking GgmlType's table.

Usage: python3 scripts/gen_dequant_refs.py [OUT_DIR]
"""

import json
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as T

SEED = 20240611
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "crates/membound-tensor/tests/data/dequant"

# type -> (number of blocks, offsets of f16 scale fields, offsets of f32 scale fields)
LAYOUTS = {
    "Q4_0": (32, [0], []),
    "Q4_1": (32, [0, 2], []),
    "Q5_0": (32, [0], []),
    "Q5_1": (32, [0, 2], []),
    "Q8_0": (32, [0], []),
    "Q8_1": (32, [0, 2], []),
    "Q2_K": (8, [80, 82], []),
    "Q3_K": (8, [108], []),
    "Q4_K": (8, [0, 2], []),
    "Q5_K": (8, [0, 2], []),
    "Q6_K": (8, [208], []),
    "Q8_K": (8, [], [0]),
    "IQ4_NL": (32, [0], []),
    "IQ4_XS": (8, [0], []),
    "TQ1_0": (8, [52], []),
    "TQ2_0": (8, [64], []),
    "MXFP4": (32, [], []),  # its scale is a byte exponent, set below
}

# Edge-case scale values, by block index (mod 8); other blocks get random ones.
F16_EDGES = {
    0: [0.0, -0.0],
    1: [np.float16(2.0**-24), -np.float16(6.0e-5)],  # smallest subnormal, a large subnormal
    2: [65504.0, -65504.0],  # the largest finite f16
}
F32_EDGES = {
    0: [0.0],
    1: [1.0e-40],  # an f32 subnormal: outputs are subnormal too
    2: [-1.0e30],
}


def random_scale(rng, n):
    mag = np.exp(rng.uniform(np.log(1e-3), np.log(0.1), n))
    sign = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    return mag * sign


def make_blocks(rng, name):
    n_blocks, f16_fields, f32_fields = LAYOUTS[name]
    _, type_size = GGML_QUANT_SIZES[T[name]]
    if name == "Q8_1":
        type_size = 36  # gguf-py 0.19.0 still lists the pre-2023 40-byte layout
    blocks = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for i in range(n_blocks):
        for fields, edges, dtype in ((f16_fields, F16_EDGES, np.float16), (f32_fields, F32_EDGES, np.float32)):
            if not fields:
                continue
            values = edges.get(i % 8) or list(random_scale(rng, len(fields)))
            for k, off in enumerate(fields):
                v = np.array([values[k % len(values)]], dtype=dtype)
                assert np.isfinite(v).all()
                blocks[i, off:off + v.nbytes] = v.view(np.uint8)
    if name == "MXFP4":
        # Exponent byte: both subnormal halves (0, 1), 1.0 (128), the top
        # (254, 255: 12 * 2^126 overflows to +-inf in f32, as in ggml), the rest
        # around realistic weight scales.
        exps = [0, 1, 2, 128, 254, 255]
        exps += list(rng.integers(110, 135, size=n_blocks - len(exps)))
        blocks[:, 0] = np.array(exps, dtype=np.uint8)
    return blocks


def reference(name, blocks):
    if name in ("Q8_1", "Q8_K"):
        if name == "Q8_1":
            d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
            q = blocks[:, 4:].copy().view(np.int8).astype(np.float32)
            return (q * d).reshape(-1)
        d = blocks[:, 0:4].copy().view(np.float32)
        q = blocks[:, 4:260].copy().view(np.int8).astype(np.float32)
        return (d * q).reshape(-1)
    with np.errstate(over="ignore"):  # MXFP4's top exponents overflow to inf, as in ggml
        out = gguf.quants.dequantize(blocks.reshape(-1), T[name])
    return np.asarray(out, dtype=np.float32).reshape(-1)


def plain_types(rng):
    """F32, F16, BF16: random bit patterns plus the special values."""
    f16_special = [0x0000, 0x8000, 0x0001, 0x03FF, 0x0400, 0x3C00, 0x7BFF, 0x7C00, 0xFC00, 0x7E00, 0x7C01, 0xFE01]
    f16 = np.concatenate([np.array(f16_special, dtype=np.uint16), rng.integers(0, 1 << 16, 1012, dtype=np.uint16)])
    bf16 = np.concatenate([np.array(f16_special, dtype=np.uint16), rng.integers(0, 1 << 16, 1012, dtype=np.uint16)])
    f32 = rng.integers(0, 1 << 32, 256, dtype=np.uint64).astype(np.uint32)
    f32[:4] = [0x00000001, 0x7F800000, 0x7FC00001, 0x80000000]
    return {
        "F16": f16.astype("<u2").view(np.uint8),
        "BF16": bf16.astype("<u2").view(np.uint8),
        "F32": f32.astype("<u4").view(np.uint8),
    }


def main():
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)

    for name in LAYOUTS:
        blocks = make_blocks(rng, name)
        expected = reference(name, blocks)
        block_size, _ = GGML_QUANT_SIZES[T[name]]
        assert expected.size == blocks.shape[0] * block_size, name
        (out_dir / f"{name}.blocks").write_bytes(blocks.tobytes())
        (out_dir / f"{name}.f32").write_bytes(expected.astype("<f4").tobytes())

    for name, raw in plain_types(rng).items():
        expected = gguf.quants.dequantize(raw, T[name])
        (out_dir / f"{name}.blocks").write_bytes(raw.tobytes())
        (out_dir / f"{name}.f32").write_bytes(np.asarray(expected, dtype="<f4").tobytes())

    sizes = {
        t.name: {"id": int(t.value), "block_size": int(bs), "type_size": int(ts)}
        for t, (bs, ts) in sorted(GGML_QUANT_SIZES.items(), key=lambda kv: int(kv[0].value))
    }
    # One type per line keeps the file short and its diffs readable.
    rows = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in sizes.items())
    head = json.dumps({"generator": "scripts/gen_dequant_refs.py", "gguf_version": gguf_version()})[:-1]
    (out_dir / "sizes.json").write_text(f"{head},\n \"sizes\": {{\n{rows}\n }}\n}}\n")


def gguf_version():
    from importlib.metadata import version

    return version("gguf")


if __name__ == "__main__":
    main()
