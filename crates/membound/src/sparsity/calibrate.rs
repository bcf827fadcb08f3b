//! Thresholds that hit a target sparsity: per layer × site quantiles of
//! |x| over calibration tokens, uniform across layers or spread greedily by
//! measured sensitivity.
//!
//! **Uniform**: every thresholded layer × site gets τ = the `target`
//! quantile of its own calibration magnitudes, so each drops `target` of its
//! inputs.
//!
//! **Greedy**: each layer × site is first sparsified alone at a probe level
//! and the mean KL from the dense model is measured ([`sensitivity`]). The
//! cost of level s is modelled as `kl · (s / probe)^`[`COST_EXPONENT`]
//! (on llama2xs-280K's uniform down-site sweep, KL grows like the 6th
//! power of the level between 25 % and 90 %); starting from 0, the
//! level of the unit with the least modelled cost per gated weight is raised
//! in steps of 5 % (capped at [`MAX_LEVEL`]) until the average level,
//! weighted by the weights each site gates, reaches the target. Its
//! thresholds are the quantiles at the levels reached.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use membound_sparse::threshold_for_sparsity;
use serde::Serialize;

use super::{ThresholdHook, lock, site_key, site_weight, teacher_force};
use crate::eval::kl_divergence;
use crate::model::{ActivationHook, CpuLlama, LlamaConfig, Site};
use crate::{Error, Result};

/// The highest level the greedy allocation gives any layer × site.
pub const MAX_LEVEL: f64 = 0.95;
/// Exponent of the greedy cost model `kl · (s / probe)^COST_EXPONENT`.
pub const COST_EXPONENT: i32 = 6;
/// Step of the greedy allocation.
pub const STEP: f64 = 0.05;

/// |x| of every input seen at the collected layer × sites.
#[derive(Clone, Debug, Default)]
pub struct Magnitudes {
    /// `[layer][site index in Site::ALL]`, empty where not collected.
    pub data: Vec<[Vec<f32>; 4]>,
}

fn si(site: Site) -> usize {
    Site::ALL.iter().position(|s| *s == site).unwrap_or(0)
}

impl Magnitudes {
    /// The magnitudes of one layer × site (empty if not collected).
    pub fn of(&self, layer: usize, site: Site) -> &[f32] {
        self.data.get(layer).map_or(&[], |r| &r[si(site)])
    }

    /// τ that drops `level` of this layer × site's calibration inputs
    /// (|x| ≤ τ); errors when nothing was collected there.
    pub fn quantile(&self, layer: usize, site: Site, level: f64) -> Result<f32> {
        let v = self.of(layer, site);
        if v.is_empty() {
            return Err(Error::Request(format!(
                "no calibration data for {}",
                site_key(layer, site)
            )));
        }
        threshold_for_sparsity(v, level)
            .map_err(|e| Error::Request(format!("{}: {e}", site_key(layer, site))))
    }
}

/// Hook that stores |x| at the chosen sites.
struct Collector {
    sites: Vec<Site>,
    out: Arc<Mutex<Magnitudes>>,
}

impl ActivationHook for Collector {
    fn on_input(&mut self, layer: usize, site: Site, x: &mut [f32]) {
        if self.sites.contains(&site) {
            let mut m = lock(&self.out);
            if let Some(r) = m.data.get_mut(layer) {
                r[si(site)].extend(x.iter().map(|v| v.abs()));
            }
        }
    }
}

