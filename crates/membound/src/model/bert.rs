//! A BERT encoder in f32 on the CPU (all-MiniLM-L6-v2 and its kin):
//! post-LayerNorm blocks, erf GeLU, absolute position embeddings, and
//! sentence-transformers' mean pooling with L2 normalisation.

use std::path::{Path, PathBuf};

use membound_tensor::TensorSource;
use rayon::prelude::*;
use serde_json::Value;

use crate::{Error, Result};

/// The shape and constants of a BERT encoder.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct BertConfig {
    /// Model width.
    pub hidden: usize,
    /// Encoder blocks.
    pub n_layers: usize,
    /// Attention heads.
    pub n_heads: usize,
    /// Feed-forward width.
    pub intermediate: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Longest input, in tokens (rows of the position embedding).
    pub max_positions: usize,
    /// Rows of the token-type embedding.
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f32,
}

impl BertConfig {
    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden / self.n_heads
    }
}

/// One encoder block, weights row-major `[out, in]`.
#[derive(Clone, Debug)]
struct BertLayer {
    /// q, k and v stacked: `[3·hidden, hidden]`, bias `[3·hidden]`.
    w_qkv: Vec<f32>,
    b_qkv: Vec<f32>,
    w_o: Vec<f32>,
    b_o: Vec<f32>,
    ln1_g: Vec<f32>,
    ln1_b: Vec<f32>,
    w_up: Vec<f32>,
    b_up: Vec<f32>,
    w_down: Vec<f32>,
    b_down: Vec<f32>,
    ln2_g: Vec<f32>,
    ln2_b: Vec<f32>,
}

/// A BERT encoder with its weights in f32.
#[derive(Clone, Debug)]
pub struct Bert {
    cfg: BertConfig,
    word: Vec<f32>,
    position: Vec<f32>,
    token_type: Vec<f32>,
    emb_ln_g: Vec<f32>,
    emb_ln_b: Vec<f32>,
    layers: Vec<BertLayer>,
}

fn model_err(path: &Path, problem: impl Into<String>) -> Error {
    Error::Model {
        path: path.display().to_string(),
        problem: problem.into(),
    }
}

/// erf in f64: its Maclaurin series below 3 (|error| < 1e-13), the
/// continued fraction of erfc above.
fn erf(x: f64) -> f64 {
    let a = x.abs();
    let r = if a < 3.0 {
        let (mut term, mut sum) = (a, a);
        let x2 = a * a;
        for n in 1..200 {
            term *= -x2 / n as f64;
            let t = term / (2 * n + 1) as f64;
            sum += t;
            if t.abs() < 1e-17 * sum.abs() {
                break;
            }
        }
        sum * std::f64::consts::FRAC_2_SQRT_PI
    } else {
        let mut t = a;
        for k in (1..=60).rev() {
            t = a + (k as f64 / 2.0) / t;
        }
        1.0 - (-a * a).exp() / (std::f64::consts::PI.sqrt() * t)
    };
    r.copysign(x)
}

/// GeLU with the exact erf, as BERT's `hidden_act: "gelu"`.
fn gelu(x: f32) -> f32 {
    let x = x as f64;
    (0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))) as f32
}

fn layer_norm(x: &mut [f32], g: &[f32], b: &[f32], eps: f32) {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ((v, g), b) in x.iter_mut().zip(g).zip(b) {
        *v = (*v - mean) * inv * g + b;
    }
}

/// `y[t] = W·x[t] + b` for every token `t`; `x` is `[tokens, in]`, W is
/// `[out, in]`, the result `[tokens, out]`.
fn linear(w: &[f32], b: &[f32], x: &[f32], cols: usize) -> Vec<f32> {
    let rows = b.len();
    let tokens = x.len() / cols;
    let mut y = vec![0.0; tokens * rows];
    y.par_chunks_mut(rows.max(1))
        .zip(x.par_chunks(cols.max(1)))
        .for_each(|(out, xr)| {
            for ((o, wr), bias) in out.iter_mut().zip(w.chunks_exact(cols)).zip(b) {
                *o = wr.iter().zip(xr).map(|(a, b)| a * b).sum::<f32>() + bias;
            }
        });
    y
}

