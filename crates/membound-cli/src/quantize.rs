//! `membound quantize`: every 2-D weight of a model in one codec, or the
//! block matrices of a LLaMA-family model calibrated with GPTQ or AWQ.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result};
use membound::calibrate::{self, CALIB_TEXT, CalibOptions, Method};
use membound::eval::{EVAL_TEXT, EvalOptions, evaluate};
use membound::model::{CpuLlama, load_llama};
use membound::quantize;

use crate::progress::LazyBar;

/// Write every 2-D weight of MODEL in one codec, as safetensors; or, with
/// --method gptq|awq (or --budget, --head), calibrate the block matrices of a
/// LLaMA-family model.
///
/// Plain mode (--method rtn, the default, without --budget or --head):
/// round-to-nearest. Affine output uses MLX's naming: `<stem>.weight` holds
/// the packed uint32 codes, `<stem>.scales` and `<stem>.biases` beside it.
/// Other codecs store each encoded part as `<name>.<part>` (e.g.
/// `….weight.codes`, `….weight.codebook`). The codec spec is in the file's
/// `__metadata__` (`membound.codec`), with a JSON map `membound.tensors`
/// saying which tensors make up each encoded weight, so the file decodes with
/// nothing else. Other tensors are copied as they are; GGUF block tensors
/// that are not 2-D are dequantized to f32.
///
/// Calibrated mode (GGUF and llama2.c LLaMA models, affine codecs only):
/// q, k, v, o, gate, up and down of every block are quantized with the
/// method, calibrated on --calib text (default: membound's calibration text,
/// disjoint from the evaluation text) read by the f32 CPU decoder:
///
///   gptq   GPTQ (Frantar et al. 2023): column-by-column rounding with error
///          feedback through the inputs' Hessian; --damp, --act-order
///   awq    AWQ (Lin et al. 2024): per-input-channel scales mean|x|^α, α
///          searched on a grid, folded into the RMSNorm weights and the v and
///          up rows (no run-time cost)
///   rtn    round to nearest (for comparison under the same layout)
///
/// Layers are calibrated in --passes stages, each with the earlier stages
/// already quantized (--passes = layers is fully sequential, 1 uses the
/// dense model's inputs). --budget B mixes 2/3/4/8-bit layers (same group
/// and scale type) so the average code bits per block weight is at most B,
/// guided by each layer's measured KL divergence when quantized alone.
/// The embedding and classifier stay f32 unless --head names a codec.
/// GPTQ overfits when a matrix has more inputs than there are calibration
/// tokens (SmolLM2's 1,536-wide down projection): there, use the whole text
/// (--calib-tokens 4096), --damp 0.1 and --act-order (docs/quantization.md).
/// The file's layout is the plain one above, so `membound eval --model`,
/// `generate` and the GPU affine kernels run it unchanged.
///
/// --eval N scores the written file against the dense source model on the
/// first N tokens of the evaluation text: perplexity, KL and top-1 agreement
/// (f32 CPU decoders).
///
/// The output is written to a temporary file and renamed into place; the
/// input is never overwritten, and an existing output only with --force.
///
/// Codec specs (see `membound study weights --list-codecs` for more):
///   affine:bits=4,group=64        MLX's default 4-bit layout (4.5 bits/weight)
///   affine:bits=8,group=row,scale=bf16
///   nf4:block=64                  QLoRA's NormalFloat
///   kmeans:bits=3,scope=row       per-row Lloyd-Max codebook
///   polymse:degree=3              cubic levels fitted to Lloyd-Max centroids
///   svd:rank=64                   low rank, f16 factors
///
/// Examples:
///   membound quantize smollm2 --codec affine:bits=4,group=64 -o smollm2-q4.safetensors
///   membound quantize llama2xs-280K --codec kmeans:bits=3,scope=row -o small.safetensors --json
///   membound quantize smollm2 --method gptq --codec affine:bits=3,group=64 -o q3.safetensors --eval 512
///   membound quantize babyllama105 --method awq --codec affine:bits=3,group=64 -o a3.safetensors
///   membound quantize smollm2 --method gptq --codec affine:bits=4,group=64 --budget 2.5 -o mix.safetensors
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// A model file or name.
    model: String,
    /// The codec spec, e.g. affine:bits=4,group=64.
    #[arg(long)]
    codec: String,
    /// The safetensors file to write.
    #[arg(short, long)]
    output: PathBuf,
    /// Replace the output file if it exists.
    #[arg(long)]
    force: bool,
    /// Print a JSON report (every tensor, its action, bits/weight and SQNR).
    #[arg(long)]
    json: bool,
    /// rtn, gptq or awq.
    #[arg(long, default_value = "rtn")]
    method: String,
    /// Calibration text file, or `default` (membound's calibration text).
    #[arg(long, value_name = "FILE|default", default_value = "default")]
    calib: String,
    /// Calibration tokens (the first N of the text).
    #[arg(long, value_name = "N", default_value_t = 512)]
    calib_tokens: usize,
    /// Mixed precision: average code bits per block weight (2 to 8).
    #[arg(long, value_name = "BPW")]
    budget: Option<f64>,
    /// GPTQ damping, a fraction of mean(diag H).
    #[arg(long, value_name = "F", default_value_t = 0.01)]
    damp: f64,
    /// GPTQ: quantize columns in order of decreasing Hessian diagonal
    /// (static groups, so the layout stays plain MLX).
    #[arg(long)]
    act_order: bool,
    /// Calibration stages [default: every layer for models under 50M
    /// weights × calibration tokens budget, else 3].
    #[arg(long, value_name = "N")]
    passes: Option<usize>,
    /// Codec of the embedding / classifier in calibrated mode (`f32` keeps
    /// them; default f32).
    #[arg(long, value_name = "SPEC")]
    head: Option<String>,
    /// Tokens scored per layer sensitivity (mixed precision).
    #[arg(long, value_name = "N", default_value_t = 128)]
    sensitivity_tokens: usize,
    /// After writing, score the file against the dense model on the first N
    /// tokens of the evaluation text (0: off).
    #[arg(long, value_name = "N", default_value_t = 0)]
    eval: usize,
}

