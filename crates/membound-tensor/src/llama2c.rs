//! Karpathy's llama2.c checkpoints (version-0 header) and tokenizer files.
//!
//! A checkpoint is seven little-endian `i32` (dim, hidden_dim, n_layers,
//! n_heads, n_kv_heads, vocab_size, seq_len) followed by f32 weights in a
//! fixed order. A negative `vocab_size` means the classifier is stored
//! separately at the end; otherwise it is shared with the token embedding.
//! Tensors are exposed under Hugging Face LLaMA names. Rows of `q_proj` and
//! `k_proj` keep llama2.c's order, which pairs rotary dimensions
//! *interleaved* (2i, 2i+1), not Hugging Face's half-split order; the
//! metadata key `rope.layout` records this.

use std::path::{Path, PathBuf};

use crate::cursor::Cursor;
use crate::storage::Storage;
use crate::view::TensorEntry;
use crate::{DType, Error, Format, MetaValue, Result, TensorSource, TensorView};

/// The hyper-parameters of a llama2.c checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Llama2cConfig {
    /// Model width.
    pub dim: usize,
    /// FFN width.
    pub hidden_dim: usize,
    /// Transformer blocks.
    pub n_layers: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Maximum sequence length (the size of the stored RoPE tables).
    pub seq_len: usize,
    /// Whether the classifier is the token embedding.
    pub shared_classifier: bool,
}

const HEADER_BYTES: usize = 7 * 4;
/// No real checkpoint comes near this; it keeps size arithmetic far from overflow.
const MAX_FIELD: i32 = 1 << 24;

impl Llama2cConfig {
    /// Parses and checks the seven-int32 header.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self> {
        let mut c = Cursor::new(path, bytes);
        let names = [
            "dim",
            "hidden_dim",
            "n_layers",
            "n_heads",
            "n_kv_heads",
            "vocab_size",
            "seq_len",
        ];
        let mut v = [0i32; 7];
        for (slot, name) in v.iter_mut().zip(names) {
            *slot = c.i32(|| format!("header field {name}"))?;
        }
        let shared_classifier = v[5] > 0;
        v[5] = v[5].checked_abs().unwrap_or(i32::MAX);
        for (val, name) in v.iter().zip(names) {
            if *val <= 0 || *val > MAX_FIELD {
                return Err(Error::malformed(
                    path,
                    format!("header field {name}"),
                    format!("{val} is outside 1..={MAX_FIELD}"),
                ));
            }
        }
        let [
            dim,
            hidden_dim,
            n_layers,
            n_heads,
            n_kv_heads,
            vocab_size,
            seq_len,
        ] = v.map(|x| x as usize);
        if dim % n_heads != 0 {
            return Err(Error::malformed(
                path,
                "header",
                format!("dim {dim} is not a multiple of n_heads {n_heads}"),
            ));
        }
        if n_kv_heads > n_heads || n_heads % n_kv_heads != 0 {
            return Err(Error::malformed(
                path,
                "header",
                format!("n_heads {n_heads} is not a multiple of n_kv_heads {n_kv_heads}"),
            ));
        }
        if (dim / n_heads) % 2 != 0 {
            return Err(Error::malformed(
                path,
                "header",
                format!("head size {} is odd; RoPE needs pairs", dim / n_heads),
            ));
        }
        Ok(Self {
            dim,
            hidden_dim,
            n_layers,
            n_heads,
            n_kv_heads,
            vocab_size,
            seq_len,
            shared_classifier,
        })
    }

    /// The exact size in bytes of a checkpoint with this header, or `None`
    /// if it overflows.
    pub fn file_size(&self) -> Option<u64> {
        let [d, h, l, v, kv] = [
            self.dim,
            self.hidden_dim,
            self.n_layers,
            self.vocab_size,
            self.kv_dim(),
        ]
        .map(|x| x as u64);
        let rope = (self.seq_len as u64).checked_mul(self.head_size() as u64)?; // real + imag halves
        let per_layer = d.checked_mul(2 + 2 * d + 2 * kv + 3 * h)?; // 2 norms, q, o, k, v, w1-w3
        let classifier = if self.shared_classifier {
            0
        } else {
            v.checked_mul(d)?
        };
        let floats = v
            .checked_mul(d)?
            .checked_add(l.checked_mul(per_layer)?)?
            .checked_add(d)?
            .checked_add(rope)?
            .checked_add(classifier)?;
        floats.checked_mul(4)?.checked_add(HEADER_BYTES as u64)
    }

    /// Size of one attention head.
    pub fn head_size(&self) -> usize {
        self.dim / self.n_heads
    }

    /// Width of the key/value projections.
    pub fn kv_dim(&self) -> usize {
        self.head_size() * self.n_kv_heads
    }
}

