//! Streaming activation statistics with thresholds relative to the mean
//! magnitude of each vector, and a fixed log-magnitude histogram that can be
//! merged across runs.

use serde::{Deserialize, Serialize};

/// Lower edge of the first histogram bin, as log10|x|.
pub const HIST_LOG10_MIN: f32 = -8.0;
/// Upper edge of the last histogram bin, as log10|x|.
pub const HIST_LOG10_MAX: f32 = 4.0;
/// Histogram bins per decade of magnitude.
pub const HIST_BINS_PER_DECADE: usize = 4;
/// Number of histogram bins: (max − min) decades × bins per decade.
pub const HIST_BINS: usize = ((HIST_LOG10_MAX - HIST_LOG10_MIN) as usize) * HIST_BINS_PER_DECADE;

/// Streaming statistics of the activation vectors of one site (one layer's
/// projection input). Only counters are kept, so memory does not grow with
/// the number of vectors.
///
/// - **absolute thresholds** τ count values with `|x| ≤ τ` (what a
///   thresholding rule *zero if |x| ≤ τ* drops);
/// - **relative thresholds** r count values with `|x| < r · mean|x|`, the
///   mean taken over the finite values of the same vector;
/// - the **histogram** bins log10|x| of the non-zero finite values in
///   [`HIST_BINS`] fixed bins of a quarter decade from 10⁻⁸ to 10⁴; values
///   beyond either end land in the first or last bin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActivationStats {
    /// Vectors pushed.
    pub vectors: u64,
    /// Finite values seen.
    pub count: u64,
    /// Values exactly ±0.
    pub exact_zeros: u64,
    /// Absolute thresholds τ, ascending.
    pub abs_thresholds: Vec<f32>,
    /// Values with `|x| ≤ τ`, per absolute threshold.
    pub below_abs: Vec<u64>,
    /// Relative thresholds r, ascending.
    pub rel_thresholds: Vec<f32>,
    /// Values with `|x| < r · mean|x|` of their vector, per relative threshold.
    pub below_rel: Vec<u64>,
    /// Counts per log10|x| bin (see the type's documentation).
    pub log10_hist: Vec<u64>,
    /// Sum of |x| over finite values (f64).
    pub sum_abs: f64,
    /// Largest finite magnitude seen.
    pub max_abs: f32,
    /// NaN or infinite values seen (otherwise ignored).
    pub non_finite: u64,
}

impl ActivationStats {
    /// Empty statistics at the given thresholds (sorted here; NaN
    /// thresholds are dropped).
    pub fn new(abs_thresholds: &[f32], rel_thresholds: &[f32]) -> Self {
        let clean = |t: &[f32]| {
            let mut v: Vec<f32> = t.iter().copied().filter(|x| !x.is_nan()).collect();
            v.sort_by(f32::total_cmp);
            v
        };
        let (abs, rel) = (clean(abs_thresholds), clean(rel_thresholds));
        Self {
            vectors: 0,
            count: 0,
            exact_zeros: 0,
            below_abs: vec![0; abs.len()],
            abs_thresholds: abs,
            below_rel: vec![0; rel.len()],
            rel_thresholds: rel,
            log10_hist: vec![0; HIST_BINS],
            sum_abs: 0.0,
            max_abs: 0.0,
            non_finite: 0,
        }
    }

    /// The histogram bin of a non-zero finite magnitude.
    pub fn bin_of(a: f32) -> usize {
        let b = ((a.log10() - HIST_LOG10_MIN) * HIST_BINS_PER_DECADE as f32).floor();
        (b.max(0.0) as usize).min(HIST_BINS - 1)
    }

    /// The lower edge of bin `i`, as log10|x|.
    pub fn bin_edge(i: usize) -> f32 {
        HIST_LOG10_MIN + i as f32 / HIST_BINS_PER_DECADE as f32
    }

