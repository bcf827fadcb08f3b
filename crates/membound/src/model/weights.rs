//! Weights of a LLaMA-family decoder as f32 matrices, from any file.

use std::collections::{BTreeMap, HashMap};

use membound_codec::Encoded;
use membound_tensor::{Format, TensorSource, TensorView};

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
    /// `classifier` (when the classifier is tied, the embedding's encoding,
    /// since that is the matrix the classifier multiplies by). The f32
    /// fields hold their exact decoding; the GPU engine uploads these
    /// encodings as they are.
    pub encoded: BTreeMap<String, Encoded>,
}

/// Tensor names in each format's convention.
pub(crate) struct Names {
    embed: &'static str,
    norm: &'static str,
    classifier: &'static str,
    /// The stem of a block tensor: its name without `.weight` / `.bias`.
    layer: fn(usize, Part) -> String,
}

#[derive(Clone, Copy)]
pub(crate) enum Part {
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

/// Hugging Face names (also what the llama2.c reader calls its tensors).
pub(crate) const HF: Names = Names {
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
        format!("model.layers.{i}.{s}")
    },
};

/// GGUF (llama.cpp) names.
pub(crate) const GGUF: Names = Names {
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
        format!("blk.{i}.{s}")
    },
};

impl Names {
    /// The naming convention of files of `format`.
    pub(crate) fn of(format: Format) -> &'static Names {
        if format == Format::Gguf { &GGUF } else { &HF }
    }
}

/// Where a loader finds tensors: one file, several shards, or a quantized
/// file whose weights are encoded.
pub(crate) struct Store<'a> {
    /// Names the model in errors.
    path: String,
    views: HashMap<&'a str, TensorView<'a>>,
    encoded: HashMap<String, Encoded>,
}

impl<'a> Store<'a> {
    /// The tensors of `sources` (shards of one model: a name held by two of
    /// them is an error), described as `path` in errors.
    pub(crate) fn new(path: String, sources: &[&'a dyn TensorSource]) -> Result<Self> {
        let mut views = HashMap::new();
        for src in sources {
            for v in src.tensors() {
                if views.insert(v.name(), v).is_some() {
                    return Err(Error::Model {
                        path,
                        problem: format!(
                            "tensor {:?} appears twice (again in {})",
                            v.name(),
                            src.path().display()
                        ),
                    });
                }
            }
        }
        Ok(Self {
            path,
            views,
            encoded: HashMap::new(),
        })
    }

    /// Adds pre-encoded weights, by tensor name; they take precedence over
    /// stored tensors of the same name (an affine weight keeps its name for
    /// the packed codes).
    pub(crate) fn with_encoded(
        mut self,
        encoded: impl IntoIterator<Item = (String, Encoded)>,
    ) -> Self {
        self.encoded.extend(encoded);
        self
    }

    fn err(&self, problem: String) -> Error {
        Error::Model {
            path: self.path.clone(),
            problem,
        }
    }

    fn contains(&self, name: &str) -> bool {
        self.encoded.contains_key(name) || self.views.contains_key(name)
    }

    /// The f32 values of `name`, which must have `shape` and be finite,
    /// and its encoding if the file held it encoded.
    fn read(&self, name: &str, shape: &[usize]) -> Result<(Vec<f32>, Option<&Encoded>)> {
        let (values, enc) = if let Some(e) = self.encoded.get(name) {
            if [e.rows, e.cols] != shape {
                return Err(self.err(format!(
                    "tensor {name:?} has shape {:?}, the config implies {shape:?}",
                    [e.rows, e.cols]
                )));
            }
            let v = membound_codec::decode(e)
                .map_err(|err| self.err(format!("tensor {name:?} does not decode: {err}")))?;
            (v, Some(e))
        } else {
            let t = self
                .views
                .get(name)
                .ok_or_else(|| self.err(format!("tensor {name:?} is missing")))?;
            if t.shape() != shape {
                return Err(self.err(format!(
                    "tensor {name:?} has shape {:?}, the config implies {shape:?}",
                    t.shape()
                )));
            }
            (t.to_f32()?, None)
        };
        if let Some(i) = values.iter().position(|x| !x.is_finite()) {
            return Err(self.err(format!("tensor {name:?} holds {} at index {i}", values[i])));
        }
        Ok((values, enc))
    }
}

/// How the classifier is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Classifier {
    /// The classifier tensor if present, else the embedding.
    IfPresent,
    /// Always the embedding (Hugging Face `tie_word_embeddings: true`).
    Tied,
}

