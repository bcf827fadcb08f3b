//! Every codec setting on every 2-D weight of a model: the measurements
//! behind tables 3.2 and 4.1–4.5 of the notes and the Pareto frontier.
//!
//! Which tensors: every tensor with two dimensions, a floating-point (or
//! ggml block) type, and at least [`MIN_DIM`] rows and columns; the others
//! are listed in [`WeightsStudy::skipped`] with the reason. GGUF block
//! tensors are dequantized first, so a quantized model is studied as the
//! weights it decodes to.
//!
//! Cost control: a tensor of more than [`WeightsOptions::sample_above`]
//! weights (by default 2²⁵ ≈ 33.5 M, so every tensor of the four default
//! models, SmolLM2's 49152 × 576 embedding included, is studied whole; a
//! billion-parameter model's embedding is not) is studied on a seeded sample
//! of [`WeightsOptions::sample_rows`] whole rows, the same rows for every
//! codec; its kurtosis and histogram still use every weight, and its
//! bits/weight are those of the full shape
//! ([`CodecResult::bits_per_weight_full`]). On SmolLM2's embedding a
//! 4096-row sample reads within 0.1 dB of the whole tensor for every codec
//! but SVD (up to 0.8 dB high: the same rank covers more of fewer rows) and
//! per-tensor affine (0.7 dB high: fewer rows, a smaller range).
//! Tensors run in parallel (rayon), largest first.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use membound_codec::{Matrix, codec_from_spec, metrics};
use membound_tensor::{DType, Moments, TensorSource, TensorView};
use rand::SeedableRng;
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;

use crate::{Error, Result};

/// Tensors with fewer rows or columns than this are not studied.
pub const MIN_DIM: usize = 16;

/// Every codec setting of the study, in table order: the notes' settings
/// (positional 2/8/32/128, SVD 32–256, DCT 50–200, Kronecker 4–16, 4-bit
/// affine, polynomial ICDF) and the scalar and vector codebooks that fill in
/// the frontier.
pub const SETTINGS: &[&str] = &[
    "affine:bits=2,group=32",
    "affine:bits=2,group=64",
    "affine:bits=2,group=128",
    "affine:bits=2,group=row",
    "affine:bits=3,group=32",
    "affine:bits=3,group=64",
    "affine:bits=3,group=128",
    "affine:bits=3,group=row",
    "affine:bits=4,group=32",
    "affine:bits=4,group=64",
    "affine:bits=4,group=128",
    "affine:bits=4,group=row",
    "affine:bits=4,group=tensor",
    "affine:bits=8,group=32",
    "affine:bits=8,group=64",
    "affine:bits=8,group=128",
    "affine:bits=8,group=row",
    "absmax:bits=4,block=32",
    "nf4:block=64",
    "kmeans:bits=2,scope=row",
    "kmeans:bits=3,scope=row",
    "kmeans:bits=4,scope=row",
    "kmeans:bits=4,scope=tensor",
    "vq:d=2,k=256",
    "vq:d=4,k=256",
    "vq:d=8,k=256",
    "poly:degree=3",
    "polymse:degree=3",
    "positional:degree=2",
    "positional:degree=8",
    "positional:degree=32",
    "positional:degree=128",
    "svd:rank=32",
    "svd:rank=64",
    "svd:rank=128",
    "svd:rank=256",
    "dct:k=50",
    "dct:k=100",
    "dct:k=200",
    "kron:rank=4",
    "kron:rank=8",
    "kron:rank=16",
];

/// The 4-bit affine baseline of the notes' tables 4.x, MLX's default layout.
pub const BASELINE: &str = "affine:bits=4,group=64";
/// Per-row 4-bit affine: the grouping of the notes' synthetic figures and of
/// table 3.2's "polynomial wins" comparison.
pub const AFFINE_ROW: &str = "affine:bits=4,group=row";
/// Per-tensor 4-bit affine.
pub const AFFINE_TENSOR: &str = "affine:bits=4,group=tensor";
/// The polynomial ICDF codec.
pub const POLY: &str = "poly:degree=3";
/// The polynomial fitted to Lloyd-Max centroids.
pub const POLYMSE: &str = "polymse:degree=3";

