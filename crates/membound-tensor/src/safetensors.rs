//! safetensors: zero-copy reading through the `safetensors` crate, and an
//! atomic writer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensorError, SafeTensors};

use crate::storage::Storage;
use crate::view::TensorEntry;
use crate::{DType, Error, Format, MetaValue, Result, TensorSource, TensorView};

/// A parsed safetensors file.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    storage: Storage,
    tensors: Vec<TensorEntry>,
    metadata: Vec<(String, String)>,
}

impl SafetensorsFile {
    /// Maps and parses `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::from_storage(path, Storage::map(path)?)
    }

    /// Parses a safetensors file held in memory; `path` only names it in errors.
    pub fn from_bytes(path: impl AsRef<Path>, bytes: Vec<u8>) -> Result<Self> {
        Self::from_storage(path.as_ref(), Storage::Owned(bytes))
    }

    pub(crate) fn from_storage(path: &Path, storage: Storage) -> Result<Self> {
        let (tensors, metadata) = parse(path, storage.bytes())?;
        Ok(Self {
            path: path.to_path_buf(),
            storage,
            tensors,
            metadata,
        })
    }

    /// The free-form `__metadata__` strings, sorted by key.
    pub fn string_metadata(&self) -> &[(String, String)] {
        &self.metadata
    }
}

impl TensorSource for SafetensorsFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn format(&self) -> Format {
        Format::Safetensors
    }

    fn tensors(&self) -> Vec<TensorView<'_>> {
        let bytes = self.storage.bytes();
        self.tensors.iter().map(|t| t.view(bytes)).collect()
    }

    fn metadata(&self) -> Vec<(String, MetaValue)> {
        self.metadata
            .iter()
            .map(|(k, v)| (k.clone(), MetaValue::String(v.clone())))
            .collect()
    }
}

type Parsed = (Vec<TensorEntry>, Vec<(String, String)>);

fn parse(path: &Path, bytes: &[u8]) -> Result<Parsed> {
    // The crate validates the header: size cap, JSON, dtype names, shape
    // overflow, contiguous non-overlapping offsets covering the whole buffer.
    let (header_len, meta) =
        SafeTensors::read_metadata(bytes).map_err(|e| map_error(path, bytes, e))?;
    let data_start = 8 + header_len;
    let mut tensors = Vec::with_capacity(meta.tensors().len());
    for (name, info) in meta.tensors() {
        let dtype = from_st_dtype(info.dtype).ok_or_else(|| Error::UnknownDType {
            path: path.to_path_buf(),
            tensor: name.clone(),
            kind: "safetensors dtype",
            id: format!("{:?}", info.dtype),
        })?;
        let (s, e) = info.data_offsets;
        let range = (data_start + s)..(data_start + e);
        // Re-check what the view relies on; the crate already did, cheaply.
        crate::TensorView::new(&name, dtype, &info.shape, &bytes[range.clone()])?;
        tensors.push(TensorEntry {
            name,
            dtype,
            shape: info.shape.clone(),
            range,
        });
    }
    tensors.sort_by_key(|t| t.range.start);
    let mut metadata: Vec<(String, String)> = meta
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    metadata.sort();
    Ok((tensors, metadata))
}