/// The tensor-name prefix of the checkpoint: none, or `bert.` when it was
/// saved from a task model.
fn prefix(src: &dyn TensorSource) -> &'static str {
    if src.tensor("bert.embeddings.word_embeddings.weight").is_ok() {
        "bert."
    } else {
        ""
    }
}

impl Bert {
    /// Loads a BERT encoder from a safetensors file (or the directory
    /// holding `model.safetensors`). The configuration comes from
    /// `config.json` beside it when present; otherwise it is inferred from
    /// the tensor shapes, with 12 heads when the width is 384 (MiniLM) and
    /// 64-wide heads otherwise, LayerNorm epsilon 1e-12 and erf GeLU.
    pub fn load(path: &Path) -> Result<Self> {
        let file: PathBuf = if path.is_dir() {
            path.join("model.safetensors")
        } else {
            path.to_path_buf()
        };
        let src = membound_tensor::open(&file)?;
        let src = src.as_ref();
        let pre = prefix(src);
        let dir = match file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let shape = |name: &str| -> Result<Vec<usize>> {
            Ok(src
                .tensor(&format!("{pre}{name}"))
                .map_err(|_| {
                    model_err(
                        &file,
                        format!("tensor {:?} is missing", format!("{pre}{name}")),
                    )
                })?
                .shape()
                .to_vec())
        };
        let word_shape = shape("embeddings.word_embeddings.weight")?;
        let [vocab, hidden] = word_shape[..] else {
            return Err(model_err(
                &file,
                format!("the word embedding has shape {word_shape:?}, not [vocab, hidden]"),
            ));
        };
        let config_path = dir.join("config.json");
        let cfg = if config_path.is_file() {
            read_config(&config_path)?
        } else {
            let mut n_layers = 0;
            while src
                .tensor(&format!(
                    "{pre}encoder.layer.{n_layers}.attention.self.query.weight"
                ))
                .is_ok()
            {
                n_layers += 1;
            }
            let first = |s: &[usize]| s.first().copied().unwrap_or(0);
            BertConfig {
                hidden,
                n_layers,
                n_heads: if hidden == 384 {
                    12
                } else {
                    (hidden / 64).max(1)
                },
                intermediate: first(&shape("encoder.layer.0.intermediate.dense.weight")?),
                vocab_size: vocab,
                max_positions: first(&shape("embeddings.position_embeddings.weight")?),
                type_vocab_size: first(&shape("embeddings.token_type_embeddings.weight")?),
                layer_norm_eps: 1e-12,
            }
        };
        let c = &cfg;
        if c.n_heads == 0 || c.hidden % c.n_heads != 0 || c.n_layers == 0 || c.type_vocab_size == 0
        {
            return Err(model_err(
                &file,
                format!(
                    "width {} over {} heads, {} layers, {} token types: not a BERT encoder this engine runs",
                    c.hidden, c.n_heads, c.n_layers, c.type_vocab_size
                ),
            ));
        }
        let get = |name: &str, want: &[usize]| -> Result<Vec<f32>> {
            let full = format!("{pre}{name}");
            let t = src
                .tensor(&full)
                .map_err(|_| model_err(&file, format!("tensor {full:?} is missing")))?;
            if t.shape() != want {
                return Err(model_err(
                    &file,
                    format!(
                        "tensor {full:?} has shape {:?}, the config implies {want:?}",
                        t.shape()
                    ),
                ));
            }
            let v = t.to_f32()?;
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(model_err(
                    &file,
                    format!("tensor {full:?} holds {} at index {i}", v[i]),
                ));
            }
            Ok(v)
        };
        let (h, f) = (c.hidden, c.intermediate);
        let layers = (0..c.n_layers)
            .map(|i| {
                let n = |s: &str| format!("encoder.layer.{i}.{s}");
                let mut w_qkv = Vec::with_capacity(3 * h * h);
                let mut b_qkv = Vec::with_capacity(3 * h);
                for p in ["query", "key", "value"] {
                    w_qkv.extend(get(&n(&format!("attention.self.{p}.weight")), &[h, h])?);
                    b_qkv.extend(get(&n(&format!("attention.self.{p}.bias")), &[h])?);
                }
                Ok(BertLayer {
                    w_qkv,
                    b_qkv,
                    w_o: get(&n("attention.output.dense.weight"), &[h, h])?,
                    b_o: get(&n("attention.output.dense.bias"), &[h])?,
                    ln1_g: get(&n("attention.output.LayerNorm.weight"), &[h])?,
                    ln1_b: get(&n("attention.output.LayerNorm.bias"), &[h])?,
                    w_up: get(&n("intermediate.dense.weight"), &[f, h])?,
                    b_up: get(&n("intermediate.dense.bias"), &[f])?,
                    w_down: get(&n("output.dense.weight"), &[h, f])?,
                    b_down: get(&n("output.dense.bias"), &[h])?,
                    ln2_g: get(&n("output.LayerNorm.weight"), &[h])?,
                    ln2_b: get(&n("output.LayerNorm.bias"), &[h])?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            word: get("embeddings.word_embeddings.weight", &[c.vocab_size, h])?,
            position: get(
                "embeddings.position_embeddings.weight",
                &[c.max_positions, h],
            )?,
            token_type: get(
                "embeddings.token_type_embeddings.weight",
                &[c.type_vocab_size, h],
            )?,
            emb_ln_g: get("embeddings.LayerNorm.weight", &[h])?,
            emb_ln_b: get("embeddings.LayerNorm.bias", &[h])?,
            layers,
            cfg,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &BertConfig {
        &self.cfg
    }

    /// Runs the encoder on `ids` (one sequence, every token attended, token
    /// type 0: pass the tokenizer's ids without padding) and reports each
    /// projection's input vectors, one call per token, to `observe(layer,
    /// site, vector)`: `attn_qkv_in` (the q/k/v input), `attn_out_in` (the
    /// attention output projection's input), `ffn_up_in` and `ffn_down_in`.
    /// Returns the last layer's hidden states, one vector per token.
    pub fn forward_with(
        &self,
        ids: &[u32],
        observe: &mut dyn FnMut(usize, &str, &[f32]),
    ) -> Result<Vec<Vec<f32>>> {
        let c = &self.cfg;
        let (h, hd) = (c.hidden, c.head_dim());
        if ids.is_empty() {
            return Err(Error::Request("BERT input is empty".into()));
        }
        if ids.len() > c.max_positions {
            return Err(Error::Request(format!(
                "{} tokens exceed BERT's {} positions",
                ids.len(),
                c.max_positions
            )));
        }
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(Error::Request(format!(
                "token id {bad} is outside the vocabulary of {}",
                c.vocab_size
            )));
        }
        let n = ids.len();
        let mut x = Vec::with_capacity(n * h);
        for (pos, &id) in ids.iter().enumerate() {
            let id = id as usize;
            let mut row: Vec<f32> = (0..h)
                .map(|j| self.word[id * h + j] + self.position[pos * h + j] + self.token_type[j])
                .collect();
            layer_norm(&mut row, &self.emb_ln_g, &self.emb_ln_b, c.layer_norm_eps);
            x.extend(row);
        }
        let scale = 1.0 / (hd as f32).sqrt();
        for (l, lw) in self.layers.iter().enumerate() {
            for row in x.chunks_exact(h) {
                observe(l, "attn_qkv_in", row);
            }
            let qkv = linear(&lw.w_qkv, &lw.b_qkv, &x, h);
            let mut ctx = vec![0.0f32; n * h];
            ctx.par_chunks_mut(h).enumerate().for_each(|(t, out)| {
                let q = &qkv[t * 3 * h..t * 3 * h + h];
                for head in 0..c.n_heads {
                    let o = head * hd;
                    let scores: Vec<f32> = (0..n)
                        .map(|s| {
                            let k = &qkv[s * 3 * h + h + o..s * 3 * h + h + o + hd];
                            q[o..o + hd].iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * scale
                        })
                        .collect();
                    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let e: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
                    let z: f32 = e.iter().sum();
                    for (s, p) in e.iter().enumerate() {
                        let v = &qkv[s * 3 * h + 2 * h + o..s * 3 * h + 2 * h + o + hd];
                        for (acc, vv) in out[o..o + hd].iter_mut().zip(v) {
                            *acc += p / z * vv;
                        }
                    }
                }
            });
            for row in ctx.chunks_exact(h) {
                observe(l, "attn_out_in", row);
            }
            let attn = linear(&lw.w_o, &lw.b_o, &ctx, h);
            for (row, a) in x.chunks_exact_mut(h).zip(attn.chunks_exact(h)) {
                row.iter_mut().zip(a).for_each(|(r, a)| *r += a);
                layer_norm(row, &lw.ln1_g, &lw.ln1_b, c.layer_norm_eps);
            }
            for row in x.chunks_exact(h) {
                observe(l, "ffn_up_in", row);
            }
            let mut up = linear(&lw.w_up, &lw.b_up, &x, h);
            up.par_iter_mut().for_each(|v| *v = gelu(*v));
            for row in up.chunks_exact(c.intermediate) {
                observe(l, "ffn_down_in", row);
            }
            let down = linear(&lw.w_down, &lw.b_down, &up, c.intermediate);
            for (row, d) in x.chunks_exact_mut(h).zip(down.chunks_exact(h)) {
                row.iter_mut().zip(d).for_each(|(r, d)| *r += d);
                layer_norm(row, &lw.ln2_g, &lw.ln2_b, c.layer_norm_eps);
            }
        }
        Ok(x.chunks_exact(h).map(<[f32]>::to_vec).collect())
    }

    /// The last layer's hidden states of `ids`, one vector per token (see
    /// [`Bert::forward_with`] for what `ids` must be).
    pub fn hidden_states(&self, ids: &[u32]) -> Result<Vec<Vec<f32>>> {
        self.forward_with(ids, &mut |_, _, _| {})
    }

    /// The sentence embedding of `ids`, as sentence-transformers computes it:
    /// the mean of the last hidden states over every token (special tokens
    /// included), scaled to unit length.
    pub fn embed(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let states = self.hidden_states(ids)?;
        let mut mean = vec![0f64; self.cfg.hidden];
        for s in &states {
            mean.iter_mut().zip(s).for_each(|(m, v)| *m += *v as f64);
        }
        let n = states.len() as f64;
        mean.iter_mut().for_each(|m| *m /= n);
        let norm = mean.iter().map(|m| m * m).sum::<f64>().sqrt().max(1e-12);
        Ok(mean.iter().map(|m| (m / norm) as f32).collect())
    }
}

/// Reads a BERT `config.json`.
fn read_config(path: &Path) -> Result<BertConfig> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| model_err(path, format!("cannot read the configuration: {e}")))?;
    let json: Value = serde_json::from_str(&text)
        .map_err(|e| model_err(path, format!("config.json is not valid JSON: {e}")))?;
    let field = |k: &str| json.get(k).filter(|v| !v.is_null());
    let err = |p: String| model_err(path, p);
    if let Some(t) = field("model_type").and_then(Value::as_str) {
        if t != "bert" {
            return Err(err(format!(
                "model_type {t:?} is not supported here (expected \"bert\")"
            )));
        }
    }
    if let Some(act) = field("hidden_act") {
        if act.as_str() != Some("gelu") {
            return Err(err(format!(
                "hidden_act {act} is not supported (only \"gelu\", with erf)"
            )));
        }
    }
    if let Some(p) = field("position_embedding_type") {
        if p.as_str() != Some("absolute") {
            return Err(err(format!(
                "position_embedding_type {p} is not supported (only \"absolute\")"
            )));
        }
    }
    let uint = |k: &str, default: Option<usize>| -> Result<usize> {
        match field(k) {
            None => default.ok_or_else(|| err(format!("{k:?} is missing"))),
            Some(v) => v
                .as_u64()
                .and_then(|x| usize::try_from(x).ok())
                .ok_or_else(|| err(format!("{k:?} is {v}, not a non-negative integer"))),
        }
    };
    let eps = match field("layer_norm_eps") {
        None => 1e-12,
        Some(v) => v
            .as_f64()
            .ok_or_else(|| err(format!("\"layer_norm_eps\" is {v}, not a number")))?,
    };
    Ok(BertConfig {
        hidden: uint("hidden_size", None)?,
        n_layers: uint("num_hidden_layers", None)?,
        n_heads: uint("num_attention_heads", None)?,
        intermediate: uint("intermediate_size", None)?,
        vocab_size: uint("vocab_size", None)?,
        max_positions: uint("max_position_embeddings", Some(512))?,
        type_vocab_size: uint("type_vocab_size", Some(2))?,
        layer_norm_eps: eps as f32,
    })
}