/// A progress bar per phase, with ETA.
/// (Each finished phase is also logged with its time, for logs.)
struct Phases {
    cur: Mutex<Option<(String, LazyBar, Instant)>>,
}

impl Phases {
    fn new() -> Self {
        Self {
            cur: Mutex::new(None),
        }
    }

    fn end(cur: &mut Option<(String, LazyBar, Instant)>) {
        if let Some((p, b, t)) = cur.take() {
            b.finish();
            eprintln!("  {p}: {:.1} s", t.elapsed().as_secs_f64());
        }
    }

    fn report(&self, phase: &str, _done: usize, total: usize) {
        let Ok(mut cur) = self.cur.lock() else { return };
        if cur.as_ref().is_none_or(|(p, _, _)| p != phase) {
            Self::end(&mut cur);
            *cur = Some((
                phase.to_string(),
                LazyBar::new(total as u64, phase),
                Instant::now(),
            ));
        }
        if let Some((_, b, _)) = cur.as_ref() {
            b.step();
        }
    }

    fn finish(&self) {
        if let Ok(mut cur) = self.cur.lock() {
            Self::end(&mut cur);
        }
    }
}

pub fn run(args: Args) -> Result<()> {
    let input = crate::models::resolve(&args.model)?;
    if args.output.exists() && !args.force {
        // Fail before the work, not after; `quantize::write` checks again.
        quantize::write_check(&input, &args.output, args.force)?;
    }
    let method: Method = args.method.parse()?;
    let head = args.head.as_deref().filter(|h| *h != "f32");
    let calibrated = method != Method::Rtn || args.budget.is_some() || args.head.is_some();
    let t0 = Instant::now();
    let q = if calibrated {
        run_calibrated(&args, &input, method, head)?
    } else {
        let source = membound_tensor::open(&input)?;
        let bar = LazyBar::new(source.tensors().len() as u64, "quantizing");
        let q = quantize::quantize(source.as_ref(), &args.codec, &|_, _, _| bar.step())?;
        bar.finish();
        q
    };
    quantize::write(&q, &input, &args.output, args.force)?;
    let seconds = t0.elapsed().as_secs_f64();
    let encoded: Vec<_> = q.report.iter().filter(|r| r.action == "encoded").collect();
    let weights: f64 = encoded
        .iter()
        .map(|r| r.shape.iter().product::<usize>() as f64)
        .sum();
    let bits: f64 = encoded
        .iter()
        .map(|r| r.bits_per_weight.unwrap_or(0.0) * r.shape.iter().product::<usize>() as f64)
        .sum();
    let sqnr: Vec<f64> = encoded
        .iter()
        .filter_map(|r| r.sqnr_db)
        .filter(|s| s.is_finite())
        .collect();
    let mean_sqnr = if sqnr.is_empty() {
        f64::NAN
    } else {
        sqnr.iter().sum::<f64>() / sqnr.len() as f64
    };
    let quality = if args.eval > 0 {
        Some(eval_against_dense(&input, &args.output, args.eval)?)
    } else {
        None
    };
    let bpw = if weights > 0.0 { bits / weights } else { 0.0 };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "input": input, "output": args.output, "codec": q.codec, "method": method.name(),
                "encoded_tensors": encoded.len(), "copied_tensors": q.report.len() - encoded.len(),
                "bits_per_weight": bpw, "seconds": seconds,
                "mean_sqnr_db": mean_sqnr, "tensor_bytes": q.bytes(), "eval": quality,
                "calibration": q.metadata.iter().find(|(k, _)| k == calibrate::META_METHOD)
                    .and_then(|(_, v)| serde_json::from_str::<serde_json::Value>(v).ok()),
                "tensors": q.report,
            }))?
        );
    } else {
        let sq = if calibrated {
            String::new()
        } else {
            format!(" (mean SQNR {mean_sqnr:.2} dB)")
        };
        println!(
            "wrote {} ({}, {}): {} weights encoded at {:.3} bits/weight{sq}, {} tensors copied; {}; {:.1} s",
            args.output.display(),
            method.name(),
            q.codec,
            encoded.len(),
            bpw,
            q.report.len() - encoded.len(),
            crate::inspect::human_bytes(q.bytes() as u64),
            seconds
        );
        if let Some(r) = quality {
            println!(
                "eval ({} tokens of the evaluation text): perplexity {:.4} (dense {:.4}), KL {:.5} nats, top-1 agreement {:.2}%",
                r["tokens"],
                r["perplexity"].as_f64().unwrap_or(f64::NAN),
                r["ref_perplexity"].as_f64().unwrap_or(f64::NAN),
                r["kl"].as_f64().unwrap_or(f64::NAN),
                100.0 * r["top1_agreement"].as_f64().unwrap_or(f64::NAN)
            );
        }
    }
    Ok(())
}

