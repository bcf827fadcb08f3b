//! Fused GEMVs (RMSNorm of the input, residual add, SwiGLU of the output
//! halves) against a scalar f64 reference built from the decoded weights,
//! for dense f32/f16 and affine 2/3/4-bit kernels, on every feature set the
//! adapter offers and on the forced fallbacks.
//!
//! Tolerance. Every fused result is `W·x'` in f32 (x' the normalised
//! input), scaled once by 1/rms and combined with at most one more
//! operation (an add, or silu and a product). The plain kernels' own tests
//! bound `W·x` by γ(D)·Σ|w|·|x'| with D < 300 (≈ 2e-5 of the magnitude
//! sum); the norm adds a relative 1e-6 (a sum of squares in f32 and one
//! inverse square root), silu a relative few ulps. We allow 1e-4 of the
//! magnitude sums (`|y0| + Σ|w·x'|`, and for SwiGLU the product of the two
//! rows' sums), five times the bound: a wrong row, a missing scale, a
//! doubled add or an unnormalised input all miss it by orders of magnitude
//! on these inputs.

mod common;

use common::{FEATURE_SETS, Rng, context};
use membound_codec::{AffineCodec, Codec, Group, Matrix, ScaleDType};
use membound_gpu::kernels::Fusion;
use membound_gpu::{AffineGemv, DenseGemv, GpuContext, GpuVector, WeightDType};

/// Shapes with even rows (SwiGLU pairs), odd sizes off every granule, and
/// a long K.
const SHAPES: &[(usize, usize)] = &[
    (2, 1),
    (2, 5),
    (6, 33),
    (10, 97),
    (18, 1000),
    (64, 256),
    (130, 129),
    (4, 5000),
];

const EPS: f32 = 1e-5;

fn fusions() -> Vec<(&'static str, Fusion)> {
    let norm = Some(EPS);
    vec![
        (
            "norm",
            Fusion {
                rms_norm_eps: norm,
                ..Fusion::default()
            },
        ),
        (
            "accumulate",
            Fusion {
                accumulate: true,
                ..Fusion::default()
            },
        ),
        (
            "swiglu",
            Fusion {
                swiglu: true,
                ..Fusion::default()
            },
        ),
        (
            "norm+swiglu",
            Fusion {
                rms_norm_eps: norm,
                swiglu: true,
                ..Fusion::default()
            },
        ),
        (
            "norm+accumulate",
            Fusion {
                rms_norm_eps: norm,
                accumulate: true,
                swiglu: false,
            },
        ),
    ]
}

/// The fused result from decoded weights, in f64, and its tolerance.
fn reference(
    w: &[f32],
    rows: usize,
    cols: usize,
    x: &[f32],
    g: &[f32],
    y0: &[f32],
    f: Fusion,
) -> (Vec<f64>, Vec<f64>) {
    let xs: Vec<f64> = match f.rms_norm_eps {
        Some(eps) => {
            let ms = x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / cols as f64;
            let inv = 1.0 / (ms + f64::from(eps)).sqrt();
            x.iter()
                .zip(g)
                .map(|(v, s)| f64::from(*v) * f64::from(*s) * inv)
                .collect()
        }
        None => x.iter().map(|v| f64::from(*v)).collect(),
    };
    let (t, mag): (Vec<f64>, Vec<f64>) = w
        .chunks_exact(cols)
        .map(|row| {
            row.iter().zip(&xs).fold((0.0, 0.0), |(s, m), (w, x)| {
                (s + f64::from(*w) * x, m + (f64::from(*w) * x).abs())
            })
        })
        .unzip();
    if f.swiglu {
        let h = rows / 2;
        (0..h)
            .map(|r| {
                let (gate, up) = (t[r], t[h + r]);
                let silu = gate / (1.0 + (-gate).exp());
                let scale = (mag[r] + 1.0) * (mag[h + r] + up.abs()) + silu.abs();
                (silu * up, 1e-4 * scale + 1e-6)
            })
            .unzip()
    } else {
        (0..rows)
            .map(|r| {
                let add = if f.accumulate { f64::from(y0[r]) } else { 0.0 };
                (add + t[r], 1e-4 * (mag[r] + add.abs()) + 1e-6)
            })
            .unzip()
    }
}

struct Case {
    rows: usize,
    cols: usize,
    x: Vec<f32>,
    g: Vec<f32>,
    y0: Vec<f32>,
}

fn case(rng: &mut Rng, rows: usize, cols: usize) -> Case {
    Case {
        rows,
        cols,
        // Inputs of a residual stream's scale (not unit), so that a
        // missing normalisation shows.
        x: (0..cols).map(|_| 3.0 * rng.unit()).collect(),
        g: (0..cols).map(|_| 0.5 + rng.unit().abs()).collect(),
        y0: (0..rows).map(|_| rng.unit()).collect(),
    }
}

/// Binds a matrix with a fusion: (x, norm scale, y, fusion).
type Bind<'a> = dyn Fn(
        &GpuVector,
        Option<&GpuVector>,
        &GpuVector,
        Fusion,
    ) -> membound_gpu::Result<membound_gpu::Dispatch>
    + 'a;

