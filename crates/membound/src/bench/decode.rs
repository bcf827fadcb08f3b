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

use membound_gpu::GpuContext;

use crate::model::gpu::{OpKind, synthetic_config};
use crate::model::{Decoder, GpuLlama, GpuLlamaOptions, LlamaConfig};
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
            submissions: 1,
        }
    }
}

/// Where one token's time goes.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Split {
    /// Dispatches per token.
    pub dispatches: usize,
    /// Host time of one token (submission to read-back), µs.
    pub token_us: f64,
    /// GPU time of the token's pass, µs (with timestamps).
    pub pass_us: Option<f64>,
    /// Sum of each dispatch timed alone, µs, by kind.
    pub gemv_us: f64,
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
#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    /// Model name or path.
    pub model: String,
    /// Weight spec.
    pub weights: String,
    /// Parameters in the weight matrices and embedding.
    pub params: u64,
    /// Weight bytes a token reads.
    pub weight_bytes: u64,
    /// KV-cache bytes on the device.
    pub kv_cache_bytes: u64,
    /// Position timing started at.
    pub start_pos: usize,
    /// Tokens timed.
    pub tokens: usize,
    /// Median ms per token.
    pub ms_per_token: f64,
    /// 1000 / `ms_per_token`.
    pub tokens_per_s: f64,
    /// `weight_bytes × tokens_per_s`, GB/s.
    pub effective_gbps: f64,
    /// Peak GB/s used for the roofline.
    pub peak_gbps: Option<f64>,
    /// Peak ÷ weight bytes.
    pub roofline_tokens_per_s: Option<f64>,
    /// Measured ÷ roofline.
    pub roofline_fraction: Option<f64>,
    /// Tokens/s over the first case's.
    pub speedup_vs_first: f64,
    /// Where a token's time goes.
    pub split: Option<Split>,
}

/// A whole run.
#[derive(Clone, Debug, serde::Serialize)]
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
        build: Box<dyn FnMut(&str, GpuLlamaOptions) -> Result<GpuLlama> + 'a>,
        /// Its configuration.
        cfg: LlamaConfig,
    },
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
    let opts = GpuLlamaOptions {
        context: Some(context),
        submissions: cfg.submissions,
    };
    let mut rows: Vec<Row> = Vec::new();
    for spec in specs {
        progress(&format!("building {name} with {spec} weights"));
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
        let mut times = Vec::with_capacity(cfg.tokens);
        for _ in 0..cfg.tokens {
            let t = Instant::now();
            tok = m.forward_argmax(tok, pos)?;
            times.push(t.elapsed());
            pos += 1;
        }
        times.sort_unstable();
        let median = times[times.len() / 2];
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
                dispatches: p.dispatches,
                token_us: us(p.token),
                pass_us: p.pass.map(us),
                gemv_us: kind(OpKind::Gemv),
                attention_us: kind(OpKind::Attention),
                elementwise_us: kind(OpKind::Elementwise),
                overhead_us: p.timestamps.then(|| us(p.token) - us(p.kernel_total())),
            })
        } else {
            None
        };
        let roofline = peak.map(|p| p * 1e9 / bytes as f64);
        let first = rows.first().map_or(tps, |r| r.tokens_per_s);
        rows.push(Row {
            model: name.clone(),
            weights: spec.clone(),
            params: params(&model_cfg),
            weight_bytes: bytes,
            kv_cache_bytes: m.kv_cache_bytes(),
            start_pos: cfg.start_pos + cfg.warm_up_tokens,
            tokens: cfg.tokens,
            ms_per_token: ms,
            tokens_per_s: tps,
            effective_gbps: bytes as f64 * tps / 1e9,
            peak_gbps: peak,
            roofline_tokens_per_s: roofline,
            roofline_fraction: roofline.map(|r| tps / r),
            speedup_vs_first: tps / first,
            split,
        });
        drop(m);
        ctx.wait()?;
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
