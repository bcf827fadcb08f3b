//! The GPU decoder: weights and KV cache resident on the device, one command
//! submission per token, and only the sampled token (or the logits, when
//! asked) read back.
//!
//! A model reaches the GPU in two steps. [`prepare`] stores every matrix as
//! its [`WeightPlan`] says (f32, f16, or any codec a GPU kernel runs), fusing
//! q/k/v into one matrix and gate/up into another so each is one GEMV;
//! [`PreparedModel::decoded_weights`] gives the exact weights the GPU will
//! use, for the CPU reference. [`GpuLlama::new`] uploads them and records the
//! token's dispatches once:
//!
//! ```text
//! (embedding row written by the host)
//!       → [add+RMSNorm → qkv GEMV → attention (bias, RoPE, KV write fused) → o GEMV
//!          → add+RMSNorm → gate/up GEMV → SwiGLU → down GEMV] × layers
//!       → add+RMSNorm → classifier GEMV → argmax
//! ```
//!
//! [`GpuLlama::synthetic`] builds a model of a real size with weights
//! generated on the GPU from a seed, for decode benchmarks without a file.

use std::sync::Arc;
use std::time::{Duration, Instant};

use half::f16;
use membound_codec::{AffineCodec, Encoded, Spec, codec_from_spec};
use membound_gpu::SparseInput;
use membound_gpu::kernels::Fusion;
use membound_gpu::kernels::llama as ops;
use membound_gpu::wgpu;
use membound_gpu::{
    AffineGemv, AttentionShape, DenseGemv, Dispatch, GpuBuffer, GpuContext, GpuVector, KvCache,
    KvDType, LutGemv, SparseDType, SparseGemv, StepBuffer, Threshold, WeightDType,
};
use rayon::prelude::*;

use super::{Decoder, LlamaConfig, LlamaWeights, RopeLayout, Site};
use crate::{Error, Result};

/// Codecs whose encodings a GPU kernel runs directly.
pub const GPU_CODECS: &[&str] = &["affine", "nf4", "kmeans", "poly", "polymse"];

/// How each weight matrix is stored on the GPU.
///
/// A spec is `f32`, `f16`, or a codec spec whose codec has a GPU kernel
/// ([`GPU_CODECS`], e.g. `affine:bits=4,group=64`). Matrices are named by
/// role: `layers.N.qkv` (q, k and v fused), `layers.N.wo`, `layers.N.gate_up`
/// (gate and up fused), `layers.N.w_down` and `classifier`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct WeightPlan {
    /// The spec of every matrix no other rule names.
    pub weights: String,
    /// The classifier's spec; `None` follows `weights`.
    pub classifier: Option<String>,
    /// `(pattern, spec)` pairs, first match wins; `*` in a pattern matches
    /// any run of characters (`layers.*.w_down`, `layers.0.*`).
    pub overrides: Vec<(String, String)>,
}

impl WeightPlan {
    /// Every matrix in `spec`.
    pub fn uniform(spec: &str) -> Self {
        Self {
            weights: spec.to_owned(),
            classifier: None,
            overrides: Vec::new(),
        }
    }

    /// The spec of the matrix `role`.
    pub fn spec_for(&self, role: &str) -> &str {
        if let Some((_, spec)) = self.overrides.iter().find(|(p, _)| glob(p, role)) {
            return spec;
        }
        match (&self.classifier, role) {
            (Some(c), "classifier") => c,
            _ => &self.weights,
        }
    }

    /// Checks every spec the plan names: each must parse and have a GPU
    /// kernel.
    pub fn check(&self) -> Result<()> {
        let specs = std::iter::once(&self.weights)
            .chain(&self.classifier)
            .chain(self.overrides.iter().map(|(_, s)| s));
        for spec in specs {
            storage_of(spec)?;
        }
        Ok(())
    }
}

/// `*`-glob match of `text` against `pattern`.
fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, rest)) => {
            let Some(tail) = text.strip_prefix(head) else {
                return false;
            };
            (0..=tail.len()).any(|i| tail.is_char_boundary(i) && glob(rest, &tail[i..]))
        }
    }
}

/// How a spec stores a matrix.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Storage {
    Dense(WeightDType),
    Codec,
}

fn storage_of(spec: &str) -> Result<Storage> {
    match spec.trim().to_ascii_lowercase().as_str() {
        "f32" => return Ok(Storage::Dense(WeightDType::F32)),
        "f16" => return Ok(Storage::Dense(WeightDType::F16)),
        _ => {}
    }
    let parsed = Spec::parse(spec)?;
    if !GPU_CODECS.contains(&parsed.name.as_str()) {
        return Err(Error::Request(format!(
            "weights {spec:?}: codec {:?} has no GPU kernel; use f32, f16 or one of {}",
            parsed.name,
            GPU_CODECS.join(", ")
        )));
    }
    codec_from_spec(spec)?;
    Ok(Storage::Codec)
}

/// One weight matrix as the GPU will hold it.
#[derive(Clone, Debug)]
pub struct PreparedMatrix {
    /// Role, e.g. `layers.3.qkv`.
    pub role: String,
    /// The spec it is stored in (canonical for codecs).
    pub spec: String,
    /// Output rows.
    pub rows: usize,
    /// Input columns.
    pub cols: usize,
    store: Store,
}

#[derive(Clone, Debug)]
enum Store {
    Dense(WeightDType, Vec<f32>),
    Encoded(Encoded),
}

impl PreparedMatrix {
    fn new(role: String, spec: &str, rows: usize, cols: usize, values: Vec<f32>) -> Result<Self> {
        let (spec, store) = match storage_of(spec)? {
            Storage::Dense(dtype) => (
                match dtype {
                    WeightDType::F32 => "f32",
                    WeightDType::F16 => "f16",
                }
                .to_owned(),
                Store::Dense(dtype, values),
            ),
            Storage::Codec => {
                let codec = codec_from_spec(spec)?;
                let m = membound_codec::Matrix::new(rows, cols, &values)?;
                (codec.spec(), Store::Encoded(codec.encode(m)?))
            }
        };
        Ok(Self {
            role,
            spec,
            rows,
            cols,
            store,
        })
    }

    fn from_encoded(role: String, e: Encoded) -> Result<Self> {
        storage_of(&e.spec)?;
        Ok(Self {
            role,
            spec: e.spec.clone(),
            rows: e.rows,
            cols: e.cols,
            store: Store::Encoded(e),
        })
    }

    /// The weights the GPU multiplies by, row-major f32.
    pub fn decoded(&self) -> Result<Vec<f32>> {
        Ok(match &self.store {
            Store::Dense(WeightDType::F32, v) => v.clone(),
            Store::Dense(WeightDType::F16, v) => {
                v.iter().map(|x| f16::from_f32(*x).to_f32()).collect()
            }
            Store::Encoded(e) => membound_codec::decode(e)?,
        })
    }

    /// Bytes stored (codes and side information).
    pub fn bytes(&self) -> u64 {
        match &self.store {
            Store::Dense(dtype, v) => (v.len() * dtype.bytes()) as u64,
            Store::Encoded(e) => e.bytes() as u64,
        }
    }

    fn upload(&self, ctx: &GpuContext) -> Result<GpuMatrix> {
        Ok(match &self.store {
            Store::Dense(dtype, v) => GpuMatrix::Dense(DenseGemv::new(
                ctx, &self.role, self.rows, self.cols, v, *dtype,
            )?),
            Store::Encoded(e) => {
                let spec = Spec::parse(&e.spec)?;
                if spec.name == "affine" {
                    let codec = AffineCodec::from_spec(spec)?;
                    GpuMatrix::Affine(AffineGemv::new(ctx, &self.role, &codec, e)?)
                } else {
                    GpuMatrix::Lut(LutGemv::new(ctx, &self.role, e)?)
                }
            }
        })
    }
}

