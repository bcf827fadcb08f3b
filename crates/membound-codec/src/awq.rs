//! AWQ: activation-aware per-input-channel scaling before affine
//! quantization.
//!
//! Lin, Tang, Tang, Yang, Dang, Gan, Han, *AWQ: Activation-aware Weight
//! Quantization for LLM Compression and Acceleration* (MLSys 2024,
//! arXiv:2306.00978). Weights that meet large activations matter most; AWQ
//! scales input channel `j` of `W` up by `s_j` before quantizing and the
//! input down by the same factor, which is exact in full precision and
//! shrinks the relative rounding error of the salient channels:
//!
//! ```text
//! s_j(α) = mean|x_j|^α, normalised so that √(max s · min s) = 1
//! α*     = argmin_α Σ_W ‖W·X − Q(W·diag(s))·diag(s)⁻¹·X‖²     (α on a grid in [0, 1])
//! ```
//!
//! `Q` is round-to-nearest in the affine (MLX) layout of the given
//! [`AffineCodec`]; the output of [`AwqChoice`] is the scale vector, which
//! the caller folds into the previous operation (an RMSNorm weight, or the
//! rows of the matrix that produces this input) or keeps. Matrices that read
//! the same input (q, k and v; gate and up) must share one `s`, so
//! [`awq_search`] takes several. `α = 0` is plain round-to-nearest, so on
//! the calibration samples the chosen loss never exceeds RTN's. The paper's
//! second step, a search over clipping ranges, is not done here.

use faer::{Mat, MatRef};

use crate::{AffineCodec, Codec, Error, Matrix, Result};

fn input_err(problem: String) -> Error {
    Error::Input {
        codec: "awq".into(),
        problem,
    }
}

/// Streaming per-channel mean of `|x|`, plus a thinned sample of inputs for
/// the loss.
#[derive(Clone, Debug)]
pub struct AwqStats {
    cols: usize,
    sum_abs: Vec<f64>,
    seen: u64,
    keep_every: u64,
    max_samples: usize,
    samples: Vec<f32>,
}

impl AwqStats {
    /// Stats of inputs of width `cols`; keeps every `keep_every`-th input
    /// (at most `max_samples`) as a loss sample.
    pub fn new(cols: usize, keep_every: u64, max_samples: usize) -> Self {
        Self {
            cols,
            sum_abs: vec![0.0; cols],
            seen: 0,
            keep_every: keep_every.max(1),
            max_samples,
            samples: Vec::new(),
        }
    }

    /// Adds one input vector. Fails on a wrong width, empty input, NaN or ∞.
    pub fn add(&mut self, x: &[f32]) -> Result<()> {
        if x.is_empty() || x.len() != self.cols {
            return Err(input_err(format!(
                "calibration input of width {}, expected {}",
                x.len(),
                self.cols
            )));
        }
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(input_err(format!(
                "calibration input holds {} at position {i}",
                x[i]
            )));
        }
        for (s, v) in self.sum_abs.iter_mut().zip(x) {
            *s += f64::from(v.abs());
        }
        if self.seen % self.keep_every == 0 && self.samples.len() < self.max_samples * self.cols {
            self.samples.extend_from_slice(x);
        }
        self.seen += 1;
        Ok(())
    }

    /// Inputs seen.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// `mean |x_j|` per channel (fails when nothing was added).
    pub fn mean_abs(&self) -> Result<Vec<f64>> {
        if self.seen == 0 {
            return Err(input_err("no calibration inputs were recorded".into()));
        }
        Ok(self.sum_abs.iter().map(|s| s / self.seen as f64).collect())
    }

    /// The kept samples, row-major `n × cols`.
    pub fn samples(&self) -> &[f32] {
        &self.samples
    }
}

/// What [`awq_search`] chose.
#[derive(Clone, Debug, PartialEq)]
pub struct AwqChoice {
    /// The exponent.
    pub alpha: f64,
    /// `s`, one per input channel (multiply weight columns by it, divide
    /// the input by it).
    pub scales: Vec<f32>,
    /// Loss `Σ ‖(W − Ŵ)·Xᵀ‖²` on the samples at `alpha`.
    pub loss: f64,
    /// The same loss at `α = 0` (plain round-to-nearest).
    pub rtn_loss: f64,
}

