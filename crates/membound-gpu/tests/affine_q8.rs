//! The 4-bit affine GEMV with 8-bit activations (`set_q8_activations`,
//! `gemv_affine4_q8` in `shaders/gemv_affine.wgsl`) against scalar
//! references, on every feature set the adapter offers and on the forced
//! fallbacks.
//!
//! Exact test: hand-made encodings with small integer scales and biases,
//! and inputs that are integers in [−127, 127] with a ±127 in every block
//! of 32, so each block's scale is 1 and quantizing changes nothing; every
//! partial sum is then an integer below 2²⁴, and the result must equal the
//! f64 product with the decoded weights exactly. A wrong nibble/input
//! pairing, group, scale or row shows as an inexact result.
//!
//! Error bound: with real inputs the kernel computes
//! `Σ_b s·sx_b·Σ q·xq + b·Σ x`, whose distance from the exact `Σ ŵ·x` is
//! `Σ_k s·q_k·(sx_b·xq_k − x_k)`, at most `Σ_k |s·q_k|·sx_b/2` (round to
//! nearest; `sx_b = max_b|x|/127`). We allow that bound times 1.01 (the
//! inverse scale is computed with a few ulps of error) plus the plain
//! kernel's f32 tolerance (1e-5 of `Σ|ŵ·x|`), and check the bound is not
//! vacuous: the worst error reaches a visible share of it.

mod common;

use common::{FEATURE_SETS, Rng, context, integer_encoding};
use membound_codec::{AffineCodec, Codec, Group, Matrix, ScaleDType};
use membound_gpu::kernels::Fusion;
use membound_gpu::{AffineGemv, GpuContext, GpuVector, dense_gemv_reference};

const SHAPES: &[(usize, usize)] = &[(1, 32), (3, 64), (8, 96), (13, 256), (64, 1024), (9, 4096)];
const GROUPS: [Group; 4] = [
    Group::Size(32),
    Group::Size(64),
    Group::Size(128),
    Group::Row,
];

fn run(ctx: &GpuContext, gemv: &AffineGemv, x: &[f32], rows: usize) -> Vec<f32> {
    let xv = GpuVector::from_slice(ctx, "x", x).unwrap();
    let yv = GpuVector::zeros(ctx, "y", rows).unwrap();
    gemv.run(ctx, &xv, &yv).unwrap();
    yv.read(ctx).unwrap()
}

#[test]
fn integer_inputs_exactly() {
    for &(set, disable) in FEATURE_SETS {
        let Some(ctx) = context(disable) else { return };
        let mut rng = Rng::new(21);
        for &(rows, cols) in SHAPES {
            for group in GROUPS {
                // Every scale dtype on one shape, f16 on the rest.
                let scales: &[ScaleDType] = if cols == 256 {
                    &[ScaleDType::F16, ScaleDType::BF16, ScaleDType::F32]
                } else {
                    &[ScaleDType::F16]
                };
                for &scale in scales {
                    let codec = AffineCodec::new(4, group, scale).unwrap();
                    let e = integer_encoding(&codec, rows, cols, &mut rng);
                    let mut x: Vec<f32> = (0..cols).map(|_| rng.int(127)).collect();
                    for b in 0..cols / 32 {
                        x[b * 32 + rng.range(0, 32)] =
                            if rng.range(0, 2) == 0 { 127.0 } else { -127.0 };
                    }
                    let mut gemv = AffineGemv::new(&ctx, "w", &codec, &e).unwrap();
                    gemv.set_q8_activations(&ctx, true).unwrap();
                    assert!(gemv.q8_activations());
                    let want = dense_gemv_reference(&codec.decode(&e).unwrap(), rows, cols, &x);
                    let got = run(&ctx, &gemv, &x, rows);
                    for r in 0..rows {
                        assert_eq!(
                            f64::from(got[r]),
                            want[r],
                            "{set} {} {rows}×{cols} row {r}",
                            codec.spec()
                        );
                    }
                }
            }
        }
    }
}

