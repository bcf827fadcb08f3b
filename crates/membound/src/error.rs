//! The engine's error type.

/// What can go wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading the model file failed.
    #[error(transparent)]
    Tensor(#[from] membound_tensor::Error),
    /// The GPU runtime or a kernel failed.
    #[error(transparent)]
    Gpu(#[from] membound_gpu::GpuError),
    /// A codec rejected its input or spec.
    #[error(transparent)]
    Codec(#[from] membound_codec::Error),
    /// The file is readable but is not a model this engine runs.
    #[error("{path}: {problem}")]
    Model {
        /// The model file.
        path: String,
        /// What is missing or inconsistent.
        problem: String,
    },
    /// A request the model cannot serve (a token id out of range, a
    /// position past the context).
    #[error("{0}")]
    Request(String),
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
