//! Error and size metrics: SQNR, MSE, max error, bits/weight, compression, kurtosis.
//!
//! Sums run in f64. Functions comparing two slices fail on a length
//! mismatch rather than panic.

use membound_tensor::Moments;

use crate::{Codec, Encoded, Error, Matrix, Result};

/// Excess kurtosis above which a tensor counts as heavy-tailed (the
/// research notes' threshold; a Gaussian has 0, a Laplacian 3).
pub const HEAVY_TAIL_KURTOSIS: f64 = 3.0;

fn same_len(orig: &[f32], recon: &[f32]) -> Result<()> {
    if orig.len() == recon.len() {
        Ok(())
    } else {
        Err(Error::Input {
            codec: "metrics".into(),
            problem: format!(
                "original has {} values, reconstruction {}",
                orig.len(),
                recon.len()
            ),
        })
    }
}

/// Signal-to-quantization-noise ratio in dB: `10·log10(Σx² / Σ(x − x̂)²)`.
///
/// `+∞` when the reconstruction is exact (including empty input), `−∞` when
/// the signal is all zeros but the reconstruction is not.
pub fn sqnr_db(orig: &[f32], recon: &[f32]) -> Result<f64> {
    same_len(orig, recon)?;
    let (mut sig, mut noise) = (0f64, 0f64);
    for (&x, &y) in orig.iter().zip(recon) {
        let (x, y) = (f64::from(x), f64::from(y));
        sig += x * x;
        noise += (x - y) * (x - y);
    }
    Ok(if noise == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (sig / noise).log10()
    })
}

/// Mean squared error; 0 for empty input.
pub fn mse(orig: &[f32], recon: &[f32]) -> Result<f64> {
    same_len(orig, recon)?;
    if orig.is_empty() {
        return Ok(0.0);
    }
    let s: f64 = orig
        .iter()
        .zip(recon)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum();
    Ok(s / orig.len() as f64)
}

/// Largest absolute error; 0 for empty input.
pub fn max_abs_error(orig: &[f32], recon: &[f32]) -> Result<f64> {
    same_len(orig, recon)?;
    Ok(orig
        .iter()
        .zip(recon)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).abs())
        .fold(0.0, f64::max))
}

/// Measured bits per weight of an encoding, all side information included.
pub fn bits_per_weight(e: &Encoded) -> f64 {
    e.bits_per_weight()
}

/// Size reduction against the two usual dense baselines, each named.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Compression {
    /// `f16 bytes ÷ stored bytes` (16 ÷ bits/weight).
    pub vs_f16: f64,
    /// `f32 bytes ÷ stored bytes` (32 ÷ bits/weight).
    pub vs_f32: f64,
}

impl Compression {
    /// The ratios for an encoding. An empty matrix (nothing stored, nothing
    /// to store) counts as 1; any other encoding of zero bytes as `+∞`.
    pub fn of(e: &Encoded) -> Self {
        let n = e.rows as f64 * e.cols as f64;
        let bytes = e.bytes() as f64;
        if n == 0.0 {
            return Self {
                vs_f16: 1.0,
                vs_f32: 1.0,
            };
        }
        Self {
            vs_f16: 2.0 * n / bytes,
            vs_f32: 4.0 * n / bytes,
        }
    }
}

/// Excess kurtosis (`m4/m2² − 3`; Gaussian = 0, Laplacian = 3) of the
/// finite values; NaN if they have zero variance or there are none.
pub fn excess_kurtosis(values: &[f32]) -> f64 {
    Moments::of(values).excess_kurtosis()
}

/// Fraction of tensors whose excess kurtosis exceeds
/// [`HEAVY_TAIL_KURTOSIS`]; NaN kurtoses (constant tensors) count as not
/// heavy. 0 for no tensors.
pub fn heavy_tail_share(kurtoses: &[f64]) -> f64 {
    if kurtoses.is_empty() {
        return 0.0;
    }
    kurtoses
        .iter()
        .filter(|&&k| k > HEAVY_TAIL_KURTOSIS)
        .count() as f64
        / kurtoses.len() as f64
}

/// Every metric for one tensor under one codec.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Report {
    /// Tensor name.
    pub tensor: String,
    /// Canonical codec spec.
    pub codec: String,
    /// Rows of the matrix.
    pub rows: usize,
    /// Columns of the matrix.
    pub cols: usize,
    /// Measured bits per weight.
    pub bits_per_weight: f64,
    /// Size reduction against f16 and f32.
    pub compression: Compression,
    /// SQNR in dB (`null` in JSON when infinite).
    pub sqnr_db: f64,
    /// Mean squared error.
    pub mse: f64,
    /// Largest absolute error.
    pub max_abs_error: f64,
    /// Excess kurtosis of the original weights.
    pub excess_kurtosis: f64,
}

