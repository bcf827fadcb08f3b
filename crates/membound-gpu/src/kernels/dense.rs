//! Dense GEMV `y = W·x` with f32 or f16 weights (`shaders/gemv_dense.wgsl`).

use std::sync::Arc;

use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::buffer::{GpuBuffer, GpuVector};
use crate::context::GpuContext;
use crate::dispatch::{Dispatch, Workgroups};
use crate::error::{GpuError, Result};
use crate::kernels::Fusion;
use crate::kernels::fill::{Fill, fill_buffer};
use crate::pipeline::{Binding, Pipeline, PipelineSpec};
use crate::shaders::GEMV_DENSE;

/// How dense weights are stored on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightDType {
    /// 4 bytes a weight.
    F32,
    /// 2 bytes a weight (IEEE half), read as packed u32 pairs with
    /// `unpack2x16float`, so no device feature is needed.
    F16,
}

impl WeightDType {
    /// Bytes per weight.
    pub const fn bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 => 2,
        }
    }

    /// Weights per 16-byte chunk, the kernel's unit of loading.
    pub const fn per_chunk(self) -> usize {
        16 / self.bytes()
    }
}

/// Bytes a kernel loads at once from a weight row.
const CHUNK: usize = 16;

const BINDINGS: &[Binding] = &[
    Binding::Uniform,
    Binding::Storage,
    Binding::Storage,
    Binding::StorageReadWrite,
    Binding::Storage,
];

/// Rows of W held in one device buffer (one bind group, one dispatch).
#[derive(Debug)]
struct Block {
    weights: GpuBuffer,
    params: GpuBuffer,
    rows: usize,
}

/// A dense matrix uploaded once, row-major with each row padded to 16
/// bytes, and the pipeline that multiplies it by a vector.
///
/// A matrix larger than the device's storage-binding limit is split into
/// row blocks, one buffer and one dispatch each.
#[derive(Debug)]
pub struct DenseGemv {
    name: String,
    rows: usize,
    cols: usize,
    dtype: WeightDType,
    stride: usize,
    blocks: Vec<Block>,
    pipeline: Arc<Pipeline>,
    workgroup_size: u32,
}

enum Source<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    /// Uniform in `[-a, a]` from a seed, generated on the GPU.
    Synthetic {
        seed: u32,
        a: f32,
    },
}

impl DenseGemv {
    /// Output rows each workgroup computes.
    pub const ROWS_PER_WORKGROUP: usize = 4;

    /// Most threads per workgroup (fewer for short rows or where the
    /// device allows fewer).
    pub const DEFAULT_WORKGROUP_SIZE: u32 = 256;

    /// Uploads `weights` (row-major `rows × cols`, f32) stored as `dtype`
    /// (f16 rounds to nearest). `name` (the tensor's) labels the buffers
    /// and every error about them.
    pub fn new(
        ctx: &GpuContext,
        name: &str,
        rows: usize,
        cols: usize,
        weights: &[f32],
        dtype: WeightDType,
    ) -> Result<Self> {
        Self::upload(
            ctx,
            name,
            rows,
            cols,
            weights.len(),
            Source::F32(weights),
            dtype,
        )
    }

    /// Uploads f16 weights as they are.
    pub fn from_f16(
        ctx: &GpuContext,
        name: &str,
        rows: usize,
        cols: usize,
        weights: &[f16],
    ) -> Result<Self> {
        Self::upload(
            ctx,
            name,
            rows,
            cols,
            weights.len(),
            Source::F16(weights),
            WeightDType::F16,
        )
    }

    /// A `rows × cols` matrix of weights uniform in `[-a, a]`, generated on
    /// the GPU from `seed` (synthetic models of real sizes; no upload).
    pub fn synthetic(
        ctx: &GpuContext,
        name: &str,
        rows: usize,
        cols: usize,
        dtype: WeightDType,
        seed: u32,
        a: f32,
    ) -> Result<Self> {
        Self::upload(
            ctx,
            name,
            rows,
            cols,
            rows.saturating_mul(cols),
            Source::Synthetic { seed, a },
            dtype,
        )
    }

