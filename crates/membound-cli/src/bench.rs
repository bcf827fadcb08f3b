//! `membound bench`: measured speed of kernels.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;
use membound::bench::kernels::{self, Config, Weights};
use membound_gpu::GpuContext;

/// Measure speed on the GPU.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand, Debug)]
enum What {
    Kernels(KernelArgs),
    Decode(DecodeArgs),
}

/// Time whole-model decoding on the GPU against the bandwidth roofline.
///
/// Decodes greedily, one submission and one 4-byte read-back per token (as
/// `generate` does), after warming the GPU up, and reports the median
/// tokens/s, the weight bytes each token reads, the effective GB/s, the
/// roofline (peak GB/s ÷ bytes per token) and the fraction of it reached.
/// A profile then splits one token into kernel time (GEMVs, attention,
/// small ops) and overhead (dispatch gaps, submission, read-back).
/// The same tokens are then decoded again GPU-resident (each step's argmax
/// feeds the next step's embedding on the device, one read-back at the
/// end; checked to choose the same tokens): the "resident" column is the
/// GPU's own decode rate, with no host step between tokens. Each case
/// also gets its floor: plain streaming reads of each of its weight
/// matrices (a sparse one: of the bytes it read in the last timed token),
/// timed and summed over a token; no decode step can read those bytes
/// faster (attention and the small kernels come on top).
///
/// --synthetic builds a model of a real size with weights generated on the
/// GPU from a seed: llama-8b (Llama 3 8B shapes, 16 GB in f16) needs no
/// file. --model decodes a real model instead (default model: smollm2).
///
/// Examples:
///   membound bench decode --synthetic llama-8b --weights f16 --weights affine:bits=4,group=64
///   membound bench decode --model smollm2 --weights f16 --json decode.json
///   membound bench decode --synthetic llama-8b --start-pos 4096 --tokens 16
///   membound bench decode --synthetic llama-8b --sparsity 0.5 --sparse-gate-up --sparse-attention --bound
///   membound bench decode --from s50.json --from s70.json --plot sparsity.svg
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
struct DecodeArgs {
    /// A model file or name (smollm2, llama2xs-280K, ...).
    #[arg(long, conflicts_with = "synthetic")]
    model: Option<String>,
    /// A synthetic model shape: llama-1b, llama-8b or smollm2-135m.
    #[arg(long)]
    synthetic: Option<String>,
    /// Weight specs, one per case, repeatable: f32, f16, affine:bits=4,group=64, nf4, ...
    /// (synthetic models take f32, f16 and affine) [default: f16 and affine:bits=4,group=64].
    #[arg(long)]
    weights: Vec<String>,
    /// Tokens timed per case.
    #[arg(long, default_value_t = 64)]
    tokens: usize,
    /// Tokens decoded before timing.
    #[arg(long, default_value_t = 16)]
    warm_up: usize,
    /// Fill the KV cache to this many positions first (long-context decode).
    #[arg(long, default_value_t = 0)]
    start_pos: usize,
    /// Repetitions per dispatch in the time-split profile (0: skip it).
    #[arg(long, default_value_t = 10)]
    profile_reps: usize,
    /// Seed of synthetic weights.
    #[arg(long, default_value_t = 1)]
    seed: u32,
    /// Command submissions per token: more than 1 lets the GPU start while
    /// the host still records the rest of the token.
    #[arg(long, default_value_t = 4)]
    submissions: usize,
    /// Record the unfused step: separate RMSNorm+residual, SwiGLU and
    /// final-norm dispatches (8 a block instead of 5), to measure what the
    /// fused kernels buy.
    #[arg(long)]
    unfused: bool,
    /// With --sparsity: make the gate/up projections activation-sparse
    /// too (TEAL-style, their RMS-normalised input thresholded at the same
    /// target share), not only the down projections.
    #[arg(long, requires = "sparsity")]
    sparse_gate_up: bool,
    /// With --sparsity: make the q/k/v projections (on their normalised
    /// input) and the o projections (on the attention output) sparse too.
    /// With --sparse-gate-up this thresholds every projection input.
    #[arg(long, requires = "sparsity")]
    sparse_attention: bool,
    /// Also run each weight spec with activation-sparse down projections
    /// skipping this share of their inputs (0.5 = 50%), thresholds
    /// calibrated on the GPU; reports the speedup over dense next to the
    /// research notes' model 1/(1 − s + overhead).
    #[arg(long)]
    sparsity: Option<f32>,
    /// Like --sparsity, with the down-projection thresholds of a sidecar
    /// written by `membound sparsity MODEL --calibrate S -o FILE` (real
    /// models only).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["sparsity", "synthetic"])]
    thresholds: Option<PathBuf>,
    /// With --sparsity and --synthetic: also time each weight spec's
    /// zero-overhead bound. The projections the sparse row skips inputs of
    /// stay dense but take only the first (1 − S) of their inputs, as if a
    /// sparse kernel knew the active columns for free and found them stored
    /// contiguously. Its tokens mean nothing; its speed is the most any
    /// S-sparse kernel could give at the dense kernels' efficiency.
    #[arg(long, requires = "sparsity", requires = "synthetic")]
    bound: bool,
    /// KV-cache storage: f32, f16, q8 or q4 (8/4-bit codes with an f16
    /// scale and minimum per 32 values of a head).
    #[arg(long, default_value = "f32")]
    kv_cache: String,
    /// Peak memory bandwidth in GB/s, overriding the datasheet table.
    #[arg(long)]
    peak_gbps: Option<f64>,
    /// Skip the floor: by default each case also times plain streaming
    /// reads of every weight matrix's bytes, summed over a token ("floor
    /// ms"; "% floor" = floor ÷ ms/token for step-by-step and resident
    /// decoding); for a sparse matrix, the bytes it read in the last timed
    /// token. No decode can read those bytes faster.
    #[arg(long)]
    no_floor: bool,
    /// Also draw each sparse and zero-overhead-bound row's tokens/s over
    /// its dense row (GPU-resident where measured) against its sparsity,
    /// one colour per weight spec, with the research notes' model
    /// 1/(1 − s), to this SVG file. Most useful with several --from
    /// reports, one per --sparsity.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Measure nothing: read reports written by --json (repeatable, e.g.
    /// one per sparsity in docs/data/), print their rows as one table, and
    /// plot them with --plot. Needs no GPU.
    #[arg(long, value_name = "FILE.json", conflicts_with_all = ["model", "synthetic", "thresholds"])]
    from: Vec<PathBuf>,
    /// Also write the results as JSON to this file (`-` for stdout).
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Time every mat-vec kernel at real layer shapes.
///
/// Each case rotates through copies of its matrix totalling --working-set-mb
/// (more than the GPU's last-level cache, so memory traffic is real), warms
/// the GPU up to full clocks, and reports the median time of one GEMV, the
/// bytes it reads, GB/s, the fraction of the device's peak bandwidth
/// (datasheet table, or --peak-gbps) and the speedup against dense f16.
///
/// The adapter is chosen by wgpu (high performance first); set
/// MEMBOUND_GPU_BACKEND=vulkan|metal|dx12 or MEMBOUND_GPU_ADAPTER=<name part>
/// to pick another. On Mesa's llvmpipe (a CPU) the figures say nothing about
/// GPUs: use --quick there.
///
/// Examples:
///   membound bench kernels
///   membound bench kernels --shapes 4096x14336 --weights f16 --json out.json
///   membound bench kernels --quick
///   membound bench kernels --shapes 4096x14336 --plot kernels.svg
///   membound bench kernels --from docs/data/bench-kernels-h100.json --plot h100.svg
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
struct KernelArgs {
    /// Shapes as ROWSxCOLS (out × in), comma-separated [default: LLaMA-8B and SmolLM2 layers].
    #[arg(long, value_delimiter = ',')]
    shapes: Vec<String>,
    /// Weight formats, comma-separated: f32, f16, affine2|3|4|8[-gG],
    /// affine4-q8[-gG] (4-bit codes times the input quantized to 8 bits per
    /// 32 inside the kernel), nf4, sparse-f16, sparse-affine4[-gG]
    /// [default: all of these, g64].
    #[arg(long, value_delimiter = ',')]
    weights: Vec<String>,
    /// Input sparsities for the sparse kernels, in percent, comma-separated
    /// [default: 0,25,50,70,90]. Each runs with random exact zeros and with a
    /// magnitude-thresholded SwiGLU-like vector.
    #[arg(long, value_delimiter = ',')]
    sparsity: Vec<f64>,
    /// Bytes of distinct weight copies per case, in MiB.
    #[arg(long, default_value_t = 512)]
    working_set_mb: u64,
    /// Timed passes per case (the median is reported).
    #[arg(long, default_value_t = 20)]
    reps: usize,
    /// Peak memory bandwidth in GB/s, overriding the datasheet table.
    #[arg(long)]
    peak_gbps: Option<f64>,
    /// Small shapes and working set: a smoke test for software adapters.
    #[arg(long)]
    quick: bool,
    /// Launch the affine kernels as ROWS,THREADS,WORDS (rows a workgroup,
    /// threads a workgroup, code words a thread takes at once) instead of
    /// the shape they pick, e.g. `8,128,2` (for tuning).
    #[arg(long, value_name = "ROWS,THREADS,WORDS")]
    launch: Option<String>,
    /// Skip the floor: by default each case is also set against a plain
    /// streaming read of the same bytes, timed the same way ("floor µs";
    /// "% floor" = floor ÷ time, how close the kernel gets to what the
    /// device allows at that size; JSON `floor_speedup_vs_dense_f16` =
    /// the best speedup over dense f16 any kernel reading those bytes
    /// could show).
    #[arg(long)]
    no_floor: bool,
    /// Also draw every case's time against its bytes read (log–log, one
    /// colour per format, the floor as a line) to this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Measure nothing: read a report written by --json (e.g. one in
    /// docs/data/) and print its table, and plot it with --plot. Needs no
    /// GPU.
    #[arg(long, value_name = "FILE.json")]
    from: Option<PathBuf>,
    /// Also write the results as JSON to this file (`-` for stdout only).
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    match args.what {
        What::Kernels(a) => run_kernels(a),
        What::Decode(a) => run_decode(a),
    }
}

fn parse_launch(s: &str) -> Result<membound_gpu::Launch> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let bad = || anyhow::anyhow!("--launch {s:?} is not ROWS,THREADS,WORDS (e.g. 8,128,2)");
    let [r, t, w] = parts[..] else {
        return Err(bad());
    };
    Ok(membound_gpu::Launch {
        rows_per_workgroup: r.parse().map_err(|_| bad())?,
        workgroup_size: t.parse().map_err(|_| bad())?,
        unit_words: w.parse().map_err(|_| bad())?,
    })
}

