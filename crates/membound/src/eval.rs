//! Quality of a decoder against a reference: perplexity, KL divergence and
//! top-1 agreement over a text.
//!
//! [`evaluate`] runs a decoder (and optionally a reference decoder, for
//! example the f32 CPU model when the decoder under test is quantized) over a
//! token sequence and scores every prediction of the next token:
//!
//! - **NLL / perplexity**: the mean negative log-likelihood (nats) of the
//!   true next token under the model, and `exp` of it;
//! - **KL**: the mean of `KL(p_ref ‖ p_model) = Σ p_ref (log p_ref − log p_model)`
//!   in nats, the information lost by using the model instead of the
//!   reference;
//! - **top-1 agreement**: the share of positions where both pick the same
//!   arg-max token.
//!
//! All per-position math is done in `f64` from [`log_softmax`]; the pure
//! functions [`log_softmax`] and [`kl_divergence`] are public for reuse.
//!
//! [`EVAL_TEXT`] is the evaluation text shipped with membound
//! (`data/eval.txt`): about 2,900 words of original English prose written
//! for this project — a short story with some dialogue, an explanation of
//! how memory bandwidth limits computers, another of why the sky is blue, a
//! how-to passage on baking bread, a conversation between two engineers,
//! and a historical passage full of numbers and dates — so that quality is
//! measured across registers rather than in one style. It is licensed like
//! the rest of the project.

use crate::model::{Decoder, argmax};
use crate::{Error, Result};

/// The evaluation text shipped with membound (see the module documentation).
pub const EVAL_TEXT: &str = include_str!("../../../data/eval.txt");

/// What [`evaluate`] measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EvalReport {
    /// Predicted tokens scored (every token of a window except its first).
    pub tokens: usize,
    /// `exp(nll)`.
    pub perplexity: f64,
    /// Mean negative log-likelihood of the true next token, in nats.
    pub nll: f64,
    /// Mean `KL(p_ref ‖ p_model)` in nats; `None` without a reference.
    pub kl: Option<f64>,
    /// Share of positions where model and reference have the same arg-max;
    /// `None` without a reference.
    pub top1_agreement: Option<f64>,
    /// The reference's perplexity on the same tokens; `None` without a
    /// reference.
    pub ref_perplexity: Option<f64>,
    /// Windows run (each restarts at position 0).
    pub windows: usize,
}

/// How [`evaluate`] cuts and limits the text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EvalOptions {
    /// Tokens per window, context token included; at least 2 and at most
    /// the model's (and reference's) `max_seq_len`.
    pub window: usize,
    /// Stop after this many scored tokens; `None` scores the whole text.
    pub max_tokens: Option<usize>,
}

/// Scores `tokens` (first token is context only) with `model`, and against
/// `reference` when given.
///
/// Both decoders run in lockstep on the same positions: at each position the
/// log-softmax of both is computed in `f64`, the NLL of the true next token
/// under the model, `KL(p_ref ‖ p_model)`, and whether the arg-maxes agree.
/// Texts longer than `opts.window` are split into consecutive
/// non-overlapping windows, each restarting at position 0 (so the decoders'
/// KV caches restart), with the first token of each window as context only;
/// a last window of a single token scores nothing and is not run. With
/// `opts.max_tokens` the evaluation stops after that many scored tokens.
/// `progress` is called with (tokens done, total) after every scored token.
///
/// Errors: fewer than 2 tokens, a window below 2 or past either decoder's
/// context, `max_tokens` of 0, token ids outside the vocabulary, vocabularies
/// of model and reference that differ, and logits of the wrong length or
/// containing NaN; errors of the decoders pass through.
pub fn evaluate(
    model: &mut dyn Decoder,
    reference: Option<&mut dyn Decoder>,
    tokens: &[u32],
    opts: &EvalOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<EvalReport> {
    let mut reference = reference;
    let vocab = model.config().vocab_size;
    if tokens.len() < 2 {
        return Err(Error::Request(format!(
            "evaluation needs at least 2 tokens (one of context, one to predict), got {}",
            tokens.len()
        )));
    }
    if opts.window < 2 {
        return Err(Error::Request(format!(
            "evaluation window of {} tokens is too short (at least 2)",
            opts.window
        )));
    }
    if opts.max_tokens == Some(0) {
        return Err(Error::Request("max_tokens must be at least 1".into()));
    }
    let ctx = model.config().max_seq_len;
    if opts.window > ctx {
        return Err(Error::Request(format!(
            "evaluation window of {} tokens is longer than the model's context of {ctx}",
            opts.window
        )));
    }
    if let Some(r) = reference.as_deref() {
        let rc = r.config();
        if rc.vocab_size != vocab {
            return Err(Error::Request(format!(
                "model vocabulary ({vocab}) and reference vocabulary ({}) differ",
                rc.vocab_size
            )));
        }
        if opts.window > rc.max_seq_len {
            return Err(Error::Request(format!(
                "evaluation window of {} tokens is longer than the reference's context of {}",
                opts.window, rc.max_seq_len
            )));
        }
    }
    if let Some((i, t)) = tokens
        .iter()
        .enumerate()
        .find(|(_, t)| **t as usize >= vocab)
    {
        return Err(Error::Request(format!(
            "token {i} has id {t}, outside the vocabulary of {vocab}"
        )));
    }

    // Windows of at least 2 tokens score len − 1 each.
    let scorable: usize = tokens
        .chunks(opts.window)
        .map(|w| w.len().saturating_sub(1))
        .sum();
    let total = opts.max_tokens.map_or(scorable, |m| m.min(scorable));

    let (mut nll, mut ref_nll, mut kl, mut agree) = (0.0f64, 0.0f64, 0.0f64, 0usize);
    let (mut done, mut windows) = (0usize, 0usize);
    'windows: for w in tokens.chunks(opts.window) {
        if w.len() < 2 || done == total {
            break;
        }
        windows += 1;
        for (pos, pair) in w.windows(2).enumerate() {
            let (tok, next) = (pair[0], pair[1] as usize);
            let logits = model.forward(tok, pos)?;
            let lp = checked_log_softmax(&logits, vocab, "model", pos)?;
            nll -= lp[next];
            if let Some(r) = reference.as_deref_mut() {
                let ref_logits = r.forward(tok, pos)?;
                let rlp = checked_log_softmax(&ref_logits, vocab, "reference", pos)?;
                ref_nll -= rlp[next];
                kl += kl_from_log_probs(&rlp, &lp);
                agree += usize::from(argmax(&logits) == argmax(&ref_logits));
            }
            done += 1;
            progress(done, total);
            if done == total {
                break 'windows;
            }
        }
    }

    let n = done as f64;
    let mean_nll = nll / n;
    let has_ref = reference.is_some();
    Ok(EvalReport {
        tokens: done,
        perplexity: mean_nll.exp(),
        nll: mean_nll,
        kl: has_ref.then(|| kl / n),
        top1_agreement: has_ref.then(|| agree as f64 / n),
        ref_perplexity: has_ref.then(|| (ref_nll / n).exp()),
        windows,
    })
}

