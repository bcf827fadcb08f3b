#![doc = include_str!("../README.md")]

mod convert;
mod cursor;
mod dequant;
mod dtype;
mod error;
pub mod gguf;
pub mod llama2c;
mod open;
pub mod registry;
pub mod safetensors;
mod stats;
mod storage;
mod value;
mod view;

pub use dequant::{dequantize, supports_dequantize};
pub use dtype::{DType, GgmlType};
pub use error::{Error, Result};
pub use gguf::GgufFile;
pub use llama2c::{Llama2cConfig, Llama2cFile, Llama2cTokenizer};
pub use open::open;
pub use safetensors::{OwnedTensor, SafetensorsFile, write_safetensors};
pub use stats::Moments;
pub use value::MetaValue;
pub use view::{Format, TensorSource, TensorView};
