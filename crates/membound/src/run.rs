//! Running a model end to end: load a file, store its weights as a
//! [`WeightPlan`] says, decode on the CPU or the GPU, and generate text.
//!
//! [`Model::load`] reads a model file (anything [`load_llama`] reads) and its
//! tokenizer. [`Engine::new`] prepares the weights under a plan and builds
//! the decoder: [`GpuLlama`] on the GPU, or [`CpuLlama`] over
//! [`PreparedModel::decoded_weights`] on the CPU, so both devices multiply by
//! exactly the same weights. [`EngineInfo`] says what runs: the adapter, the
//! weight modes in use, the bytes a token reads, the KV cache, the device's
//! datasheet bandwidth.
//!
//! [`generate`] feeds a prompt token by token (prefill) and then decodes,
//! timing the two phases apart. Greedy decoding uses
//! [`Decoder::forward_argmax`], so the GPU reads back one token id per step;
//! sampling reads the logits.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use membound_gpu::GpuContext;

use crate::bench::known_peak_gbps;
use crate::model::gpu::MatrixSummary;
use crate::model::{
    CpuLlama, Decoder, GpuLlama, GpuLlamaOptions, LlamaConfig, LlamaWeights, PreparedModel,
    WeightPlan, load_llama, prepare,
};
use crate::sample::Sampler;
use crate::tokenizer::{TextStream, Tokenizer};
use crate::{Error, Result};

/// Where a model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// The f32 CPU reference decoder ([`CpuLlama`]).
    Cpu,
    /// The GPU decoder ([`GpuLlama`]) on the adapter wgpu picks.
    Gpu,
}

impl DeviceKind {
    /// `"cpu"` or `"gpu"`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Gpu => "gpu",
        }
    }
}

impl std::str::FromStr for DeviceKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Self::Cpu),
            "gpu" => Ok(Self::Gpu),
            other => Err(Error::Request(format!(
                "unknown device {other:?}; use gpu or cpu"
            ))),
        }
    }
}

impl std::fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A model file as loaded: configuration, f32 weights and tokenizer.
#[derive(Debug)]
pub struct Model {
    /// The path it was loaded from.
    pub path: PathBuf,
    /// Its configuration.
    pub config: LlamaConfig,
    /// Its weights in f32 (and the encodings of a quantized file).
    pub weights: LlamaWeights,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
}

impl Model {
    /// Loads the model at `path` (see [`load_llama`]) and finds its tokenizer
    /// (see [`Tokenizer::for_model`]).
    pub fn load(path: &Path) -> Result<Self> {
        let (config, weights) = load_llama(path)?;
        let tokenizer = load_tokenizer(path)?;
        if tokenizer.vocab_size() > config.vocab_size {
            return Err(Error::Model {
                path: path.display().to_string(),
                problem: format!(
                    "the tokenizer has {} ids but the model only {}",
                    tokenizer.vocab_size(),
                    config.vocab_size
                ),
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            config,
            weights,
            tokenizer,
        })
    }
}

/// The tokenizer of the model at `path`, which may be a Hugging Face
/// directory or its `config.json` / index file as well as a single file.
fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let dir_of = |p: &Path| match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let dir = if path.is_dir() {
        Some(path.to_path_buf())
    } else if name == "config.json" || name.ends_with(".safetensors.index.json") {
        Some(dir_of(path))
    } else {
        None
    };
    let Some(dir) = dir else {
        let src = membound_tensor::open(path)?;
        return Tokenizer::for_model(path, src.as_ref());
    };
    // Any safetensors file of the directory stands for it.
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| Error::Model {
            path: dir.display().to_string(),
            problem: format!("listing the folder: {e}"),
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    let file = files.first().ok_or_else(|| Error::Model {
        path: dir.display().to_string(),
        problem: "no .safetensors file in the folder".into(),
    })?;
    let src = membound_tensor::open(file)?;
    Tokenizer::for_model(&dir, src.as_ref())
}

/// How to build an [`Engine`].
#[derive(Clone, Debug, PartialEq)]
pub struct EngineOptions {
    /// CPU or GPU.
    pub device: DeviceKind,
    /// How every weight matrix is stored.
    pub plan: WeightPlan,
    /// Positions the KV cache holds; `None`: the model's context, at most
    /// 4096 on the GPU.
    pub context: Option<usize>,
    /// How the GPU's KV cache stores keys and values (the CPU reference
    /// keeps f32).
    pub kv_cache: membound_gpu::KvDType,
}

impl Default for EngineOptions {
    /// GPU, f16 weights, the default context, f32 KV cache.
    fn default() -> Self {
        Self {
            device: DeviceKind::Gpu,
            plan: WeightPlan::uniform("f16"),
            context: None,
            kv_cache: membound_gpu::KvDType::F32,
        }
    }
}

/// Matrices stored in one spec.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ModeGroup {
    /// The spec, e.g. `affine:bits=4,group=64`.
    pub spec: String,
    /// Whether this group is the classifier.
    pub classifier: bool,
    /// Matrices stored so.
    pub matrices: usize,
    /// Bytes they hold.
    pub bytes: u64,
}