fn parse_shape(s: &str) -> Result<(usize, usize)> {
    let (r, c) = s
        .split_once(['x', 'X'])
        .with_context(|| format!("shape {s:?} is not ROWSxCOLS"))?;
    let r: usize = r
        .trim()
        .parse()
        .with_context(|| format!("shape {s:?}: bad row count"))?;
    let c: usize = c
        .trim()
        .parse()
        .with_context(|| format!("shape {s:?}: bad column count"))?;
    anyhow::ensure!(r > 0 && c > 0, "shape {s:?} is empty");
    Ok((r, c))
}

/// Fails early (before minutes of measuring) when an output file's folder
/// does not exist.
fn check_output(flag: &str, path: Option<&Path>) -> Result<()> {
    let Some(path) = path.filter(|p| p.as_os_str() != "-") else {
        return Ok(());
    };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(d) = dir {
        anyhow::ensure!(
            d.is_dir(),
            "{flag} {}: folder {} does not exist",
            path.display(),
            d.display()
        );
    }
    Ok(())
}

/// Runs the kernel benchmark on the default adapter, with a progress bar.
fn measure_kernels(cfg: &Config, peak_gbps: Option<f64>) -> Result<kernels::Report> {
    let ctx = GpuContext::new()?;
    let info = ctx.adapter();
    eprintln!(
        "adapter: {} ({:?}, {} {})",
        info.name, info.backend, info.driver, info.driver_info
    );
    let bar = std::cell::OnceCell::new();
    let mut last = 0;
    let report = kernels::run(&ctx, cfg, peak_gbps, &mut |done, total, _| {
        let bar = bar.get_or_init(|| crate::progress::LazyBar::new(total as u64, "benchmark"));
        while last < done {
            bar.step();
            last += 1;
        }
    })?;
    if let Some(b) = bar.get() {
        b.finish();
    }
    Ok(report)
}

