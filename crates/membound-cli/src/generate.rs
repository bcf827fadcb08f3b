//! `membound generate`: stream text from a model, and what its speed means
//! for memory bandwidth. Also the model, weight-plan and sampling options
//! shared by `chat`, `eval` and `demo`.

use std::io::Write;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use membound::model::WeightPlan;
use membound::run::{DeviceKind, Engine, EngineInfo, EngineOptions, Generation, Model};
use membound::sample::{Sampler, SamplingParams};
use membound::tokenizer::{ChatMessage, Tokenizer, chat_prompt};
use membound_gpu::GpuContext;
use serde::Serialize;

use crate::inspect::human_bytes;
use crate::progress::LazyBar;

/// Which model to run, how to store its weights, and where.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model file or name (smollm2 is fetched on first use; llama2xs-280K,
    /// babyllama105 are llama2.c fixtures).
    #[arg(long, short, default_value = "smollm2")]
    pub model: String,
    /// How every weight matrix is stored: f32, f16, or a codec with a GPU
    /// kernel: affine:bits=B,group=G (B in 2,3,4,8), nf4, kmeans:bits=4,
    /// poly:…, polymse:….
    #[arg(long, short, default_value = "f16", value_name = "SPEC")]
    pub weights: String,
    /// The classifier's spec [default: as --weights].
    #[arg(long, value_name = "SPEC")]
    pub classifier: Option<String>,
    /// Store matrices whose role matches PATTERN in SPEC; roles are
    /// layers.N.qkv, layers.N.wo, layers.N.gate_up, layers.N.w_down and
    /// classifier, `*` matches anything. Repeatable, first match wins.
    #[arg(long = "override", value_name = "PATTERN=SPEC")]
    pub overrides: Vec<String>,
    /// Where to run: gpu (wgpu: Vulkan, Metal, DX12) or cpu (the f32
    /// reference decoder over the same decoded weights).
    #[arg(long, default_value = "gpu", value_parser = parse_device)]
    pub device: DeviceKind,
    /// KV cache positions [default: the model's context, at most 4096 on the GPU].
    #[arg(long, value_name = "N")]
    pub context: Option<usize>,
    /// KV-cache storage on the GPU: f32, f16, q8 or q4 (8/4-bit codes with
    /// an f16 scale and minimum per 32 values of a head).
    #[arg(long, default_value = "f32", value_name = "TYPE", value_parser = parse_kv)]
    pub kv_cache: membound_gpu::KvDType,
}

fn parse_kv(s: &str) -> Result<membound_gpu::KvDType, String> {
    membound_gpu::KvDType::parse(s).map_err(|e| e.to_string())
}

fn parse_device(s: &str) -> Result<DeviceKind, String> {
    s.parse().map_err(|e: membound::Error| e.to_string())
}

/// Checks one spec, naming it in the error.
fn check_spec(what: &str, spec: &str) -> Result<()> {
    WeightPlan::uniform(spec)
        .check()
        .with_context(|| format!("bad weight spec {spec:?} ({what})"))
}

impl ModelArgs {
    /// The weight plan, every spec checked.
    pub fn plan(&self) -> Result<WeightPlan> {
        plan_of(&self.weights, self.classifier.as_deref(), &self.overrides)
    }

    /// Opens the GPU when the device is the GPU.
    pub fn gpu(&self) -> Result<Option<Arc<GpuContext>>> {
        match self.device {
            DeviceKind::Gpu => open_gpu().map(Some),
            DeviceKind::Cpu => Ok(None),
        }
    }

    /// Resolves and loads the model (with its tokenizer).
    pub fn load(&self) -> Result<Model> {
        load_model(&self.model)
    }

    /// Engine options of these arguments.
    pub fn options(&self) -> Result<EngineOptions> {
        anyhow::ensure!(
            self.device == DeviceKind::Gpu || self.kv_cache == membound_gpu::KvDType::F32,
            "--kv-cache {} runs on the GPU; the CPU reference keeps an f32 cache",
            self.kv_cache.name()
        );
        Ok(EngineOptions {
            device: self.device,
            plan: self.plan()?,
            context: self.context,
            kv_cache: self.kv_cache,
        })
    }
}

