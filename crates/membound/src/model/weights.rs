//! Weights of a LLaMA-family decoder as f32 matrices, from any file.

use membound_tensor::{Format, TensorSource};

use super::LlamaConfig;
use crate::{Error, Result};

/// One transformer block's weights, row-major `[out, in]`.
#[derive(Clone, Debug)]
pub struct LayerWeights {
    /// RMSNorm before attention, `[dim]`.
    pub attn_norm: Vec<f32>,
    /// `[dim, dim]`.
    pub wq: Vec<f32>,
    /// `[kv_dim, dim]`.
    pub wk: Vec<f32>,
    /// `[kv_dim, dim]`.
    pub wv: Vec<f32>,
    /// Query bias `[dim]` (Qwen2), `None` for LLaMA.
    pub bq: Option<Vec<f32>>,
    /// Key bias `[kv_dim]` (Qwen2).
    pub bk: Option<Vec<f32>>,
    /// Value bias `[kv_dim]` (Qwen2).
    pub bv: Option<Vec<f32>>,
    /// `[dim, dim]`.
    pub wo: Vec<f32>,
    /// RMSNorm before the MLP, `[dim]`.
    pub ffn_norm: Vec<f32>,
    /// SwiGLU gate, `[hidden, dim]`.
    pub w_gate: Vec<f32>,
    /// SwiGLU up, `[hidden, dim]`.
    pub w_up: Vec<f32>,
    /// Down projection, `[dim, hidden]`.
    pub w_down: Vec<f32>,
}

/// All weights of a LLaMA-family decoder, dequantized to f32.
#[derive(Clone, Debug)]
pub struct LlamaWeights {
    /// Token embedding, `[vocab, dim]`.
    pub embed: Vec<f32>,
    /// The blocks.
    pub layers: Vec<LayerWeights>,
    /// Final RMSNorm, `[dim]`.
    pub norm: Vec<f32>,
    /// Classifier `[vocab, dim]`, or `None` when tied to the embedding.
    pub classifier: Option<Vec<f32>>,
    /// Weights the file already held encoded (a `membound quantize` output),
    /// by role: `layers.{i}.{wq|wk|wv|wo|w_gate|w_up|w_down}` or
    /// `classifier`. The f32 fields hold their exact decoding; the GPU engine
    /// uploads these encodings as they are.
    pub encoded: std::collections::BTreeMap<String, membound_codec::Encoded>,
}

/// Tensor names in each format's convention.
struct Names {
    embed: &'static str,
    norm: &'static str,
    classifier: &'static str,
    layer: fn(usize, Part) -> String,
}

#[derive(Clone, Copy)]
enum Part {
    AttnNorm,
    Q,
    K,
    V,
    O,
    FfnNorm,
    Gate,
    Up,
    Down,
}

const HF: Names = Names {
    embed: "model.embed_tokens.weight",
    norm: "model.norm.weight",
    classifier: "lm_head.weight",
    layer: |i, p| {
        let s = match p {
            Part::AttnNorm => "input_layernorm",
            Part::Q => "self_attn.q_proj",
            Part::K => "self_attn.k_proj",
            Part::V => "self_attn.v_proj",
            Part::O => "self_attn.o_proj",
            Part::FfnNorm => "post_attention_layernorm",
            Part::Gate => "mlp.gate_proj",
            Part::Up => "mlp.up_proj",
            Part::Down => "mlp.down_proj",
        };
        format!("model.layers.{i}.{s}.weight")
    },
};

const GGUF: Names = Names {
    embed: "token_embd.weight",
    norm: "output_norm.weight",
    classifier: "output.weight",
    layer: |i, p| {
        let s = match p {
            Part::AttnNorm => "attn_norm",
            Part::Q => "attn_q",
            Part::K => "attn_k",
            Part::V => "attn_v",
            Part::O => "attn_output",
            Part::FfnNorm => "ffn_norm",
            Part::Gate => "ffn_gate",
            Part::Up => "ffn_up",
            Part::Down => "ffn_down",
        };
        format!("blk.{i}.{s}.weight")
    },
};

impl LlamaWeights {
    /// Loads and dequantizes every weight, checking each shape against `cfg`.
    pub fn load(src: &dyn TensorSource, cfg: &LlamaConfig) -> Result<Self> {
        let names = if src.format() == Format::Gguf {
            &GGUF
        } else {
            &HF
        };
        let path = src.path().display().to_string();
        let get = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            let t = src.tensor(name)?;
            if t.shape() != shape {
                return Err(Error::Model {
                    path: path.clone(),
                    problem: format!(
                        "tensor {name:?} has shape {:?}, the config implies {shape:?}",
                        t.shape()
                    ),
                });
            }
            let v = t.to_f32()?;
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(Error::Model {
                    path: path.clone(),
                    problem: format!("tensor {name:?} holds {} at index {i}", v[i]),
                });
            }
            Ok(v)
        };
        let (d, h, kv, v) = (cfg.dim, cfg.hidden_dim, cfg.kv_dim(), cfg.vocab_size);
        let layers = (0..cfg.n_layers)
            .map(|i| {
                let n = |p| (names.layer)(i, p);
                Ok(LayerWeights {
                    attn_norm: get(&n(Part::AttnNorm), &[d])?,
                    wq: get(&n(Part::Q), &[d, d])?,
                    wk: get(&n(Part::K), &[kv, d])?,
                    wv: get(&n(Part::V), &[kv, d])?,
                    bq: None,
                    bk: None,
                    bv: None,
                    wo: get(&n(Part::O), &[d, d])?,
                    ffn_norm: get(&n(Part::FfnNorm), &[d])?,
                    w_gate: get(&n(Part::Gate), &[h, d])?,
                    w_up: get(&n(Part::Up), &[h, d])?,
                    w_down: get(&n(Part::Down), &[d, h])?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let classifier = match src.tensor(names.classifier) {
            Ok(_) => Some(get(names.classifier, &[v, d])?),
            Err(_) => None,
        };
        Ok(Self {
            embed: get(names.embed, &[v, d])?,
            layers,
            norm: get(names.norm, &[d])?,
            classifier,
            encoded: Default::default(),
        })
    }
}
