//! ggml block dequantization (to be written).
use crate::{GgmlType, Result};

/// Whether [`dequantize`] handles `ty`.
pub fn supports_dequantize(_ty: GgmlType) -> bool { false }

/// Dequantizes whole blocks of `ty` from `src` into `out`.
pub fn dequantize(_ty: GgmlType, _src: &[u8], _out: &mut [f32]) -> Result<()> { Ok(()) }