fn run_kernels(a: KernelArgs) -> Result<()> {
    check_output("--json", a.json.as_deref())?;
    check_output("--plot", a.plot.as_deref())?;
    let mut cfg = Config::default();
    if a.quick {
        cfg.shapes = vec![(576, 576), (1536, 576), (576, 1536)];
        cfg.sparsities = vec![0.0, 0.5, 0.9];
        cfg.working_set = 4 << 20;
        cfg.reps = 5;
        cfg.warm_up = Duration::from_millis(20);
        cfg.max_copies = 8;
    } else {
        cfg.working_set = a.working_set_mb << 20;
        cfg.reps = a.reps.max(1);
    }
    if !a.shapes.is_empty() {
        cfg.shapes = a
            .shapes
            .iter()
            .map(|s| parse_shape(s))
            .collect::<Result<_>>()?;
    }
    if !a.sparsity.is_empty() {
        anyhow::ensure!(
            a.sparsity.iter().all(|s| (0.0..100.0).contains(s)),
            "--sparsity takes percentages in [0, 100)"
        );
        cfg.sparsities = a.sparsity.iter().map(|s| s / 100.0).collect();
    }
    if !a.weights.is_empty() {
        cfg.weights = a
            .weights
            .iter()
            .map(|w| Weights::parse(w))
            .collect::<Result<_, _>>()?;
    }
    if let Some(l) = &a.launch {
        cfg.affine_launch = Some(parse_launch(l)?);
    }
    cfg.floor = !a.no_floor;
    let report = match &a.from {
        Some(path) => read_json(path, "kernels")?,
        None => measure_kernels(&cfg, a.peak_gbps)?,
    };

    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    t.set_header([
        "shape",
        "weights",
        "sparsity",
        "mask",
        "median µs",
        "bytes read",
        "GB/s",
        "% peak",
        "× dense f16",
        "floor µs",
        "% floor",
    ]);
    for r in &report.rows {
        t.add_row([
            format!("{}×{}", r.rows, r.cols),
            r.weights.clone(),
            format!("{:.0}%", r.sparsity * 100.0),
            r.mask.clone(),
            format!("{:.2}", r.median_us),
            crate::inspect::human_bytes(r.bytes_read),
            format!("{:.1}", r.gbps),
            r.peak_fraction
                .map_or_else(|| "-".into(), |f| format!("{:.1}", f * 100.0)),
            r.speedup_vs_dense_f16
                .map_or_else(|| "-".into(), |s| format!("{s:.2}")),
            r.floor_us.map_or_else(|| "-".into(), |f| format!("{f:.2}")),
            r.floor_fraction
                .map_or_else(|| "-".into(), |f| format!("{:.0}", f * 100.0)),
        ]);
    }
    for col in 2..11 {
        if let Some(c) = t.column_mut(col) {
            c.set_cell_alignment(comfy_table::CellAlignment::Right);
        }
    }
    println!("{t}");
    match (report.peak_gbps, &report.peak_source) {
        (Some(p), Some(src)) => println!("peak: {p} GB/s ({src}); timing: {}", report.timing),
        _ => println!(
            "peak: unknown for this adapter (pass --peak-gbps); timing: {}",
            report.timing
        ),
    }
    if let Some(path) = &a.plot {
        crate::plot::kernels(path, &report)?;
        eprintln!("plot: {}", path.display());
    }
    if let Some(path) = &a.json {
        write_json(path, &report)?;
    }
    Ok(())
}