/// How to run the study.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WeightsOptions {
    /// Codec settings to run (specs); [`SETTINGS`] by default.
    pub settings: Vec<String>,
    /// Tensors with more weights than this are row-sampled (0: never).
    pub sample_above: usize,
    /// Rows kept when sampling.
    pub sample_rows: usize,
    /// Seed of the row sample.
    pub seed: u64,
    /// Only tensors whose name contains one of these (all if empty).
    pub only: Vec<String>,
    /// Histogram bins over mean ± 6σ.
    pub histogram_bins: usize,
}

impl Default for WeightsOptions {
    fn default() -> Self {
        Self {
            settings: SETTINGS.iter().map(|s| (*s).to_string()).collect(),
            sample_above: 1 << 25,
            sample_rows: 4096,
            seed: 0,
            only: Vec::new(),
            histogram_bins: 97,
        }
    }
}

/// One codec setting on one tensor.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CodecResult {
    /// The setting as requested (a key into [`WeightsStudy::settings`]).
    pub setting: String,
    /// The canonical spec the codec reports.
    pub codec: String,
    /// Measured bits/weight of the encoding of the studied rows.
    pub bits_per_weight: f64,
    /// Bits/weight the codec stores for the tensor's full shape.
    pub bits_per_weight_full: f64,
    /// SQNR, dB (`null` in JSON when exact).
    pub sqnr_db: f64,
    /// Mean squared error.
    pub mse: f64,
    /// Largest absolute error.
    pub max_abs_error: f64,
    /// Σx² over the studied weights.
    pub signal: f64,
    /// Σ(x − x̂)² over the studied weights.
    pub noise: f64,
    /// Encode + decode time, seconds (wall clock, codecs use every core).
    pub seconds: f64,
}

/// One tensor's statistics and results.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TensorResult {
    /// Name in the file.
    pub name: String,
    /// The name with layer numbers replaced by `*`, e.g. `blk.*.attn_q.weight`.
    pub kind: String,
    /// Storage type in the file (e.g. `Q4_1`, `F32`).
    pub dtype: String,
    /// Rows (output features).
    pub rows: usize,
    /// Columns (input features).
    pub cols: usize,
    /// Rows the codecs saw (`rows` unless sampled).
    pub studied_rows: usize,
    /// Mean of all weights.
    pub mean: f64,
    /// Standard deviation of all weights.
    pub std: f64,
    /// Excess kurtosis of all weights (Gaussian 0).
    pub excess_kurtosis: f64,
    /// One result per setting, in [`WeightsOptions::settings`] order.
    pub results: Vec<CodecResult>,
}

impl TensorResult {
    /// The result of `setting`, if it ran.
    pub fn result(&self, setting: &str) -> Option<&CodecResult> {
        self.results.iter().find(|r| r.setting == setting)
    }
}

/// A tensor the study left out, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// Name in the file.
    pub name: String,
    /// Why it was left out.
    pub reason: String,
}

/// A histogram of one tensor's weights with the Gaussian of the same mean
/// and standard deviation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Histogram {
    /// Tensor name.
    pub tensor: String,
    /// Weights counted (all of them, in range or not).
    pub count: u64,
    /// Mean of the weights.
    pub mean: f64,
    /// Standard deviation of the weights.
    pub std: f64,
    /// Excess kurtosis.
    pub excess_kurtosis: f64,
    /// Left edge of the first bin.
    pub lo: f64,
    /// Right edge of the last bin.
    pub hi: f64,
    /// Counts per equal-width bin over `[lo, hi)`.
    pub counts: Vec<u64>,
    /// Weights below `lo`.
    pub below: u64,
    /// Weights at or above `hi`.
    pub above: u64,
}

/// One codec setting over the whole model.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SettingSummary {
    /// The setting.
    pub setting: String,
    /// Codec name (`affine`, `svd`, …): the series of the frontier plot.
    pub family: String,
    /// Tensors it ran on.
    pub tensors: usize,
    /// Total stored bits ÷ total weights, full shapes.
    pub bits_per_weight: f64,
    /// f16 bytes ÷ stored bytes over the model (16 ÷ bits/weight).
    pub vs_f16: f64,
    /// f32 bytes ÷ stored bytes over the model (32 ÷ bits/weight).
    pub vs_f32: f64,
    /// Mean over tensors of each tensor's f32 ratio (how a per-layer
    /// average reads).
    pub mean_vs_f32: f64,
    /// Mean over tensors of the per-tensor SQNR in dB (exact results left
    /// out and counted in `exact`).
    pub mean_sqnr_db: f64,
    /// Median per-tensor SQNR, dB.
    pub median_sqnr_db: f64,
    /// Σ signal ÷ Σ noise over every studied weight, dB.
    pub pooled_sqnr_db: f64,
    /// Tensors decoded exactly (infinite SQNR).
    pub exact: usize,
    /// Total encode + decode seconds.
    pub seconds: f64,
    /// Whether no other setting has both fewer bits and a higher mean SQNR.
    pub on_frontier: bool,
}