/// The scale vector for exponent `alpha` (see the module documentation).
pub fn awq_scales(mean_abs: &[f64], alpha: f64) -> Vec<f32> {
    let s: Vec<f64> = mean_abs
        .iter()
        .map(|m| m.max(0.0).powf(alpha).max(1e-4))
        .collect();
    let (lo, hi) = s
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let norm = (lo * hi).sqrt();
    s.iter().map(|v| (v / norm) as f32).collect()
}

/// `W·diag(s)`: column `j` of row-major `m` times `s[j]`.
pub fn scale_columns(m: Matrix<'_>, s: &[f32]) -> Vec<f32> {
    m.data
        .chunks(m.cols.max(1))
        .flat_map(|row| row.iter().zip(s).map(|(w, s)| w * s))
        .collect()
}

/// Σ over `mats` of `‖(W − Q(W·diag(s))·diag(s)⁻¹)·Xᵀ‖²`.
fn loss(codec: &AffineCodec, mats: &[Matrix<'_>], s: &[f32], x: MatRef<'_, f32>) -> Result<f64> {
    let mut total = 0.0;
    for m in mats {
        let scaled = scale_columns(*m, s);
        let e = codec.encode(Matrix::new(m.rows, m.cols, &scaled)?)?;
        let dq = codec.decode(&e)?;
        let delta: Vec<f32> = dq
            .chunks(m.cols)
            .zip(m.data.chunks(m.cols))
            .flat_map(|(q, w)| {
                q.iter()
                    .zip(w)
                    .zip(s)
                    .map(|((q, w), s)| w - q / s)
                    .collect::<Vec<_>>()
            })
            .collect();
        let d = MatRef::from_row_major_slice(&delta, m.rows, m.cols);
        let y: Mat<f32> = d * x.transpose();
        for j in 0..y.ncols() {
            total += y
                .col(j)
                .iter()
                .map(|v| f64::from(*v) * f64::from(*v))
                .sum::<f64>();
        }
    }
    Ok(total)
}

/// Searches `α ∈ {0, 1/grid, …, 1}` for the scale that minimises the output
/// error of every matrix in `mats` (all with `cols` = `mean_abs.len()`
/// columns, reading the same input) on `samples` (row-major `n × cols`).
///
/// Errors: no matrices, mismatched widths, no samples, a grid of 0, non-
/// finite statistics, and codec errors.
pub fn awq_search(
    codec: &AffineCodec,
    mats: &[Matrix<'_>],
    mean_abs: &[f64],
    samples: &[f32],
    grid: usize,
) -> Result<AwqChoice> {
    let cols = mean_abs.len();
    if mats.is_empty() || grid == 0 {
        return Err(input_err("no matrices to scale, or an empty grid".into()));
    }
    if let Some(m) = mats.iter().find(|m| m.cols != cols) {
        return Err(input_err(format!(
            "a {}×{} matrix does not read inputs of width {cols}",
            m.rows, m.cols
        )));
    }
    if cols == 0 || samples.is_empty() || samples.len() % cols != 0 {
        return Err(input_err(format!(
            "{} sample values are not a whole, non-zero number of inputs of width {cols}",
            samples.len()
        )));
    }
    if mean_abs.iter().any(|v| !v.is_finite()) || samples.iter().any(|v| !v.is_finite()) {
        return Err(input_err("calibration statistics are not finite".into()));
    }
    let x = MatRef::from_row_major_slice(samples, samples.len() / cols, cols);
    let mut best: Option<AwqChoice> = None;
    let mut rtn_loss = f64::NAN;
    for i in 0..=grid {
        let alpha = i as f64 / grid as f64;
        let s = awq_scales(mean_abs, alpha);
        let l = loss(codec, mats, &s, x)?;
        if i == 0 {
            rtn_loss = l;
        }
        if best.as_ref().is_none_or(|b| l < b.loss) {
            best = Some(AwqChoice {
                alpha,
                scales: s,
                loss: l,
                rtn_loss: f64::NAN,
            });
        }
    }
    let mut best = best.expect("grid is non-empty");
    best.rtn_loss = rtn_loss;
    Ok(best)
}