/// [`log_softmax`] of a decoder's output after checking its length and
/// values.
fn checked_log_softmax(logits: &[f32], vocab: usize, who: &str, pos: usize) -> Result<Vec<f64>> {
    if logits.len() != vocab {
        return Err(Error::Request(format!(
            "{who} returned {} logits at position {pos}, expected {vocab}",
            logits.len()
        )));
    }
    if logits.iter().any(|l| l.is_nan()) {
        return Err(Error::Request(format!(
            "{who} returned NaN logits at position {pos}"
        )));
    }
    Ok(log_softmax(logits))
}

/// Log-probabilities `l_i − log Σ_j exp(l_j)` in `f64`, with the maximum
/// subtracted before exponentiating. Logits of `−∞` give `−∞`. The result is
/// all NaN when the input holds a NaN, a `+∞`, or only `−∞`; empty input
/// gives an empty vector.
pub fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits
        .iter()
        .map(|&l| l as f64)
        .fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() || logits.iter().any(|l| l.is_nan()) {
        return vec![f64::NAN; logits.len()];
    }
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    let lse = max + sum.ln();
    logits.iter().map(|&l| l as f64 - lse).collect()
}

/// `KL(p_ref ‖ p) = Σ p_ref (log p_ref − log p)` in nats, where `p_ref` and
/// `p` are the softmaxes of `ref_logits` and `logits`. Tokens the reference
/// gives probability 0 contribute nothing; a token the reference allows and
/// the model rules out (`−∞`) makes it `+∞`. NaN when the lengths differ or
/// either softmax is undefined (see [`log_softmax`]).
pub fn kl_divergence(ref_logits: &[f32], logits: &[f32]) -> f64 {
    if ref_logits.len() != logits.len() {
        return f64::NAN;
    }
    kl_from_log_probs(&log_softmax(ref_logits), &log_softmax(logits))
}

/// KL from log-probabilities of equal length; rounding can make a tiny
/// negative sum, which is reported as 0.
fn kl_from_log_probs(ref_lp: &[f64], lp: &[f64]) -> f64 {
    let kl: f64 = ref_lp
        .iter()
        .zip(lp)
        .map(|(&r, &m)| {
            let p = r.exp();
            if p == 0.0 { 0.0 } else { p * (r - m) }
        })
        .sum();
    if kl < 0.0 { 0.0 } else { kl }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_matches_definition() {
        let l = [1.0f32, 2.0, 3.0];
        let z: f64 = l.iter().map(|&x| (x as f64).exp()).sum();
        for (got, x) in log_softmax(&l).iter().zip(l) {
            assert!((got - (x as f64 - z.ln())).abs() < 1e-12);
        }
        // Shift invariance and no overflow at huge logits.
        let big = log_softmax(&[1001.0, 1002.0, 1003.0]);
        for (a, b) in big.iter().zip(log_softmax(&l)) {
            assert!((a - b).abs() < 1e-12);
        }
        let masked = log_softmax(&[0.0, f32::NEG_INFINITY]);
        assert_eq!(masked, [0.0, f64::NEG_INFINITY]);
        assert!(log_softmax(&[]).is_empty());
        assert!(log_softmax(&[f32::NAN, 1.0]).iter().all(|v| v.is_nan()));
        assert!(
            log_softmax(&[f32::NEG_INFINITY; 2])
                .iter()
                .all(|v| v.is_nan())
        );
        assert!(
            log_softmax(&[f32::INFINITY, 0.0])
                .iter()
                .all(|v| v.is_nan())
        );
    }

    #[test]
    fn kl_edge_cases() {
        assert_eq!(kl_divergence(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]), 0.0);
        // A constant shift leaves the distribution unchanged.
        assert!(kl_divergence(&[1.0, 2.0, 3.0], &[11.0, 12.0, 13.0]) < 1e-12);
        assert!(kl_divergence(&[1.0, 2.0], &[1.0]).is_nan());
        // The reference rules a token out: it contributes nothing.
        let k = kl_divergence(&[0.0, f32::NEG_INFINITY], &[0.0, 0.0]);
        assert!((k - 2f64.ln()).abs() < 1e-12);
        // The model rules out a token the reference allows.
        assert_eq!(
            kl_divergence(&[0.0, 0.0], &[0.0, f32::NEG_INFINITY]),
            f64::INFINITY
        );
    }
}
