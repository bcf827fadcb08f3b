//! Hyper-parameters of a LLaMA-family decoder, from any supported file.

use membound_tensor::{Format, MetaValue, TensorSource};

use crate::{Error, Result};

/// How rotary embeddings pair the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum RopeLayout {
    /// Dimensions (2i, 2i+1) rotate together: llama2.c, and GGUF `llama`
    /// (llama.cpp's converter permutes Hugging Face's q/k rows into this).
    Interleaved,
    /// Dimensions (i, i + d/2) rotate together: Hugging Face checkpoints.
    HalfSplit,
}

/// The shape and constants of a LLaMA-family decoder.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LlamaConfig {
    /// Model width.
    pub dim: usize,
    /// SwiGLU hidden width.
    pub hidden_dim: usize,
    /// Transformer blocks.
    pub n_layers: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `n_heads`).
    pub n_kv_heads: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Longest context the model was trained for.
    pub max_seq_len: usize,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// RoPE base frequency.
    pub rope_theta: f32,
    /// RoPE pairing convention of the stored q/k weights.
    pub rope: RopeLayout,
}

impl LlamaConfig {
    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.dim / self.n_heads
    }

    /// Width of the key/value projections.
    pub fn kv_dim(&self) -> usize {
        self.head_dim() * self.n_kv_heads
    }

    /// Reads the configuration from a model file's metadata (GGUF `llama`
    /// or llama2.c; a Hugging Face checkpoint keeps its configuration in
    /// `config.json`, read by [`super::load_llama`]).
    pub fn from_source(src: &dyn TensorSource) -> Result<Self> {
        let path = src.path().display().to_string();
        Self::from_metadata(&path, src.format(), &src.metadata())
    }

    /// Reads the configuration from metadata in the convention of `format`
    /// (GGUF keys such as `llama.embedding_length`, or llama2.c's header
    /// fields `dim`, `n_layers`, …). `path` names the file in errors.
    pub fn from_metadata(path: &str, format: Format, meta: &[(String, MetaValue)]) -> Result<Self> {
        let path = path.to_string();
        let get = |k: &str| meta.iter().find(|(key, _)| key == k).map(|(_, v)| v);
        let missing = |k: &str| Error::Model {
            path: path.clone(),
            problem: format!("metadata key {k:?} is missing or not a number"),
        };
        let uint = |k: &str| {
            get(k)
                .and_then(MetaValue::as_u64)
                .and_then(|v| usize::try_from(v).ok())
                .ok_or_else(|| missing(k))
        };
        let cfg = match format {
            Format::Llama2c => LlamaConfig {
                dim: uint("dim")?,
                hidden_dim: uint("hidden_dim")?,
                n_layers: uint("n_layers")?,
                n_heads: uint("n_heads")?,
                n_kv_heads: uint("n_kv_heads")?,
                vocab_size: uint("vocab_size")?,
                max_seq_len: uint("seq_len")?,
                // llama2.c's run.c hard-codes both.
                rms_eps: 1e-5,
                rope_theta: 10_000.0,
                rope: RopeLayout::Interleaved,
            },
            Format::Gguf => {
                let arch = get("general.architecture")
                    .and_then(MetaValue::as_str)
                    .unwrap_or("");
                if arch != "llama" {
                    return Err(Error::Model {
                        path,
                        problem: format!(
                            "GGUF architecture {arch:?} is not supported; this engine loads GGUF \"llama\", llama2.c checkpoints, and Hugging Face LlamaForCausalLM, Qwen2ForCausalLM and MistralForCausalLM directories"
                        ),
                    });
                }
                let k = |s: &str| format!("llama.{s}");
                let n_heads = uint(&k("attention.head_count"))?;
                let vocab = get("tokenizer.ggml.tokens")
                    .and_then(MetaValue::as_array)
                    .map(<[_]>::len);
                let vocab = match uint(&k("vocab_size")) {
                    Ok(v) => v,
                    Err(e) => vocab.ok_or(e)?,
                };
                LlamaConfig {
                    dim: uint(&k("embedding_length"))?,
                    hidden_dim: uint(&k("feed_forward_length"))?,
                    n_layers: uint(&k("block_count"))?,
                    n_heads,
                    n_kv_heads: uint(&k("attention.head_count_kv")).unwrap_or(n_heads),
                    vocab_size: vocab,
                    max_seq_len: uint(&k("context_length"))?,
                    rms_eps: get(&k("attention.layer_norm_rms_epsilon"))
                        .and_then(MetaValue::as_f64)
                        .unwrap_or(1e-5) as f32,
                    rope_theta: get(&k("rope.freq_base"))
                        .and_then(MetaValue::as_f64)
                        .unwrap_or(10_000.0) as f32,
                    rope: RopeLayout::Interleaved,
                }
            }
            other => {
                return Err(Error::Model {
                    path,
                    problem: format!(
                        "a {other} file holds no LLaMA configuration; load the Hugging Face directory (config.json beside the weights) with model::load_llama"
                    ),
                });
            }
        };
        cfg.validate(&path)?;
        Ok(cfg)
    }

    /// Checks that the numbers describe a decoder this engine can run.
    pub(crate) fn validate(&self, path: &str) -> Result<()> {
        let bad = |problem: String| {
            Err(Error::Model {
                path: path.into(),
                problem,
            })
        };
        if self.dim == 0 || self.hidden_dim == 0 || self.vocab_size == 0 || self.max_seq_len == 0 {
            return bad(format!(
                "dim {}, hidden dim {}, vocabulary {} and context {} must all be positive",
                self.dim, self.hidden_dim, self.vocab_size, self.max_seq_len
            ));
        }
        let finite = self.rms_eps.is_finite() && self.rope_theta.is_finite();
        if !(finite && self.rms_eps >= 0.0 && self.rope_theta > 0.0) {
            return bad(format!(
                "RMSNorm epsilon {} and RoPE base {} must be finite and positive",
                self.rms_eps, self.rope_theta
            ));
        }
        if self.n_heads == 0 || self.dim % self.n_heads != 0 {
            return bad(format!(
                "dim {} is not a multiple of {} heads",
                self.dim, self.n_heads
            ));
        }
        if self.n_kv_heads == 0 || self.n_heads % self.n_kv_heads != 0 {
            return bad(format!(
                "{} heads are not a multiple of {} kv heads",
                self.n_heads, self.n_kv_heads
            ));
        }
        if self.head_dim() % 2 != 0 {
            return bad(format!(
                "head size {} is odd; RoPE needs pairs",
                self.head_dim()
            ));
        }
        Ok(())
    }
}
