#!/usr/bin/env python3
"""Writes the diagnostic variants of shaders/gemv_affine.wgsl timed in
docs/benchmarks.md ("where the 4-bit time goes"), one folder each, for
MEMBOUND_SHADER_DIR:

    python3 benches/reference/affine_variants.py OUT
    MEMBOUND_SHADER_DIR=OUT/loadonly membound bench kernels \
        --shapes 4096x14336,14336x4096 --weights affine4

Variants (each a timing experiment: their results are wrong on purpose):
  loadonly  code words loaded and XOR-ed; no x, no scales, no arithmetic
  nodot     the per-code dot products replaced by one multiply
  noscale   the scale/bias loads replaced by constants
  xh        x read as packed f16 pairs (half the x bytes; needs an f32 x
            buffer reinterpreted, so values are garbage but finite-sized)
  q8g       the affine4-q8 kernel reading 8-bit x from the x buffer instead
            of staging it per workgroup (its quantize pass not counted)

The prefetch variant is the shader of commit f1ce21d
(`git show f1ce21d:shaders/gemv_affine.wgsl`). Every substitution asserts
its anchor, so a changed shader fails loudly instead of timing something
else.
"""
import pathlib
import sys


def sub(text, old, new, count=1):
    assert text.count(old) == count, f"anchor not found {count}x: {old[:60]!r}"
    return text.replace(old, new)


def main():
    out = pathlib.Path(sys.argv[1])
    root = pathlib.Path(__file__).resolve().parents[2]
    base = (root / "shaders" / "gemv_affine.wgsl").read_text()
    v = {}

    i0 = base.index("// The rows' contributions of unit u, whose words are w.")
    i1 = base.index("// This thread's partial sums of the workgroup's rows.")
    v["loadonly"] = base[:i0] + """fn unit_sums(r: Rows, w: Words, u: u32, masked: bool) -> Acc {
    var acc: Acc;
    let m = vec4<u32>(0x3fffffffu);
    acc.lo = bitcast<vec4<f32>>(vec4<u32>(w.r0.x ^ w.r0.y, w.r1.x ^ w.r1.y, w.r2.x ^ w.r2.y, w.r3.x ^ w.r3.y) & m);
    acc.hi = bitcast<vec4<f32>>(vec4<u32>(w.r4.x ^ w.r4.y, w.r5.x ^ w.r5.y, w.r6.x ^ w.r6.y, w.r7.x ^ w.r7.y) & m);
    if SCALE_KIND == 7u && GROUP == 1u {
        acc.lo += vec4<f32>(load_scale_bias(r.sb_lo.x).x);
    }
    return acc;
}

""" + base[i1:]

    v["nodot"] = sub(base, """        default: {
            var d = dot4(w.x, p.v0, p.v1);
            if n > 1u {
                d += dot4(w.y, p.v2, p.v3);
            }""", """        default: {
            var d = bitcast<f32>((w.x ^ w.y) & 0x3fffffffu) * p.v0.x;""")

    v["noscale"] = sub(base,
        "fn fold(sb: vec4<u32>, g: u32, d: vec4<f32>, sum: f32) -> vec4<f32> {",
        "fn fold(sb: vec4<u32>, g: u32, d: vec4<f32>, sum: f32) -> vec4<f32> {\n"
        "    return d * 0.01 + sum * 0.02;")

    xh = sub(base, "@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;",
             "@group(0) @binding(3) var<storage, read> x: array<vec2<u32>>;")
    xh = sub(xh, """        return select(vec4<f32>(0.0), x[min(i, last)], index < vec4<u32>(params.cols));
    }
    return x[i];""", """        let w = x[min(i, last)];
        return select(vec4<f32>(0.0), vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y)), index < vec4<u32>(params.cols));
    }
    let w = x[i];
    return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));""")
    v["xh"] = sub(xh, "var a = x[b * 8u + i];", "var a = load_x(b * 8u + i, false);")

    q8 = sub(base, """        let xa = q8_x[2u * b];
        let xb = q8_x[2u * b + 1u];
        let s = q8_s[b];""", """        let xa = bitcast<vec4<u32>>(x[2u * b]);
        let xb = bitcast<vec4<u32>>(x[2u * b + 1u]);
        let sv = x[params.cols / 8u + b / 2u];
        let s = select(sv.xy, sv.zw, (b & 1u) == 1u);""")
    v["q8g"] = sub(q8, "    let ss = q8_stage(lid);",
                   "    var ss = 0.0;\n    if Q8_MAXK == 3u {\n"
                   "        ss = q8_s[0].x + f32(q8_x[0].x);\n    }", count=2)

    for name, text in v.items():
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "gemv_affine.wgsl").write_text(text)
        print(d)


if __name__ == "__main__":
    main()
