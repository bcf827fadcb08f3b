//! Sampling the next token from logits: greedy, temperature, top-k, top-p.
//!
//! [`Sampler::sample`] turns one vector of logits into one token id:
//!
//! 1. **Greedy** (`temperature == 0`): the arg-max ([`crate::model::argmax`];
//!    the lowest id wins ties). No random number is drawn.
//! 2. **Top-k** (`top_k > 0`): only the `top_k` largest logits stay
//!    candidates (ties at the cut broken towards the lower id). Found with a
//!    linear-time selection, so a 128k vocabulary is never fully sorted.
//! 3. **Temperature softmax**: `p_i ∝ exp((l_i − max) / temperature)` over
//!    the candidates, with the maximum subtracted first and the sum
//!    accumulated in `f64`. Logits of `−∞` are allowed and get probability 0.
//! 4. **Top-p** (`top_p < 1`): candidates sorted by probability (descending,
//!    then by id) keep the shortest prefix whose cumulative probability
//!    reaches `top_p`; that prefix always holds at least one token.
//! 5. The survivors are renormalized and one uniform number in `[0, 1)` from
//!    the sampler's own ChaCha8 generator, seeded with
//!    [`SamplingParams::seed`], picks the token by inverse CDF.
//!
//! Equal parameters (seed included) and equal logits give equal token
//! sequences on every platform. Logits that are NaN or `+∞`, or all `−∞`,
//! are an error, as is an empty vector.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{Error, Result};

/// How to choose the next token from logits.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct SamplingParams {
    /// Softmax temperature; 0 means greedy (arg-max). Must be finite and
    /// not negative.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 turns the filter off.
    pub top_k: usize,
    /// Nucleus sampling: keep the smallest set of most likely tokens whose
    /// probability sums to at least `top_p`; must lie in `(0, 1]`, and 1
    /// turns the filter off.
    pub top_p: f32,
    /// Seed of the sampler's random number generator.
    pub seed: u64,
}

impl Default for SamplingParams {
    /// Greedy decoding, as [`SamplingParams::greedy`].
    fn default() -> Self {
        Self::greedy()
    }
}

impl SamplingParams {
    /// Greedy decoding: temperature 0, no top-k, no top-p, seed 0.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }

    /// Whether these parameters pick the arg-max (temperature 0).
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Checks the parameters: temperature finite and not negative, `top_p`
    /// in `(0, 1]`.
    pub fn validate(&self) -> Result<()> {
        let t = self.temperature;
        if t.is_nan() {
            return Err(Error::Request("temperature is NaN".into()));
        }
        if t < 0.0 {
            return Err(Error::Request(format!(
                "temperature {t} is negative (use 0 for greedy decoding)"
            )));
        }
        if t.is_infinite() {
            return Err(Error::Request("temperature is infinite".into()));
        }
        let p = self.top_p;
        if p.is_nan() || p <= 0.0 || p > 1.0 {
            return Err(Error::Request(format!(
                "top_p {p} is outside (0, 1] (use 1 to turn it off)"
            )));
        }
        Ok(())
    }
}

/// Draws tokens from logits with fixed [`SamplingParams`] and its own seeded
/// random number generator (see the module documentation for the exact
/// procedure).
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
}

impl Sampler {
    /// A sampler for `p`, its generator seeded with `p.seed`; fails when `p`
    /// does not [validate](SamplingParams::validate).
    pub fn new(p: SamplingParams) -> Result<Self> {
        p.validate()?;
        Ok(Self {
            params: p,
            rng: ChaCha8Rng::seed_from_u64(p.seed),
        })
    }

    /// The parameters this sampler was made with.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Draws the next token from `logits`. Greedy parameters return the
    /// arg-max without touching the generator; otherwise exactly one uniform
    /// number is drawn per call.
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32> {
        check_logits(logits)?;
        if self.params.is_greedy() {
            return Ok(crate::model::argmax(logits));
        }
        // Without top-p the candidates need no order: inverse CDF works in
        // any fixed order, so skip the sort.
        let sorted = self.params.top_p < 1.0;
        let cands = self.filter(logits, sorted);
        let u: f64 = self.rng.random();
        Ok(pick(&cands, u))
    }

