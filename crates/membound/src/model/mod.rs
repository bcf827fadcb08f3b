//! LLaMA-family decoders.

mod config;
mod cpu;
mod weights;

pub use config::{LlamaConfig, RopeLayout};
pub use cpu::CpuLlama;
pub use weights::{LayerWeights, LlamaWeights};
