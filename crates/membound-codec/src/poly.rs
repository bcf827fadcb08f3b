//! Polynomial ICDF and PolyMSE level codecs, and positional polynomials.
//!
//! Three codecs from the research notes (sections 3 and 4.1):
//!
//! - `poly:degree=D` — *polynomial ICDF*. Per row, a degree-D polynomial in
//!   the level index j = 0..15 gives the 16 reconstruction levels
//!   `L(j) = c0 + j·(c1 + j·(c2 + j·c3))` (Horner's rule, in f32), fitted by
//!   least squares to the row's empirical quantiles at (j+0.5)/16; each
//!   weight is coded to its nearest level (4-bit codes).
//! - `polymse:degree=D` — the same polynomial, fitted instead to the row's
//!   16 MSE-optimal (Lloyd-Max) centroids.
//! - `positional:degree=D` — "Option B": each row *is* a polynomial of degree
//!   D in the column index, fitted by least squares. Stored nothing per
//!   weight, only D+1 coefficients per row.
//!
//! Stored parts, `poly` and `polymse` (D in 1..=7):
//! - `coeffs`: f32 `[rows, D+1]`, monomial coefficients c0..cD in j;
//! - `codes`: u32 `[rows, ceil(cols·4/32)]`, 4-bit level indices packed as in
//!   [`crate::kmeans`] (LSB first, MLX's 4-bit layout).
//!
//! Bits per weight: `(rows·(D+1)·32 + rows·ceil(cols/8)·32) / (rows·cols)`.
//!
//! Stored part, `positional` (D in 0..=4096, clamped to cols−1):
//! - `coeffs`: f16 `[rows, D'+1]` with D' = min(D, cols−1) (none when
//!   cols = 0), coefficients in the orthonormal discrete Legendre (Gram)
//!   basis of the column grid (see [`gram_basis`]).
//!
//! Bits per weight: `rows·(D'+1)·16 / (rows·cols)` = `16·(D'+1)/cols`.
//!
//! The positional basis is the one the monomials 1, x, …, x^D span on the
//! column grid x_c = (2c+1)/cols − 1, made orthonormal on that grid: the
//! least-squares fit is then an orthogonal projection and each coefficient is
//! bounded by the row's norm, so degree 128 stays well conditioned where a
//! monomial (or even continuous-Legendre) fit on equispaced points does not.

use rayon::prelude::*;

use crate::kmeans::{
    check_encoded, expect_part, f16_part, f16_values, f32_part, f32_values, lloyd_1d, pack_codes,
    packed_words, spec_err, unpack_codes,
};
use crate::lowrank::matmul_row_major;
use crate::{Codec, Encoded, Matrix, PartDType, Result, Spec};

/// Levels of the ICDF codecs (4-bit codes).
const LEVELS: usize = 16;
/// Bits of the ICDF codecs' codes.
const CODE_BITS: u32 = 4;
/// Highest degree accepted for the level polynomials: levels are evaluated in
/// f32 from monomials in j ≤ 15, which loses precision past this.
const MAX_LEVEL_DEGREE: usize = 7;
/// Highest degree accepted for positional polynomials.
const MAX_POSITIONAL_DEGREE: usize = 4096;

/// What the polynomial describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Levels fitted to the row's quantiles.
    Icdf,
    /// Levels fitted to the row's Lloyd-Max centroids.
    Mse,
    /// The row itself, as a function of the column.
    Positional,
}

/// The polynomial codecs.
#[derive(Clone, Debug)]
struct Poly {
    kind: Kind,
    degree: usize,
}

/// Builds this module's codec from a parsed spec.
pub(crate) fn from_spec(mut spec: Spec) -> Result<Box<dyn Codec>> {
    let kind = match spec.name.as_str() {
        "poly" => Kind::Icdf,
        "polymse" => Kind::Mse,
        _ => Kind::Positional,
    };
    let default = if kind == Kind::Positional { 8 } else { 3 };
    let degree: usize = spec.take("degree", default)?;
    spec.finish(&["degree"])?;
    let max = if kind == Kind::Positional {
        MAX_POSITIONAL_DEGREE
    } else {
        MAX_LEVEL_DEGREE
    };
    let min = if kind == Kind::Positional { 0 } else { 1 };
    if !(min..=max).contains(&degree) {
        return Err(spec_err(
            &spec,
            format!("degree={degree} is out of range; accepted {min}..={max}"),
        ));
    }
    Ok(Box::new(Poly { kind, degree }))
}

