//! Affine GEMV in MLX's layout (`shaders/gemv_affine.wgsl`): `y = Ŵ·x` with
//! `Ŵ[r, k] = q[r, k]·scale[r, g] + bias[r, g]`, straight from an
//! [`AffineCodec`] encoding.

use std::sync::Arc;

use half::{bf16, f16};
use membound_codec::{AffineCodec, AffineParts, Encoded, Group, ScaleDType};

use crate::buffer::{GpuBuffer, GpuVector};
use crate::context::GpuContext;
use crate::dispatch::{Dispatch, Workgroups};
use crate::error::{GpuError, Result};
use crate::pipeline::{Binding, Pipeline, PipelineSpec};
use crate::shaders::GEMV_AFFINE;

/// Code widths the quantized kernels read.
pub const KERNEL_BITS: &[u32] = &[2, 3, 4, 8];

/// Rows each workgroup of the quantized kernels computes.
pub(crate) const ROWS_PER_WORKGROUP: usize = 4;

/// Most threads per workgroup of the quantized kernels.
pub(crate) const MAX_WORKGROUP_SIZE: u32 = 256;

const BINDINGS: &[Binding] = &[
    Binding::Uniform,
    Binding::Storage,
    Binding::Storage,
    Binding::Storage,
    Binding::StorageReadWrite,
];

/// How rows of packed codes are laid out for the quantized kernels: MLX's
/// code stream of each row, padded with zero words to whole chunks (what a
/// thread loads from a row at once).
#[derive(Clone, Copy, Debug)]
pub(crate) struct CodeRows {
    /// Words per row in the codec's layout.
    pub words_per_row: usize,
    /// Chunks per row.
    pub chunks: usize,
    /// Chunks without a column at or past `cols`.
    pub full_chunks: usize,
    /// Row stride in 16-byte vectors.
    pub stride: usize,
}

impl CodeRows {
    /// The layout of rows of `cols` codes of `bits` bits (2, 3, 4 or 8).
    pub fn new(what: &str, bits: u32, cols: usize) -> Result<Self> {
        // Codes per chunk and 16-byte vectors per chunk.
        let (codes, vectors) = match bits {
            2 => (64, 1),
            3 => (128, 3),
            4 => (32, 1),
            8 => (16, 1),
            _ => {
                return Err(GpuError::invalid(
                    what,
                    format!("{bits}-bit codes; the kernels read {KERNEL_BITS:?}"),
                ));
            }
        };
        // Code indices, plus a chunk of slack, must fit the kernel's u32 math.
        if cols == 0 || cols > (u32::MAX - 256) as usize {
            return Err(GpuError::invalid(
                what,
                format!("{cols} columns; the kernels take 1 to 2^32 - 257"),
            ));
        }
        let chunks = cols.div_ceil(codes);
        Ok(Self {
            words_per_row: membound_codec::pack::words_for(cols, bits),
            chunks,
            full_chunks: cols / codes,
            stride: chunks * vectors,
        })
    }

    /// Bytes of one padded row.
    pub fn row_bytes(&self) -> u64 {
        self.stride as u64 * 16
    }

    /// The padded rows `first..first + rows` of `words` (`words_per_row` a
    /// row) into a new storage buffer.
    pub fn upload(
        &self,
        ctx: &GpuContext,
        name: &str,
        words: &[u32],
        first: usize,
        rows: usize,
    ) -> Result<GpuBuffer> {
        let row_len = self.words_per_row * 4;
        let row_bytes = self.row_bytes() as usize;
        // Only each row's words are written: the padding keeps the zeros a
        // buffer mapped at creation starts with.
        GpuBuffer::with_contents(
            ctx,
            name,
            (rows * row_bytes) as u64,
            wgpu::BufferUsages::STORAGE,
            |mut view| {
                for r in 0..rows {
                    let src = &words[(first + r) * self.words_per_row..][..self.words_per_row];
                    let at = r * row_bytes;
                    view.slice(at..at + row_len)
                        .copy_from_slice(bytemuck::cast_slice(src));
                }
            },
        )
    }
}