/// Stacks encodings of matrices with equal columns row-wise, when every
/// part is stored row by row (MLX affine, NF4, per-row levels).
fn concat_rows(role: &str, parts: &[&Encoded]) -> Result<Encoded> {
    let first = parts[0];
    let fail = || {
        Error::Request(format!(
            "{role}: the file's encodings ({}) cannot be fused row-wise; re-quantize with a \
             row-local codec such as affine with groups",
            first.spec
        ))
    };
    let mut out = first.clone();
    for e in &parts[1..] {
        if e.spec != first.spec || e.cols != first.cols || e.parts.len() != first.parts.len() {
            return Err(fail());
        }
        for (o, p) in out.parts.iter_mut().zip(&e.parts) {
            let rows_ok = o.shape.first() == Some(&out.rows) && p.shape.first() == Some(&e.rows);
            if p.name != o.name || p.dtype != o.dtype || !rows_ok || p.shape[1..] != o.shape[1..] {
                return Err(fail());
            }
            o.shape[0] += e.rows;
            o.data.extend_from_slice(&p.data);
        }
        out.rows += e.rows;
    }
    Ok(out)
}

/// One block's matrices as prepared.
#[derive(Clone, Debug)]
struct PreparedLayer {
    attn_norm: Vec<f32>,
    qkv: PreparedMatrix,
    qkv_bias: Option<Vec<f32>>,
    wo: PreparedMatrix,
    ffn_norm: Vec<f32>,
    gate_up: PreparedMatrix,
    down: PreparedMatrix,
}

/// A model stored as its plan says, ready to upload.
#[derive(Clone, Debug)]
pub struct PreparedModel {
    cfg: LlamaConfig,
    plan: WeightPlan,
    embed: Vec<f32>,
    embed_f16: bool,
    layers: Vec<PreparedLayer>,
    norm: Vec<f32>,
    classifier: PreparedMatrix,
}

