//! 4-bit affine weights stored column-major, for the quantized sparse
//! mat-vec: the reference of the GPU kernel that reads only the columns of
//! active inputs.
//!
//! The layout is [`AffineCodec`] (4 bits, MLX's packing, f16 scales and
//! biases) applied to Wᵀ: each row of Wᵀ — one column of W, the weights one
//! input feeds into every output — is packed on its own, with its groups
//! running along the output dimension. A column is then one contiguous run of
//! codes plus its `⌈rows / group⌉` scales and biases.

use membound_codec::{AffineCodec, AffineParts, Codec, Encoded, Group, Matrix, ScaleDType};

use crate::error::check_len;
use crate::{Error, Result, sparse_gemv_f32};

/// The group sizes (along the output dimension) the column-major 4-bit
/// form accepts: MLX's.
pub const AFFINE4_GROUP_SIZES: &[usize] = &[32, 64, 128];

/// A `rows × cols` matrix W stored as Wᵀ encoded with
/// `affine:bits=4,group=G,scale=f16`, plus the decoded columns.
#[derive(Clone, Debug, PartialEq)]
pub struct ColMajorAffine4 {
    rows: usize,
    cols: usize,
    codec: AffineCodec,
    encoded: Encoded,
    /// Wᵀ decoded row-major, i.e. W column-major: `cols` columns of `rows`.
    decoded: Vec<f32>,
}

impl ColMajorAffine4 {
    /// Encodes row-major `w` (`rows × cols`, finite, within f16's range)
    /// column by column with groups of `group` outputs (32, 64 or 128).
    pub fn from_row_major(w: &[f32], rows: usize, cols: usize, group: usize) -> Result<Self> {
        let size = rows
            .checked_mul(cols)
            .ok_or_else(|| Error::Invalid(format!("{rows}×{cols} is too large")))?;
        check_len("weights", size, w.len())?;
        let codec = codec(group)?;
        let mut wt = vec![0f32; size];
        for (r, row) in w.chunks_exact(cols.max(1)).enumerate().take(rows) {
            for (c, &v) in row.iter().enumerate() {
                wt[c * rows + r] = v;
            }
        }
        let m = Matrix::new(cols, rows, &wt).map_err(codec_error)?;
        let encoded = codec.encode(m).map_err(codec_error)?;
        Self::from_encoded(rows, cols, group, encoded)
    }

    /// Wraps an encoding of Wᵀ (`cols × rows`) made by
    /// `affine:bits=4,group=G,scale=f16`, checking it.
    pub fn from_encoded(rows: usize, cols: usize, group: usize, encoded: Encoded) -> Result<Self> {
        let codec = codec(group)?;
        if (encoded.rows, encoded.cols) != (cols, rows) {
            return Err(Error::Invalid(format!(
                "encoding of Wᵀ must be {cols}×{rows} for a {rows}×{cols} W, got {}×{}",
                encoded.rows, encoded.cols
            )));
        }
        let decoded = codec.decode(&encoded).map_err(codec_error)?;
        Ok(Self {
            rows,
            cols,
            codec,
            encoded,
            decoded,
        })
    }

    /// Output features (rows of W).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features (columns of W).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Outputs sharing one scale and bias.
    pub fn group(&self) -> usize {
        match self.codec.group {
            Group::Size(g) => g,
            Group::Row | Group::Tensor => unreachable!("built with a group size"),
        }
    }

    /// The codec, `affine:bits=4,group=G,scale=f16`.
    pub fn codec(&self) -> AffineCodec {
        self.codec
    }

    /// The encoding of Wᵀ (`cols` rows of `rows` codes).
    pub fn encoded(&self) -> &Encoded {
        &self.encoded
    }

    /// Typed parts of the encoding: `words` is `cols × ⌈rows/8⌉` u32,
    /// `scales` and `biases` are `cols × ⌈rows/G⌉`, widened exactly to f32.
    pub fn parts(&self) -> Result<AffineParts> {
        self.codec.parts(&self.encoded).map_err(codec_error)
    }

    /// Column `j` of W as decoded: `code · scale + bias` in f32.
    pub fn column(&self, j: usize) -> &[f32] {
        &self.decoded[j * self.rows..(j + 1) * self.rows]
    }

    /// All decoded columns, column-major (`cols` runs of `rows`).
    pub fn decoded(&self) -> &[f32] {
        &self.decoded
    }

    /// y = Σ_{j ∈ active} x_j · Ŵ[:, j] over the decoded weights.
    pub fn sparse_gemv(&self, x: &[f32], active: &[u32]) -> Result<Vec<f32>> {
        sparse_gemv_f32(&self.decoded, self.rows, self.cols, x, active)
    }
}