impl Report {
    /// Encodes `m` with `codec`, decodes it, and measures the round trip.
    pub fn measure(tensor: &str, codec: &dyn Codec, m: Matrix<'_>) -> Result<Self> {
        let e = codec.encode(m)?;
        let recon = codec.decode(&e)?;
        Self::from_parts(tensor, m, &e, &recon)
    }

    /// Measures an encoding `e` of `m` whose decoding is `recon`.
    pub fn from_parts(tensor: &str, m: Matrix<'_>, e: &Encoded, recon: &[f32]) -> Result<Self> {
        Ok(Self {
            tensor: tensor.into(),
            codec: e.spec.clone(),
            rows: m.rows,
            cols: m.cols,
            bits_per_weight: e.bits_per_weight(),
            compression: Compression::of(e),
            sqnr_db: sqnr_db(m.data, recon)?,
            mse: mse(m.data, recon)?,
            max_abs_error: max_abs_error(m.data, recon)?,
            excess_kurtosis: excess_kurtosis(m.data),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Part;

    #[test]
    fn error_metrics() {
        let x = [1.0, -2.0, 3.0, 0.0];
        let y = [1.0, -2.5, 3.0, 0.5];
        assert_eq!(mse(&x, &y).unwrap(), 0.125);
        assert_eq!(max_abs_error(&x, &y).unwrap(), 0.5);
        // Σx² = 14, Σe² = 0.5 → 10·log10(28).
        assert!((sqnr_db(&x, &y).unwrap() - 10.0 * 28f64.log10()).abs() < 1e-12);
        assert_eq!(sqnr_db(&x, &x).unwrap(), f64::INFINITY);
        assert_eq!(sqnr_db(&[0.0], &[1.0]).unwrap(), f64::NEG_INFINITY);
        assert_eq!(
            (mse(&[], &[]).unwrap(), max_abs_error(&[], &[]).unwrap()),
            (0.0, 0.0)
        );
        assert!(
            mse(&x, &y[..3]).is_err()
                && sqnr_db(&x, &[]).is_err()
                && max_abs_error(&[], &y).is_err()
        );
    }

    #[test]
    fn compression_names_its_baselines() {
        let e = Encoded {
            spec: "x".into(),
            rows: 2,
            cols: 32,
            parts: vec![Part {
                name: "w".into(),
                dtype: crate::PartDType::U8,
                shape: vec![36],
                data: vec![0; 36],
            }],
        };
        // 36 bytes for 64 weights = 4.5 bits/weight.
        assert_eq!(bits_per_weight(&e), 4.5);
        assert_eq!(
            Compression::of(&e),
            Compression {
                vs_f16: 128.0 / 36.0,
                vs_f32: 256.0 / 36.0
            }
        );
        let empty = Encoded {
            rows: 0,
            parts: vec![],
            ..e
        };
        assert_eq!(
            Compression::of(&empty),
            Compression {
                vs_f16: 1.0,
                vs_f32: 1.0
            }
        );
    }

    #[test]
    fn kurtosis_and_heavy_tails() {
        let two_point: Vec<f32> = (0..1000)
            .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        assert!((excess_kurtosis(&two_point) + 2.0).abs() < 1e-12);
        assert!(excess_kurtosis(&[2.0; 10]).is_nan());
        assert_eq!(heavy_tail_share(&[0.1, 3.0, 3.5, f64::NAN, 7.0]), 0.4);
        assert_eq!(heavy_tail_share(&[]), 0.0);
    }

    #[test]
    fn report_serializes() {
        let data = [0.5f32, -1.0, 0.25, 2.0];
        let m = Matrix::new(1, 4, &data).unwrap();
        let c = crate::codec_from_spec("affine:bits=8,group=row,scale=f32").unwrap();
        let r = Report::measure("t", c.as_ref(), m).unwrap();
        assert_eq!(
            (r.rows, r.cols, r.codec.as_str()),
            (1, 4, "affine:bits=8,group=row,scale=f32")
        );
        assert!(r.sqnr_db > 40.0, "{r:?}");
        let j = serde_json::to_value(&r).unwrap();
        assert!(j["compression"]["vs_f16"].is_number() && j["compression"]["vs_f32"].is_number());
    }
}