/// A `membound bench <what> --json` report from `path` (for --from).
fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("--from {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "--from {}: not a `membound bench {what} --json` report (or one older than \
             this version reads)",
            path.display()
        )
    })
}

/// Writes `report` as JSON to `path` atomically, or to stdout for `-`.
fn write_json(path: &Path, report: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    if path.as_os_str() == "-" {
        println!("{text}");
    } else {
        membound::sparsity::write_atomic(path, text.as_bytes())?;
    }
    Ok(())
}

fn run_decode(a: DecodeArgs) -> Result<()> {
    check_output("--json", a.json.as_deref())?;
    check_output("--plot", a.plot.as_deref())?;
    let report = if a.from.is_empty() {
        measure_decode(&a)?
    } else {
        read_decode_reports(&a.from)?
    };
    print_decode(&report);
    if let Some(path) = &a.plot {
        crate::plot::sparse_decode(path, &report)?;
        eprintln!("plot: {}", path.display());
    }
    if let Some(path) = &a.json {
        write_json(path, &report)?;
    }
    Ok(())
}

/// Reports written by `bench decode --json`, as one (the first one's
/// adapter and time; every one's rows, in order).
fn read_decode_reports(paths: &[PathBuf]) -> Result<membound::bench::decode::Report> {
    let mut all: Option<membound::bench::decode::Report> = None;
    for path in paths {
        let r: membound::bench::decode::Report = read_json(path, "decode")?;
        match &mut all {
            None => all = Some(r),
            Some(a) => {
                anyhow::ensure!(
                    a.adapter == r.adapter,
                    "--from {}: measured on {}, the first report on {}",
                    path.display(),
                    r.adapter,
                    a.adapter
                );
                a.rows.extend(r.rows);
            }
        }
    }
    all.ok_or_else(|| anyhow::anyhow!("--from needs at least one report"))
}

