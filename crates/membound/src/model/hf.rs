//! Hugging Face checkpoints: a directory with `config.json` and the weights
//! in `model.safetensors` or shards listed by `model.safetensors.index.json`.
//!
//! Supported architectures are the LLaMA-shaped decoders: `LlamaForCausalLM`
//! (`llama`), `Qwen2ForCausalLM` (`qwen2`, with q/k/v biases) and
//! `MistralForCausalLM` (`mistral`). Weights stay in Hugging Face's q/k row
//! order, so the configuration says [`RopeLayout::HalfSplit`].

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use membound_tensor::TensorSource;
use serde_json::Value;

use super::weights::{Classifier, HF, Store};
use super::{LlamaConfig, LlamaWeights, RopeLayout};
use crate::{Error, Result};

/// The architectures this loader reads: (`architectures` entry, `model_type`).
pub const HF_ARCHITECTURES: &[(&str, &str)] = &[
    ("LlamaForCausalLM", "llama"),
    ("Qwen2ForCausalLM", "qwen2"),
    ("MistralForCausalLM", "mistral"),
];

/// File name of a single-file checkpoint.
pub const HF_WEIGHTS: &str = "model.safetensors";
/// File name of a sharded checkpoint's index.
pub const HF_INDEX: &str = "model.safetensors.index.json";
/// File name of the configuration.
pub const HF_CONFIG: &str = "config.json";

/// A Hugging Face `config.json`, as far as this engine uses it.
#[derive(Clone, Debug, PartialEq)]
pub struct HfConfig {
    /// The decoder's shape, with [`RopeLayout::HalfSplit`].
    pub config: LlamaConfig,
    /// The `model_type` of the supported family (`llama`, `qwen2`, `mistral`).
    pub model_type: String,
    /// Whether the classifier is the embedding (`tie_word_embeddings`).
    pub tie_word_embeddings: bool,
}

fn model_err(path: &Path, problem: impl Into<String>) -> Error {
    Error::Model {
        path: path.display().to_string(),
        problem: problem.into(),
    }
}

/// Reads and checks `config.json` at `path`.
pub fn read_config(path: &Path) -> Result<HfConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        model_err(
            path,
            format!("cannot read the Hugging Face configuration: {e}"),
        )
    })?;
    parse_config(path, &text)
}

/// Parses the text of a `config.json`; `path` names it in errors.
pub fn parse_config(path: &Path, text: &str) -> Result<HfConfig> {
    let json: Value = serde_json::from_str(text)
        .map_err(|e| model_err(path, format!("config.json is not valid JSON: {e}")))?;
    let obj = json
        .as_object()
        .ok_or_else(|| model_err(path, "config.json is not a JSON object"))?;
    let field = |k: &str| obj.get(k).filter(|v| !v.is_null());
    let err = |p: String| model_err(path, p);

    let archs: Vec<&str> = match field("architectures") {
        None => Vec::new(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        Some(other) => return Err(err(format!("\"architectures\" is {other}, not a list"))),
    };
    let model_type = field("model_type").and_then(Value::as_str);
    let known = if archs.is_empty() {
        HF_ARCHITECTURES
            .iter()
            .find(|(_, t)| Some(*t) == model_type)
    } else {
        HF_ARCHITECTURES.iter().find(|(a, _)| archs.contains(a))
    };
    let Some(&(_, family)) = known else {
        let supported = HF_ARCHITECTURES
            .iter()
            .map(|(a, t)| format!("{a} ({t})"))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(err(format!(
            "architecture {archs:?} (model_type {:?}) is not supported; supported: {supported}",
            model_type.unwrap_or("")
        )));
    };

    let uint = |k: &str| -> Result<Option<usize>> {
        match field(k) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|x| usize::try_from(x).ok())
                .map(Some)
                .ok_or_else(|| err(format!("{k:?} is {v}, not a non-negative integer"))),
        }
    };
    let need = |k: &str| uint(k)?.ok_or_else(|| err(format!("{k:?} is missing")));
    let float = |k: &str, default: f64| -> Result<f64> {
        match field(k) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| err(format!("{k:?} is {v}, not a number"))),
        }
    };
    let flag = |k: &str, default: bool| -> Result<bool> {
        match field(k) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| err(format!("{k:?} is {v}, not true or false"))),
        }
    };

    if let Some(s) = field("rope_scaling") {
        return Err(err(format!(
            "rope_scaling {s} is not supported (only plain RoPE: rope_scaling must be null or absent)"
        )));
    }
    if let Some(act) = field("hidden_act") {
        if act.as_str() != Some("silu") {
            return Err(err(format!(
                "hidden_act {act} is not supported (the MLP is SwiGLU: \"silu\")"
            )));
        }
    }
    if flag("mlp_bias", false)? {
        return Err(err(
            "mlp_bias true is not supported (MLP biases)".to_string()
        ));
    }

    let dim = need("hidden_size")?;
    let n_heads = need("num_attention_heads")?;
    let n_kv_heads = uint("num_key_value_heads")?.unwrap_or(n_heads);
    if n_heads == 0 {
        return Err(err("num_attention_heads is 0".into()));
    }
    if let Some(hd) = uint("head_dim")? {
        if dim % n_heads != 0 || hd != dim / n_heads {
            return Err(err(format!(
                "head_dim {hd} differs from hidden_size / num_attention_heads = {dim} / {n_heads}; a head width of its own is not supported"
            )));
        }
    }
    let default_ctx = match family {
        "qwen2" => 32_768,
        "mistral" => 131_072,
        _ => 2048,
    };
    let mut max_seq_len = uint("max_position_embeddings")?.unwrap_or(default_ctx);
    // Sliding-window attention equals full attention up to the window, so
    // the context is capped there rather than refused.
    let sliding = match family {
        "mistral" => true,
        "qwen2" => flag("use_sliding_window", false)?,
        _ => false,
    };
    if sliding && let Some(w) = uint("sliding_window")? {
        max_seq_len = max_seq_len.min(w);
    }
    let config = LlamaConfig {
        dim,
        hidden_dim: need("intermediate_size")?,
        n_layers: need("num_hidden_layers")?,
        n_heads,
        n_kv_heads,
        vocab_size: need("vocab_size")?,
        max_seq_len,
        rms_eps: float("rms_norm_eps", 1e-6)? as f32,
        rope_theta: float("rope_theta", 10_000.0)? as f32,
        rope: RopeLayout::HalfSplit,
    };
    config.validate(&path.display().to_string())?;
    Ok(HfConfig {
        config,
        model_type: family.to_string(),
        tie_word_embeddings: flag("tie_word_embeddings", false)?,
    })
}

