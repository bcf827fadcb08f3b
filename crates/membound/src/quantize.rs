//! `membound quantize`: every 2-D weight of a model in one codec, written as
//! safetensors that decode back exactly.
//!
//! Layout of the file:
//!
//! - **affine**: MLX's naming. A weight `<stem>.weight` becomes the packed
//!   `u32` codes under its own name, with `<stem>.scales` and
//!   `<stem>.biases` beside it (a name without `.weight` keeps its name and
//!   gets `<name>.scales`, `<name>.biases`).
//! - **every other codec**: one tensor per encoded part, `<name>.<part>`
//!   (e.g. `….weight.codes`, `….weight.codebook`, `….weight.us`).
//! - Every other tensor is copied unchanged, except that GGUF block types
//!   are dequantized to f32 first (safetensors has no such types).
//! - `__metadata__`: [`META_FORMAT`] = [`FORMAT`], [`META_CODEC`] = the
//!   codec's canonical spec, [`META_TENSORS`] = a JSON object mapping each
//!   encoded weight to `{"spec", "rows", "cols", "parts": [{"part",
//!   "tensor"}, …]}` (parts in encoding order), and the source file's own
//!   metadata (non-strings as JSON) with `membound.source_format` and
//!   `membound.source_file`.
//!
//! [`read_encoded`] rebuilds each [`Encoded`] from those tensors and the
//! metadata; decoding it gives exactly what the codec's own
//! `decode(encode(w))` gives.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use membound_codec::{Codec, Encoded, Matrix, Part, PartDType, codec_from_spec, metrics};
use membound_tensor::{
    DType, MetaValue, OwnedTensor, SafetensorsFile, TensorSource, TensorView, write_safetensors,
};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Metadata key naming the file layout.
pub const META_FORMAT: &str = "membound.format";
/// The layout this module writes.
pub const FORMAT: &str = "membound.quantized/1";
/// Metadata key holding the codec spec.
pub const META_CODEC: &str = "membound.codec";
/// Metadata key holding the per-tensor JSON map.
pub const META_TENSORS: &str = "membound.tensors";

/// Where one encoded part is stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartEntry {
    /// The codec's part name (`weight`, `scales`, `codes`, …).
    pub part: String,
    /// The tensor holding it in the file.
    pub tensor: String,
}

/// How one encoded weight is stored: the entry of [`META_TENSORS`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncodedEntry {
    /// Canonical codec spec.
    pub spec: String,
    /// Rows of the original matrix.
    pub rows: usize,
    /// Columns of the original matrix.
    pub cols: usize,
    /// The parts, in encoding order.
    pub parts: Vec<PartEntry>,
}

/// What happened to one tensor of the source.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TensorReport {
    /// Name in the source.
    pub name: String,
    /// Source dtype.
    pub dtype: String,
    /// Shape in the source.
    pub shape: Vec<usize>,
    /// `encoded`, `copied` or `dequantized` (a GGUF block tensor stored as f32).
    pub action: String,
    /// Bits per weight as stored (encoded tensors only).
    pub bits_per_weight: Option<f64>,
    /// SQNR of the decoded weight against the source, dB (encoded only;
    /// `null` in JSON when exact).
    pub sqnr_db: Option<f64>,
    /// Names written for it.
    pub stored_as: Vec<String>,
}

/// A quantized model in memory, ready to write.
#[derive(Clone, Debug)]
pub struct Quantized {
    /// The codec's canonical spec.
    pub codec: String,
    /// Tensors to write, in source order.
    pub tensors: Vec<OwnedTensor>,
    /// `__metadata__` entries.
    pub metadata: Vec<(String, String)>,
    /// One report per source tensor.
    pub report: Vec<TensorReport>,
}

impl Quantized {
    /// Bytes of tensor data to be written.
    pub fn bytes(&self) -> usize {
        self.tensors.iter().map(|t| t.data.len()).sum()
    }
}

fn dtype_of(p: PartDType) -> DType {
    match p {
        PartDType::U8 => DType::U8,
        PartDType::U16 => DType::U16,
        PartDType::U32 => DType::U32,
        PartDType::F16 => DType::F16,
        PartDType::BF16 => DType::BF16,
        PartDType::F32 => DType::F32,
    }
}

fn part_dtype_of(d: DType) -> Option<PartDType> {
    Some(match d {
        DType::U8 => PartDType::U8,
        DType::U16 => PartDType::U16,
        DType::U32 => PartDType::U32,
        DType::F16 => PartDType::F16,
        DType::BF16 => PartDType::BF16,
        DType::F32 => PartDType::F32,
        _ => return None,
    })
}

/// Whether `t` is a weight this module encodes: 2-D and floating point (or
/// ggml blocks).
pub fn is_encodable(t: &TensorView<'_>) -> bool {
    t.shape().len() == 2
        && matches!(
            t.dtype(),
            DType::F16 | DType::BF16 | DType::F32 | DType::F64 | DType::Ggml(_)
        )
}

