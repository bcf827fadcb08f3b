//! `membound sparsity`: how sparse activations really are, what
//! thresholding them costs, and whether a predictor could skip MLP rows.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use membound::eval::{EVAL_TEXT, EvalOptions};
use membound::model::{Bert, CpuLlama, LlamaWeights, Site, WeightPlan, prepare};
use membound::run::Model;
use membound::sparsity::calibrate::{self, Magnitudes, Sensitivity};
use membound::sparsity::predict::{Confusion, PredictHook, PredictOptions, Predictor};
use membound::sparsity::quality::{
    QualityPoint, Replay, dense_reference, evaluate_thresholds, evaluate_with_hook, largest_within,
};
use membound::sparsity::{
    Method, Recorder, RecordingHook, SiteRecord, SiteSet, ThresholdFile, teacher_force,
};
use membound::tokenizer::Tokenizer;
use serde::Serialize;

use crate::progress::LazyBar;

/// The 4-bit weights of the quality sweep.
const Q4: &str = "affine:bits=4,group=64";

/// Measure activation sparsity honestly: exact zeros, shares under
/// thresholds, histograms; optionally the quality cost of thresholding, a
/// threshold sidecar, and a Deja Vu-style row predictor.
///
/// Decoders (smollm2, llama2xs-280K, babyllama105, any llama file) read the
/// first --tokens tokens of membound's evaluation text with teacher forcing
/// through the f32 CPU decoder, which reports the input of every projection:
/// qkv (normed attention input), o (attention output), gate_up (normed MLP
/// input) and down (SiLU(gate)·up). MiniLM (BERT) reads 40 English sentences
/// shipped in this command; its sites are attn_qkv_in, attn_out_in,
/// ffn_up_in and ffn_down_in (GeLU output).
///
/// Per layer × site: exact-zero share (the only lossless sparsity), shares
/// with |x| ≤ 1e-3, 1e-2, 0.05, 0.1 and with |x| < r·mean|x| of the same
/// vector for r = 0.1, 0.25, 0.5, and a log10|x| histogram (quarter
/// decades). Calibration and the quality sweep use the first --tokens tokens;
/// evaluation scores held-out tokens from the second half of the text.
///
/// --quality: perplexity, KL from dense f32 and top-1 agreement at each
/// --levels target, with uniform per-layer thresholds on the down site only
/// and on all sites, in f32 and 4-bit (affine:bits=4,group=64) weights, plus
/// greedy allocations (per-unit KL sensitivity) with --greedy.
///
/// --calibrate S -o FILE: writes the threshold sidecar that `membound eval
/// --thresholds FILE` applies (--method uniform|greedy, --sites down|all).
///
/// --predict: fits a rank --rank predictor per layer and reports recall,
/// precision, rows skipped and the quality cost.
///
/// Examples:
///   membound sparsity llama2xs-280K --json
///   membound sparsity smollm2 --tokens 256 --plot docs/img
///   membound sparsity smollm2 --quality --eval-tokens 256 --greedy
///   membound sparsity llama2xs-280K --calibrate 0.5 --sites all -o t.json
///   membound sparsity minilm --plot docs/img
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Model file or name (smollm2, minilm, llama2xs-280K, babyllama105).
    model: String,
    /// Tokens recorded and used for calibration (decoders).
    #[arg(long, default_value_t = 256, value_name = "N")]
    tokens: usize,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
    /// Write SVG plots into DIR (sparsity-<model>-*.svg).
    #[arg(long, value_name = "DIR")]
    plot: Option<PathBuf>,
    /// Run the quality sweep.
    #[arg(long)]
    quality: bool,
    /// Held-out tokens scored per quality point.
    #[arg(long, default_value_t = 256, value_name = "N")]
    eval_tokens: usize,
    /// Target sparsities of the sweep, comma-separated.
    #[arg(
        long,
        default_value = "0,0.25,0.4,0.5,0.6,0.7,0.9",
        value_name = "LIST"
    )]
    levels: String,
    /// Skip the 4-bit weights in the sweep.
    #[arg(long)]
    no_quant: bool,
    /// Weights of the sweep, comma-separated: f32, q4 (affine:bits=4,group=64).
    #[arg(long, default_value = "f32,q4", value_name = "LIST")]
    sweep_weights: String,
    /// Site sets of the sweep, comma-separated: down, all.
    #[arg(long, default_value = "down,all", value_name = "LIST")]
    sweep_sites: String,
    /// Add greedy (sensitivity-allocated) thresholds to the sweep (f32 weights).
    #[arg(long)]
    greedy: bool,
    /// Leave uniform thresholds out of the sweep (with --greedy: greedy only).
    #[arg(long)]
    no_uniform: bool,
    /// Tokens of each sensitivity probe (greedy allocation).
    #[arg(long, default_value_t = 32, value_name = "N")]
    probe_tokens: usize,
    /// Level at which each unit's sensitivity is probed.
    #[arg(long, default_value_t = 0.5, value_name = "S")]
    probe: f64,
    /// Write a threshold sidecar for target sparsity S (needs -o).
    #[arg(long, value_name = "S")]
    calibrate: Option<f64>,
    /// Calibration method of --calibrate: uniform or greedy.
    #[arg(long, default_value = "uniform", value_parser = parse_method)]
    method: Method,
    /// Sites of --calibrate: down or all.
    #[arg(long, default_value = "down", value_parser = parse_sites)]
    sites: SiteSet,
    /// The sidecar path of --calibrate (not overwritten without --force).
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Overwrite an existing -o file.
    #[arg(long)]
    force: bool,
    /// Fit and evaluate the active-row predictor.
    #[arg(long)]
    predict: bool,
    /// Rank of each layer's predictor.
    #[arg(long, default_value_t = 64, value_name = "R")]
    rank: usize,
    /// Tokens the predictor is fitted on.
    #[arg(long, default_value_t = 512, value_name = "N")]
    predict_tokens: usize,
    /// Share of down inputs labelled inactive for the predictor.
    #[arg(long, default_value_t = 0.5, value_name = "S")]
    predict_target: f64,
    /// Only redraw the quality plot (into --plot DIR) from the quality
    /// points of earlier `--json` outputs of this command, merged.
    #[arg(long, value_name = "JSON", num_args = 1..)]
    replot: Vec<PathBuf>,
    /// Training recall the predictor's cut-off keeps.
    #[arg(long, default_value_t = 0.95, value_name = "R")]
    recall: f64,
}

