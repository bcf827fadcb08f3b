//! The wgpu runtime (device, buffers, pipeline cache, timing) and the
//! wrappers of the WGSL mat-vec kernels in the workspace's `shaders/`.
//!
//! This crate is filled by the GPU-kernel issue. Nothing is public yet.
