//! `membound bench decode`: tokens/s of whole-model decoding on the GPU,
//! against the bandwidth roofline (peak bytes/s ÷ weight bytes per token).
//!
//! Each case decodes greedily from token 1, one submission and one 4-byte
//! read-back per token (what `generate` does), after warming the GPU up to
//! full clocks. The median of per-token wall times is reported, so host
//! overhead counts: it is part of what a user gets. A profile then splits
//! one token into kernel time by kind, the GPU pass and the host round trip.

use std::sync::Arc;
use std::time::{Duration, Instant};

use membound_gpu::{GpuContext, KvDType, SparseDType};

use crate::model::gpu::{OpKind, synthetic_config};
use crate::model::{Decoder, GpuLlama, GpuLlamaOptions, LlamaConfig, Site};
use crate::{Error, Result};

/// Settings of a decode benchmark.
#[derive(Clone, Debug)]
pub struct Config {
    /// Tokens timed per case.
    pub tokens: usize,
    /// Tokens decoded before timing (also fills the cache to where timing
    /// starts).
    pub warm_up_tokens: usize,
    /// Position timing starts at: the KV cache holds this many tokens, for
    /// long-context decode. The positions before it are filled by decoding.
    pub start_pos: usize,
    /// Positions the KV cache holds; `None`: enough for the run.
    pub context: Option<usize>,
    /// Repetitions of each dispatch in the profile (0: no profile).
    pub profile_reps: usize,
    /// Seed of synthetic weights.
    pub seed: u32,
    /// Command submissions per token (see [`GpuLlamaOptions::submissions`]).
    pub submissions: usize,
    /// Also run each spec with activation-sparse down projections whose
    /// thresholds skip this share of their inputs (calibrated on the GPU
    /// at the first timed position; f16 and 4-bit affine specs).
    pub sparsity: Option<f32>,
    /// How the KV cache stores keys and values.
    pub kv_cache: KvDType,
    /// Sparse cases take these per-layer down-projection thresholds (from
    /// a calibration sidecar) instead of calibrating to `sparsity`; the
    /// sidecar's target is `sparsity`.
    pub down_thresholds: Option<Vec<f32>>,
    /// With `sparsity`, make the gate/up projections activation-sparse too
    /// (their normalised input thresholded at the same target share).
    pub sparse_gate_up: bool,
    /// With `sparsity`, make the q/k/v and o projections activation-sparse
    /// too (every projection input thresholded at the same target share).
    pub sparse_attention: bool,
    /// Record the fused step (see [`GpuLlamaOptions::fuse`]); `false` for
    /// the unfused one, to measure what fusion buys.
    pub fuse: bool,
    /// Also time each case's floor: plain streaming reads of every weight
    /// matrix's bytes (a sparse one's: what it read in the last timed
    /// token), summed over a token.
    pub floor: bool,
    /// With `sparsity` and a synthetic model, also time each spec's
    /// zero-overhead bound ([`GpuLlamaOptions::bound_sparsity`]): the same
    /// projections dense over only the unskipped share of their inputs.
    pub bound: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            tokens: 64,
            warm_up_tokens: 16,
            start_pos: 0,
            context: None,
            profile_reps: 10,
            seed: 1,
            submissions: 4,
            sparsity: None,
            kv_cache: KvDType::F32,
            down_thresholds: None,
            fuse: true,
            sparse_gate_up: false,
            sparse_attention: false,
            floor: true,
            bound: false,
        }
    }
}

/// Where one token's time goes.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Split {
    /// Dispatches per token.
    pub dispatches: usize,
    /// Host time of one token (submission to read-back), µs.
    pub token_us: f64,
    /// GPU time of the token's pass, µs (with timestamps).
    pub pass_us: Option<f64>,
    /// Sum of each dispatch timed alone, µs, by kind: GEMVs (down
    /// projections included).
    pub gemv_us: f64,
    /// The down projections alone (dense or sparse), µs.
    pub down_us: f64,
    /// Attention kernels, µs.
    pub attention_us: f64,
    /// Embedding, norms, RoPE, SwiGLU, argmax, µs.
    pub elementwise_us: f64,
    /// `token_us` minus the kernels' own time: dispatch gaps, barriers,
    /// submission and read-back (only with GPU timestamps; without them
    /// each kernel's time includes a submission's latency).
    pub overhead_us: Option<f64>,
}

