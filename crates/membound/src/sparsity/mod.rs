//! Activation sparsity, measured rather than assumed.
//!
//! - [`Recorder`] / [`RecordingHook`]: streaming statistics of every
//!   projection input (per layer × site: exact zeros, shares under absolute
//!   and relative thresholds, a log-magnitude histogram), for the CPU
//!   decoder through its [`ActivationHook`] and for BERT through
//!   [`Bert::forward_with`](crate::model::Bert::forward_with).
//! - [`calibrate`]: per layer and site thresholds that hit a target sparsity
//!   (uniform) or spread the same average by measured sensitivity (greedy),
//!   stored in a [`ThresholdFile`] JSON sidecar.
//! - [`ThresholdHook`]: applies a sidecar to the CPU decoder (|x| ≤ τ → 0)
//!   and counts what it dropped.
//! - [`quality`]: perplexity / KL / top-1 sweeps over sparsity levels.
//! - [`predict`]: a Deja Vu-style low-rank predictor of active MLP rows.

pub mod calibrate;
pub mod predict;
pub mod quality;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

pub use membound_sparse::activation::{
    ActivationStats, HIST_BINS, HIST_BINS_PER_DECADE, HIST_LOG10_MAX, HIST_LOG10_MIN,
};
use serde::{Deserialize, Serialize};

use crate::model::{ActivationHook, CpuLlama, LlamaConfig, Site};
use crate::{Error, Result};

/// Absolute thresholds recorded by default.
pub const DEFAULT_ABS: [f32; 4] = [1e-3, 1e-2, 0.05, 0.1];
/// Relative thresholds (× mean|x| of the vector) recorded by default.
pub const DEFAULT_REL: [f32; 3] = [0.1, 0.25, 0.5];

/// Locks a mutex, recovering the data of a poisoned one (a panicking hook
/// leaves counters that are still meaningful).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The statistics of one layer × site.
#[derive(Clone, Debug, Serialize)]
pub struct SiteRecord {
    /// Block index.
    pub layer: usize,
    /// Site name (`qkv`, `o`, `gate_up`, `down` for decoders; BERT's
    /// `attn_qkv_in`, `attn_out_in`, `ffn_up_in`, `ffn_down_in`).
    pub site: String,
    /// The counters.
    pub stats: ActivationStats,
}

/// Streaming statistics per layer × site, in first-seen order.
#[derive(Clone, Debug)]
pub struct Recorder {
    abs: Vec<f32>,
    rel: Vec<f32>,
    records: Vec<SiteRecord>,
    index: HashMap<(usize, String), usize>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new(&DEFAULT_ABS, &DEFAULT_REL)
    }
}

impl Recorder {
    /// A recorder at the given absolute and relative thresholds.
    pub fn new(abs: &[f32], rel: &[f32]) -> Self {
        Self {
            abs: abs.to_vec(),
            rel: rel.to_vec(),
            records: Vec::new(),
            index: HashMap::new(),
        }
    }

    /// Adds one input vector of `site` in `layer`.
    pub fn push(&mut self, layer: usize, site: &str, x: &[f32]) {
        let i = match self.index.get(&(layer, site.to_string())) {
            Some(&i) => i,
            None => {
                self.records.push(SiteRecord {
                    layer,
                    site: site.to_string(),
                    stats: ActivationStats::new(&self.abs, &self.rel),
                });
                self.index
                    .insert((layer, site.to_string()), self.records.len() - 1);
                self.records.len() - 1
            }
        };
        self.records[i].stats.push(x);
    }

    /// Every layer × site seen, sorted by layer then first-seen site order.
    pub fn records(&self) -> Vec<SiteRecord> {
        let mut r = self.records.clone();
        r.sort_by_key(|s| s.layer);
        r
    }

    /// The statistics of one layer × site, if seen.
    pub fn get(&self, layer: usize, site: &str) -> Option<&ActivationStats> {
        self.index
            .get(&(layer, site.to_string()))
            .map(|&i| &self.records[i].stats)
    }

    /// Sum over layers per site, in first-seen site order.
    pub fn per_site(&self) -> Vec<(String, ActivationStats)> {
        let mut out: Vec<(String, ActivationStats)> = Vec::new();
        for r in &self.records {
            match out.iter_mut().find(|(s, _)| *s == r.site) {
                // Same thresholds by construction.
                Some((_, acc)) => {
                    let _ = acc.merge(&r.stats);
                }
                None => out.push((r.site.clone(), r.stats.clone())),
            }
        }
        out
    }
}

/// An [`ActivationHook`] that feeds a shared [`Recorder`] and changes nothing.
pub struct RecordingHook(pub Arc<Mutex<Recorder>>);

impl ActivationHook for RecordingHook {
    fn on_input(&mut self, layer: usize, site: Site, x: &mut [f32]) {
        lock(&self.0).push(layer, site.name(), x);
    }
}

