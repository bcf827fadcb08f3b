//! `membound study`: the research notes' compression study, rerunnable.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Subcommand;
use membound::study::Table;
use membound::study::synthetic::{self, SyntheticOptions};
use membound::study::weights::{self, WeightsOptions};
use serde::Serialize;

use crate::progress::LazyBar;

/// Rerun the compression study of the research notes (sections 3–4).
///
/// `synthetic` reproduces table 3.1 on seeded Gaussian, Laplacian, Student-t
/// and bimodal data; `weights` runs every codec setting (affine 2/3/4/8-bit in
/// several groupings, absmax, NF4, k-means, vector codebooks, polynomial
/// ICDF, PolyMSE, positional polynomials, SVD, DCT, Kronecker) on every 2-D
/// weight of a model and prints tables 3.2 and 4.1–4.5 beside the notes'
/// figures, plus the Pareto frontier of SQNR against bits/weight.
///
/// Tables go to stdout as markdown. --json writes every measurement (use `-`
/// for stdout, which then carries only the JSON), --csv DIR one CSV per
/// table, --plot DIR SVG plots.
///
/// Examples:
///   membound study synthetic
///   membound study synthetic --seed 7 --json synthetic.json
///   membound study weights llama2xs-280K
///   membound study weights smollm2 --csv out/csv --plot out/plots
///   membound study weights minilm --only attention --codecs affine:bits=4,group=64,poly:degree=3
///   membound study weights model.safetensors --json - | jq '.settings[0]'
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand, Debug)]
enum What {
    Synthetic(SyntheticArgs),
    Weights(WeightsArgs),
}

/// Where results go besides the markdown on stdout.
#[derive(clap::Args, Debug)]
struct Output {
    /// Write every measurement as JSON to FILE (`-`: stdout, instead of the tables).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write one CSV file per table into DIR (created if needed).
    #[arg(long, value_name = "DIR")]
    csv: Option<PathBuf>,
    /// Write SVG plots into DIR (created if needed).
    #[arg(long, value_name = "DIR")]
    plot: Option<PathBuf>,
}

/// Table 3.1 with a seeded generator: 4-bit affine against the polynomial ICDF.
///
/// Each distribution fills ROWS rows of COLS values from its own ChaCha8
/// stream derived from SEED. The defaults (64 rows of 4096) use the per-row
/// setting that reproduces the notes' Gaussian figure; a second table shows
/// the same data under other 16-level quantizers (MLX affine, PolyMSE,
/// Lloyd-Max), a third how affine SQNR moves with group size and row length,
/// a fourth what two-Gaussian mixtures give. --plot writes
/// synthetic_grouping.svg.
///
/// Examples:
///   membound study synthetic
///   membound study synthetic --seed 3 --cols 1024 --csv tables/
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
struct SyntheticArgs {
    /// Seed of the generator.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Rows per distribution (independent repetitions).
    #[arg(long, default_value_t = 64)]
    rows: usize,
    /// Values per row.
    #[arg(long, default_value_t = 4096)]
    cols: usize,
    #[command(flatten)]
    out: Output,
}

/// Every codec setting on every 2-D weight of MODEL.
///
/// MODEL is a file (GGUF, safetensors, llama2.c) or a name: smollm2, minilm,
/// llama2xs-280K, babyllama105. GGUF block weights are dequantized first, so
/// SmolLM2 (Q4_1, embedding Q8_0) is studied as the 4-bit weights it stores.
/// Tensors of more than --sample-above weights (default 2^25, more than any
/// tensor of the four default models) are studied on --sample-rows seeded
/// rows (every codec sees the same rows; kurtosis uses all weights); --full
/// studies every row. Tensors run in parallel, with a progress bar.
///
/// --plot writes frontier.svg (SQNR against bits/weight per codec, with the
/// Pareto frontier) and hist_*.svg (the lowest-, median- and
/// highest-kurtosis weights with their fitted Gaussian).
///
/// Examples:
///   membound study weights llama2xs-280K
///   membound study weights smollm2 --plot plots/ --json smollm2.json
///   membound study weights smollm2 --sample-above 1000000   # row-sample the embedding
///   membound study weights minilm --only output.dense --codecs poly:degree=3,affine:bits=4,group=row
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
struct WeightsArgs {
    /// A model file or name.
    model: String,
    /// Codec settings to run instead of the full list (specs; commas inside a
    /// spec are fine: a new spec starts at each `name:`). See --list-codecs.
    #[arg(long, value_name = "SPECS")]
    codecs: Option<String>,
    /// Print the default codec settings and exit.
    #[arg(long)]
    list_codecs: bool,
    /// Only tensors whose name contains this (repeatable).
    #[arg(long, value_name = "TEXT")]
    only: Vec<String>,
    /// Row-sample tensors with more weights than this.
    #[arg(long, default_value_t = 1 << 25, value_name = "N")]
    sample_above: usize,
    /// Rows kept when sampling.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    sample_rows: usize,
    /// Study every row of every tensor, whatever its size.
    #[arg(long)]
    full: bool,
    /// Seed of the row sample.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    out: Output,
}