fn map_error(path: &Path, bytes: &[u8], e: SafeTensorError) -> Error {
    let header = "header";
    if matches!(
        e,
        SafeTensorError::TensorInvalidInfo | SafeTensorError::ValidationOverflow
    ) {
        if let Some((tensor, problem)) = inconsistent_tensor(bytes) {
            return Error::malformed(path, format!("tensor {tensor:?}"), problem);
        }
    }
    let problem = match e {
        SafeTensorError::HeaderTooSmall => {
            return Error::Truncated {
                path: path.into(),
                what: "8-byte header length".into(),
                start: 0,
                end: 8,
                len: bytes.len() as u64,
            };
        }
        SafeTensorError::InvalidHeaderLength => {
            let n = bytes
                .get(..8)
                .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
            return Error::Truncated {
                path: path.into(),
                what: "JSON header".into(),
                start: 8,
                end: n.saturating_add(8),
                len: bytes.len() as u64,
            };
        }
        SafeTensorError::HeaderTooLarge => "header is larger than the 100 MB cap".to_string(),
        SafeTensorError::InvalidHeader(e) => format!("header is not UTF-8: {e}"),
        SafeTensorError::InvalidHeaderDeserialization(e) => {
            // Unknown dtypes surface here, as serde's "unknown variant".
            let msg = e.to_string();
            if msg.contains("unknown variant") {
                if let Some((tensor, dtype)) = unknown_dtype(bytes) {
                    return Error::UnknownDType {
                        path: path.into(),
                        tensor,
                        kind: "safetensors dtype",
                        id: dtype,
                    };
                }
            }
            format!("header is not valid safetensors JSON: {msg}")
        }
        SafeTensorError::InvalidOffset(name) => {
            return Error::malformed(
                path,
                format!("tensor {name:?}"),
                "data offsets are not contiguous, overlap, or disagree with dtype and shape",
            );
        }
        SafeTensorError::TensorInvalidInfo => {
            "a tensor's offsets disagree with its dtype and shape".to_string()
        }
        SafeTensorError::ValidationOverflow => {
            "a tensor's shape or byte size overflows".to_string()
        }
        SafeTensorError::MetadataIncompleteBuffer => {
            "tensor data does not end exactly at the end of the file (truncated or trailing bytes)"
                .to_string()
        }
        SafeTensorError::MisalignedSlice => {
            "a sub-byte tensor does not end on a byte boundary".to_string()
        }
        other => other.to_string(),
    };
    Error::malformed(path, header, problem)
}

/// The header as JSON, when the crate's parse failed after reading it.
fn header_json(bytes: &[u8]) -> Option<serde_json::Map<String, serde_json::Value>> {
    let n = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
    let header = bytes.get(8..8usize.checked_add(n)?)?;
    serde_json::from_slice(header).ok()
}

/// The tensor whose dtype the `safetensors` crate did not know, and that dtype.
fn unknown_dtype(bytes: &[u8]) -> Option<(String, String)> {
    header_json(bytes)?
        .into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .find_map(|(name, info)| {
            let dtype = info.get("dtype")?.clone();
            let known = serde_json::from_value::<Dtype>(dtype.clone()).is_ok();
            (!known).then(|| {
                (
                    name,
                    dtype
                        .as_str()
                        .map_or_else(|| dtype.to_string(), str::to_string),
                )
            })
        })
}

/// The first tensor whose shape overflows or disagrees with its offsets,
/// with the reason; the `safetensors` crate reports these without a name.
fn inconsistent_tensor(bytes: &[u8]) -> Option<(String, String)> {
    header_json(bytes)?.into_iter().filter(|(k, _)| k != "__metadata__").find_map(|(name, info)| {
        let dtype: Dtype = serde_json::from_value(info.get("dtype")?.clone()).ok()?;
        let shape: Vec<u64> = serde_json::from_value(info.get("shape")?.clone()).ok()?;
        let offsets: [u64; 2] = serde_json::from_value(info.get("data_offsets")?.clone()).ok()?;
        let bits = shape.iter().try_fold(dtype.bitsize() as u64, |acc, &d| acc.checked_mul(d));
        let Some(bits) = bits.filter(|_| shape.iter().try_fold(1usize, |a, &d| a.checked_mul(usize::try_from(d).ok()?)).is_some()) else {
            return Some((name, format!("shape {shape:?} of {dtype:?} overflows")));
        };
        let span = offsets[1].checked_sub(offsets[0]);
        (span != Some(bits.div_ceil(8))).then(|| {
            (name, format!(
                "data_offsets {offsets:?} span {} bytes, which disagree with shape {shape:?} of {dtype:?} ({} bytes)",
                span.map_or_else(|| "a negative range of".to_string(), |s| s.to_string()),
                bits.div_ceil(8)
            ))
        })
    })
}