/// One measured case.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Row {
    /// Model name or path.
    pub model: String,
    /// Weight spec.
    pub weights: String,
    /// Target share of down-projection inputs skipped (sparse and bound
    /// rows).
    pub sparsity: Option<f64>,
    /// A zero-overhead bound row ([`Config::bound`]): dense projections
    /// over only `1 − sparsity` of their inputs; its tokens mean nothing.
    /// (Absent from reports older than the bound: false.)
    #[serde(default)]
    pub zero_overhead_bound: bool,
    /// Share actually skipped in the last timed token, over all layers.
    pub achieved_sparsity: Option<f64>,
    /// The same for the gate/up projections, when they are sparse.
    pub achieved_gate_up_sparsity: Option<f64>,
    /// The same for q/k/v, when sparse.
    pub achieved_qkv_sparsity: Option<f64>,
    /// The same for o, when sparse.
    pub achieved_o_sparsity: Option<f64>,
    /// Sparse rows: the down projections' time with τ = 0 (no input
    /// skipped but exact zeros), µs: the sparse kernel's overhead.
    pub down_dense_sparse_kernel_us: Option<f64>,
    /// Parameters in the weight matrices and embedding.
    pub params: u64,
    /// Weight bytes a token reads.
    pub weight_bytes: u64,
    /// KV-cache bytes on the device.
    pub kv_cache_bytes: u64,
    /// How the KV cache stores values.
    pub kv_cache: String,
    /// Position timing started at.
    pub start_pos: usize,
    /// Tokens timed.
    pub tokens: usize,
    /// Median ms per token.
    pub ms_per_token: f64,
    /// 1000 / `ms_per_token`.
    pub tokens_per_s: f64,
    /// The same tokens from the same position by
    /// [`GpuLlama::greedy_resident`] (no host step between tokens): wall
    /// time of the whole run ÷ tokens, ms. `None` where it could not run
    /// (the device refused the embedding table's size).
    pub resident_ms_per_token: Option<f64>,
    /// 1000 / `resident_ms_per_token`.
    pub resident_tokens_per_s: Option<f64>,
    /// `weight_bytes × tokens_per_s`, GB/s.
    pub effective_gbps: f64,
    /// Peak GB/s used for the roofline.
    pub peak_gbps: Option<f64>,
    /// Peak ÷ weight bytes.
    pub roofline_tokens_per_s: Option<f64>,
    /// Measured ÷ roofline.
    pub roofline_fraction: Option<f64>,
    /// The token's floor, ms: the sum over its weight matrices of a plain
    /// streaming read of each one's bytes (`stream_read.wgsl`, rotating
    /// copies totalling the bytes read, at most 512 MiB). Sparse rows count
    /// what each sparse matrix read in the last timed token (its active
    /// columns and its input, rounded to 1/32 or finer). No decode step
    /// can read those bytes faster; attention and the small ops come on
    /// top. `None` with the floor off.
    pub floor_ms_per_token: Option<f64>,
    /// `floor_ms_per_token / ms_per_token`.
    pub floor_fraction: Option<f64>,
    /// `floor_ms_per_token / resident_ms_per_token`.
    pub resident_floor_fraction: Option<f64>,
    /// Tokens/s over the first case's.
    pub speedup_vs_first: f64,
    /// Sparse and bound rows: tokens/s over the dense row of the same
    /// weights.
    pub speedup_vs_dense: Option<f64>,
    /// The same, GPU-resident.
    #[serde(default)]
    pub resident_speedup_vs_dense: Option<f64>,
    /// Sparse rows: the sparse kernel's overhead o, from its time with
    /// nothing skipped over the dense down projections' time, minus 1.
    pub sparse_overhead: Option<f64>,
    /// Sparse rows: the research notes' model of the down projections'
    /// speedup, 1 / (1 − s + o), with s the achieved sparsity.
    pub notes_model_down_speedup: Option<f64>,
    /// Sparse rows: measured dense ÷ sparse down-projection time.
    pub measured_down_speedup: Option<f64>,
    /// Where a token's time goes.
    pub split: Option<Split>,
}

