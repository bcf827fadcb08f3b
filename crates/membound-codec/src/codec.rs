//! The codec trait, matrices and the self-describing encoded form.

use crate::{Error, Result};

/// A borrowed row-major f32 matrix: `rows` output channels of `cols` weights.
#[derive(Clone, Copy, Debug)]
pub struct Matrix<'a> {
    /// Number of rows (output features).
    pub rows: usize,
    /// Number of columns (input features).
    pub cols: usize,
    /// `rows * cols` values, row-major.
    pub data: &'a [f32],
}

impl<'a> Matrix<'a> {
    /// Wraps `data`, checking its length.
    pub fn new(rows: usize, cols: usize, data: &'a [f32]) -> Result<Self> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(Error::Input {
                codec: "matrix".into(),
                problem: format!(
                    "{rows}×{cols} needs {} values, got {}",
                    rows.saturating_mul(cols),
                    data.len()
                ),
            });
        }
        Ok(Self { rows, cols, data })
    }

    /// Row `r`.
    pub fn row(&self, r: usize) -> &'a [f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }

    /// Fails with the position of the first NaN or infinity.
    pub fn check_finite(&self, codec: &str) -> Result<()> {
        match self.data.iter().position(|v| !v.is_finite()) {
            None => Ok(()),
            Some(i) => Err(Error::Input {
                codec: codec.into(),
                problem: format!(
                    "weight at row {}, column {} is {}; codecs need finite weights",
                    i / self.cols.max(1),
                    i % self.cols.max(1),
                    self.data[i]
                ),
            }),
        }
    }
}

/// Storage type of one encoded part.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum PartDType {
    /// Bytes (packed codes, indices).
    U8,
    /// 16-bit unsigned (indices).
    U16,
    /// 32-bit words of packed codes (MLX's layout).
    U32,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// IEEE single.
    F32,
}

impl PartDType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            PartDType::U8 => 1,
            PartDType::U16 | PartDType::F16 | PartDType::BF16 => 2,
            PartDType::U32 | PartDType::F32 => 4,
        }
    }
}

/// One array of an encoded matrix: packed codes, scales, biases, a codebook,
/// factors or indices, stored at exactly the precision it is counted at.
#[derive(Clone, Debug, PartialEq)]
pub struct Part {
    /// Role of the part, e.g. `weight`, `scales`, `biases`, `codebook`.
    pub name: String,
    /// Storage type.
    pub dtype: PartDType,
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// Little-endian bytes, `shape.product() * dtype.size()` of them.
    pub data: Vec<u8>,
}

/// An encoded matrix: the spec that made it, its logical shape, and parts.
///
/// It is self-describing: [`crate::decode`] needs nothing else.
#[derive(Clone, Debug, PartialEq)]
pub struct Encoded {
    /// The canonical spec of the codec that produced it.
    pub spec: String,
    /// Rows of the original matrix.
    pub rows: usize,
    /// Columns of the original matrix.
    pub cols: usize,
    /// Every stored array; nothing else is needed to decode.
    pub parts: Vec<Part>,
}

impl Encoded {
    /// Total stored bytes over all parts.
    pub fn bytes(&self) -> usize {
        self.parts.iter().map(|p| p.data.len()).sum()
    }

    /// Measured bits per weight: 8 × stored bytes ÷ weights, all side
    /// information included.
    pub fn bits_per_weight(&self) -> f64 {
        let n = self.rows * self.cols;
        if n == 0 {
            0.0
        } else {
            self.bytes() as f64 * 8.0 / n as f64
        }
    }

    /// The part called `name`.
    pub fn part(&self, name: &str) -> Result<&Part> {
        self.parts
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| Error::Encoded {
                codec: self.spec.clone(),
                part: name.into(),
                problem: "missing".into(),
            })
    }
}

/// A weight codec: f32 matrix in, self-describing encoded form out, and back.
pub trait Codec: Send + Sync {
    /// The canonical spec, e.g. `affine:bits=4,group=64,scale=f16`;
    /// parsing it gives back an equal codec.
    fn spec(&self) -> String;

    /// Encodes `m`. Non-finite input is an error, never silently encoded.
    fn encode(&self, m: Matrix<'_>) -> Result<Encoded>;

    /// Decodes an encoded form made by this codec into `rows * cols` values.
    fn decode(&self, e: &Encoded) -> Result<Vec<f32>>;

    /// The exact bits per weight this codec stores for a `rows × cols`
    /// matrix, all side information included; equals
    /// [`Encoded::bits_per_weight`] of every encoding of that shape.
    fn bits_per_weight(&self, rows: usize, cols: usize) -> f64;
}
