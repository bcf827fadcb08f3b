//! `membound eval`: what a weight plan costs in quality, against the dense
//! f32 model.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use membound::eval::{EVAL_TEXT, EvalOptions, EvalReport, evaluate};
use membound::model::{CpuLlama, Decoder, WeightPlan};
use membound::run::{DeviceKind, EngineInfo, EngineOptions};
use serde::Serialize;

use crate::generate::{ModelArgs, build_engine, print_engine};
use crate::progress::LazyBar;

/// Measure the quality a weight plan keeps: perplexity, KL divergence from
/// the dense f32 model, and top-1 agreement.
///
/// The model under test runs with --weights (and --classifier, --override)
/// on --device; the reference is the same model with dense f32 weights: on
/// the CPU it is the f32 reference decoder over the original weights; on the
/// GPU (faster) it is the GPU decoder with every matrix in f32
/// (--reference cpu forces the CPU one). Both read the same tokens in
/// windows of --window tokens (each window restarts the KV cache), and at
/// every position the model's next-token distribution is compared with the
/// reference's:
///
///   perplexity  exp(mean −log p(true next token)), model and reference
///   KL          mean KL(p_ref ‖ p_model) in nats (0: identical)
///   top-1       share of positions where both pick the same token
///
/// The text is --text FILE, or membound's shipped evaluation text (about
/// 2,900 words of original English prose in several registers).
///
/// Examples:
///   membound eval --weights affine:bits=4,group=64
///   membound eval --weights nf4 --classifier f16 --max-tokens 1024
///   membound eval --model llama2xs-280K --weights affine:bits=3,group=32 --device cpu
///   membound eval --weights affine:bits=4,group=64 --text my.txt --window 256 --json
///   membound eval --device cpu --weights f32 --sparsity 0.5
///   membound eval --device cpu --thresholds thresholds.json
///
/// --sparsity S / --thresholds FILE zero small activations (|x| ≤ τ per
/// layer and site) in the CPU decoder; see `membound sparsity`.
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sparse: crate::sparsity::SparsityArgs,
    /// Text to evaluate on [default: the shipped evaluation text].
    #[arg(long, value_name = "FILE")]
    text: Option<PathBuf>,
    /// Score at most this many tokens (0: the whole text).
    #[arg(long, default_value_t = 512, value_name = "N")]
    max_tokens: usize,
    /// Tokens per window [default: 512, or the model's context if shorter].
    #[arg(long, value_name = "N")]
    window: Option<usize>,
    /// Where the dense f32 reference runs [default: as --device].
    #[arg(long, value_name = "DEVICE", value_parser = parse_device)]
    reference: Option<DeviceKind>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

fn parse_device(s: &str) -> Result<DeviceKind, String> {
    s.parse().map_err(|e: membound::Error| e.to_string())
}

#[derive(Serialize)]
struct Output<'a> {
    text: String,
    text_tokens: usize,
    window: usize,
    weights: String,
    reference: String,
    report: &'a EvalReport,
    seconds: f64,
    engine: &'a EngineInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    sparsity: Option<crate::sparsity::SparseInfo>,
}