/// A parsed llama2.c checkpoint.
#[derive(Debug)]
pub struct Llama2cFile {
    path: PathBuf,
    storage: Storage,
    config: Llama2cConfig,
    tensors: Vec<TensorEntry>,
}

impl Llama2cFile {
    /// Maps and parses `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::from_storage(path, Storage::map(path)?)
    }

    /// Parses a checkpoint held in memory; `path` only names it in errors.
    pub fn from_bytes(path: impl AsRef<Path>, bytes: Vec<u8>) -> Result<Self> {
        Self::from_storage(path.as_ref(), Storage::Owned(bytes))
    }

    pub(crate) fn from_storage(path: &Path, storage: Storage) -> Result<Self> {
        let (config, tensors) = parse(path, storage.bytes())?;
        Ok(Self {
            path: path.to_path_buf(),
            storage,
            config,
            tensors,
        })
    }

    /// The header.
    pub fn config(&self) -> &Llama2cConfig {
        &self.config
    }
}

impl TensorSource for Llama2cFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn format(&self) -> Format {
        Format::Llama2c
    }

    fn tensors(&self) -> Vec<TensorView<'_>> {
        let bytes = self.storage.bytes();
        self.tensors.iter().map(|t| t.view(bytes)).collect()
    }

    fn metadata(&self) -> Vec<(String, MetaValue)> {
        let c = &self.config;
        let n = |v: usize| MetaValue::U64(v as u64);
        vec![
            (
                "general.architecture".into(),
                MetaValue::String("llama".into()),
            ),
            ("dim".into(), n(c.dim)),
            ("hidden_dim".into(), n(c.hidden_dim)),
            ("n_layers".into(), n(c.n_layers)),
            ("n_heads".into(), n(c.n_heads)),
            ("n_kv_heads".into(), n(c.n_kv_heads)),
            ("vocab_size".into(), n(c.vocab_size)),
            ("seq_len".into(), n(c.seq_len)),
            (
                "classifier".into(),
                MetaValue::String(
                    if c.shared_classifier {
                        "shared"
                    } else {
                        "separate"
                    }
                    .into(),
                ),
            ),
            (
                "rope.layout".into(),
                MetaValue::String("interleaved".into()),
            ),
        ]
    }
}

fn parse(path: &Path, bytes: &[u8]) -> Result<(Llama2cConfig, Vec<TensorEntry>)> {
    let cfg = Llama2cConfig::parse(path, bytes)?;
    let (d, h, l, v) = (cfg.dim, cfg.hidden_dim, cfg.n_layers, cfg.vocab_size);
    let kv = cfg.kv_dim();
    let rope = cfg.seq_len * cfg.head_size() / 2;

    // Runs of tensors in file order: (name, or a per-layer suffix; copies; shape).
    // There are a dozen runs whatever the header claims, so nothing here
    // grows with n_layers until the sizes are known to match the file.
    let mut runs: Vec<(&str, bool, Vec<usize>)> =
        vec![("model.embed_tokens.weight", false, vec![v, d])];
    for (suffix, shape) in [
        ("input_layernorm.weight", vec![d]),
        ("self_attn.q_proj.weight", vec![d, d]),
        ("self_attn.k_proj.weight", vec![kv, d]),
        ("self_attn.v_proj.weight", vec![kv, d]),
        ("self_attn.o_proj.weight", vec![d, d]),
        ("post_attention_layernorm.weight", vec![d]),
        ("mlp.gate_proj.weight", vec![h, d]),
        ("mlp.down_proj.weight", vec![d, h]),
        ("mlp.up_proj.weight", vec![h, d]),
    ] {
        runs.push((suffix, true, shape));
    }
    runs.push(("model.norm.weight", false, vec![d]));
    // Legacy RoPE tables (freq_cis_real, freq_cis_imag): skipped; engines recompute them.
    runs.push(("", false, vec![2 * rope]));
    if !cfg.shared_classifier {
        runs.push(("lm_head.weight", false, vec![v, d]));
    }

    let name_of = |run: &str, per_layer: bool, layer: usize| {
        if run.is_empty() {
            "RoPE tables".to_string()
        } else if per_layer {
            format!("tensor \"model.layers.{layer}.{run}\"")
        } else {
            format!("tensor {run:?}")
        }
    };
    // First pass: sizes only, with checked arithmetic; name the first tensor
    // the file cuts short.
    let len = bytes.len() as u64;
    let mut offset = HEADER_BYTES as u64;
    for (run, per_layer, shape) in &runs {
        let one = shape
            .iter()
            .try_fold(4u64, |acc, &x| acc.checked_mul(x as u64));
        let copies = if *per_layer { l as u64 } else { 1 };
        let Some((one, end)) =
            one.and_then(|one| Some((one, offset.checked_add(one.checked_mul(copies)?)?)))
        else {
            return Err(Error::malformed(path, "header", "tensor sizes overflow"));
        };
        if end > len {
            let layer = (len - offset).checked_div(one).unwrap_or(0) as usize;
            let start = offset + layer as u64 * one;
            return Err(Error::Truncated {
                path: path.into(),
                what: name_of(run, *per_layer, layer),
                start,
                end: start + one,
                len,
            });
        }
        offset = end;
    }
    if offset != len {
        return Err(Error::malformed(
            path,
            "file size",
            format!(
                "the header implies {offset} bytes but the file has {len}; not a llama2.c version-0 checkpoint for this header"
            ),
        ));
    }

    // Second pass: the entries, now bounded by the file's real size.
    let mut offset = HEADER_BYTES;
    let mut tensors = Vec::new();
    for (run, per_layer, shape) in runs {
        let one = 4 * shape.iter().product::<usize>();
        for layer in 0..if per_layer { l } else { 1 } {
            if !run.is_empty() {
                let name = if per_layer {
                    format!("model.layers.{layer}.{run}")
                } else {
                    run.to_string()
                };
                tensors.push(TensorEntry {
                    name,
                    dtype: DType::F32,
                    shape: shape.clone(),
                    range: offset..offset + one,
                });
            }
            offset += one;
        }
    }
    Ok((cfg, tensors))
}