/// `bytes` rounded to a multiple of the power of two nearest below 1/32 of
/// it (at least 256): within 1/32 of it, on a coarse enough grid that
/// similar sizes coincide.
fn round_relative(bytes: u64) -> u64 {
    let step = (bytes / 32).max(256);
    let step = 1u64 << step.ilog2();
    (bytes + step / 2) / step * step
}

/// The floor of a token that reads matrices of `sizes` bytes once each:
/// the sum of plain streaming reads of each size (each size timed once,
/// over rotating copies totalling the matrices' bytes, at most 512 MiB,
/// so a small model's floor reads from cache as its decode does), in ms.
pub fn token_floor_ms(ctx: &GpuContext, sizes: &[u64]) -> Result<f64> {
    let mut counts = std::collections::BTreeMap::<u64, u64>::new();
    for &s in sizes {
        *counts.entry(s).or_default() += 1;
    }
    let working_set = sizes.iter().sum::<u64>().min(512 << 20);
    let mut total = 0.0;
    for (&size, &n) in &counts {
        let copies = working_set.div_ceil(size.max(1)).min(1024) as usize;
        let t = super::kernels::time_floor(ctx, size, copies, Duration::from_millis(200), 10)?;
        total += n as f64 * t;
    }
    Ok(total * 1e3)
}

/// A whole run.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Report {
    /// Adapter name.
    pub adapter: String,
    /// Backend.
    pub backend: String,
    /// Where the peak came from.
    pub peak_source: Option<String>,
    /// The cases, in order.
    pub rows: Vec<Row>,
    /// UTC date of the run (from the system clock).
    pub unix_time: u64,
}

/// Makes a model's GPU decoder for one weight spec and options.
pub type BuildDecoder<'a> = Box<dyn FnMut(&str, GpuLlamaOptions) -> Result<GpuLlama> + 'a>;

/// What to decode: a model file (prepared by the caller) or a synthetic
/// shape.
pub enum Subject<'a> {
    /// `llama-1b` or `llama-8b`, weights made on the GPU.
    Synthetic(&'a str),
    /// A model the caller loaded; `build(spec)` makes its GPU decoder.
    Model {
        /// Shown in the report.
        name: String,
        /// Makes the decoder for one weight spec.
        build: BuildDecoder<'a>,
        /// Its configuration.
        cfg: LlamaConfig,
    },
}

/// One case of a spec: dense, sparse at a share with its column-major
/// storage, or the zero-overhead bound at a share.
#[derive(Clone, Copy)]
enum Case {
    Dense,
    Sparse(f32, SparseDType),
    Bound(f32),
}

/// The column-major storage matching a weight spec: f16, or 4-bit affine
/// with the same group size.
fn sparse_dtype(spec: &str) -> Result<SparseDType> {
    if spec.trim() == "f16" {
        return Ok(SparseDType::F16);
    }
    let mut s = membound_codec::Spec::parse(spec)?;
    if s.name == "affine" && s.take("bits", 4u32)? == 4 {
        let group: usize = s.take("group", 64)?;
        return Ok(SparseDType::Affine4 { group });
    }
    Err(Error::Request(format!(
        "sparse down projections run f16 and 4-bit affine weights, not {spec:?}"
    )))
}

fn params(cfg: &LlamaConfig) -> u64 {
    let (d, h, kv) = (cfg.dim as u64, cfg.hidden_dim as u64, cfg.kv_dim() as u64);
    let layer = d * (d + 2 * kv) + d * d + 3 * d * h;
    cfg.n_layers as u64 * layer + 2 * cfg.vocab_size as u64 * d
}