/// Stores every matrix of `w` as `plan` says (encoding in parallel) and
/// fuses q/k/v and gate/up. Matrices the file already held encoded
/// (`w.encoded`) keep their encoding. `progress(done, total)` counts
/// matrices.
pub fn prepare(
    cfg: &LlamaConfig,
    w: &LlamaWeights,
    plan: &WeightPlan,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<PreparedModel> {
    plan.check()?;
    let (d, h) = (cfg.dim, cfg.hidden_dim);
    let kv = cfg.kv_dim();
    let total = cfg.n_layers * 4 + 1;
    let done = std::sync::atomic::AtomicUsize::new(0);
    let tick = || {
        let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        progress(n, total);
    };
    let matrix = |role: String, keys: &[String], rows: usize, cols: usize, values: Vec<f32>| {
        let found: Vec<_> = keys.iter().filter_map(|k| w.encoded.get(k)).collect();
        let m = if found.len() == keys.len() && !keys.is_empty() {
            PreparedMatrix::from_encoded(role.clone(), concat_rows(&role, &found)?)?
        } else {
            PreparedMatrix::new(role.clone(), plan.spec_for(&role), rows, cols, values)?
        };
        tick();
        Ok::<_, Error>(m)
    };
    let layers = w
        .layers
        .par_iter()
        .enumerate()
        .map(|(i, l)| {
            let key = |s: &str| format!("layers.{i}.{s}");
            let cat = |parts: &[&Vec<f32>]| parts.iter().flat_map(|p| p.iter().copied()).collect();
            let qkv_bias = match (&l.bq, &l.bk, &l.bv) {
                (None, None, None) => None,
                (bq, bk, bv) => {
                    let zeros = |n| vec![0.0; n];
                    let mut b = bq.clone().unwrap_or_else(|| zeros(d));
                    b.extend(bk.clone().unwrap_or_else(|| zeros(kv)));
                    b.extend(bv.clone().unwrap_or_else(|| zeros(kv)));
                    Some(b)
                }
            };
            Ok(PreparedLayer {
                attn_norm: l.attn_norm.clone(),
                qkv: matrix(
                    key("qkv"),
                    &[key("wq"), key("wk"), key("wv")],
                    d + 2 * kv,
                    d,
                    cat(&[&l.wq, &l.wk, &l.wv]),
                )?,
                qkv_bias,
                wo: matrix(key("wo"), &[key("wo")], d, d, l.wo.clone())?,
                ffn_norm: l.ffn_norm.clone(),
                gate_up: matrix(
                    key("gate_up"),
                    &[key("w_gate"), key("w_up")],
                    2 * h,
                    d,
                    cat(&[&l.w_gate, &l.w_up]),
                )?,
                down: matrix(key("w_down"), &[key("w_down")], d, h, l.w_down.clone())?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let classifier = matrix(
        "classifier".into(),
        &["classifier".into()],
        cfg.vocab_size,
        d,
        w.classifier.clone().unwrap_or_else(|| w.embed.clone()),
    )?;
    Ok(PreparedModel {
        cfg: cfg.clone(),
        plan: plan.clone(),
        embed: w.embed.clone(),
        embed_f16: plan.weights.trim() != "f32",
        layers,
        norm: w.norm.clone(),
        classifier,
    })
}

/// Bytes a token reads besides the weight matrices: the f32 norm weights
/// and one embedding row as stored.
fn side_bytes(cfg: &LlamaConfig, embed_f16: bool) -> u64 {
    let norms = (cfg.n_layers * 2 + 1) * cfg.dim * 4;
    let row = cfg.dim * if embed_f16 { 2 } else { 4 };
    (norms + row) as u64
}

/// What one matrix is stored as.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct MatrixSummary {
    /// Role.
    pub role: String,
    /// Spec it is stored in.
    pub spec: String,
    /// Rows × columns.
    pub shape: [usize; 2],
    /// Bytes stored.
    pub bytes: u64,
}

impl PreparedModel {
    /// The configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// The plan it was prepared with.
    pub fn plan(&self) -> &WeightPlan {
        &self.plan
    }

    /// Every matrix as stored, in decode order.
    pub fn matrices(&self) -> Vec<&PreparedMatrix> {
        let mut v = Vec::new();
        for l in &self.layers {
            v.extend([&l.qkv, &l.wo, &l.gate_up, &l.down]);
        }
        v.push(&self.classifier);
        v
    }

    /// Per matrix: role, spec, shape, bytes.
    pub fn summary(&self) -> Vec<MatrixSummary> {
        self.matrices()
            .into_iter()
            .map(|m| MatrixSummary {
                role: m.role.clone(),
                spec: m.spec.clone(),
                shape: [m.rows, m.cols],
                bytes: m.bytes(),
            })
            .collect()
    }

    /// Weight bytes a decode step reads: every matrix, the norms and one
    /// embedding row.
    pub fn bytes_per_token(&self) -> u64 {
        let matrices: u64 = self.matrices().iter().map(|m| m.bytes()).sum();
        matrices + side_bytes(&self.cfg, self.embed_f16)
    }

    /// The weights exactly as the GPU will use them (decoded codecs, f16
    /// rounding, the embedding table as stored), for the CPU reference.
    pub fn decoded_weights(&self) -> Result<LlamaWeights> {
        let (d, kv) = (self.cfg.dim, self.cfg.kv_dim());
        let round = |v: &[f32]| -> Vec<f32> {
            if self.embed_f16 {
                v.iter().map(|x| f16::from_f32(*x).to_f32()).collect()
            } else {
                v.to_vec()
            }
        };
        let layers = self
            .layers
            .par_iter()
            .map(|l| {
                let qkv = l.qkv.decoded()?;
                let (wq, rest) = qkv.split_at(d * d);
                let (wk, wv) = rest.split_at(kv * d);
                let gu = l.gate_up.decoded()?;
                let (wg, wu) = gu.split_at(gu.len() / 2);
                let bias = |r: std::ops::Range<usize>| l.qkv_bias.as_ref().map(|b| b[r].to_vec());
                Ok(super::LayerWeights {
                    attn_norm: l.attn_norm.clone(),
                    wq: wq.to_vec(),
                    wk: wk.to_vec(),
                    wv: wv.to_vec(),
                    bq: bias(0..d),
                    bk: bias(d..d + kv),
                    bv: bias(d + kv..d + 2 * kv),
                    wo: l.wo.decoded()?,
                    ffn_norm: l.ffn_norm.clone(),
                    w_gate: wg.to_vec(),
                    w_up: wu.to_vec(),
                    w_down: l.down.decoded()?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(LlamaWeights {
            embed: round(&self.embed),
            layers,
            norm: self.norm.clone(),
            classifier: Some(self.classifier.decoded()?),
            encoded: Default::default(),
        })
    }
}

/// A weight matrix on the GPU, behind whichever kernel runs its storage.
#[derive(Debug)]
enum GpuMatrix {
    Dense(DenseGemv),
    Affine(AffineGemv),
    Lut(LutGemv),
}

impl GpuMatrix {
    fn bind(&self, ctx: &GpuContext, x: &GpuVector, y: &GpuVector) -> Result<Dispatch> {
        Ok(match self {
            Self::Dense(m) => m.bind(ctx, x, y)?,
            Self::Affine(m) => m.bind(ctx, x, y)?,
            Self::Lut(m) => m.bind(ctx, x, y)?,
        })
    }

    /// Binds with `fusion`; `None` where the kernel has no fusion (LUT
    /// codecs) or the matrix cannot take it (SwiGLU over several blocks).
    fn bind_fused(
        &self,
        ctx: &GpuContext,
        x: &GpuVector,
        norm_w: Option<&GpuVector>,
        y: &GpuVector,
        fusion: Fusion,
    ) -> Result<Dispatch> {
        Ok(match self {
            Self::Dense(m) => m.bind_fused(ctx, x, norm_w, y, fusion)?,
            Self::Affine(m) => m.bind_fused(ctx, x, norm_w, y, fusion)?,
            Self::Lut(_) => unreachable!("checked by can_fuse"),
        })
    }

    /// Whether [`GpuMatrix::bind_fused`] takes every fusion here.
    fn can_fuse(&self) -> bool {
        match self {
            Self::Dense(m) => m.blocks() == 1,
            Self::Affine(m) => m.blocks() == 1,
            Self::Lut(_) => false,
        }
    }

    fn weight_bytes(&self) -> u64 {
        match self {
            Self::Dense(m) => m.weight_bytes(),
            Self::Affine(m) => m.weight_bytes(),
            Self::Lut(m) => m.weight_bytes(),
        }
    }
}

/// Positions from which attention splits each KV head's range over
/// several workgroups (when the cache holds more than this).
pub const LONG_CONTEXT: usize = 512;

/// Options of the GPU decoder.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GpuLlamaOptions {
    /// Activation-sparse down projections: each block's down weights are
    /// stored column-major in this dtype, the SwiGLU output is compared
    /// with the layer's threshold on the GPU, and only the columns of
    /// inputs with |x| > τ are read ([`GpuLlama::set_down_thresholds`];
    /// τ = 0 at first: exact zeros only, lossless). `None`: dense.
    pub sparse_down: Option<SparseDType>,
    /// With `sparse_down`, the fused gate/up projections too, in the same
    /// dtype (TEAL-style: their RMS-normalised input is thresholded, per
    /// layer by [`GpuLlama::set_gate_up_thresholds`]). Fused, the sparse
    /// gate/up kernel normalises the residual as it loads it and the
    /// sparse down kernel applies SwiGLU to its output as it loads that.
    pub sparse_gate_up: bool,
    /// With `sparse_down`, the q/k/v projection (on its RMS-normalised
    /// input, made in the kernel) and the o projection (on the attention
    /// output) too: every projection input thresholded, as TEAL does.
    pub sparse_attention: bool,
    /// How the KV cache stores keys and values (f32 by default; f16, or
    /// 8/4-bit codes with a scale and minimum per 32 values of a head).
    pub kv_cache: KvDType,
    /// Position from which attention splits each KV head's positions over
    /// several workgroups ([`LONG_CONTEXT`] by default).
    pub split_attention_from: usize,
    /// Positions the KV cache holds; `None`: the model's context, at most
    /// 4096.
    pub context: Option<usize>,
    /// Command submissions per token (at least 1; 4 by default). With more
    /// than one, the GPU starts on the first layers while the host records
    /// the rest: on an H100, SmolLM2 took 1.45 ms a token with 1, 1.30 with
    /// 4 and 1.19 with 8 (1.39 with 16); the 8B shape 7.00, 6.93 and 6.89.
    pub submissions: usize,
    /// Fuse RMSNorm into the GEMV after it, the residual adds into the o
    /// and down GEMVs, and SwiGLU into the gate/up GEMV: 5 dispatches a
    /// block instead of 8 (on by default; dense and affine weights; other
    /// codecs run unfused).
    pub fuse: bool,
    /// Synthetic models only: a zero-overhead bound for activation
    /// sparsity s ∈ [0, 1). The down projections, and those that
    /// `sparse_gate_up` / `sparse_attention` name, stay dense but take only
    /// the first (1 − s) of their inputs, rounded to a multiple of 64: what
    /// a kernel skipping that share would read if it knew the active
    /// columns for free and found them stored contiguously. The tokens
    /// decoded mean nothing; the time is the least any s-sparse kernel can
    /// take at the dense kernels' efficiency. Needs `sparse_down: None`.
    pub bound_sparsity: Option<f32>,
}

impl Default for GpuLlamaOptions {
    fn default() -> Self {
        Self {
            sparse_down: None,
            sparse_gate_up: false,
            sparse_attention: false,
            kv_cache: KvDType::F32,
            split_attention_from: LONG_CONTEXT,
            context: None,
            submissions: 4,
            fuse: true,
            bound_sparsity: None,
        }
    }
}

/// What each kind of dispatch in a token costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum OpKind {
    /// Weight GEMVs (q/k/v, o, gate/up, down, classifier).
    Gemv,
    /// The dense down projections (a part of the GEMVs, apart so that
    /// sparse ones can be compared with them).
    Down,
    /// Activation-sparse down projections.
    SparseDown,
    /// Activation-sparse gate/up projections.
    SparseGateUp,
    /// Activation-sparse q/k/v and o projections.
    SparseAttention,
    /// Attention over the KV cache.
    Attention,
    /// Embedding, norms, RoPE, SwiGLU, argmax.
    Elementwise,
}

/// Where a token's time goes, from [`GpuLlama::profile`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct Profile {
    /// Dispatches per token.
    pub dispatches: usize,
    /// Median host time per token: submission, GPU work, read-back.
    pub token: Duration,
    /// GPU time of the token's pass (timestamps; `None` without them).
    pub pass: Option<Duration>,
    /// Sum over dispatches of each one timed alone, by kind: kernel time
    /// with timestamps, else wall time with each submission's latency.
    pub kernels: Vec<(OpKind, Duration)>,
    /// Whether `kernels` and `pass` come from GPU timestamps.
    pub timestamps: bool,
}

impl Profile {
    /// Sum of the kernels' own times.
    pub fn kernel_total(&self) -> Duration {
        self.kernels.iter().map(|(_, d)| *d).sum()
    }
}

/// The GPU decoder (see the module docs).
#[derive(Debug)]
pub struct GpuLlama {
    ctx: Arc<GpuContext>,
    cfg: LlamaConfig,
    context: usize,
    submissions: usize,
    step: StepBuffer,
    /// The residual stream; the host writes the token's embedding row here.
    x: GpuVector,
    embed: Embedding,
    row: Vec<f32>,
    logits: GpuVector,
    next: GpuBuffer,
    /// The token's dispatches up to the logits, each with its kind.
    calls: Vec<(OpKind, Dispatch)>,
    argmax: Dispatch,
    _matrices: Vec<GpuMatrix>,
    /// Sparse down projections and their thresholds, by layer.
    sparse: Vec<(SparseGemv, Threshold)>,
    /// Sparse gate/up projections and their thresholds, by layer.
    sparse_gate_up: Vec<(SparseGemv, Threshold)>,
    /// Sparse q/k/v and o projections and their thresholds, by layer.
    sparse_qkv: Vec<(SparseGemv, Threshold)>,
    sparse_o: Vec<(SparseGemv, Threshold)>,
    /// Split attention for positions from `split_from` on: (index in
    /// `calls` it replaces, dispatch).
    long_attention: Vec<(usize, Dispatch)>,
    split_from: usize,
    /// Position of the step being run.
    pos: usize,
    /// For [`GpuLlama::greedy_resident`]: the embedding table on the device
    /// and the dispatch that copies the row of the last argmax into `x`
    /// (made on first use).
    resident: Option<(GpuBuffer, Dispatch)>,
    caches: Vec<KvCache>,
    weight_bytes: u64,
    /// Bytes of each weight matrix as stored on the device.
    matrix_bytes: Vec<u64>,
    /// Kept alive for the recorded bind groups.
    _buffers: Vec<GpuVector>,
}

/// Where token embeddings come from.
#[derive(Debug)]
enum Embedding {
    /// `[vocab, dim]` as stored (f16 values widened, or f32).
    Table(Vec<f32>),
    /// Rows hashed from the seed (synthetic models).
    Synthetic(u32),
}

impl Embedding {
    /// Writes the embedding of `token` into `row` (the model's width).
    fn row(&self, token: u32, row: &mut [f32]) {
        let d = row.len();
        match self {
            Embedding::Table(t) => {
                let at = token as usize * d;
                row.copy_from_slice(&t[at..at + d]);
            }
            Embedding::Synthetic(seed) => {
                // Uniform in [-1, 1) from a hash of (seed, token, i).
                for (i, v) in row.iter_mut().enumerate() {
                    let mut z = (u64::from(*seed) << 32 | u64::from(token))
                        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                        .wrapping_add(i as u64);
                    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                    z ^= z >> 31;
                    *v = (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
                }
            }
        }
    }
}

/// The resident pieces of one block, before recording.
struct LayerParts {
    attn_norm: GpuVector,
    qkv: Proj,
    bias: Option<GpuVector>,
    wo: Proj,
    ffn_norm: GpuVector,
    gate_up: Proj,
    down: Proj,
}

/// A block's down (or gate/up) projection: dense, or activation-sparse.
#[derive(Debug)]
enum Proj {
    Dense(GpuMatrix),
    Sparse(Box<SparseGemv>),
}

/// Stores a down projection's f32 weights column-major as `dtype`.
fn sparse_down(
    ctx: &GpuContext,
    role: &str,
    rows: usize,
    cols: usize,
    w: &[f32],
    dtype: SparseDType,
) -> Result<SparseGemv> {
    Ok(match dtype {
        SparseDType::F16 => SparseGemv::f16(ctx, role, rows, cols, w)?,
        SparseDType::Affine4 { group } => SparseGemv::affine4(ctx, role, rows, cols, w, group)?,
    })
}

/// The weights a sparse down projection in `dtype` multiplies by,
/// row-major: f16 rounding, or the column-wise 4-bit affine decoding.
pub fn sparse_down_decoded(
    w: &[f32],
    rows: usize,
    cols: usize,
    dtype: SparseDType,
) -> Result<Vec<f32>> {
    Ok(match dtype {
        SparseDType::F16 => w.iter().map(|v| f16::from_f32(*v).to_f32()).collect(),
        SparseDType::Affine4 { group } => {
            let m = membound_sparse::ColMajorAffine4::from_row_major(w, rows, cols, group)
                .map_err(|e| Error::Request(e.to_string()))?;
            let mut out = vec![0.0; rows * cols];
            for j in 0..cols {
                for (r, v) in m.column(j).iter().enumerate() {
                    out[r * cols + j] = *v;
                }
            }
            out
        }
    })
}

impl GpuLlama {
    /// Uploads `model` to `ctx`'s device and records a token's dispatches.
    pub fn new(ctx: Arc<GpuContext>, model: &PreparedModel, opts: GpuLlamaOptions) -> Result<Self> {
        if opts.bound_sparsity.is_some() {
            return Err(Error::Request(
                "the zero-overhead sparsity bound needs a synthetic model (its tokens mean nothing)"
                    .into(),
            ));
        }
        let c = &ctx;
        let layers = model
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                Ok(LayerParts {
                    attn_norm: GpuVector::from_slice(
                        c,
                        &format!("layer {i} attn norm"),
                        &l.attn_norm,
                    )?,
                    qkv: match (opts.sparse_down, opts.sparse_attention) {
                        (Some(dtype), true) => Proj::Sparse(Box::new(sparse_down(
                            c,
                            &l.qkv.role,
                            l.qkv.rows,
                            l.qkv.cols,
                            &l.qkv.decoded()?,
                            dtype,
                        )?)),
                        _ => Proj::Dense(l.qkv.upload(c)?),
                    },
                    bias: match &l.qkv_bias {
                        Some(b) => {
                            Some(GpuVector::from_slice(c, &format!("layer {i} qkv bias"), b)?)
                        }
                        None => None,
                    },
                    wo: match (opts.sparse_down, opts.sparse_attention) {
                        (Some(dtype), true) => Proj::Sparse(Box::new(sparse_down(
                            c,
                            &l.wo.role,
                            l.wo.rows,
                            l.wo.cols,
                            &l.wo.decoded()?,
                            dtype,
                        )?)),
                        _ => Proj::Dense(l.wo.upload(c)?),
                    },
                    ffn_norm: GpuVector::from_slice(
                        c,
                        &format!("layer {i} ffn norm"),
                        &l.ffn_norm,
                    )?,
                    gate_up: match (opts.sparse_down, opts.sparse_gate_up) {
                        (Some(dtype), true) => Proj::Sparse(Box::new(sparse_down(
                            c,
                            &l.gate_up.role,
                            l.gate_up.rows,
                            l.gate_up.cols,
                            &l.gate_up.decoded()?,
                            dtype,
                        )?)),
                        _ => Proj::Dense(l.gate_up.upload(c)?),
                    },
                    down: match opts.sparse_down {
                        None => Proj::Dense(l.down.upload(c)?),
                        Some(dtype) => Proj::Sparse(Box::new(sparse_down(
                            c,
                            &l.down.role,
                            l.down.rows,
                            l.down.cols,
                            &l.down.decoded()?,
                            dtype,
                        )?)),
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // The table stays on the host, as stored (f16 or f32): a token's
        // row is a few KiB written with the step, and no table, however
        // large, meets a binding limit.
        let embed = Embedding::Table(if model.embed_f16 {
            model
                .embed
                .iter()
                .map(|v| f16::from_f32(*v).to_f32())
                .collect()
        } else {
            model.embed.clone()
        });
        let norm = GpuVector::from_slice(c, "final norm", &model.norm)?;
        let classifier = model.classifier.upload(c)?;
        Self::assemble(
            ctx,
            &model.cfg,
            opts,
            embed,
            model.embed_f16,
            layers,
            norm,
            classifier,
        )
    }

    /// A model of shape `cfg` with weights generated on the GPU from `seed`
    /// (uniform weights of unit-preserving scale, unit norms, no biases),
    /// stored as `spec` (`f32`, `f16` or `affine:…` with f16 scales): decode
    /// benchmarks of real sizes without a file.
    pub fn synthetic(
        ctx: Arc<GpuContext>,
        cfg: &LlamaConfig,
        spec: &str,
        seed: u32,
        opts: GpuLlamaOptions,
    ) -> Result<Self> {
        let c = &ctx;
        let storage = storage_of(spec)?;
        let affine = match storage {
            Storage::Codec => {
                let parsed = Spec::parse(spec)?;
                if parsed.name != "affine" {
                    return Err(Error::Request(format!(
                        "synthetic models take f32, f16 or affine weights, not {spec:?}"
                    )));
                }
                Some(AffineCodec::from_spec(parsed)?)
            }
            Storage::Dense(_) => None,
        };
        let mut n = 0u32;
        let mut matrix = |role: String, rows: usize, cols: usize| -> Result<GpuMatrix> {
            n += 1;
            let s = seed
                .wrapping_mul(0x9E37_79B9)
                .wrapping_add(n.wrapping_mul(0x85EB_CA6B));
            let a = (3.0 / cols as f32).sqrt();
            Ok(match (&storage, &affine) {
                (Storage::Dense(dtype), _) => {
                    GpuMatrix::Dense(DenseGemv::synthetic(c, &role, rows, cols, *dtype, s, a)?)
                }
                (_, Some(codec)) => {
                    GpuMatrix::Affine(AffineGemv::synthetic(c, &role, codec, rows, cols, s, a)?)
                }
                _ => unreachable!("codec storage always has a codec"),
            })
        };
        let (d, h, kv) = (cfg.dim, cfg.hidden_dim, cfg.kv_dim());
        let ones = |name: String| GpuVector::from_slice(c, &name, &vec![1.0; d]);
        // The zero-overhead bound's input widths (see `bound_sparsity`).
        let kept = match opts.bound_sparsity {
            None => None,
            Some(s) if opts.sparse_down.is_some() => {
                return Err(Error::Request(format!(
                    "the zero-overhead bound at {s} replaces the sparse kernels; \
                     build it without sparse_down"
                )));
            }
            Some(s) if !(0.0..1.0).contains(&s) => {
                return Err(Error::Request(format!(
                    "a bound sparsity of {s}; it must be in [0, 1)"
                )));
            }
            Some(s) => Some(f64::from(1.0 - s)),
        };
        let width = |cols: usize, on: bool| match kept {
            Some(k) if on => ((cols as f64 * k / 64.0).round() as usize * 64).clamp(64, cols),
            _ => cols,
        };
        let (d_attn, d_mlp) = (
            width(d, opts.sparse_attention),
            width(d, opts.sparse_gate_up),
        );
        let h_down = width(h, true);
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            layers.push(LayerParts {
                attn_norm: ones(format!("layer {i} attn norm"))?,
                qkv: match (opts.sparse_down, opts.sparse_attention) {
                    (Some(dtype), true) => Proj::Sparse(Box::new(SparseGemv::synthetic(
                        c,
                        &format!("layers.{i}.qkv (sparse)"),
                        d + 2 * kv,
                        d,
                        dtype,
                        seed.wrapping_add(3_333 + i as u32),
                        (3.0 / d as f32).sqrt(),
                    )?)),
                    _ => Proj::Dense(matrix(format!("layers.{i}.qkv"), d + 2 * kv, d_attn)?),
                },
                bias: None,
                wo: match (opts.sparse_down, opts.sparse_attention) {
                    (Some(dtype), true) => Proj::Sparse(Box::new(SparseGemv::synthetic(
                        c,
                        &format!("layers.{i}.wo (sparse)"),
                        d,
                        d,
                        dtype,
                        seed.wrapping_add(4_444 + i as u32),
                        (3.0 / d as f32).sqrt(),
                    )?)),
                    _ => Proj::Dense(matrix(format!("layers.{i}.wo"), d, d_attn)?),
                },
                ffn_norm: ones(format!("layer {i} ffn norm"))?,
                gate_up: match (opts.sparse_down, opts.sparse_gate_up) {
                    (Some(dtype), true) => Proj::Sparse(Box::new(SparseGemv::synthetic(
                        c,
                        &format!("layers.{i}.gate_up (sparse)"),
                        2 * h,
                        d,
                        dtype,
                        seed.wrapping_add(5_555 + i as u32),
                        (3.0 / d as f32).sqrt(),
                    )?)),
                    _ => Proj::Dense(matrix(format!("layers.{i}.gate_up"), 2 * h, d_mlp)?),
                },
                down: match opts.sparse_down {
                    None => Proj::Dense(matrix(format!("layers.{i}.w_down"), d, h_down)?),
                    Some(dtype) => Proj::Sparse(Box::new(SparseGemv::synthetic(
                        c,
                        &format!("layers.{i}.w_down (sparse)"),
                        d,
                        h,
                        dtype,
                        seed.wrapping_add(7_777 + i as u32),
                        (3.0 / h as f32).sqrt(),
                    )?)),
                },
            });
        }
        let classifier = matrix("classifier".into(), cfg.vocab_size, d)?;
        let embed = Embedding::Synthetic(seed);
        let norm = ones("final norm".into())?;
        Self::assemble(ctx, cfg, opts, embed, true, layers, norm, classifier)
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        ctx: Arc<GpuContext>,
        cfg: &LlamaConfig,
        opts: GpuLlamaOptions,
        embed: Embedding,
        embed_f16: bool,
        layers: Vec<LayerParts>,
        norm: GpuVector,
        classifier: GpuMatrix,
    ) -> Result<Self> {
        let c = &ctx;
        let context = opts.context.unwrap_or(cfg.max_seq_len.min(4096));
        if context == 0 || context > cfg.max_seq_len {
            return Err(Error::Request(format!(
                "a context of {context} positions; the model takes 1 to {}",
                cfg.max_seq_len
            )));
        }
        let shape = AttentionShape {
            n_heads: cfg.n_heads,
            n_kv_heads: cfg.n_kv_heads,
            head_dim: cfg.head_dim(),
            context,
            rope_half: cfg.rope == RopeLayout::HalfSplit,
            kv: opts.kv_cache,
            splits: 1,
        };
        // Past LONG_CONTEXT positions, attention splits each KV head's
        // positions over enough workgroups to fill the GPU.
        let long_shape = (context > opts.split_attention_from).then(|| AttentionShape {
            splits: (context.div_ceil(256)).clamp(2, 32),
            ..shape
        });
        let (d, h, kv) = (cfg.dim, cfg.hidden_dim, cfg.kv_dim());
        let vec = |name: &str, n: usize| GpuVector::zeros(c, name, n);
        let x = vec("residual", d)?;
        let xb = vec("normed", d)?;
        let qkv = vec("qkv", d + 2 * kv)?;
        let att = vec("attention out", d)?;
        let y = vec("projection out", d)?;
        let gate_up = vec("gate/up", 2 * h)?;
        let hidden = vec("swiglu", h)?;
        let logits = vec("logits", cfg.vocab_size)?;
        let rope = GpuVector::from_slice(
            c,
            "rope table",
            &shape.rope_table(f64::from(cfg.rope_theta)),
        )?;
        let next = GpuBuffer::new(
            c,
            "next token",
            4,
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        )?;
        let step = StepBuffer::new(c)?;
        let eps = cfg.rms_eps;

        let mut calls = Vec::new();
        let mut caches = Vec::with_capacity(layers.len());
        let mut matrices = Vec::new();
        let mut buffers = Vec::new();
        let mut sparse = Vec::new();
        let mut sparse_gate_up = Vec::new();
        let mut sparse_qkv = Vec::new();
        let mut sparse_o = Vec::new();
        let mut sparse_sizes: Vec<u64> = Vec::new();
        let mut long_attention = Vec::new();
        // Fused: 5 dispatches a block. The residual stream x is read with
        // the norm folded into the q/k/v and gate/up GEMVs, and the o and
        // down GEMVs add into it.
        let fuse = opts.fuse
            && classifier.can_fuse()
            && layers.iter().all(|l| {
                [&l.qkv, &l.wo, &l.gate_up, &l.down]
                    .iter()
                    .all(|p| match p {
                        Proj::Dense(m) => m.can_fuse(),
                        Proj::Sparse(_) => true,
                    })
            });
        let normed = Fusion {
            rms_norm_eps: Some(eps),
            ..Fusion::default()
        };
        let add = Fusion {
            accumulate: true,
            ..Fusion::default()
        };
        let glu = Fusion {
            swiglu: true,
            ..normed
        };
        // The sparse down kernel can take the gate/up output and apply
        // SwiGLU itself when the hidden width is a multiple of 4.
        let glu_in = h % 4 == 0;
        for (i, l) in layers.into_iter().enumerate() {
            let cache = KvCache::new(c, i, &shape)?;
            let norm_in = |c: &GpuContext| -> Result<Dispatch> {
                Ok(if i == 0 {
                    ops::rms_norm(c, &x, &l.attn_norm, eps, &xb)?
                } else {
                    ops::add_rms_norm(c, &x, &y, &l.attn_norm, eps, &xb)?
                })
            };
            match l.qkv {
                Proj::Dense(m) => {
                    if fuse {
                        let d = m.bind_fused(c, &x, Some(&l.attn_norm), &qkv, normed)?;
                        calls.push((OpKind::Gemv, d));
                    } else {
                        calls.push((OpKind::Elementwise, norm_in(c)?));
                        calls.push((OpKind::Gemv, m.bind(c, &xb, &qkv)?));
                    }
                    matrices.push(m);
                }
                Proj::Sparse(m) => {
                    let tau = Threshold::new(c, &format!("layer {i} q/k/v τ"), 0.0)?;
                    let d = if fuse {
                        let input = SparseInput::RmsNorm { eps };
                        m.bind_with(c, &x, Some(&l.attn_norm), &tau, &qkv, false, input)?
                    } else {
                        calls.push((OpKind::Elementwise, norm_in(c)?));
                        m.bind_threshold(c, &xb, &tau, &qkv)?
                    };
                    calls.push((OpKind::SparseAttention, d));
                    sparse_sizes.push(m.weight_bytes());
                    sparse_qkv.push((*m, tau));
                }
            }
            calls.push((
                OpKind::Attention,
                ops::attention(c, &shape, &step, &qkv, l.bias.as_ref(), &rope, &cache, &att)?,
            ));
            if let Some(ls) = &long_shape {
                let d = ops::attention(c, ls, &step, &qkv, l.bias.as_ref(), &rope, &cache, &att)?;
                long_attention.push((calls.len() - 1, d));
            }
            match l.wo {
                Proj::Dense(m) => {
                    let d = if fuse {
                        m.bind_fused(c, &att, None, &x, add)?
                    } else {
                        m.bind(c, &att, &y)?
                    };
                    calls.push((OpKind::Gemv, d));
                    matrices.push(m);
                }
                Proj::Sparse(m) => {
                    let tau = Threshold::new(c, &format!("layer {i} o τ"), 0.0)?;
                    let d = if fuse {
                        m.bind_accumulate(c, &att, &tau, &x)?
                    } else {
                        m.bind_threshold(c, &att, &tau, &y)?
                    };
                    calls.push((OpKind::SparseAttention, d));
                    sparse_sizes.push(m.weight_bytes());
                    sparse_o.push((*m, tau));
                }
            }
            let sparse_gate_up_here = matches!(l.gate_up, Proj::Sparse(_));
            match l.gate_up {
                Proj::Dense(m) if fuse => {
                    calls.push((
                        OpKind::Gemv,
                        m.bind_fused(c, &x, Some(&l.ffn_norm), &hidden, glu)?,
                    ));
                    matrices.push(m);
                }
                Proj::Dense(m) => {
                    calls.push((
                        OpKind::Elementwise,
                        ops::add_rms_norm(c, &x, &y, &l.ffn_norm, eps, &xb)?,
                    ));
                    calls.push((OpKind::Gemv, m.bind(c, &xb, &gate_up)?));
                    calls.push((OpKind::Elementwise, ops::swiglu(c, &gate_up, &hidden)?));
                    matrices.push(m);
                }
                Proj::Sparse(m) if fuse => {
                    // The norm is made as the residual is loaded; the down
                    // projection applies SwiGLU to the raw gate/up output
                    // as it loads it (or, for a width off the kernel's
                    // granule of 4, a SwiGLU dispatch does).
                    let tau = Threshold::new(c, &format!("layer {i} gate/up τ"), 0.0)?;
                    let input = SparseInput::RmsNorm { eps };
                    calls.push((
                        OpKind::SparseGateUp,
                        m.bind_with(c, &x, Some(&l.ffn_norm), &tau, &gate_up, false, input)?,
                    ));
                    if !glu_in {
                        calls.push((OpKind::Elementwise, ops::swiglu(c, &gate_up, &hidden)?));
                    }
                    sparse_sizes.push(m.weight_bytes());
                    sparse_gate_up.push((*m, tau));
                }
                Proj::Sparse(m) => {
                    // Norm, sparse GEMV of the normed input, SwiGLU.
                    let norm = ops::add_rms_norm(c, &x, &y, &l.ffn_norm, eps, &xb)?;
                    calls.push((OpKind::Elementwise, norm));
                    let tau = Threshold::new(c, &format!("layer {i} gate/up τ"), 0.0)?;
                    calls.push((
                        OpKind::SparseGateUp,
                        m.bind_threshold(c, &xb, &tau, &gate_up)?,
                    ));
                    calls.push((OpKind::Elementwise, ops::swiglu(c, &gate_up, &hidden)?));
                    sparse_sizes.push(m.weight_bytes());
                    sparse_gate_up.push((*m, tau));
                }
            }
            // Fused, the down projection adds into the residual stream.
            let down_out = if fuse { &x } else { &y };
            match l.down {
                Proj::Dense(m) => {
                    let d = if fuse {
                        m.bind_fused(c, &hidden, None, &x, add)?
                    } else {
                        m.bind(c, &hidden, &y)?
                    };
                    calls.push((OpKind::Down, d));
                    matrices.push(m);
                }
                Proj::Sparse(m) => {
                    let tau = Threshold::new(c, &format!("layer {i} down τ"), 0.0)?;
                    let d = if fuse && sparse_gate_up_here && glu_in {
                        m.bind_with(c, &gate_up, None, &tau, down_out, true, SparseInput::SwiGlu)?
                    } else if fuse {
                        m.bind_accumulate(c, &hidden, &tau, down_out)?
                    } else {
                        m.bind_threshold(c, &hidden, &tau, down_out)?
                    };
                    calls.push((OpKind::SparseDown, d));
                    sparse_sizes.push(m.weight_bytes());
                    sparse.push((*m, tau));
                }
            }
            caches.push(cache);
            buffers.extend([l.attn_norm, l.ffn_norm]);
            buffers.extend(l.bias);
        }
        if fuse {
            calls.push((
                OpKind::Gemv,
                classifier.bind_fused(c, &x, Some(&norm), &logits, normed)?,
            ));
        } else {
            let final_norm = if caches.is_empty() {
                ops::rms_norm(c, &x, &norm, eps, &xb)?
            } else {
                ops::add_rms_norm(c, &x, &y, &norm, eps, &xb)?
            };
            calls.push((OpKind::Elementwise, final_norm));
            calls.push((OpKind::Gemv, classifier.bind(c, &xb, &logits)?));
        }
        let argmax = ops::argmax(c, &logits, &next)?;
        matrices.push(classifier);
        let mut matrix_bytes: Vec<u64> = matrices.iter().map(GpuMatrix::weight_bytes).collect();
        matrix_bytes.extend(&sparse_sizes);
        let weight_bytes = matrix_bytes.iter().sum::<u64>() + side_bytes(cfg, embed_f16);
        buffers.extend([xb, qkv, att, y, gate_up, hidden, rope, norm]);
        ctx.check()?;
        Ok(Self {
            cfg: cfg.clone(),
            context,
            submissions: opts.submissions.max(1),
            step,
            x,
            embed,
            row: vec![0.0; d],
            logits,
            next,
            calls,
            argmax,
            _matrices: matrices,
            sparse,
            sparse_gate_up,
            sparse_qkv,
            sparse_o,
            long_attention,
            split_from: opts.split_attention_from,
            pos: 0,
            resident: None,
            caches,
            weight_bytes,
            matrix_bytes,
            _buffers: buffers,
            ctx,
        })
    }

    /// The device context.
    pub fn context(&self) -> &Arc<GpuContext> {
        &self.ctx
    }

    /// Positions the KV cache holds.
    pub fn max_positions(&self) -> usize {
        self.context
    }

    /// Bytes of weights a token reads (matrices as stored on the device,
    /// with row padding, norms and one embedding row).
    pub fn weight_bytes_per_token(&self) -> u64 {
        self.weight_bytes
    }

    /// Bytes of each weight matrix as stored on the device (q/k/v, o,
    /// gate/up and down of every layer, then the classifier; sparse ones
    /// column-major, in full). A dense token reads each once: the floor of
    /// its time is the sum of plain reads of these sizes.
    pub fn weight_matrix_bytes(&self) -> &[u64] {
        &self.matrix_bytes
    }

    /// Bytes each weight matrix read in the last token (waits for the
    /// GPU): the dense matrices whole, as in
    /// [`GpuLlama::weight_matrix_bytes`], and each activation-sparse one
    /// its active columns and its input, as the GPU counted them
    /// (`SparseGemv::bytes_read`).
    pub fn matrix_bytes_read(&self) -> Result<MatrixReads> {
        let sites = [
            &self.sparse_qkv,
            &self.sparse_o,
            &self.sparse_gate_up,
            &self.sparse,
        ];
        let n_sparse: usize = sites.iter().map(|s| s.len()).sum();
        let dense = self.matrix_bytes[..self.matrix_bytes.len() - n_sparse].to_vec();
        let mut sparse = Vec::with_capacity(n_sparse);
        for site in sites {
            for (m, _) in site {
                sparse.push(m.bytes_read(m.read_active_count(&self.ctx)?));
            }
        }
        Ok(MatrixReads { dense, sparse })
    }

    /// Bytes of KV cache on the device.
    pub fn kv_cache_bytes(&self) -> u64 {
        self.caches.iter().map(KvCache::bytes).sum()
    }

    /// Whether the down projections are activation-sparse.
    pub fn is_sparse(&self) -> bool {
        !self.sparse.is_empty()
    }

    /// Whether the gate/up projections are activation-sparse.
    pub fn is_gate_up_sparse(&self) -> bool {
        !self.sparse_gate_up.is_empty()
    }

    /// Sets the sparse gate/up projections' thresholds on their normalised
    /// input: one τ per layer, or one for all.
    pub fn set_gate_up_thresholds(&mut self, taus: &[f32]) -> Result<()> {
        self.set_site_thresholds(Site::GateUp, taus)
    }

    /// Per layer, the gate/up inputs read in the last token, and the width.
    pub fn gate_up_activity(&self) -> Result<Vec<(usize, usize)>> {
        self.site_activity(Site::GateUp)
    }

    /// [`GpuLlama::calibrate_down`] for the sparse gate/up projections
    /// (the down thresholds stay as they are).
    pub fn calibrate_gate_up(&mut self, target: f32, token: u32, pos: usize) -> Result<Vec<f32>> {
        self.calibrate(Site::GateUp, target, token, pos)
    }

    /// The sparse projections at `site`, by layer (empty where dense).
    fn sparse_at(&self, site: Site) -> &[(SparseGemv, Threshold)] {
        match site {
            Site::Qkv => &self.sparse_qkv,
            Site::O => &self.sparse_o,
            Site::GateUp => &self.sparse_gate_up,
            Site::Down => &self.sparse,
        }
    }

    /// Whether the projections at `site` are activation-sparse.
    pub fn is_site_sparse(&self, site: Site) -> bool {
        !self.sparse_at(site).is_empty()
    }

    /// Sets the thresholds of the sparse projections at `site` (on the
    /// input the CPU hook sees there): one τ per layer, or one for all.
    pub fn set_site_thresholds(&mut self, site: Site, taus: &[f32]) -> Result<()> {
        set_thresholds(&self.ctx, self.sparse_at(site), taus, site.name())
    }

    /// Per layer, the inputs at `site` read in the last token, and the width.
    pub fn site_activity(&self, site: Site) -> Result<Vec<(usize, usize)>> {
        activity(&self.ctx, self.sparse_at(site))
    }

    /// [`GpuLlama::calibrate_down`] for the projections at `site` (the
    /// other sites' thresholds stay as they are).
    pub fn calibrate_site(
        &mut self,
        site: Site,
        target: f32,
        token: u32,
        pos: usize,
    ) -> Result<Vec<f32>> {
        self.calibrate(site, target, token, pos)
    }

    /// Sets the sparse down projections' thresholds: one τ per layer, or
    /// one for all. Inputs with |x| ≤ τ are skipped.
    pub fn set_down_thresholds(&mut self, taus: &[f32]) -> Result<()> {
        self.set_site_thresholds(Site::Down, taus)
    }

    /// Per layer, the inputs of the down projection that were active (read)
    /// in the last token, and its width.
    pub fn down_activity(&self) -> Result<Vec<(usize, usize)>> {
        self.site_activity(Site::Down)
    }

    /// Finds per-layer thresholds under which a share `target` of each
    /// layer's down-projection inputs is skipped for `token` at `pos`
    /// (bisection on the GPU's own active counts, 30 rounds; the inputs of
    /// later layers follow the thresholds of earlier ones), sets them and
    /// returns them.
    pub fn calibrate_down(&mut self, target: f32, token: u32, pos: usize) -> Result<Vec<f32>> {
        self.calibrate(Site::Down, target, token, pos)
    }

    fn calibrate(&mut self, site: Site, target: f32, token: u32, pos: usize) -> Result<Vec<f32>> {
        let set = |m: &mut Self, t: &[f32]| m.set_site_thresholds(site, t);
        if !(0.0..1.0).contains(&target) {
            return Err(Error::Request(format!(
                "target sparsity {target}: it must be in [0, 1)"
            )));
        }
        let n = self.sparse_at(site).len();
        let mut lo = vec![0.0f32; n];
        let mut hi = vec![f32::INFINITY; n];
        let mut tau = vec![0.0f32; n];
        for round in 0..30 {
            if round > 0 {
                for i in 0..n {
                    tau[i] = if hi[i].is_finite() {
                        0.5 * (lo[i] + hi[i])
                    } else {
                        (lo[i] * 4.0).max(1e-3)
                    };
                }
            }
            set(self, &tau)?;
            self.forward_argmax(token, pos)?;
            let act = self.site_activity(site)?;
            for (i, (active, cols)) in act.into_iter().enumerate() {
                let skipped = 1.0 - active as f32 / cols as f32;
                if skipped < target {
                    lo[i] = tau[i];
                } else {
                    hi[i] = tau[i];
                }
            }
        }
        let taus: Vec<f32> = (0..n)
            .map(|i| if hi[i].is_finite() { hi[i] } else { lo[i] })
            .collect();
        set(self, &taus)?;
        Ok(taus)
    }

    /// GPU dispatches per token (greedy).
    pub fn dispatches_per_token(&self) -> usize {
        self.calls.iter().map(|(_, d)| d.len()).sum::<usize>() + self.argmax.len()
    }

    fn start(&mut self, token: u32, pos: usize) -> Result<()> {
        if token as usize >= self.cfg.vocab_size {
            return Err(Error::Request(format!(
                "token id {token} is outside the vocabulary of {}",
                self.cfg.vocab_size
            )));
        }
        if pos >= self.context {
            return Err(Error::Request(format!(
                "position {pos} is past the KV cache's {} positions",
                self.context
            )));
        }
        self.step.write(&self.ctx, pos as u32, token);
        self.pos = pos;
        self.embed.row(token, &mut self.row);
        self.x.write(&self.ctx, &self.row)?;
        Ok(())
    }

    /// Greedy decoding that keeps the host out of the loop: from `token`
    /// at position `pos`, runs `n` steps back to back, each taking the
    /// previous step's argmax on the device (an embedding gather from a
    /// device copy of the table, made on first use), and reads the `n`
    /// chosen tokens back once at the end. The tokens are those that `n`
    /// calls of [`Decoder::forward_argmax`] would give; the host's time
    /// between tokens (read-back, embedding row, submission) is gone, so
    /// this is the GPU's own decode rate. Steps run at positions
    /// `pos..pos + n`.
    pub fn greedy_resident(&mut self, token: u32, pos: usize, n: usize) -> Result<Vec<u32>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        if pos + n > self.context {
            return Err(Error::Request(format!(
                "{n} steps from position {pos} pass the KV cache's {} positions",
                self.context
            )));
        }
        self.prepare_resident()?;
        self.start(token, pos)?;
        let Some((_, gather)) = &self.resident else {
            unreachable!("made above")
        };
        let rounds: Vec<Vec<&Dispatch>> = (0..n)
            .map(|i| {
                let mut v = Vec::new();
                if i > 0 {
                    v.push(gather);
                }
                v.extend(self.step_calls_at(pos + i).into_iter().map(|(_, d)| d));
                v.push(&self.argmax);
                v
            })
            .collect();
        let (ctx, step) = (&self.ctx, &self.step);
        let bytes =
            self.next
                .run_rounds_and_read(ctx, &rounds, self.submissions, 0, 4, &mut |i| {
                    if i > 0 {
                        step.write(ctx, (pos + i) as u32, 0);
                    }
                })?;
        self.pos = pos + n - 1;
        Ok(bytes
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    /// Puts the embedding table on the device (f32, `vocab × dim × 4`
    /// bytes) and binds the gather, once. Errors where the device cannot
    /// hold or bind the table as one buffer.
    fn prepare_resident(&mut self) -> Result<()> {
        if self.resident.is_none() {
            let (vocab, d) = (self.cfg.vocab_size, self.cfg.dim);
            let name = "embedding table (device copy)";
            let bytes = (vocab * d * 4) as u64;
            membound_gpu::check_buffer_size(&self.ctx, name, bytes)?;
            membound_gpu::check_binding_size(&self.ctx, name, bytes)?;
            let upload = |values: &[f32]| {
                GpuBuffer::from_bytes(
                    &self.ctx,
                    name,
                    bytemuck::cast_slice(values),
                    wgpu::BufferUsages::STORAGE,
                )
            };
            let table = match &self.embed {
                // Already the f32 rows on the host: no second copy.
                Embedding::Table(t) => upload(&t[..vocab * d])?,
                embed @ Embedding::Synthetic(_) => {
                    let mut table = vec![0.0f32; vocab * d];
                    table
                        .par_chunks_exact_mut(d)
                        .enumerate()
                        .for_each(|(t, row)| embed.row(t as u32, row));
                    upload(&table)?
                }
            };
            let gather = ops::embed_gather(&self.ctx, &table, vocab, &self.next, &self.x)?;
            self.resident = Some((table, gather));
        }
        Ok(())
    }

    /// The dispatches of the current step with their kinds: split
    /// attention from `split_from` on.
    fn step_calls(&self) -> Vec<(OpKind, &Dispatch)> {
        self.step_calls_at(self.pos)
    }

    /// The dispatches of a step at `pos`.
    fn step_calls_at(&self, pos: usize) -> Vec<(OpKind, &Dispatch)> {
        let mut v: Vec<(OpKind, &Dispatch)> = self.calls.iter().map(|(k, d)| (*k, d)).collect();
        if pos >= self.split_from {
            for (i, d) in &self.long_attention {
                v[*i].1 = d;
            }
        }
        v
    }

    fn token_calls(&self, with_argmax: bool) -> Vec<&Dispatch> {
        let mut v: Vec<&Dispatch> = self.step_calls().into_iter().map(|(_, d)| d).collect();
        if with_argmax {
            v.push(&self.argmax);
        }
        v
    }

    /// Times where a token's time goes: the whole token on the host, its
    /// pass on the GPU, and each dispatch alone, over `reps` repetitions
    /// at position `pos` (the cache before it holds whatever ran last).
    pub fn profile(&mut self, pos: usize, reps: usize) -> Result<Profile> {
        self.start(1.min(self.cfg.vocab_size as u32 - 1), pos)?;
        let calls = self.token_calls(true);
        self.ctx.warm_up(Duration::from_millis(300), |pass| {
            calls.iter().for_each(|d| d.record(pass));
        })?;
        let mut token = Vec::with_capacity(reps);
        for _ in 0..reps {
            let t = Instant::now();
            self.next
                .run_and_read(&self.ctx, &calls, self.submissions, 0, 4)?;
            token.push(t.elapsed());
        }
        token.sort_unstable();
        let pass = self
            .ctx
            .time_repeated(reps, |p| calls.iter().for_each(|d| d.record(p)))?;
        let timestamps = pass.method == membound_gpu::TimingMethod::GpuTimestamps;
        let pass = timestamps.then(|| pass.median());
        let mut kernels: Vec<(OpKind, Duration)> = Vec::new();
        let all = self
            .step_calls()
            .into_iter()
            .chain([(OpKind::Elementwise, &self.argmax)]);
        for (kind, d) in all {
            let t = self.ctx.time_repeated(reps, |p| d.record(p))?.median();
            match kernels.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, sum)) => *sum += t,
                None => kernels.push((kind, t)),
            }
        }
        Ok(Profile {
            dispatches: self.dispatches_per_token(),
            token: token[token.len() / 2],
            pass,
            kernels,
            timestamps,
        })
    }
}

/// Sets one τ per layer, or one for all, on `sparse` (`what`: which
/// projections, for the errors).
fn set_thresholds(
    ctx: &GpuContext,
    sparse: &[(SparseGemv, Threshold)],
    taus: &[f32],
    what: &str,
) -> Result<()> {
    let n = sparse.len();
    if n == 0 {
        return Err(Error::Request(format!(
            "the model was built without sparse {what} projections"
        )));
    }
    if taus.len() != 1 && taus.len() != n {
        return Err(Error::Request(format!(
            "{} thresholds for {n} layers (give one, or one per layer)",
            taus.len()
        )));
    }
    for (i, (_, tau)) in sparse.iter().enumerate() {
        tau.set(ctx, taus[if taus.len() == 1 { 0 } else { i }])?;
    }
    Ok(())
}

/// What [`GpuLlama::matrix_bytes_read`] returns: bytes read in one token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatrixReads {
    /// Each dense weight matrix, whole.
    pub dense: Vec<u64>,
    /// Each activation-sparse matrix: its active columns and its input.
    pub sparse: Vec<u64>,
}

/// Per sparse matrix: inputs read in the last run, and its width.
fn activity(ctx: &GpuContext, sparse: &[(SparseGemv, Threshold)]) -> Result<Vec<(usize, usize)>> {
    sparse
        .iter()
        .map(|(m, _)| Ok((m.read_active_count(ctx)?, m.cols())))
        .collect()
}

impl Decoder for GpuLlama {
    fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    fn forward(&mut self, token: u32, pos: usize) -> Result<Vec<f32>> {
        self.start(token, pos)?;
        let calls = self.token_calls(false);
        let n = (self.cfg.vocab_size * 4) as u64;
        let bytes = self
            .logits
            .buffer()
            .run_and_read(&self.ctx, &calls, self.submissions, 0, n)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    fn forward_argmax(&mut self, token: u32, pos: usize) -> Result<u32> {
        self.start(token, pos)?;
        let calls = self.token_calls(true);
        let bytes = self
            .next
            .run_and_read(&self.ctx, &calls, self.submissions, 0, 4)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// [`GpuLlama::greedy_resident`] where the device can hold the
    /// embedding table as one binding; otherwise (a large vocabulary on a
    /// device with small binding limits) step by step, as before. Any
    /// other error is returned.
    fn greedy_steps(&mut self, token: u32, pos: usize, n: usize) -> Result<Vec<u32>> {
        match self.prepare_resident() {
            Ok(()) => self.greedy_resident(token, pos, n),
            Err(Error::Gpu(membound_gpu::GpuError::BufferTooLarge { .. })) => {
                super::greedy_step_by_step(self, token, pos, n)
            }
            Err(e) => Err(e),
        }
    }
}

/// Names of [`synthetic_config`]'s shapes.
pub const SYNTHETIC_MODELS: &[&str] = &["llama-1b", "llama-8b", "smollm2-135m"];

/// Shapes of real models for synthetic decode benchmarks: `llama-1b`
/// (Llama 3.2 1B), `llama-8b` (Llama 3 8B) and `smollm2-135m` (SmolLM2's
/// shape, for timing it where the file is not at hand).
pub fn synthetic_config(name: &str) -> Result<LlamaConfig> {
    let (dim, hidden, layers, heads, kv_heads, vocab) = match name {
        "llama-1b" => (2048, 8192, 16, 32, 8, 128_256),
        "llama-8b" => (4096, 14_336, 32, 32, 8, 128_256),
        "smollm2-135m" => (576, 1536, 30, 9, 3, 49_152),
        other => {
            return Err(Error::Request(format!(
                "unknown synthetic model {other:?}; known: {}",
                SYNTHETIC_MODELS.join(", ")
            )));
        }
    };
    Ok(LlamaConfig {
        dim,
        hidden_dim: hidden,
        n_layers: layers,
        n_heads: heads,
        n_kv_heads: kv_heads,
        vocab_size: vocab,
        max_seq_len: 8192,
        rms_eps: 1e-5,
        rope_theta: 500_000.0,
        rope: RopeLayout::HalfSplit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_and_plans() {
        assert!(glob("layers.*.w_down", "layers.12.w_down"));
        assert!(!glob("layers.*.w_down", "layers.12.wo"));
        assert!(glob("*", "classifier"));
        assert!(glob("layers.0.*", "layers.0.qkv"));
        assert!(!glob("layers.0.*", "layers.10.qkv"));
        let mut plan = WeightPlan::uniform("affine:bits=4,group=64");
        plan.classifier = Some("f16".into());
        plan.overrides
            .push(("layers.*.w_down".into(), "affine:bits=8,group=64".into()));
        assert_eq!(plan.spec_for("classifier"), "f16");
        assert_eq!(plan.spec_for("layers.3.w_down"), "affine:bits=8,group=64");
        assert_eq!(plan.spec_for("layers.3.qkv"), "affine:bits=4,group=64");
        plan.check().unwrap();
        assert!(WeightPlan::uniform("svd:rank=8").check().is_err());
        assert!(WeightPlan::uniform("bf17").check().is_err());
    }

    #[test]
    fn synthetic_shapes_are_real() {
        let c = synthetic_config("llama-8b").unwrap();
        assert_eq!((c.n_heads, c.head_dim(), c.kv_dim()), (32, 128, 1024));
        assert!(synthetic_config("llama-70b").is_err());
    }
}
