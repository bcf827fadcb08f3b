//! Streaming moments of a tensor: mean, standard deviation, excess kurtosis.

/// Running central moments up to the fourth, mergeable across chunks.
///
/// Uses the pairwise update of Pébay (2008), which stays accurate where the
/// naive sum of powers loses everything to cancellation.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Moments {
    n: f64,
    mean: f64,
    m2: f64,
    m3: f64,
    m4: f64,
    non_finite: u64,
}

impl Moments {
    /// The moments of `values`. Non-finite values are counted, not included.
    pub fn of(values: &[f32]) -> Self {
        // Chunks keep each partial sum short; merging is exact in the algebra.
        values.chunks(4096).fold(Self::default(), |acc, chunk| {
            let mut m = Self::default();
            for &v in chunk {
                m.push(f64::from(v));
            }
            acc.merge(&m)
        })
    }

    /// Adds one value.
    pub fn push(&mut self, x: f64) {
        if !x.is_finite() {
            self.non_finite += 1;
            return;
        }
        let n1 = self.n;
        self.n += 1.0;
        let n = self.n;
        let delta = x - self.mean;
        let dn = delta / n;
        let dn2 = dn * dn;
        let term1 = delta * dn * n1;
        self.mean += dn;
        self.m4 += term1 * dn2 * (n * n - 3.0 * n + 3.0) + 6.0 * dn2 * self.m2 - 4.0 * dn * self.m3;
        self.m3 += term1 * dn * (n - 2.0) - 3.0 * dn * self.m2;
        self.m2 += term1;
    }

    /// Combines the moments of two disjoint sets.
    pub fn merge(&self, o: &Self) -> Self {
        if self.n == 0.0 {
            return Self {
                non_finite: self.non_finite + o.non_finite,
                ..*o
            };
        }
        if o.n == 0.0 {
            return Self {
                non_finite: self.non_finite + o.non_finite,
                ..*self
            };
        }
        let (na, nb) = (self.n, o.n);
        let n = na + nb;
        let d = o.mean - self.mean;
        let d2 = d * d;
        let d3 = d2 * d;
        let d4 = d2 * d2;
        let m2 = self.m2 + o.m2 + d2 * na * nb / n;
        let m3 = self.m3
            + o.m3
            + d3 * na * nb * (na - nb) / (n * n)
            + 3.0 * d * (na * o.m2 - nb * self.m2) / n;
        let m4 = self.m4
            + o.m4
            + d4 * na * nb * (na * na - na * nb + nb * nb) / (n * n * n)
            + 6.0 * d2 * (na * na * o.m2 + nb * nb * self.m2) / (n * n)
            + 4.0 * d * (na * o.m3 - nb * self.m3) / n;
        Self {
            n,
            mean: self.mean + d * nb / n,
            m2,
            m3,
            m4,
            non_finite: self.non_finite + o.non_finite,
        }
    }

    /// Finite values seen.
    pub fn count(&self) -> u64 {
        self.n as u64
    }

    /// NaN and infinite values seen (and left out).
    pub fn non_finite(&self) -> u64 {
        self.non_finite
    }

    /// The mean.
    pub fn mean(&self) -> f64 {
        self.mean
    }

    /// The population standard deviation.
    pub fn std(&self) -> f64 {
        if self.n == 0.0 {
            0.0
        } else {
            (self.m2 / self.n).sqrt()
        }
    }

    /// Excess kurtosis, `m4 / m2² − 3` (0 for a Gaussian); NaN when the
    /// variance is zero.
    pub fn excess_kurtosis(&self) -> f64 {
        if self.m2 == 0.0 {
            f64::NAN
        } else {
            self.n * self.m4 / (self.m2 * self.m2) - 3.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(v: &[f64]) -> (f64, f64, f64) {
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let m2 = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        let m4 = v.iter().map(|x| (x - mean).powi(4)).sum::<f64>() / n;
        (mean, m2.sqrt(), m4 / (m2 * m2) - 3.0)
    }

    #[test]
    fn matches_two_pass_formula() {
        // A skewed, heavy-tailed deterministic sequence that spans chunks.
        let v: Vec<f32> = (0..10_000)
            .map(|i| ((i as f32 * 0.37).sin()).powi(3) * 5.0 + 100.0)
            .collect();
        let m = Moments::of(&v);
        let (mean, std, kurt) = naive(&v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>());
        assert!((m.mean() - mean).abs() < 1e-9);
        assert!((m.std() - std).abs() < 1e-9);
        assert!(
            (m.excess_kurtosis() - kurt).abs() < 1e-6,
            "{} vs {kurt}",
            m.excess_kurtosis()
        );
    }

    #[test]
    fn known_distributions() {
        // Two-point distribution ±1: excess kurtosis is exactly −2.
        let v: Vec<f32> = (0..1000)
            .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        assert!((Moments::of(&v).excess_kurtosis() + 2.0).abs() < 1e-12);
        // Uniform: −1.2 in the limit.
        let v: Vec<f32> = (0..100_000).map(|i| i as f32 / 100_000.0).collect();
        assert!((Moments::of(&v).excess_kurtosis() + 1.2).abs() < 1e-3);
    }

    #[test]
    fn non_finite_values_are_counted_apart() {
        let m = Moments::of(&[1.0, f32::NAN, 3.0, f32::INFINITY]);
        assert_eq!((m.count(), m.non_finite()), (2, 2));
        assert_eq!(m.mean(), 2.0);
    }
}
