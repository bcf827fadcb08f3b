//! DCT top-K per row.
//!
//! `dct:k=K` takes each row's orthonormal DCT-II, keeps the K' = min(K, cols)
//! coefficients of largest magnitude, and decodes by the inverse transform
//! (an orthonormal DCT-III) with the others zero.
//!
//! Stored parts (cols ≤ 65536, so an index fits u16):
//! - `index`: u16 `[rows, K']`, the kept frequencies of each row, ascending;
//! - `value`: f16 `[rows, K']`, their orthonormal DCT-II coefficients.
//!
//! Bits per weight: `32·K' / cols`.
//!
//! Transforms are rustdct's (unnormalised, O(n log n) for any length),
//! scaled to the orthonormal convention here; a naive O(n²) reference in the
//! tests checks them.

use std::sync::Arc;

use half::f16;
use rayon::prelude::*;
use rustdct::{DctPlanner, TransformType2And3};

use crate::kmeans::{
    check_encoded, expect_part, f16_part, f16_values, spec_err, u16_part, u16_values,
};
use crate::{Codec, Encoded, Error, Matrix, PartDType, Result, Spec};

/// Longest row: indices are stored as u16.
const MAX_COLS: usize = 1 << 16;

/// DCT top-K codec.
#[derive(Clone, Debug)]
struct Dct {
    k: usize,
}

/// Builds this module's codec from a parsed spec.
pub(crate) fn from_spec(mut spec: Spec) -> Result<Box<dyn Codec>> {
    let k: usize = spec.take("k", 100)?;
    spec.finish(&["k"])?;
    if k == 0 {
        return Err(spec_err(&spec, "k=0; k must be at least 1".into()));
    }
    Ok(Box::new(Dct { k }))
}

/// Forward (DCT-II) and inverse (DCT-III) plans for one length.
struct Plans {
    transform: Arc<dyn TransformType2And3<f32>>,
    len: usize,
}

impl Plans {
    fn new(len: usize) -> Self {
        Self {
            transform: DctPlanner::new().plan_dct2(len),
            len,
        }
    }

    /// Orthonormal DCT-II of `buf` in place.
    fn forward(&self, buf: &mut [f32], scratch: &mut [f32]) {
        self.transform.process_dct2_with_scratch(buf, scratch);
        let n = self.len as f32;
        let (s0, s) = ((1.0 / n).sqrt(), (2.0 / n).sqrt());
        for (i, v) in buf.iter_mut().enumerate() {
            *v *= if i == 0 { s0 } else { s };
        }
    }

    /// Inverse of [`Plans::forward`] in place (orthonormal DCT-III).
    fn inverse(&self, buf: &mut [f32], scratch: &mut [f32]) {
        // rustdct's DCT-III is x0/2 + Σ xk cos(...): scale xk by √(2/n), and
        // x0 by 2·√(1/n) to undo the half.
        let n = self.len as f32;
        let (s0, s) = (2.0 * (1.0 / n).sqrt(), (2.0 / n).sqrt());
        for (i, v) in buf.iter_mut().enumerate() {
            *v *= if i == 0 { s0 } else { s };
        }
        self.transform.process_dct3_with_scratch(buf, scratch);
    }

    fn scratch(&self) -> Vec<f32> {
        vec![0.0; self.transform.get_scratch_len()]
    }
}

impl Codec for Dct {
    fn spec(&self) -> String {
        format!("dct:k={}", self.k)
    }