fn parse_method(s: &str) -> Result<Method, String> {
    s.parse().map_err(|e: membound::Error| e.to_string())
}

fn parse_sites(s: &str) -> Result<SiteSet, String> {
    s.parse().map_err(|e: membound::Error| e.to_string())
}

/// English sentences for MiniLM, written for this command.
const SENTENCES: &[&str] = &[
    "The train to the coast leaves at seven in the morning.",
    "She poured the coffee and watched the rain run down the window.",
    "Memory bandwidth, not arithmetic, limits how fast a language model decodes.",
    "A good loaf of bread needs time more than it needs skill.",
    "The committee postponed its decision until the spring meeting.",
    "My grandfather kept bees behind the barn for forty years.",
    "Why does the sky look blue at noon and red at sunset?",
    "The new bridge cut the commute across the river by half.",
    "He forgot his umbrella, so he ran the last three blocks.",
    "Quantum computers are still far from breaking modern encryption.",
    "The children built a fort out of cardboard boxes and blankets.",
    "Please remember to water the tomatoes while I am away.",
    "The museum reopened after a two-year renovation of its east wing.",
    "A small error in the first step can ruin the whole calculation.",
    "The orchestra tuned their instruments as the audience found their seats.",
    "Our dog refuses to walk past the house with the noisy parrot.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "Glaciers in the valley have retreated several kilometres since 1950.",
    "I would rather read a long novel than watch a short film.",
    "The software update fixed the crash but made startup slower.",
    "Farmers rotate crops to keep the soil healthy and productive.",
    "The detective noticed that the clock on the wall had stopped.",
    "Learning a new language is easier when you have someone to talk to.",
    "The stock market fell sharply after the interest rate announcement.",
    "A thin layer of frost covered the parked cars at dawn.",
    "The hikers reached the summit just before the clouds rolled in.",
    "Most of the energy in a lightning bolt is released as heat.",
    "The library lends out tools as well as books and films.",
    "He repaired the old radio with parts from a broken television.",
    "The treaty was signed in 1648 and ended thirty years of war.",
    "Cats sleep for most of the day and hunt at dusk.",
    "The engineer measured the vibration of the engine at full speed.",
    "Fresh herbs make even a simple soup taste remarkable.",
    "The students argued about whether the experiment was fair.",
    "A lighthouse warned the ships away from the rocky shore.",
    "The company hired twenty new nurses for the night shift.",
    "Wind turbines now supply a large share of the country's electricity.",
    "She practised the piano every evening until her fingers ached.",
    "The map showed a hidden path along the edge of the forest.",
    "Nobody expected the quiet candidate to win the election.",
];

/// One row of the statistics table.
#[derive(Serialize)]
struct StatRow<'a> {
    layer: usize,
    site: &'a str,
    count: u64,
    exact_zero_share: f64,
    abs: Vec<(f32, f64)>,
    rel_to_mean: Vec<(f32, f64)>,
    mean_abs: f64,
    max_abs: f32,
    log10_hist_min: f32,
    log10_hist_bins_per_decade: usize,
    log10_hist: &'a [u64],
}

/// Largest sparsity target within a perplexity budget, per series.
#[derive(Serialize)]
struct Within {
    weights: String,
    sites: String,
    method: String,
    max_target_1pct: Option<f64>,
    max_target_5pct: Option<f64>,
}

#[derive(Serialize)]
struct PredictionOut {
    rank: usize,
    target: f64,
    recall_target: f64,
    train_tokens: usize,
    eval_tokens: usize,
    recall: f64,
    precision: f64,
    rows_skipped: f64,
    predictor_weights_per_token: usize,
    mlp_weights_per_token: usize,
    /// (rows skipped × MLP weights − predictor weights) / MLP weights.
    net_mlp_saving: f64,
    /// The same over every weight read per token (embedding row excluded).
    net_token_saving: f64,
    dense_perplexity: f64,
    perplexity: f64,
    kl: f64,
    top1: f64,
    oracle_perplexity: f64,
    oracle_kl: f64,
    oracle_top1: f64,
    oracle_achieved: f64,
    per_layer: Vec<Confusion>,
}

#[derive(Serialize)]
struct Output<'a> {
    model: String,
    kind: &'static str,
    tokens: usize,
    window: Option<usize>,
    rows: Vec<StatRow<'a>>,
    per_site: Vec<StatRow<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    quality: Option<QualityOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prediction: Option<PredictionOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sidecar: Option<PathBuf>,
    seconds: f64,
}

#[derive(Serialize)]
struct QualityOut {
    eval_tokens: usize,
    calibration_tokens: usize,
    dense_f32_perplexity: f64,
    points: Vec<QualityPoint>,
    within: Vec<Within>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    sensitivity: Vec<Sensitivity>,
}

fn rows<'a>(recs: &'a [SiteRecord]) -> Vec<StatRow<'a>> {
    recs.iter()
        .map(|r| stat_row(r.layer, &r.site, &r.stats))
        .collect()
}

fn stat_row<'a>(
    layer: usize,
    site: &'a str,
    s: &'a membound::sparsity::ActivationStats,
) -> StatRow<'a> {
    StatRow {
        layer,
        site,
        count: s.count,
        exact_zero_share: s.zero_share(),
        abs: s
            .abs_thresholds
            .iter()
            .copied()
            .zip(s.abs_shares())
            .collect(),
        rel_to_mean: s
            .rel_thresholds
            .iter()
            .copied()
            .zip(s.rel_shares())
            .collect(),
        mean_abs: s.mean_abs(),
        max_abs: s.max_abs,
        log10_hist_min: membound::sparsity::HIST_LOG10_MIN,
        log10_hist_bins_per_decade: membound::sparsity::HIST_BINS_PER_DECADE,
        log10_hist: &s.log10_hist,
    }
}