    fn upload(
        ctx: &GpuContext,
        name: &str,
        rows: usize,
        cols: usize,
        len: usize,
        source: Source<'_>,
        dtype: WeightDType,
    ) -> Result<Self> {
        if rows == 0 || cols == 0 || rows.checked_mul(cols) != Some(len) {
            return Err(GpuError::invalid(
                format!("dense GEMV `{name}`"),
                format!("{len} weights do not make a non-empty {rows}×{cols} matrix"),
            ));
        }
        if u32::try_from(cols).is_err() || u32::try_from(rows).is_err() {
            return Err(GpuError::invalid(
                format!("dense GEMV `{name}`"),
                format!("{rows}×{cols} exceeds the kernel's u32 indexing"),
            ));
        }
        let stride = cols.div_ceil(dtype.per_chunk());
        let row_bytes = (stride * CHUNK) as u64;
        let limits = ctx.limits();
        let max_block = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let rows_per_block = (max_block / row_bytes) as usize;
        if rows_per_block == 0 {
            return Err(GpuError::BufferTooLarge {
                name: format!("{name} (one row)"),
                size: row_bytes,
                limit_name: "max_storage_buffer_binding_size",
                limit: max_block,
                adapter: ctx.adapter().name.clone(),
            });
        }
        // The chunk index of the last row must fit the kernel's u32 math.
        if u32::try_from(rows_per_block.min(rows) * stride).is_err() {
            return Err(GpuError::invalid(
                format!("dense GEMV `{name}`"),
                "a weight block exceeds 2^32 chunks".to_owned(),
            ));
        }

        let wg = workgroup_size(ctx, stride);
        let pipeline = ctx.pipeline(&PipelineSpec {
            shader: GEMV_DENSE,
            entry: entry_point(dtype, ctx.features().subgroups),
            constants: &[("WG", f64::from(wg))],
            bindings: BINDINGS,
        })?;

        let mut blocks = Vec::new();
        let mut row_f16 = vec![f16::ZERO; cols];
        let mut first = 0;
        while first < rows {
            let block_rows = rows_per_block.min(rows - first);
            let block_name = if rows_per_block >= rows {
                name.to_owned()
            } else {
                format!("{name}[rows {first}..{}]", first + block_rows)
            };
            let size = block_rows as u64 * row_bytes;
            let weights = if let Source::Synthetic { seed, a } = source {
                let buffer = GpuBuffer::new(ctx, &block_name, size, wgpu::BufferUsages::STORAGE)?;
                let fill = match dtype {
                    WeightDType::F32 => Fill::F32(a),
                    WeightDType::F16 => Fill::F16Pair(a),
                };
                fill_buffer(ctx, &buffer, fill, seed.wrapping_add(first as u32))?;
                buffer
            } else {
                // Only each row's values are written: the padding after them
                // keeps the zeros a buffer mapped at creation starts with.
                GpuBuffer::with_contents(
                    ctx,
                    &block_name,
                    size,
                    wgpu::BufferUsages::STORAGE,
                    |mut view| {
                        for r in 0..block_rows {
                            let values = (first + r) * cols..(first + r + 1) * cols;
                            let bytes: &[u8] = match (&source, dtype) {
                                (Source::F32(w), WeightDType::F32) => {
                                    bytemuck::cast_slice(&w[values])
                                }
                                (Source::F32(w), WeightDType::F16) => {
                                    row_f16.convert_from_f32_slice(&w[values]);
                                    bytemuck::cast_slice(&row_f16)
                                }
                                (Source::F16(w), _) => bytemuck::cast_slice(&w[values]),
                                (Source::Synthetic { .. }, _) => &[],
                            };
                            let at = r * row_bytes as usize;
                            view.slice(at..at + bytes.len()).copy_from_slice(bytes);
                        }
                    },
                )?
            };
            let params: [u32; 4] = [block_rows as u32, cols as u32, stride as u32, first as u32];
            let params = GpuBuffer::uniform(ctx, &format!("{block_name} params"), &params)?;
            blocks.push(Block {
                weights,
                params,
                rows: block_rows,
            });
            first += block_rows;
        }

        Ok(Self {
            name: name.to_owned(),
            rows,
            cols,
            dtype,
            stride,
            blocks,
            pipeline,
            workgroup_size: wg,
        })
    }

    /// Binds the matrix to input `x` (at least `cols` values, allocated to
    /// a multiple of 8 as [`GpuVector`] does) and output `y` (at least
    /// `rows` values). Build it once and record it as often as wanted.
    pub fn bind(&self, ctx: &GpuContext, x: &GpuVector, y: &GpuVector) -> Result<Dispatch> {
        self.bind_fused(ctx, x, None, y, Fusion::default())
    }