fn codec(group: usize) -> Result<AffineCodec> {
    if !AFFINE4_GROUP_SIZES.contains(&group) {
        return Err(Error::Invalid(format!(
            "4-bit affine group {group} is not one of {AFFINE4_GROUP_SIZES:?}"
        )));
    }
    AffineCodec::new(4, Group::Size(group), ScaleDType::F16).map_err(codec_error)
}

fn codec_error(e: membound_codec::Error) -> Error {
    Error::Invalid(format!("4-bit affine encoding: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{active_indices, gemv, threshold_for_sparsity};

    fn lcg(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn sparse_equals_dense_over_decoded_weights() {
        for (rows, cols, group) in [
            (1, 1, 32),
            (7, 13, 64),
            (130, 33, 64),
            (1, 100, 128),
            (300, 1, 128),
        ] {
            let w = lcg(rows * cols, 1);
            let x = lcg(cols, 2);
            let m = ColMajorAffine4::from_row_major(&w, rows, cols, group).unwrap();
            // Ŵ row-major, from the decoded columns.
            let mut dense = vec![0f32; rows * cols];
            for c in 0..cols {
                for (r, &v) in m.column(c).iter().enumerate() {
                    dense[r * cols + c] = v;
                    // 4-bit steps of a range within [-1, 1): error under 2/15.
                    assert!(
                        (v - w[r * cols + c]).abs() <= 2.0 / 15.0,
                        "{rows}x{cols} ({r}, {c})"
                    );
                }
            }
            for target in [0.0, 0.5, 0.99, 1.0] {
                let tau = threshold_for_sparsity(&x, target).unwrap();
                let active = active_indices(&x, tau);
                let masked: Vec<f32> = x
                    .iter()
                    .map(|&v| if v.abs() > tau { v } else { 0.0 })
                    .collect();
                let want = gemv(&dense, rows, cols, &masked).unwrap();
                let got = m.sparse_gemv(&x, &active).unwrap();
                for (a, b) in want.iter().zip(&got) {
                    assert!(
                        (a - b).abs() <= 1e-6 * (1.0 + a.abs()),
                        "{rows}x{cols} {target}: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn groups_run_along_the_output_dimension() {
        // Column 0 holds outputs 0..64 in [0, 1] and 64..128 in [-100, 100]:
        // with groups of 64 along the outputs the first group keeps its fine
        // steps; column 1 is constant.
        let (rows, cols) = (128, 2);
        let mut w = vec![0f32; rows * cols];
        for r in 0..rows {
            w[r * cols] = if r < 64 {
                r as f32 / 63.0
            } else {
                (r as f32 - 96.0) * 3.0
            };
            w[r * cols + 1] = 0.25;
        }
        let m = ColMajorAffine4::from_row_major(&w, rows, cols, 64).unwrap();
        let parts = m.parts().unwrap();
        assert_eq!(parts.layout.rows, cols);
        assert_eq!(parts.layout.cols, rows);
        assert_eq!(parts.layout.words_per_row, 16);
        assert_eq!(parts.layout.scales_shape, [2, 2]);
        for r in 0..64 {
            assert!((m.column(0)[r] - w[r * cols]).abs() <= 0.5 / 15.0 + 1e-3);
        }
        assert!(m.column(1).iter().all(|&v| v == 0.25));
    }

    #[test]
    fn bad_input() {
        assert!(ColMajorAffine4::from_row_major(&[1.0; 5], 2, 3, 64).is_err());
        assert!(matches!(
            ColMajorAffine4::from_row_major(&[1.0; 6], 2, 3, 48),
            Err(Error::Invalid(m)) if m.contains("48")
        ));
        assert!(ColMajorAffine4::from_row_major(&[1.0, f32::NAN], 1, 2, 64).is_err());
        assert!(ColMajorAffine4::from_row_major(&[1.0, 1e6], 1, 2, 64).is_err());
        let m = ColMajorAffine4::from_row_major(&[1.0; 6], 2, 3, 64).unwrap();
        assert!(m.sparse_gemv(&[1.0; 2], &[0]).is_err());
        assert!(m.sparse_gemv(&[1.0; 3], &[3]).is_err());
        let e = m.encoded().clone();
        assert!(ColMajorAffine4::from_encoded(3, 2, 64, e.clone()).is_err());
        assert!(ColMajorAffine4::from_encoded(2, 3, 128, e).is_err());
    }
}