/// Table 3.2's measurements for one model.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KurtosisSummary {
    /// Tensors studied.
    pub tensors: usize,
    /// Mean excess kurtosis over tensors.
    pub avg_kurtosis: f64,
    /// Median excess kurtosis.
    pub median_kurtosis: f64,
    /// Share of tensors with excess kurtosis > 3.
    pub heavy_share: f64,
    /// Share where `poly:degree=3` beats per-row 4-bit affine.
    pub poly_beats_affine_row: f64,
    /// Share where it beats 4-bit affine in groups of 64.
    pub poly_beats_affine_g64: f64,
    /// Share where `polymse:degree=3` beats per-row 4-bit affine.
    pub polymse_beats_affine_row: f64,
    /// Share where it beats 4-bit affine in groups of 64.
    pub polymse_beats_affine_g64: f64,
}

/// The whole weights study of one model.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WeightsStudy {
    /// The model as named on the command line.
    pub model: String,
    /// The file read.
    pub path: String,
    /// Its format.
    pub format: String,
    /// The options used.
    pub options: WeightsOptions,
    /// Studied tensors, in file order.
    pub tensors: Vec<TensorResult>,
    /// Tensors left out.
    pub skipped: Vec<Skipped>,
    /// Per-setting summaries, in settings order.
    pub settings: Vec<SettingSummary>,
    /// Table 3.2's figures.
    pub kurtosis: KurtosisSummary,
    /// Histograms of a few tensors: the lowest, median and highest kurtosis.
    pub histograms: Vec<Histogram>,
    /// Wall-clock seconds of the whole study.
    pub seconds: f64,
    /// Worker threads used.
    pub threads: usize,
}

/// Progress of a running study: the tensor just finished, and counts.
#[derive(Clone, Copy, Debug)]
pub struct Progress<'a> {
    /// Name of the tensor just finished.
    pub tensor: &'a str,
    /// Tensors finished so far.
    pub done: usize,
    /// Tensors in all.
    pub total: usize,
}

