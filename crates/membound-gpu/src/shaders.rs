//! The WGSL sources, embedded from the workspace's `shaders/` folder.

/// A WGSL source: its file name (the cache's key, and how errors name it)
/// and its text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shader {
    /// File name in `shaders/`, e.g. `gemv_dense.wgsl`.
    pub name: &'static str,
    /// The WGSL text.
    pub source: &'static str,
}

impl Shader {
    /// A shader from a name and WGSL text (for the table, and for callers
    /// with WGSL of their own). Names must be unique: pipelines are cached
    /// by name.
    pub const fn new(name: &'static str, source: &'static str) -> Self {
        Self { name, source }
    }
}

/// Every shader in `shaders/`, one file per kernel family. A test checks
/// that this table and the folder hold the same files.
pub const SHADERS: &[Shader] = &[
    Shader::new(
        "gemv_dense.wgsl",
        include_str!("../../../shaders/gemv_dense.wgsl"),
    ),
    SPARSE_GEMV,
    SPARSE_REDUCE,
    GEMV_AFFINE,
    GEMV_LUT,
    LLAMA_OPS,
    FILL,
    STREAM_READ,
];

/// Dense GEMV with f32 or f16 weights.
pub const GEMV_DENSE: Shader = SHADERS[0];

/// Activation-sparse GEMV: mask, compaction and column-major mat-vec (f16,
/// 4-bit affine).
pub const SPARSE_GEMV: Shader = Shader::new(
    "sparse_gemv.wgsl",
    include_str!("../../../shaders/sparse_gemv.wgsl"),
);

/// Activation-sparse GEMV, second stage: adds the K-chunks' partial sums
/// and joins their compacted lists.
pub const SPARSE_REDUCE: Shader = Shader::new(
    "sparse_reduce.wgsl",
    include_str!("../../../shaders/sparse_reduce.wgsl"),
);

/// Affine (MLX layout) GEMV: 2, 3, 4 and 8-bit codes, a scale and bias per group.
pub const GEMV_AFFINE: Shader = Shader::new(
    "gemv_affine.wgsl",
    include_str!("../../../shaders/gemv_affine.wgsl"),
);

/// Lookup-table GEMV for the codebook codecs (k-means, NF4, polynomial levels).
pub const GEMV_LUT: Shader = Shader::new(
    "gemv_lut.wgsl",
    include_str!("../../../shaders/gemv_lut.wgsl"),
);

/// The small kernels of a LLaMA decode step: RMSNorm, RoPE,
/// attention, SwiGLU, argmax.
pub const LLAMA_OPS: Shader = Shader::new(
    "llama_ops.wgsl",
    include_str!("../../../shaders/llama_ops.wgsl"),
);

/// Seeded pseudo-random fills, for synthetic models generated on the GPU.
pub const FILL: Shader = Shader::new("fill.wgsl", include_str!("../../../shaders/fill.wgsl"));

/// A plain streaming read, the floor benchmarks compare kernels against.
pub const STREAM_READ: Shader = Shader::new(
    "stream_read.wgsl",
    include_str!("../../../shaders/stream_read.wgsl"),
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_constants_point_at_their_files() {
        assert_eq!(GEMV_DENSE.name, "gemv_dense.wgsl");
        assert_eq!(GEMV_AFFINE.name, "gemv_affine.wgsl");
        assert_eq!(GEMV_LUT.name, "gemv_lut.wgsl");
        let mut names: Vec<_> = SHADERS.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SHADERS.len(), "shader names must be unique");
    }
}