    /// [`DenseGemv::bind`] with `fusion` done in the same dispatch: an
    /// RMSNorm of `x` with scale `norm_w` (at least `cols` values), a
    /// residual add into `y`, or SwiGLU of the output halves (`y` then
    /// needs `rows / 2` values).
    pub fn bind_fused(
        &self,
        ctx: &GpuContext,
        x: &GpuVector,
        norm_w: Option<&GpuVector>,
        y: &GpuVector,
        fusion: Fusion,
    ) -> Result<Dispatch> {
        let what = || format!("dense GEMV `{}`", self.name);
        let padded = self.stride * self.dtype.per_chunk();
        if x.len() < self.cols || x.capacity() < padded {
            return Err(GpuError::invalid(
                what(),
                format!(
                    "input `{}` has {} values (capacity {}), needs {} (capacity {padded})",
                    x.buffer().name(),
                    x.len(),
                    x.capacity(),
                    self.cols
                ),
            ));
        }
        let g = fusion.check(
            &what(),
            self.rows,
            self.cols,
            self.blocks.len(),
            x,
            norm_w,
            y,
        )?;
        let pipeline = if fusion == Fusion::default() {
            Arc::clone(&self.pipeline)
        } else {
            let [a, b, c, d] = fusion.constants();
            ctx.pipeline(&PipelineSpec {
                shader: GEMV_DENSE,
                entry: fused_entry_point(self.dtype, ctx.features().subgroups),
                constants: &[("WG", f64::from(self.workgroup_size)), a, b, c, d],
                bindings: BINDINGS,
            })?
        };
        let mut dispatch = Dispatch::new();
        for block in &self.blocks {
            let bind_group = pipeline.bind(
                ctx,
                &[
                    &block.params,
                    &block.weights,
                    x.buffer(),
                    y.buffer(),
                    g.buffer(),
                ],
            )?;
            // With SwiGLU a workgroup takes two gate rows and their up rows.
            let workgroups = if fusion.swiglu {
                (block.rows / 2).div_ceil(Self::ROWS_PER_WORKGROUP / 2)
            } else {
                block.rows.div_ceil(Self::ROWS_PER_WORKGROUP)
            } as u32;
            let grid = ctx.grid_1d(&what(), workgroups)?;
            dispatch.push(Arc::clone(&pipeline), bind_group, Workgroups::Direct(grid));
        }
        Ok(dispatch)
    }

    /// Binds, records and submits `y = W·x` without waiting.
    pub fn run(&self, ctx: &GpuContext, x: &GpuVector, y: &GpuVector) -> Result<()> {
        let dispatch = self.bind(ctx, x, y)?;
        ctx.submit(&[&dispatch])?;
        Ok(())
    }

    /// The tensor's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Output length.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input length.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Storage type of the weights.
    pub fn dtype(&self) -> WeightDType {
        self.dtype
    }

    /// Threads per workgroup chosen for this matrix and device.
    pub fn workgroup_size(&self) -> u32 {
        self.workgroup_size
    }

    /// Number of weight buffers (1 unless the matrix exceeded a binding limit).
    pub fn blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Bytes of weights on the device, row padding included.
    pub fn weight_bytes(&self) -> u64 {
        (self.rows * self.stride * CHUNK) as u64
    }

    /// Bytes one call reads from memory: every weight (with row padding)
    /// and x once. Workgroups re-read x, but from cache; y's writes are not
    /// counted.
    pub fn bytes_read(&self) -> u64 {
        self.weight_bytes() + (self.cols * 4) as u64
    }
}

fn entry_point(dtype: WeightDType, subgroups: bool) -> &'static str {
    match (dtype, subgroups) {
        (WeightDType::F32, false) => "gemv_f32",
        (WeightDType::F16, false) => "gemv_f16",
        (WeightDType::F32, true) => "gemv_f32_subgroup",
        (WeightDType::F16, true) => "gemv_f16_subgroup",
    }
}

/// The fused kernels' entry points (their own, so that the plain ones
/// compile as they did without fusion).
fn fused_entry_point(dtype: WeightDType, subgroups: bool) -> &'static str {
    match (dtype, subgroups) {
        (WeightDType::F32, false) => "gemv_f32_fused",
        (WeightDType::F16, false) => "gemv_f16_fused",
        (WeightDType::F32, true) => "gemv_f32_fused_subgroup",
        (WeightDType::F16, true) => "gemv_f16_fused_subgroup",
    }
}

/// Threads per workgroup for rows of `stride` chunks: the row's chunk count
/// rounded up to a power of two, within 64..=256, so that short rows do not
/// leave most threads idle; then within what the device allows, counting
/// the kernel's 20 bytes of workgroup memory per thread. On an H100 at
/// 49152×576 f16 (72 chunks a row), 128 threads took 25.7 µs, 64 took 29.7
/// and 256 took 35.3; on long rows 128 to 512 were within 3%.
fn workgroup_size(ctx: &GpuContext, stride: usize) -> u32 {
    let wanted = stride
        .next_power_of_two()
        .clamp(64, DenseGemv::DEFAULT_WORKGROUP_SIZE as usize);
    let l = ctx.limits();
    let cap = (wanted as u32)
        .min(l.max_compute_invocations_per_workgroup)
        .min(l.max_compute_workgroup_size_x)
        .min(l.max_compute_workgroup_storage_size / 20)
        .max(1);
    1 << cap.ilog2()
}

/// The scalar reference: `y[r] = Σ_k w[r·cols + k]·x[k]`, accumulated in f64.
pub fn dense_gemv_reference(weights: &[f32], rows: usize, cols: usize, x: &[f32]) -> Vec<f64> {
    assert_eq!(weights.len(), rows * cols, "weights must be rows × cols");
    assert!(x.len() >= cols, "x needs cols values");
    weights
        .chunks_exact(cols)
        .map(|row| {
            row.iter()
                .zip(x)
                .map(|(&w, &v)| f64::from(w) * f64::from(v))
                .sum()
        })
        .collect()
}