/// A weight plan from the command-line pieces, every spec checked.
pub fn plan_of(
    weights: &str,
    classifier: Option<&str>,
    overrides: &[String],
) -> Result<WeightPlan> {
    check_spec("--weights", weights)?;
    let mut plan = WeightPlan::uniform(weights);
    if let Some(c) = classifier {
        check_spec("--classifier", c)?;
        plan.classifier = Some(c.to_string());
    }
    for o in overrides {
        let Some((pattern, spec)) = o.split_once('=') else {
            bail!(
                "--override {o:?} is not PATTERN=SPEC (e.g. layers.*.w_down=affine:bits=8,group=64)"
            );
        };
        let (pattern, spec) = (pattern.trim(), spec.trim());
        if pattern.is_empty() {
            bail!("--override {o:?} has an empty pattern");
        }
        check_spec(&format!("--override {pattern}"), spec)?;
        plan.overrides.push((pattern.to_string(), spec.to_string()));
    }
    Ok(plan)
}

/// Opens the GPU, pointing at `--device cpu` when there is none.
pub fn open_gpu() -> Result<Arc<GpuContext>> {
    let ctx = GpuContext::new().context("opening the GPU (or pass --device cpu)")?;
    Ok(Arc::new(ctx))
}

/// Resolves a MODEL argument and loads it with its tokenizer.
pub fn load_model(arg: &str) -> Result<Model> {
    let path = crate::models::resolve(arg)?;
    Model::load(&path).with_context(|| format!("loading {}", path.display()))
}

/// Prepares `model` as `opts` says, with a progress bar over matrices.
pub fn build_engine(
    model: &Model,
    opts: &EngineOptions,
    gpu: Option<Arc<GpuContext>>,
    what: &str,
) -> Result<Engine> {
    let total = model.config.n_layers * 4 + 1;
    let bar = LazyBar::new(total as u64, what);
    let engine = Engine::new(model, opts, gpu, &|_, _| bar.step());
    bar.finish();
    Ok(engine?)
}

/// Sampling options.
#[derive(clap::Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Softmax temperature; 0 is greedy (the GPU then reads back only the
    /// token id, not the logits).
    #[arg(long, default_value_t = 0.0, value_name = "T")]
    pub temperature: f32,
    /// Sample only among the K most likely tokens (0: all).
    #[arg(long, default_value_t = 0, value_name = "K")]
    pub top_k: usize,
    /// Nucleus sampling: the smallest set of tokens with probability ≥ P.
    #[arg(long, default_value_t = 1.0, value_name = "P")]
    pub top_p: f32,
    /// Seed of the sampler (equal seeds give equal text).
    #[arg(long, default_value_t = 0, value_name = "S")]
    pub seed: u64,
}

impl SamplingArgs {
    /// The sampler these options describe.
    pub fn sampler(&self) -> Result<Sampler> {
        Ok(Sampler::new(SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
        })?)
    }
}

/// How the prompt is turned into tokens.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Template {
    /// Chat when the vocabulary has ChatML tokens (<|im_start|>), raw otherwise.
    Auto,
    /// The prompt as one user turn of SmolLM2-Instruct's ChatML template.
    Chat,
    /// The prompt as it is (BOS first when the tokenizer has one).
    Raw,
}

/// Whether the tokenizer knows ChatML's special tokens.
pub fn has_chatml(tok: &Tokenizer) -> bool {
    tok.token_to_id("<|im_start|>").is_some() && tok.token_to_id("<|im_end|>").is_some()
}

