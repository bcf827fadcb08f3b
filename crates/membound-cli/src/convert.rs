//! `membound convert`: any readable model to plain safetensors.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::ValueEnum;
use half::{bf16, f16};
use membound_tensor::{DType, MetaValue, OwnedTensor, TensorView, write_safetensors};
use rayon::prelude::*;

use crate::progress::LazyBar;

/// Convert any readable model (GGUF, safetensors, llama2.c) to plain safetensors.
///
/// GGUF tensors are dequantized exactly as ggml does; llama2.c tensors get
/// Hugging Face LLaMA names. Floating-point tensors are stored in --dtype;
/// integer and boolean tensors are copied as they are. The source's metadata
/// is kept in the safetensors `__metadata__` (non-string values as JSON),
/// with `membound.source_format` and `membound.source_file` added.
///
/// The output is written to a temporary file and renamed into place; the
/// input is never overwritten.
///
/// Note on RoPE: GGUF (llama) and llama2.c store q/k rows in the interleaved
/// rotary order; they are written unchanged (see `rope.layout` where given).
///
/// Example:
///   membound convert smollm2 -o smollm2-f16.safetensors --dtype f16
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// A model file or name.
    input: String,
    /// The safetensors file to write.
    #[arg(short, long)]
    output: PathBuf,
    /// Storage type of floating-point tensors.
    #[arg(long, value_enum, default_value_t = OutDType::F32)]
    dtype: OutDType,
    /// Replace the output file if it exists.
    #[arg(long)]
    force: bool,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum OutDType {
    F32,
    F16,
    Bf16,
}

pub fn run(args: Args) -> Result<()> {
    let input = crate::models::resolve(&args.input)?;
    check_output(&input, &args.output, args.force)?;
    let model = membound_tensor::open(&input)?;
    let tensors = model.tensors();
    let bar = LazyBar::new(tensors.len() as u64, "converting");
    let out: Vec<OwnedTensor> = tensors
        .par_iter()
        .map(|t| {
            let r = convert_one(t, args.dtype);
            bar.step();
            r
        })
        .collect::<Result<_>>()?;
    bar.finish();

    let mut metadata: Vec<(String, String)> = model
        .metadata()
        .into_iter()
        .map(|(k, v)| {
            let s = match v {
                MetaValue::String(s) => s,
                other => serde_json::to_string(&other).unwrap_or_default(),
            };
            (k, s)
        })
        .collect();
    metadata.push(("membound.source_format".into(), model.format().to_string()));
    let source = input
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    metadata.push(("membound.source_file".into(), source));
    write_safetensors(&args.output, &out, &metadata)?;

    let bytes: usize = out.iter().map(|t| t.data.len()).sum();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "input": input, "output": args.output, "format": model.format(),
                "tensors": out.len(), "tensor_bytes": bytes,
                "dtype": format!("{:?}", args.dtype).to_lowercase(),
            }))?
        );
    } else {
        println!(
            "wrote {} ({} tensors, {}) from {} ({})",
            args.output.display(),
            out.len(),
            crate::inspect::human_bytes(bytes as u64),
            input.display(),
            model.format()
        );
    }
    Ok(())
}

fn convert_one(t: &TensorView<'_>, dtype: OutDType) -> Result<OwnedTensor> {
    let keep = matches!(
        t.dtype(),
        DType::Bool
            | DType::U8
            | DType::I8
            | DType::U16
            | DType::I16
            | DType::U32
            | DType::I32
            | DType::U64
            | DType::I64
    );
    if keep {
        return Ok(OwnedTensor {
            name: t.name().into(),
            dtype: t.dtype(),
            shape: t.shape().to_vec(),
            data: t.data().to_vec(),
        });
    }
    let v = t.to_f32()?;
    let (dtype, data) = match dtype {
        OutDType::F32 => (DType::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        OutDType::F16 => (
            DType::F16,
            v.iter()
                .flat_map(|&x| f16::from_f32(x).to_le_bytes())
                .collect(),
        ),
        OutDType::Bf16 => (
            DType::BF16,
            v.iter()
                .flat_map(|&x| bf16::from_f32(x).to_le_bytes())
                .collect(),
        ),
    };
    Ok(OwnedTensor {
        name: t.name().into(),
        dtype,
        shape: t.shape().to_vec(),
        data,
    })
}

/// Refuses to overwrite the input, or any file without --force.
fn check_output(input: &Path, output: &Path, force: bool) -> Result<()> {
    if output.exists() {
        let same = match (input.canonicalize(), output.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        if same {
            bail!("{}: refusing to overwrite the input file", output.display());
        }
        if !force {
            bail!(
                "{}: already exists (pass --force to replace it)",
                output.display()
            );
        }
        if output.is_dir() {
            bail!("{}: is a directory", output.display());
        }
    }
    if output.extension().is_none_or(|e| e != "safetensors") {
        eprintln!("note: {} does not end in .safetensors", output.display());
    }
    Ok(())
}