    /// Adds one activation vector.
    pub fn push(&mut self, x: &[f32]) {
        let (mut n, mut sum) = (0u64, 0f64);
        for v in x.iter().filter(|v| v.is_finite()) {
            n += 1;
            sum += f64::from(v.abs());
        }
        let mean = if n == 0 { 0.0 } else { (sum / n as f64) as f32 };
        self.vectors += 1;
        self.count += n;
        self.sum_abs += sum;
        self.non_finite += x.len() as u64 - n;
        let rel: Vec<f32> = self.rel_thresholds.iter().map(|r| r * mean).collect();
        for a in x.iter().filter(|v| v.is_finite()).map(|v| v.abs()) {
            self.max_abs = self.max_abs.max(a);
            if a == 0.0 {
                self.exact_zeros += 1;
            } else {
                self.log10_hist[Self::bin_of(a)] += 1;
            }
            for (t, c) in self.abs_thresholds.iter().zip(&mut self.below_abs) {
                *c += u64::from(a <= *t);
            }
            for (t, c) in rel.iter().zip(&mut self.below_rel) {
                *c += u64::from(a < *t);
            }
        }
    }

    /// Adds `other`'s counts; fails when the thresholds differ.
    pub fn merge(&mut self, other: &ActivationStats) -> crate::Result<()> {
        if self.abs_thresholds != other.abs_thresholds
            || self.rel_thresholds != other.rel_thresholds
        {
            return Err(crate::Error::Invalid(
                "merging activation statistics with different thresholds".into(),
            ));
        }
        self.vectors += other.vectors;
        self.count += other.count;
        self.exact_zeros += other.exact_zeros;
        self.sum_abs += other.sum_abs;
        self.max_abs = self.max_abs.max(other.max_abs);
        self.non_finite += other.non_finite;
        for (a, b) in self.below_abs.iter_mut().zip(&other.below_abs) {
            *a += b;
        }
        for (a, b) in self.below_rel.iter_mut().zip(&other.below_rel) {
            *a += b;
        }
        for (a, b) in self.log10_hist.iter_mut().zip(&other.log10_hist) {
            *a += b;
        }
        Ok(())
    }

    /// Share of exact zeros among the finite values (0 when empty).
    pub fn zero_share(&self) -> f64 {
        self.share(self.exact_zeros)
    }

    /// Share at or below each absolute threshold.
    pub fn abs_shares(&self) -> Vec<f64> {
        self.below_abs.iter().map(|&c| self.share(c)).collect()
    }

    /// Share below each relative threshold.
    pub fn rel_shares(&self) -> Vec<f64> {
        self.below_rel.iter().map(|&c| self.share(c)).collect()
    }

    /// Mean |x| over every finite value seen.
    pub fn mean_abs(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum_abs / self.count as f64
        }
    }

    fn share(&self, c: u64) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            c as f64 / self.count as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_vector() {
        let mut s = ActivationStats::new(&[0.1, 1e-3], &[0.5]);
        // mean|x| = (0 + 0.0005 + 0.05 + 1 + 2 + 0.4495)/6 = 3.5/6.
        s.push(&[0.0, -0.0005, 0.05, -1.0, 2.0, 0.4495]);
        assert_eq!(s.count, 6);
        assert_eq!(s.exact_zeros, 1);
        assert_eq!(s.abs_thresholds, [1e-3, 0.1]);
        assert_eq!(s.below_abs, [2, 3]);
        // 0.5 · 3.5/6 ≈ 0.2917: 0, 0.0005, 0.05 below.
        assert_eq!(s.below_rel, [3]);
        assert_eq!(s.log10_hist.iter().sum::<u64>(), 5);
        assert_eq!(s.log10_hist[ActivationStats::bin_of(1.0)], 1);
        let mut t = s.clone();
        t.merge(&s).unwrap();
        assert_eq!(t.count, 12);
        assert!(t.merge(&ActivationStats::new(&[], &[])).is_err());
    }
}