impl Poly {
    /// Coefficients stored per row for `cols` columns.
    fn coeffs_per_row(&self, cols: usize) -> usize {
        match self.kind {
            Kind::Positional if cols == 0 => 0,
            Kind::Positional => self.degree.min(cols - 1) + 1,
            _ => self.degree + 1,
        }
    }

    fn encode_levels(&self, m: Matrix<'_>, spec: String) -> Result<Encoded> {
        let nc = self.coeffs_per_row(m.cols);
        let per_row: Vec<(Vec<f32>, Vec<u8>)> = (0..m.rows)
            .into_par_iter()
            .map(|r| {
                let row = m.row(r);
                let mut sorted = row.to_vec();
                sorted.sort_unstable_by(f32::total_cmp);
                let targets = match self.kind {
                    Kind::Mse => spread(&lloyd_1d(&sorted, LEVELS)),
                    _ => quantile_targets(&sorted),
                };
                let coeffs: Vec<f32> = fit_levels(&targets, self.degree)
                    .iter()
                    .map(|&c| c as f32)
                    .collect();
                let levels = eval_levels(&coeffs);
                let codes = row.iter().map(|&w| nearest_any(&levels, w) as u8).collect();
                (coeffs, codes)
            })
            .collect();
        let mut coeffs = Vec::with_capacity(m.rows * nc);
        let mut codes = Vec::with_capacity(m.data.len());
        for (c, k) in per_row {
            coeffs.extend(c);
            codes.extend(k);
        }
        for (i, c) in coeffs.iter().enumerate() {
            if !c.is_finite() {
                return Err(crate::Error::Input {
                    codec: spec,
                    problem: format!("coefficient {i} overflows f32; rescale the weights"),
                });
            }
        }
        let parts = vec![
            f32_part("coeffs", vec![m.rows, nc], &coeffs),
            pack_codes("codes", &codes, m.rows, m.cols, CODE_BITS)?,
        ];
        Ok(Encoded {
            spec,
            rows: m.rows,
            cols: m.cols,
            parts,
        })
    }

    fn encode_positional(&self, m: Matrix<'_>, spec: String) -> Result<Encoded> {
        let nc = self.coeffs_per_row(m.cols);
        let basis = gram_basis(m.cols, nc);
        // coeffs = W · Qᵀ, Q the nc × cols orthonormal basis (f32 is ample
        // for coefficients stored in f16).
        let mut qt = vec![0f32; m.cols * nc];
        for (k, q) in basis.chunks(m.cols.max(1)).enumerate().take(nc) {
            for (c, &v) in q.iter().enumerate() {
                qt[c * nc + k] = v as f32;
            }
        }
        let coeffs = matmul_row_major(m.data, &qt, m.rows, m.cols, nc);
        let part = f16_part(&spec, "coeffs", vec![m.rows, nc], &coeffs)?;
        Ok(Encoded {
            spec,
            rows: m.rows,
            cols: m.cols,
            parts: vec![part],
        })
    }
}

impl Codec for Poly {
    fn spec(&self) -> String {
        let name = match self.kind {
            Kind::Icdf => "poly",
            Kind::Mse => "polymse",
            Kind::Positional => "positional",
        };
        format!("{name}:degree={}", self.degree)
    }

    fn encode(&self, m: Matrix<'_>) -> Result<Encoded> {
        let spec = self.spec();
        m.check_finite(&spec)?;
        match self.kind {
            Kind::Positional => self.encode_positional(m, spec),
            _ => self.encode_levels(m, spec),
        }
    }

    fn decode(&self, e: &Encoded) -> Result<Vec<f32>> {
        let n = check_encoded(e, &self.spec())?;
        let nc = self.coeffs_per_row(e.cols);
        if self.kind == Kind::Positional {
            let coeffs = f16_values(expect_part(e, "coeffs", PartDType::F16, &[e.rows, nc])?);
            let basis: Vec<f32> = gram_basis(e.cols, nc).iter().map(|&v| v as f32).collect();
            let out = matmul_row_major(&coeffs, &basis, e.rows, nc, e.cols);
            return Ok(out);
        }
        let coeffs = f32_values(expect_part(e, "coeffs", PartDType::F32, &[e.rows, nc])?);
        let codes = unpack_codes(e, "codes", e.rows, e.cols, CODE_BITS)?;
        let mut out = Vec::with_capacity(n);
        for r in 0..e.rows {
            let levels = eval_levels(&coeffs[r * nc..(r + 1) * nc]);
            out.extend(
                codes[r * e.cols..(r + 1) * e.cols]
                    .iter()
                    .map(|&c| levels[c as usize]),
            );
        }
        Ok(out)
    }

