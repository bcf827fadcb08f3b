//! Calibrated low-bit quantization of a LLaMA-family model: GPTQ, AWQ or
//! round-to-nearest per layer, optional mixed precision, written as a
//! `membound quantize` file (MLX affine layout) that [`load_llama`] reads
//! and the GPU affine kernels run.
//!
//! # Calibration data
//!
//! Inputs of every projection are recorded with the CPU reference decoder's
//! [`ActivationHook`] while it reads calibration tokens (default: the first
//! tokens of [`CALIB_TEXT`], `data/calib.txt`, original prose written for
//! this purpose that shares no text with the evaluation text
//! [`crate::eval::EVAL_TEXT`]). Nothing is stored per token: GPTQ
//! accumulates one [`Hessian`] per layer and input site (q/k/v share one,
//! gate/up share one), AWQ per-channel `mean |x|` and a thinned sample of
//! inputs ([`AwqStats`]).
//!
//! # Sequential calibration
//!
//! The layers are calibrated in [`CalibOptions::passes`] stages. Each stage
//! is one pass of the CPU decoder over the calibration tokens with every
//! earlier stage already quantized, so a layer's inputs come from the
//! quantized layers before it (the standard GPTQ procedure) at stage
//! granularity: `passes = n_layers` is fully sequential, `passes = 1` uses
//! inputs of the dense model for every layer (faster: one pass).
//!
//! # Methods
//!
//! * [`Method::Rtn`]: [`AffineCodec`] round-to-nearest (no calibration).
//! * [`Method::Gptq`]: [`gptq`] per matrix against its input Hessian.
//! * [`Method::Awq`]: [`awq_search`] per input site; the scale is folded
//!   into the previous operation, so nothing is added at run time: q/k/v
//!   share one scale folded into the attention RMSNorm weight, gate/up one
//!   folded into the MLP RMSNorm weight; o's input is the attention output,
//!   a mix of v's rows, so o's scale is folded into v's rows (and bias), tied
//!   across the query heads of one KV head (the channel means are averaged
//!   over the group); down's input is `SiLU(gate)·up`, linear in up, so its
//!   scale is folded into up's rows.
//!
//! # Mixed precision
//!
//! With [`CalibOptions::budget`] (average *code* bits per weight over the
//! block matrices; the g64 f16 scale and bias add 0.5 bit on top), each
//! layer gets one width of 2, 3, 4 or 8 bits (all seven matrices alike, so
//! q/k/v and gate/up still fuse on the GPU). Every layer is quantized at
//! every width with the chosen method (inputs of the dense model), its
//! sensitivity measured as the mean KL divergence from the dense model over
//! [`CalibOptions::sensitivity_tokens`] calibration tokens when only that
//! layer is quantized (8 bits is taken as lossless, KL 0), and a greedy
//! allocation starts from 8 bits everywhere and repeatedly lowers the layer
//! whose next step down costs the least KL per bit saved until the budget
//! is met.
//!
//! The token embedding and classifier stay f32 unless
//! [`CalibOptions::head`] names a codec for them (round-to-nearest).
//!
//! [`load_llama`]: crate::model::load_llama

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use membound_codec::{
    AffineCodec, AwqStats, Codec, Encoded, GptqOptions, Group, Hessian, Matrix, PartDType,
    ScaleDType, awq_search, codec_from_spec, gptq, scale_columns,
};
use membound_tensor::{DType, Format, MetaValue, OwnedTensor, TensorSource};

use crate::model::{ActivationHook, CpuLlama, LayerWeights, LlamaConfig, LlamaWeights, Site};
use crate::quantize::{EncodedEntry, META_CODEC, META_FORMAT, META_TENSORS, PartEntry, Quantized};
use crate::{Error, Result};

/// The default calibration text (`data/calib.txt`): about 1,500 words of
/// original English prose (a story, explanations, instructions, a dialogue,
/// a passage with numbers), disjoint from the evaluation text.
pub const CALIB_TEXT: &str = include_str!("../../../data/calib.txt");

/// Metadata key holding the calibration summary (JSON) of a calibrated file.
pub const META_METHOD: &str = "membound.calibration";

/// How each block matrix is quantized.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Method {
    /// Round to nearest.
    Rtn,
    /// GPTQ (Frantar et al. 2023).
    Gptq,
    /// AWQ (Lin et al. 2024).
    Awq,
}

impl Method {
    /// `rtn`, `gptq` or `awq`.
    pub fn name(self) -> &'static str {
        match self {
            Method::Rtn => "rtn",
            Method::Gptq => "gptq",
            Method::Awq => "awq",
        }
    }
}

impl std::str::FromStr for Method {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "rtn" => Ok(Method::Rtn),
            "gptq" => Ok(Method::Gptq),
            "awq" => Ok(Method::Awq),
            other => Err(Error::Request(format!(
                "unknown method {other:?}; use rtn, gptq or awq"
            ))),
        }
    }
}