/// Stream text from a model, and see what its speed means for memory
/// bandwidth.
///
/// The prompt runs token by token (prefill), then the model decodes up to
/// --max-tokens tokens, stopping at the end-of-text/end-of-turn token. Text
/// streams to stdout; what runs (device, weight modes in use, bytes read per
/// token) and the speed go to stderr: decode tokens/s, weight bytes read per
/// token, the effective bandwidth (bytes/token × tokens/s) and its share of
/// the adapter's datasheet peak when known.
///
/// With --template auto (the default), models with ChatML tokens (SmolLM2-
/// Instruct) get the prompt as a user turn of their chat template; others
/// continue the raw text. --json prints one JSON object (text, token ids,
/// stats, what ran) instead of streaming.
///
/// Examples:
///   membound generate --prompt "What is the capital of France?"
///   membound generate --weights affine:bits=4,group=64 --classifier f16 --prompt "Tell me a story"
///   membound generate --weights nf4 --override 'layers.*.w_down=f16' --prompt Hi
///   membound generate --model llama2xs-280K --prompt "Once upon a time" --temperature 0.8 --seed 3
///   membound generate --device cpu --max-tokens 20 --prompt "Hello" --json
///   membound generate --device cpu --sparsity 0.5 --prompt "Hello"
///
/// --sparsity S / --thresholds FILE zero small activations (|x| ≤ τ per
/// layer and site) in the CPU decoder; see `membound sparsity`.
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt [default: empty, i.e. BOS alone; models without BOS need one].
    #[arg(long, short, default_value = "")]
    prompt: String,
    /// How the prompt becomes tokens.
    #[arg(long, value_enum, default_value_t = Template::Auto)]
    template: Template,
    /// Most tokens to generate.
    #[arg(long, short = 'n', default_value_t = 128, value_name = "N")]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    sparse: crate::sparsity::SparsityArgs,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
}

/// The JSON of `generate --json`.
#[derive(Serialize)]
struct Output<'a> {
    prompt: &'a str,
    template: &'static str,
    prompt_ids: &'a [u32],
    text: &'a str,
    tokens: &'a [u32],
    stop_token: Option<u32>,
    sampling: SamplingParams,
    stats: Stats<'a>,
    engine: &'a EngineInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    sparsity: Option<crate::sparsity::SparseInfo>,
}

/// Speed and what it means for bandwidth.
#[derive(Serialize)]
pub struct Stats<'a> {
    #[serde(flatten)]
    pub generation: &'a membound::run::GenerationStats,
    pub weights: String,
    pub bytes_read_per_token: u64,
    pub effective_gbps: Option<f64>,
    pub peak_gbps: Option<f64>,
    pub peak_share: Option<f64>,
}

impl<'a> Stats<'a> {
    pub fn new(g: &'a Generation, info: &EngineInfo) -> Self {
        let tps = g.stats.decode_tokens_per_s;
        Self {
            generation: &g.stats,
            weights: info.weights_summary(),
            bytes_read_per_token: info.bytes_read_per_token,
            effective_gbps: tps.map(|t| info.effective_gbps(t)),
            peak_gbps: info.peak_gbps,
            peak_share: tps.and_then(|t| info.peak_share(t)),
        }
    }
}

/// Prints what an engine runs, to stderr.
pub fn print_engine(info: &EngineInfo) {
    let device = match (&info.adapter, &info.backend) {
        (Some(a), Some(b)) => format!("gpu: {a} ({b})"),
        _ => "cpu (f32 reference decoder over the decoded weights)".to_string(),
    };
    eprintln!(
        "model:   {}  [tokenizer: {}]",
        info.model.display(),
        info.tokenizer
    );
    eprintln!("device:  {device}");
    eprintln!("weights: {}", info.weights_summary());
    eprintln!(
        "         {} read per token ({} as stored), KV cache {} for {} positions",
        human_bytes(info.bytes_read_per_token),
        human_bytes(info.stored_bytes_per_token),
        human_bytes(info.kv_cache_bytes),
        info.context
    );
}

/// One line of speed: tokens/s, bytes per token, GB/s, share of peak.
pub fn speed_line(g: &Generation, info: &EngineInfo) -> String {
    let s = &g.stats;
    let prefill = format!(
        "prompt {} tok in {:.2} s ({:.1} tok/s)",
        s.prompt_tokens, s.prompt_seconds, s.prompt_tokens_per_s
    );
    let Some(tps) = s.decode_tokens_per_s else {
        return format!(
            "{prefill}; {} token generated, no decode step timed",
            s.generated_tokens
        );
    };
    let peak = match (info.peak_share(tps), info.peak_gbps) {
        (Some(f), Some(p)) => format!(", {:.1}% of the {p:.0} GB/s peak", f * 100.0),
        _ => ", peak bandwidth unknown for this device".into(),
    };
    format!(
        "{prefill}; decode {} tok in {:.2} s = {tps:.1} tok/s × {} /token = {:.2} GB/s{peak}",
        s.decode_steps,
        s.decode_seconds,
        human_bytes(info.bytes_read_per_token),
        info.effective_gbps(tps),
    )
}