/// What an [`Engine`] runs.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EngineInfo {
    /// The model file.
    pub model: PathBuf,
    /// The tokenizer's kind (`bpe (gguf)`, `tokenizer.json`, `llama2.c`).
    pub tokenizer: String,
    /// CPU or GPU.
    pub device: DeviceKind,
    /// The GPU adapter's name (`None` on the CPU).
    pub adapter: Option<String>,
    /// The backend (Vulkan, Metal, …) on the GPU.
    pub backend: Option<String>,
    /// The plan asked for.
    pub plan: WeightPlan,
    /// The weight modes in use, grouped by spec, classifier apart.
    pub modes: Vec<ModeGroup>,
    /// The embedding table's storage (`f16` or `f32`).
    pub embedding: String,
    /// Weight bytes a token reads as the plan stores them (matrices, norms,
    /// one embedding row).
    pub stored_bytes_per_token: u64,
    /// Weight bytes a token reads on this device: as stored on the GPU
    /// (with row padding); the decoded f32 weights on the CPU.
    pub bytes_read_per_token: u64,
    /// Bytes of KV cache.
    pub kv_cache_bytes: u64,
    /// Positions the KV cache holds.
    pub context: usize,
    /// The device's datasheet memory bandwidth in GB/s, when known.
    pub peak_gbps: Option<f64>,
}

impl EngineInfo {
    /// One line of the weight modes in use, e.g. `affine:bits=4,group=64
    /// ×120 matrices, f16 classifier, f16 embedding`.
    pub fn weights_summary(&self) -> String {
        let mut parts: Vec<String> = self
            .modes
            .iter()
            .map(|g| {
                if g.classifier {
                    format!("{} classifier", g.spec)
                } else {
                    let noun = if g.matrices == 1 {
                        "matrix"
                    } else {
                        "matrices"
                    };
                    format!("{} ×{} {noun}", g.spec, g.matrices)
                }
            })
            .collect();
        parts.push(format!("{} embedding", self.embedding));
        parts.join(", ")
    }

    /// Effective bandwidth in GB/s at `tokens_per_s`: bytes read per token
    /// × tokens/s.
    pub fn effective_gbps(&self, tokens_per_s: f64) -> f64 {
        self.bytes_read_per_token as f64 * tokens_per_s / 1e9
    }

    /// The share of the peak reached at `tokens_per_s`, when the peak is
    /// known.
    pub fn peak_share(&self, tokens_per_s: f64) -> Option<f64> {
        self.peak_gbps
            .map(|p| self.effective_gbps(tokens_per_s) / p)
    }
}

/// Groups `summary` by spec, the classifier apart: most matrices first,
/// the classifier last.
pub fn group_modes(summary: &[MatrixSummary]) -> Vec<ModeGroup> {
    let mut groups: Vec<ModeGroup> = Vec::new();
    for m in summary {
        let classifier = m.role == "classifier";
        match groups
            .iter_mut()
            .find(|g| g.spec == m.spec && g.classifier == classifier)
        {
            Some(g) => {
                g.matrices += 1;
                g.bytes += m.bytes;
            }
            None => groups.push(ModeGroup {
                spec: m.spec.clone(),
                classifier,
                matrices: 1,
                bytes: m.bytes,
            }),
        }
    }
    // The classifier last, the most used spec first.
    groups.sort_by_key(|g| (g.classifier, std::cmp::Reverse(g.matrices)));
    groups
}

