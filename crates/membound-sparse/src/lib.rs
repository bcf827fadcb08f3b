#![doc = include_str!("../README.md")]

pub mod activation;
mod colmajor;
mod colmajor_affine;
mod error;
mod stats;
mod threshold;

pub use colmajor::{ColMajorF16, gemv, sparse_gemv_f32};
pub use colmajor_affine::{AFFINE4_GROUP_SIZES, ColMajorAffine4};
pub use error::{Error, Result};
pub use stats::SparsityStats;
pub use threshold::{active_indices, threshold_for_sparsity};