/// The prompt's token ids under `template`, and the template used.
pub fn prompt_ids(
    tok: &Tokenizer,
    prompt: &str,
    template: Template,
) -> Result<(Vec<u32>, Template)> {
    let chat = match template {
        Template::Auto => has_chatml(tok),
        Template::Chat => true,
        Template::Raw => false,
    };
    if chat {
        let text = chat_prompt(&[ChatMessage::new("user", prompt)], true);
        Ok((tok.encode(&text, true)?, Template::Chat))
    } else {
        Ok((tok.encode(prompt, true)?, Template::Raw))
    }
}

pub fn run(args: Args) -> Result<()> {
    let opts = args.model.options()?;
    let mut sampler = args.sampling.sampler()?;
    let gpu = args.model.gpu()?;
    let model = args.model.load()?;
    let (mut engine, mut sparse) = if args.sparse.any() {
        let (e, s) = args.sparse.build(&model, &opts, gpu.clone())?;
        (e, Some(s))
    } else {
        (build_engine(&model, &opts, gpu, "preparing")?, None)
    };
    drop(model);
    let (ids, template) = prompt_ids(engine.tokenizer(), &args.prompt, args.template)?;
    if ids.is_empty() {
        bail!("the prompt is empty and this tokenizer has no BOS: pass --prompt TEXT");
    }
    if ids.len() > engine.context() {
        bail!(
            "the prompt is {} tokens, longer than the context of {} positions; shorten it or \
             raise --context",
            ids.len(),
            engine.context()
        );
    }
    let info = engine.info().clone();
    if !args.json {
        print_engine(&info);
        eprintln!();
    }
    let mut out = std::io::stdout().lock();
    if !args.json && template == Template::Raw && !args.prompt.is_empty() {
        write!(out, "{}", args.prompt)?;
        out.flush()?;
    }
    let json = args.json;
    let mut on_text = |t: &str| {
        if !json {
            // A closed stdout ends the stream quietly.
            let _ = write!(out, "{t}").and_then(|()| out.flush());
        }
    };
    let g = match sparse.as_mut() {
        None => engine.generate(&ids, args.max_tokens, &mut sampler, &mut on_text)?,
        Some(s) => {
            let tok = engine.tokenizer().clone();
            let gopts = membound::run::GenerateOptions {
                max_tokens: args.max_tokens,
                stop_ids: tok.stop_ids(),
                start_pos: 0,
                context: engine.context(),
                skip_leading_space: tok.kind() == "llama2.c"
                    && ids.len() == 1
                    && tok.bos() == ids.first().copied(),
            };
            membound::run::generate(
                s.model.as_mut(),
                &tok,
                &ids,
                &mut sampler,
                &gopts,
                &mut on_text,
            )?
        }
    };
    if json {
        let o = Output {
            prompt: &args.prompt,
            template: match template {
                Template::Chat => "chat",
                _ => "raw",
            },
            prompt_ids: &ids,
            text: &g.text,
            tokens: &g.tokens,
            stop_token: g.stop_token,
            sampling: *sampler.params(),
            stats: Stats::new(&g, &info),
            engine: &info,
            sparsity: sparse.as_ref().map(crate::sparsity::Sparse::info),
        };
        println!("{}", serde_json::to_string_pretty(&o)?);
    } else {
        println!();
        eprintln!();
        eprintln!("{}", speed_line(&g, &info));
        if let Some(s) = &sparse {
            let i = s.info();
            eprintln!(
                "sparsity on the {}: {} (target {:.0}%; {})",
                i.device,
                i.achieved.map_or_else(
                    || "zeroed share not counted on the GPU".to_string(),
                    |a| format!("{:.1}% of projection inputs zeroed", a * 100.0)
                ),
                i.target * 100.0,
                i.source
            );
        }
    }
    Ok(())
}
