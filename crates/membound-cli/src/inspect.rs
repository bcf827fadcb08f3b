//! `membound inspect`: every tensor with its statistics, and the format's metadata.

use anyhow::Result;
use membound_tensor::{Format, MetaValue, Moments, TensorSource, TensorView};
use rayon::prelude::*;
use serde::Serialize;
use serde_json::{Value, json};

use crate::progress::LazyBar;

/// Show every tensor (name, dtype, shape, bytes, mean, std, excess kurtosis)
/// and a summary of the file's metadata.
///
/// Statistics are computed on the f32 values, so GGUF blocks are dequantized
/// first. Excess kurtosis is 0 for a Gaussian; heavy-tailed weights (> 3) are
/// what makes low-bit quantization hard.
///
/// Examples:
///   membound inspect smollm2
///   membound inspect model.safetensors --json > stats.json
///   membound inspect llama2xs-280K --metadata
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// A model file or name (smollm2, minilm, llama2xs-280K, babyllama105).
    model: String,
    /// Print JSON (tensors, statistics and metadata) instead of tables.
    #[arg(long)]
    json: bool,
    /// Skip statistics: list tensors only (instant, even on large models).
    #[arg(long)]
    no_stats: bool,
    /// Show every metadata key, not just the summary.
    #[arg(long)]
    metadata: bool,
}