/// Rows per weight block: as many as fit the device's storage-binding
/// limit given each row's bytes in every per-row buffer, and the kernel's
/// u32 indexing of the code vectors.
pub(crate) fn rows_per_block(
    ctx: &GpuContext,
    name: &str,
    what: &str,
    rows: usize,
    layout: &CodeRows,
    per_row_bytes: &[u64],
) -> Result<usize> {
    let limits = ctx.limits();
    let max_block = limits
        .max_storage_buffer_binding_size
        .min(limits.max_buffer_size);
    let widest = per_row_bytes
        .iter()
        .copied()
        .chain([layout.row_bytes()])
        .max()
        .unwrap_or(0)
        .max(1);
    let fit = (max_block / widest) as usize;
    if fit == 0 {
        return Err(GpuError::BufferTooLarge {
            name: format!("{name} (one row)"),
            size: widest,
            limit_name: "max_storage_buffer_binding_size",
            limit: max_block,
            adapter: ctx.adapter().name.clone(),
        });
    }
    let fit = fit.min(rows);
    if u32::try_from(fit * layout.stride).is_err() {
        return Err(GpuError::invalid(
            what,
            "a weight block exceeds 2^32 vectors".to_owned(),
        ));
    }
    Ok(fit)
}

/// Threads per workgroup for rows of `chunks` chunks: the chunk count
/// rounded up to a power of two within 64..=256, then within what the
/// device allows for `shared_bytes(threads)` bytes of workgroup memory.
pub(crate) fn workgroup_size(
    ctx: &GpuContext,
    chunks: usize,
    shared_bytes: impl Fn(u32) -> u32,
) -> u32 {
    let wanted = chunks
        .next_power_of_two()
        .clamp(64, MAX_WORKGROUP_SIZE as usize) as u32;
    let l = ctx.limits();
    let mut wg = 1 << wanted
        .min(l.max_compute_invocations_per_workgroup)
        .min(l.max_compute_workgroup_size_x)
        .max(1)
        .ilog2();
    while wg > 1 && shared_bytes(wg) > l.max_compute_workgroup_storage_size {
        wg /= 2;
    }
    wg
}

/// Checks that a workgroup size is a power of two the device allows.
pub(crate) fn check_workgroup_size(
    ctx: &GpuContext,
    what: &str,
    wg: u32,
    shared_bytes: u32,
) -> Result<()> {
    let l = ctx.limits();
    // Threads 0..ROWS write the rows' sums.
    if !wg.is_power_of_two()
        || wg < ROWS_PER_WORKGROUP as u32
        || wg > l.max_compute_invocations_per_workgroup
        || wg > l.max_compute_workgroup_size_x
        || shared_bytes > l.max_compute_workgroup_storage_size
    {
        return Err(GpuError::invalid(
            what,
            format!(
                "workgroup size {wg} must be a power of two from {ROWS_PER_WORKGROUP} within the \
                 device's limits ({} threads, {} bytes of workgroup memory; {shared_bytes} needed)",
                l.max_compute_invocations_per_workgroup.min(l.max_compute_workgroup_size_x),
                l.max_compute_workgroup_storage_size
            ),
        ));
    }
    Ok(())
}

/// Checks `x` and `y` against a `rows × cols` kernel.
pub(crate) fn check_vectors(
    what: &str,
    rows: usize,
    cols: usize,
    x: &GpuVector,
    y: &GpuVector,
) -> Result<()> {
    if x.len() < cols {
        return Err(GpuError::invalid(
            what,
            format!(
                "input `{}` has {} values, needs {cols}",
                x.buffer().name(),
                x.len()
            ),
        ));
    }
    if y.len() < rows {
        return Err(GpuError::invalid(
            what,
            format!(
                "output `{}` has {} values, needs {rows}",
                y.buffer().name(),
                y.len()
            ),
        ));
    }
    if x.buffer().raw() == y.buffer().raw() {
        return Err(GpuError::invalid(
            what,
            format!(
                "input and output are the same buffer `{}`",
                x.buffer().name()
            ),
        ));
    }
    Ok(())
}

/// A uniform buffer holding eight u32 parameters.
pub(crate) fn params_buffer(ctx: &GpuContext, name: &str, params: [u32; 8]) -> Result<GpuBuffer> {
    GpuBuffer::from_bytes(
        ctx,
        &format!("{name} params"),
        bytemuck::bytes_of(&params),
        wgpu::BufferUsages::UNIFORM,
    )
}

/// The name of rows `first..first + rows` of a matrix split into blocks.
pub(crate) fn block_name(name: &str, first: usize, rows: usize, total: usize) -> String {
    if rows == total {
        name.to_owned()
    } else {
        format!("{name}[rows {first}..{}]", first + rows)
    }
}

/// Rows of the matrix held in one set of device buffers.
#[derive(Debug)]
struct Block {
    weights: GpuBuffer,
    scale_bias: GpuBuffer,
    params: GpuBuffer,
    rows: usize,
}

