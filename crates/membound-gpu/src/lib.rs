#![doc = include_str!("../README.md")]

mod buffer;
mod context;
mod dispatch;
mod error;
pub mod kernels;
mod pipeline;
pub mod shaders;
mod timing;

pub use buffer::{GpuBuffer, GpuVector, check_binding_size, check_buffer_size};
pub use context::{
    AdapterSummary, ENV_ADAPTER, ENV_BACKEND, ENV_DISABLE, ENV_SHADER_DIR, GpuContext, GpuFeatures,
    GpuOptions,
};
pub use dispatch::{Dispatch, Workgroups};
pub use error::{GpuError, Result};
pub use kernels::affine::{AffineGemv, KERNEL_BITS, Launch};
pub use kernels::dense::{DenseGemv, WeightDType, dense_gemv_reference};
pub use kernels::fill::{Fill, fill_buffer, random_buffers};
pub use kernels::llama::{AttentionShape, KvCache, KvDType, StepBuffer};
pub use kernels::lut::{LutGemv, LutSource};
pub use kernels::sparse::{
    Compaction, SparseDType, SparseGemv, SparseInput, SparseReduce, SparseTuning, Threshold,
};
pub use kernels::stream::{
    STREAM_BLOCK_BYTES, STREAM_NO_MATCH, StreamLaunch, stream_read, stream_read_blocks,
    stream_read_with, stream_read_xors,
};
pub use pipeline::{Binding, Pipeline, PipelineSpec};
pub use shaders::{SHADERS, Shader};
pub use timing::{TimingMethod, Timings};

/// The wgpu this crate is built on, for callers that record their own work.
pub use wgpu;