pub fn run(args: Args) -> Result<()> {
    let mut opts = args.model.options()?;
    let gpu = args.model.gpu()?;
    let ref_device = args.reference.unwrap_or(args.model.device);
    let ref_gpu = match (ref_device, &gpu) {
        (DeviceKind::Gpu, Some(g)) => Some(g.clone()),
        (DeviceKind::Gpu, None) => Some(crate::generate::open_gpu()?),
        (DeviceKind::Cpu, _) => None,
    };
    let (text, text_name) = match &args.text {
        Some(p) => (
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            p.display().to_string(),
        ),
        None => (
            EVAL_TEXT.to_string(),
            "membound::eval::EVAL_TEXT".to_string(),
        ),
    };
    let model = args.model.load()?;
    let max_seq = model.config.max_seq_len;
    let window = args.window.unwrap_or(512.min(max_seq));
    anyhow::ensure!(
        (2..=max_seq).contains(&window),
        "--window {window}: the model takes windows of 2 to {max_seq} tokens"
    );
    // The KV cache needs to hold one window and no more.
    opts.context = Some(opts.context.unwrap_or(window).max(window).min(max_seq));
    let tokens = model.tokenizer.encode(&text, true)?;
    anyhow::ensure!(
        tokens.len() >= 2,
        "the text is {} token(s); evaluation needs at least 2",
        tokens.len()
    );
    let (mut engine, mut sparse) = if args.sparse.any() {
        let (e, s) = args.sparse.build(&model, &opts, gpu.clone())?;
        (e, Some(s))
    } else {
        (build_engine(&model, &opts, gpu, "preparing")?, None)
    };
    let (mut reference, ref_name): (Box<dyn Decoder>, String) = match ref_gpu {
        None => (
            Box::new(CpuLlama::new(model.config.clone(), model.weights.clone())),
            "dense f32, CPU reference decoder over the original weights".to_string(),
        ),
        Some(ctx) => {
            let name = ctx.adapter().name.clone();
            let ref_opts = EngineOptions {
                device: DeviceKind::Gpu,
                plan: WeightPlan::uniform("f32"),
                context: opts.context,
                kv_cache: membound_gpu::KvDType::F32,
            };
            let e = build_engine(&model, &ref_opts, Some(ctx), "reference")?;
            (
                e.into_decoder(),
                format!("dense f32, GPU decoder on {name}"),
            )
        }
    };
    drop(model);
    let info = engine.info().clone();
    if !args.json {
        print_engine(&info);
        eprintln!("reference: {ref_name}");
    }
    let eval_opts = EvalOptions {
        window,
        max_tokens: (args.max_tokens > 0).then_some(args.max_tokens),
    };
    let bar = std::cell::OnceCell::new();
    let t0 = Instant::now();
    let under_test: &mut dyn Decoder = match sparse.as_mut() {
        Some(s) => s.model.as_mut(),
        None => engine.decoder_mut(),
    };
    let report = evaluate(
        under_test,
        Some(reference.as_mut()),
        &tokens,
        &eval_opts,
        &mut |_, total| {
            bar.get_or_init(|| LazyBar::new(total as u64, "evaluating"))
                .step();
        },
    )?;
    if let Some(b) = bar.get() {
        b.finish();
    }
    let seconds = t0.elapsed().as_secs_f64();
    let out = Output {
        text: text_name,
        text_tokens: tokens.len(),
        window,
        weights: info.weights_summary(),
        reference: ref_name,
        report: &report,
        seconds,
        engine: &info,
        sparsity: sparse.as_ref().map(crate::sparsity::Sparse::info),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    t.set_header(["", "value"]);
    let f = |v: Option<f64>, d: usize| v.map_or_else(|| "-".into(), |v| format!("{v:.d$}"));
    t.add_row([
        "text".to_string(),
        format!("{} ({} tokens)", out.text, tokens.len()),
    ]);
    t.add_row([
        "scored".to_string(),
        format!(
            "{} tokens in {} window(s) of ≤{window}",
            report.tokens, report.windows
        ),
    ]);
    t.add_row([
        "perplexity".to_string(),
        format!("{:.3}", report.perplexity),
    ]);
    t.add_row([
        "reference perplexity".to_string(),
        f(report.ref_perplexity, 3),
    ]);
    t.add_row(["KL(ref ‖ model), nats".to_string(), f(report.kl, 5)]);
    t.add_row([
        "top-1 agreement".to_string(),
        report
            .top1_agreement
            .map_or_else(|| "-".into(), |a| format!("{:.1}%", a * 100.0)),
    ]);
    if let Some(sp) = &out.sparsity {
        t.add_row([
            "activation sparsity".to_string(),
            format!(
                "{} (target {:.0}%, {} thresholds on the {}: {})",
                sp.achieved.map_or_else(
                    || "not counted on the GPU".to_string(),
                    |a| format!("{:.1}% zeroed", a * 100.0)
                ),
                sp.target * 100.0,
                sp.thresholds,
                sp.device,
                sp.source
            ),
        ]);
    }
    t.add_row(["time".to_string(), format!("{seconds:.1} s")]);
    println!("{t}");
    Ok(())
}