    fn encode(&self, m: Matrix<'_>) -> Result<Encoded> {
        let spec = self.spec();
        m.check_finite(&spec)?;
        if m.cols > MAX_COLS {
            return Err(Error::Input {
                codec: spec,
                problem: format!("{} columns; indices are u16, so at most {MAX_COLS}", m.cols),
            });
        }
        let k = self.k.min(m.cols);
        let (mut index, mut value) = (
            Vec::with_capacity(m.rows * k),
            Vec::with_capacity(m.rows * k),
        );
        if k > 0 {
            let plans = Plans::new(m.cols);
            let kept: Vec<(Vec<u16>, Vec<f32>)> = (0..m.rows)
                .into_par_iter()
                .map_init(
                    || plans.scratch(),
                    |scratch, r| {
                        let mut buf = m.row(r).to_vec();
                        plans.forward(&mut buf, scratch);
                        top_k(&buf, k)
                    },
                )
                .collect();
            for (i, v) in kept {
                index.extend(i);
                value.extend(v);
            }
        }
        let parts = vec![
            u16_part("index", vec![m.rows, k], &index),
            f16_part(&spec, "value", vec![m.rows, k], &value)?,
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
        let bad = |problem: String| Error::Encoded {
            codec: e.spec.clone(),
            part: "index".into(),
            problem,
        };
        if e.cols > MAX_COLS {
            return Err(bad(format!("{} columns; at most {MAX_COLS}", e.cols)));
        }
        let k = self.k.min(e.cols);
        let index = u16_values(expect_part(e, "index", PartDType::U16, &[e.rows, k])?);
        let value = f16_values(expect_part(e, "value", PartDType::F16, &[e.rows, k])?);
        let mut out = vec![0f32; n];
        if k == 0 {
            return Ok(out);
        }
        for (r, idx) in index.chunks(k).enumerate() {
            if idx.windows(2).any(|w| w[0] >= w[1])
                || idx.last().is_some_and(|&i| usize::from(i) >= e.cols)
            {
                return Err(bad(format!(
                    "row {r}: indices must be ascending and below {}",
                    e.cols
                )));
            }
        }
        let plans = Plans::new(e.cols);
        out.par_chunks_mut(e.cols).enumerate().for_each_init(
            || plans.scratch(),
            |scratch, (r, row)| {
                for (&i, &v) in index[r * k..(r + 1) * k]
                    .iter()
                    .zip(&value[r * k..(r + 1) * k])
                {
                    row[usize::from(i)] = v;
                }
                plans.inverse(row, scratch);
            },
        );
        Ok(out)
    }

    fn bits_per_weight(&self, rows: usize, cols: usize) -> f64 {
        let n = rows * cols;
        if n == 0 {
            return 0.0;
        }
        (32 * rows * self.k.min(cols)) as f64 / n as f64
    }
}

/// The `k` coefficients of largest magnitude, as ascending indices and their
/// values. Ties in magnitude go to the lower frequency, so the choice is
/// deterministic. Magnitudes are compared after f16 rounding, the values
/// actually stored.
fn top_k(coeffs: &[f32], k: usize) -> (Vec<u16>, Vec<f32>) {
    let mag = |i: usize| f16::from_f32(coeffs[i]).to_f32().abs();
    let mut order: Vec<usize> = (0..coeffs.len()).collect();
    if k < order.len() {
        order.select_nth_unstable_by(k - 1, |&a, &b| mag(b).total_cmp(&mag(a)).then(a.cmp(&b)));
        order.truncate(k);
    }
    order.sort_unstable();
    let values = order.iter().map(|&i| coeffs[i]).collect();
    (order.into_iter().map(|i| i as u16).collect(), values)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Orthonormal DCT-II by its definition, O(n²).
    fn reference_dct2(x: &[f32]) -> Vec<f64> {
        let n = x.len() as f64;
        (0..x.len())
            .map(|k| {
                let s: f64 = x
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| {
                        f64::from(v)
                            * (std::f64::consts::PI * k as f64 * (2 * i + 1) as f64 / (2.0 * n))
                                .cos()
                    })
                    .sum();
                s * if k == 0 {
                    (1.0 / n).sqrt()
                } else {
                    (2.0 / n).sqrt()
                }
            })
            .collect()
    }

    #[test]
    fn fast_transform_matches_reference_and_inverts() {
        for len in [1, 2, 3, 7, 16, 100, 576] {
            let x: Vec<f32> = (0..len)
                .map(|i| ((i * 37 % 11) as f32 - 5.0) / 3.0)
                .collect();
            let plans = Plans::new(len);
            let mut scratch = plans.scratch();
            let mut buf = x.clone();
            plans.forward(&mut buf, &mut scratch);
            for (a, b) in buf.iter().zip(reference_dct2(&x)) {
                assert!((f64::from(*a) - b).abs() < 1e-4, "len {len}: {a} vs {b}");
            }
            plans.inverse(&mut buf, &mut scratch);
            for (a, b) in buf.iter().zip(&x) {
                assert!((a - b).abs() < 1e-4, "len {len}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn top_k_picks_largest_and_breaks_ties_low() {
        let (i, v) = top_k(&[0.1, -3.0, 2.0, 2.0, 0.5], 2);
        assert_eq!(i, vec![1, 2]);
        assert_eq!(v, vec![-3.0, 2.0]);
    }
}
