//! The membound engine: LLaMA-family models, decoding, evaluation and the
//! studies that compose the lower crates.
//!
//! [`model::CpuLlama`] is the f32 CPU reference decoder; it loads GGUF
//! (`llama` architecture) and llama2.c checkpoints through
//! [`membound_tensor`].

pub mod bench;
pub mod calibrate;
mod error;
pub mod eval;
pub mod model;
pub mod quantize;
pub mod run;
pub mod sample;
pub mod sparsity;
pub mod study;
pub mod tokenizer;

pub use error::{Error, Result};
pub use membound_codec as codec;
pub use membound_tensor as tensor;