/// The stored name of each part of `name` under the codec named `codec`.
fn part_names(codec: &str, name: &str, parts: &[Part]) -> Vec<String> {
    let affine = codec == "affine";
    let stem = name.strip_suffix(".weight").unwrap_or(name);
    parts
        .iter()
        .map(|p| match (affine, p.name.as_str()) {
            (true, "weight") => name.to_string(),
            (true, other) => format!("{stem}.{other}"),
            (false, other) => format!("{name}.{other}"),
        })
        .collect()
}

fn model_err(path: &Path, problem: String) -> Error {
    Error::Model {
        path: path.display().to_string(),
        problem,
    }
}

fn meta_string(v: &MetaValue) -> String {
    match v {
        MetaValue::String(s) => s.clone(),
        other => serde_json::to_string(other).unwrap_or_default(),
    }
}

/// Encodes every 2-D weight of `source` with the codec `spec` and copies the
/// rest. `progress(name, done, total)` is called after each tensor.
pub fn quantize(
    source: &dyn TensorSource,
    spec: &str,
    progress: &(dyn Fn(&str, usize, usize) + Sync),
) -> Result<Quantized> {
    let path = source.path().to_path_buf();
    let codec: Box<dyn Codec> =
        codec_from_spec(spec).map_err(|e| Error::Request(format!("codec {spec:?}: {e}")))?;
    let family = codec
        .spec()
        .split(':')
        .next()
        .unwrap_or_default()
        .to_string();
    let views = source.tensors();
    let done = AtomicUsize::new(0);
    let total = views.len();
    let per: Vec<One> = views
        .par_iter()
        .with_max_len(1)
        .map(|t| {
            let r = quantize_one(&path, codec.as_ref(), &family, t);
            progress(t.name(), done.fetch_add(1, Ordering::Relaxed) + 1, total);
            r
        })
        .collect::<Result<_>>()?;

    let mut tensors = Vec::new();
    let mut entries = serde_json::Map::new();
    let mut report = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (ts, entry, rep) in per {
        for t in ts {
            if !seen.insert(t.name.clone()) {
                return Err(model_err(
                    &path,
                    format!(
                        "two tensors would be stored as {:?}; the codec's part names collide with a tensor of the model",
                        t.name
                    ),
                ));
            }
            tensors.push(t);
        }
        if let Some((name, e)) = entry {
            entries.insert(
                name,
                serde_json::to_value(e).map_err(|e| Error::Request(e.to_string()))?,
            );
        }
        report.push(rep);
    }
    let mut metadata: Vec<(String, String)> = source
        .metadata()
        .iter()
        .filter(|(k, _)| !k.starts_with("membound."))
        .map(|(k, v)| (k.clone(), meta_string(v)))
        .collect();
    metadata.push(("membound.source_format".into(), source.format().to_string()));
    metadata.push((
        "membound.source_file".into(),
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    ));
    metadata.push((META_FORMAT.into(), FORMAT.into()));
    metadata.push((META_CODEC.into(), codec.spec()));
    metadata.push((
        META_TENSORS.into(),
        serde_json::Value::Object(entries).to_string(),
    ));
    Ok(Quantized {
        codec: codec.spec(),
        tensors,
        metadata,
        report,
    })
}

/// What one source tensor becomes: stored tensors, its metadata entry if
/// encoded, and its report.
type One = (
    Vec<OwnedTensor>,
    Option<(String, EncodedEntry)>,
    TensorReport,
);

fn quantize_one(path: &Path, codec: &dyn Codec, family: &str, t: &TensorView<'_>) -> Result<One> {
    let mut rep = TensorReport {
        name: t.name().into(),
        dtype: t.dtype().to_string(),
        shape: t.shape().to_vec(),
        action: "copied".into(),
        bits_per_weight: None,
        sqnr_db: None,
        stored_as: vec![t.name().into()],
    };
    if !is_encodable(t) {
        if let DType::Ggml(_) = t.dtype() {
            let v = t.to_f32()?;
            rep.action = "dequantized".into();
            let data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            return Ok((
                vec![OwnedTensor {
                    name: t.name().into(),
                    dtype: DType::F32,
                    shape: t.shape().to_vec(),
                    data,
                }],
                None,
                rep,
            ));
        }
        return Ok((
            vec![OwnedTensor {
                name: t.name().into(),
                dtype: t.dtype(),
                shape: t.shape().to_vec(),
                data: t.data().to_vec(),
            }],
            None,
            rep,
        ));
    }
    let (rows, cols) = (t.shape()[0], t.shape()[1]);
    let w = t.to_f32()?;
    let err = |e: membound_codec::Error| model_err(path, format!("tensor {}: {e}", t.name()));
    let m = Matrix::new(rows, cols, &w).map_err(err)?;
    let e = codec.encode(m).map_err(err)?;
    let y = codec.decode(&e).map_err(err)?;
    let names = part_names(family, t.name(), &e.parts);
    let mut out = Vec::with_capacity(e.parts.len());
    let mut parts = Vec::with_capacity(e.parts.len());
    for (p, n) in e.parts.iter().zip(&names) {
        out.push(OwnedTensor {
            name: n.clone(),
            dtype: dtype_of(p.dtype),
            shape: p.shape.clone(),
            data: p.data.clone(),
        });
        parts.push(PartEntry {
            part: p.name.clone(),
            tensor: n.clone(),
        });
    }
    rep.action = "encoded".into();
    rep.bits_per_weight = Some(e.bits_per_weight());
    rep.sqnr_db = Some(metrics::sqnr_db(&w, &y).map_err(err)?);
    rep.stored_as = names;
    let entry = EncodedEntry {
        spec: e.spec.clone(),
        rows,
        cols,
        parts,
    };
    Ok((out, Some((t.name().into(), entry)), rep))
}