enum Runner {
    Cpu(Box<CpuLlama>),
    Gpu(Box<GpuLlama>),
}

/// A model ready to decode on one device, with its tokenizer and what it
/// runs ([`EngineInfo`]).
pub struct Engine {
    runner: Runner,
    tokenizer: Tokenizer,
    info: EngineInfo,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// Builds an [`Engine`] step by step: `Engine::builder(path).device(..)
/// .plan(..).build()`.
#[derive(Clone, Debug)]
pub struct EngineBuilder {
    path: PathBuf,
    opts: EngineOptions,
    gpu: Option<Arc<GpuContext>>,
}

impl EngineBuilder {
    /// CPU or GPU (default GPU).
    pub fn device(mut self, device: DeviceKind) -> Self {
        self.opts.device = device;
        self
    }

    /// The weight plan (default `f16` everywhere).
    pub fn plan(mut self, plan: WeightPlan) -> Self {
        self.opts.plan = plan;
        self
    }

    /// Positions the KV cache holds.
    pub fn context(mut self, context: Option<usize>) -> Self {
        self.opts.context = context;
        self
    }

    /// A GPU context to share (otherwise one is opened when needed).
    pub fn gpu_context(mut self, ctx: Arc<GpuContext>) -> Self {
        self.gpu = Some(ctx);
        self
    }

    /// Loads the model and builds the engine; `progress(done, total)`
    /// counts matrices prepared.
    pub fn build(self, progress: &(dyn Fn(usize, usize) + Sync)) -> Result<Engine> {
        self.opts.plan.check()?;
        let model = Model::load(&self.path)?;
        Engine::new(&model, &self.opts, self.gpu, progress)
    }
}

impl Engine {
    /// A builder for the model at `path`.
    pub fn builder(path: impl Into<PathBuf>) -> EngineBuilder {
        EngineBuilder {
            path: path.into(),
            opts: EngineOptions::default(),
            gpu: None,
        }
    }