/// The stated bound on random weights and inputs, plain and fused.
#[test]
fn real_inputs_within_the_quantization_bound() {
    for &(set, disable) in FEATURE_SETS {
        let Some(ctx) = context(disable) else { return };
        let mut rng = Rng::new(22);
        let mut worst_share = 0f64;
        for &(rows, cols) in SHAPES {
            for group in [Group::Size(64), Group::Size(32), Group::Tensor] {
                let codec = AffineCodec::new(4, group, ScaleDType::F16).unwrap();
                let w: Vec<f32> = (0..rows * cols).map(|_| rng.unit()).collect();
                let e = codec.encode(Matrix::new(rows, cols, &w).unwrap()).unwrap();
                let parts = codec.parts(&e).unwrap();
                let decoded = codec.decode(&e).unwrap();
                // Heavy-tailed inputs, as activations are.
                let x: Vec<f32> = (0..cols).map(|_| rng.unit().powi(3) * 4.0).collect();
                let mut gemv = AffineGemv::new(&ctx, "w", &codec, &e).unwrap();
                gemv.set_q8_activations(&ctx, true).unwrap();
                let want = dense_gemv_reference(&decoded, rows, cols, &x);
                let got = run(&ctx, &gemv, &x, rows);
                // Per block of 32 inputs: sx/2.
                let half_step: Vec<f64> = x
                    .chunks(32)
                    .map(|b| f64::from(b.iter().fold(0f32, |m, v| m.max(v.abs()))) / 254.0)
                    .collect();
                let groups = parts.scales.len() / rows.max(1);
                for r in 0..rows {
                    let (mut bound, mut mag) = (0f64, 0f64);
                    for k in 0..cols {
                        let g = match group {
                            Group::Tensor => 0,
                            _ => r * groups + (k * groups / cols).min(groups - 1),
                        };
                        let sq = f64::from(decoded[r * cols + k]) - f64::from(parts.biases[g]);
                        bound += sq.abs() * half_step[k / 32];
                        mag += f64::from(decoded[r * cols + k] * x[k]).abs();
                    }
                    let tol = 1.01 * bound + 1e-5 * mag + 1e-6;
                    let err = (f64::from(got[r]) - want[r]).abs();
                    assert!(
                        err <= tol,
                        "{set} {:?} {rows}×{cols} row {r}: error {err} over {tol}",
                        group
                    );
                    if bound > 0.0 {
                        worst_share = worst_share.max(err / bound);
                    }
                }
            }
        }
        // The bound is not vacuous: quantization errors are visible.
        assert!(
            worst_share > 0.05,
            "{set}: worst error only {worst_share} of the bound"
        );
    }
}

/// The fusions work on the 8-bit path as on the plain one: the fused and
/// unfused q8 kernels agree with a norm-and-SwiGLU reference from the
/// plain q8 output of the scaled input.
#[test]
fn fusions_on_the_q8_path() {
    let Some(ctx) = context(membound_gpu::GpuFeatures::NONE) else {
        return;
    };
    let mut rng = Rng::new(23);
    let (rows, cols) = (64, 512);
    let codec = AffineCodec::new(4, Group::Size(64), ScaleDType::F16).unwrap();
    let w: Vec<f32> = (0..rows * cols).map(|_| rng.unit()).collect();
    let e = codec.encode(Matrix::new(rows, cols, &w).unwrap()).unwrap();
    let mut gemv = AffineGemv::new(&ctx, "w", &codec, &e).unwrap();
    gemv.set_q8_activations(&ctx, true).unwrap();
    let h: Vec<f32> = (0..cols).map(|_| 3.0 * rng.unit()).collect();
    let g: Vec<f32> = (0..cols).map(|_| 0.5 + rng.unit().abs()).collect();
    // Reference: the plain q8 kernel on h ⊙ g, scaled by 1/rms(h) (the
    // quantization is scale-invariant per block, so the fused kernel
    // quantizes exactly these values), then SwiGLU of the halves.
    let hg: Vec<f32> = h.iter().zip(&g).map(|(a, b)| a * b).collect();
    let plain = run(&ctx, &gemv, &hg, rows);
    let ms = h.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / cols as f64;
    let inv = 1.0 / (ms + 1e-5).sqrt();
    let half = rows / 2;
    let want: Vec<f64> = (0..half)
        .map(|r| {
            let (a, b) = (f64::from(plain[r]) * inv, f64::from(plain[half + r]) * inv);
            a / (1.0 + (-a).exp()) * b
        })
        .collect();
    let hv = GpuVector::from_slice(&ctx, "h", &h).unwrap();
    let gv = GpuVector::from_slice(&ctx, "g", &g).unwrap();
    let yv = GpuVector::zeros(&ctx, "y", half).unwrap();
    let fusion = Fusion {
        rms_norm_eps: Some(1e-5),
        swiglu: true,
        ..Fusion::default()
    };
    let d = gemv.bind_fused(&ctx, &hv, Some(&gv), &yv, fusion).unwrap();
    ctx.submit(&[&d]).unwrap();
    let got = yv.read(&ctx).unwrap();
    for r in 0..half {
        let tol = 1e-4 * (want[r].abs() + 1.0);
        assert!(
            (f64::from(got[r]) - want[r]).abs() <= tol,
            "row {r}: {} vs {}",
            got[r],
            want[r]
        );
    }
}

#[test]
fn unsupported_shapes_are_clear_errors() {
    let Some(ctx) = context(membound_gpu::GpuFeatures::NONE) else {
        return;
    };
    let mut rng = Rng::new(24);
    for (bits, group, cols, want) in [
        (3, Group::Size(64), 64, "3 bits"),
        (4, Group::Size(64), 70, "70 inputs"),
    ] {
        let codec = AffineCodec::new(bits, group, ScaleDType::F16).unwrap();
        let w: Vec<f32> = (0..2 * cols).map(|_| rng.unit()).collect();
        let e = codec.encode(Matrix::new(2, cols, &w).unwrap()).unwrap();
        let mut gemv = AffineGemv::new(&ctx, "odd", &codec, &e).unwrap();
        let err = gemv.set_q8_activations(&ctx, true).unwrap_err().to_string();
        assert!(err.contains("odd") && err.contains(want), "{err}");
        assert!(!gemv.q8_activations());
    }
}
