//! Thresholds that hit a target sparsity, and index compaction.

use crate::error::check_finite;
use crate::{Error, Result};

/// The magnitude threshold τ that makes at least `target` of `values`
/// inactive under the rule *active iff |x| > τ*.
///
/// τ is the ⌊target·n⌋-th smallest magnitude, so ties at τ are dropped
/// together and the achieved sparsity can exceed the target only by ties.
/// `target = 0` gives τ = 0: only exact zeros are dropped, which is
/// lossless.
pub fn threshold_for_sparsity(values: &[f32], target: f64) -> Result<f32> {
    if !(0.0..=1.0).contains(&target) {
        return Err(Error::Invalid(format!(
            "target sparsity {target} is outside [0, 1]"
        )));
    }
    check_finite("activations", values)?;
    let k = (target * values.len() as f64).floor() as usize;
    if k == 0 {
        return Ok(0.0);
    }
    let mut mags: Vec<f32> = values.iter().map(|v| v.abs()).collect();
    let (_, kth, _) = mags.select_nth_unstable_by(k - 1, f32::total_cmp);
    Ok(*kth)
}

/// Indices `j` with `|x[j]| > tau`, in increasing order.
pub fn active_indices(x: &[f32], tau: f32) -> Vec<u32> {
    x.iter()
        .enumerate()
        .filter(|(_, v)| v.abs() > tau)
        .map(|(j, _)| j as u32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_target_on_distinct_values() {
        let x: Vec<f32> = (0..1000)
            .map(|i| if i % 2 == 0 { i as f32 } else { -(i as f32) })
            .collect();
        for target in [0.0, 0.25, 0.5, 0.7, 0.9, 1.0] {
            let tau = threshold_for_sparsity(&x, target).unwrap();
            let active = active_indices(&x, tau).len();
            let dropped = x.len() - active;
            // Magnitude 0 appears once, so target 0 still drops that exact zero.
            let want = ((target * 1000.0).floor() as usize).max(1);
            assert_eq!(dropped, want, "target {target}");
        }
    }

    #[test]
    fn ties_and_bad_input() {
        let x = [0.0, 0.0, 1.0, 1.0, 1.0, 2.0];
        let tau = threshold_for_sparsity(&x, 0.5).unwrap();
        assert_eq!(tau, 1.0);
        assert_eq!(active_indices(&x, tau), [5]);
        assert!(threshold_for_sparsity(&x, 1.5).is_err());
        assert!(matches!(
            threshold_for_sparsity(&[1.0, f32::NAN], 0.5),
            Err(Error::NonFinite { index: 1, .. })
        ));
        assert_eq!(threshold_for_sparsity(&[], 0.5).unwrap(), 0.0);
    }
}