/// Runs `bind` with each fusion and compares with the reference.
fn check(ctx: &GpuContext, what: &str, c: &Case, decoded: &[f32], bind: &Bind<'_>) {
    let xv = GpuVector::from_slice(ctx, "x", &c.x).unwrap();
    let gv = GpuVector::from_slice(ctx, "g", &c.g).unwrap();
    for (name, f) in fusions() {
        let yv = GpuVector::from_slice(ctx, "y", &c.y0).unwrap();
        let norm = f.rms_norm_eps.map(|_| &gv);
        let dispatch = bind(&xv, norm, &yv, f).unwrap();
        ctx.submit(&[&dispatch]).unwrap();
        let got = yv.read(ctx).unwrap();
        let (want, tol) = reference(decoded, c.rows, c.cols, &c.x, &c.g, &c.y0, f);
        for (r, ((g, w), t)) in got.iter().zip(&want).zip(&tol).enumerate() {
            assert!(
                (f64::from(*g) - w).abs() <= *t,
                "{what} {}×{} {name}: row {r} got {g}, want {w} (tolerance {t})",
                c.rows,
                c.cols
            );
        }
        if f.swiglu {
            // Past the outputs, y is untouched.
            let half = c.rows / 2;
            assert_eq!(
                got[half..],
                c.y0[half..],
                "{what} {name}: rows past the outputs written"
            );
        }
    }
}

#[test]
fn dense_fusions_match_reference() {
    for (set, disable) in FEATURE_SETS {
        let Some(ctx) = context(*disable) else { return };
        let mut rng = Rng::new(11);
        for &(rows, cols) in SHAPES {
            let c = case(&mut rng, rows, cols);
            let w: Vec<f32> = (0..rows * cols).map(|_| rng.unit()).collect();
            for dtype in [WeightDType::F32, WeightDType::F16] {
                let m = DenseGemv::new(&ctx, "w", rows, cols, &w, dtype).unwrap();
                let decoded: Vec<f32> = match dtype {
                    WeightDType::F32 => w.clone(),
                    WeightDType::F16 => {
                        w.iter().map(|v| half::f16::from_f32(*v).to_f32()).collect()
                    }
                };
                let what = format!("{set} dense {dtype:?}");
                check(&ctx, &what, &c, &decoded, &|x, g, y, f| {
                    m.bind_fused(&ctx, x, g, y, f)
                });
            }
        }
    }
}

#[test]
fn affine_fusions_match_reference() {
    for (set, disable) in FEATURE_SETS {
        let Some(ctx) = context(*disable) else { return };
        let mut rng = Rng::new(12);
        for &(rows, cols) in SHAPES {
            let c = case(&mut rng, rows, cols);
            let w: Vec<f32> = (0..rows * cols).map(|_| rng.unit()).collect();
            for (bits, group) in [(4, 64), (3, 32), (2, 128)] {
                let codec = AffineCodec::new(bits, Group::Size(group), ScaleDType::F16).unwrap();
                let e = codec.encode(Matrix::new(rows, cols, &w).unwrap()).unwrap();
                let decoded = codec.decode(&e).unwrap();
                let m = AffineGemv::new(&ctx, "w", &codec, &e).unwrap();
                let what = format!("{set} affine {bits}-bit g{group}");
                check(&ctx, &what, &c, &decoded, &|x, g, y, f| {
                    m.bind_fused(&ctx, x, g, y, f)
                });
            }
        }
    }
}

#[test]
fn bad_fusions_are_clear_errors() {
    let Some(ctx) = context(membound_gpu::GpuFeatures::NONE) else {
        return;
    };
    let w = vec![0.5f32; 3 * 8];
    let m = DenseGemv::new(&ctx, "odd", 3, 8, &w, WeightDType::F16).unwrap();
    let x = GpuVector::zeros(&ctx, "x", 8).unwrap();
    let y = GpuVector::zeros(&ctx, "y", 3).unwrap();
    let glu = Fusion {
        swiglu: true,
        ..Fusion::default()
    };
    let e = m
        .bind_fused(&ctx, &x, None, &y, glu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("odd") && e.contains("even row count"), "{e}");
    let norm = Fusion {
        rms_norm_eps: Some(1e-5),
        ..Fusion::default()
    };
    let e = m
        .bind_fused(&ctx, &x, None, &y, norm)
        .unwrap_err()
        .to_string();
    assert!(e.contains("without a norm scale"), "{e}");
    let short = GpuVector::zeros(&ctx, "g", 4).unwrap();
    let e = m
        .bind_fused(&ctx, &x, Some(&short), &y, norm)
        .unwrap_err()
        .to_string();
    assert!(e.contains("norm scale `g` has 4 values, needs 8"), "{e}");
    let nan = Fusion {
        rms_norm_eps: Some(f32::NAN),
        ..Fusion::default()
    };
    let g = GpuVector::zeros(&ctx, "g", 8).unwrap();
    let e = m
        .bind_fused(&ctx, &x, Some(&g), &y, nan)
        .unwrap_err()
        .to_string();
    assert!(e.contains("ε"), "{e}");
}