/// The tensor's name with numeric path segments replaced by `*`.
pub fn kind_of(name: &str) -> String {
    name.split('.')
        .map(|s| {
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                "*"
            } else {
                s
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// Why a tensor is not studied, or `None` if it is.
fn skip_reason(t: &TensorView<'_>) -> Option<String> {
    let shape = t.shape();
    if shape.len() != 2 {
        return Some(format!("{}-D, not a matrix", shape.len()));
    }
    let numeric = matches!(
        t.dtype(),
        DType::F16 | DType::BF16 | DType::F32 | DType::F64 | DType::Ggml(_)
    );
    if !numeric {
        return Some(format!("{} is not a floating-point weight type", t.dtype()));
    }
    if shape[0] < MIN_DIM || shape[1] < MIN_DIM {
        return Some(format!(
            "{}×{} is smaller than {MIN_DIM}×{MIN_DIM}",
            shape[0], shape[1]
        ));
    }
    None
}

/// FNV-1a of a name, to give each tensor its own sample stream.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The rows a tensor is studied on: all, or a seeded sorted sample.
fn studied_rows(name: &str, rows: usize, cols: usize, opts: &WeightsOptions) -> Option<Vec<usize>> {
    let sampled = opts.sample_above > 0
        && rows * cols > opts.sample_above
        && rows > opts.sample_rows
        && opts.sample_rows > 0;
    sampled.then(|| {
        let mut rng = ChaCha8Rng::seed_from_u64(opts.seed ^ fnv1a(name));
        let mut idx = sample(&mut rng, rows, opts.sample_rows).into_vec();
        idx.sort_unstable();
        idx
    })
}

fn histogram(name: &str, x: &[f32], m: &Moments, bins: usize) -> Histogram {
    let (mean, std) = (m.mean(), m.std());
    let (lo, hi) = if std > 0.0 {
        (mean - 6.0 * std, mean + 6.0 * std)
    } else {
        (mean - 1.0, mean + 1.0)
    };
    let bins = bins.max(1);
    let mut counts = vec![0u64; bins];
    let (mut below, mut above) = (0u64, 0u64);
    let w = (hi - lo) / bins as f64;
    for &v in x {
        let v = f64::from(v);
        if v < lo {
            below += 1;
        } else if v >= hi {
            above += 1;
        } else {
            counts[(((v - lo) / w) as usize).min(bins - 1)] += 1;
        }
    }
    Histogram {
        tensor: name.into(),
        count: x.len() as u64,
        mean,
        std,
        excess_kurtosis: m.excess_kurtosis(),
        lo,
        hi,
        counts,
        below,
        above,
    }
}

fn run_setting(
    model: &str,
    name: &str,
    setting: &str,
    m: Matrix<'_>,
    full_rows: usize,
) -> Result<CodecResult> {
    let err = |e: membound_codec::Error| Error::Model {
        path: model.into(),
        problem: format!("tensor {name}, codec {setting}: {e}"),
    };
    let t = Instant::now();
    let codec = codec_from_spec(setting).map_err(err)?;
    let e = codec.encode(m).map_err(err)?;
    let y = codec.decode(&e).map_err(err)?;
    let seconds = t.elapsed().as_secs_f64();
    let (mut signal, mut noise, mut max_abs) = (0f64, 0f64, 0f64);
    for (&a, &b) in m.data.iter().zip(&y) {
        let (a, d) = (f64::from(a), f64::from(a) - f64::from(b));
        signal += a * a;
        noise += d * d;
        max_abs = max_abs.max(d.abs());
    }
    Ok(CodecResult {
        setting: setting.into(),
        codec: e.spec.clone(),
        bits_per_weight: e.bits_per_weight(),
        bits_per_weight_full: codec.bits_per_weight(full_rows, m.cols),
        sqnr_db: metrics::sqnr_db(m.data, &y).map_err(err)?,
        mse: if m.data.is_empty() {
            0.0
        } else {
            noise / m.data.len() as f64
        },
        max_abs_error: max_abs,
        signal,
        noise,
        seconds,
    })
}

fn study_tensor(
    model: &str,
    t: &TensorView<'_>,
    opts: &WeightsOptions,
) -> Result<(TensorResult, Histogram)> {
    let (rows, cols) = (t.shape()[0], t.shape()[1]);
    let all = t.to_f32()?;
    let moments = Moments::of(&all);
    if moments.non_finite() > 0 {
        return Err(Error::Model {
            path: model.into(),
            problem: format!(
                "tensor {}: {} non-finite weights",
                t.name(),
                moments.non_finite()
            ),
        });
    }
    let hist = histogram(t.name(), &all, &moments, opts.histogram_bins);
    let picked = studied_rows(t.name(), rows, cols, opts);
    let data: Vec<f32> = match &picked {
        None => all,
        Some(idx) => {
            let mut d = Vec::with_capacity(idx.len() * cols);
            for &r in idx {
                d.extend_from_slice(&all[r * cols..(r + 1) * cols]);
            }
            d
        }
    };
    let studied = picked.as_ref().map_or(rows, Vec::len);
    let m = Matrix::new(studied, cols, &data).map_err(|e| Error::Model {
        path: model.into(),
        problem: format!("tensor {}: {e}", t.name()),
    })?;
    let results = opts
        .settings
        .iter()
        .map(|s| run_setting(model, t.name(), s, m, rows))
        .collect::<Result<_>>()?;
    Ok((
        TensorResult {
            name: t.name().into(),
            kind: kind_of(t.name()),
            dtype: t.dtype().to_string(),
            rows,
            cols,
            studied_rows: studied,
            mean: moments.mean(),
            std: moments.std(),
            excess_kurtosis: moments.excess_kurtosis(),
            results,
        },
        hist,
    ))
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

fn summarize(setting: &str, tensors: &[TensorResult]) -> SettingSummary {
    let rs: Vec<(&TensorResult, &CodecResult)> = tensors
        .iter()
        .filter_map(|t| t.result(setting).map(|r| (t, r)))
        .collect();
    let weights: f64 = rs.iter().map(|(t, _)| (t.rows * t.cols) as f64).sum();
    let bits: f64 = rs
        .iter()
        .map(|(t, r)| r.bits_per_weight_full * (t.rows * t.cols) as f64)
        .sum();
    let bpw = if weights > 0.0 {
        bits / weights
    } else {
        f64::NAN
    };
    let finite: Vec<f64> = rs
        .iter()
        .map(|(_, r)| r.sqnr_db)
        .filter(|s| s.is_finite())
        .collect();
    let (signal, noise): (f64, f64) = rs
        .iter()
        .fold((0.0, 0.0), |(s, n), (_, r)| (s + r.signal, n + r.noise));
    SettingSummary {
        setting: setting.into(),
        family: setting.split(':').next().unwrap_or(setting).into(),
        tensors: rs.len(),
        bits_per_weight: bpw,
        vs_f16: 16.0 / bpw,
        vs_f32: 32.0 / bpw,
        mean_vs_f32: mean(
            &rs.iter()
                .map(|(_, r)| 32.0 / r.bits_per_weight_full)
                .collect::<Vec<_>>(),
        ),
        mean_sqnr_db: mean(&finite),
        median_sqnr_db: median(finite.clone()),
        pooled_sqnr_db: if noise > 0.0 {
            10.0 * (signal / noise).log10()
        } else {
            f64::INFINITY
        },
        exact: rs.len() - finite.len(),
        seconds: rs.iter().map(|(_, r)| r.seconds).sum(),
        on_frontier: false,
    }
}

/// Marks the settings that no other setting beats on both bits/weight
/// (fewer) and mean SQNR (higher).
pub fn mark_frontier(settings: &mut [SettingSummary]) {
    let mut order: Vec<usize> = (0..settings.len())
        .filter(|&i| settings[i].bits_per_weight.is_finite() && !settings[i].mean_sqnr_db.is_nan())
        .collect();
    order.sort_by(|&a, &b| {
        settings[a]
            .bits_per_weight
            .total_cmp(&settings[b].bits_per_weight)
            .then(
                settings[b]
                    .mean_sqnr_db
                    .total_cmp(&settings[a].mean_sqnr_db),
            )
    });
    let mut best = f64::NEG_INFINITY;
    for i in order {
        let s = &mut settings[i];
        s.on_frontier = s.mean_sqnr_db > best;
        best = best.max(s.mean_sqnr_db);
    }
}

fn share(tensors: &[TensorResult], a: &str, b: &str) -> f64 {
    let pairs: Vec<bool> = tensors
        .iter()
        .filter_map(|t| Some(t.result(a)?.sqnr_db > t.result(b)?.sqnr_db))
        .collect();
    if pairs.is_empty() {
        f64::NAN
    } else {
        pairs.iter().filter(|&&w| w).count() as f64 / pairs.len() as f64
    }
}

/// Splits `views` into the tensors the study runs on (in file order) and
/// those it leaves out (with the reason); `opts.only` filters both.
pub fn select<'a>(
    views: &[TensorView<'a>],
    opts: &WeightsOptions,
) -> (Vec<TensorView<'a>>, Vec<Skipped>) {
    let mut skipped = Vec::new();
    let mut chosen = Vec::new();
    for t in views {
        if !opts.only.is_empty() && !opts.only.iter().any(|o| t.name().contains(o.as_str())) {
            continue;
        }
        match skip_reason(t) {
            Some(reason) => skipped.push(Skipped {
                name: t.name().into(),
                reason,
            }),
            None => chosen.push(*t),
        }
    }
    (chosen, skipped)
}

/// Runs the study on every 2-D weight of `source`. `model` names it in the
/// results; `progress` is called after each tensor (from worker threads).
pub fn run(
    model: &str,
    source: &dyn TensorSource,
    opts: &WeightsOptions,
    progress: &(dyn Fn(Progress<'_>) + Sync),
) -> Result<WeightsStudy> {
    let start = Instant::now();
    for s in &opts.settings {
        codec_from_spec(s).map_err(|e| Error::Request(format!("setting {s:?}: {e}")))?;
    }
    let views = source.tensors();
    let (chosen, skipped) = select(&views, opts);
    // Largest first, so the long tensors do not finish last on one core.
    let mut order: Vec<usize> = (0..chosen.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(chosen[i].numel()));
    let done = AtomicUsize::new(0);
    let total = chosen.len();
    let mut out: Vec<(usize, TensorResult, Histogram)> = order
        .par_iter()
        .with_max_len(1)
        .map(|&i| {
            let (r, h) = study_tensor(model, &chosen[i], opts)?;
            let d = done.fetch_add(1, Ordering::Relaxed) + 1;
            progress(Progress {
                tensor: chosen[i].name(),
                done: d,
                total,
            });
            Ok((i, r, h))
        })
        .collect::<Result<_>>()?;
    out.sort_by_key(|(i, _, _)| *i);
    let mut tensors = Vec::with_capacity(out.len());
    let mut hists = Vec::with_capacity(out.len());
    for (_, r, h) in out {
        tensors.push(r);
        hists.push(h);
    }

    let mut settings: Vec<SettingSummary> = opts
        .settings
        .iter()
        .map(|s| summarize(s, &tensors))
        .collect();
    mark_frontier(&mut settings);
    let kurt: Vec<f64> = tensors.iter().map(|t| t.excess_kurtosis).collect();
    let kurtosis = KurtosisSummary {
        tensors: tensors.len(),
        avg_kurtosis: mean(
            &kurt
                .iter()
                .copied()
                .filter(|k| !k.is_nan())
                .collect::<Vec<_>>(),
        ),
        median_kurtosis: median(kurt.clone()),
        heavy_share: metrics::heavy_tail_share(&kurt),
        poly_beats_affine_row: share(&tensors, POLY, AFFINE_ROW),
        poly_beats_affine_g64: share(&tensors, POLY, BASELINE),
        polymse_beats_affine_row: share(&tensors, POLYMSE, AFFINE_ROW),
        polymse_beats_affine_g64: share(&tensors, POLYMSE, BASELINE),
    };
    // Lowest, median and highest kurtosis (distinct tensors, file order kept).
    let mut by_k: Vec<usize> = (0..tensors.len()).filter(|&i| !kurt[i].is_nan()).collect();
    by_k.sort_by(|&a, &b| kurt[a].total_cmp(&kurt[b]));
    let mut pick: Vec<usize> = [by_k.first(), by_k.get(by_k.len() / 2), by_k.last()]
        .into_iter()
        .flatten()
        .copied()
        .collect();
    pick.sort_unstable();
    pick.dedup();
    let histograms = pick.into_iter().map(|i| hists[i].clone()).collect();

    Ok(WeightsStudy {
        model: model.into(),
        path: source.path().display().to_string(),
        format: source.format().to_string(),
        options: opts.clone(),
        tensors,
        skipped,
        settings,
        kurtosis,
        histograms,
        seconds: start.elapsed().as_secs_f64(),
        threads: rayon::current_num_threads(),
    })
}

impl WeightsStudy {
    /// The summary of `setting`, if it ran.
    pub fn setting(&self, setting: &str) -> Option<&SettingSummary> {
        self.settings.iter().find(|s| s.setting == setting)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(setting: &str, bits: f64, sqnr: f64) -> SettingSummary {
        SettingSummary {
            setting: setting.into(),
            family: "x".into(),
            tensors: 1,
            bits_per_weight: bits,
            vs_f16: 16.0 / bits,
            vs_f32: 32.0 / bits,
            mean_vs_f32: 32.0 / bits,
            mean_sqnr_db: sqnr,
            median_sqnr_db: sqnr,
            pooled_sqnr_db: sqnr,
            exact: 0,
            seconds: 0.0,
            on_frontier: false,
        }
    }

    #[test]
    fn frontier_keeps_undominated_points() {
        let mut s = vec![
            summary("a", 4.0, 20.0),
            summary("b", 4.5, 19.0),
            summary("c", 2.0, 8.0),
            summary("d", 8.0, 40.0),
            summary("e", 2.0, 9.0),
        ];
        mark_frontier(&mut s);
        let on: Vec<&str> = s
            .iter()
            .filter(|s| s.on_frontier)
            .map(|s| s.setting.as_str())
            .collect();
        assert_eq!(on, ["a", "d", "e"]);
    }

    #[test]
    fn kinds_and_samples() {
        assert_eq!(
            kind_of("model.layers.12.mlp.up_proj.weight"),
            "model.layers.*.mlp.up_proj.weight"
        );
        assert_eq!(kind_of("blk.0.attn_q.weight"), "blk.*.attn_q.weight");
        let o = WeightsOptions {
            sample_above: 100,
            sample_rows: 4,
            ..Default::default()
        };
        let a = studied_rows("t", 50, 10, &o).unwrap();
        assert_eq!(a.len(), 4);
        assert!(a.windows(2).all(|w| w[0] < w[1]) && a.iter().all(|&r| r < 50));
        assert_eq!(Some(a), studied_rows("t", 50, 10, &o));
        assert_eq!(studied_rows("t", 10, 10, &o), None);
    }
}
