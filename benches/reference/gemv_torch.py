#!/usr/bin/env python3
"""cuBLAS GEMV reference for `membound bench kernels`.

Times y = W @ x with PyTorch (cuBLAS) at the same shapes and dtypes as our
WGSL kernels, on the same GPU, so docs/benchmarks.md can report a ratio
measured side by side. Like our benchmark, it rotates through enough weight
matrices that the working set exceeds the GPU's last-level cache (H100:
50 MB), and times with CUDA events.

    python3 benches/reference/gemv_torch.py --json torch.json
    python3 benches/reference/gemv_torch.py --cuda-graph --json torch-graph.json
"""
import argparse
import json

import torch

from cuda_timing import timed

SHAPES = [
    (4096, 4096),
    (4096, 14336),
    (14336, 4096),
    # SmolLM2-135M: q/o, k/v, gate/up, down, classifier.
    (576, 576),
    (192, 576),
    (1536, 576),
    (576, 1536),
    (49152, 576),
]


def bench(rows, cols, dtype, working_set, reps, iters, graph=False):
    elem = torch.tensor([], dtype=dtype).element_size()
    mat_bytes = rows * cols * elem
    n = max(2, -(-working_set // mat_bytes))
    ws = [torch.randn(rows, cols, device="cuda", dtype=dtype) for _ in range(n)]
    x = torch.randn(cols, device="cuda", dtype=dtype)
    y = torch.empty(rows, device="cuda", dtype=dtype)
    t = timed(lambda i: torch.mv(ws[i], x, out=y), n, reps, iters, graph)
    read = mat_bytes + cols * elem + rows * elem
    return {
        "rows": rows, "cols": cols, "dtype": str(dtype).replace("torch.", ""),
        "median_s": t, "bytes": read, "gbps": read / t / 1e9, "matrices": n, "cuda_graph": graph,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write results to this file")
    ap.add_argument("--working-set-mb", type=int, default=512)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--cuda-graph", action="store_true",
                    help="capture each pass's calls in one CUDA graph: without it, small shapes "
                    "(under ~20 us) time Python's launch cost, not cuBLAS")
    args = ap.parse_args()
    dev = torch.cuda.get_device_name()
    rows = []
    for dtype in (torch.float32, torch.float16):
        for r, c in SHAPES:
            res = bench(r, c, dtype, args.working_set_mb << 20, args.reps, args.iters, args.cuda_graph)
            rows.append(res)
            print(f"{dev:24.24} {res['dtype']:8} {r:>6}x{c:<6} {res['median_s']*1e6:9.2f} us {res['gbps']:8.1f} GB/s")
    out = {"device": dev, "torch": torch.__version__, "cuda": torch.version.cuda, "results": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