/// Runs `tokens` (windows of `window`) through `model` and collects |x| at
/// `sites` of every layer. Any hook the model had is restored afterwards.
pub fn collect(
    model: &mut CpuLlama,
    tokens: &[u32],
    window: usize,
    sites: &[Site],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Magnitudes> {
    let n = model.config().n_layers;
    let out = Arc::new(Mutex::new(Magnitudes {
        data: (0..n).map(|_| Default::default()).collect(),
    }));
    let old = model.set_hook(Some(Box::new(Collector {
        sites: sites.to_vec(),
        out: Arc::clone(&out),
    })));
    let r = teacher_force(model, tokens, window, &mut |_, _| {}, progress);
    model.set_hook(old);
    r?;
    let m = std::mem::take(&mut *lock(&out));
    Ok(m)
}

/// Uniform thresholds: the `target` quantile at every layer × `sites`.
pub fn uniform(
    mags: &Magnitudes,
    n_layers: usize,
    sites: &[Site],
    target: f64,
) -> Result<BTreeMap<String, f32>> {
    let mut m = BTreeMap::new();
    for l in 0..n_layers {
        for &s in sites {
            m.insert(site_key(l, s), mags.quantile(l, s, target)?);
        }
    }
    Ok(m)
}

/// How much one layer × site hurts when sparsified alone.
#[derive(Clone, Debug, Serialize)]
pub struct Sensitivity {
    /// `layers.N.site`.
    pub key: String,
    /// Block index.
    pub layer: usize,
    /// The site.
    pub site: Site,
    /// Weight elements the site gates.
    pub weight: usize,
    /// The level it was sparsified at.
    pub probe: f64,
    /// Mean KL(dense ‖ sparsified) in nats over the probe tokens.
    pub kl: f64,
}

/// Sparsifies each layer × `sites` alone at `probe` (its own quantile) and
/// measures the mean KL from the dense model over `tokens`.
pub fn sensitivity(
    model: &mut CpuLlama,
    tokens: &[u32],
    window: usize,
    mags: &Magnitudes,
    sites: &[Site],
    probe: f64,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Sensitivity>> {
    let cfg = model.config().clone();
    let old = model.set_hook(None);
    let mut dense = Vec::with_capacity(tokens.len());
    let r = teacher_force(
        model,
        tokens,
        window,
        &mut |_, l| dense.push(l),
        &mut |_, _| {},
    );
    if let Err(e) = r {
        model.set_hook(old);
        return Err(e);
    }
    let units: Vec<(usize, Site)> = (0..cfg.n_layers)
        .flat_map(|l| sites.iter().map(move |&s| (l, s)))
        .collect();
    let mut out = Vec::with_capacity(units.len());
    let result = (|| {
        for (i, &(l, s)) in units.iter().enumerate() {
            let key = site_key(l, s);
            let tau = mags.quantile(l, s, probe)?;
            let hook = ThresholdHook::new(cfg.n_layers, &BTreeMap::from([(key.clone(), tau)]))?;
            model.set_hook(Some(Box::new(hook)));
            let mut kl = 0.0;
            teacher_force(
                model,
                tokens,
                window,
                &mut |j, logits| kl += kl_divergence(&dense[j], &logits),
                &mut |_, _| {},
            )?;
            out.push(Sensitivity {
                key,
                layer: l,
                site: s,
                weight: site_weight(&cfg, s),
                probe,
                kl: kl / tokens.len().max(1) as f64,
            });
            progress(i + 1, units.len());
        }
        Ok(())
    })();
    model.set_hook(old);
    result.map(|()| out)
}

/// Greedy levels per unit (same order as `sens`) whose weighted mean is
/// `target` (see the module documentation).
pub fn greedy_levels(sens: &[Sensitivity], target: f64) -> Result<Vec<f64>> {
    if !(0.0..=MAX_LEVEL).contains(&target) {
        return Err(Error::Request(format!(
            "greedy target {target} is outside [0, {MAX_LEVEL}]"
        )));
    }
    let total: f64 = sens.iter().map(|s| s.weight as f64).sum();
    let mut level = vec![0.0f64; sens.len()];
    let mut avg = 0.0;
    // Sensitivities of exactly 0 would all tie: a tiny floor keeps the
    // order by weight.
    let cost =
        |s: &Sensitivity, x: f64| s.kl.max(1e-12) * (x / s.probe.max(1e-6)).powi(COST_EXPONENT);
    while avg < target - 1e-12 {
        let best = (0..sens.len())
            .filter(|&i| level[i] < MAX_LEVEL - 1e-12)
            .min_by(|&a, &b| {
                let m = |i: usize| {
                    let s = &sens[i];
                    let step = STEP.min(MAX_LEVEL - level[i]);
                    (cost(s, level[i] + step) - cost(s, level[i])) / (s.weight as f64 * step)
                };
                m(a).total_cmp(&m(b))
            });
        let Some(i) = best else { break };
        let need = (target - avg) * total / sens[i].weight as f64;
        let step = STEP.min(MAX_LEVEL - level[i]).min(need);
        level[i] += step;
        avg += step * sens[i].weight as f64 / total;
    }
    Ok(level)
}

/// Greedy thresholds from measured sensitivities (see [`greedy_levels`]);
/// also returns each key's level.
pub fn greedy(
    mags: &Magnitudes,
    sens: &[Sensitivity],
    target: f64,
) -> Result<(BTreeMap<String, f32>, BTreeMap<String, f64>)> {
    let levels = greedy_levels(sens, target)?;
    let mut taus = BTreeMap::new();
    let mut lv = BTreeMap::new();
    for (s, &x) in sens.iter().zip(&levels) {
        taus.insert(s.key.clone(), mags.quantile(s.layer, s.site, x)?);
        lv.insert(s.key.clone(), x);
    }
    Ok((taus, lv))
}

/// The share of inputs `thresholds` zero on `tokens`, weighted by the
/// weights each thresholded site gates (held-out check of a calibration).
pub fn achieved(
    model: &mut CpuLlama,
    tokens: &[u32],
    window: usize,
    thresholds: &BTreeMap<String, f32>,
) -> Result<f64> {
    let cfg: LlamaConfig = model.config().clone();
    let hook = ThresholdHook::new(cfg.n_layers, thresholds)?;
    let (counts, active) = (hook.counts(), hook.active());
    let old = model.set_hook(Some(Box::new(hook)));
    let r = teacher_force(model, tokens, window, &mut |_, _| {}, &mut |_, _| {});
    model.set_hook(old);
    r?;
    let c = lock(&counts);
    Ok(c.weighted_sparsity(&cfg, &active))
}