/// The weight files of the checkpoint in `dir`: `model.safetensors`, else
/// the shards named by `model.safetensors.index.json`'s `weight_map`.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join(HF_WEIGHTS);
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join(HF_INDEX);
    if !index.is_file() {
        return Err(model_err(
            dir,
            format!("neither {HF_WEIGHTS} nor {HF_INDEX} is in this directory"),
        ));
    }
    shards_of_index(&index)
}

/// The shard files a `model.safetensors.index.json` names, in name order.
pub fn shards_of_index(index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index)
        .map_err(|e| model_err(index, format!("cannot read the shard index: {e}")))?;
    let json: Value = serde_json::from_str(&text)
        .map_err(|e| model_err(index, format!("the shard index is not valid JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| model_err(index, "the shard index has no \"weight_map\" object"))?;
    let mut files = BTreeSet::new();
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| {
            model_err(
                index,
                format!("weight_map[{tensor:?}] is {file}, not a file name"),
            )
        })?;
        let plain = Path::new(file)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
        if !plain || file.is_empty() {
            return Err(model_err(
                index,
                format!("weight_map[{tensor:?}] names {file:?}, not a file inside the directory"),
            ));
        }
        files.insert(file.to_string());
    }
    if files.is_empty() {
        return Err(model_err(index, "the shard index's weight_map is empty"));
    }
    let dir = index.parent().unwrap_or(Path::new("."));
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

/// Loads the Hugging Face checkpoint in `dir`.
pub fn load_hf_dir(dir: &Path) -> Result<(LlamaConfig, LlamaWeights)> {
    let files = weight_files(dir)?;
    load_hf_files(dir, &files)
}

/// Loads the checkpoint whose `config.json` is in `dir` and whose weights
/// are `files` (one file or every shard).
pub fn load_hf_files(dir: &Path, files: &[PathBuf]) -> Result<(LlamaConfig, LlamaWeights)> {
    let config_path = dir.join(HF_CONFIG);
    if !config_path.is_file() {
        return Err(model_err(
            dir,
            format!("no {HF_CONFIG} here; a Hugging Face checkpoint needs its configuration"),
        ));
    }
    let hf = read_config(&config_path)?;
    let sources = files
        .iter()
        .map(membound_tensor::open)
        .collect::<membound_tensor::Result<Vec<_>>>()?;
    let refs: Vec<&dyn TensorSource> = sources.iter().map(|s| s.as_ref()).collect();
    let store = Store::new(dir.display().to_string(), &refs)?;
    let weights = LlamaWeights::load_from(&store, &HF, &hf.config, hf.classifier())?;
    Ok((hf.config, weights))
}

impl HfConfig {
    /// How the classifier is found: tied ignores any `lm_head.weight`.
    pub(crate) fn classifier(&self) -> Classifier {
        if self.tie_word_embeddings {
            Classifier::Tied
        } else {
            Classifier::IfPresent
        }
    }
}