/// Settings of [`calibrate`].
#[derive(Clone, Debug, PartialEq)]
pub struct CalibOptions {
    /// The method.
    pub method: Method,
    /// Codec of the block matrices (its bit width is overridden per layer
    /// under a budget).
    pub codec: AffineCodec,
    /// Codec spec of the embedding / classifier; `None` keeps them f32.
    pub head: Option<String>,
    /// Tokens per calibration window (each restarts the KV cache).
    pub window: usize,
    /// Calibration stages (1: dense inputs; `n_layers`: fully sequential).
    pub passes: usize,
    /// GPTQ damping, fraction of `mean(diag H)`.
    pub damp: f64,
    /// GPTQ activation order (static groups).
    pub act_order: bool,
    /// AWQ grid: α ∈ {0, 1/grid, …, 1}.
    pub awq_grid: usize,
    /// AWQ input samples kept per site for the loss.
    pub awq_samples: usize,
    /// Mixed precision: average code bits per weight over block matrices.
    pub budget: Option<f64>,
    /// Calibration tokens scored per sensitivity measurement.
    pub sensitivity_tokens: usize,
}

impl Default for CalibOptions {
    fn default() -> Self {
        Self {
            method: Method::Gptq,
            codec: AffineCodec::default(),
            head: None,
            window: 256,
            passes: 1,
            damp: 0.01,
            act_order: false,
            awq_grid: 20,
            awq_samples: 128,
            budget: None,
            sensitivity_tokens: 128,
        }
    }
}

/// Widths mixed precision chooses from.
pub const MIXED_BITS: [u32; 4] = [2, 3, 4, 8];

/// What [`calibrate`] produced.
#[derive(Clone, Debug)]
pub struct Calibrated {
    /// The quantized model: f32 fields hold the exact decodings (and AWQ's
    /// rescaled norms), [`LlamaWeights::encoded`] the encodings.
    pub weights: LlamaWeights,
    /// Code bits of each layer.
    pub layer_bits: Vec<u32>,
    /// Measured sensitivities (mixed precision only): per layer, `(bits,
    /// KL)` for 2, 3 and 4 bits.
    pub sensitivity: Vec<Vec<(u32, f64)>>,
    /// AWQ's α per layer and site (q/k/v, o, gate/up, down).
    pub awq_alpha: Vec<[f64; 4]>,
    /// Calibration tokens used.
    pub tokens: usize,
    /// Seconds spent.
    pub seconds: f64,
}

/// Progress: `(phase, done, total)`.
pub type Progress<'a> = &'a (dyn Fn(&str, usize, usize) + Sync);

fn site_index(s: Site) -> usize {
    match s {
        Site::Qkv => 0,
        Site::O => 1,
        Site::GateUp => 2,
        Site::Down => 3,
    }
}

/// What a recording pass collects for one layer and site.
#[derive(Default)]
struct SiteStats {
    hessian: Option<Hessian>,
    awq: Option<AwqStats>,
}

struct Record {
    layers: Range<usize>,
    stats: Vec<[SiteStats; 4]>,
    error: Option<String>,
}

struct Recorder(Arc<Mutex<Record>>);

impl ActivationHook for Recorder {
    fn on_input(&mut self, layer: usize, site: Site, x: &mut [f32]) {
        let Ok(mut r) = self.0.lock() else { return };
        if !r.layers.contains(&layer) || r.error.is_some() {
            return;
        }
        let i = layer - r.layers.start;
        let s = &mut r.stats[i][site_index(site)];
        let res = match (&mut s.hessian, &mut s.awq) {
            (Some(h), _) => h.add_batch(x),
            (_, Some(a)) => a.add(x),
            _ => Ok(()),
        };
        if let Err(e) = res {
            r.error = Some(format!("layer {layer}, {} input: {e}", site.name()));
        }
    }
}

fn site_width(cfg: &LlamaConfig, s: usize) -> usize {
    if s == 3 { cfg.hidden_dim } else { cfg.dim }
}

/// Checks calibration tokens against the model.
fn check_tokens(cfg: &LlamaConfig, tokens: &[u32]) -> Result<()> {
    if tokens.len() < 2 {
        return Err(Error::Request(format!(
            "calibration needs at least 2 tokens, got {}",
            tokens.len()
        )));
    }
    if let Some((i, t)) = tokens
        .iter()
        .enumerate()
        .find(|(_, t)| **t as usize >= cfg.vocab_size)
    {
        return Err(Error::Request(format!(
            "calibration token {i} has id {t}, outside the vocabulary of {}",
            cfg.vocab_size
        )));
    }
    Ok(())
}

