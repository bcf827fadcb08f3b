//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong while opening, parsing, converting or writing
/// a model file.
///
/// Variants carry enough context (file, tensor or key, offset, expected vs
/// found) to act on the message without a debugger.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The operating system refused to open, map, read or write a file.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The file's format could not be recognised.
    #[error("{path}: not a safetensors, GGUF or llama2.c file ({reason})")]
    UnknownFormat {
        /// The file involved.
        path: PathBuf,
        /// Why each format was ruled out.
        reason: String,
    },

    /// The file ends before a structure it declares.
    #[error("{path}: truncated: {what} needs bytes {start}..{end} but the file has {len}")]
    Truncated {
        /// The file involved.
        path: PathBuf,
        /// The structure being read (a header field, a key, a tensor).
        what: String,
        /// First byte needed.
        start: u64,
        /// One past the last byte needed.
        end: u64,
        /// The file's length.
        len: u64,
    },

    /// A structurally invalid file: the message names the field and the problem.
    #[error("{path}: {what}: {problem}")]
    Malformed {
        /// The file involved.
        path: PathBuf,
        /// The key, tensor or header field at fault.
        what: String,
        /// What is wrong with it.
        problem: String,
    },

    /// A dtype or GGUF tensor type this crate does not know.
    #[error("{path}: tensor {tensor:?}: unknown {kind} {id}")]
    UnknownDType {
        /// The file involved.
        path: PathBuf,
        /// The tensor that declares it.
        tensor: String,
        /// "GGUF tensor type" or "safetensors dtype".
        kind: &'static str,
        /// The raw identifier found in the file.
        id: String,
    },

    /// A dtype that can be read but not converted to f32.
    #[error("tensor {tensor:?}: conversion of {dtype} to f32 is not supported")]
    UnsupportedConversion {
        /// The tensor.
        tensor: String,
        /// Its dtype.
        dtype: String,
    },

    /// A byte buffer whose length does not match the dtype and shape.
    #[error(
        "tensor {tensor:?}: {dtype} with {numel} elements needs {expected} bytes, found {found}"
    )]
    SizeMismatch {
        /// The tensor.
        tensor: String,
        /// Its dtype.
        dtype: String,
        /// Its element count.
        numel: u64,
        /// Bytes required by dtype and shape.
        expected: u64,
        /// Bytes present.
        found: u64,
    },

    /// A tensor name that is not in the file.
    #[error("{path}: no tensor named {name:?}")]
    TensorNotFound {
        /// The file involved.
        path: PathBuf,
        /// The name asked for.
        name: String,
    },

    /// Refusing to write over an input, or an invalid output request.
    #[error("{path}: {problem}")]
    Output {
        /// The output path.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },

    /// Fetching a default model failed.
    #[error("model {model}: {problem}")]
    Fetch {
        /// The model's short name.
        model: String,
        /// What went wrong, with the remedy where one is known.
        problem: String,
    },
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn malformed(
        path: impl Into<PathBuf>,
        what: impl Into<String>,
        problem: impl Into<String>,
    ) -> Self {
        Self::Malformed {
            path: path.into(),
            what: what.into(),
            problem: problem.into(),
        }
    }
}

impl Error {
    /// Names `tensor` in errors raised by tensor-agnostic code.
    pub(crate) fn for_tensor(self, tensor: &str) -> Self {
        match self {
            Error::UnsupportedConversion { dtype, .. } => Error::UnsupportedConversion {
                tensor: tensor.into(),
                dtype,
            },
            Error::SizeMismatch {
                dtype,
                numel,
                expected,
                found,
                ..
            } => Error::SizeMismatch {
                tensor: tensor.into(),
                dtype,
                numel,
                expected,
                found,
            },
            other => other,
        }
    }
}
