//! The one error type of this crate.

/// What can go wrong while parsing a spec, encoding or decoding.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A codec spec that does not parse or names unknown settings.
    #[error("codec spec {spec:?}: {problem}")]
    Spec {
        /// The spec as given.
        spec: String,
        /// What is wrong, with the accepted values.
        problem: String,
    },
    /// Input the codec cannot encode (NaN or Inf, wrong length).
    #[error("{codec}: {problem}")]
    Input {
        /// The codec's spec.
        codec: String,
        /// What is wrong with the input, e.g. the index of a NaN.
        problem: String,
    },
    /// An encoded form that does not match what its spec promises.
    #[error("{codec}: encoded part {part:?}: {problem}")]
    Encoded {
        /// The codec's spec.
        codec: String,
        /// The part at fault.
        part: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
