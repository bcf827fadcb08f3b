//! Dense GEMV against the scalar f64 reference, on every feature set the
//! adapter offers and on the forced fallbacks (workgroup-memory reduction).
//!
//! Tolerances. The reference sums in f64 the very weights the GPU holds
//! (for f16, the f16-rounded weights, converted exactly to f32), so what is
//! left is the kernel's f32 arithmetic: each product rounds once and each
//! output is a sum along a tree of depth D, so
//! |y − y_ref| ≤ γ(D+1)·Σ_k |w_k·x_k|, with γ(n) = n·u/(1 − n·u), u = 2⁻²⁴.
//! Any summation order has D ≤ K − 1 (the classic K·u·Σ|w·x| bound); this
//! kernel's is much shallower: a thread adds up to 8 products per chunk and
//! ⌈K/(values per chunk · WG)⌉ chunk sums, then the workgroup reduces WG
//! partials (a tree of depth log₂ WG, or subgroupAdd in an order the driver
//! picks, bounded by WG). With 64 ≤ WG ≤ 256 and at least 4 values per
//! chunk, D ≤ 8 + ⌈K/(4·64)⌉ + 256, used below.
//! For f16 weights the stored matrix differs from the f32 one by at most
//! 2⁻¹¹ relative per weight (round to nearest; 2⁻²⁵ absolute for
//! subnormals), which adds 2⁻¹¹·Σ|w·x| + 2⁻²⁵·Σ|x| against the f32 matrix.
//!
//! The integer tests need no tolerance: small integer weights and inputs
//! make every partial sum an integer below 2²⁴, exact in f32 in any order,
//! so a dropped, repeated or misplaced term shows as an inexact result.

mod common;

use common::{FEATURE_SETS, Rng, context, context_with};
use half::f16;
use membound_gpu::{
    DenseGemv, GpuContext, GpuFeatures, GpuOptions, GpuVector, WeightDType, dense_gemv_reference,
};

const DTYPES: [WeightDType; 2] = [WeightDType::F32, WeightDType::F16];

/// Edge shapes, then random ones: odd sizes, sizes off the 4-row and
/// 8-value granules, 1×N, N×1, long K.
fn shapes() -> Vec<(usize, usize)> {
    let mut shapes = vec![
        (1, 1),
        (1, 1000),
        (1000, 1),
        (3, 20000),
        (4, 8),
        (5, 7),
        (13, 9),
        (17, 33),
        (63, 129),
        (64, 256),
        (257, 255),
        (130, 2049),
    ];
    let mut rng = Rng::new(7);
    for _ in 0..10 {
        shapes.push((rng.range(1, 300), rng.range(1, 3000)));
    }
    shapes
}

/// The values the device stores for `w` as `dtype`.
fn stored(w: &[f32], dtype: WeightDType) -> Vec<f32> {
    match dtype {
        WeightDType::F32 => w.to_vec(),
        WeightDType::F16 => w.iter().map(|&v| f16::from_f32(v).to_f32()).collect(),
    }
}

fn run(
    ctx: &GpuContext,
    w: &[f32],
    rows: usize,
    cols: usize,
    x: &[f32],
    dtype: WeightDType,
) -> Vec<f32> {
    let gemv = DenseGemv::new(ctx, "w", rows, cols, w, dtype).unwrap();
    let xv = GpuVector::from_slice(ctx, "x", x).unwrap();
    let yv = GpuVector::zeros(ctx, "y", rows).unwrap();
    gemv.run(ctx, &xv, &yv).unwrap();
    yv.read(ctx).unwrap()
}

/// γ(D+1) for this kernel's summation depth at row length `k`.
fn gamma(k: usize) -> f64 {
    let depth = 8 + k.div_ceil(4 * 64) + 256;
    let nu = (depth + 1) as f64 * f64::from(f32::EPSILON) / 2.0;
    nu / (1.0 - nu)
}

fn abs_products(w: &[f32], rows: usize, cols: usize, x: &[f32]) -> Vec<f64> {
    let aw: Vec<f32> = w.iter().map(|v| v.abs()).collect();
    let ax: Vec<f32> = x.iter().map(|v| v.abs()).collect();
    dense_gemv_reference(&aw, rows, cols, &ax)
}

