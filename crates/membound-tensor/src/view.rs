//! The format-independent view of a tensor and the trait every reader implements.

use std::ops::Range;
use std::path::Path;

use crate::{DType, Error, MetaValue, Result, convert};

/// A borrowed tensor: name, element type, shape and the raw bytes in the file.
///
/// Shapes are row-major, outermost dimension first, as in PyTorch and
/// safetensors. (GGUF stores `ne` innermost first; its reader reverses it.)
/// A 2-D weight is `[rows, cols]` = `[out_features, in_features]`.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    name: &'a str,
    dtype: DType,
    shape: &'a [usize],
    data: &'a [u8],
}

impl<'a> TensorView<'a> {
    /// Makes a view, checking that `data` holds exactly `shape` elements of `dtype`.
    pub fn new(name: &'a str, dtype: DType, shape: &'a [usize], data: &'a [u8]) -> Result<Self> {
        let numel = numel(shape).ok_or_else(|| Error::SizeMismatch {
            tensor: name.into(),
            dtype: dtype.name().into(),
            numel: u64::MAX,
            expected: u64::MAX,
            found: data.len() as u64,
        })?;
        let expected = dtype.storage_bytes(numel);
        if expected != Some(data.len() as u64) {
            return Err(Error::SizeMismatch {
                tensor: name.into(),
                dtype: dtype.name().into(),
                numel,
                expected: expected.unwrap_or(u64::MAX),
                found: data.len() as u64,
            });
        }
        Ok(Self {
            name,
            dtype,
            shape,
            data,
        })
    }

    /// The tensor's name in the file (llama2.c tensors get Hugging Face names).
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// The element type as stored.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The shape, outermost dimension first.
    pub fn shape(&self) -> &'a [usize] {
        self.shape
    }

    /// The stored bytes, borrowed from the file.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// The number of elements.
    pub fn numel(&self) -> usize {
        // Checked in `new`.
        self.shape.iter().product()
    }

    /// Converts (or dequantizes) the tensor to f32, row-major.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let mut out = vec![0.0; self.numel()];
        self.to_f32_into(&mut out)?;
        Ok(out)
    }

    /// Like [`TensorView::to_f32`], into a caller's buffer of `numel()` elements.
    pub fn to_f32_into(&self, out: &mut [f32]) -> Result<()> {
        convert::to_f32_into(self.dtype, self.data, out).map_err(|e| e.for_tensor(self.name))
    }
}

/// The element count of `shape`, or `None` on overflow (of `u64` or `usize`).
///
/// The product of the *non-zero* dimensions must fit even when a zero makes
/// the count 0: then every partial product, in any order, fits too, so code
/// that multiplies the dimensions of a validated shape cannot overflow.
pub(crate) fn numel(shape: &[usize]) -> Option<u64> {
    let nonzero = shape
        .iter()
        .filter(|&&d| d != 0)
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))?;
    usize::try_from(nonzero).ok()?;
    Some(if shape.contains(&0) { 0 } else { nonzero })
}

/// Which file format a [`TensorSource`] read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Hugging Face safetensors.
    Safetensors,
    /// ggml's GGUF, version 2 or 3.
    Gguf,
    /// Karpathy's llama2.c checkpoint (version-0 header).
    Llama2c,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Safetensors => "safetensors",
            Format::Gguf => "GGUF",
            Format::Llama2c => "llama2.c",
        })
    }
}

/// A model file, whatever its format: its tensors and its metadata.
///
/// Later crates take `&dyn TensorSource` and never care where the weights
/// came from.
pub trait TensorSource: Send + Sync {
    /// The file this was read from.
    fn path(&self) -> &Path;

    /// The format of the file.
    fn format(&self) -> Format;

    /// Every tensor, in file order.
    fn tensors(&self) -> Vec<TensorView<'_>>;

    /// Format metadata as key/value pairs, in file order.
    fn metadata(&self) -> Vec<(String, MetaValue)>;

    /// The tensor called `name`.
    fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        self.tensors()
            .into_iter()
            .find(|t| t.name() == name)
            .ok_or_else(|| Error::TensorNotFound {
                path: self.path().to_path_buf(),
                name: name.into(),
            })
    }
}

/// Where one tensor lives in a file. Readers keep a `Vec` of these beside
/// the file's bytes, validated once at open time.
#[derive(Clone, Debug)]
pub(crate) struct TensorEntry {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub range: Range<usize>,
}

impl TensorEntry {
    /// The view of this entry into `bytes`; the entry was validated against
    /// `bytes` when the file was opened, so this cannot fail.
    pub(crate) fn view<'a>(&'a self, bytes: &'a [u8]) -> TensorView<'a> {
        TensorView {
            name: &self.name,
            dtype: self.dtype,
            shape: &self.shape,
            data: &bytes[self.range.clone()],
        }
    }
}