fn from_st_dtype(d: Dtype) -> Option<DType> {
    Some(match d {
        Dtype::BOOL => DType::Bool,
        Dtype::U8 => DType::U8,
        Dtype::I8 => DType::I8,
        Dtype::U16 => DType::U16,
        Dtype::I16 => DType::I16,
        Dtype::U32 => DType::U32,
        Dtype::I32 => DType::I32,
        Dtype::U64 => DType::U64,
        Dtype::I64 => DType::I64,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::F32 => DType::F32,
        Dtype::F64 => DType::F64,
        Dtype::F8_E4M3 => DType::F8E4M3,
        Dtype::F8_E5M2 => DType::F8E5M2,
        Dtype::F8_E4M3FNUZ => DType::F8E4M3Fnuz,
        Dtype::F8_E5M2FNUZ => DType::F8E5M2Fnuz,
        Dtype::F8_E8M0 => DType::F8E8M0,
        Dtype::F4 => DType::F4,
        Dtype::F6_E2M3 => DType::F6E2M3,
        Dtype::F6_E3M2 => DType::F6E3M2,
        Dtype::C64 => DType::C64,
        _ => return None,
    })
}

fn to_st_dtype(d: DType) -> Option<Dtype> {
    Some(match d {
        DType::Bool => Dtype::BOOL,
        DType::U8 => Dtype::U8,
        DType::I8 => Dtype::I8,
        DType::U16 => Dtype::U16,
        DType::I16 => Dtype::I16,
        DType::U32 => Dtype::U32,
        DType::I32 => Dtype::I32,
        DType::U64 => Dtype::U64,
        DType::I64 => Dtype::I64,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::F32 => Dtype::F32,
        DType::F64 => Dtype::F64,
        DType::F8E4M3 => Dtype::F8_E4M3,
        DType::F8E5M2 => Dtype::F8_E5M2,
        DType::F8E4M3Fnuz => Dtype::F8_E4M3FNUZ,
        DType::F8E5M2Fnuz => Dtype::F8_E5M2FNUZ,
        DType::F8E8M0 => Dtype::F8_E8M0,
        DType::F4 => Dtype::F4,
        DType::F6E2M3 => Dtype::F6_E2M3,
        DType::F6E3M2 => Dtype::F6_E3M2,
        DType::C64 => Dtype::C64,
        DType::Ggml(_) => return None,
    })
}

/// One tensor to write: owned or borrowed bytes in a plain dtype.
#[derive(Clone, Debug)]
pub struct OwnedTensor {
    /// The name it gets in the file.
    pub name: String,
    /// A plain (non-block) dtype.
    pub dtype: DType,
    /// Outermost dimension first.
    pub shape: Vec<usize>,
    /// Little-endian element bytes.
    pub data: Vec<u8>,
}

struct WriteView<'a>(&'a OwnedTensor, Dtype);

impl safetensors::View for WriteView<'_> {
    fn dtype(&self) -> Dtype {
        self.1
    }
    fn shape(&self) -> &[usize] {
        &self.0.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.0.data)
    }
    fn data_len(&self) -> usize {
        self.0.data.len()
    }
}

/// Writes `tensors` and `metadata` to `path` as safetensors, atomically.
///
/// The file is written to a temporary file in the same directory and renamed
/// into place, so readers never see a partial file and a failed write leaves
/// any previous file untouched.
pub fn write_safetensors(
    path: impl AsRef<Path>,
    tensors: &[OwnedTensor],
    metadata: &[(String, String)],
) -> Result<()> {
    let path = path.as_ref();
    let mut views = Vec::with_capacity(tensors.len());
    for t in tensors {
        let dtype = to_st_dtype(t.dtype).ok_or_else(|| Error::Output {
            path: path.into(),
            problem: format!(
                "tensor {:?}: {} cannot be stored in safetensors; convert it first",
                t.name, t.dtype
            ),
        })?;
        TensorView::new(&t.name, t.dtype, &t.shape, &t.data)?;
        views.push((t.name.as_str(), WriteView(t, dtype)));
    }
    let info: HashMap<String, String> = metadata.iter().cloned().collect();
    let info = (!info.is_empty()).then_some(info);
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".membound-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, e))?;
    safetensors::serialize_to_file(views, info, tmp.path()).map_err(|e| Error::Output {
        path: path.into(),
        problem: format!("serializing failed: {e}"),
    })?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// Parses `bytes` as safetensors and touches every tensor, for the fuzzer.
#[doc(hidden)]
pub fn fuzz_parse(bytes: &[u8]) {
    if let Ok((tensors, _)) = parse(Path::new("<fuzz>"), bytes) {
        for t in &tensors {
            let _ = t.view(bytes).to_f32();
        }
    }
}