/// A CPU decoder over `w` whose KV cache holds one window.
fn decoder(cfg: &LlamaConfig, w: LlamaWeights, window: usize) -> CpuLlama {
    let mut c = cfg.clone();
    c.max_seq_len = window.min(cfg.max_seq_len).max(1);
    CpuLlama::new(c, w)
}

/// One pass over `tokens` recording what `method` needs for `layers`.
fn record(
    cfg: &LlamaConfig,
    w: &LlamaWeights,
    tokens: &[u32],
    opts: &CalibOptions,
    layers: Range<usize>,
    progress: &dyn Fn(usize, usize),
) -> Result<Vec<[SiteStats; 4]>> {
    let window = opts.window.min(cfg.max_seq_len).max(2);
    let keep_every = (tokens.len() / opts.awq_samples.max(1)).max(1) as u64;
    let stats = layers
        .clone()
        .map(|_| {
            std::array::from_fn(|s| match opts.method {
                Method::Gptq => SiteStats {
                    hessian: Some(Hessian::new(site_width(cfg, s))),
                    awq: None,
                },
                Method::Awq => SiteStats {
                    hessian: None,
                    awq: Some(AwqStats::new(
                        site_width(cfg, s),
                        keep_every,
                        opts.awq_samples,
                    )),
                },
                Method::Rtn => SiteStats::default(),
            })
        })
        .collect();
    let state = Arc::new(Mutex::new(Record {
        layers,
        stats,
        error: None,
    }));
    let mut m = decoder(cfg, w.clone(), window);
    m.set_hook(Some(Box::new(Recorder(Arc::clone(&state)))));
    let mut done = 0;
    for chunk in tokens.chunks(window) {
        for (pos, &t) in chunk.iter().enumerate() {
            m.forward(t, pos)?;
            done += 1;
            progress(done, tokens.len());
        }
    }
    drop(m);
    let r = Arc::try_unwrap(state)
        .map_err(|_| Error::Request("calibration hook still in use".into()))?
        .into_inner()
        .map_err(|_| Error::Request("calibration hook panicked".into()))?;
    if let Some(e) = r.error {
        return Err(Error::Request(format!("calibration: {e}")));
    }
    Ok(r.stats)
}

/// Which matrices of a layer exist, by role suffix, with their shapes.
const ROLES: [&str; 7] = ["wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"];

fn matrix_mut<'a>(l: &'a mut LayerWeights, role: &str) -> &'a mut Vec<f32> {
    match role {
        "wq" => &mut l.wq,
        "wk" => &mut l.wk,
        "wv" => &mut l.wv,
        "wo" => &mut l.wo,
        "w_gate" => &mut l.w_gate,
        "w_up" => &mut l.w_up,
        _ => &mut l.w_down,
    }
}

fn site_of(role: &str) -> usize {
    match role {
        "wq" | "wk" | "wv" => 0,
        "wo" => 1,
        "w_gate" | "w_up" => 2,
        _ => 3,
    }
}

/// Multiplies row `r` of `m` (`cols` wide) by `f[r]`.
fn scale_rows(m: &mut [f32], cols: usize, f: impl Fn(usize) -> f32) {
    for (r, row) in m.chunks_mut(cols).enumerate() {
        let k = f(r);
        row.iter_mut().for_each(|v| *v *= k);
    }
}