/// Splits `a:x=1,y=2,b:z=3` into `a:x=1,y=2` and `b:z=3`: a comma followed
/// by `name:` (or a bare known codec name) starts a new spec.
fn split_specs(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for piece in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let starts_spec = piece.contains(':')
            || membound::codec::CODEC_NAMES.contains(&piece.to_ascii_lowercase().as_str());
        match out.last_mut() {
            Some(last) if !starts_spec => {
                last.push(',');
                last.push_str(piece);
            }
            _ => out.push(piece.to_string()),
        }
    }
    out
}

pub fn run(args: Args) -> Result<()> {
    match args.what {
        What::Synthetic(a) => run_synthetic(a),
        What::Weights(a) => run_weights(a),
    }
}

fn run_synthetic(a: SyntheticArgs) -> Result<()> {
    let opts = SyntheticOptions {
        seed: a.seed,
        rows: a.rows,
        cols: a.cols,
    };
    let t = Instant::now();
    let study = synthetic::run(&opts)?;
    let header = format!(
        "## membound study synthetic\n\nseed {}, {} rows × {} values per distribution, {:.1} s.\n",
        opts.seed,
        opts.rows,
        opts.cols,
        t.elapsed().as_secs_f64()
    );
    emit(&a.out, &header, &study.tables(), &study)?;
    if let Some(dir) = &a.out.plot {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let p = dir.join("synthetic_grouping.svg");
        crate::plot::grouping(&p, &study)?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

fn run_weights(a: WeightsArgs) -> Result<()> {
    if a.list_codecs {
        for s in weights::SETTINGS {
            println!("{s}");
        }
        return Ok(());
    }
    let path = crate::models::resolve(&a.model)?;
    let source = membound_tensor::open(&path)?;
    let mut opts = WeightsOptions {
        sample_above: if a.full { 0 } else { a.sample_above },
        sample_rows: a.sample_rows,
        seed: a.seed,
        only: a.only.clone(),
        ..WeightsOptions::default()
    };
    if let Some(c) = &a.codecs {
        opts.settings = split_specs(c);
    }
    let label = a.model.clone();
    let total = weights::select(&source.tensors(), &opts).0.len();
    let bar = LazyBar::new(total as u64, "studying");
    let study = weights::run(&label, source.as_ref(), &opts, &|_| bar.step())?;
    bar.finish();
    let header = format!(
        "## membound study weights {}\n\n{} ({}), {} tensors studied, {} settings, {:.1} s on {} threads.\n",
        a.model,
        path.display(),
        study.format,
        study.tensors.len(),
        study.settings.len(),
        study.seconds,
        study.threads
    );
    emit(&a.out, &header, &study.tables(), &study)?;
    if let Some(dir) = &a.out.plot {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let p = dir.join("frontier.svg");
        crate::plot::frontier(
            &p,
            &format!("{}: SQNR against bits/weight", a.model),
            &study.settings,
        )?;
        eprintln!("wrote {}", p.display());
        for (i, h) in study.histograms.iter().enumerate() {
            let p = dir.join(format!("hist_{i}_{}.svg", file_safe(&h.tensor)));
            crate::plot::histogram(&p, &a.model, h)?;
            eprintln!("wrote {}", p.display());
        }
    }
    Ok(())
}

fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Prints the markdown (unless JSON goes to stdout) and writes JSON and CSV.
fn emit<T: Serialize>(out: &Output, header: &str, tables: &[Table], value: &T) -> Result<()> {
    let json_stdout = out.json.as_deref() == Some(Path::new("-"));
    if !json_stdout {
        println!("{header}");
        for t in tables {
            println!("{}", t.to_markdown());
        }
    }
    if let Some(p) = &out.json {
        let text = serde_json::to_string_pretty(value)?;
        if json_stdout {
            println!("{text}");
        } else {
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            membound::sparsity::write_atomic(p, (text + "\n").as_bytes())?;
            eprintln!("wrote {}", p.display());
        }
    }
    if let Some(dir) = &out.csv {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for t in tables {
            let p = dir.join(format!("{}.csv", t.id));
            membound::sparsity::write_atomic(&p, t.to_csv().as_bytes())?;
        }
        eprintln!("wrote {} CSV files to {}", tables.len(), dir.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::split_specs;

    #[test]
    fn splits_spec_lists() {
        assert_eq!(
            split_specs("affine:bits=4,group=64,poly:degree=3,nf4"),
            ["affine:bits=4,group=64", "poly:degree=3", "nf4"]
        );
        assert_eq!(
            split_specs(" svd:rank=32 , dct:k=50"),
            ["svd:rank=32", "dct:k=50"]
        );
    }
}