/// Decodes as `a` asks and returns the report.
fn measure_decode(a: &DecodeArgs) -> Result<membound::bench::decode::Report> {
    // (clap's `requires` does not fire when --model, which conflicts with
    // --synthetic, is given instead.)
    anyhow::ensure!(
        !a.bound || a.synthetic.is_some(),
        "--bound needs --synthetic: the zero-overhead bound's tokens mean nothing, \
         so it never runs on a real model"
    );
    use membound::bench::decode::{self, Subject};
    use membound::model::{GpuLlama, WeightPlan, load_llama, prepare};

    let specs = if a.weights.is_empty() {
        vec!["f16".to_owned(), "affine:bits=4,group=64".to_owned()]
    } else {
        a.weights.clone()
    };
    for s in &specs {
        WeightPlan::uniform(s).check()?;
    }
    let ctx = std::sync::Arc::new(GpuContext::new()?);
    let info = ctx.adapter();
    eprintln!(
        "adapter: {} ({:?}, {} {})",
        info.name, info.backend, info.driver, info.driver_info
    );
    let mut cfg = decode::Config {
        tokens: a.tokens,
        warm_up_tokens: a.warm_up,
        start_pos: a.start_pos,
        context: None,
        profile_reps: a.profile_reps,
        seed: a.seed,
        submissions: a.submissions,
        sparsity: a.sparsity,
        kv_cache: membound_gpu::KvDType::parse(&a.kv_cache)?,
        down_thresholds: None,
        fuse: !a.unfused,
        sparse_gate_up: a.sparse_gate_up,
        sparse_attention: a.sparse_attention,
        floor: !a.no_floor,
        bound: a.bound,
    };
    let loaded;
    let subject = match (&a.synthetic, &a.model) {
        (Some(name), _) => Subject::Synthetic(name),
        (None, model) => {
            let path = crate::models::resolve(model.as_deref().unwrap_or("smollm2"))?;
            loaded = load_llama(&path)?;
            let (mcfg, w) = &loaded;
            if let Some(file) = &a.thresholds {
                let t = membound::sparsity::ThresholdFile::load(file)?;
                let taus: Vec<f32> = (0..mcfg.n_layers)
                    .map(|i| {
                        t.thresholds
                            .get(&format!("layers.{i}.down"))
                            .copied()
                            .unwrap_or(0.0)
                    })
                    .collect();
                anyhow::ensure!(
                    t.thresholds.keys().any(|k| k.ends_with(".down")),
                    "{}: no down-projection thresholds (keys layers.N.down); the GPU sparsifies the down projection",
                    file.display()
                );
                cfg.sparsity = Some(t.target as f32);
                cfg.down_thresholds = Some(taus);
            }
            let c = std::sync::Arc::clone(&ctx);
            Subject::Model {
                name: path.display().to_string(),
                cfg: mcfg.clone(),
                build: Box::new(move |spec, opts| {
                    let p = prepare(mcfg, w, &WeightPlan::uniform(spec), &|_, _| {})?;
                    GpuLlama::new(std::sync::Arc::clone(&c), &p, opts)
                }),
            }
        }
    };
    Ok(decode::run(
        &ctx,
        subject,
        &specs,
        &cfg,
        a.peak_gbps,
        &mut |m| {
            eprintln!("{m}");
        },
    )?)
}