/// Encodings of one layer by role suffix.
type LayerEncodings = Vec<(&'static str, Encoded)>;

/// What [`quantize_layer`] returns: encodings and AWQ's α per site.
type LayerOut = (LayerEncodings, [f64; 4]);

/// Quantizes one layer in place with `codec`; returns the encodings by role
/// suffix and AWQ's α per site.
fn quantize_layer(
    cfg: &LlamaConfig,
    lw: &mut LayerWeights,
    stats: &[SiteStats; 4],
    codec: &AffineCodec,
    opts: &CalibOptions,
) -> Result<LayerOut> {
    let d = cfg.dim;
    let h = cfg.hidden_dim;
    let cols = |role: &str| if role == "w_down" { h } else { d };
    let mut alphas = [f64::NAN; 4];
    let mut out = Vec::with_capacity(7);
    match opts.method {
        Method::Rtn => {
            for role in ROLES {
                let m = matrix_mut(lw, role);
                let c = cols(role);
                let e = codec.encode(Matrix::new(m.len() / c, c, m)?)?;
                *m = codec.decode(&e)?;
                out.push((role, e));
            }
        }
        Method::Gptq => {
            let hs: Vec<Vec<f64>> = stats
                .iter()
                .enumerate()
                .map(|(s, st)| match &st.hessian {
                    Some(hh) => hh.clone().finish(),
                    None => Err(membound_codec::Error::Input {
                        codec: "gptq".into(),
                        problem: format!("no Hessian for site {s}"),
                    }),
                })
                .collect::<std::result::Result<_, _>>()?;
            let g = GptqOptions {
                damp: opts.damp,
                act_order: opts.act_order,
                ..Default::default()
            };
            for role in ROLES {
                let m = matrix_mut(lw, role);
                let c = cols(role);
                let e = gptq(
                    codec,
                    Matrix::new(m.len() / c, c, m)?,
                    &hs[site_of(role)],
                    &g,
                )?;
                *m = codec.decode(&e)?;
                out.push((role, e));
            }
        }
        Method::Awq => {
            let st = |s: usize| {
                stats[s]
                    .awq
                    .as_ref()
                    .ok_or_else(|| Error::Request(format!("AWQ statistics missing for site {s}")))
            };
            let hd = cfg.head_dim();
            let group = cfg.n_heads / cfg.n_kv_heads.max(1);
            // o: tie channel statistics across the query heads of a KV head,
            // fold 1/s into v's rows.
            let so = {
                let a = st(1)?;
                let mut mean = a.mean_abs()?;
                if group > 1 {
                    let kvd = cfg.kv_dim();
                    let mut tied = vec![0.0; kvd];
                    for (c, m) in mean.iter().enumerate() {
                        let (head, i) = (c / hd, c % hd);
                        tied[(head / group) * hd + i] += m / group as f64;
                    }
                    for (c, m) in mean.iter_mut().enumerate() {
                        *m = tied[(c / hd / group) * hd + c % hd];
                    }
                }
                let ch = awq_search(
                    codec,
                    &[Matrix::new(d, d, &lw.wo)?],
                    &mean,
                    a.samples(),
                    opts.awq_grid,
                )?;
                alphas[1] = ch.alpha;
                ch.scales
            };
            // v row r (KV head kvh, dim i) feeds o's columns h·hd + i of
            // every query head h of that KV head: all carry the same s.
            let sv = |r: usize| 1.0 / so[(r / hd) * group * hd + r % hd];
            scale_rows(&mut lw.wv, d, sv);
            if let Some(b) = lw.bv.as_mut() {
                b.iter_mut().enumerate().for_each(|(r, v)| *v *= sv(r));
            }
            // down: fold 1/s into up's rows.
            let sd = {
                let a = st(3)?;
                let ch = awq_search(
                    codec,
                    &[Matrix::new(d, h, &lw.w_down)?],
                    &a.mean_abs()?,
                    a.samples(),
                    opts.awq_grid,
                )?;
                alphas[3] = ch.alpha;
                ch.scales
            };
            scale_rows(&mut lw.w_up, d, |r| 1.0 / sd[r]);
            // q/k/v and gate/up: fold 1/s into the RMSNorm weights.
            let sq = {
                let a = st(0)?;
                let ch = awq_search(
                    codec,
                    &[
                        Matrix::new(d, d, &lw.wq)?,
                        Matrix::new(lw.wk.len() / d, d, &lw.wk)?,
                        Matrix::new(lw.wv.len() / d, d, &lw.wv)?,
                    ],
                    &a.mean_abs()?,
                    a.samples(),
                    opts.awq_grid,
                )?;
                alphas[0] = ch.alpha;
                ch.scales
            };
            let sg = {
                let a = st(2)?;
                let ch = awq_search(
                    codec,
                    &[Matrix::new(h, d, &lw.w_gate)?, Matrix::new(h, d, &lw.w_up)?],
                    &a.mean_abs()?,
                    a.samples(),
                    opts.awq_grid,
                )?;
                alphas[2] = ch.alpha;
                ch.scales
            };
            lw.attn_norm.iter_mut().zip(&sq).for_each(|(g, s)| *g /= s);
            lw.ffn_norm.iter_mut().zip(&sg).for_each(|(g, s)| *g /= s);
            for role in ROLES {
                let s = match site_of(role) {
                    0 => &sq,
                    1 => &so,
                    2 => &sg,
                    _ => &sd,
                };
                let m = matrix_mut(lw, role);
                let c = cols(role);
                let scaled = scale_columns(Matrix::new(m.len() / c, c, m)?, s);
                let e = codec.encode(Matrix::new(m.len() / c, c, &scaled)?)?;
                // The model now computes Q(W·s) times the input scaled down
                // by the folded 1/s: its f32 weights are the decoding, as in
                // the written file.
                *m = codec.decode(&e)?;
                out.push((role, e));
            }
        }
    }
    Ok((out, alphas))
}

/// `c` at another bit width.
fn codec_with_bits(c: &AffineCodec, bits: u32) -> Result<AffineCodec> {
    Ok(AffineCodec::new(bits, c.group, c.scale)?)
}

/// Checks options against the model.
fn check_options(cfg: &LlamaConfig, opts: &CalibOptions) -> Result<()> {
    if opts.passes == 0 || opts.passes > cfg.n_layers.max(1) {
        return Err(Error::Request(format!(
            "passes must be 1 to {} (the number of layers), got {}",
            cfg.n_layers, opts.passes
        )));
    }
    if opts.window < 2 {
        return Err(Error::Request(
            "calibration window must be at least 2".into(),
        ));
    }
    if let Some(b) = opts.budget
        && !(2.0..=8.0).contains(&b)
    {
        return Err(Error::Request(format!(
            "budget {b} bits/weight: mixed precision chooses 2 to 8 bits per layer"
        )));
    }
    if !(opts.damp.is_finite() && opts.damp >= 0.0) {
        return Err(Error::Request(format!(
            "damping {} must be finite and ≥ 0",
            opts.damp
        )));
    }
    if opts.method == Method::Awq && cfg.n_kv_heads > 0 && cfg.n_heads % cfg.n_kv_heads != 0 {
        return Err(Error::Request(
            "AWQ needs n_heads to be a multiple of n_kv_heads".into(),
        ));
    }
    if let Some(h) = &opts.head {
        codec_from_spec(h)?;
    }
    Ok(())
}

/// Mean `KL(ref ‖ model)` over positions of `tokens`, the reference given
/// as log-probabilities per scored position.
fn mean_kl(
    cfg: &LlamaConfig,
    w: LlamaWeights,
    tokens: &[u32],
    window: usize,
    ref_lp: &[Vec<f64>],
) -> Result<f64> {
    let mut m = decoder(cfg, w, window);
    let (mut kl, mut n) = (0.0, 0usize);
    for chunk in tokens.chunks(window) {
        for (pos, &t) in chunk.iter().enumerate() {
            if n == ref_lp.len() {
                break;
            }
            let lp = crate::eval::log_softmax(&m.forward(t, pos)?);
            let r = &ref_lp[n];
            kl += r
                .iter()
                .zip(&lp)
                .filter(|(a, _)| a.is_finite())
                .map(|(a, b)| a.exp() * (a - b))
                .sum::<f64>();
            n += 1;
        }
    }
    Ok(kl / n.max(1) as f64)
}

/// Quantizes the block matrices of `w` (see the module documentation),
/// calibrating on `tokens`. `progress(phase, done, total)` reports each
/// phase.
pub fn calibrate(
    cfg: &LlamaConfig,
    w: &LlamaWeights,
    tokens: &[u32],
    opts: &CalibOptions,
    progress: Progress<'_>,
) -> Result<Calibrated> {
    let t0 = Instant::now();
    check_options(cfg, opts)?;
    check_tokens(cfg, tokens)?;
    let nl = cfg.n_layers;
    let mut out = w.clone();
    out.encoded.clear();
    let mut alphas = vec![[f64::NAN; 4]; nl];
    let mut sensitivity = Vec::new();
    let layer_bits;
    if let Some(budget) = opts.budget {
        // Every layer at every width, from dense inputs.
        let stats = if opts.method == Method::Rtn {
            (0..nl).map(|_| Default::default()).collect()
        } else {
            record(cfg, w, tokens, opts, 0..nl, &|d, t| {
                progress("recording", d, t)
            })?
        };
        let mut cands: Vec<Vec<(LayerWeights, LayerEncodings, [f64; 4])>> = Vec::with_capacity(nl);
        for (l, st) in stats.iter().enumerate() {
            let mut per = Vec::new();
            for bits in MIXED_BITS {
                let mut lw = w.layers[l].clone();
                let c = codec_with_bits(&opts.codec, bits)?;
                let (enc, a) = quantize_layer(cfg, &mut lw, st, &c, opts)?;
                per.push((lw, enc, a));
            }
            cands.push(per);
            progress("quantizing", l + 1, nl);
        }
        drop(stats);
        // Sensitivity: KL with one layer quantized.
        let window = opts.window.min(cfg.max_seq_len).max(2);
        let stoks = &tokens[..opts.sensitivity_tokens.clamp(2, tokens.len())];
        let mut ref_lp = Vec::new();
        {
            let mut m = decoder(cfg, w.clone(), window);
            for chunk in stoks.chunks(window) {
                for (pos, &t) in chunk.iter().enumerate() {
                    ref_lp.push(crate::eval::log_softmax(&m.forward(t, pos)?));
                }
            }
        }
        let lower = &MIXED_BITS[..MIXED_BITS.len() - 1];
        let total = nl * lower.len();
        let mut kl = vec![vec![0.0; MIXED_BITS.len()]; nl];
        for l in 0..nl {
            for (bi, _) in lower.iter().enumerate() {
                let mut tw = w.clone();
                tw.encoded.clear();
                tw.layers[l] = cands[l][bi].0.clone();
                kl[l][bi] = mean_kl(cfg, tw, stoks, window, &ref_lp)?.max(0.0);
                progress("sensitivity", l * lower.len() + bi + 1, total);
            }
        }
        sensitivity = kl
            .iter()
            .map(|k| lower.iter().zip(k).map(|(&b, &v)| (b, v)).collect())
            .collect();
        // Greedy: from 8 bits everywhere, lower the cheapest step.
        let weights_of = |_l: usize| 1.0f64; // every LLaMA block has the same size
        let mut choice = vec![MIXED_BITS.len() - 1; nl];
        let avg = |c: &[usize]| {
            c.iter()
                .enumerate()
                .map(|(l, &i)| MIXED_BITS[i] as f64 * weights_of(l))
                .sum::<f64>()
                / (0..nl).map(weights_of).sum::<f64>().max(1.0)
        };
        while avg(&choice) > budget + 1e-9 {
            let best = (0..nl)
                .filter(|&l| choice[l] > 0)
                .map(|l| {
                    let (i, j) = (choice[l], choice[l] - 1);
                    let saved = (MIXED_BITS[i] - MIXED_BITS[j]) as f64 * weights_of(l);
                    let cost = (kl[l][j] - kl[l][i]).max(0.0) / saved;
                    (l, cost)
                })
                .min_by(|a, b| a.1.total_cmp(&b.1));
            let Some((l, _)) = best else { break };
            choice[l] -= 1;
        }
        layer_bits = choice.iter().map(|&i| MIXED_BITS[i]).collect::<Vec<_>>();
        for (l, per) in cands.into_iter().enumerate() {
            let (lw, enc, a) = per.into_iter().nth(choice[l]).expect("candidate");
            out.layers[l] = lw;
            alphas[l] = a;
            for (role, e) in enc {
                out.encoded.insert(format!("layers.{l}.{role}"), e);
            }
        }
    } else {
        let passes = opts.passes.min(nl.max(1));
        let mut done_layers = 0;
        for p in 0..passes {
            let (a, b) = (nl * p / passes, nl * (p + 1) / passes);
            if a == b {
                continue;
            }
            let stats = if opts.method == Method::Rtn {
                (a..b).map(|_| Default::default()).collect()
            } else {
                let phase = format!("recording {}/{passes}", p + 1);
                record(cfg, &out, tokens, opts, a..b, &|d, t| {
                    progress(&phase, d, t)
                })?
            };
            for (i, st) in stats.iter().enumerate() {
                let l = a + i;
                let (enc, al) = quantize_layer(cfg, &mut out.layers[l], st, &opts.codec, opts)?;
                alphas[l] = al;
                for (role, e) in enc {
                    out.encoded.insert(format!("layers.{l}.{role}"), e);
                }
                done_layers += 1;
                progress("quantizing", done_layers, nl);
            }
        }
        layer_bits = vec![opts.codec.bits; nl];
    }
    if let Some(spec) = &opts.head {
        let c = codec_from_spec(spec)?;
        let d = cfg.dim;
        let m = out.classifier.as_ref().unwrap_or(&out.embed);
        let e = c.encode(Matrix::new(m.len() / d.max(1), d, m)?)?;
        let dq = c.decode(&e)?;
        match out.classifier.as_mut() {
            Some(cl) => *cl = dq,
            None => out.embed = dq,
        }
        out.encoded.insert("classifier".into(), e);
    }
    Ok(Calibrated {
        weights: out,
        layer_bits,
        sensitivity,
        awq_alpha: alphas,
        tokens: tokens.len(),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Tokens of `text` for calibration: the first `max` of its encoding (see
/// [`encode_lossy`]).
pub fn calibration_tokens(
    tokenizer: &crate::tokenizer::Tokenizer,
    text: &str,
    max: usize,
) -> Result<Vec<u32>> {
    let mut t = encode_lossy(tokenizer, text)?.0;
    t.truncate(max);
    Ok(t)
}

/// Encodes `text` with a BOS token; characters the vocabulary cannot
/// represent (e.g. newlines and digits for a character-level llama2.c
/// model without byte tokens) are replaced by spaces first. Returns the
/// tokens and how many characters were replaced.
pub fn encode_lossy(
    tokenizer: &crate::tokenizer::Tokenizer,
    text: &str,
) -> Result<(Vec<u32>, usize)> {
    if let Ok(t) = tokenizer.encode(text, true) {
        return Ok((t, 0));
    }
    let mut ok: std::collections::HashMap<char, bool> = std::collections::HashMap::new();
    let mut replaced = 0;
    let clean: String = text
        .chars()
        .map(|c| {
            let good = *ok
                .entry(c)
                .or_insert_with(|| tokenizer.encode(&c.to_string(), false).is_ok());
            if good {
                c
            } else {
                replaced += 1;
                ' '
            }
        })
        .collect();
    Ok((tokenizer.encode(&clean, true)?, replaced))
}

/// Tensor names of a block matrix / norm / bias in `format`'s convention.
fn layer_name(format: Format, i: usize, part: &str) -> String {
    let gguf = format == Format::Gguf;
    let (g, h) = match part {
        "attn_norm" => ("attn_norm.weight", "input_layernorm.weight"),
        "wq" => ("attn_q.weight", "self_attn.q_proj.weight"),
        "wk" => ("attn_k.weight", "self_attn.k_proj.weight"),
        "wv" => ("attn_v.weight", "self_attn.v_proj.weight"),
        "bq" => ("attn_q.bias", "self_attn.q_proj.bias"),
        "bk" => ("attn_k.bias", "self_attn.k_proj.bias"),
        "bv" => ("attn_v.bias", "self_attn.v_proj.bias"),
        "wo" => ("attn_output.weight", "self_attn.o_proj.weight"),
        "ffn_norm" => ("ffn_norm.weight", "post_attention_layernorm.weight"),
        "w_gate" => ("ffn_gate.weight", "mlp.gate_proj.weight"),
        "w_up" => ("ffn_up.weight", "mlp.up_proj.weight"),
        _ => ("ffn_down.weight", "mlp.down_proj.weight"),
    };
    if gguf {
        format!("blk.{i}.{g}")
    } else {
        format!("model.layers.{i}.{h}")
    }
}

/// What a source tensor is in the calibrated model.
enum Slot<'a> {
    Encoded(&'a Encoded),
    Values(&'a [f32]),
    Copy,
}

fn f32_tensor(name: &str, shape: &[usize], v: &[f32]) -> OwnedTensor {
    OwnedTensor {
        name: name.into(),
        dtype: DType::F32,
        shape: shape.to_vec(),
        data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

fn dtype_of(p: PartDType) -> DType {
    match p {
        PartDType::U8 => DType::U8,
        PartDType::U16 => DType::U16,
        PartDType::U32 => DType::U32,
        PartDType::F16 => DType::F16,
        PartDType::BF16 => DType::BF16,
        PartDType::F32 => DType::F32,
    }
}

fn meta_string(v: &MetaValue) -> String {
    match v {
        MetaValue::String(s) => s.clone(),
        other => serde_json::to_string(other).unwrap_or_default(),
    }
}

/// The `membound quantize` file of a calibrated model of `source` (GGUF or
/// llama2.c): encoded block matrices (and head) in MLX naming, every norm
/// and bias as f32 from `c.weights` (AWQ rescales them), every other tensor
/// copied (GGUF blocks dequantized). Write it with
/// [`crate::quantize::write`].
pub fn to_quantized(
    source: &dyn TensorSource,
    cfg: &LlamaConfig,
    c: &Calibrated,
    summary: serde_json::Value,
) -> Result<Quantized> {
    let format = source.format();
    let path = source.path().to_path_buf();
    if format == Format::Safetensors {
        return Err(Error::Model {
            path: path.display().to_string(),
            problem:
                "calibrated quantization writes GGUF and llama2.c sources; this is safetensors"
                    .into(),
        });
    }
    let w = &c.weights;
    let mut slots: BTreeMap<String, Slot<'_>> = BTreeMap::new();
    for (i, l) in w.layers.iter().enumerate() {
        for role in ROLES {
            if let Some(e) = w.encoded.get(&format!("layers.{i}.{role}")) {
                slots.insert(layer_name(format, i, role), Slot::Encoded(e));
            }
        }
        slots.insert(
            layer_name(format, i, "attn_norm"),
            Slot::Values(&l.attn_norm),
        );
        slots.insert(layer_name(format, i, "ffn_norm"), Slot::Values(&l.ffn_norm));
        for (p, b) in [("bq", &l.bq), ("bk", &l.bk), ("bv", &l.bv)] {
            if let Some(b) = b {
                slots.insert(layer_name(format, i, p), Slot::Values(b));
            }
        }
    }
    let (embed, norm, classifier) = if format == Format::Gguf {
        ("token_embd.weight", "output_norm.weight", "output.weight")
    } else {
        (
            "model.embed_tokens.weight",
            "model.norm.weight",
            "lm_head.weight",
        )
    };
    slots.insert(norm.into(), Slot::Values(&w.norm));
    match (&w.classifier, w.encoded.get("classifier")) {
        (Some(_), Some(e)) => {
            slots.insert(classifier.into(), Slot::Encoded(e));
            slots.insert(embed.into(), Slot::Values(&w.embed));
        }
        (Some(cl), None) => {
            slots.insert(classifier.into(), Slot::Values(cl));
            slots.insert(embed.into(), Slot::Values(&w.embed));
        }
        (None, Some(e)) => {
            slots.insert(embed.into(), Slot::Encoded(e));
        }
        (None, None) => {
            slots.insert(embed.into(), Slot::Values(&w.embed));
        }
    }
    let mut tensors = Vec::new();
    let mut entries = serde_json::Map::new();
    let mut report = Vec::new();
    for t in source.tensors() {
        let name = t.name();
        let mut rep = crate::quantize::TensorReport {
            name: name.into(),
            dtype: t.dtype().to_string(),
            shape: t.shape().to_vec(),
            action: "copied".into(),
            bits_per_weight: None,
            sqnr_db: None,
            stored_as: vec![name.into()],
        };
        match slots.get(name).unwrap_or(&Slot::Copy) {
            Slot::Encoded(e) => {
                let stem = name.strip_suffix(".weight").unwrap_or(name);
                let mut parts = Vec::new();
                for p in &e.parts {
                    let n = if p.name == "weight" {
                        name.to_string()
                    } else {
                        format!("{stem}.{}", p.name)
                    };
                    tensors.push(OwnedTensor {
                        name: n.clone(),
                        dtype: dtype_of(p.dtype),
                        shape: p.shape.clone(),
                        data: p.data.clone(),
                    });
                    parts.push(PartEntry {
                        part: p.name.clone(),
                        tensor: n,
                    });
                }
                rep.action = "encoded".into();
                rep.bits_per_weight = Some(e.bits_per_weight());
                rep.stored_as = parts.iter().map(|p| p.tensor.clone()).collect();
                let entry = EncodedEntry {
                    spec: e.spec.clone(),
                    rows: e.rows,
                    cols: e.cols,
                    parts,
                };
                entries.insert(
                    name.into(),
                    serde_json::to_value(entry).map_err(|e| Error::Request(e.to_string()))?,
                );
            }
            Slot::Values(v) => {
                if v.len() != t.shape().iter().product::<usize>() {
                    return Err(Error::Model {
                        path: path.display().to_string(),
                        problem: format!("tensor {name:?} does not match the model's shape"),
                    });
                }
                rep.action = "f32".into();
                tensors.push(f32_tensor(name, t.shape(), v));
            }
            Slot::Copy => {
                if let DType::Ggml(_) = t.dtype() {
                    rep.action = "dequantized".into();
                    tensors.push(f32_tensor(name, t.shape(), &t.to_f32()?));
                } else {
                    tensors.push(OwnedTensor {
                        name: name.into(),
                        dtype: t.dtype(),
                        shape: t.shape().to_vec(),
                        data: t.data().to_vec(),
                    });
                }
            }
        }
        report.push(rep);
    }
    let mut names = std::collections::HashSet::new();
    for t in &tensors {
        if !names.insert(t.name.clone()) {
            return Err(Error::Model {
                path: path.display().to_string(),
                problem: format!("two tensors would be stored as {:?}", t.name),
            });
        }
    }
    let mut metadata: Vec<(String, String)> = source
        .metadata()
        .iter()
        .filter(|(k, _)| !k.starts_with("membound."))
        .map(|(k, v)| (k.clone(), meta_string(v)))
        .collect();
    let specs: std::collections::BTreeSet<&str> =
        w.encoded.values().map(|e| e.spec.as_str()).collect();
    let codec = specs.into_iter().collect::<Vec<_>>().join(" + ");
    metadata.push(("membound.source_format".into(), format.to_string()));
    metadata.push((
        "membound.source_file".into(),
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    ));
    metadata.push((META_FORMAT.into(), crate::quantize::FORMAT.into()));
    metadata.push((META_CODEC.into(), codec.clone()));
    metadata.push((
        META_TENSORS.into(),
        serde_json::Value::Object(entries).to_string(),
    ));
    metadata.push((META_METHOD.into(), summary.to_string()));
    if w.layers.len() != cfg.n_layers {
        return Err(Error::Request(format!(
            "{} layers calibrated, the model has {}",
            w.layers.len(),
            cfg.n_layers
        )));
    }
    Ok(Quantized {
        codec,
        tensors,
        metadata,
        report,
    })
}

/// Scale type helper for callers building codecs: `f16` unless named.
pub fn affine_codec(bits: u32, group: Group) -> Result<AffineCodec> {
    Ok(AffineCodec::new(bits, group, ScaleDType::F16)?)
}

/// Parses an `affine:...` spec (the only codec calibration writes).
pub fn parse_affine(spec: &str) -> Result<AffineCodec> {
    let s = membound_codec::Spec::parse(spec)?;
    if s.name != "affine" {
        return Err(Error::Request(format!(
            "calibrated methods write the affine (MLX) layout; {spec:?} is not affine"
        )));
    }
    Ok(AffineCodec::from_spec(s)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_parse() {
        assert_eq!("GPTQ".parse::<Method>().unwrap(), Method::Gptq);
        assert!("foo".parse::<Method>().is_err());
        assert!(parse_affine("nf4").is_err());
        assert_eq!(parse_affine("affine:bits=3").unwrap().bits, 3);
        assert!(!CALIB_TEXT.is_empty());
    }
}
