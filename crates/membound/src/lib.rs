//! The membound engine: LLaMA-family models, decoding, evaluation and the
//! studies that compose the lower crates.
//!
//! [`model::CpuLlama`] is the f32 CPU reference decoder; it loads GGUF
//! (`llama` architecture) and llama2.c checkpoints through
//! [`membound_tensor`].

mod error;
pub mod model;

pub use error::{Error, Result};
pub use membound_tensor as tensor;
