//! Element types: the plain dtypes of safetensors and the block formats of GGUF.

use std::fmt;

/// The element type of a tensor, whatever file it came from.
///
/// Plain types hold one element per `size` bytes. Block types
/// ([`DType::Ggml`]) pack a fixed number of elements into a fixed number of
/// bytes; see [`GgmlType::block_size`] and [`GgmlType::type_size`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[non_exhaustive]
pub enum DType {
    /// Boolean, one byte.
    Bool,
    /// Unsigned 8-bit integer.
    U8,
    /// Signed 8-bit integer.
    I8,
    /// Unsigned 16-bit integer.
    U16,
    /// Signed 16-bit integer.
    I16,
    /// Unsigned 32-bit integer.
    U32,
    /// Signed 32-bit integer.
    I32,
    /// Unsigned 64-bit integer.
    U64,
    /// Signed 64-bit integer.
    I64,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// IEEE single precision.
    F32,
    /// IEEE double precision.
    F64,
    /// FP8 with 4 exponent and 3 mantissa bits (OCP "FN": no infinities).
    F8E4M3,
    /// FP8 with 5 exponent and 2 mantissa bits (IEEE-like).
    F8E5M2,
    /// FP8 E4M3, "FNUZ" variant (bias 8, single NaN, no negative zero).
    F8E4M3Fnuz,
    /// FP8 E5M2, "FNUZ" variant (bias 16, single NaN, no negative zero).
    F8E5M2Fnuz,
    /// Power-of-two scale, 8 exponent bits (OCP MX).
    F8E8M0,
    /// OCP MX FP4 (E2M1), two per byte.
    F4,
    /// OCP MX FP6 E2M3, packed.
    F6E2M3,
    /// OCP MX FP6 E3M2, packed.
    F6E3M2,
    /// Complex number of two f32.
    C64,
    /// A GGUF/ggml block-quantized type.
    Ggml(GgmlType),
}

impl DType {
    /// Size in bits of one element, for plain types; `None` for block types.
    pub fn bits(self) -> Option<usize> {
        Some(match self {
            DType::F4 => 4,
            DType::F6E2M3 | DType::F6E3M2 => 6,
            DType::Bool
            | DType::U8
            | DType::I8
            | DType::F8E4M3
            | DType::F8E5M2
            | DType::F8E4M3Fnuz
            | DType::F8E5M2Fnuz
            | DType::F8E8M0 => 8,
            DType::U16 | DType::I16 | DType::F16 | DType::BF16 => 16,
            DType::U32 | DType::I32 | DType::F32 => 32,
            DType::U64 | DType::I64 | DType::F64 | DType::C64 => 64,
            DType::Ggml(_) => return None,
        })
    }

    /// Bytes needed to store `numel` elements of this type, or `None` when the
    /// count overflows or does not fill whole blocks (or whole bytes).
    pub fn storage_bytes(self, numel: u64) -> Option<u64> {
        match self {
            DType::Ggml(t) => {
                let bs = t.block_size() as u64;
                if numel % bs != 0 {
                    return None;
                }
                (numel / bs).checked_mul(t.type_size() as u64)
            }
            other => {
                let bits = numel.checked_mul(other.bits()? as u64)?;
                (bits % 8 == 0).then_some(bits / 8)
            }
        }
    }