    fn bits_per_weight(&self, rows: usize, cols: usize) -> f64 {
        let n = rows * cols;
        if n == 0 {
            return 0.0;
        }
        let bits = match self.kind {
            Kind::Positional => rows * self.coeffs_per_row(cols) * 16,
            _ => rows * self.coeffs_per_row(cols) * 32 + rows * packed_words(cols, CODE_BITS) * 32,
        };
        bits as f64 / n as f64
    }
}

/// The 16 empirical quantiles of ascending `sorted` at p = (j+0.5)/16,
/// interpolating linearly between order statistics (order statistic i sits
/// at p = (i+0.5)/n). Zeros for an empty row.
fn quantile_targets(sorted: &[f32]) -> Vec<f64> {
    let n = sorted.len();
    (0..LEVELS)
        .map(|j| {
            if n == 0 {
                return 0.0;
            }
            let pos =
                ((j as f64 + 0.5) / LEVELS as f64 * n as f64 - 0.5).clamp(0.0, (n - 1) as f64);
            let i = pos.floor() as usize;
            let t = pos - i as f64;
            let hi = sorted[(i + 1).min(n - 1)];
            f64::from(sorted[i]) * (1.0 - t) + f64::from(hi) * t
        })
        .collect()
}

/// Spreads fewer than 16 ascending centroids evenly over the 16 level slots
/// (a row with few distinct values); zeros for an empty row.
fn spread(centroids: &[f32]) -> Vec<f64> {
    let c = centroids.len();
    (0..LEVELS)
        .map(|j| match c {
            0 => 0.0,
            _ => f64::from(centroids[(j * (c - 1) + (LEVELS - 1) / 2) / (LEVELS - 1)]),
        })
        .collect()
}

/// Least-squares monomial coefficients c0..cD in j of the polynomial through
/// `targets[j]`, j = 0..15, by Householder QR in f64 on the centred variable
/// t = (j − 7.5)/7.5, then expanded to monomials in j.
fn fit_levels(targets: &[f64], degree: usize) -> Vec<f64> {
    let ts: Vec<f64> = (0..targets.len()).map(|j| (j as f64 - 7.5) / 7.5).collect();
    let a = lstsq_poly(&ts, targets, degree);
    // p(j) = Σ a_k ((j − 7.5)/7.5)^k: expand (j/7.5 − 1)^k binomially.
    let mut c = vec![0f64; degree + 1];
    for (k, &ak) in a.iter().enumerate() {
        let mut binom = 1f64;
        for (i, ci) in c.iter_mut().enumerate().take(k + 1) {
            // term: binom(k, i) · (j/7.5)^i · (−1)^(k−i)
            let sign = if (k - i) % 2 == 0 { 1.0 } else { -1.0 };
            *ci += ak * binom * sign / 7.5f64.powi(i as i32);
            binom = binom * (k - i) as f64 / (i + 1) as f64;
        }
    }
    c
}

/// Least-squares coefficients of a degree-`degree` polynomial in `x` through
/// (xs, ys), by Householder QR of the Vandermonde matrix.
fn lstsq_poly(xs: &[f64], ys: &[f64], degree: usize) -> Vec<f64> {
    let (m, n) = (xs.len(), degree + 1);
    // Column-major Vandermonde matrix.
    let mut a: Vec<f64> = (0..n)
        .flat_map(|k| xs.iter().map(move |&x| x.powi(k as i32)))
        .collect();
    let mut b = ys.to_vec();
    for k in 0..n.min(m) {
        let col = &mut a[k * m..(k + 1) * m];
        let norm = col[k..].iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm == 0.0 {
            continue;
        }
        let alpha = if col[k] > 0.0 { -norm } else { norm };
        let mut v: Vec<f64> = col[k..].to_vec();
        v[0] -= alpha;
        let vv = v.iter().map(|x| x * x).sum::<f64>();
        if vv == 0.0 {
            continue;
        }
        let reflect = |y: &mut [f64]| {
            let d = v.iter().zip(y.iter()).map(|(a, b)| a * b).sum::<f64>() * 2.0 / vv;
            for (y, v) in y.iter_mut().zip(&v) {
                *y -= d * v;
            }
        };
        for j in k..n {
            reflect(&mut a[j * m + k..(j + 1) * m]);
        }
        reflect(&mut b[k..]);
    }
    // Back substitution on R (upper n×n); columns past m stay zero.
    let mut x = vec![0f64; n];
    for k in (0..n.min(m)).rev() {
        let r = a[k * m + k];
        let s = b[k] - (k + 1..n.min(m)).map(|j| a[j * m + k] * x[j]).sum::<f64>();
        x[k] = if r.abs() > 1e-300 { s / r } else { 0.0 };
    }
    x
}