/// An affine-quantized matrix uploaded once in MLX's layout, and the
/// pipeline that multiplies it by a vector.
///
/// Codes keep MLX's packing (each row's words as the codec wrote them,
/// padded with zero words to a multiple of 16 bytes, or of 48 for 3-bit
/// codes); a group's scale and bias share one u32 (two f16, or two bf16)
/// or take two (f32). Bits 2, 3, 4 and 8 and every grouping (32, 64, 128,
/// `row`, `tensor`) are supported. A matrix larger than the device's
/// storage-binding limit is split into row blocks, one dispatch each.
#[derive(Debug)]
pub struct AffineGemv {
    name: String,
    rows: usize,
    cols: usize,
    codec: AffineCodec,
    layout: CodeRows,
    /// Scale/bias entries per row (1 for `row` and `tensor`).
    groups: usize,
    blocks: Vec<Block>,
    pipeline: Arc<Pipeline>,
    workgroup_size: u32,
}

impl AffineGemv {
    /// Output rows each workgroup computes.
    pub const ROWS_PER_WORKGROUP: usize = ROWS_PER_WORKGROUP;

    /// Checks `encoded` against `codec` (spec, shapes, dtypes, finite
    /// scales) and uploads it. `name` (the tensor's) labels the buffers and
    /// every error about them.
    pub fn new(
        ctx: &GpuContext,
        name: &str,
        codec: &AffineCodec,
        encoded: &Encoded,
    ) -> Result<Self> {
        let what = format!("affine GEMV `{name}`");
        let parts = codec
            .parts(encoded)
            .map_err(|e| GpuError::invalid(&what, e.to_string()))?;
        let AffineParts {
            layout: l,
            words,
            scales,
            biases,
        } = parts;
        let (rows, cols) = (l.rows, l.cols);
        if rows == 0 || u32::try_from(rows).is_err() {
            return Err(GpuError::invalid(
                &what,
                format!("{rows}×{cols}: the kernel takes 1 to 2^32 - 1 rows"),
            ));
        }
        let layout = CodeRows::new(&what, codec.bits, cols)?;
        debug_assert_eq!(layout.words_per_row, l.words_per_row);

        // Scale/bias entries per row, their stride between rows, and the
        // group size the kernel divides by (any value ≥ cols for one group).
        let (groups, group_stride, group) = match codec.group {
            Group::Size(g) => (cols.div_ceil(g), cols.div_ceil(g), g as f64),
            Group::Row => (1, 1, f64::from(1u32 << 31)),
            Group::Tensor => (1, 0, f64::from(1u32 << 31)),
        };
        let entry_words = match codec.scale {
            ScaleDType::F16 | ScaleDType::BF16 => 1,
            ScaleDType::F32 => 2,
        };
        let sb_row_bytes = (group_stride * entry_words * 4) as u64;
        if u32::try_from(rows * group_stride * entry_words).is_err() {
            return Err(GpuError::invalid(
                &what,
                "scales and biases exceed 2^32 words".to_owned(),
            ));
        }
        let rows_per_block = rows_per_block(ctx, name, &what, rows, &layout, &[sb_row_bytes])?;

        let wg = workgroup_size(ctx, layout.chunks, |wg| wg * 16);
        let pipeline = Self::pipeline(ctx, codec, group, wg)?;

        let mut blocks = Vec::new();
        let mut first = 0;
        while first < rows {
            let block_rows = rows_per_block.min(rows - first);
            let block_name = block_name(name, first, block_rows, rows);
            let weights = layout.upload(ctx, &block_name, &words, first, block_rows)?;
            // One entry for the whole tensor, else the block's rows' groups.
            let entries = if group_stride == 0 {
                0..1
            } else {
                first * group_stride..(first + block_rows) * group_stride
            };
            let sb = pack_scale_bias(codec.scale, &scales[entries.clone()], &biases[entries]);
            let scale_bias = GpuBuffer::from_bytes(
                ctx,
                &format!("{block_name} scales and biases"),
                bytemuck::cast_slice(&sb),
                wgpu::BufferUsages::STORAGE,
            )?;
            let params = params_buffer(
                ctx,
                &block_name,
                [
                    block_rows as u32,
                    cols as u32,
                    layout.stride as u32,
                    first as u32,
                    layout.chunks as u32,
                    layout.full_chunks as u32,
                    groups as u32,
                    group_stride as u32,
                ],
            )?;
            blocks.push(Block {
                weights,
                scale_bias,
                params,
                rows: block_rows,
            });
            first += block_rows;
        }

        Ok(Self {
            name: name.to_owned(),
            rows,
            cols,
            codec: *codec,
            layout,
            groups,
            blocks,
            pipeline,
            workgroup_size: wg,
        })
    }

