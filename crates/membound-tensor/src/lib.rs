#![doc = include_str!("../README.md")]

mod dequant;
mod dtype;
mod error;

pub use dequant::{dequantize, supports_dequantize};
pub use dtype::{DType, GgmlType};
pub use error::{Error, Result};
