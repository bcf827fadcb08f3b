//! Kernel wrappers: each uploads its weights once and hands out
//! [`Dispatch`](crate::Dispatch)es bound to activation vectors.

pub mod affine;
pub mod dense;
pub mod fill;
pub mod llama;
pub mod lut;
pub mod sparse;
