//! Activation statistics, threshold calibration, masks, and the scalar
//! column-major sparse mat-vec that is the reference for the GPU kernels.
//!
//! This crate is filled by the GPU-kernel and sparsity issues. Nothing is
//! public yet.