    /// The name used in files and on screen (`F16`, `BF16`, `Q4_K`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::Bool => "BOOL",
            DType::U8 => "U8",
            DType::I8 => "I8",
            DType::U16 => "U16",
            DType::I16 => "I16",
            DType::U32 => "U32",
            DType::I32 => "I32",
            DType::U64 => "U64",
            DType::I64 => "I64",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::F32 => "F32",
            DType::F64 => "F64",
            DType::F8E4M3 => "F8_E4M3",
            DType::F8E5M2 => "F8_E5M2",
            DType::F8E4M3Fnuz => "F8_E4M3FNUZ",
            DType::F8E5M2Fnuz => "F8_E5M2FNUZ",
            DType::F8E8M0 => "F8_E8M0",
            DType::F4 => "F4",
            DType::F6E2M3 => "F6_E2M3",
            DType::F6E3M2 => "F6_E3M2",
            DType::C64 => "C64",
            DType::Ggml(t) => t.name(),
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

macro_rules! ggml_types {
    ($( $(#[$doc:meta])* $variant:ident = $id:literal, $name:literal, $block:expr, $bytes:expr;)*) => {
        /// A ggml tensor type as stored in GGUF, with its published block geometry.
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
        #[non_exhaustive]
        pub enum GgmlType {
            $( $(#[$doc])* $variant, )*
        }

        impl GgmlType {
            /// Every type this crate knows, in id order.
            pub const ALL: &'static [GgmlType] = &[$(GgmlType::$variant,)*];

            /// The type for a GGUF `ggml_type` id, if it is one ggml defines.
            pub fn from_id(id: u32) -> Option<Self> {
                match id { $($id => Some(GgmlType::$variant),)* _ => None }
            }

            /// The GGUF `ggml_type` id.
            pub fn id(self) -> u32 {
                match self { $(GgmlType::$variant => $id,)* }
            }

            /// ggml's name for the type.
            pub fn name(self) -> &'static str {
                match self { $(GgmlType::$variant => $name,)* }
            }

            /// Elements per block.
            pub fn block_size(self) -> usize {
                match self { $(GgmlType::$variant => $block,)* }
            }

            /// Bytes per block.
            pub fn type_size(self) -> usize {
                match self { $(GgmlType::$variant => $bytes,)* }
            }
        }
    };
}

const QK_K: usize = 256;

ggml_types! {
    /// IEEE single precision.
    F32 = 0, "F32", 1, 4;
    /// IEEE half precision.
    F16 = 1, "F16", 1, 2;
    /// 32 4-bit codes with one f16 scale: `x = d * (q - 8)`.
    Q4_0 = 2, "Q4_0", 32, 2 + 16;
    /// 32 4-bit codes with f16 scale and min: `x = d * q + m`.
    Q4_1 = 3, "Q4_1", 32, 2 + 2 + 16;
    /// 32 5-bit codes with one f16 scale: `x = d * (q - 16)`.
    Q5_0 = 6, "Q5_0", 32, 2 + 4 + 16;
    /// 32 5-bit codes with f16 scale and min.
    Q5_1 = 7, "Q5_1", 32, 2 + 2 + 4 + 16;
    /// 32 8-bit codes with one f16 scale.
    Q8_0 = 8, "Q8_0", 32, 2 + 32;
    /// 32 8-bit codes with f16 scale and f16 sum (an activation format).
    Q8_1 = 9, "Q8_1", 32, 2 + 2 + 32;
    /// K-quant, 2 bits, 16 sub-blocks of 16 with 4-bit scales and mins.
    Q2_K = 10, "Q2_K", QK_K, QK_K / 16 + QK_K / 4 + 2 + 2;
    /// K-quant, 3 bits, 16 sub-blocks of 16 with 6-bit scales.
    Q3_K = 11, "Q3_K", QK_K, QK_K / 8 + QK_K / 4 + 12 + 2;
    /// K-quant, 4 bits, 8 sub-blocks of 32 with 6-bit scales and mins.
    Q4_K = 12, "Q4_K", QK_K, 2 + 2 + 12 + QK_K / 2;
    /// K-quant, 5 bits, 8 sub-blocks of 32 with 6-bit scales and mins.
    Q5_K = 13, "Q5_K", QK_K, 2 + 2 + 12 + QK_K / 8 + QK_K / 2;
    /// K-quant, 6 bits, 16 sub-blocks of 16 with 8-bit scales.
    Q6_K = 14, "Q6_K", QK_K, QK_K / 2 + QK_K / 4 + QK_K / 16 + 2;
    /// K-quant, 8 bits with an f32 scale (an activation format).
    Q8_K = 15, "Q8_K", QK_K, 4 + QK_K + QK_K / 16 * 2;
    /// i-quant, 2.06 bits.
    IQ2_XXS = 16, "IQ2_XXS", QK_K, 2 + QK_K / 8 * 2;
    /// i-quant, 2.31 bits.
    IQ2_XS = 17, "IQ2_XS", QK_K, 2 + QK_K / 8 * 2 + QK_K / 32;
    /// i-quant, 3.06 bits.
    IQ3_XXS = 18, "IQ3_XXS", QK_K, 2 + 3 * QK_K / 8;
    /// i-quant, 1.56 bits.
    IQ1_S = 19, "IQ1_S", QK_K, 2 + QK_K / 8 + QK_K / 16;
    /// Non-linear 4-bit, blocks of 32.
    IQ4_NL = 20, "IQ4_NL", 32, 2 + 16;
    /// i-quant, 3.44 bits.
    IQ3_S = 21, "IQ3_S", QK_K, 2 + QK_K / 4 + QK_K / 32 + QK_K / 8 + QK_K / 64;
    /// i-quant, 2.5 bits.
    IQ2_S = 22, "IQ2_S", QK_K, 2 + QK_K / 4 + QK_K / 32 + QK_K / 32;
    /// Non-linear 4-bit with 6-bit sub-block scales.
    IQ4_XS = 23, "IQ4_XS", QK_K, 2 + 2 + QK_K / 64 + QK_K / 2;
    /// Signed 8-bit integer.
    I8 = 24, "I8", 1, 1;
    /// Signed 16-bit integer.
    I16 = 25, "I16", 1, 2;
    /// Signed 32-bit integer.
    I32 = 26, "I32", 1, 4;
    /// Signed 64-bit integer.
    I64 = 27, "I64", 1, 8;
    /// IEEE double precision.
    F64 = 28, "F64", 1, 8;
    /// i-quant, 1.75 bits.
    IQ1_M = 29, "IQ1_M", QK_K, QK_K / 8 + QK_K / 16 + QK_K / 32;
    /// bfloat16.
    BF16 = 30, "BF16", 1, 2;
    /// Ternary, 1.69 bits.
    TQ1_0 = 34, "TQ1_0", QK_K, (QK_K - 4 * QK_K / 64) / 5 + QK_K / 64 + 2;
    /// Ternary, 2.06 bits.
    TQ2_0 = 35, "TQ2_0", QK_K, QK_K / 4 + 2;
    /// OCP MX FP4 with an E8M0 shared exponent per 32.
    MXFP4 = 39, "MXFP4", 32, 1 + 16;
}

impl GgmlType {
    /// The plain [`DType`] for ggml's unquantized types, or `DType::Ggml` for
    /// block formats.
    pub fn to_dtype(self) -> DType {
        match self {
            GgmlType::F32 => DType::F32,
            GgmlType::F16 => DType::F16,
            GgmlType::BF16 => DType::BF16,
            GgmlType::F64 => DType::F64,
            GgmlType::I8 => DType::I8,
            GgmlType::I16 => DType::I16,
            GgmlType::I32 => DType::I32,
            GgmlType::I64 => DType::I64,
            q => DType::Ggml(q),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        for &t in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
        }
        assert_eq!(GgmlType::from_id(4), None, "Q4_2 was removed from ggml");
        assert_eq!(GgmlType::from_id(40), None);
    }

    #[test]
    fn published_block_sizes() {
        // Sizes from ggml.c's type_traits table.
        let expect = [
            (GgmlType::Q4_0, 32, 18),
            (GgmlType::Q4_1, 32, 20),
            (GgmlType::Q5_0, 32, 22),
            (GgmlType::Q5_1, 32, 24),
            (GgmlType::Q8_0, 32, 34),
            (GgmlType::Q2_K, 256, 84),
            (GgmlType::Q3_K, 256, 110),
            (GgmlType::Q4_K, 256, 144),
            (GgmlType::Q5_K, 256, 176),
            (GgmlType::Q6_K, 256, 210),
            (GgmlType::Q8_K, 256, 292),
        ];
        for (t, b, s) in expect {
            assert_eq!((t.block_size(), t.type_size()), (b, s), "{t:?}");
        }
    }

    #[test]
    fn storage_bytes_checks_blocks_and_overflow() {
        assert_eq!(DType::F16.storage_bytes(3), Some(6));
        assert_eq!(DType::F4.storage_bytes(3), None);
        assert_eq!(DType::Ggml(GgmlType::Q4_0).storage_bytes(64), Some(36));
        assert_eq!(DType::Ggml(GgmlType::Q4_0).storage_bytes(33), None);
        assert_eq!(DType::F64.storage_bytes(u64::MAX / 2), None);
    }
}