    /// The distribution [`sample`](Self::sample) draws from for `logits`:
    /// the surviving token ids with their renormalized probabilities, most
    /// likely first (ties by id). Greedy parameters give the arg-max alone
    /// with probability 1. Consumes no randomness.
    pub fn distribution(&self, logits: &[f32]) -> Result<Vec<(u32, f64)>> {
        check_logits(logits)?;
        if self.params.is_greedy() {
            return Ok(vec![(crate::model::argmax(logits), 1.0)]);
        }
        let mut cands = self.filter(logits, true);
        let total: f64 = cands.iter().map(|c| c.1).sum();
        for c in &mut cands {
            c.1 /= total;
        }
        Ok(cands)
    }

    /// Top-k, temperature softmax and top-p over checked logits: the
    /// surviving candidates with positive, unnormalized weights, most likely
    /// first when `sorted` (which top-p requires).
    fn filter(&self, logits: &[f32], sorted: bool) -> Vec<(u32, f64)> {
        let p = &self.params;
        let n = logits.len();
        // Descending logit, then ascending id: a total order, so the
        // selection and the sort are deterministic.
        let by_logit = |a: &u32, b: &u32| {
            logits[*b as usize]
                .total_cmp(&logits[*a as usize])
                .then(a.cmp(b))
        };
        let mut ids: Vec<u32> = if p.top_k > 0 && p.top_k < n {
            let mut all: Vec<u32> = (0..n as u32).collect();
            all.select_nth_unstable_by(p.top_k - 1, by_logit);
            all.truncate(p.top_k);
            all
        } else {
            (0..n as u32).collect()
        };
        if sorted {
            ids.sort_unstable_by(by_logit);
        }
        let max = ids
            .iter()
            .map(|&i| logits[i as usize])
            .fold(f32::NEG_INFINITY, f32::max) as f64;
        let t = p.temperature as f64;
        let mut cands: Vec<(u32, f64)> = ids
            .into_iter()
            .map(|i| (i, ((logits[i as usize] as f64 - max) / t).exp()))
            .filter(|c| c.1 > 0.0)
            .collect();
        // The maximum itself has weight exp(0) = 1, so `cands` is never empty.
        if p.top_p < 1.0 {
            // Sorting by logit is sorting by probability (exp is monotone);
            // equal probabilities keep the ascending-id order.
            let total: f64 = cands.iter().map(|c| c.1).sum();
            let target = p.top_p as f64 * total;
            let mut cum = 0.0;
            let mut keep = cands.len();
            for (j, c) in cands.iter().enumerate() {
                cum += c.1;
                if cum >= target {
                    keep = j + 1;
                    break;
                }
            }
            cands.truncate(keep.max(1));
        }
        cands
    }
}

/// Rejects logits no distribution can come from.
fn check_logits(logits: &[f32]) -> Result<()> {
    if logits.is_empty() {
        return Err(Error::Request("cannot sample from empty logits".into()));
    }
    if let Some(i) = logits.iter().position(|l| l.is_nan()) {
        return Err(Error::Request(format!("logit of token {i} is NaN")));
    }
    if let Some(i) = logits.iter().position(|l| *l == f32::INFINITY) {
        return Err(Error::Request(format!("logit of token {i} is +inf")));
    }
    if logits.iter().all(|l| *l == f32::NEG_INFINITY) {
        return Err(Error::Request("every logit is -inf".into()));
    }
    Ok(())
}