/// A short file-name-safe name of the model argument.
fn short_name(arg: &str) -> String {
    let base = Path::new(arg)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or(arg);
    base.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

fn is_bert(path: &Path) -> bool {
    let cfg = if path.is_dir() {
        path.join("config.json")
    } else {
        path.with_file_name("config.json")
    };
    std::fs::read_to_string(cfg)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| {
            v.get("model_type")
                .and_then(|m| m.as_str())
                .map(|m| m == "bert")
        })
        .unwrap_or(false)
}

fn pct(v: f64) -> String {
    format!("{:.2}%", v * 100.0)
}

fn print_stats(
    model: &str,
    tokens: usize,
    recs: &[SiteRecord],
    per_site: &[(String, membound::sparsity::ActivationStats)],
) {
    let Some(first) = recs.first() else {
        println!("{model}: nothing recorded");
        return;
    };
    let mut header = vec!["layer".to_string(), "site".into(), "exact 0".into()];
    header.extend(first.stats.abs_thresholds.iter().map(|t| format!("≤{t}")));
    header.extend(
        first
            .stats
            .rel_thresholds
            .iter()
            .map(|r| format!("<{r}·mean")),
    );
    header.push("mean|x|".into());
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    t.set_header(header);
    let mut add = |layer: String, site: &str, s: &membound::sparsity::ActivationStats| {
        let mut row = vec![layer, site.to_string(), pct(s.zero_share())];
        row.extend(s.abs_shares().into_iter().map(pct));
        row.extend(s.rel_shares().into_iter().map(pct));
        row.push(format!("{:.4}", s.mean_abs()));
        t.add_row(row);
    };
    for r in recs {
        add(r.layer.to_string(), &r.site, &r.stats);
    }
    for (site, s) in per_site {
        add("all".into(), site, s);
    }
    println!("{model}: {tokens} tokens, share of projection inputs per layer × site");
    println!("{t}");
}

/// Tokens of the evaluation text and its split: calibration from the
/// start, held-out evaluation from the middle on.
struct Split {
    calib: Vec<u32>,
    first_half: Vec<u32>,
    held_out: Vec<u32>,
}

/// The evaluation text as this tokenizer can encode it: characters it has
/// no token for (babyllama105's 105-token vocabulary lacks newlines, digits
/// and some punctuation) become spaces, then runs of spaces collapse.
fn encodable_text(tok: &Tokenizer) -> String {
    let mut ok = std::collections::HashMap::new();
    let mapped: String = EVAL_TEXT
        .chars()
        .map(|c| {
            let good = *ok
                .entry(c)
                .or_insert_with(|| tok.encode(&c.to_string(), false).is_ok());
            if good { c } else { ' ' }
        })
        .collect();
    let mut out = String::with_capacity(mapped.len());
    for c in mapped.chars() {
        if !(c == ' ' && out.ends_with(' ')) {
            out.push(c);
        }
    }
    out
}

fn split(tok: &Tokenizer, calib: usize) -> Result<Split> {
    let all = match tok.encode(EVAL_TEXT, true) {
        Ok(t) => t,
        Err(_) => tok.encode(&encodable_text(tok), true)?,
    };
    let half = all.len() / 2;
    ensure!(
        calib >= 2 && calib <= half,
        "--tokens {calib}: the evaluation text has {} tokens; use 2 to {half} (the second half is held out)",
        all.len()
    );
    Ok(Split {
        calib: all[..calib].to_vec(),
        first_half: all[..half].to_vec(),
        held_out: all[half..].to_vec(),
    })
}

fn bar_fn(bar: &LazyBar) -> impl FnMut(usize, usize) + '_ {
    move |_, _| bar.step()
}

fn stage<T>(
    what: &str,
    len: usize,
    f: impl FnOnce(&mut dyn FnMut(usize, usize)) -> Result<T>,
) -> Result<T> {
    let bar = LazyBar::new(len as u64, what);
    let r = f(&mut bar_fn(&bar));
    bar.finish();
    r
}

/// `--replot`: the quality plot of several earlier runs.
fn replot(args: &Args) -> Result<()> {
    let dir = args.plot.as_ref().context("--replot needs --plot DIR")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut points = Vec::new();
    for f in &args.replot {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not JSON", f.display()))?;
        let Some(ps) = v["quality"]["points"].as_array() else {
            bail!(
                "{}: no quality.points (a `sparsity --quality --json` output?)",
                f.display()
            );
        };
        for p in ps {
            let num = |k: &str| {
                p[k].as_f64()
                    .with_context(|| format!("{}: point without {k}", f.display()))
            };
            let txt = |k: &str| p[k].as_str().unwrap_or("").to_string();
            points.push(QualityPoint {
                weights: txt("weights"),
                sites: txt("sites"),
                method: txt("method"),
                target: num("target")?,
                achieved: num("achieved")?,
                perplexity: num("perplexity")?,
                ppl_rise: num("ppl_rise")?,
                kl: num("kl")?,
                top1: num("top1")?,
                tokens: p["tokens"].as_u64().unwrap_or(0) as usize,
            });
        }
    }
    let name = short_name(&args.model);
    let path = dir.join(format!("sparsity-{name}-quality.svg"));
    crate::sparsity_plot::quality(&path, &args.model, &points)?;
    eprintln!("wrote {} ({} points)", path.display(), points.len());
    Ok(())
}

