//! Conversion of stored elements to f32.

use half::{bf16, f16};

use crate::{DType, Error, Result, dequantize};

/// Converts `data`, holding `out.len()` elements of `dtype`, into `out`.
///
/// Errors name no tensor; [`crate::TensorView::to_f32_into`] adds it.
pub(crate) fn to_f32_into(dtype: DType, data: &[u8], out: &mut [f32]) -> Result<()> {
    let numel = out.len() as u64;
    let expected = dtype.storage_bytes(numel);
    if expected != Some(data.len() as u64) {
        return Err(Error::SizeMismatch {
            tensor: String::new(),
            dtype: dtype.name().into(),
            numel,
            expected: expected.unwrap_or(u64::MAX),
            found: data.len() as u64,
        });
    }
    match dtype {
        DType::F32 => each::<4>(data, out, f32::from_le_bytes),
        DType::F16 => each::<2>(data, out, |b| f16::from_le_bytes(b).to_f32()),
        DType::BF16 => each::<2>(data, out, |b| bf16::from_le_bytes(b).to_f32()),
        DType::F64 => each::<8>(data, out, |b| f64::from_le_bytes(b) as f32),
        DType::U8 => each::<1>(data, out, |b| f32::from(b[0])),
        DType::I8 => each::<1>(data, out, |b| f32::from(b[0] as i8)),
        DType::Bool => each::<1>(data, out, |b| f32::from(u8::from(b[0] != 0))),
        DType::U16 => each::<2>(data, out, |b| f32::from(u16::from_le_bytes(b))),
        DType::I16 => each::<2>(data, out, |b| f32::from(i16::from_le_bytes(b))),
        DType::U32 => each::<4>(data, out, |b| u32::from_le_bytes(b) as f32),
        DType::I32 => each::<4>(data, out, |b| i32::from_le_bytes(b) as f32),
        DType::U64 => each::<8>(data, out, |b| u64::from_le_bytes(b) as f32),
        DType::I64 => each::<8>(data, out, |b| i64::from_le_bytes(b) as f32),
        // E5M2 is the top byte of an IEEE half.
        DType::F8E5M2 => each::<1>(data, out, |b| f16::from_bits(u16::from(b[0]) << 8).to_f32()),
        DType::F8E4M3 => each::<1>(data, out, |b| f8_e4m3fn(b[0])),
        DType::F8E4M3Fnuz => each::<1>(data, out, |b| f8_fnuz(b[0], 4, 3, 8)),
        DType::F8E5M2Fnuz => each::<1>(data, out, |b| f8_fnuz(b[0], 5, 2, 16)),
        DType::F8E8M0 => each::<1>(data, out, |b| match b[0] {
            0xff => f32::NAN,
            e => (f32::from(e) - 127.0).exp2(),
        }),
        DType::Ggml(t) => return dequantize(t, data, out),
        DType::F4 | DType::F6E2M3 | DType::F6E3M2 | DType::C64 => {
            return Err(Error::UnsupportedConversion {
                tensor: String::new(),
                dtype: dtype.name().into(),
            });
        }
    }
    Ok(())
}

fn each<const N: usize>(data: &[u8], out: &mut [f32], f: impl Fn([u8; N]) -> f32) {
    for (o, chunk) in out.iter_mut().zip(data.chunks_exact(N)) {
        let mut b = [0u8; N];
        b.copy_from_slice(chunk);
        *o = f(b);
    }
}

/// OCP E4M3 "FN": bias 7, no infinities, S.1111.111 is NaN.
fn f8_e4m3fn(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((b >> 3) & 0x0f);
    let man = f32::from(b & 0x07);
    if exp == 0x0f && b & 0x07 == 0x07 {
        return f32::NAN;
    }
    sign * if exp == 0 {
        man / 8.0 * 2f32.powi(-6)
    } else {
        (1.0 + man / 8.0) * 2f32.powi(exp - 7)
    }
}

/// The "FNUZ" FP8 variants: no infinities, no negative zero, 0x80 is NaN.
fn f8_fnuz(b: u8, exp_bits: u32, man_bits: u32, bias: i32) -> f32 {
    if b == 0x80 {
        return f32::NAN;
    }
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((b >> man_bits) & ((1 << exp_bits) - 1));
    let scale = f32::from(1u8 << man_bits);
    let man = f32::from(b & ((1 << man_bits) - 1));
    sign * if exp == 0 {
        man / scale * 2f32.powi(1 - bias)
    } else {
        (1.0 + man / scale) * 2f32.powi(exp - bias)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(dtype: DType, data: &[u8], n: usize) -> Vec<f32> {
        let mut out = vec![0.0; n];
        to_f32_into(dtype, data, &mut out).unwrap();
        out
    }

    #[test]
    fn fp8_known_values() {
        // Values from the OCP FP8 specification's tables.
        assert_eq!(
            conv(DType::F8E4M3, &[0x7e, 0x08, 0x01, 0xb8], 4),
            [448.0, 2f32.powi(-6), 2f32.powi(-9), -1.0]
        );
        assert!(conv(DType::F8E4M3, &[0x7f], 1)[0].is_nan());
        assert_eq!(
            conv(DType::F8E5M2, &[0x7b, 0x3c, 0x7c], 3),
            [57344.0, 1.0, f32::INFINITY]
        );
        assert_eq!(conv(DType::F8E4M3Fnuz, &[0x40, 0x7f], 2), [1.0, 240.0]);
        assert_eq!(conv(DType::F8E5M2Fnuz, &[0x40, 0x7f], 2), [1.0, 57344.0]);
        assert_eq!(conv(DType::F8E8M0, &[127, 130], 2), [1.0, 8.0]);
    }

    #[test]
    fn integers_and_floats() {
        assert_eq!(conv(DType::I8, &[0xff, 0x7f], 2), [-1.0, 127.0]);
        assert_eq!(conv(DType::U8, &[0xff], 1), [255.0]);
        assert_eq!(conv(DType::F64, &2.5f64.to_le_bytes(), 1), [2.5]);
        assert_eq!(conv(DType::I32, &(-7i32).to_le_bytes(), 1), [-7.0]);
    }

    #[test]
    fn size_mismatch_is_an_error() {
        let mut out = [0.0; 3];
        assert!(matches!(
            to_f32_into(DType::F32, &[0; 8], &mut out),
            Err(Error::SizeMismatch {
                expected: 12,
                found: 8,
                ..
            })
        ));
        assert!(matches!(
            to_f32_into(DType::F4, &[0; 1], &mut [0.0; 2]),
            Err(Error::UnsupportedConversion { .. })
        ));
    }
}