/// A llama2.c tokenizer file: `i32` max token length, then per token an
/// `f32` score, an `i32` byte length and the bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Llama2cTokenizer {
    /// The longest token in bytes, as declared by the file.
    pub max_token_length: usize,
    /// Each token's bytes and merge score, by id.
    pub tokens: Vec<(Vec<u8>, f32)>,
}

impl Llama2cTokenizer {
    /// Reads `path`. With `vocab_size`, exactly that many tokens are read
    /// and the file must end there; without, tokens are read to the end.
    pub fn open(path: impl AsRef<Path>, vocab_size: Option<usize>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::parse(path, &bytes, vocab_size)
    }

    /// Parses tokenizer bytes; `path` only names the file in errors.
    pub fn parse(path: &Path, bytes: &[u8], vocab_size: Option<usize>) -> Result<Self> {
        let mut c = Cursor::new(path, bytes);
        let max_len = c.i32(|| "max_token_length".into())?;
        let max_token_length = usize::try_from(max_len).map_err(|_| {
            Error::malformed(path, "max_token_length", format!("{max_len} is negative"))
        })?;
        // Each token needs at least 8 bytes: never reserve more than the file can hold.
        let room = c.remaining() / 8;
        if let Some(n) = vocab_size {
            if n > room {
                return Err(Error::Truncated {
                    path: path.into(),
                    what: format!("{n} tokens"),
                    start: 4,
                    end: (n as u64).saturating_mul(8).saturating_add(4),
                    len: bytes.len() as u64,
                });
            }
        }
        let mut tokens = Vec::with_capacity(vocab_size.unwrap_or(room).min(room));
        while vocab_size.map_or(c.remaining() > 0, |n| tokens.len() < n) {
            let id = tokens.len();
            let score = c.f32(|| format!("score of token {id}"))?;
            let len = c.i32(|| format!("length of token {id}"))?;
            let len = usize::try_from(len).map_err(|_| {
                Error::malformed(
                    path,
                    format!("token {id}"),
                    format!("negative length {len}"),
                )
            })?;
            if len > max_token_length {
                return Err(Error::malformed(
                    path,
                    format!("token {id}"),
                    format!("length {len} exceeds max_token_length {max_token_length}"),
                ));
            }
            let text = c.take(len, || format!("bytes of token {id}"))?;
            tokens.push((text.to_vec(), score));
        }
        if c.remaining() != 0 {
            return Err(Error::malformed(
                path,
                "file size",
                format!(
                    "{} bytes remain after {} tokens",
                    c.remaining(),
                    tokens.len()
                ),
            ));
        }
        Ok(Self {
            max_token_length,
            tokens,
        })
    }
}

/// Parses `bytes` as a checkpoint and as a tokenizer, for the fuzzer.
#[doc(hidden)]
pub fn fuzz_parse(bytes: &[u8]) {
    let _ = parse(Path::new("<fuzz>"), bytes);
    let _ = Llama2cTokenizer::parse(Path::new("<fuzz>"), bytes, None);
}
