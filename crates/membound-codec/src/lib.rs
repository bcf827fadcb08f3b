//! Weight quantization codecs behind one trait, bit packing, and error
//! metrics (SQNR, bits/weight, kurtosis).
//!
//! Every codec encodes a row-major f32 [`Matrix`] into a self-describing
//! [`Encoded`] form whose parts are stored at the precision they are counted
//! at, so [`Encoded::bits_per_weight`] is exact by construction. Codecs are
//! named by parsable specs such as `affine:bits=4,group=64`; see
//! [`codec_from_spec`].
#![doc = include_str!("../README.md")]

mod absmax;
mod affine;
mod awq;
mod codec;
mod dct;
mod error;
mod gptq;
mod kmeans;
mod kron;
mod lowrank;
pub mod metrics;
mod nf4;
pub mod pack;
mod poly;
mod spec;
mod vq;

pub use absmax::AbsmaxCodec;
pub use affine::{
    AFFINE_BITS, AFFINE_GROUP_SIZES, AffineCodec, AffineLayout, AffineParts, Group, MLX_SCALE_EPS,
    ScaleDType, mlx_scale_bias,
};
pub use awq::{AwqChoice, AwqStats, awq_scales, awq_search, scale_columns};
pub use codec::{Codec, Encoded, Matrix, Part, PartDType};
pub use error::{Error, Result};
pub use gptq::{GptqOptions, Hessian, gptq, hessian_error};
pub use nf4::{NF4_LEVELS, Nf4Codec};
pub use spec::Spec;

/// The codec names [`codec_from_spec`] accepts.
pub const CODEC_NAMES: &[&str] = &[
    "affine",
    "absmax",
    "nf4",
    "kmeans",
    "vq",
    "poly",
    "polymse",
    "positional",
    "svd",
    "dct",
    "kron",
];

/// Builds the codec a spec names.
pub fn codec_from_spec(text: &str) -> Result<Box<dyn Codec>> {
    let spec = Spec::parse(text)?;
    match spec.name.as_str() {
        "affine" => affine::from_spec(spec),
        "absmax" => absmax::from_spec(spec),
        "nf4" => nf4::from_spec(spec),
        "kmeans" => kmeans::from_spec(spec),
        "vq" => vq::from_spec(spec),
        "poly" | "polymse" | "positional" => poly::from_spec(spec),
        "svd" => lowrank::from_spec(spec),
        "dct" => dct::from_spec(spec),
        "kron" => kron::from_spec(spec),
        other => Err(Error::Spec {
            problem: format!("unknown codec {other:?}; known: {}", CODEC_NAMES.join(", ")),
            spec: spec.text,
        }),
    }
}

/// Decodes any encoded form, using the spec it carries.
pub fn decode(e: &Encoded) -> Result<Vec<f32>> {
    codec_from_spec(&e.spec)?.decode(e)
}