#[test]
fn random_values_within_the_stated_tolerance() {
    for &(set, disable) in FEATURE_SETS {
        let Some(ctx) = context(disable) else { return };
        let mut rng = Rng::new(11);
        for (rows, cols) in shapes() {
            let w: Vec<f32> = (0..rows * cols).map(|_| rng.unit()).collect();
            let x: Vec<f32> = (0..cols).map(|_| rng.unit()).collect();
            let sum_abs_x: f64 = x.iter().map(|v| f64::from(v.abs())).sum();
            for dtype in DTYPES {
                let got = run(&ctx, &w, rows, cols, &x, dtype);
                let held = stored(&w, dtype);
                let exact = dense_gemv_reference(&held, rows, cols, &x);
                let original = dense_gemv_reference(&w, rows, cols, &x);
                let mag = abs_products(&held, rows, cols, &x);
                for r in 0..rows {
                    let g = f64::from(got[r]);
                    let tol = gamma(cols) * mag[r] + 1e-30;
                    assert!(
                        (g - exact[r]).abs() <= tol,
                        "{set} {dtype:?} {rows}×{cols} row {r}: got {g}, want {} ± {tol}",
                        exact[r]
                    );
                    if dtype == WeightDType::F16 {
                        let tol16 = tol + mag[r] / 2048.0 + sum_abs_x / (1u64 << 25) as f64;
                        assert!(
                            (g - original[r]).abs() <= tol16,
                            "{set} f16 vs f32 weights {rows}×{cols} row {r}: got {g}, want {} ± {tol16}",
                            original[r]
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn integer_values_exactly() {
    for &(set, disable) in FEATURE_SETS {
        let Some(ctx) = context(disable) else { return };
        let mut rng = Rng::new(23);
        for (rows, cols) in shapes() {
            let w: Vec<f32> = (0..rows * cols).map(|_| rng.int(3)).collect();
            let x: Vec<f32> = (0..cols).map(|_| rng.int(3)).collect();
            let want = dense_gemv_reference(&w, rows, cols, &x);
            for dtype in DTYPES {
                let got = run(&ctx, &w, rows, cols, &x, dtype);
                for r in 0..rows {
                    assert_eq!(
                        f64::from(got[r]),
                        want[r],
                        "{set} {dtype:?} {rows}×{cols} row {r}"
                    );
                }
            }
        }
    }
}

#[test]
fn f16_input_uploads_as_is() {
    let Some(ctx) = context(GpuFeatures::NONE) else {
        return;
    };
    let (rows, cols) = (9, 21);
    let w: Vec<f16> = (0..rows * cols)
        .map(|i| f16::from_f32((i % 7) as f32 - 3.0))
        .collect();
    let x: Vec<f32> = (0..cols).map(|i| (i % 5) as f32 - 2.0).collect();
    let gemv = DenseGemv::from_f16(&ctx, "w16", rows, cols, &w).unwrap();
    assert_eq!(gemv.dtype(), WeightDType::F16);
    let xv = GpuVector::from_slice(&ctx, "x", &x).unwrap();
    let yv = GpuVector::zeros(&ctx, "y", rows).unwrap();
    gemv.run(&ctx, &xv, &yv).unwrap();
    let wf: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
    let want: Vec<f32> = dense_gemv_reference(&wf, rows, cols, &x)
        .into_iter()
        .map(|v| v as f32)
        .collect();
    assert_eq!(yv.read(&ctx).unwrap(), want);
}

/// More than 65535 workgroups: the grid spills into its y dimension.
#[test]
fn tall_matrix_uses_a_two_dimensional_grid() {
    let Some(ctx) = context(GpuFeatures::NONE) else {
        return;
    };
    let (rows, cols) = (300_001, 3);
    let mut rng = Rng::new(5);
    let w: Vec<f32> = (0..rows * cols).map(|_| rng.int(3)).collect();
    let x = [1.0, -2.0, 3.0];
    let want = dense_gemv_reference(&w, rows, cols, &x);
    for dtype in DTYPES {
        let got = run(&ctx, &w, rows, cols, &x, dtype);
        for r in 0..rows {
            assert_eq!(f64::from(got[r]), want[r], "{dtype:?} row {r}");
        }
    }
}

/// With a small storage-binding limit the matrix is split into row blocks,
/// each its own buffer and dispatch, writing its part of y.
#[test]
fn matrix_over_the_binding_limit_is_split_into_blocks() {
    let options = GpuOptions {
        max_storage_buffer_binding_size: Some(64 << 10),
        ..GpuOptions::from_env().unwrap()
    };
    let Some(ctx) = context_with(&options) else {
        return;
    };
    let (rows, cols) = (701, 100);
    let mut rng = Rng::new(3);
    let w: Vec<f32> = (0..rows * cols).map(|_| rng.int(3)).collect();
    let x: Vec<f32> = (0..cols).map(|_| rng.int(3)).collect();
    let want = dense_gemv_reference(&w, rows, cols, &x);
    for dtype in DTYPES {
        let gemv = DenseGemv::new(&ctx, "split", rows, cols, &w, dtype).unwrap();
        assert!(gemv.blocks() > 1, "{dtype:?}: expected several blocks");
        let xv = GpuVector::from_slice(&ctx, "x", &x).unwrap();
        let yv = GpuVector::zeros(&ctx, "y", rows).unwrap();
        gemv.run(&ctx, &xv, &yv).unwrap();
        let got = yv.read(&ctx).unwrap();
        for r in 0..rows {
            assert_eq!(f64::from(got[r]), want[r], "{dtype:?} row {r}");
        }
    }
}

/// Values past `cols` in the input's allocation are ignored, even NaN.
#[test]
fn input_padding_is_masked() {
    for &(set, disable) in FEATURE_SETS {
        let Some(ctx) = context(disable) else { return };
        let rows = 6;
        for cols in [1_usize, 2, 3, 5, 7, 9, 11, 13, 15] {
            let w: Vec<f32> = (0..rows * cols).map(|i| (i % 5) as f32 - 2.0).collect();
            let mut x: Vec<f32> = (0..cols.next_multiple_of(8))
                .map(|i| (i % 3) as f32 - 1.0)
                .collect();
            let want = dense_gemv_reference(&w, rows, cols, &x);
            x[cols..].fill(f32::NAN);
            for dtype in DTYPES {
                let got = run(&ctx, &w, rows, cols, &x, dtype);
                let got: Vec<f64> = got.into_iter().map(f64::from).collect();
                assert_eq!(got, want, "{set} {dtype:?} cols {cols}");
            }
        }
    }
}

/// Two GEMVs recorded into one pass, the second reading the first's
/// output; then the same dispatches again with a new input (reuse).
#[test]
fn chained_kernels_in_one_pass_and_reused_buffers() {
    for &(set, disable) in FEATURE_SETS {
        let Some(ctx) = context(disable) else { return };
        let mut rng = Rng::new(9);
        let (n0, n1, n2) = (100, 64, 50);
        let w1: Vec<f32> = (0..n1 * n0).map(|_| rng.int(3)).collect();
        let w2: Vec<f32> = (0..n2 * n1).map(|_| rng.int(3)).collect();
        let g1 = DenseGemv::new(&ctx, "w1", n1, n0, &w1, WeightDType::F16).unwrap();
        let g2 = DenseGemv::new(&ctx, "w2", n2, n1, &w2, WeightDType::F32).unwrap();
        let x = GpuVector::zeros(&ctx, "x", n0).unwrap();
        let h = GpuVector::zeros(&ctx, "h", n1).unwrap();
        let y = GpuVector::zeros(&ctx, "y", n2).unwrap();
        let d1 = g1.bind(&ctx, &x, &h).unwrap();
        let d2 = g2.bind(&ctx, &h, &y).unwrap();
        for round in 0..2 {
            let xs: Vec<f32> = (0..n0).map(|_| rng.int(3)).collect();
            x.write(&ctx, &xs).unwrap();
            ctx.submit(&[&d1, &d2]).unwrap();
            let h_ref: Vec<f32> = dense_gemv_reference(&w1, n1, n0, &xs)
                .into_iter()
                .map(|v| v as f32)
                .collect();
            let want = dense_gemv_reference(&w2, n2, n1, &h_ref);
            let got: Vec<f64> = y.read(&ctx).unwrap().into_iter().map(f64::from).collect();
            assert_eq!(got, want, "{set} round {round}");
        }
    }
}

#[test]
fn bytes_read_counts_weights_and_input() {
    let Some(ctx) = context(GpuFeatures::NONE) else {
        return;
    };
    let w = vec![0.5; 3 * 10];
    let f32_gemv = DenseGemv::new(&ctx, "w", 3, 10, &w, WeightDType::F32).unwrap();
    // Rows padded to 12 f32 = 48 bytes; x is 40 bytes.
    assert_eq!(f32_gemv.weight_bytes(), 3 * 48);
    assert_eq!(f32_gemv.bytes_read(), 3 * 48 + 40);
    let f16_gemv = DenseGemv::new(&ctx, "w", 3, 10, &w, WeightDType::F16).unwrap();
    // Rows padded to 16 f16 = 32 bytes.
    assert_eq!(f16_gemv.weight_bytes(), 3 * 32);
}