/// Decodes `subject` in each weight spec and reports tokens/s against the
/// roofline. `peak_gbps` overrides the datasheet table. `progress(msg)`
/// narrates long steps (building an 8B model takes seconds).
pub fn run(
    ctx: &Arc<GpuContext>,
    mut subject: Subject<'_>,
    specs: &[String],
    cfg: &Config,
    peak_gbps: Option<f64>,
    progress: &mut dyn FnMut(&str),
) -> Result<Report> {
    if specs.is_empty() || cfg.tokens == 0 {
        return Err(Error::Request(
            "a decode benchmark needs at least one weight spec and one token".into(),
        ));
    }
    let adapter = ctx.adapter().name.clone();
    let (peak, peak_source) = match peak_gbps {
        Some(p) => (Some(p), Some("--peak-gbps".to_owned())),
        None => match super::known_peak_gbps(&adapter) {
            Some(p) => (Some(p), Some("datasheet".to_owned())),
            None => (None, None),
        },
    };
    let (name, model_cfg) = match &subject {
        Subject::Synthetic(n) => (format!("synthetic {n}"), synthetic_config(n)?),
        Subject::Model { name, cfg, .. } => (name.clone(), cfg.clone()),
    };
    let needed = cfg.start_pos + cfg.warm_up_tokens + cfg.tokens + 1;
    let context = cfg.context.unwrap_or(needed);
    if context < needed {
        return Err(Error::Request(format!(
            "the run needs {needed} positions but the context is {context}"
        )));
    }
    if cfg.bound {
        if cfg.sparsity.is_none() {
            return Err(Error::Request(
                "the zero-overhead bound needs a sparsity to bound".into(),
            ));
        }
        if !matches!(subject, Subject::Synthetic(_)) {
            return Err(Error::Request(
                "the zero-overhead bound runs on synthetic models only (its tokens mean nothing)"
                    .into(),
            ));
        }
    }
    let mut cases = Vec::new();
    for spec in specs {
        cases.push((spec.clone(), Case::Dense));
        if let Some(s) = cfg.sparsity {
            cases.push((spec.clone(), Case::Sparse(s, sparse_dtype(spec)?)));
            if cfg.bound {
                cases.push((spec.clone(), Case::Bound(s)));
            }
        }
    }
    let mut rows: Vec<Row> = Vec::new();
    // The last dense row: what the sparse and bound rows after it compare with.
    let mut dense_row: Option<usize> = None;
    for (spec, case) in &cases {
        let (sparse, bound) = match *case {
            Case::Dense => (None, None),
            Case::Sparse(s, dtype) => (Some((s, dtype)), None),
            Case::Bound(s) => (None, Some(s)),
        };
        let opts = GpuLlamaOptions {
            bound_sparsity: bound,
            context: Some(context),
            submissions: cfg.submissions,
            sparse_down: sparse.map(|(_, d)| d),
            sparse_gate_up: cfg.sparse_gate_up,
            sparse_attention: cfg.sparse_attention,
            kv_cache: cfg.kv_cache,
            fuse: cfg.fuse,
            ..Default::default()
        };
        let sites = match (cfg.sparse_attention, cfg.sparse_gate_up) {
            (true, true) => "q/k/v, o, gate/up and down",
            (true, false) => "q/k/v, o and down",
            (false, true) => "gate/up and down",
            (false, false) => "down",
        };
        let label = match case {
            Case::Sparse(s, _) => format!(
                "{spec} weights, sparse {sites} projections at {:.0}%",
                s * 100.0
            ),
            Case::Bound(s) => format!(
                "{spec} weights, zero-overhead bound: {sites} projections dense over {:.0}% of their inputs",
                (1.0 - s) * 100.0
            ),
            Case::Dense => format!("{spec} weights"),
        };
        progress(&format!("building {name} with {label}"));
        let mut m = match &mut subject {
            Subject::Synthetic(_) => {
                GpuLlama::synthetic(Arc::clone(ctx), &model_cfg, spec, cfg.seed, opts)?
            }
            Subject::Model { build, .. } => build(spec, opts)?,
        };
        ctx.wait()?;
        progress(&format!("decoding {} tokens", needed - 1));
        let mut tok = 1u32;
        let mut pos = 0;
        while pos < cfg.start_pos + cfg.warm_up_tokens {
            tok = m.forward_argmax(tok, pos)?;
            pos += 1;
        }
        // Thresholds are calibrated at the first timed position, with the
        // cache holding the positions before it: at position 0 the
        // attention output is v itself (repeated over each KV head's query
        // heads), whose magnitudes are not those of later positions.
        if let Some((target, _)) = sparse {
            match &cfg.down_thresholds {
                Some(taus) => m.set_down_thresholds(taus)?,
                None => {
                    progress("calibrating down-projection thresholds");
                    m.calibrate_down(target, tok, pos)?;
                }
            }
            for site in [Site::Qkv, Site::O, Site::GateUp] {
                if m.is_site_sparse(site) {
                    progress(&format!("calibrating {} thresholds", site.name()));
                    m.calibrate_site(site, target, tok, pos)?;
                }
            }
        }
        let (tok0, pos0) = (tok, pos);
        let mut times = Vec::with_capacity(cfg.tokens);
        let mut chosen = Vec::with_capacity(cfg.tokens);
        for _ in 0..cfg.tokens {
            let t = Instant::now();
            tok = m.forward_argmax(tok, pos)?;
            times.push(t.elapsed());
            chosen.push(tok);
            pos += 1;
        }
        // The same tokens again with the host out of the loop; the first
        // (untimed) step puts the embedding table on the device.
        progress("decoding them again GPU-resident");
        let resident = match m.greedy_resident(tok0, pos0, 1) {
            Ok(_) => {
                let t = Instant::now();
                let again = m.greedy_resident(tok0, pos0, cfg.tokens)?;
                let ms = t.elapsed().as_secs_f64() * 1e3 / cfg.tokens as f64;
                if again != chosen {
                    return Err(Error::Request(format!(
                        "{name} {spec}: the GPU-resident loop chose {again:?}, \
                         step-by-step decoding {chosen:?}"
                    )));
                }
                Some(ms)
            }
            // Only a table the device cannot hold skips it; anything else
            // is an error like any other.
            Err(e @ Error::Gpu(membound_gpu::GpuError::BufferTooLarge { .. })) => {
                progress(&format!("GPU-resident decoding skipped: {e}"));
                None
            }
            Err(e) => return Err(e),
        };
        times.sort_unstable();
        let median = times[times.len() / 2];
        let achieved = if sparse.is_some() {
            let act = m.down_activity()?;
            let (a, t) = act.iter().fold((0, 0), |(a, t), (x, y)| (a + x, t + y));
            Some(1.0 - a as f64 / t as f64)
        } else {
            None
        };
        let achieved_at = |site: Site| -> Result<Option<f64>> {
            if !m.is_site_sparse(site) {
                return Ok(None);
            }
            let act = m.site_activity(site)?;
            let (a, t) = act.iter().fold((0, 0), |(a, t), (x, y)| (a + x, t + y));
            Ok(Some(1.0 - a as f64 / t as f64))
        };
        let achieved_gate_up = achieved_at(Site::GateUp)?;
        let achieved_qkv = achieved_at(Site::Qkv)?;
        let achieved_o = achieved_at(Site::O)?;
        // What the last timed token read, for the floor (before the
        // profile below changes the thresholds). A sparse matrix's bytes
        // are rounded to 1/32 or finer, so that layers reading about the
        // same share share one timing.
        let floor_sizes: Vec<u64> = if sparse.is_some() {
            let reads = m.matrix_bytes_read()?;
            reads
                .dense
                .into_iter()
                .chain(reads.sparse.into_iter().map(round_relative))
                .collect()
        } else {
            m.weight_matrix_bytes().to_vec()
        };
        let ms = median.as_secs_f64() * 1e3;
        let tps = 1e3 / ms;
        let bytes = m.weight_bytes_per_token();
        let split = if cfg.profile_reps > 0 {
            progress("profiling one token");
            let p = m.profile(pos, cfg.profile_reps)?;
            let us = |d: Duration| d.as_secs_f64() * 1e6;
            let kind = |k: OpKind| {
                p.kernels
                    .iter()
                    .filter(|(kk, _)| *kk == k)
                    .map(|(_, d)| us(*d))
                    .sum::<f64>()
            };
            Some(Split {
                down_us: kind(OpKind::Down) + kind(OpKind::SparseDown),
                dispatches: p.dispatches,
                token_us: us(p.token),
                pass_us: p.pass.map(us),
                gemv_us: kind(OpKind::Gemv)
                    + kind(OpKind::Down)
                    + kind(OpKind::SparseDown)
                    + kind(OpKind::SparseGateUp)
                    + kind(OpKind::SparseAttention),
                attention_us: kind(OpKind::Attention),
                elementwise_us: kind(OpKind::Elementwise),
                overhead_us: p.timestamps.then(|| us(p.token) - us(p.kernel_total())),
            })
        } else {
            None
        };
        let sparse_zero = if sparse.is_some() && cfg.profile_reps > 0 {
            m.set_down_thresholds(&[0.0])?;
            let p = m.profile(pos, cfg.profile_reps)?;
            Some(
                p.kernels
                    .iter()
                    .filter(|(k, _)| *k == OpKind::SparseDown)
                    .map(|(_, d)| d.as_secs_f64() * 1e6)
                    .sum::<f64>(),
            )
        } else {
            None
        };
        let roofline = peak.map(|p| p * 1e9 / bytes as f64);
        // The floor is timed with the model freed (its copies take memory).
        let kv_cache_bytes = m.kv_cache_bytes();
        drop(m);
        ctx.wait()?;
        let floor = if cfg.floor {
            progress("timing the floor (plain reads of what each weight matrix read)");
            Some(token_floor_ms(ctx, &floor_sizes)?)
        } else {
            None
        };
        let first = rows.first().map_or(tps, |r| r.tokens_per_s);
        let dense = dense_row
            .filter(|_| !matches!(case, Case::Dense))
            .map(|i| &rows[i]);
        if matches!(case, Case::Dense) {
            dense_row = Some(rows.len());
        }
        let dense_down = dense.and_then(|r| r.split.as_ref()).map(|s| s.down_us);
        let sparse_down = split.as_ref().map(|s| s.down_us);
        let overhead = match (sparse_zero, dense_down) {
            (Some(z), Some(d)) if d > 0.0 => Some(z / d - 1.0),
            _ => None,
        };
        rows.push(Row {
            speedup_vs_dense: dense.map(|r| tps / r.tokens_per_s),
            resident_speedup_vs_dense: dense
                .and_then(|r| r.resident_ms_per_token)
                .zip(resident)
                .map(|(d, s)| d / s),
            sparse_overhead: overhead,
            notes_model_down_speedup: match (achieved, overhead) {
                (Some(s), Some(o)) => Some(1.0 / (1.0 - s + o)),
                _ => None,
            },
            measured_down_speedup: match (dense_down, sparse_down, sparse) {
                (Some(d), Some(s), Some(_)) if s > 0.0 => Some(d / s),
                _ => None,
            },
            model: name.clone(),
            weights: spec.clone(),
            sparsity: sparse.map(|(s, _)| s).or(bound).map(f64::from),
            zero_overhead_bound: bound.is_some(),
            achieved_sparsity: achieved,
            achieved_gate_up_sparsity: achieved_gate_up,
            achieved_qkv_sparsity: achieved_qkv,
            achieved_o_sparsity: achieved_o,
            down_dense_sparse_kernel_us: sparse_zero,
            params: params(&model_cfg),
            weight_bytes: bytes,
            kv_cache_bytes,
            kv_cache: cfg.kv_cache.name().to_owned(),
            start_pos: cfg.start_pos + cfg.warm_up_tokens,
            tokens: cfg.tokens,
            ms_per_token: ms,
            tokens_per_s: tps,
            resident_ms_per_token: resident,
            resident_tokens_per_s: resident.map(|r| 1e3 / r),
            effective_gbps: bytes as f64 * tps / 1e9,
            peak_gbps: peak,
            roofline_tokens_per_s: roofline,
            roofline_fraction: roofline.map(|r| tps / r),
            floor_ms_per_token: floor,
            floor_fraction: floor.map(|f| f / ms),
            resident_floor_fraction: floor.zip(resident).map(|(f, r)| f / r),
            speedup_vs_first: tps / first,
            split,
        });
    }
    Ok(Report {
        adapter,
        backend: format!("{:?}", ctx.adapter().backend),
        peak_source,
        rows,
        unix_time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    })
}

#[cfg(test)]
mod tests {
    use super::round_relative;

    #[test]
    fn sizes_round_to_a_coarse_relative_grid() {
        for bytes in [
            1,
            255,
            256,
            1000,
            4096,
            65_537,
            7_340_032,
            58_720_256,
            123_456_789,
        ] {
            let r = round_relative(bytes);
            let step = 1u64 << (bytes / 32).max(256).ilog2();
            assert_eq!(r % step, 0, "{bytes} → {r}");
            assert!(r.abs_diff(bytes) <= step / 2, "{bytes} → {r}");
            assert!(
                r.abs_diff(bytes) as f64 <= (bytes as f64 / 64.0).max(128.0),
                "{bytes} → {r}"
            );
        }
        // Layers reading about the same share share one size.
        assert_eq!(round_relative(29_360_128), round_relative(29_380_000));
    }
}
