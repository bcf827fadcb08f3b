//! What thresholding costs: perplexity, KL from the dense model and top-1
//! agreement through [`crate::eval::evaluate`], with the dense logits
//! computed once and replayed as the reference.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{ThresholdHook, lock};
use crate::eval::{EvalOptions, EvalReport, evaluate};
use crate::model::{ActivationHook, CpuLlama, Decoder, LlamaConfig};
use crate::{Error, Result};

/// A decoder that returns recorded logits in the order they were recorded:
/// the dense reference of many evaluations over the same tokens, computed
/// once. Its position arguments are ignored; call [`Replay::rewind`]
/// before each evaluation.
#[derive(Clone, Debug)]
pub struct Replay {
    cfg: LlamaConfig,
    logits: Vec<Vec<f32>>,
    next: usize,
}

impl Replay {
    /// Starts replaying from the first recorded call again.
    pub fn rewind(&mut self) {
        self.next = 0;
    }

    /// Calls recorded.
    pub fn len(&self) -> usize {
        self.logits.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.logits.is_empty()
    }
}

impl Decoder for Replay {
    fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    fn forward(&mut self, _token: u32, _pos: usize) -> Result<Vec<f32>> {
        let l = self.logits.get(self.next).cloned().ok_or_else(|| {
            Error::Request(format!(
                "replayed reference has only {} recorded steps",
                self.logits.len()
            ))
        })?;
        self.next += 1;
        Ok(l)
    }
}

/// Records the logits a decoder returns.
struct Recording<'a> {
    inner: &'a mut dyn Decoder,
    logits: Vec<Vec<f32>>,
}

impl Decoder for Recording<'_> {
    fn config(&self) -> &LlamaConfig {
        self.inner.config()
    }

    fn forward(&mut self, token: u32, pos: usize) -> Result<Vec<f32>> {
        let l = self.inner.forward(token, pos)?;
        self.logits.push(l.clone());
        Ok(l)
    }
}

/// Evaluates `model` alone on `tokens` and records its logits for replay.
pub fn dense_reference(
    model: &mut dyn Decoder,
    tokens: &[u32],
    opts: &EvalOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(EvalReport, Replay)> {
    let cfg = model.config().clone();
    let mut rec = Recording {
        inner: model,
        logits: Vec::new(),
    };
    let report = evaluate(&mut rec, None, tokens, opts, progress)?;
    Ok((
        report,
        Replay {
            cfg,
            logits: rec.logits,
            next: 0,
        },
    ))
}

/// Evaluates `model` with `hook` installed against the replayed reference;
/// the model's previous hook is restored.
pub fn evaluate_with_hook(
    model: &mut CpuLlama,
    reference: &mut Replay,
    tokens: &[u32],
    opts: &EvalOptions,
    hook: Option<Box<dyn ActivationHook>>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<EvalReport> {
    reference.rewind();
    let old = model.set_hook(hook);
    let r = evaluate(model, Some(reference), tokens, opts, progress);
    model.set_hook(old);
    r
}

/// Evaluates `model` with `thresholds` applied; returns the report and the
/// weighted share of inputs actually zeroed.
pub fn evaluate_thresholds(
    model: &mut CpuLlama,
    reference: &mut Replay,
    tokens: &[u32],
    opts: &EvalOptions,
    thresholds: &BTreeMap<String, f32>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(EvalReport, f64)> {
    let cfg = model.config().clone();
    let hook = ThresholdHook::new(cfg.n_layers, thresholds)?;
    let (counts, active) = (hook.counts(), hook.active());
    let report = evaluate_with_hook(
        model,
        reference,
        tokens,
        opts,
        Some(Box::new(hook)),
        progress,
    )?;
    let achieved = lock(&counts).weighted_sparsity(&cfg, &active);
    Ok((report, achieved))
}

/// One point of a quality sweep.
#[derive(Clone, Debug, Serialize)]
pub struct QualityPoint {
    /// `f32` or the weight spec (e.g. `affine:bits=4,group=64`).
    pub weights: String,
    /// `down` or `all`.
    pub sites: String,
    /// `uniform` or `greedy`.
    pub method: String,
    /// Target sparsity of the calibration.
    pub target: f64,
    /// Weighted share actually zeroed on the evaluation tokens.
    pub achieved: f64,
    /// Perplexity.
    pub perplexity: f64,
    /// Relative perplexity rise over the same weights without sparsity.
    pub ppl_rise: f64,
    /// Mean KL(dense f32 ‖ model) in nats.
    pub kl: f64,
    /// Top-1 agreement with dense f32.
    pub top1: f64,
    /// Scored tokens.
    pub tokens: usize,
}

/// The largest target among `points` (one weights × sites × method series)
/// whose perplexity rise is at most `max_rise`, scanning upward from 0 and
/// stopping at the first level that fails.
pub fn largest_within(points: &[&QualityPoint], max_rise: f64) -> Option<f64> {
    let mut sorted: Vec<&&QualityPoint> = points.iter().collect();
    sorted.sort_by(|a, b| a.target.total_cmp(&b.target));
    let mut best = None;
    for p in sorted {
        if p.ppl_rise <= max_rise {
            best = Some(p.target);
        } else {
            break;
        }
    }
    best
}