/// Runs `tokens` through `model` with teacher forcing, in consecutive
/// windows of `window` positions (each restarting at position 0), calling
/// `on_logits(index, logits)` for every token and `progress(done, total)`.
pub fn teacher_force(
    model: &mut CpuLlama,
    tokens: &[u32],
    window: usize,
    on_logits: &mut dyn FnMut(usize, Vec<f32>),
    progress: &mut dyn FnMut(usize, usize),
) -> Result<()> {
    if window == 0 || window > model.config().max_seq_len {
        return Err(Error::Request(format!(
            "window of {window} positions; the model takes 1 to {}",
            model.config().max_seq_len
        )));
    }
    let mut i = 0;
    for w in tokens.chunks(window) {
        for (pos, &t) in w.iter().enumerate() {
            let logits = model.forward(t, pos)?;
            on_logits(i, logits);
            i += 1;
            progress(i, tokens.len());
        }
    }
    Ok(())
}

/// The sidecar key of a layer × site: `layers.{layer}.{site}`.
pub fn site_key(layer: usize, site: Site) -> String {
    format!("layers.{layer}.{}", site.name())
}

/// Parses a sidecar key back into layer and site.
pub fn parse_site_key(key: &str) -> Option<(usize, Site)> {
    let rest = key.strip_prefix("layers.")?;
    let (l, s) = rest.split_once('.')?;
    let layer = l.parse().ok()?;
    let site = Site::ALL.into_iter().find(|x| x.name() == s)?;
    Some((layer, site))
}

/// Weight elements whose columns an input at `site` gates (the bytes a
/// column-skipping kernel would not read, in units of one weight).
pub fn site_weight(cfg: &LlamaConfig, site: Site) -> usize {
    let (d, h, kv) = (cfg.dim, cfg.hidden_dim, cfg.kv_dim());
    match site {
        Site::Qkv => (d + 2 * kv) * d,
        Site::O => d * d,
        Site::GateUp => 2 * h * d,
        Site::Down => d * h,
    }
}

/// Which sites a threshold set covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SiteSet {
    /// The down projection's input only (SiLU(gate)·up).
    Down,
    /// Every projection input.
    All,
}

impl SiteSet {
    /// The sites.
    pub fn sites(self) -> &'static [Site] {
        match self {
            SiteSet::Down => &[Site::Down],
            SiteSet::All => &Site::ALL,
        }
    }

    /// `down` or `all`.
    pub fn name(self) -> &'static str {
        match self {
            SiteSet::Down => "down",
            SiteSet::All => "all",
        }
    }
}

impl std::str::FromStr for SiteSet {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "down" => Ok(SiteSet::Down),
            "all" => Ok(SiteSet::All),
            _ => Err(Error::Request(format!(
                "sites {s:?}: expected `down` or `all`"
            ))),
        }
    }
}

/// How thresholds were chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// The same target sparsity at every layer × site.
    Uniform,
    /// Sparsity spread by measured sensitivity, same weighted average.
    Greedy,
}

impl Method {
    /// `uniform` or `greedy`.
    pub fn name(self) -> &'static str {
        match self {
            Method::Uniform => "uniform",
            Method::Greedy => "greedy",
        }
    }
}

impl std::str::FromStr for Method {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "uniform" => Ok(Method::Uniform),
            "greedy" => Ok(Method::Greedy),
            _ => Err(Error::Request(format!(
                "method {s:?}: expected `uniform` or `greedy`"
            ))),
        }
    }
}

/// The threshold sidecar: `{"model": …, "target": 0.5, "method":
/// "uniform", "thresholds": {"layers.3.down": τ, …}}`. Sites without a key
/// are left dense. Read with [`ThresholdFile::load`], which rejects missing
/// keys, a target outside [0, 1], and thresholds that are negative or not
/// finite.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdFile {
    /// The model the thresholds were calibrated on (informational).
    pub model: String,
    /// Target sparsity (share of inputs zeroed, weighted by gated weights).
    pub target: f64,
    /// How they were chosen.
    pub method: Method,
    /// τ per `layers.{i}.{qkv|o|gate_up|down}`: inputs with |x| ≤ τ become 0.
    pub thresholds: BTreeMap<String, f32>,
}

impl ThresholdFile {
    /// Checks the target, every key and every threshold.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.target) {
            return Err(Error::Request(format!(
                "threshold file: target {} is outside [0, 1]",
                self.target
            )));
        }
        for (k, &t) in &self.thresholds {
            if parse_site_key(k).is_none() {
                return Err(Error::Request(format!(
                    "threshold file: key {k:?} is not layers.N.(qkv|o|gate_up|down)"
                )));
            }
            if !t.is_finite() || t < 0.0 {
                return Err(Error::Request(format!(
                    "threshold file: {k} = {t}; thresholds must be finite and ≥ 0"
                )));
            }
        }
        Ok(())
    }

    /// Parses and validates sidecar JSON text.
    pub fn from_json(text: &str) -> Result<Self> {
        let f: Self = serde_json::from_str(text)
            .map_err(|e| Error::Request(format!("threshold file: {e}")))?;
        f.validate()?;
        Ok(f)
    }

    /// Reads and validates a sidecar.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Request(format!("{}: {e}", path.display())))?;
        Self::from_json(&text).map_err(|e| Error::Request(format!("{}: {e}", path.display())))
    }

    /// Validates and writes the sidecar atomically (temporary file in the
    /// same folder, then rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        self.validate()?;
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::Request(format!("threshold file: {e}")))?;
        write_atomic(path, text.as_bytes())
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder
/// and a rename, so readers never see a partial file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |e: std::io::Error| Error::Request(format!("{}: {e}", path.display()));
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| Error::Request(format!("{}: not a file path", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })
}

