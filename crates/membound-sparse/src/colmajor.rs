//! Scalar reference mat-vecs: dense row-major, and column-major sparse.
//!
//! The sparse form stores W column-major (equivalently Wᵀ row-major), so the
//! weights an active input multiplies are one contiguous column, and
//! computes y = Σ_{j active} x_j · W[:, j]. These are the plain references
//! the GPU kernels are tested against: clarity over speed, f64 accumulation.

use half::f16;

use crate::Result;
use crate::error::check_len;

/// Dense y = W·x with W row-major `[rows, cols]`.
pub fn gemv(w: &[f32], rows: usize, cols: usize, x: &[f32]) -> Result<Vec<f32>> {
    check_len("weights", rows * cols, w.len())?;
    check_len("input", cols, x.len())?;
    Ok((0..rows)
        .map(|r| {
            let row = &w[r * cols..(r + 1) * cols];
            row.iter()
                .zip(x)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum::<f64>() as f32
        })
        .collect())
}

/// y = Σ_{j ∈ active} x_j · W[:, j] with `w_cm` column-major (`cols` columns
/// of `rows` values each).
pub fn sparse_gemv_f32(
    w_cm: &[f32],
    rows: usize,
    cols: usize,
    x: &[f32],
    active: &[u32],
) -> Result<Vec<f32>> {
    check_len("weights", rows * cols, w_cm.len())?;
    check_len("input", cols, x.len())?;
    sparse_accumulate(rows, cols, x, active, |j, acc| {
        for (a, &w) in acc.iter_mut().zip(&w_cm[j * rows..(j + 1) * rows]) {
            *a += f64::from(w) * f64::from(x[j]);
        }
    })
}

fn sparse_accumulate(
    rows: usize,
    cols: usize,
    x: &[f32],
    active: &[u32],
    mut add_column: impl FnMut(usize, &mut [f64]),
) -> Result<Vec<f32>> {
    check_len("input", cols, x.len())?;
    if let Some(&j) = active.iter().find(|&&j| j as usize >= cols) {
        return Err(crate::Error::Invalid(format!(
            "active index {j} is out of range for {cols} columns"
        )));
    }
    let mut acc = vec![0f64; rows];
    for &j in active {
        add_column(j as usize, &mut acc);
    }
    Ok(acc.into_iter().map(|v| v as f32).collect())
}

/// f16 weights stored column-major, for the sparse f16 mat-vec.
#[derive(Clone, Debug, PartialEq)]
pub struct ColMajorF16 {
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    /// `cols` columns of `rows` values.
    pub data: Vec<f16>,
}

impl ColMajorF16 {
    /// Transposes a row-major f32 matrix into column-major f16.
    pub fn from_row_major(w: &[f32], rows: usize, cols: usize) -> Result<Self> {
        check_len("weights", rows * cols, w.len())?;
        let mut data = vec![f16::ZERO; rows * cols];
        for r in 0..rows {
            for c in 0..cols {
                data[c * rows + r] = f16::from_f32(w[r * cols + c]);
            }
        }
        Ok(Self { rows, cols, data })
    }

    /// Column `j`.
    pub fn column(&self, j: usize) -> &[f16] {
        &self.data[j * self.rows..(j + 1) * self.rows]
    }

    /// y = Σ_{j ∈ active} x_j · W[:, j].
    pub fn sparse_gemv(&self, x: &[f32], active: &[u32]) -> Result<Vec<f32>> {
        sparse_accumulate(self.rows, self.cols, x, active, |j, acc| {
            for (a, w) in acc.iter_mut().zip(self.column(j)) {
                *a += f64::from(w.to_f32()) * f64::from(x[j]);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{active_indices, threshold_for_sparsity};

    fn lcg(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        let mut t = vec![0.0; w.len()];
        for r in 0..rows {
            for c in 0..cols {
                t[c * rows + r] = w[r * cols + c];
            }
        }
        t
    }

    #[test]
    fn sparse_equals_dense_with_masked_input() {
        for (rows, cols) in [(1, 1), (7, 13), (64, 33), (1, 100), (100, 1)] {
            let w = lcg(rows * cols, 1);
            let x = lcg(cols, 2);
            for target in [0.0, 0.5, 0.99, 1.0] {
                let tau = threshold_for_sparsity(&x, target).unwrap();
                let active = active_indices(&x, tau);
                let masked: Vec<f32> = x
                    .iter()
                    .map(|&v| if v.abs() > tau { v } else { 0.0 })
                    .collect();
                let dense = gemv(&w, rows, cols, &masked).unwrap();
                let sparse =
                    sparse_gemv_f32(&transpose(&w, rows, cols), rows, cols, &x, &active).unwrap();
                for (a, b) in dense.iter().zip(&sparse) {
                    assert!(
                        (a - b).abs() <= 1e-6 * (1.0 + a.abs()),
                        "{rows}x{cols} {target}: {a} vs {b}"
                    );
                }
                let h = ColMajorF16::from_row_major(&w, rows, cols).unwrap();
                let wh: Vec<f32> = w.iter().map(|&v| f16::from_f32(v).to_f32()).collect();
                let dense_h = gemv(&wh, rows, cols, &masked).unwrap();
                for (a, b) in dense_h.iter().zip(&h.sparse_gemv(&x, &active).unwrap()) {
                    assert!((a - b).abs() <= 1e-6 * (1.0 + a.abs()));
                }
            }
        }
    }

    #[test]
    fn shape_errors() {
        assert!(gemv(&[1.0; 6], 2, 3, &[1.0; 2]).is_err());
        assert!(sparse_gemv_f32(&[1.0; 6], 2, 3, &[1.0; 3], &[3]).is_err());
        assert!(ColMajorF16::from_row_major(&[1.0; 5], 2, 3).is_err());
    }
}
