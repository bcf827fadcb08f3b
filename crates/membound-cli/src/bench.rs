//! `membound bench`: measured speed of kernels.

use std::path::PathBuf;
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
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
struct KernelArgs {
    /// Shapes as ROWSxCOLS (out × in), comma-separated [default: LLaMA-8B and SmolLM2 layers].
    #[arg(long, value_delimiter = ',')]
    shapes: Vec<String>,
    /// Weight formats, comma-separated: f32, f16, affine2|3|4|8[-gG], nf4,
    /// sparse-f16, sparse-affine4[-gG] [default: all of these, g64].
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
    /// Also write the results as JSON to this file (`-` for stdout only).
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    match args.what {
        What::Kernels(a) => run_kernels(a),
    }
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

fn run_kernels(a: KernelArgs) -> Result<()> {
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
    let ctx = GpuContext::new()?;
    let info = ctx.adapter();
    eprintln!(
        "adapter: {} ({:?}, {} {})",
        info.name, info.backend, info.driver, info.driver_info
    );
    let bar = std::cell::OnceCell::new();
    let mut last = 0;
    let report = kernels::run(&ctx, &cfg, a.peak_gbps, &mut |done, total, _| {
        let bar = bar.get_or_init(|| crate::progress::LazyBar::new(total as u64, "benchmark"));
        while last < done {
            bar.step();
            last += 1;
        }
    })?;
    if let Some(b) = bar.get() {
        b.finish();
    }

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
        ]);
    }
    for col in 2..9 {
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
    if let Some(path) = a.json {
        let text = serde_json::to_string_pretty(&report)?;
        if path.as_os_str() == "-" {
            println!("{text}");
        } else {
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(())
}