    /// Prepares `model` under `opts.plan` and builds its decoder on
    /// `opts.device`. On the GPU, `gpu` is the context to use (one is opened
    /// when `None`). `progress(done, total)` counts matrices prepared.
    pub fn new(
        model: &Model,
        opts: &EngineOptions,
        gpu: Option<Arc<GpuContext>>,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<Self> {
        let cfg = &model.config;
        let prepared = prepare(cfg, &model.weights, &opts.plan, progress)?;
        Self::from_prepared(model, &prepared, opts, gpu)
    }

    /// Builds the decoder of an already prepared model (see [`Engine::new`]).
    pub fn from_prepared(
        model: &Model,
        prepared: &PreparedModel,
        opts: &EngineOptions,
        gpu: Option<Arc<GpuContext>>,
    ) -> Result<Self> {
        let cfg = &model.config;
        if let Some(c) = opts.context
            && (c == 0 || c > cfg.max_seq_len)
        {
            return Err(Error::Request(format!(
                "a context of {c} positions; the model takes 1 to {}",
                cfg.max_seq_len
            )));
        }
        let modes = group_modes(&prepared.summary());
        let stored = prepared.bytes_per_token();
        let embedding = if opts.plan.weights.trim().eq_ignore_ascii_case("f32") {
            "f32"
        } else {
            "f16"
        };
        let mut info = EngineInfo {
            model: model.path.clone(),
            tokenizer: model.tokenizer.kind().to_string(),
            device: opts.device,
            adapter: None,
            backend: None,
            plan: opts.plan.clone(),
            modes,
            embedding: embedding.into(),
            stored_bytes_per_token: stored,
            bytes_read_per_token: 0,
            kv_cache_bytes: 0,
            context: 0,
            peak_gbps: None,
        };
        let runner = match opts.device {
            DeviceKind::Gpu => {
                let ctx = match gpu {
                    Some(c) => c,
                    None => Arc::new(GpuContext::new()?),
                };
                let g = GpuLlama::new(
                    Arc::clone(&ctx),
                    prepared,
                    GpuLlamaOptions {
                        context: opts.context,
                        kv_cache: opts.kv_cache,
                        ..Default::default()
                    },
                )?;
                let a = ctx.adapter();
                info.adapter = Some(a.name.clone());
                info.backend = Some(format!("{:?}", a.backend));
                info.peak_gbps = known_peak_gbps(&a.name);
                info.bytes_read_per_token = g.weight_bytes_per_token();
                info.kv_cache_bytes = g.kv_cache_bytes();
                info.context = g.max_positions();
                Runner::Gpu(Box::new(g))
            }
            DeviceKind::Cpu => {
                let w = prepared.decoded_weights()?;
                // The CPU multiplies by the decoded f32 weights.
                let matrices: u64 = prepared
                    .summary()
                    .iter()
                    .map(|m| (m.shape[0] * m.shape[1] * 4) as u64)
                    .sum();
                let norms_and_row = ((cfg.n_layers * 2 + 2) * cfg.dim * 4) as u64;
                info.bytes_read_per_token = matrices + norms_and_row;
                info.kv_cache_bytes =
                    (2 * cfg.n_layers * cfg.max_seq_len * cfg.kv_dim() * 4) as u64;
                info.context = opts.context.unwrap_or(cfg.max_seq_len);
                Runner::Cpu(Box::new(CpuLlama::new(cfg.clone(), w)))
            }
        };
        Ok(Self {
            runner,
            tokenizer: model.tokenizer.clone(),
            info,
        })
    }

    /// What this engine runs.
    pub fn info(&self) -> &EngineInfo {
        &self.info
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The model's configuration.
    pub fn config(&self) -> &LlamaConfig {
        self.decoder().config()
    }

    /// Positions the KV cache holds.
    pub fn context(&self) -> usize {
        self.info.context
    }

    /// The decoder.
    pub fn decoder(&self) -> &dyn Decoder {
        match &self.runner {
            Runner::Cpu(c) => c.as_ref(),
            Runner::Gpu(g) => g.as_ref(),
        }
    }

    /// The decoder, to run.
    pub fn decoder_mut(&mut self) -> &mut dyn Decoder {
        match &mut self.runner {
            Runner::Cpu(c) => c.as_mut(),
            Runner::Gpu(g) => g.as_mut(),
        }
    }

    /// The GPU decoder, when the engine runs on the GPU (for
    /// [`GpuLlama::profile`]).
    pub fn gpu_mut(&mut self) -> Option<&mut GpuLlama> {
        match &mut self.runner {
            Runner::Gpu(g) => Some(g),
            Runner::Cpu(_) => None,
        }
    }

    /// The decoder as a box, dropping the rest.
    pub fn into_decoder(self) -> Box<dyn Decoder> {
        match self.runner {
            Runner::Cpu(c) => c,
            Runner::Gpu(g) => g,
        }
    }

    /// Token ids of a prompt: `text` with BOS first when the tokenizer has
    /// one. Special tokens written in the text count as such.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer.encode(text, true)
    }

    /// [`generate`] from position 0 with this engine's context, its
    /// tokenizer's stop ids, and the leading space dropped when a llama2.c
    /// model starts from BOS alone.
    pub fn generate(
        &mut self,
        prompt_ids: &[u32],
        max_tokens: usize,
        sampler: &mut Sampler,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation> {
        let opts = GenerateOptions {
            max_tokens,
            stop_ids: self.tokenizer.stop_ids(),
            start_pos: 0,
            context: self.info.context,
            skip_leading_space: self.tokenizer.kind() == "llama2.c"
                && prompt_ids.len() == 1
                && self.tokenizer.bos() == prompt_ids.first().copied(),
        };
        let tok = self.tokenizer.clone();
        generate(
            self.decoder_mut(),
            &tok,
            prompt_ids,
            sampler,
            &opts,
            on_text,
        )
    }
}

/// How [`generate`] runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenerateOptions {
    /// Most tokens to generate (the stop token, if any, not counted).
    pub max_tokens: usize,
    /// Ids that end generation; the stop id is not part of the output.
    pub stop_ids: Vec<u32>,
    /// The position of the prompt's first token: earlier positions hold a
    /// cached prefix (a chat's earlier turns); 0 starts afresh.
    pub start_pos: usize,
    /// Positions the decoder's KV cache holds.
    pub context: usize,
    /// Drop one space at the very start of the text (llama2.c models
    /// generating from BOS alone).
    pub skip_leading_space: bool,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// A stop id came.
    Stop,
    /// `max_tokens` were generated.
    MaxTokens,
    /// The KV cache is full.
    Context,
}

/// Timings of one [`generate`] call.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct GenerationStats {
    /// Prompt tokens fed.
    pub prompt_tokens: usize,
    /// Tokens generated (a stop id not counted).
    pub generated_tokens: usize,
    /// Seconds feeding the prompt, token by token (its last step yields the
    /// first generated token).
    pub prompt_seconds: f64,
    /// Prompt tokens per second.
    pub prompt_tokens_per_s: f64,
    /// Decode steps run: generated tokens fed back to get the next one.
    pub decode_steps: usize,
    /// Seconds of the decode steps.
    pub decode_seconds: f64,
    /// Decode steps per second; `None` when no decode step ran.
    pub decode_tokens_per_s: Option<f64>,
    /// Greedy (on-device arg-max) or sampled from logits.
    pub greedy: bool,
    /// Why generation ended.
    pub stop: StopReason,
}

/// What [`generate`] produced.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Generation {
    /// The generated text (the stop id's text excluded).
    pub text: String,
    /// The generated token ids (the stop id excluded).
    pub tokens: Vec<u32>,
    /// The stop id that ended generation, if one did.
    pub stop_token: Option<u32>,
    /// The first position not yet in the KV cache: the prompt and every
    /// generated token fed back occupy `start_pos..next_pos`.
    pub next_pos: usize,
    /// Timings.
    pub stats: GenerationStats,
}