#[derive(Serialize)]
struct TensorRow {
    name: String,
    dtype: String,
    shape: Vec<usize>,
    bytes: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    mean: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    std: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    excess_kurtosis: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    non_finite: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

pub fn run(args: Args) -> Result<()> {
    let path = crate::models::resolve(&args.model)?;
    let model = membound_tensor::open(&path)?;
    let tensors = model.tensors();
    let rows = rows(&tensors, !args.no_stats);
    let metadata = model.metadata();
    let summary = summary(model.as_ref(), &tensors, &metadata);

    if args.json {
        let meta: serde_json::Map<String, Value> = metadata
            .iter()
            .map(|(k, v)| (k.clone(), json_value(v)))
            .collect();
        let out = json!({
            "path": path,
            "format": model.format(),
            "summary": summary,
            "metadata": meta,
            "tensors": rows,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }

    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    table.set_header([
        "tensor",
        "dtype",
        "shape",
        "bytes",
        "mean",
        "std",
        "ex. kurtosis",
    ]);
    for r in &rows {
        let num = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.4e}"));
        table.add_row([
            r.name.clone(),
            r.dtype.clone(),
            format!("{:?}", r.shape),
            human_bytes(r.bytes as u64),
            num(r.mean),
            num(r.std),
            r.excess_kurtosis
                .map_or_else(|| "-".into(), |k| format!("{k:.2}")),
        ]);
    }
    for col in 3..7 {
        if let Some(c) = table.column_mut(col) {
            c.set_cell_alignment(comfy_table::CellAlignment::Right);
        }
    }
    println!("{table}");

    let mut s = comfy_table::Table::new();
    s.load_preset(comfy_table::presets::NOTHING);
    for (k, v) in summary.as_object().into_iter().flatten() {
        let v = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        s.add_row([k.as_str(), v.as_str()]);
    }
    println!("{s}");

    if args.metadata {
        let mut m = comfy_table::Table::new();
        m.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
        m.set_header(["key", "value"]);
        for (k, v) in &metadata {
            m.add_row([k.clone(), v.to_string()]);
        }
        println!("{m}");
    }

    let bad: Vec<&TensorRow> = rows
        .iter()
        .filter(|r| r.non_finite.unwrap_or(0) > 0)
        .collect();
    for r in &bad {
        eprintln!(
            "warning: tensor {:?} holds {} NaN or infinite values",
            r.name,
            r.non_finite.unwrap_or(0)
        );
    }
    for r in rows.iter().filter(|r| r.error.is_some()) {
        eprintln!(
            "note: tensor {:?}: no statistics: {}",
            r.name,
            r.error.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

fn rows(tensors: &[TensorView<'_>], stats: bool) -> Vec<TensorRow> {
    let bar = LazyBar::new(tensors.len() as u64, "statistics");
    let rows = tensors
        .par_iter()
        .map(|t| {
            let mut row = TensorRow {
                name: t.name().to_string(),
                dtype: t.dtype().to_string(),
                shape: t.shape().to_vec(),
                bytes: t.data().len(),
                mean: None,
                std: None,
                excess_kurtosis: None,
                non_finite: None,
                error: None,
            };
            if stats {
                match t.to_f32() {
                    Ok(v) => {
                        let m = Moments::of(&v);
                        row.mean = Some(m.mean());
                        row.std = Some(m.std());
                        row.excess_kurtosis = Some(m.excess_kurtosis()).filter(|k| k.is_finite());
                        row.non_finite = Some(m.non_finite());
                    }
                    Err(e) => row.error = Some(e.to_string()),
                }
            }
            bar.step();
            row
        })
        .collect();
    bar.finish();
    rows
}

fn summary(
    model: &dyn TensorSource,
    tensors: &[TensorView<'_>],
    meta: &[(String, MetaValue)],
) -> Value {
    let params: u64 = tensors.iter().map(|t| t.numel() as u64).sum();
    let bytes: u64 = tensors.iter().map(|t| t.data().len() as u64).sum();
    let mut dtypes: Vec<(String, usize)> = Vec::new();
    for t in tensors {
        let name = t.dtype().to_string();
        match dtypes.iter_mut().find(|(n, _)| *n == name) {
            Some((_, c)) => *c += 1,
            None => dtypes.push((name, 1)),
        }
    }
    let get = |k: &str| meta.iter().find(|(key, _)| key == k).map(|(_, v)| v);
    let mut s = serde_json::Map::new();
    s.insert("format".into(), json!(model.format().to_string()));
    s.insert("tensors".into(), json!(tensors.len()));
    s.insert("parameters".into(), json!(params));
    s.insert("tensor bytes".into(), json!(bytes));
    if params > 0 {
        s.insert(
            "bits/weight".into(),
            json!(((bytes as f64 * 8.0 / params as f64) * 1000.0).round() / 1000.0),
        );
    }
    s.insert(
        "dtypes".into(),
        json!(
            dtypes
                .iter()
                .map(|(n, c)| format!("{n}×{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    match model.format() {
        Format::Gguf => {
            let arch = get("general.architecture")
                .and_then(MetaValue::as_str)
                .unwrap_or("?")
                .to_string();
            if let Some(n) = get("general.name") {
                s.insert("name".into(), json!(n.to_string()));
            }
            s.insert("architecture".into(), json!(arch));
            for (label, key) in [
                ("context length", "context_length"),
                ("embedding length", "embedding_length"),
                ("block count", "block_count"),
                ("feed-forward length", "feed_forward_length"),
                ("attention heads", "attention.head_count"),
                ("kv heads", "attention.head_count_kv"),
                ("rope base", "rope.freq_base"),
                ("rms norm eps", "attention.layer_norm_rms_epsilon"),
            ] {
                if let Some(v) = get(&format!("{arch}.{key}")) {
                    s.insert(label.into(), json_value(v));
                }
            }
            let tok = get("tokenizer.ggml.model").and_then(MetaValue::as_str);
            let kind = match tok {
                Some("gpt2") => "byte-level BPE (gpt2)".to_string(),
                Some("llama") => "SentencePiece BPE (llama)".to_string(),
                Some(other) => other.to_string(),
                None => "none".to_string(),
            };
            s.insert("tokenizer".into(), json!(kind));
            if let Some(n) = get("tokenizer.ggml.tokens").and_then(MetaValue::as_array) {
                s.insert("vocab size".into(), json!(n.len()));
            }
            if let Some(n) = get("tokenizer.ggml.merges").and_then(MetaValue::as_array) {
                s.insert("merges".into(), json!(n.len()));
            }
        }
        Format::Llama2c => {
            for (k, v) in meta {
                s.insert(k.clone(), json_value(v));
            }
        }
        Format::Safetensors => {
            s.insert("metadata keys".into(), json!(meta.len()));
        }
    }
    Value::Object(s)
}

/// Metadata as JSON; arrays longer than 16 items are summarised so that a
/// 50k-token vocabulary does not drown the output.
fn json_value(v: &MetaValue) -> Value {
    const MAX: usize = 16;
    match v {
        MetaValue::Array(a) if a.len() > MAX => json!({
            "array_len": a.len(),
            "first": a.iter().take(MAX).map(json_value).collect::<Vec<_>>(),
        }),
        MetaValue::Array(a) => Value::Array(a.iter().map(json_value).collect()),
        MetaValue::F32(f) if !f.is_finite() => json!(f.to_string()),
        MetaValue::F64(f) if !f.is_finite() => json!(f.to_string()),
        other => serde_json::to_value(other).unwrap_or(Value::Null),
    }
}

pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