    fn pipeline(ctx: &GpuContext, codec: &AffineCodec, group: f64, wg: u32) -> Result<Arc<Pipeline>> {
        let scale_kind = match codec.scale {
            ScaleDType::F16 => 0.0,
            ScaleDType::BF16 => 1.0,
            ScaleDType::F32 => 2.0,
        };
        let entry = if ctx.features().subgroups {
            "gemv_affine_subgroup"
        } else {
            "gemv_affine"
        };
        ctx.pipeline(&PipelineSpec {
            shader: GEMV_AFFINE,
            entry,
            constants: &[
                ("WG", f64::from(wg)),
                ("BITS", f64::from(codec.bits)),
                ("GROUP", group),
                ("SCALE_KIND", scale_kind),
            ],
            bindings: BINDINGS,
        })
    }

    /// Uses `wg` threads per workgroup (a power of two the device allows)
    /// in dispatches bound from now on, instead of the size chosen from the
    /// row length: for tuning and benchmarks.
    pub fn set_workgroup_size(&mut self, ctx: &GpuContext, wg: u32) -> Result<()> {
        check_workgroup_size(ctx, &format!("affine GEMV `{}`", self.name), wg, wg * 16)?;
        let group = match self.codec.group {
            Group::Size(g) => g as f64,
            Group::Row | Group::Tensor => f64::from(1u32 << 31),
        };
        self.pipeline = Self::pipeline(ctx, &self.codec, group, wg)?;
        self.workgroup_size = wg;
        Ok(())
    }

    /// Binds the matrix to input `x` (at least `cols` values) and output `y`
    /// (at least `rows` values). Build it once and record it as often as
    /// wanted.
    pub fn bind(&self, ctx: &GpuContext, x: &GpuVector, y: &GpuVector) -> Result<Dispatch> {
        let what = format!("affine GEMV `{}`", self.name);
        check_vectors(&what, self.rows, self.cols, x, y)?;
        let mut dispatch = Dispatch::new();
        for block in &self.blocks {
            let bind_group = self.pipeline.bind(
                ctx,
                &[
                    &block.params,
                    &block.weights,
                    &block.scale_bias,
                    x.buffer(),
                    y.buffer(),
                ],
            )?;
            let workgroups = block.rows.div_ceil(ROWS_PER_WORKGROUP) as u32;
            let grid = ctx.grid_1d(&what, workgroups)?;
            dispatch.push(
                Arc::clone(&self.pipeline),
                bind_group,
                Workgroups::Direct(grid),
            );
        }
        Ok(dispatch)
    }

    /// Binds, records and submits `y = Ŵ·x` without waiting.
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

    /// The codec whose encoding this holds.
    pub fn codec(&self) -> &AffineCodec {
        &self.codec
    }

    /// Threads per workgroup.
    pub fn workgroup_size(&self) -> u32 {
        self.workgroup_size
    }

    /// Number of weight blocks (1 unless the matrix exceeded a binding limit).
    pub fn blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Bytes of packed codes on the device, row padding included.
    pub fn code_bytes(&self) -> u64 {
        self.rows as u64 * self.layout.row_bytes()
    }

    /// Bytes of scales and biases on the device.
    pub fn scale_bytes(&self) -> u64 {
        self.blocks.iter().map(|b| b.scale_bias.size()).sum()
    }

    /// Bytes of weights on the device: codes and scales and biases.
    pub fn weight_bytes(&self) -> u64 {
        self.code_bytes() + self.scale_bytes()
    }

    /// Bytes one call reads from memory: every code (with row padding),
    /// scale and bias, and x once. Workgroups re-read x and scales, but from
    /// cache; y's writes are not counted.
    pub fn bytes_read(&self) -> u64 {
        self.weight_bytes() + (self.cols * 4) as u64
    }

    /// Scale/bias entries per row.
    pub fn groups(&self) -> usize {
        self.groups
    }
}

/// Scales and biases as the kernel reads them: one u32 per group with the
/// scale in its low half (f16, bf16), or two u32 (f32). The values came
/// from the scale type, so converting back is exact.
fn pack_scale_bias(dtype: ScaleDType, scales: &[f32], biases: &[f32]) -> Vec<u32> {
    let pairs = scales.iter().zip(biases);
    match dtype {
        ScaleDType::F16 => pairs
            .map(|(&s, &b)| {
                u32::from(f16::from_f32(s).to_bits()) | u32::from(f16::from_f32(b).to_bits()) << 16
            })
            .collect(),
        ScaleDType::BF16 => pairs
            .map(|(&s, &b)| {
                u32::from(bf16::from_f32(s).to_bits())
                    | u32::from(bf16::from_f32(b).to_bits()) << 16
            })
            .collect(),
        ScaleDType::F32 => pairs.flat_map(|(s, b)| [s.to_bits(), b.to_bits()]).collect(),
    }
}
