//! The membound engine: LLaMA-family models, decoding, evaluation and the
//! studies that compose the lower crates.
//!
//! Model files are read through [`membound_tensor`]; the engine itself is
//! filled by the engine issue.

pub use membound_tensor as tensor;