pub fn run(args: Args) -> Result<()> {
    if !args.replot.is_empty() {
        return replot(&args);
    }
    let t0 = Instant::now();
    let path = crate::models::resolve(&args.model)?;
    let name = short_name(&args.model);
    if let Some(p) = &args.plot {
        std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
    }
    if is_bert(&path) {
        ensure!(
            !args.quality && !args.predict && args.calibrate.is_none(),
            "--quality, --predict and --calibrate need a decoder; {} is a BERT encoder (statistics only)",
            args.model
        );
        return run_bert(&args, &path, &name, t0);
    }
    if args.calibrate.is_some() {
        ensure!(
            args.output.is_some(),
            "--calibrate needs -o FILE for the sidecar"
        );
    }
    if let Some(o) = &args.output {
        ensure!(
            args.calibrate.is_some(),
            "-o is the sidecar of --calibrate S"
        );
        ensure!(
            std::fs::canonicalize(o).ok() != std::fs::canonicalize(&path).ok(),
            "-o {} is the model file itself",
            o.display()
        );
        ensure!(
            args.force || !o.exists(),
            "{} exists (pass --force to replace it)",
            o.display()
        );
    }
    let model = Model::load(&path).with_context(|| format!("loading {}", path.display()))?;
    let cfg = model.config.clone();
    let window = cfg.max_seq_len.min(256);
    let sp = split(&model.tokenizer, args.tokens)?;
    let mut cpu = CpuLlama::new(cfg.clone(), model.weights.clone());

    // 1. Statistics.
    let rec = Arc::new(Mutex::new(Recorder::default()));
    cpu.set_hook(Some(Box::new(RecordingHook(Arc::clone(&rec)))));
    stage("recording", sp.calib.len(), |p| {
        Ok(teacher_force(
            &mut cpu,
            &sp.calib,
            window,
            &mut |_, _| {},
            p,
        )?)
    })?;
    cpu.set_hook(None);
    let recorder = rec
        .lock()
        .map_err(|_| anyhow::anyhow!("recorder poisoned"))?
        .clone();
    let recs = recorder.records();
    let per_site = recorder.per_site();
    if let Some(dir) = &args.plot {
        plots_stats(dir, &name, &recs, &per_site)?;
    }

    // Calibration magnitudes (all sites) when anything needs them.
    let need_mags = args.quality || args.calibrate.is_some();
    let mags = if need_mags {
        Some(stage("calibrating", sp.calib.len(), |p| {
            Ok(calibrate::collect(
                &mut cpu,
                &sp.calib,
                window,
                &Site::ALL,
                p,
            )?)
        })?)
    } else {
        None
    };

    // 2. Sidecar.
    let mut sidecar = None;
    if let (Some(target), Some(out), Some(mags)) = (args.calibrate, &args.output, &mags) {
        ensure!(
            (0.0..=1.0).contains(&target),
            "--calibrate {target}: a share in [0, 1]"
        );
        let thresholds = match args.method {
            Method::Uniform => calibrate::uniform(mags, cfg.n_layers, args.sites.sites(), target)?,
            Method::Greedy => {
                let probe = probe_tokens(&sp, args.probe_tokens);
                let sens = sensitivities(&mut cpu, &probe, window, mags, args.sites, args.probe)?;
                calibrate::greedy(mags, &sens, target)?.0
            }
        };
        let file = ThresholdFile {
            model: path.display().to_string(),
            target,
            method: args.method,
            thresholds,
        };
        file.save(out)?;
        let held: Vec<u32> = sp
            .held_out
            .iter()
            .copied()
            .take(args.eval_tokens.max(2))
            .collect();
        let achieved = calibrate::achieved(&mut cpu, &held, window, &file.thresholds)?;
        if !args.json {
            eprintln!(
                "wrote {} ({} thresholds, {} {}); on {} held-out tokens it zeroes {}",
                out.display(),
                file.thresholds.len(),
                args.method.name(),
                args.sites.name(),
                held.len(),
                pct(achieved)
            );
        }
        sidecar = Some(out.clone());
    }

    // 3. Quality sweep.
    let eval_opts = EvalOptions {
        window,
        max_tokens: Some(args.eval_tokens.max(1)),
    };
    let quality = if args.quality {
        let mags = mags.as_ref().context("calibration data")?;
        Some(run_quality(
            &args,
            &mut cpu,
            &model.weights,
            mags,
            &sp,
            &eval_opts,
        )?)
    } else {
        None
    };
    if let (Some(q), Some(dir)) = (&quality, &args.plot) {
        let p = dir.join(format!("sparsity-{name}-quality.svg"));
        crate::sparsity_plot::quality(&p, &args.model, &q.points)?;
    }

    // 4. Prediction.
    let prediction = if args.predict {
        Some(run_predict(&args, &mut cpu, &sp, &eval_opts)?)
    } else {
        None
    };

    let seconds = t0.elapsed().as_secs_f64();
    if args.json {
        let out = Output {
            model: args.model.clone(),
            kind: "decoder",
            tokens: sp.calib.len(),
            window: Some(window),
            rows: rows(&recs),
            per_site: per_site
                .iter()
                .map(|(s, st)| stat_row(usize::MAX, s, st))
                .collect(),
            quality,
            prediction,
            sidecar,
            seconds,
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    print_stats(&args.model, sp.calib.len(), &recs, &per_site);
    if let Some(q) = &quality {
        print_quality(q);
    }
    if let Some(p) = &prediction {
        print_prediction(p);
    }
    eprintln!("time: {seconds:.1} s");
    Ok(())
}

fn plots_stats(
    dir: &Path,
    name: &str,
    recs: &[SiteRecord],
    per_site: &[(String, membound::sparsity::ActivationStats)],
) -> Result<()> {
    crate::sparsity_plot::histograms(
        &dir.join(format!("sparsity-{name}-hist.svg")),
        name,
        per_site,
    )?;
    crate::sparsity_plot::layer_shares(
        &dir.join(format!("sparsity-{name}-layers.svg")),
        name,
        recs,
        1,
    )?;
    Ok(())
}

fn run_bert(args: &Args, path: &Path, name: &str, t0: Instant) -> Result<()> {
    let bert = Bert::load(path).with_context(|| format!("loading {}", path.display()))?;
    let tok_path = if path.is_dir() {
        path.join("tokenizer.json")
    } else {
        path.with_file_name("tokenizer.json")
    };
    let tok = Tokenizer::from_json(&tok_path)?;
    let mut recorder = Recorder::default();
    let mut tokens = 0;
    stage("recording", SENTENCES.len(), |p| {
        for (i, s) in SENTENCES.iter().enumerate() {
            let ids = tok.encode(s, true)?;
            tokens += ids.len();
            bert.forward_with(&ids, &mut |l, site, x| recorder.push(l, site, x))?;
            p(i + 1, SENTENCES.len());
        }
        Ok(())
    })?;
    let recs = recorder.records();
    let per_site = recorder.per_site();
    if let Some(dir) = &args.plot {
        plots_stats(dir, name, &recs, &per_site)?;
    }
    if args.json {
        let out = Output {
            model: args.model.clone(),
            kind: "bert",
            tokens,
            window: None,
            rows: rows(&recs),
            per_site: per_site
                .iter()
                .map(|(s, st)| stat_row(usize::MAX, s, st))
                .collect(),
            quality: None,
            prediction: None,
            sidecar: None,
            seconds: t0.elapsed().as_secs_f64(),
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    print_stats(&args.model, tokens, &recs, &per_site);
    Ok(())
}

fn probe_tokens(sp: &Split, n: usize) -> Vec<u32> {
    sp.calib.iter().copied().take(n.max(2)).collect()
}

fn sensitivities(
    cpu: &mut CpuLlama,
    probe: &[u32],
    window: usize,
    mags: &Magnitudes,
    sites: SiteSet,
    level: f64,
) -> Result<Vec<Sensitivity>> {
    let units = cpu.config().n_layers * sites.sites().len();
    stage(&format!("sensitivity/{}", sites.name()), units, |p| {
        Ok(calibrate::sensitivity(
            cpu,
            probe,
            window,
            mags,
            sites.sites(),
            level,
            p,
        )?)
    })
}

fn parse_levels(s: &str) -> Result<Vec<f64>> {
    let mut v = Vec::new();
    for part in s.split(',') {
        let x: f64 = part
            .trim()
            .parse()
            .with_context(|| format!("--levels: {part:?} is not a number"))?;
        ensure!(
            (0.0..=0.95).contains(&x),
            "--levels: {x} is outside [0, 0.95]"
        );
        v.push(x);
    }
    ensure!(!v.is_empty(), "--levels is empty");
    Ok(v)
}

fn run_quality(
    args: &Args,
    cpu: &mut CpuLlama,
    weights: &LlamaWeights,
    f32_mags: &Magnitudes,
    sp: &Split,
    opts: &EvalOptions,
) -> Result<QualityOut> {
    let levels = parse_levels(&args.levels)?;
    let cfg = cpu.config().clone();
    let total = opts
        .max_tokens
        .unwrap_or(0)
        .min(sp.held_out.len().saturating_sub(1));
    let (dense, mut reference): (_, Replay) = stage("dense f32", total, |p| {
        Ok(dense_reference(cpu, &sp.held_out, opts, p)?)
    })?;
    let mut points = Vec::new();
    let mut sensitivity = Vec::new();
    let mut variants: Vec<&str> = Vec::new();
    for w in args.sweep_weights.split(',').map(str::trim) {
        match w {
            "f32" => variants.push("f32"),
            "q4" if !args.no_quant => variants.push(Q4),
            "q4" => {}
            other => bail!("--sweep-weights: {other:?} is not f32 or q4"),
        }
    }
    let site_sets: Vec<SiteSet> = args
        .sweep_sites
        .split(',')
        .map(|x| {
            x.trim()
                .parse()
                .map_err(|e: membound::Error| anyhow::anyhow!("--sweep-sites: {e}"))
        })
        .collect::<Result<_>>()?;
    for spec in variants {
        let mut q4_model;
        let q4_mags;
        let (model, mags): (&mut CpuLlama, &Magnitudes) = if spec == "f32" {
            (&mut *cpu, f32_mags)
        } else {
            let bar = LazyBar::new((cfg.n_layers * 4 + 1) as u64, "quantizing");
            let prepared = prepare(&cfg, weights, &WeightPlan::uniform(spec), &|_, _| {
                bar.step()
            });
            bar.finish();
            let prepared = prepared?;
            q4_model = CpuLlama::new(cfg.clone(), prepared.decoded_weights()?);
            q4_mags = stage("calibrating q4", sp.calib.len(), |p| {
                Ok(calibrate::collect(
                    &mut q4_model,
                    &sp.calib,
                    opts.window,
                    &Site::ALL,
                    p,
                )?)
            })?;
            (&mut q4_model, &q4_mags)
        };
        let base = stage(&format!("{} dense", short_spec(spec)), total, |p| {
            Ok(evaluate_with_hook(
                model,
                &mut reference,
                &sp.held_out,
                opts,
                None,
                p,
            )?)
        })?;
        for &sites in &site_sets {
            let mut run_point = |method: Method,
                                 target: f64,
                                 th: BTreeMap<String, f32>,
                                 model: &mut CpuLlama|
             -> Result<QualityPoint> {
                let label = format!(
                    "{} {} {} {:.0}%",
                    short_spec(spec),
                    sites.name(),
                    method.name(),
                    target * 100.0
                );
                let (r, achieved) = stage(&label, total, |p| {
                    Ok(evaluate_thresholds(
                        model,
                        &mut reference,
                        &sp.held_out,
                        opts,
                        &th,
                        p,
                    )?)
                })?;
                Ok(QualityPoint {
                    weights: spec.to_string(),
                    sites: sites.name().into(),
                    method: method.name().into(),
                    target,
                    achieved,
                    perplexity: r.perplexity,
                    ppl_rise: r.perplexity / base.perplexity - 1.0,
                    kl: r.kl.unwrap_or(f64::NAN),
                    top1: r.top1_agreement.unwrap_or(f64::NAN),
                    tokens: r.tokens,
                })
            };
            for &level in levels.iter().filter(|_| !args.no_uniform) {
                let th = calibrate::uniform(mags, cfg.n_layers, sites.sites(), level)?;
                points.push(run_point(Method::Uniform, level, th, model)?);
            }
            if args.greedy && spec == "f32" {
                let probe = probe_tokens(sp, args.probe_tokens);
                let sens = sensitivities(model, &probe, opts.window, mags, sites, args.probe)?;
                for &level in levels.iter().filter(|l| **l > 0.0) {
                    let (th, _) = calibrate::greedy(mags, &sens, level)?;
                    points.push(run_point(Method::Greedy, level, th, model)?);
                }
                sensitivity.extend(sens);
            }
        }
    }
    let mut within = Vec::new();
    let mut keys: Vec<(String, String, String)> = Vec::new();
    for p in &points {
        let k = (p.weights.clone(), p.sites.clone(), p.method.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    for (w, s, m) in keys {
        let mut series: Vec<&QualityPoint> = points
            .iter()
            .filter(|p| p.weights == w && p.sites == s && p.method == m)
            .collect();
        if m == "greedy" {
            // Greedy at 0 is uniform at 0 (τ = 0 everywhere).
            series.extend(points.iter().filter(|p| {
                p.weights == w && p.sites == s && p.method == "uniform" && p.target == 0.0
            }));
        }
        within.push(Within {
            max_target_1pct: largest_within(&series, 0.01),
            max_target_5pct: largest_within(&series, 0.05),
            weights: w,
            sites: s,
            method: m,
        });
    }
    Ok(QualityOut {
        eval_tokens: dense.tokens,
        calibration_tokens: sp.calib.len(),
        dense_f32_perplexity: dense.perplexity,
        points,
        within,
        sensitivity,
    })
}

fn short_spec(spec: &str) -> &str {
    if spec == Q4 { "q4" } else { spec }
}

fn print_quality(q: &QualityOut) {
    println!(
        "\nquality on {} held-out tokens (calibrated on {}); dense f32 perplexity {:.4}",
        q.eval_tokens, q.calibration_tokens, q.dense_f32_perplexity
    );
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    t.set_header([
        "weights",
        "sites",
        "method",
        "target",
        "achieved",
        "perplexity",
        "rise",
        "KL (nats)",
        "top-1",
    ]);
    for p in &q.points {
        t.add_row([
            short_spec(&p.weights).to_string(),
            p.sites.clone(),
            p.method.clone(),
            format!("{:.0}%", p.target * 100.0),
            pct(p.achieved),
            format!("{:.4}", p.perplexity),
            format!("{:+.2}%", p.ppl_rise * 100.0),
            format!("{:.5}", p.kl),
            format!("{:.1}%", p.top1 * 100.0),
        ]);
    }
    println!("{t}");
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    t.set_header([
        "weights",
        "sites",
        "method",
        "largest target ≤1% rise",
        "≤5% rise",
    ]);
    let f = |v: Option<f64>| v.map_or_else(|| "none".to_string(), |v| format!("{:.0}%", v * 100.0));
    for w in &q.within {
        t.add_row([
            short_spec(&w.weights).to_string(),
            w.sites.clone(),
            w.method.clone(),
            f(w.max_target_1pct),
            f(w.max_target_5pct),
        ]);
    }
    println!("{t}");
}

fn run_predict(
    args: &Args,
    cpu: &mut CpuLlama,
    sp: &Split,
    opts: &EvalOptions,
) -> Result<PredictionOut> {
    let cfg = cpu.config().clone();
    let all = cpu_tokens_for_predict(sp, args.predict_tokens)?;
    let popts = PredictOptions {
        rank: args.rank,
        target: args.predict_target,
        recall: args.recall,
        ..PredictOptions::default()
    };
    let predictor = stage("fitting predictor", all.len() + cfg.n_layers, |p| {
        Ok(Predictor::fit(cpu, &all, opts.window, popts, p)?)
    })?;
    let total = opts
        .max_tokens
        .unwrap_or(0)
        .min(sp.held_out.len().saturating_sub(1));
    let (dense, mut reference) = stage("dense f32", total, |p| {
        Ok(dense_reference(cpu, &sp.held_out, opts, p)?)
    })?;
    let predictor = Arc::new(predictor);
    let hook = PredictHook::new(Arc::clone(&predictor));
    let counts = hook.counts();
    let rep = stage("predicted", total, |p| {
        Ok(evaluate_with_hook(
            cpu,
            &mut reference,
            &sp.held_out,
            opts,
            Some(Box::new(hook)),
            p,
        )?)
    })?;
    // Oracle: the same τ per layer, applied to the true values.
    let oracle: BTreeMap<String, f32> = predictor
        .layers
        .iter()
        .enumerate()
        .map(|(l, lp)| (membound::sparsity::site_key(l, Site::Down), lp.tau))
        .collect();
    let (orep, oach) = stage("oracle", total, |p| {
        Ok(evaluate_thresholds(
            cpu,
            &mut reference,
            &sp.held_out,
            opts,
            &oracle,
            p,
        )?)
    })?;
    let per_layer = counts
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    let mut sum = Confusion::default();
    for c in &per_layer {
        sum.add(c);
    }
    let (d, h, kv, nl) = (cfg.dim, cfg.hidden_dim, cfg.kv_dim(), cfg.n_layers);
    let mlp = nl * 3 * d * h;
    let layer_total = nl * (3 * d * h + (d + 2 * kv) * d + d * d);
    let token_total = layer_total + cfg.vocab_size * d;
    let pw = predictor.weights_per_token();
    let saved = sum.skipped() * mlp as f64 - pw as f64;
    Ok(PredictionOut {
        rank: args.rank,
        target: args.predict_target,
        recall_target: args.recall,
        train_tokens: all.len(),
        eval_tokens: rep.tokens,
        recall: sum.recall(),
        precision: sum.precision(),
        rows_skipped: sum.skipped(),
        predictor_weights_per_token: pw,
        mlp_weights_per_token: mlp,
        net_mlp_saving: saved / mlp as f64,
        net_token_saving: saved / token_total as f64,
        dense_perplexity: dense.perplexity,
        perplexity: rep.perplexity,
        kl: rep.kl.unwrap_or(f64::NAN),
        top1: rep.top1_agreement.unwrap_or(f64::NAN),
        oracle_perplexity: orep.perplexity,
        oracle_kl: orep.kl.unwrap_or(f64::NAN),
        oracle_top1: orep.top1_agreement.unwrap_or(f64::NAN),
        oracle_achieved: oach,
        per_layer,
    })
}

fn cpu_tokens_for_predict(sp: &Split, n: usize) -> Result<Vec<u32>> {
    if n < 2 {
        bail!("--predict-tokens {n}: at least 2");
    }
    // Training tokens come from the first half only (the second is held out).
    ensure!(
        n <= sp.first_half.len(),
        "--predict-tokens {n}: the first half of the text has {} tokens",
        sp.first_half.len()
    );
    Ok(sp.first_half[..n].to_vec())
}

fn print_prediction(p: &PredictionOut) {
    println!(
        "\npredictor: rank {}, active = |SiLU(gate)·up| above the layer's {:.0}% quantile, cut-off for {:.0}% training recall; fitted on {} tokens, evaluated on {}",
        p.rank,
        p.target * 100.0,
        p.recall_target * 100.0,
        p.train_tokens,
        p.eval_tokens
    );
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    t.set_header(["", "value"]);
    t.add_row(["recall (held out, in situ)".to_string(), pct(p.recall)]);
    t.add_row(["precision".to_string(), pct(p.precision)]);
    t.add_row(["gate/up rows skipped".to_string(), pct(p.rows_skipped)]);
    t.add_row([
        "predictor weights / MLP weights".to_string(),
        pct(p.predictor_weights_per_token as f64 / p.mlp_weights_per_token as f64),
    ]);
    t.add_row(["net MLP weights saved".to_string(), pct(p.net_mlp_saving)]);
    t.add_row([
        "net weights saved per token".to_string(),
        pct(p.net_token_saving),
    ]);
    t.add_row([
        "perplexity: dense / predicted / oracle".to_string(),
        format!(
            "{:.4} / {:.4} / {:.4}",
            p.dense_perplexity, p.perplexity, p.oracle_perplexity
        ),
    ]);
    t.add_row([
        "KL: predicted / oracle".to_string(),
        format!("{:.5} / {:.5}", p.kl, p.oracle_kl),
    ]);
    t.add_row([
        "top-1: predicted / oracle".to_string(),
        format!("{:.1}% / {:.1}%", p.top1 * 100.0, p.oracle_top1 * 100.0),
    ]);
    t.add_row(["oracle sparsity (down)".to_string(), pct(p.oracle_achieved)]);
    println!("{t}");
}

/// `--sparsity` / `--thresholds` of `eval` and `generate`.
#[derive(clap::Args, Debug, Clone)]
pub struct SparsityArgs {
    /// Zero projection inputs with |x| ≤ τ, τ per layer calibrated for this
    /// share (uniform quantiles of |x| over 128 tokens from the second half
    /// of the shipped text), at --sparse-sites. On the GPU (down site only,
    /// --weights f16 or affine:bits=4) the activation-sparse down kernels
    /// skip those inputs' columns.
    #[arg(long, value_name = "S", conflicts_with = "thresholds")]
    pub sparsity: Option<f64>,
    /// Thresholds from a sidecar of `membound sparsity --calibrate` (on the
    /// GPU: layers.N.down keys only).
    #[arg(long, value_name = "FILE")]
    pub thresholds: Option<PathBuf>,
    /// Sites --sparsity thresholds: down (SiLU(gate)·up) or all.
    #[arg(long, default_value = "down", value_parser = parse_sites, value_name = "SITES")]
    pub sparse_sites: SiteSet,
}

/// What the sparse CPU decoder applies, for output.
#[derive(Serialize, Clone, Debug)]
pub struct SparseInfo {
    /// Where the thresholds came from.
    pub source: String,
    /// Target sparsity of the thresholds.
    pub target: f64,
    /// Thresholds applied.
    pub thresholds: usize,
    /// Share of inputs zeroed so far, weighted by the weights each site
    /// gates (CPU; the GPU path does not count).
    pub achieved: Option<f64>,
    /// `cpu` (thresholding hook) or `gpu` (activation-sparse down kernels).
    pub device: &'static str,
}

/// The CPU hook's shared counters and which layer × sites it thresholds.
type Counters = (Arc<Mutex<membound::sparsity::DropCounts>>, Vec<Vec<bool>>);

/// A thresholded decoder (the CPU one with a hook, or the GPU one with
/// activation-sparse down projections) and its counters.
pub struct Sparse {
    pub model: Box<dyn membound::model::Decoder>,
    pub info: SparseInfo,
    counts: Option<Counters>,
}

impl Sparse {
    /// Info with the achieved sparsity filled in.
    pub fn info(&self) -> SparseInfo {
        let mut i = self.info.clone();
        if let Some((c, active)) = &self.counts
            && let Ok(c) = c.lock()
        {
            i.achieved = Some(c.weighted_sparsity(self.model.config(), active));
        }
        i
    }
}

/// The sparse down kernel's storage for the down projection's weight spec.
fn gpu_sparse_dtype(spec: &str) -> Result<membound_gpu::SparseDType> {
    let s = spec.trim().to_ascii_lowercase();
    if s == "f16" {
        return Ok(membound_gpu::SparseDType::F16);
    }
    if let Some(rest) = s.strip_prefix("affine:") {
        let mut bits = None;
        let mut group = None;
        for kv in rest.split(',') {
            match kv.split_once('=') {
                Some(("bits", b)) => bits = b.parse::<u32>().ok(),
                Some(("group", g)) => group = g.parse::<usize>().ok(),
                _ => {}
            }
        }
        if let (Some(4), Some(group)) = (bits, group)
            && [32, 64, 128].contains(&group)
        {
            return Ok(membound_gpu::SparseDType::Affine4 { group });
        }
    }
    bail!(
        "sparse decoding on the GPU stores the down projection as f16 or affine:bits=4,group=32|64|128, not {spec:?} (see membound bench decode --sparsity, or pass --device cpu)"
    )
}

impl SparsityArgs {
    /// Whether any sparsity was asked for.
    pub fn any(&self) -> bool {
        self.sparsity.is_some() || self.thresholds.is_some()
    }

    /// The engine (for what it reports) and the thresholded CPU decoder
    /// over the same decoded weights; errors on the GPU.
    pub fn build(
        &self,
        model: &Model,
        opts: &membound::run::EngineOptions,
        gpu: Option<Arc<membound_gpu::GpuContext>>,
    ) -> Result<(membound::run::Engine, Sparse)> {
        let on_gpu = opts.device == membound::run::DeviceKind::Gpu;
        let sparse_dtype = if on_gpu {
            if self.sparse_sites != SiteSet::Down && self.thresholds.is_none() {
                bail!(
                    "sparse decoding on the GPU thresholds the down projection only: pass --sparse-sites down (or --device cpu)"
                );
            }
            Some(gpu_sparse_dtype(opts.plan.spec_for("layers.0.w_down"))?)
        } else {
            None
        };
        let cfg = &model.config;
        let bar = LazyBar::new((cfg.n_layers * 4 + 1) as u64, "preparing");
        let prepared = prepare(cfg, &model.weights, &opts.plan, &|_, _| bar.step());
        bar.finish();
        let prepared = prepared?;
        let engine = membound::run::Engine::from_prepared(model, &prepared, opts, gpu.clone())?;
        let mut cpu = CpuLlama::new(cfg.clone(), prepared.decoded_weights()?);
        let (thresholds, source, target) = match (&self.thresholds, self.sparsity) {
            (Some(p), _) => {
                let f = ThresholdFile::load(p)?;
                (
                    f.thresholds,
                    format!(
                        "{} ({}, calibrated on {})",
                        p.display(),
                        f.method.name(),
                        f.model
                    ),
                    f.target,
                )
            }
            (None, Some(s)) => {
                ensure!(
                    (0.0..=1.0).contains(&s),
                    "--sparsity {s}: a share in [0, 1]"
                );
                let all = match model.tokenizer.encode(EVAL_TEXT, true) {
                    Ok(t) => t,
                    Err(_) => model
                        .tokenizer
                        .encode(&encodable_text(&model.tokenizer), true)?,
                };
                let half = all.len() / 2;
                let calib = &all[half..(half + 128).min(all.len())];
                let window = cfg.max_seq_len.min(256);
                let mags = stage("calibrating", calib.len(), |p| {
                    Ok(calibrate::collect(
                        &mut cpu,
                        calib,
                        window,
                        self.sparse_sites.sites(),
                        p,
                    )?)
                })?;
                (
                    calibrate::uniform(&mags, cfg.n_layers, self.sparse_sites.sites(), s)?,
                    format!(
                        "uniform, {} sites, calibrated on {} tokens of the shipped text's second half",
                        self.sparse_sites.name(),
                        calib.len()
                    ),
                    s,
                )
            }
            (None, None) => bail!("no sparsity requested"),
        };
        let info = SparseInfo {
            source,
            target,
            thresholds: thresholds.len(),
            achieved: None,
            device: if on_gpu { "gpu" } else { "cpu" },
        };
        if let Some(dtype) = sparse_dtype {
            // One τ per layer and site; sites the sidecar leaves out stay
            // dense (gate/up, q/k/v and o), or at τ = 0 (down, and the
            // other of q/k/v and o: the exact-zero test, lossless).
            let n = cfg.n_layers;
            let mut taus: Vec<Option<Vec<f32>>> = vec![None; Site::ALL.len()];
            for (k, &t) in &thresholds {
                match membound::sparsity::parse_site_key(k) {
                    Some((l, site)) if l < n => {
                        let at = Site::ALL.iter().position(|s| *s == site).unwrap_or(0);
                        taus[at].get_or_insert_with(|| vec![0.0; n])[l] = t;
                    }
                    _ => bail!(
                        "threshold {k}: not a layers.N.{{qkv,o,gate_up,down}} key of this {n}-layer model"
                    ),
                }
            }
            let has = |site: Site| {
                let at = Site::ALL.iter().position(|s| *s == site).unwrap_or(0);
                taus[at].is_some()
            };
            let (gate_up, attention) = (has(Site::GateUp), has(Site::Qkv) || has(Site::O));
            let ctx = match gpu {
                Some(c) => c,
                None => crate::generate::open_gpu()?,
            };
            let mut g = membound::model::GpuLlama::new(
                ctx,
                &prepared,
                membound::model::GpuLlamaOptions {
                    sparse_down: Some(dtype),
                    sparse_gate_up: gate_up,
                    sparse_attention: attention,
                    context: opts.context,
                    kv_cache: opts.kv_cache,
                    ..Default::default()
                },
            )?;
            for (site, t) in Site::ALL.into_iter().zip(&taus) {
                if let Some(t) = t {
                    g.set_site_thresholds(site, t)?;
                }
            }
            return Ok((
                engine,
                Sparse {
                    model: Box::new(g),
                    info,
                    counts: None,
                },
            ));
        }
        let hook = membound::sparsity::ThresholdHook::new(cfg.n_layers, &thresholds)?;
        let (counts, active) = (hook.counts(), hook.active());
        cpu.set_hook(Some(Box::new(hook)));
        Ok((
            engine,
            Sparse {
                model: Box::new(cpu),
                info,
                counts: Some((counts, active)),
            },
        ))
    }
}