fn run_calibrated(
    args: &Args,
    input: &std::path::Path,
    method: Method,
    head: Option<&str>,
) -> Result<quantize::Quantized> {
    let codec = calibrate::parse_affine(&args.codec)?;
    let source = membound_tensor::open(input)?;
    let (cfg, w) =
        load_llama(input).context("calibrated quantization needs a LLaMA-family model")?;
    let tokenizer = membound::run::tokenizer_for(input)?;
    let (text, text_name) = if args.calib == "default" {
        (
            CALIB_TEXT.to_string(),
            "membound calibration text (data/calib.txt)".to_string(),
        )
    } else {
        (
            std::fs::read_to_string(&args.calib)
                .with_context(|| format!("reading {}", args.calib))?,
            args.calib.clone(),
        )
    };
    anyhow::ensure!(args.calib_tokens >= 2, "--calib-tokens must be at least 2");
    let tokens = calibrate::calibration_tokens(&tokenizer, &text, args.calib_tokens)?;
    anyhow::ensure!(
        tokens.len() >= 2,
        "the calibration text {text_name} gives {} token(s); at least 2 are needed",
        tokens.len()
    );
    let per_layer: usize = w.layers.first().map_or(0, |l| {
        l.wq.len()
            + l.wk.len()
            + l.wv.len()
            + l.wo.len()
            + l.w_gate.len()
            + l.w_up.len()
            + l.w_down.len()
    });
    let model_weights = per_layer * cfg.n_layers + w.embed.len();
    let passes = args.passes.unwrap_or_else(|| {
        // Fully sequential while one pass per layer stays cheap.
        if (model_weights as f64) * tokens.len() as f64 * cfg.n_layers as f64 <= 5e10 {
            cfg.n_layers
        } else {
            3.min(cfg.n_layers)
        }
    });
    let opts = CalibOptions {
        method,
        codec,
        head: head.map(str::to_string),
        passes: passes.max(1),
        damp: args.damp,
        act_order: args.act_order,
        budget: args.budget,
        sensitivity_tokens: args.sensitivity_tokens,
        ..Default::default()
    };
    eprintln!(
        "calibrating {} ({} layers) with {} on {} tokens of {text_name}, {} pass(es){}",
        input.display(),
        cfg.n_layers,
        method.name(),
        tokens.len(),
        opts.passes,
        args.budget
            .map(|b| format!(", mixed precision at {b} bits/weight"))
            .unwrap_or_default()
    );
    let phases = Phases::new();
    let c = calibrate::calibrate(&cfg, &w, &tokens, &opts, &|p, d, t| phases.report(p, d, t))?;
    phases.finish();
    if args.budget.is_some() {
        eprintln!("layer bits: {:?}", c.layer_bits);
    }
    let summary = serde_json::json!({
        "method": method.name(), "codec": args.codec, "calib": text_name,
        "calib_tokens": c.tokens, "passes": opts.passes, "damp": opts.damp,
        "act_order": opts.act_order, "budget": opts.budget, "layer_bits": c.layer_bits,
        "head": opts.head, "seconds": c.seconds,
        "awq_alpha": if method == Method::Awq { serde_json::to_value(&c.awq_alpha)? } else { serde_json::Value::Null },
        "sensitivity": c.sensitivity,
    });
    Ok(calibrate::to_quantized(source.as_ref(), &cfg, &c, summary)?)
}

/// Perplexity, KL and top-1 of the quantized file against the dense source.
fn eval_against_dense(
    input: &std::path::Path,
    output: &std::path::Path,
    max_tokens: usize,
) -> Result<serde_json::Value> {
    let (cfg, dense) = load_llama(input)?;
    let (qcfg, qw) =
        load_llama(output).with_context(|| format!("reading back {}", output.display()))?;
    let tokenizer = membound::run::tokenizer_for(input)?;
    let tokens = calibrate::encode_lossy(&tokenizer, EVAL_TEXT)?.0;
    let window = 512.min(cfg.max_seq_len);
    let small = |c: &membound::model::LlamaConfig| {
        let mut c = c.clone();
        c.max_seq_len = window;
        c
    };
    let mut model = CpuLlama::new(small(&qcfg), qw);
    let mut reference = CpuLlama::new(small(&cfg), dense);
    let bar = LazyBar::new(max_tokens as u64, "evaluating");
    let r = evaluate(
        &mut model,
        Some(&mut reference),
        &tokens,
        &EvalOptions {
            window,
            max_tokens: Some(max_tokens),
        },
        &mut |_, _| bar.step(),
    )?;
    bar.finish();
    Ok(serde_json::to_value(&r)?)
}
