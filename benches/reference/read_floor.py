#!/usr/bin/env python3
"""How fast can this GPU read N bytes at all? The floor under every GEMV.

A memory-bound kernel that reads N bytes cannot beat the device's best
plain read of N bytes. Below ~100 MiB that best is well under the
datasheet bandwidth: a launch, its ramp-up and its tail cost microseconds
that a 30 MiB read cannot hide. This script measures that floor on the
CUDA side of the GPU machine, so docs/benchmarks.md can say which speed
targets are within reach of any kernel and which are not:

  - `triton`: a plain streaming read (16-byte loads, one partial sum per
    program), the best of a few block sizes and warp counts (if Triton is
    installed);
  - `sum`: torch.sum over the buffer as int32 (a tuned reduction);
  - `mv`: cuBLAS f16 GEMV of a 4096-row matrix of the same byte count.

Like `membound bench kernels`, it rotates through copies totalling
--working-set-mb (more than the 50 MB L2) and times with CUDA events; the
figure is the median over --reps passes of (pass time / calls), each pass
one CUDA graph of --iters calls (kernels back to back, no host launch cost;
without the graph, Python's ~20 us a launch is what gets timed below
~60 MiB).

    python3 benches/reference/read_floor.py --json floor.json
    python3 benches/reference/read_floor.py --mib 31.52,11.23 --dense-us 42.8
"""
import argparse
import json

import torch

from cuda_timing import timed

try:
    import triton
    import triton.language as tl

    @triton.jit
    def _read_kernel(src, out, n, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        offs = pid * BLOCK + tl.arange(0, BLOCK)
        v = tl.load(src + offs, mask=offs < n, other=0)
        tl.store(out + pid, tl.sum(v, axis=0))

except Exception:  # noqa: BLE001 - any import or JIT failure means "no Triton"
    triton = None

# Bytes read by the cases behind issue 4's targets (docs/benchmarks.md),
# then a sweep.
TARGET_MIB = [11.23, 15.77, 31.52, 33.62, 56.02, 112.02]
SWEEP_MIB = [1, 2, 4, 8, 16, 64, 128, 256]


def floor_for(nbytes, working_set, reps, iters):
    words = nbytes // 4
    nbytes = words * 4
    n = max(2, -(-working_set // nbytes))
    bufs = [torch.randint(-1000, 1000, (words,), device="cuda", dtype=torch.int32) for _ in range(n)]
    res = {"bytes": nbytes, "copies": n, "methods": {}}

    out = torch.empty((), device="cuda", dtype=torch.int64)
    res["methods"]["sum"] = timed(lambda i: torch.sum(bufs[i], dim=0, out=out), n, reps, iters)

    cols = nbytes // 2 // 4096
    if cols > 0:
        mats = [b[: 4096 * cols // 2].view(torch.float16).view(4096, cols) for b in bufs]
        x = torch.randn(cols, device="cuda", dtype=torch.float16)
        y = torch.empty(4096, device="cuda", dtype=torch.float16)
        res["methods"]["mv"] = timed(lambda i: torch.mv(mats[i], x, out=y), n, reps, iters)

    if triton is not None:
        best = None
        for block in (2048, 4096, 8192):
            for warps in (4, 8):
                grid = (triton.cdiv(words, block),)
                part = torch.empty(grid[0], device="cuda", dtype=torch.int32)

                def run(i, block=block, warps=warps, grid=grid, part=part):
                    _read_kernel[grid](bufs[i], part, words, BLOCK=block, num_warps=warps)

                t = timed(run, n, reps, iters)
                if best is None or t < best[0]:
                    best = (t, block, warps)
        res["methods"]["triton"] = best[0]
        res["triton_launch"] = {"block": best[1], "warps": best[2]}
    res["floor_s"] = min(res["methods"].values())
    res["floor_method"] = min(res["methods"], key=res["methods"].get)
    del bufs
    torch.cuda.empty_cache()
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", help="comma-separated sizes in MiB (default: the targets' sizes and a sweep)")
    ap.add_argument("--dense-us", type=float, help="our dense f16 time at the target shape, to print the best ratio any kernel could reach")
    ap.add_argument("--json", help="write results to this file")
    ap.add_argument("--working-set-mb", type=int, default=512)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--iters", type=int, default=50)
    args = ap.parse_args()
    sizes = [float(s) for s in args.mib.split(",")] if args.mib else TARGET_MIB + SWEEP_MIB
    dev = torch.cuda.get_device_name()
    rows = []
    for mib in sizes:
        r = floor_for(int(mib * (1 << 20)), args.working_set_mb << 20, args.reps, args.iters)
        r["mib"] = mib
        rows.append(r)
        parts = "  ".join(f"{k} {v * 1e6:7.2f}" for k, v in r["methods"].items())
        line = f"{mib:8.2f} MiB  floor {r['floor_s'] * 1e6:7.2f} us ({r['bytes'] / r['floor_s'] / 1e9:6.0f} GB/s)  [{parts}]"
        if args.dense_us:
            line += f"  max x dense f16 {args.dense_us * 1e-6 / r['floor_s']:.2f}"
        print(line, flush=True)
    out = {
        "device": dev,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": None if triton is None else triton.__version__,
        "results": rows,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
