#!/usr/bin/env python3
"""Generate the MLX reference vectors for crates/membound-codec/tests/affine_mlx.rs.

Runs MLX's own affine quantizer (`mx.quantize` / `mx.dequantize`, CPU build;
tested with mlx 0.32.4 from `pip install "mlx[cpu]"`) on a few small
matrices, for every bit width the codec offers (2, 3, 4, 5, 6, 8), group
sizes 32, 64 and 128, and input types float32, float16 and bfloat16 (the f32
matrix cast with `.astype`). Everything lands in two files:

    vectors.bin   little-endian arrays, back to back
    index.json    the MLX version, each input matrix and each case, with the
                  byte offset and length of every array in vectors.bin

Per case: `words` (the packed uint32 codes), `scales` and `biases` (in the
input's type, as MLX returns them), `dequant` (`mx.dequantize` of those, in
the same type) and, for 16-bit inputs with group 64 only (to keep the files
small), `dequant_f32` (`mx.dequantize` with scales and biases cast to
float32 first).

The matrices: `gauss` (3 x 128: small Gaussian weights, an offset wider
row, a Student-t row with outliers) and `edges` (2 x 128: groups of 32 built
to hit every branch: all zeros, a constant, a symmetric ramp, exact .5 code
ties, values below MLX's 1e-7 scale floor including an f32 subnormal, an
all-negative group, values halfway between f16 and between bf16 neighbours,
and magnitudes near the f16 limit, where MLX's f16 dequantize overflows).

Usage: python3 scripts/gen_mlx_refs.py [OUT_DIR]
"""

import json
import sys
from pathlib import Path

import numpy as np
import mlx.core as mx

SEED = 20250314
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "crates/membound-codec/tests/data/mlx"
BITS = [2, 3, 4, 5, 6, 8]
GROUPS = [32, 64, 128]
DTYPES = {"f32": mx.float32, "f16": mx.float16, "bf16": mx.bfloat16}


def gauss(rng):
    rows = [
        rng.normal(0.0, 0.02, 128),
        0.3 + rng.normal(0.0, 0.5, 128),
        0.05 * rng.standard_t(3, 128),
    ]
    return np.array(rows, dtype=np.float32)


def edges(rng):
    f32 = np.float32
    g = []
    g.append(np.zeros(32))  # all zeros: scale = -1e-7, bias 0
    g.append(np.full(32, 0.7))  # constant: bias = 0.7, codes 0
    g.append(np.linspace(-1.0, 1.0, 32))  # |min| == |max|: edge is max
    ties = [0.0, 15.0] + [k + 0.5 for k in range(15)] + list(range(15))
    g.append(np.array(ties))  # scale exactly -1 at 4 bits: .5 ties
    tiny = np.concatenate([[1e-9, -3e-9, 1e-40, 5e-8, -4e-8, 0.0], rng.uniform(-2e-8, 2e-8, 26)])
    g.append(tiny)  # below the 1e-7 floor: q0 = 0 branch
    g.append(-rng.uniform(0.1, 5.0, 32))  # all negative
    half_ties = [1 + k * 2.0**-11 for k in range(1, 17, 2)]  # f16 ties
    half_ties += [1 + k * 2.0**-8 for k in range(1, 17, 2)]  # bf16 ties
    half_ties += [-(2 + k * 2.0**-10) for k in range(1, 17, 2)]
    half_ties += list(rng.normal(0, 1, 8))
    g.append(np.array(half_ties))
    big = np.concatenate([[65504.0, -60000.0], rng.uniform(-60000, 60000, 30)])
    g.append(big)
    return np.concatenate(g).astype(f32).reshape(2, 128)


def main():
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    blob = bytearray()

    def put(arr):
        a = np.ascontiguousarray(arr)
        off = len(blob)
        blob.extend(a.tobytes())
        return [off, a.nbytes]

    def raw(a):
        # bfloat16 has no numpy type: view its bits as uint16.
        if a.dtype == mx.bfloat16:
            return np.array(a.view(mx.uint16))
        return np.array(a)

    index = {"mlx_version": mx.__version__, "matrices": [], "cases": []}
    for name, make in [("gauss", gauss), ("edges", edges)]:
        m = make(rng)
        index["matrices"].append({"name": name, "rows": m.shape[0], "cols": m.shape[1], "data": put(m)})
        for dname, dt in DTYPES.items():
            w = mx.array(m).astype(dt)
            for group in GROUPS:
                for bits in BITS:
                    wq, s, b = mx.quantize(w, group_size=group, bits=bits)
                    assert s.dtype == dt and b.dtype == dt and wq.dtype == mx.uint32
                    dq = mx.dequantize(wq, s, b, group_size=group, bits=bits)
                    case = {
                        "matrix": name,
                        "dtype": dname,
                        "group": group,
                        "bits": bits,
                        "words": put(np.array(wq)),
                        "scales": put(raw(s)),
                        "biases": put(raw(b)),
                        "dequant": put(raw(dq)),
                    }
                    if dname != "f32" and group == 64:
                        dq32 = mx.dequantize(
                            wq, s.astype(mx.float32), b.astype(mx.float32), group_size=group, bits=bits
                        )
                        case["dequant_f32"] = put(np.array(dq32))
                    index["cases"].append(case)
    (out / "vectors.bin").write_bytes(bytes(blob))
    # One matrix or case per line: small, and diffs stay readable.
    text = "{\n" + f'"mlx_version": {json.dumps(index["mlx_version"])},\n'
    text += '"matrices": [\n' + ",\n".join(json.dumps(x) for x in index["matrices"]) + "\n],\n"
    text += '"cases": [\n' + ",\n".join(json.dumps(x) for x in index["cases"]) + "\n]\n}\n"
    json.loads(text)
    (out / "index.json").write_text(text)
    print(f"{len(index['cases'])} cases, {len(blob)} bytes -> {out}")


if __name__ == "__main__":
    main()
