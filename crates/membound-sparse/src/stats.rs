//! Streaming statistics of activation vectors.

use serde::Serialize;

/// Bins of the log-magnitude histogram: log10|x| from −8 to +4 in steps of 0.25.
const LOG_MIN: f32 = -8.0;
const LOG_MAX: f32 = 4.0;
const BINS_PER_DECADE: f32 = 4.0;

/// Streaming sparsity statistics of one activation site (a layer's
/// projection input), over every vector pushed. Nothing but counters is
/// kept, so recording many tokens costs no memory.
#[derive(Clone, Debug, Serialize)]
pub struct SparsityStats {
    /// Values seen.
    pub count: u64,
    /// Values exactly ±0.
    pub exact_zeros: u64,
    /// Absolute thresholds τ, ascending.
    pub abs_thresholds: Vec<f32>,
    /// Values with |x| ≤ τ, per absolute threshold.
    pub below_abs: Vec<u64>,
    /// Relative thresholds r, ascending: |x| ≤ r · max|x| of the same vector.
    pub rel_thresholds: Vec<f32>,
    /// Values below each relative threshold.
    pub below_rel: Vec<u64>,
    /// Histogram of log10|x| (exact zeros excluded), from −8 to +4 in quarter decades;
    /// the first and last bins also take everything beyond.
    pub log10_hist: Vec<u64>,
    /// Largest magnitude seen.
    pub max_abs: f32,
    /// NaN or infinite values seen (and otherwise ignored).
    pub non_finite: u64,
}

impl SparsityStats {
    /// Statistics at the given absolute and relative thresholds.
    pub fn new(mut abs_thresholds: Vec<f32>, mut rel_thresholds: Vec<f32>) -> Self {
        abs_thresholds.sort_by(f32::total_cmp);
        rel_thresholds.sort_by(f32::total_cmp);
        let bins = ((LOG_MAX - LOG_MIN) * BINS_PER_DECADE) as usize;
        Self {
            count: 0,
            exact_zeros: 0,
            below_abs: vec![0; abs_thresholds.len()],
            abs_thresholds,
            below_rel: vec![0; rel_thresholds.len()],
            rel_thresholds,
            log10_hist: vec![0; bins],
            max_abs: 0.0,
            non_finite: 0,
        }
    }

    /// Adds one activation vector.
    pub fn push(&mut self, x: &[f32]) {
        let vmax = x
            .iter()
            .filter(|v| v.is_finite())
            .fold(0f32, |m, v| m.max(v.abs()));
        self.max_abs = self.max_abs.max(vmax);
        let bins = self.log10_hist.len();
        for &v in x {
            if !v.is_finite() {
                self.non_finite += 1;
                continue;
            }
            self.count += 1;
            let a = v.abs();
            if a == 0.0 {
                self.exact_zeros += 1;
            } else {
                let b = ((a.log10() - LOG_MIN) * BINS_PER_DECADE).floor();
                self.log10_hist[(b.max(0.0) as usize).min(bins - 1)] += 1;
            }
            for (t, c) in self.abs_thresholds.iter().zip(&mut self.below_abs) {
                *c += u64::from(a <= *t);
            }
            for (r, c) in self.rel_thresholds.iter().zip(&mut self.below_rel) {
                *c += u64::from(a <= r * vmax);
            }
        }
    }

    /// Share of exact zeros.
    pub fn zero_share(&self) -> f64 {
        self.share(self.exact_zeros)
    }

    /// Share at or below each absolute threshold.
    pub fn abs_shares(&self) -> Vec<f64> {
        self.below_abs.iter().map(|&c| self.share(c)).collect()
    }

    /// Share at or below each relative threshold.
    pub fn rel_shares(&self) -> Vec<f64> {
        self.below_rel.iter().map(|&c| self.share(c)).collect()
    }

    /// The lower edge of histogram bin `i`, as log10|x|.
    pub fn bin_edge(i: usize) -> f32 {
        LOG_MIN + i as f32 / BINS_PER_DECADE
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
    fn counts_zeros_and_thresholds() {
        let mut s = SparsityStats::new(vec![0.5, 0.01], vec![0.1]);
        s.push(&[0.0, -0.0, 0.005, 0.3, -1.0, 10.0]);
        s.push(&[f32::NAN, 0.0]);
        assert_eq!(s.count, 7);
        assert_eq!(s.exact_zeros, 3);
        assert_eq!(s.non_finite, 1);
        assert_eq!(s.abs_thresholds, [0.01, 0.5]);
        // ≤ 0.01: three zeros + 0.005 (+ the zero in the second vector counted once above).
        assert_eq!(s.below_abs, [4, 5]);
        // ≤ 0.1·max: first vector max 10 → ≤ 1.0: 0,0,0.005,0.3,-1 = 5; second: the zero.
        assert_eq!(s.below_rel, [6]);
        assert_eq!(s.log10_hist.iter().sum::<u64>(), 4);
        assert!((s.zero_share() - 3.0 / 7.0).abs() < 1e-12);
        assert_eq!(s.max_abs, 10.0);
    }
}
