//! Kronecker-sum approximation by Van Loan-Pitsianis rearrangement.
//!
//! `kron:rank=R` approximates W (rows × cols) by Σᵢ Aᵢ ⊗ Bᵢ with Aᵢ m1 × n1
//! and Bᵢ m2 × n2, m1·m2 = rows, n1·n2 = cols. Van Loan & Pitsianis (1993):
//! rearranging W so that block (i1, j1) — the m2 × n2 block at rows
//! i1·m2.., columns j1·n2.. — becomes row i1·n1 + j1 of an (m1·n1) × (m2·n2)
//! matrix R(W) turns ‖W − Σ A⊗B‖_F into ‖R(W) − Σ vec(A)·vec(B)ᵀ‖_F, so the
//! best sum of R Kronecker products is the rank-R truncated SVD of R(W)
//! ([`crate::lowrank::truncated_svd`], method auto).
//!
//! Factor shapes: m1 is the largest divisor of rows with m1 ≤ √rows and
//! m2 = rows / m1 (so m1 ≤ m2, as square as the divisors allow); likewise n1,
//! n2 for cols. A prime dimension degenerates to 1 × it: for a prime × prime
//! matrix R(W) is a single row and the codec stores W itself in f16.
//! 1536 × 576 gives A 32 × 24 and B 48 × 24.
//!
//! Stored parts, with R' = min(R, m1·n1, m2·n2) and √σᵢ put on both sides:
//! - `a`: f16 `[R', m1, n1]`;
//! - `b`: f16 `[R', m2, n2]`.
//!
//! Bits per weight: `16·R'·(m1·n1 + m2·n2) / (rows·cols)`.

use faer::MatRef;

use crate::kmeans::{check_encoded, expect_part, f16_part, f16_values, spec_err};
use crate::lowrank::{Method, matmul_row_major, truncated_svd};
use crate::{Codec, Encoded, Error, Matrix, PartDType, Result, Spec};

/// Kronecker-sum codec.
#[derive(Clone, Debug)]
struct Kron {
    rank: usize,
}

/// Builds this module's codec from a parsed spec.
pub(crate) fn from_spec(mut spec: Spec) -> Result<Box<dyn Codec>> {
    let rank: usize = spec.take("rank", 8)?;
    spec.finish(&["rank"])?;
    if rank == 0 {
        return Err(spec_err(&spec, "rank=0; rank must be at least 1".into()));
    }
    Ok(Box::new(Kron { rank }))
}

/// The largest divisor d of `n` with d² ≤ n (1 for n ≤ 1).
pub(crate) fn balanced_divisor(n: usize) -> usize {
    let mut best = 1;
    let mut d = 1;
    while d * d <= n {
        if n % d == 0 {
            best = d;
        }
        d += 1;
    }
    best
}

/// Factor shapes (m1, n1, m2, n2) for a rows × cols matrix.
fn shapes(rows: usize, cols: usize) -> (usize, usize, usize, usize) {
    let (m1, n1) = (balanced_divisor(rows), balanced_divisor(cols));
    (
        m1,
        n1,
        rows.checked_div(m1).unwrap_or(0),
        cols.checked_div(n1).unwrap_or(0),
    )
}

impl Kron {
    fn effective_rank(&self, rows: usize, cols: usize) -> usize {
        let (m1, n1, m2, n2) = shapes(rows, cols);
        self.rank.min(m1 * n1).min(m2 * n2)
    }
}

impl Codec for Kron {
    fn spec(&self) -> String {
        format!("kron:rank={}", self.rank)
    }

    fn encode(&self, m: Matrix<'_>) -> Result<Encoded> {
        let spec = self.spec();
        m.check_finite(&spec)?;
        let (m1, n1, m2, n2) = shapes(m.rows, m.cols);
        let r = self.effective_rank(m.rows, m.cols);
        let (p, q) = (m1 * n1, m2 * n2);
        // R(W)[i1·n1 + j1, i2·n2 + j2] = W[i1·m2 + i2, j1·n2 + j2].
        let mut rearranged = vec![0f32; p * q];
        for (i, row) in (0..m.rows).map(|i| (i, m.row(i))) {
            let (i1, i2) = (i / m2, i % m2);
            for (j, &w) in row.iter().enumerate() {
                let (j1, j2) = (j / n2, j % n2);
                rearranged[(i1 * n1 + j1) * q + i2 * n2 + j2] = w;
            }
        }
        let t = truncated_svd(
            MatRef::from_row_major_slice(&rearranged, p, q),
            r,
            Method::Auto,
        )
        .map_err(|problem| Error::Input {
            codec: spec.clone(),
            problem,
        })?;
        let mut a = Vec::with_capacity(r * p);
        let mut b = Vec::with_capacity(r * q);
        for k in 0..r {
            let s = t.s[k].sqrt();
            a.extend((0..p).map(|i| t.u[(i, k)] * s));
            b.extend((0..q).map(|i| t.v[(i, k)] * s));
        }
        let parts = vec![
            f16_part(&spec, "a", vec![r, m1, n1], &a)?,
            f16_part(&spec, "b", vec![r, m2, n2], &b)?,
        ];
        Ok(Encoded {
            spec,
            rows: m.rows,
            cols: m.cols,
            parts,
        })
    }

    fn decode(&self, e: &Encoded) -> Result<Vec<f32>> {
        let n = check_encoded(e, &self.spec())?;
        let (m1, n1, m2, n2) = shapes(e.rows, e.cols);
        let r = self.effective_rank(e.rows, e.cols);
        let a = f16_values(expect_part(e, "a", PartDType::F16, &[r, m1, n1])?);
        let b = f16_values(expect_part(e, "b", PartDType::F16, &[r, m2, n2])?);
        let (p, q) = (m1 * n1, m2 * n2);
        // R = Aᵀ·B with a as r × p and b as r × q, then undo the rearrangement.
        let mut at = vec![0f32; p * r];
        for k in 0..r {
            for i in 0..p {
                at[i * r + k] = a[k * p + i];
            }
        }
        let rearranged = matmul_row_major(&at, &b, p, r, q);
        let mut out = vec![0f32; n];
        for i in 0..e.rows {
            let (i1, i2) = (i / m2, i % m2);
            for j in 0..e.cols {
                let (j1, j2) = (j / n2, j % n2);
                out[i * e.cols + j] = rearranged[(i1 * n1 + j1) * q + i2 * n2 + j2];
            }
        }
        Ok(out)
    }

    fn bits_per_weight(&self, rows: usize, cols: usize) -> f64 {
        let n = rows * cols;
        if n == 0 {
            return 0.0;
        }
        let (m1, n1, m2, n2) = shapes(rows, cols);
        (16 * self.effective_rank(rows, cols) * (m1 * n1 + m2 * n2)) as f64 / n as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn divisors_are_balanced() {
        assert_eq!(shapes(1536, 576), (32, 24, 48, 24));
        assert_eq!(shapes(49152, 576), (192, 24, 256, 24));
        assert_eq!(shapes(13, 7), (1, 1, 13, 7));
        assert_eq!(shapes(0, 5), (1, 1, 0, 5));
        assert_eq!(balanced_divisor(16), 4);
    }
}
