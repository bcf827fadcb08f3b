#!/usr/bin/env python3
"""Merge `membound bench kernels --json` and `gemv_torch.py --json` output,
measured in the same device run, into the markdown tables of
docs/benchmarks.md: every kernel with GB/s, % of peak, speedup against our
dense f16, and dense kernels' ratio against cuBLAS at the same shape/dtype.
With the floor (the default of `bench kernels`), also the streaming-read
floor of each case's bytes, the share of it reached, and the best speedup
over dense f16 that any kernel reading those bytes could show ("floor ×").

    python3 benches/reference/report.py ours.json torch.json > table.md
"""
import json
import sys

TARGETS = {
    # (weights, sparsity %) -> minimum speedup vs our dense f16 (issue 4).
    ("affine4-g64", 0): 3.3,
    # The same weights with 8-bit activations (an approximation of x).
    ("affine4-q8-g64", 0): 3.3,
    ("sparse-f16", 50): 1.8,
    ("sparse-f16", 70): 3.0,
    ("sparse-f16", 90): 6.0,
    ("sparse-affine4-g64", 50): 5.5,
}


def main():
    ours = json.load(open(sys.argv[1]))
    torch = json.load(open(sys.argv[2])) if len(sys.argv) > 2 else {"results": []}
    ref = {(r["rows"], r["cols"], r["dtype"]): r for r in torch["results"]}
    print(f"Device: {ours['device']} ({ours['backend']}, {ours['driver']}); "
          f"peak {ours['peak_gbps']} GB/s ({ours['peak_source']}); timing: {ours['timing']}; "
          f"working set {ours['working_set'] >> 20} MiB per case.")
    if torch["results"]:
        print(f"Reference: PyTorch {torch['torch']} (CUDA {torch['cuda']}) `torch.mv` on {torch['device']}.")
    print()
    print("| shape | weights | sparsity | mask | µs | bytes read | GB/s | % peak | × dense f16 | × cuBLAS "
          "| floor µs | % floor | floor × | target |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in ours["rows"]:
        dtype = {"f32": "float32", "f16": "float16"}.get(r["weights"])
        cublas = ""
        if dtype and (r["rows"], r["cols"], dtype) in ref:
            t = ref[(r["rows"], r["cols"], dtype)]["median_s"]
            cublas = f"{t / (r['median_us'] * 1e-6):.2f}"
        nominal = round(r["sparsity"] * 10) * 10 if r["weights"].startswith("sparse") else 0
        target = ""
        if (r["weights"], nominal) in TARGETS and r["rows"] * r["cols"] == 4096 * 14336:
            need = TARGETS[(r["weights"], nominal)]
            ok = r["speedup_vs_dense_f16"] >= need
            target = f"≥ {need} {'✓' if ok else '✗'}"
            best = r.get("floor_speedup_vs_dense_f16")
            if best is not None and best < need:
                target += " (above the floor)"
        if dtype == "float16" and r["rows"] * r["cols"] == 4096 * 14336 and cublas:
            target = f"≥ 0.90 × cuBLAS {'✓' if float(cublas) >= 0.9 else '✗'}"
        peak = f"{r['peak_fraction'] * 100:.1f}" if r.get("peak_fraction") else "-"
        floor = r.get("floor_us")
        floor_cols = (f"{floor:.2f} | {r['floor_fraction'] * 100:.0f} | {r['floor_speedup_vs_dense_f16']:.2f}"
                      if floor is not None else "- | - | -")
        print(f"| {r['rows']}×{r['cols']} | {r['weights']} | {r['sparsity'] * 100:.0f}% | {r['mask']} | "
              f"{r['median_us']:.2f} | {r['bytes_read'] / 2**20:.2f} MiB | {r['gbps']:.0f} | {peak} | "
              f"{r['speedup_vs_dense_f16']:.2f} | {cublas} | {floor_cols} | {target} |")


if __name__ == "__main__":
    main()
