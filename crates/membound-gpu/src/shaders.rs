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
pub const SHADERS: &[Shader] = &[Shader::new(
    "gemv_dense.wgsl",
    include_str!("../../../shaders/gemv_dense.wgsl"),
)];

/// Dense GEMV with f32 or f16 weights.
pub const GEMV_DENSE: Shader = SHADERS[0];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_constants_point_at_their_files() {
        assert_eq!(GEMV_DENSE.name, "gemv_dense.wgsl");
        let mut names: Vec<_> = SHADERS.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SHADERS.len(), "shader names must be unique");
    }
}