impl LlamaWeights {
    /// Loads and dequantizes every weight, checking each shape against `cfg`.
    /// Tensor names follow the file's format (GGUF, or Hugging Face names as
    /// the llama2.c reader and Hugging Face checkpoints use); q/k/v biases
    /// are loaded when the file has them.
    pub fn load(src: &dyn TensorSource, cfg: &LlamaConfig) -> Result<Self> {
        let store = Store::new(src.path().display().to_string(), &[src])?;
        Self::load_from(&store, Names::of(src.format()), cfg, Classifier::IfPresent)
    }

    /// Loads every weight from `store`, decoding encoded ones and keeping
    /// their encodings in [`LlamaWeights::encoded`].
    pub(crate) fn load_from(
        store: &Store<'_>,
        names: &Names,
        cfg: &LlamaConfig,
        classifier: Classifier,
    ) -> Result<Self> {
        let mut encoded = BTreeMap::new();
        let mut get = |name: &str, shape: &[usize], role: Option<String>| -> Result<Vec<f32>> {
            let (v, e) = store.read(name, shape)?;
            if let (Some(e), Some(role)) = (e, role) {
                encoded.insert(role, e.clone());
            }
            Ok(v)
        };
        let (d, h, kv, v) = (cfg.dim, cfg.hidden_dim, cfg.kv_dim(), cfg.vocab_size);
        let mut layers = Vec::with_capacity(cfg.n_layers.min(1024));
        for i in 0..cfg.n_layers {
            let n = |p| format!("{}.weight", (names.layer)(i, p));
            let role = |r: &str| Some(format!("layers.{i}.{r}"));
            let mut bias = |p, len: usize| -> Result<Option<Vec<f32>>> {
                let name = format!("{}.bias", (names.layer)(i, p));
                if store.contains(&name) {
                    Ok(Some(get(&name, &[len], None)?))
                } else {
                    Ok(None)
                }
            };
            let (bq, bk, bv) = (bias(Part::Q, d)?, bias(Part::K, kv)?, bias(Part::V, kv)?);
            layers.push(LayerWeights {
                attn_norm: get(&n(Part::AttnNorm), &[d], None)?,
                wq: get(&n(Part::Q), &[d, d], role("wq"))?,
                wk: get(&n(Part::K), &[kv, d], role("wk"))?,
                wv: get(&n(Part::V), &[kv, d], role("wv"))?,
                bq,
                bk,
                bv,
                wo: get(&n(Part::O), &[d, d], role("wo"))?,
                ffn_norm: get(&n(Part::FfnNorm), &[d], None)?,
                w_gate: get(&n(Part::Gate), &[h, d], role("w_gate"))?,
                w_up: get(&n(Part::Up), &[h, d], role("w_up"))?,
                w_down: get(&n(Part::Down), &[d, h], role("w_down"))?,
            });
        }
        let separate = classifier == Classifier::IfPresent && store.contains(names.classifier);
        let classifier = if separate {
            Some(get(names.classifier, &[v, d], Some("classifier".into()))?)
        } else {
            None
        };
        let role = (!separate).then(|| "classifier".to_string());
        let embed = get(names.embed, &[v, d], role)?;
        let norm = get(names.norm, &[d], None)?;
        Ok(Self {
            embed,
            layers,
            norm,
            classifier,
            encoded,
        })
    }
}