/// Prints a decode report: one table row per case, then the pass, the
/// peak and each sparse or bound row's speedup.
fn print_decode(report: &membound::bench::decode::Report) {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    t.set_header([
        "weights",
        "bytes/token",
        "ms/token",
        "tokens/s",
        "GB/s",
        "roofline tok/s",
        "% roofline",
        "× first",
        "kernels µs (gemv/attn/other)",
        "overhead µs",
        "resident tok/s (% roofline)",
        "floor ms (% floor step/resident)",
    ]);
    for r in &report.rows {
        let split = r.split.as_ref();
        t.add_row([
            match (r.sparsity, r.achieved_sparsity, r.achieved_gate_up_sparsity) {
                (Some(s), Some(a), None) if r.achieved_qkv_sparsity.is_none() => format!(
                    "{} sparse down {:.0}% (got {:.1}%)",
                    r.weights,
                    s * 100.0,
                    a * 100.0
                ),
                (Some(s), Some(a), Some(g)) if r.achieved_qkv_sparsity.is_none() => format!(
                    "{} sparse gate/up+down {:.0}% (got {:.1}%/{:.1}%)",
                    r.weights,
                    s * 100.0,
                    g * 100.0,
                    a * 100.0
                ),
                (Some(s), Some(a), g) => format!(
                    "{} sparse {}{:.0}% (got qkv {:.1}%, o {:.1}%{}, down {:.1}%)",
                    r.weights,
                    if g.is_some() { "all " } else { "qkv+o+down " },
                    s * 100.0,
                    r.achieved_qkv_sparsity.unwrap_or(0.0) * 100.0,
                    r.achieved_o_sparsity.unwrap_or(0.0) * 100.0,
                    g.map_or(String::new(), |g| format!(", gate/up {:.1}%", g * 100.0)),
                    a * 100.0
                ),
                (Some(s), None, _) if r.zero_overhead_bound => format!(
                    "{} bound: dense over {:.0}% of sparse inputs",
                    r.weights,
                    (1.0 - s) * 100.0
                ),
                _ => r.weights.clone(),
            },
            crate::inspect::human_bytes(r.weight_bytes),
            format!("{:.3}", r.ms_per_token),
            format!("{:.1}", r.tokens_per_s),
            format!("{:.0}", r.effective_gbps),
            r.roofline_tokens_per_s
                .map_or_else(|| "-".into(), |v| format!("{v:.1}")),
            r.roofline_fraction
                .map_or_else(|| "-".into(), |f| format!("{:.1}", f * 100.0)),
            format!("{:.2}", r.speedup_vs_first),
            split.map_or_else(
                || "-".into(),
                |s| {
                    format!(
                        "{:.0}/{:.0}/{:.0}",
                        s.gemv_us, s.attention_us, s.elementwise_us
                    )
                },
            ),
            split
                .and_then(|s| s.overhead_us)
                .map_or_else(|| "-".into(), |o| format!("{o:.0}")),
            match (r.resident_tokens_per_s, r.roofline_tokens_per_s) {
                (Some(t), Some(roof)) => format!("{t:.1} ({:.1})", t / roof * 100.0),
                (Some(t), None) => format!("{t:.1}"),
                _ => "-".into(),
            },
            match (r.floor_ms_per_token, r.floor_fraction) {
                (Some(f), Some(p)) => format!(
                    "{f:.3} ({:.1}/{})",
                    p * 100.0,
                    r.resident_floor_fraction
                        .map_or_else(|| "-".into(), |q| format!("{:.1}", q * 100.0))
                ),
                _ => "-".into(),
            },
        ]);
    }
    for col in 1..12 {
        if let Some(c) = t.column_mut(col) {
            c.set_cell_alignment(comfy_table::CellAlignment::Right);
        }
    }
    if let Some(r) = report.rows.first() {
        println!(
            "{}: decode from position {} ({} timed tokens, median), KV cache {} ({})",
            r.model,
            r.start_pos,
            r.tokens,
            crate::inspect::human_bytes(r.kv_cache_bytes),
            r.kv_cache
        );
    }
    println!("{t}");
    if let Some(s) = report.rows.first().and_then(|r| r.split.as_ref()) {
        println!(
            "{} dispatches per token; GPU pass {}",
            s.dispatches,
            s.pass_us.map_or_else(
                || "not timed (no timestamps)".into(),
                |p| format!("{p:.0} µs")
            )
        );
    }
    match (
        report.rows.first().and_then(|r| r.peak_gbps),
        &report.peak_source,
    ) {
        (Some(p), Some(src)) => println!("peak: {p} GB/s ({src})"),
        _ => println!("peak: unknown for this adapter (pass --peak-gbps)"),
    }
    for r in report.rows.iter().filter(|r| r.sparsity.is_some()) {
        let f = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
        if r.zero_overhead_bound {
            println!(
                "{} zero-overhead bound: {}× dense tokens/s ({}× resident), the most a \
                 kernel skipping {:.0}% of those inputs could give at the dense kernels' \
                 efficiency",
                r.weights,
                f(r.speedup_vs_dense),
                f(r.resident_speedup_vs_dense),
                r.sparsity.unwrap_or(0.0) * 100.0
            );
            continue;
        }
        println!(
            "{} sparse: {}× dense tokens/s ({}× resident); down projections {}× faster (measured) vs {}× \
             (notes' model 1/(1 − s + o), o = {} measured)",
            r.weights,
            f(r.speedup_vs_dense),
            f(r.resident_speedup_vs_dense),
            f(r.measured_down_speedup),
            f(r.notes_model_down_speedup),
            f(r.sparse_overhead)
        );
    }
}