/// The 16 levels of f32 coefficients by Horner's rule in f32, exactly as a
/// decoder kernel would evaluate them.
fn eval_levels(coeffs: &[f32]) -> [f32; LEVELS] {
    let mut out = [0f32; LEVELS];
    for (j, o) in out.iter_mut().enumerate() {
        let x = j as f32;
        *o = coeffs.iter().rev().fold(0f32, |acc, &c| acc.mul_add(x, c));
    }
    out
}

/// Index of the level nearest to `w` (levels in any order); ties go low.
fn nearest_any(levels: &[f32], w: f32) -> usize {
    let mut best = (f32::INFINITY, 0);
    for (j, &l) in levels.iter().enumerate() {
        let d = (w - l).abs();
        if d < best.0 {
            best = (d, j);
        }
    }
    best.1
}

/// The first `nc` orthonormal discrete Legendre (Gram) polynomials on the
/// grid x_c = (2c+1)/cols − 1, c = 0..cols, as `nc` rows of `cols` values.
///
/// In exact arithmetic they obey a three-term recurrence with closed-form
/// coefficients, but that forward recurrence loses orthogonality once the
/// degree passes about √cols; so they are built by Lanczos (Stieltjes) on the
/// grid with full reorthogonalisation, in f64: q_{k+1} ∝ x·q_k minus its
/// projections on q_0..q_k, twice. The result depends only on (cols, nc).
pub(crate) fn gram_basis(cols: usize, nc: usize) -> Vec<f64> {
    let mut q = vec![0f64; nc * cols];
    if nc == 0 || cols == 0 {
        return q;
    }
    let xs: Vec<f64> = (0..cols)
        .map(|c| (2 * c + 1) as f64 / cols as f64 - 1.0)
        .collect();
    let inv = 1.0 / (cols as f64).sqrt();
    q[..cols].fill(inv);
    for k in 1..nc {
        let (done, rest) = q.split_at_mut(k * cols);
        let v = &mut rest[..cols];
        for (v, (&x, &p)) in v.iter_mut().zip(xs.iter().zip(&done[(k - 1) * cols..])) {
            *v = x * p;
        }
        for _ in 0..2 {
            for i in 0..k {
                let p = &done[i * cols..(i + 1) * cols];
                let d = v.iter().zip(p).map(|(a, b)| a * b).sum::<f64>();
                for (v, p) in v.iter_mut().zip(p) {
                    *v -= d * p;
                }
            }
        }
        let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        for v in v.iter_mut() {
            *v /= norm;
        }
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gram_basis_is_orthonormal_at_high_degree() {
        for (cols, nc) in [(576, 129), (129, 129), (40, 33), (1, 1)] {
            let q = gram_basis(cols, nc);
            for a in 0..nc {
                for b in 0..nc {
                    let d: f64 = (0..cols).map(|c| q[a * cols + c] * q[b * cols + c]).sum();
                    let want = if a == b { 1.0 } else { 0.0 };
                    assert!((d - want).abs() < 1e-9, "cols={cols} <q{a},q{b}> = {d}");
                }
            }
        }
    }

    #[test]
    fn level_fit_recovers_a_cubic() {
        let c = [0.5, -0.25, 0.0625, -0.001];
        let ys: Vec<f64> = (0..16)
            .map(|j| c.iter().rev().fold(0.0, |a, &c| a * j as f64 + c))
            .collect();
        let got = fit_levels(&ys, 3);
        for (g, w) in got.iter().zip(c) {
            assert!((g - w).abs() < 1e-10, "{got:?}");
        }
    }
}