/// Inverse CDF: the first candidate whose cumulative weight exceeds
/// `u × total`, the last one if rounding leaves none.
fn pick(cands: &[(u32, f64)], u: f64) -> u32 {
    let total: f64 = cands.iter().map(|c| c.1).sum();
    let target = u * total;
    let mut cum = 0.0;
    for c in cands {
        cum += c.1;
        if target < cum {
            return c.0;
        }
    }
    cands.last().map_or(0, |c| c.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::argmax;

    fn params(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k,
            top_p,
            seed,
        }
    }

    /// Logits with a seeded pseudo-random spread, some ties.
    fn noisy_logits(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|_| (rng.random::<f32>() * 20.0 - 10.0).round() / 4.0)
            .collect()
    }

    #[test]
    fn greedy_is_argmax() {
        let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
        assert!(s.params().is_greedy());
        for seed in 0..20 {
            let l = noisy_logits(1000, seed);
            assert_eq!(s.sample(&l).unwrap(), argmax(&l));
        }
        // Ties go to the lowest id, as argmax does.
        assert_eq!(s.sample(&[1.0, 3.0, 3.0, -2.0]).unwrap(), 1);
    }

    #[test]
    fn top_k_one_is_argmax_at_any_temperature() {
        for (k, t) in [0.1f32, 0.7, 1.0, 2.5, 100.0].into_iter().enumerate() {
            let mut s = Sampler::new(params(t, 1, 1.0, k as u64)).unwrap();
            for seed in 0..20 {
                let l = noisy_logits(5000, seed + 100);
                assert_eq!(s.sample(&l).unwrap(), argmax(&l), "t={t}");
            }
        }
    }

    fn softmax(l: &[f64]) -> Vec<f64> {
        let m = l.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = l.iter().map(|x| (x - m).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|x| x / s).collect()
    }

    /// Pearson's chi-square statistic of observed counts against expected
    /// probabilities.
    fn chi_square(counts: &[u64], probs: &[f64]) -> f64 {
        let n: u64 = counts.iter().sum();
        counts
            .iter()
            .zip(probs)
            .map(|(&c, &p)| {
                let e = p * n as f64;
                (c as f64 - e).powi(2) / e
            })
            .sum()
    }

    /// Draws `n` tokens and counts them.
    fn histogram(s: &mut Sampler, logits: &[f32], n: usize) -> Vec<u64> {
        let mut counts = vec![0u64; logits.len()];
        for _ in 0..n {
            counts[s.sample(logits).unwrap() as usize] += 1;
        }
        counts
    }

    #[test]
    fn temperature_one_matches_softmax_frequencies() {
        let logits = [1.0f32, 2.0, 0.5, -1.0];
        let probs = softmax(&logits.map(f64::from));
        let mut s = Sampler::new(params(1.0, 0, 1.0, 42)).unwrap();
        let counts = histogram(&mut s, &logits, 200_000);
        // 3 degrees of freedom: P(chi2 > 16.27) = 0.001. The seed is fixed,
        // so the outcome is deterministic; the bound says the generator and
        // the inverse CDF are unbiased.
        let chi2 = chi_square(&counts, &probs);
        assert!(
            chi2 < 16.27,
            "chi2 {chi2}, counts {counts:?}, probs {probs:?}"
        );
        for (c, p) in counts.iter().zip(&probs) {
            let f = *c as f64 / 200_000.0;
            assert!((f - p).abs() < 0.005, "{f} vs {p}");
        }
    }

    #[test]
    fn temperature_and_top_k_reshape_the_distribution() {
        // Temperature 0.5 doubles the logits; top-k 3 drops the smallest.
        let logits = [1.0f32, 2.0, 0.5, -1.0];
        let probs = softmax(&[2.0, 4.0, 1.0]);
        let mut s = Sampler::new(params(0.5, 3, 1.0, 7)).unwrap();
        let counts = histogram(&mut s, &logits, 100_000);
        assert_eq!(counts[3], 0);
        // 2 degrees of freedom: P(chi2 > 13.82) = 0.001.
        let chi2 = chi_square(&counts[..3], &probs);
        assert!(chi2 < 13.82, "chi2 {chi2}, counts {counts:?}");
        let d = s.distribution(&logits).unwrap();
        assert_eq!(d.iter().map(|c| c.0).collect::<Vec<_>>(), [1, 0, 2]);
        for ((_, got), want) in d.iter().zip([probs[1], probs[0], probs[2]]) {
            assert!((got - want).abs() < 1e-12);
        }
    }

    #[test]
    fn top_p_keeps_the_expected_nucleus() {
        // Probabilities proportional to 8, 4, 2, 1, 1 (sum 16): 0.5, 0.25,
        // 0.125, 0.0625, 0.0625 for tokens 2, 0, 4, 1, 3.
        let logits = [4f32, 1.0, 8.0, 1.0, 2.0].map(f32::ln);
        let cases: [(f32, &[u32]); 6] = [
            (0.3, &[2]),       // 0.5 already reaches 0.3
            (0.49, &[2]),      // just under the first token's 0.5
            (0.6, &[2, 0]),    // 0.75
            (0.8, &[2, 0, 4]), // 0.875
            (0.9, &[2, 0, 4, 1]),
            (1.0, &[2, 0, 4, 1, 3]),
        ];
        for (top_p, want) in cases {
            let s = Sampler::new(params(1.0, 0, top_p, 0)).unwrap();
            let d = s.distribution(&logits).unwrap();
            let ids: Vec<u32> = d.iter().map(|c| c.0).collect();
            assert_eq!(ids, want, "top_p {top_p}");
            // Renormalized over the nucleus.
            let kept: f64 = [8.0, 4.0, 2.0, 1.0, 1.0][..want.len()].iter().sum();
            for ((_, p), w) in d.iter().zip([8.0, 4.0, 2.0, 1.0, 1.0]) {
                assert!((p - w / kept).abs() < 1e-6, "top_p {top_p}: {p}");
            }
            // Sampling never leaves the nucleus.
            let mut s = Sampler::new(params(1.0, 0, top_p, 3)).unwrap();
            for _ in 0..2000 {
                assert!(want.contains(&s.sample(&logits).unwrap()));
            }
        }
        // A tiny top_p still keeps one token.
        let s = Sampler::new(params(1.0, 0, 1e-9, 0)).unwrap();
        assert_eq!(s.distribution(&logits).unwrap(), [(2, 1.0)]);
    }

    #[test]
    fn top_k_then_top_p() {
        // Top-k 2 keeps tokens 2 and 0 (2/3, 1/3); top-p 0.6 then keeps 2.
        let logits = [4f32, 1.0, 8.0, 1.0, 2.0].map(f32::ln);
        let s = Sampler::new(params(1.0, 2, 0.6, 0)).unwrap();
        assert_eq!(s.distribution(&logits).unwrap(), [(2, 1.0)]);
        let s = Sampler::new(params(1.0, 2, 0.7, 0)).unwrap();
        let d = s.distribution(&logits).unwrap();
        assert_eq!(d.iter().map(|c| c.0).collect::<Vec<_>>(), [2, 0]);
    }

    #[test]
    fn equal_seeds_give_equal_sequences() {
        let logits = noisy_logits(128_000, 5);
        for p in [
            params(0.8, 0, 1.0, 11),
            params(1.2, 50, 0.9, 11),
            params(1.0, 0, 0.95, 11),
        ] {
            let (mut a, mut b) = (Sampler::new(p).unwrap(), Sampler::new(p).unwrap());
            let sa: Vec<u32> = (0..200).map(|_| a.sample(&logits).unwrap()).collect();
            let sb: Vec<u32> = (0..200).map(|_| b.sample(&logits).unwrap()).collect();
            assert_eq!(sa, sb);
            let mut c = Sampler::new(SamplingParams { seed: 12, ..p }).unwrap();
            let sc: Vec<u32> = (0..200).map(|_| c.sample(&logits).unwrap()).collect();
            assert_ne!(sa, sc, "a different seed should change the sequence");
        }
    }

    #[test]
    fn bad_params_and_logits_are_errors() {
        for bad in [
            params(-0.1, 0, 1.0, 0),
            params(f32::NAN, 0, 1.0, 0),
            params(f32::INFINITY, 0, 1.0, 0),
            params(1.0, 0, 0.0, 0),
            params(1.0, 0, -0.5, 0),
            params(1.0, 0, 1.01, 0),
            params(1.0, 0, f32::NAN, 0),
        ] {
            let e = Sampler::new(bad).unwrap_err();
            assert!(matches!(e, Error::Request(_)), "{bad:?}: {e}");
            assert!(bad.validate().is_err());
        }
        assert!(SamplingParams::greedy().validate().is_ok());
        assert_eq!(SamplingParams::default(), SamplingParams::greedy());
        for p in [SamplingParams::greedy(), params(1.0, 3, 0.9, 0)] {
            let mut s = Sampler::new(p).unwrap();
            assert!(s.sample(&[]).is_err());
            assert!(s.sample(&[0.0, f32::NAN, 1.0]).is_err());
            assert!(s.sample(&[0.0, f32::INFINITY]).is_err());
            assert!(s.sample(&[f32::NEG_INFINITY; 3]).is_err());
            assert!(s.distribution(&[f32::NAN]).is_err());
        }
    }

    #[test]
    fn masked_logits_are_never_drawn() {
        let logits = [f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY, 0.0];
        let mut s = Sampler::new(params(1.0, 0, 1.0, 1)).unwrap();
        let counts = histogram(&mut s, &logits, 10_000);
        assert_eq!((counts[0], counts[2]), (0, 0));
        assert!(counts[1] > 4500 && counts[3] > 4500, "{counts:?}");
        // Tiny temperatures do not overflow: the maximum dominates.
        let mut s = Sampler::new(params(1e-30, 0, 1.0, 1)).unwrap();
        assert_eq!(s.sample(&[1.0, 2.0, 1.5]).unwrap(), 1);
    }
}