/// Writes `q` to `output` atomically. Refuses to replace `input` ever, and
/// any existing file unless `force`.
pub fn write(q: &Quantized, input: &Path, output: &Path, force: bool) -> Result<()> {
    write_check(input, output, force)?;
    write_safetensors(output, &q.tensors, &q.metadata)?;
    Ok(())
}

/// The checks of [`write()`] alone, to fail before the work: `output` must not
/// be `input`, nor a directory, nor exist unless `force`.
pub fn write_check(input: &Path, output: &Path, force: bool) -> Result<()> {
    if output.exists() {
        let same =
            matches!((input.canonicalize(), output.canonicalize()), (Ok(a), Ok(b)) if a == b);
        if same {
            return Err(Error::Request(format!(
                "{}: refusing to overwrite the input file",
                output.display()
            )));
        }
        if output.is_dir() {
            return Err(Error::Request(format!(
                "{}: is a directory",
                output.display()
            )));
        }
        if !force {
            return Err(Error::Request(format!(
                "{}: already exists (pass --force to replace it)",
                output.display()
            )));
        }
    }
    Ok(())
}

/// The [`META_TENSORS`] map of a quantized file, in file order.
pub fn entries(file: &SafetensorsFile) -> Result<Vec<(String, EncodedEntry)>> {
    let path = file.path().to_path_buf();
    let meta = file.string_metadata();
    let get = |k: &str| {
        meta.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    match get(META_FORMAT) {
        Some(FORMAT) => {}
        other => {
            return Err(model_err(
                &path,
                format!(
                    "{META_FORMAT} is {other:?}, expected {FORMAT:?}: not a membound quantized file"
                ),
            ));
        }
    }
    let raw =
        get(META_TENSORS).ok_or_else(|| model_err(&path, format!("{META_TENSORS} is missing")))?;
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(raw)
        .map_err(|e| model_err(&path, format!("{META_TENSORS} is not a JSON object: {e}")))?;
    map.into_iter()
        .map(|(k, v)| {
            let e: EncodedEntry = serde_json::from_value(v)
                .map_err(|e| model_err(&path, format!("{META_TENSORS}[{k:?}]: {e}")))?;
            Ok((k, e))
        })
        .collect()
}

/// Rebuilds every encoded weight of a quantized file: `(name, encoded)` in
/// file order. Decode each with [`membound_codec::decode`].
pub fn read_encoded(file: &SafetensorsFile) -> Result<Vec<(String, Encoded)>> {
    let path = file.path().to_path_buf();
    let views = file.tensors();
    entries(file)?
        .into_iter()
        .map(|(name, entry)| {
            let parts = entry
                .parts
                .iter()
                .map(|p| {
                    let v = views.iter().find(|v| v.name() == p.tensor).ok_or_else(|| {
                        model_err(
                            &path,
                            format!(
                                "{name}: part {} is stored as {:?}, which is missing",
                                p.part, p.tensor
                            ),
                        )
                    })?;
                    let dtype = part_dtype_of(v.dtype()).ok_or_else(|| {
                        model_err(
                            &path,
                            format!(
                                "{name}: part {} has dtype {}, not a codec part type",
                                p.part,
                                v.dtype()
                            ),
                        )
                    })?;
                    Ok(Part {
                        name: p.part.clone(),
                        dtype,
                        shape: v.shape().to_vec(),
                        data: v.data().to_vec(),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            Ok((
                name,
                Encoded {
                    spec: entry.spec,
                    rows: entry.rows,
                    cols: entry.cols,
                    parts,
                },
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mlx_names_for_affine_and_part_names_otherwise() {
        let p = |n: &str| Part {
            name: n.into(),
            dtype: PartDType::U8,
            shape: vec![1],
            data: vec![0],
        };
        let parts = [p("weight"), p("scales"), p("biases")];
        assert_eq!(
            part_names("affine", "a.b.weight", &parts),
            ["a.b.weight", "a.b.scales", "a.b.biases"]
        );
        assert_eq!(
            part_names("affine", "emb", &parts),
            ["emb", "emb.scales", "emb.biases"]
        );
        assert_eq!(
            part_names("kmeans", "a.weight", &[p("codebook"), p("codes")]),
            ["a.weight.codebook", "a.weight.codes"]
        );
    }
}
