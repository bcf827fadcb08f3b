//! `membound quantize`: every 2-D weight of a model in one codec.

use std::path::PathBuf;

use anyhow::Result;
use membound::quantize;

use crate::progress::LazyBar;

/// Write every 2-D weight of MODEL in one codec, as safetensors.
///
/// Affine output uses MLX's naming: `<stem>.weight` holds the packed uint32
/// codes, `<stem>.scales` and `<stem>.biases` beside it. Other codecs store
/// each encoded part as `<name>.<part>` (e.g. `….weight.codes`,
/// `….weight.codebook`). The codec spec is in the file's `__metadata__`
/// (`membound.codec`), with a JSON map `membound.tensors` saying which
/// tensors make up each encoded weight, so the file decodes with nothing
/// else. Other tensors are copied as they are; GGUF block tensors that are
/// not 2-D are dequantized to f32.
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
}

pub fn run(args: Args) -> Result<()> {
    let input = crate::models::resolve(&args.model)?;
    if args.output.exists() && !args.force {
        // Fail before the work, not after; `quantize::write` checks again.
        quantize::write_check(&input, &args.output, args.force)?;
    }
    let source = membound_tensor::open(&input)?;
    let bar = LazyBar::new(source.tensors().len() as u64, "quantizing");
    let q = quantize::quantize(source.as_ref(), &args.codec, &|_, _, _| bar.step())?;
    bar.finish();
    quantize::write(&q, &input, &args.output, args.force)?;
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
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "input": input, "output": args.output, "codec": q.codec,
                "encoded_tensors": encoded.len(), "copied_tensors": q.report.len() - encoded.len(),
                "bits_per_weight": if weights > 0.0 { bits / weights } else { 0.0 },
                "mean_sqnr_db": mean_sqnr, "tensor_bytes": q.bytes(), "tensors": q.report,
            }))?
        );
    } else {
        println!(
            "wrote {} ({}): {} weights encoded at {:.3} bits/weight (mean SQNR {:.2} dB), {} tensors copied; {}",
            args.output.display(),
            q.codec,
            encoded.len(),
            if weights > 0.0 { bits / weights } else { 0.0 },
            mean_sqnr,
            q.report.len() - encoded.len(),
            crate::inspect::human_bytes(q.bytes() as u64)
        );
    }
    Ok(())
}