/// Greedy decode steps `generate` runs at once (text streams a burst at a
/// time; at most this many minus one are computed past a stop token).
pub const GREEDY_BURST: usize = 8;

/// Feeds `prompt_ids` at positions `opts.start_pos..` (prefill, token by
/// token), then generates up to `opts.max_tokens` tokens, calling `on_text`
/// with each piece of text as it completes (whole UTF-8 characters).
///
/// Greedy samplers (temperature 0) use [`Decoder::forward_argmax`] for the
/// prompt's last token and [`Decoder::greedy_steps`] in bursts of
/// [`GREEDY_BURST`] after it; others
/// read the logits of the prompt's last token and of every decode step.
/// Prompt tokens before the last run through `forward_argmax` as well (their
/// logits are not needed, and the GPU then reads back 4 bytes).
///
/// Errors, before anything runs: an empty prompt, or a prompt that does not
/// fit `opts.context` positions after `opts.start_pos`. Generation that
/// reaches the end of the context stops there ([`StopReason::Context`]).
pub fn generate(
    decoder: &mut dyn Decoder,
    tokenizer: &Tokenizer,
    prompt_ids: &[u32],
    sampler: &mut Sampler,
    opts: &GenerateOptions,
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation> {
    if prompt_ids.is_empty() {
        return Err(Error::Request(
            "the prompt is empty: give some text (this tokenizer adds no BOS)".into(),
        ));
    }
    let context = opts.context.min(decoder.config().max_seq_len);
    let end = opts.start_pos + prompt_ids.len();
    if end > context {
        return Err(Error::Request(format!(
            "the prompt is {} tokens{}, longer than the context of {context} positions; \
             shorten it or raise --context",
            prompt_ids.len(),
            if opts.start_pos > 0 {
                format!(" after {} cached", opts.start_pos)
            } else {
                String::new()
            }
        )));
    }
    let vocab = decoder.config().vocab_size;
    if let Some(t) = prompt_ids.iter().find(|t| **t as usize >= vocab) {
        return Err(Error::Request(format!(
            "prompt token id {t} is outside the vocabulary of {vocab}"
        )));
    }
    let greedy = sampler.params().is_greedy();
    let mut step = |d: &mut dyn Decoder, tok: u32, pos: usize| -> Result<u32> {
        if greedy {
            d.forward_argmax(tok, pos)
        } else {
            let logits = d.forward(tok, pos)?;
            sampler.sample(&logits)
        }
    };

    let t0 = Instant::now();
    let (last, head) = prompt_ids.split_last().expect("checked non-empty");
    for (i, &t) in head.iter().enumerate() {
        decoder.forward_argmax(t, opts.start_pos + i)?;
    }
    let mut next = step(decoder, *last, end - 1)?;
    let prompt_time = t0.elapsed();

    let mut stream = TextStream::new(tokenizer, opts.skip_leading_space);
    let (mut text, mut tokens) = (String::new(), Vec::new());
    let mut pos = end;
    let mut decode_time = Duration::ZERO;
    let mut steps = 0;
    let mut stop_token = None;
    let mut pending = std::collections::VecDeque::new();
    let stop = loop {
        if opts.max_tokens == 0 {
            break StopReason::MaxTokens;
        }
        if opts.stop_ids.contains(&next) {
            stop_token = Some(next);
            break StopReason::Stop;
        }
        tokens.push(next);
        let piece = stream.push(next)?;
        if !piece.is_empty() {
            on_text(&piece);
            text.push_str(&piece);
        }
        if tokens.len() >= opts.max_tokens {
            break StopReason::MaxTokens;
        }
        if pos >= context {
            break StopReason::Context;
        }
        if greedy {
            // Greedy steps run in bursts without the host in between (on
            // the GPU, one read-back a burst); tokens past a stop are
            // computed and dropped.
            if pending.is_empty() {
                let k = GREEDY_BURST
                    .min(opts.max_tokens - tokens.len())
                    .min(context - pos);
                let t = Instant::now();
                pending.extend(decoder.greedy_steps(next, pos, k)?);
                decode_time += t.elapsed();
            }
            next = pending
                .pop_front()
                .expect("a burst holds at least one token");
        } else {
            let t = Instant::now();
            next = step(decoder, next, pos)?;
            decode_time += t.elapsed();
        }
        steps += 1;
        pos += 1;
    };
    let secs = |d: Duration| d.as_secs_f64();
    Ok(Generation {
        text,
        stop_token,
        next_pos: pos,
        stats: GenerationStats {
            prompt_tokens: prompt_ids.len(),
            generated_tokens: tokens.len(),
            prompt_seconds: secs(prompt_time),
            prompt_tokens_per_s: prompt_ids.len() as f64 / secs(prompt_time).max(1e-9),
            decode_steps: steps,
            decode_seconds: secs(decode_time),
            decode_tokens_per_s: (steps > 0).then(|| steps as f64 / secs(decode_time).max(1e-9)),
            greedy,
            stop,
        },
        tokens,
    })
}

/// Convenience over [`generate`]: from position 0, context the model's.
pub fn generate_simple(
    decoder: &mut dyn Decoder,
    tokenizer: &Tokenizer,
    prompt_ids: &[u32],
    max_tokens: usize,
    sampler: &mut Sampler,
    stop_ids: &[u32],
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation> {
    let opts = GenerateOptions {
        max_tokens,
        stop_ids: stop_ids.to_vec(),
        start_pos: 0,
        context: decoder.config().max_seq_len,
        skip_leading_space: false,
    };
    generate(decoder, tokenizer, prompt_ids, sampler, &opts, on_text)
}

/// Length of the common prefix of `a` and `b`.
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Loads the tokenizer only (used where no decoder is needed).
pub fn tokenizer_for(path: &Path) -> Result<Tokenizer> {
    load_tokenizer(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse() {
        assert_eq!("GPU".parse::<DeviceKind>().unwrap(), DeviceKind::Gpu);
        assert_eq!("cpu".parse::<DeviceKind>().unwrap(), DeviceKind::Cpu);
        assert!("tpu".parse::<DeviceKind>().is_err());
    }

    #[test]
    fn modes_group_by_spec() {
        let m = |role: &str, spec: &str| MatrixSummary {
            role: role.into(),
            spec: spec.into(),
            shape: [2, 2],
            bytes: 8,
        };
        let g = group_modes(&[
            m("layers.0.qkv", "a"),
            m("layers.0.wo", "b"),
            m("layers.1.qkv", "a"),
            m("classifier", "a"),
        ]);
        assert_eq!(g.len(), 3);
        assert_eq!(
            (g[0].spec.as_str(), g[0].matrices, g[0].bytes),
            ("a", 2, 16)
        );
        assert!(g[2].classifier);
    }

    #[test]
    fn prefixes() {
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 4]), 2);
        assert_eq!(common_prefix(&[], &[1]), 0);
    }
}
