//! One entry point for every LLaMA-family model this engine reads:
//! [`load_llama`].

use std::path::{Path, PathBuf};

use membound_tensor::{Format, MetaValue, SafetensorsFile, TensorSource};

use super::hf::{self, HF_CONFIG, HF_INDEX, HF_WEIGHTS};
use super::weights::{Classifier, Names, Store};
use super::{LlamaConfig, LlamaWeights};
use crate::quantize::{self, META_FORMAT};
use crate::{Error, Result};

fn model_err(path: &Path, problem: impl Into<String>) -> Error {
    Error::Model {
        path: path.display().to_string(),
        problem: problem.into(),
    }
}

/// Loads a LLaMA-family decoder from `path`, whatever it is:
///
/// - a GGUF file of architecture `llama`, or a llama2.c `.bin` checkpoint;
/// - a Hugging Face directory (or its `config.json`, its
///   `model.safetensors.index.json`, or a weights file beside a
///   `config.json`), see [`hf`](super::hf);
/// - a `membound quantize` output (safetensors whose metadata
///   `membound.format` is `membound.quantized/1`) of any of those: the
///   configuration comes from the source's metadata the file keeps (or
///   `config.json` beside it for a Hugging Face source), every encoded weight
///   is decoded to f32 and also kept in [`LlamaWeights::encoded`].
///
/// Every shape is checked against the configuration and every value must
/// be finite; errors name the file and the tensor.
pub fn load_llama(path: &Path) -> Result<(LlamaConfig, LlamaWeights)> {
    if path.is_dir() {
        return hf::load_hf_dir(path);
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if name == HF_CONFIG {
        return hf::load_hf_dir(&dir);
    }
    if name.ends_with(".safetensors.index.json") {
        let files = hf::shards_of_index(path)?;
        return hf::load_hf_files(&dir, &files);
    }
    let src = membound_tensor::open(path)?;
    match src.format() {
        Format::Gguf | Format::Llama2c => {
            let cfg = LlamaConfig::from_source(src.as_ref())?;
            let w = LlamaWeights::load(src.as_ref(), &cfg)?;
            Ok((cfg, w))
        }
        Format::Safetensors => {
            let quantized = src
                .metadata()
                .iter()
                .any(|(k, v)| k == META_FORMAT && v.as_str() == Some(quantize::FORMAT));
            drop(src);
            if quantized {
                return load_quantized(path);
            }
            if !dir.join(HF_CONFIG).is_file() {
                return Err(model_err(
                    path,
                    format!(
                        "a safetensors file without {HF_CONFIG} beside it; load a Hugging Face directory, or a membound quantize output"
                    ),
                ));
            }
            // A shard of a sharded checkpoint means the whole checkpoint.
            let index = dir.join(HF_INDEX);
            if name != HF_WEIGHTS && index.is_file() {
                let shards = hf::shards_of_index(&index)?;
                if shards.iter().any(|s| s.file_name() == path.file_name()) {
                    return hf::load_hf_files(&dir, &shards);
                }
            }
            hf::load_hf_files(&dir, &[path.to_path_buf()])
        }
    }
}

/// A metadata string of a quantized file back as the value it was: the
/// writer stores strings as they are and everything else as JSON.
fn meta_value(s: &str) -> MetaValue {
    fn from_json(v: &serde_json::Value) -> Option<MetaValue> {
        use serde_json::Value as J;
        Some(match v {
            J::Bool(b) => MetaValue::Bool(*b),
            J::Number(n) => {
                if let Some(u) = n.as_u64() {
                    MetaValue::U64(u)
                } else if let Some(i) = n.as_i64() {
                    MetaValue::I64(i)
                } else {
                    MetaValue::F64(n.as_f64()?)
                }
            }
            J::String(s) => MetaValue::String(s.clone()),
            J::Array(a) => MetaValue::Array(a.iter().map(from_json).collect::<Option<_>>()?),
            _ => return None,
        })
    }
    let looks_json = s
        .bytes()
        .next()
        .is_some_and(|b| b == b'[' || b == b'-' || b.is_ascii_digit())
        || s == "true"
        || s == "false";
    looks_json
        .then(|| serde_json::from_str::<serde_json::Value>(s).ok())
        .flatten()
        .and_then(|v| from_json(&v))
        .unwrap_or_else(|| MetaValue::String(s.to_string()))
}

/// Loads a `membound quantize` output of a LLaMA-family model: f32 weights
/// decoded from the encodings, and the encodings themselves in
/// [`LlamaWeights::encoded`].
pub fn load_quantized(path: &Path) -> Result<(LlamaConfig, LlamaWeights)> {
    let file = SafetensorsFile::open(path)?;
    let encoded = quantize::read_encoded(&file)?;
    let strings = file.string_metadata();
    let source_format = strings
        .iter()
        .find(|(k, _)| k == "membound.source_format")
        .map(|(_, v)| v.as_str())
        .ok_or_else(|| model_err(path, "metadata key \"membound.source_format\" is missing"))?;
    let desc = path.display().to_string();
    let (cfg, names, classifier) = match source_format {
        "GGUF" | "llama2.c" => {
            let format = if source_format == "GGUF" {
                Format::Gguf
            } else {
                Format::Llama2c
            };
            let meta: Vec<(String, MetaValue)> = strings
                .iter()
                .map(|(k, v)| (k.clone(), meta_value(v)))
                .collect();
            let cfg = LlamaConfig::from_metadata(&desc, format, &meta)?;
            (cfg, Names::of(format), Classifier::IfPresent)
        }
        "safetensors" => {
            let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
            let config = dir.unwrap_or(Path::new(".")).join(HF_CONFIG);
            if !config.is_file() {
                return Err(model_err(
                    path,
                    format!(
                        "quantized from a safetensors file, whose configuration is not in the file: put the source's {HF_CONFIG} beside it"
                    ),
                ));
            }
            let hf = hf::read_config(&config)?;
            let classifier = hf.classifier();
            (hf.config, Names::of(Format::Safetensors), classifier)
        }
        other => {
            return Err(model_err(
                path,
                format!(
                    "quantized from a {other:?} file; LLaMA decoders load from GGUF, llama2.c or safetensors sources"
                ),
            ));
        }
    };
    let store = Store::new(desc, &[&file as &dyn TensorSource])?.with_encoded(encoded);
    let w = LlamaWeights::load_from(&store, names, &cfg, classifier)?;
    Ok((cfg, w))
}