/// Inputs seen and zeroed per layer × site by a [`ThresholdHook`].
#[derive(Clone, Debug, Default)]
pub struct DropCounts {
    /// `[layer][site index in Site::ALL]` = (values seen, values zeroed).
    pub counts: Vec<[(u64, u64); 4]>,
}

impl DropCounts {
    /// Share zeroed over the thresholded sites, weighted by the weight
    /// elements each site gates (the bandwidth a column-skipping kernel
    /// would save on those matrices); 0 when nothing was thresholded.
    pub fn weighted_sparsity(&self, cfg: &LlamaConfig, active: &[Vec<bool>]) -> f64 {
        let (mut num, mut den) = (0.0, 0.0);
        for (l, row) in self.counts.iter().enumerate() {
            for (si, &(seen, zeroed)) in row.iter().enumerate() {
                if seen == 0 || !active.get(l).is_some_and(|a| a[si]) {
                    continue;
                }
                let w = site_weight(cfg, Site::ALL[si]) as f64;
                num += w * zeroed as f64 / seen as f64;
                den += w;
            }
        }
        if den == 0.0 { 0.0 } else { num / den }
    }
}

/// Zeroes every input with |x| ≤ τ at the layer × sites that have a
/// threshold, and counts what it dropped. A threshold of 0 changes nothing
/// (only exact zeros satisfy |x| ≤ 0), so the logits equal the dense ones.
pub struct ThresholdHook {
    tau: Vec<[Option<f32>; 4]>,
    counts: Arc<Mutex<DropCounts>>,
}

fn site_index(site: Site) -> usize {
    Site::ALL.iter().position(|s| *s == site).unwrap_or(0)
}

impl ThresholdHook {
    /// A hook for a model of `n_layers` blocks; errors on keys past the
    /// model's layers and on bad thresholds.
    pub fn new(n_layers: usize, thresholds: &BTreeMap<String, f32>) -> Result<Self> {
        let mut tau = vec![[None; 4]; n_layers];
        for (k, &t) in thresholds {
            let (l, s) = parse_site_key(k).ok_or_else(|| {
                Error::Request(format!("threshold key {k:?} is not layers.N.SITE"))
            })?;
            if l >= n_layers {
                return Err(Error::Request(format!(
                    "threshold key {k}: the model has {n_layers} layers"
                )));
            }
            if !t.is_finite() || t < 0.0 {
                return Err(Error::Request(format!(
                    "threshold {k} = {t}: must be finite and ≥ 0"
                )));
            }
            tau[l][site_index(s)] = Some(t);
        }
        let counts = Arc::new(Mutex::new(DropCounts {
            counts: vec![[(0, 0); 4]; n_layers],
        }));
        Ok(Self { tau, counts })
    }

    /// Which layer × sites have a threshold (`[layer][site index]`).
    pub fn active(&self) -> Vec<Vec<bool>> {
        self.tau
            .iter()
            .map(|r| r.iter().map(Option::is_some).collect())
            .collect()
    }

    /// The shared counters (read them after decoding).
    pub fn counts(&self) -> Arc<Mutex<DropCounts>> {
        Arc::clone(&self.counts)
    }
}

impl ActivationHook for ThresholdHook {
    fn on_input(&mut self, layer: usize, site: Site, x: &mut [f32]) {
        let si = site_index(site);
        let Some(t) = self.tau.get(layer).and_then(|r| r[si]) else {
            return;
        };
        let mut zeroed = 0u64;
        for v in x.iter_mut() {
            if v.abs() <= t {
                *v = 0.0;
                zeroed += 1;
            }
        }
        if let Some(c) = lock(&self.counts).counts.get_mut(layer) {
            c[si].0 += x.len() as u64;
            c[si].1 += zeroed;
        }
    }
}

/// Thresholds `thresholds` on every layer at `sites` computed by a
/// `per_site(layer, site) -> τ` function (a convenience for uniform maps).
pub fn threshold_map(
    n_layers: usize,
    sites: &[Site],
    mut per_site: impl FnMut(usize, Site) -> f32,
) -> BTreeMap<String, f32> {
    let mut m = BTreeMap::new();
    for l in 0..n_layers {
        for &s in sites {
            m.insert(site_key(l, s), per_site(l, s));
        }
    }
    m
}
