//! LLaMA-family decoders.

pub mod bert;
mod config;
mod cpu;
pub mod gpu;
pub mod hf;
mod load;
mod weights;

pub use bert::{Bert, BertConfig};
pub use config::{LlamaConfig, RopeLayout};
pub use cpu::{ActivationHook, CpuLlama, Site};
pub use gpu::{GpuLlama, GpuLlamaOptions, PreparedModel, WeightPlan, prepare};
pub use load::{load_llama, load_quantized};
pub use weights::{LayerWeights, LlamaWeights};

/// Anything that decodes one token at a time: the CPU reference and the GPU
/// engine. Positions start at 0 and must be fed in order; feeding position
/// 0 again starts a new sequence (the KV cache is overwritten in place).
pub trait Decoder {
    /// The model's configuration.
    fn config(&self) -> &LlamaConfig;

    /// Runs `token` at `pos` and returns the next token's logits.
    fn forward(&mut self, token: u32, pos: usize) -> crate::Result<Vec<f32>>;

    /// Runs `token` at `pos` and returns the most likely next token. The
    /// GPU engine computes it on the device and reads back only the id.
    fn forward_argmax(&mut self, token: u32, pos: usize) -> crate::Result<u32> {
        let logits = self.forward(token, pos)?;
        Ok(argmax(&logits))
    }

    /// `n` greedy steps from `token` at `pos` (positions `pos..pos + n`):
    /// the tokens `n` chained calls of [`Decoder::forward_argmax`] give.
    /// The GPU engine runs them without the host between steps
    /// ([`GpuLlama::greedy_resident`](crate::model::GpuLlama::greedy_resident)).
    fn greedy_steps(&mut self, token: u32, pos: usize, n: usize) -> crate::Result<Vec<u32>> {
        greedy_step_by_step(self, token, pos, n)
    }
}

/// `n` chained [`Decoder::forward_argmax`] calls from `token` at `pos`: what
/// [`Decoder::greedy_steps`] does unless a decoder has a faster way.
pub fn greedy_step_by_step<D: Decoder + ?Sized>(
    decoder: &mut D,
    token: u32,
    pos: usize,
    n: usize,
) -> crate::Result<Vec<u32>> {
    let mut out = Vec::with_capacity(n);
    let mut tok = token;
    for i in 0..n {
        tok = decoder.forward_argmax(tok, pos + i)?;
        out.push(tok);
    }
    Ok(out)
}

/// Index of the largest value (the first, on ties; NaN never wins).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] || values[best].is_nan() {
            best = i;
        }
    }
    best as u32
}
