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
use crate::kernels::Fusion;
use crate::kernels::fill::{Fill, fill_buffer};
use crate::pipeline::{Binding, Pipeline, PipelineSpec};
use crate::shaders::GEMV_AFFINE;

/// Code widths the quantized kernels read.
pub const KERNEL_BITS: &[u32] = &[2, 3, 4, 8];

/// Rows each workgroup of the quantized kernels computes unless told
/// otherwise (4 or 8).
pub(crate) const DEFAULT_ROWS_PER_WORKGROUP: usize = 8;

/// Longest 4-bit row (in codes) that takes the short-row launch (see
/// `AffineGemv::default_launch`).
const SHORT_ROW: usize = 2048;

/// Most threads per workgroup the quantized kernels pick. On an H100, 128
/// matched or beat 256 at 4096×14336 and 14336×4096 for every bit width
/// (e.g. 3-bit affine 21.5 against 22.8 µs and 20.9 against 28.1; 4-bit
/// levels per row 37.3 against 38.3 and 37.5 against 50.4).
pub(crate) const MAX_WORKGROUP_SIZE: u32 = 128;

const BINDINGS: &[Binding] = &[
    Binding::Uniform,
    Binding::Storage,
    Binding::Storage,
    Binding::Storage,
    Binding::StorageReadWrite,
    Binding::Storage,
];

/// How rows of packed codes are laid out for the quantized kernels: MLX's
/// code stream of each row as the codec packed it, padded with zero words to
/// a multiple of 4 words (of 3 words, one 32-code unit, at 3 bits), so that
/// every unit size the kernels take (1, 2 or 4 words; 3 at 3 bits) tiles
/// the row.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CodeRows {
    /// Bits per code.
    pub bits: u32,
    /// Codes per row.
    pub cols: usize,
    /// Words per row in the codec's layout.
    pub words_per_row: usize,
    /// Row stride in u32 words.
    pub stride: usize,
}

impl CodeRows {
    /// The layout of rows of `cols` codes of `bits` bits (2, 3, 4 or 8).
    pub fn new(what: &str, bits: u32, cols: usize) -> Result<Self> {
        if !KERNEL_BITS.contains(&bits) {
            return Err(GpuError::invalid(
                what,
                format!("{bits}-bit codes; the kernels read {KERNEL_BITS:?}"),
            ));
        }
        // Code indices, plus a unit of slack, must fit the kernel's u32 math.
        if cols == 0 || cols > (u32::MAX - 256) as usize {
            return Err(GpuError::invalid(
                what,
                format!("{cols} columns; the kernels take 1 to 2^32 - 257"),
            ));
        }
        let words_per_row = membound_codec::pack::words_for(cols, bits);
        let stride = if bits == 3 {
            cols.div_ceil(32) * 3
        } else {
            words_per_row.next_multiple_of(4)
        };
        Ok(Self {
            bits,
            cols,
            words_per_row,
            stride,
        })
    }

    /// The unit sizes in words the kernels take for these codes.
    pub fn unit_sizes(&self) -> &'static [u32] {
        match self.bits {
            2 => &[1, 2],
            3 => &[3],
            _ => &[1, 2, 4],
        }
    }

    /// `(units, full units)` per row for units of `unit_words` words: all
    /// units, and those without a column at or past `cols`.
    pub fn units(&self, unit_words: u32) -> (usize, usize) {
        let codes = unit_words as usize * 32 / self.bits as usize;
        (self.cols.div_ceil(codes), self.cols / codes)
    }

    /// Bytes of one padded row.
    pub fn row_bytes(&self) -> u64 {
        self.stride as u64 * 4
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
    if u32::try_from((fit * layout.stride).saturating_add(64)).is_err() {
        return Err(GpuError::invalid(
            what,
            "a weight block exceeds 2^32 words".to_owned(),
        ));
    }
    Ok(fit)
}

/// Threads per workgroup for rows of `units` units (or chunks): the count
/// rounded up to a power of two within 64..=128, so that short rows do not
/// leave most threads idle, then within what the device allows for
/// `shared_bytes(threads)` bytes of workgroup memory.
pub(crate) fn workgroup_size(
    ctx: &GpuContext,
    units: usize,
    shared_bytes: impl Fn(u32) -> u32,
) -> u32 {
    let wanted = units
        .next_power_of_two()
        .clamp(64, MAX_WORKGROUP_SIZE as usize) as u32;
    let l = ctx.limits();
    let mut wg = 1
        << wanted
            .min(l.max_compute_invocations_per_workgroup)
            .min(l.max_compute_workgroup_size_x)
            .max(1)
            .ilog2();
    while wg > 8 && shared_bytes(wg) > l.max_compute_workgroup_storage_size {
        wg /= 2;
    }
    wg
}

/// Checks a launch shape: 4 or 8 rows a workgroup, and a workgroup size
/// that is a power of two, at least the rows (threads 0..rows write the
/// sums), within the device's limits.
pub(crate) fn check_launch(
    ctx: &GpuContext,
    what: &str,
    rows: usize,
    wg: u32,
    shared_bytes: u32,
) -> Result<()> {
    if rows != 4 && rows != 8 {
        return Err(GpuError::invalid(
            what,
            format!("{rows} rows a workgroup; the kernels compute 4 or 8"),
        ));
    }
    let l = ctx.limits();
    if !wg.is_power_of_two()
        || wg < rows as u32
        || wg > l.max_compute_invocations_per_workgroup
        || wg > l.max_compute_workgroup_size_x
        || shared_bytes > l.max_compute_workgroup_storage_size
    {
        return Err(GpuError::invalid(
            what,
            format!(
                "workgroup size {wg} must be a power of two from {rows} within the device's \
                 limits ({} threads, {} bytes of workgroup memory; {shared_bytes} needed)",
                l.max_compute_invocations_per_workgroup
                    .min(l.max_compute_workgroup_size_x),
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
    GpuBuffer::uniform(ctx, &format!("{name} params"), &params)
}

/// The name of rows `first..first + rows` of a matrix split into blocks.
pub(crate) fn block_name(name: &str, first: usize, rows: usize, total: usize) -> String {
    if rows == total {
        name.to_owned()
    } else {
        format!("{name}[rows {first}..{}]", first + rows)
    }
}

/// How a quantized kernel is launched: rows and threads per workgroup, and
/// the words of a row each thread takes at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Launch {
    /// Output rows each workgroup computes: 4 or 8.
    pub rows_per_workgroup: usize,
    /// Threads per workgroup: a power of two, at least the rows.
    pub workgroup_size: u32,
    /// Code words of a row a thread takes at once (a unit): for
    /// [`AffineGemv`], 1 or 2 at 2 bits, 3 at 3 bits, 1, 2 or 4 at 4 and 8
    /// bits; for [`LutGemv`](crate::LutGemv), 4 (12 at 3 bits).
    pub unit_words: u32,
}

impl std::fmt::Display for Launch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} rows × {} threads, {}-word units",
            self.rows_per_workgroup, self.workgroup_size, self.unit_words
        )
    }
}

/// Checks a launch against the codes' layout and the device.
pub(crate) fn check_unit(what: &str, layout: &CodeRows, unit_words: u32) -> Result<()> {
    if !layout.unit_sizes().contains(&unit_words) {
        return Err(GpuError::invalid(
            what,
            format!(
                "{unit_words}-word units; {}-bit codes take {:?}",
                layout.bits,
                layout.unit_sizes()
            ),
        ));
    }
    Ok(())
}

/// Rows of the matrix held in one set of device buffers.
#[derive(Debug)]
struct Block {
    weights: GpuBuffer,
    scale_bias: GpuBuffer,
    params: GpuBuffer,
    first: usize,
    rows: usize,
}

/// An affine-quantized matrix uploaded once in MLX's layout, and the
/// pipeline that multiplies it by a vector.
///
/// Codes keep MLX's packing (each row's words as the codec wrote them,
/// padded with zero words to a multiple of 16 bytes, of 12 bytes at 3 bits);
/// a group's scale and bias share one u32 (two f16, or two bf16) or take two
/// (f32). Bits 2, 3, 4 and 8 and every grouping (32, 64, 128, `row`,
/// `tensor`) are supported. A matrix larger than the device's
/// storage-binding limit is split into row blocks, one dispatch each.
#[derive(Debug)]
pub struct AffineGemv {
    name: String,
    rows: usize,
    cols: usize,
    codec: AffineCodec,
    layout: CodeRows,
    /// Scale/bias entries per row (1 for `row` and `tensor`), and the
    /// distance between two rows' first entries (0 for `tensor`).
    groups: usize,
    group_stride: usize,
    blocks: Vec<Block>,
    pipeline: Arc<Pipeline>,
    launch: Launch,
    /// Inputs quantized to 8 bits per block of 32 inside the kernel
    /// ([`AffineGemv::set_q8_activations`]).
    q8: bool,
    /// Row blocks a workgroup of the 8-bit-activation kernel takes.
    q8_blocks: u32,
}

/// Workgroup memory of the affine kernel: two vec4 partial sums a thread.
fn affine_shared_bytes(wg: u32) -> u32 {
    wg * 36
}

impl AffineGemv {
    /// The launch `new` picks for `bits`-bit codes and rows of `cols` codes:
    /// 8 rows a workgroup and units of 16 codes (32 at 3 bits). On an H100
    /// with 128 threads: at 8 bits 16-code units took 29.1 and 27.8 µs
    /// (4096×14336, 14336×4096) against 30.9 and 28.4 with 8 codes; at 2
    /// bits they were within 2% of 32-code units; at 4 bits (14336×4096,
    /// this kernel without its prefetch) 21.7 µs against 36.5 with 8 codes
    /// and 25.6 with 32. 8 rows beat 4 at 2 bits (20.4 and 18.7 µs against
    /// 20.9 and 19.6) and 3 bits.
    ///
    /// Short 4-bit rows (at most [`SHORT_ROW`] codes, SmolLM2's layers) take
    /// 4 rows a workgroup and one-word units instead, which doubles the
    /// workgroups and the threads a row: on an H100 (2026-11-27, `membound
    /// bench kernels --shapes 576x576,3072x576,576x1536,192x576 --weights
    /// affine4 --launch R,T,W`) 576×576, 3072×576, 576×1536 and 192×576
    /// took 3.70, 4.24, 4.35 and 3.60 µs against 4.77, 5.17, 5.01 and 4.70
    /// with the long-row launch,
    /// level with dense f16 (3.71, 4.74, 4.25, 3.53), and this was the best
    /// of 18 launches at every one of those shapes; at 4096×14336 and
    /// 14336×4096 it was 9% slower than the long-row launch (H200).
    fn default_launch(ctx: &GpuContext, bits: u32, cols: usize) -> Launch {
        let short = bits == 4 && cols <= SHORT_ROW;
        let unit_words = match bits {
            2 => 1,
            3 => 3,
            4 if short => 1,
            4 => 2,
            _ => 4,
        };
        let codes = unit_words as usize * 32 / bits as usize;
        Launch {
            rows_per_workgroup: if short { 4 } else { DEFAULT_ROWS_PER_WORKGROUP },
            workgroup_size: workgroup_size(ctx, cols.div_ceil(codes), affine_shared_bytes),
            unit_words,
        }
    }

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
        Self::build(
            ctx,
            name,
            codec,
            l.rows,
            l.cols,
            Some((&words, &scales, &biases)),
            0,
        )
    }

    /// A `rows × cols` matrix of random codes under one f16 scale and bias
    /// (weights in about `[-a, a]`), generated on the GPU from `seed`: the
    /// same layout and bytes as a real encoding, for synthetic models.
    pub fn synthetic(
        ctx: &GpuContext,
        name: &str,
        codec: &AffineCodec,
        rows: usize,
        cols: usize,
        seed: u32,
        a: f32,
    ) -> Result<Self> {
        if codec.scale != ScaleDType::F16 {
            return Err(GpuError::invalid(
                format!("affine GEMV `{name}`"),
                "synthetic weights take f16 scales".to_owned(),
            ));
        }
        let half_levels = ((1u32 << codec.bits) - 1) as f32 / 2.0;
        Self::build(ctx, name, codec, rows, cols, None, seed)?.fill_scales(ctx, a / half_levels, -a)
    }

    fn fill_scales(self, ctx: &GpuContext, scale: f32, bias: f32) -> Result<Self> {
        for block in &self.blocks {
            fill_buffer(ctx, &block.scale_bias, Fill::ConstPair(scale, bias), 0)?;
        }
        Ok(self)
    }

    /// Uploads `data` (codes, scales, biases), or fills the codes with
    /// random bits from `seed` when it is `None`.
    #[allow(clippy::type_complexity)]
    fn build(
        ctx: &GpuContext,
        name: &str,
        codec: &AffineCodec,
        rows: usize,
        cols: usize,
        data: Option<(&[u32], &[f32], &[f32])>,
        seed: u32,
    ) -> Result<Self> {
        let what = format!("affine GEMV `{name}`");
        if rows == 0 || u32::try_from(rows).is_err() {
            return Err(GpuError::invalid(
                &what,
                format!("{rows}×{cols}: the kernel takes 1 to 2^32 - 1 rows"),
            ));
        }
        let layout = CodeRows::new(&what, codec.bits, cols)?;

        // Scale/bias entries per row and their stride between rows.
        let (groups, group_stride) = match codec.group {
            Group::Size(g) => (cols.div_ceil(g), cols.div_ceil(g)),
            Group::Row => (1, 1),
            Group::Tensor => (1, 0),
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
        let launch = Self::default_launch(ctx, codec.bits, cols);
        let pipeline = Self::pipeline(ctx, codec, launch, Fusion::default(), None)?;

        let mut gemv = Self {
            name: name.to_owned(),
            rows,
            cols,
            codec: *codec,
            layout,
            groups,
            group_stride,
            blocks: Vec::new(),
            pipeline,
            launch,
            q8: false,
            q8_blocks: 1,
        };
        let mut first = 0;
        while first < rows {
            let block_rows = rows_per_block.min(rows - first);
            let block_name = block_name(name, first, block_rows, rows);
            // One entry for the whole tensor, else the block's rows' groups.
            let entries = if group_stride == 0 {
                0..1
            } else {
                first * group_stride..(first + block_rows) * group_stride
            };
            let sb_name = format!("{block_name} scales and biases");
            let (weights, scale_bias) = match data {
                Some((words, scales, biases)) => {
                    let sb =
                        pack_scale_bias(codec.scale, &scales[entries.clone()], &biases[entries]);
                    (
                        layout.upload(ctx, &block_name, words, first, block_rows)?,
                        GpuBuffer::from_bytes(
                            ctx,
                            &sb_name,
                            bytemuck::cast_slice(&sb),
                            wgpu::BufferUsages::STORAGE,
                        )?,
                    )
                }
                None => {
                    let usage = wgpu::BufferUsages::STORAGE;
                    let w = GpuBuffer::new(
                        ctx,
                        &block_name,
                        block_rows as u64 * layout.row_bytes(),
                        usage,
                    )?;
                    fill_buffer(ctx, &w, Fill::Bits, seed.wrapping_add(first as u32))?;
                    let sb_bytes = (entries.len() * entry_words * 4) as u64;
                    (w, GpuBuffer::new(ctx, &sb_name, sb_bytes, usage)?)
                }
            };
            let params = gemv.params(ctx, first, block_rows, launch.unit_words)?;
            gemv.blocks.push(Block {
                weights,
                scale_bias,
                params,
                first,
                rows: block_rows,
            });
            first += block_rows;
        }
        Ok(gemv)
    }

    /// The kernel's parameters for rows `first..first + rows`.
    fn params(
        &self,
        ctx: &GpuContext,
        first: usize,
        rows: usize,
        unit_words: u32,
    ) -> Result<GpuBuffer> {
        let (units, full_units) = self.layout.units(unit_words);
        params_buffer(
            ctx,
            &block_name(&self.name, first, rows, self.rows),
            [
                rows as u32,
                self.cols as u32,
                self.layout.stride as u32,
                first as u32,
                units as u32,
                full_units as u32,
                self.groups as u32,
                self.group_stride as u32,
            ],
        )
    }

    /// The pipeline for this matrix's launch and activation mode with
    /// `fusion`.
    fn pipeline_with(&self, ctx: &GpuContext, fusion: Fusion) -> Result<Arc<Pipeline>> {
        let q8 = self
            .q8
            .then(|| (self.cols.next_multiple_of(32), self.q8_blocks));
        Self::pipeline(ctx, &self.codec, self.launch, fusion, q8)
    }

    /// Threads per workgroup of the 8-bit-activation kernel: one per
    /// 32-input block, within 64..=256.
    fn q8_workgroup_size(cols: usize) -> u32 {
        (cols / 32).next_power_of_two().clamp(64, 256) as u32
    }

    /// Workgroup memory of the 8-bit-activation kernel for `cols` inputs.
    fn q8_shared_bytes(cols: usize) -> u32 {
        let k = cols.next_multiple_of(32) as u32;
        k + k / 32 * 8 + affine_shared_bytes(Self::q8_workgroup_size(cols))
    }

    /// Why this matrix cannot run with 8-bit activations on `ctx`, if it
    /// cannot.
    pub fn q8_unsupported(&self, ctx: &GpuContext) -> Option<String> {
        let limit = ctx.limits().max_compute_workgroup_storage_size;
        let need = Self::q8_shared_bytes(self.cols);
        if self.codec.bits != 4 {
            Some(format!("{} bits (the kernel takes 4)", self.codec.bits))
        } else if matches!(self.codec.group, Group::Size(g) if g % 32 != 0) {
            Some("a group size that is not a multiple of 32".to_owned())
        } else if self.cols % 32 != 0 {
            Some(format!("{} inputs (a multiple of 32 is needed)", self.cols))
        } else if need > limit {
            Some(format!(
                "{need} bytes of workgroup memory for {} inputs, over the device's {limit}",
                self.cols
            ))
        } else {
            None
        }
    }

    /// Quantizes the input to 8 bits per block of 32 inside the kernel
    /// (`on`), so that four products are one integer dot product: about
    /// 2× the 4-bit throughput, at an input error of at most max|x|/254 per
    /// block (see `shaders/gemv_affine.wgsl`). Errors name what stops it
    /// ([`AffineGemv::q8_unsupported`]). Dispatches bound earlier keep
    /// their kernel.
    pub fn set_q8_activations(&mut self, ctx: &GpuContext, on: bool) -> Result<()> {
        if on && let Some(why) = self.q8_unsupported(ctx) {
            return Err(GpuError::invalid(
                format!("affine GEMV `{}`", self.name),
                format!("8-bit activations need 4-bit codes in groups of 32k; this has {why}"),
            ));
        }
        self.q8 = on;
        // Four row blocks a workgroup share one staging of x: on an H100
        // (4096×14336, 14336×4096, 4096×4096) 1 block took 37.4/23.9/10.4 µs,
        // 2 took 28.5/21.9/10.6, 4 took 24.3/19.0/12.6, 8 took 32.2/22.7/17.8.
        self.q8_blocks = 4;
        self.pipeline = self.pipeline_with(ctx, Fusion::default())?;
        Ok(())
    }

    /// Whether the input is quantized to 8 bits inside the kernel.
    pub fn q8_activations(&self) -> bool {
        self.q8
    }

    fn pipeline(
        ctx: &GpuContext,
        codec: &AffineCodec,
        launch: Launch,
        fusion: Fusion,
        q8_cols: Option<(usize, u32)>,
    ) -> Result<Arc<Pipeline>> {
        let [norm, eps, accum, glu] = fusion.constants();
        let scale_kind = match codec.scale {
            ScaleDType::F16 => 0.0,
            ScaleDType::BF16 => 1.0,
            ScaleDType::F32 => 2.0,
        };
        // Any group size at least `cols` makes one group a row.
        let group = match codec.group {
            Group::Size(g) => g as f64,
            Group::Row | Group::Tensor => f64::from(1u32 << 31),
        };
        let subgroups = ctx.features().subgroups;
        let (entry, wg) = match (q8_cols, subgroups) {
            (None, false) => ("gemv_affine", launch.workgroup_size),
            (None, true) => ("gemv_affine_subgroup", launch.workgroup_size),
            (Some((k, _)), false) => ("gemv_affine4_q8", Self::q8_workgroup_size(k)),
            (Some((k, _)), true) => ("gemv_affine4_q8_subgroup", Self::q8_workgroup_size(k)),
        };
        let mut constants = vec![
            ("WG", f64::from(wg)),
            ("ROWS", launch.rows_per_workgroup as f64),
            ("GROUP", group),
            ("SCALE_KIND", scale_kind),
            norm,
            eps,
            accum,
            glu,
        ];
        // The 8-bit-activation entry points take whole 32-code blocks of
        // 4-bit codes, and know Q8_MAXK; the others the unit and width.
        match q8_cols {
            Some((k, blocks)) => {
                constants.extend([("Q8_MAXK", k as f64), ("Q8_BLOCKS", f64::from(blocks))]);
            }
            None => constants.extend([
                ("UNIT_WORDS", f64::from(launch.unit_words)),
                ("BITS", f64::from(codec.bits)),
            ]),
        }
        ctx.pipeline(&PipelineSpec {
            shader: GEMV_AFFINE,
            entry,
            constants: &constants,
            bindings: BINDINGS,
        })
    }

    /// Launches the dispatches bound from now on with `launch` instead of
    /// the shape chosen from the bit width and row length: for tuning and
    /// benchmarks.
    pub fn set_launch(&mut self, ctx: &GpuContext, launch: Launch) -> Result<()> {
        let what = format!("affine GEMV `{}`", self.name);
        let wg = launch.workgroup_size;
        check_launch(
            ctx,
            &what,
            launch.rows_per_workgroup,
            wg,
            affine_shared_bytes(wg),
        )?;
        check_unit(&what, &self.layout, launch.unit_words)?;
        self.pipeline = Self::pipeline(ctx, &self.codec, launch, Fusion::default(), None)?;
        self.q8 = false;
        for i in 0..self.blocks.len() {
            let (first, rows) = (self.blocks[i].first, self.blocks[i].rows);
            self.blocks[i].params = self.params(ctx, first, rows, launch.unit_words)?;
        }
        self.launch = launch;
        Ok(())
    }

    /// Binds the matrix to input `x` (at least `cols` values) and output `y`
    /// (at least `rows` values). Build it once and record it as often as
    /// wanted.
    pub fn bind(&self, ctx: &GpuContext, x: &GpuVector, y: &GpuVector) -> Result<Dispatch> {
        self.bind_fused(ctx, x, None, y, Fusion::default())
    }

    /// [`AffineGemv::bind`] with `fusion` done in the same dispatch (see
    /// [`Fusion`]; `norm_w` is the RMSNorm scale, at least `cols` values).
    pub fn bind_fused(
        &self,
        ctx: &GpuContext,
        x: &GpuVector,
        norm_w: Option<&GpuVector>,
        y: &GpuVector,
        fusion: Fusion,
    ) -> Result<Dispatch> {
        let what = format!("affine GEMV `{}`", self.name);
        let out = if fusion.swiglu { 0 } else { self.rows };
        check_vectors(&what, out, self.cols, x, y)?;
        let g = fusion.check(&what, self.rows, self.cols, self.blocks.len(), x, norm_w, y)?;
        let pipeline = if fusion == Fusion::default() {
            Arc::clone(&self.pipeline)
        } else {
            self.pipeline_with(ctx, fusion)?
        };
        let rows_per_wg = self.launch.rows_per_workgroup;
        let mut dispatch = Dispatch::new();
        for block in &self.blocks {
            let bind_group = pipeline.bind(
                ctx,
                &[
                    &block.params,
                    &block.weights,
                    &block.scale_bias,
                    x.buffer(),
                    y.buffer(),
                    g.buffer(),
                ],
            )?;
            // With SwiGLU a workgroup takes half its rows from each half.
            let row_blocks = if fusion.swiglu {
                (block.rows / 2).div_ceil(rows_per_wg / 2)
            } else {
                block.rows.div_ceil(rows_per_wg)
            };
            // The 8-bit-activation kernel takes q8_blocks row blocks a workgroup.
            let per = if self.q8 { self.q8_blocks as usize } else { 1 };
            let workgroups = row_blocks.div_ceil(per) as u32;
            let grid = ctx.grid_1d(&what, workgroups)?;
            dispatch.push(Arc::clone(&pipeline), bind_group, Workgroups::Direct(grid));
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

    /// How the kernel is launched.
    pub fn launch(&self) -> Launch {
        self.launch
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
        ScaleDType::F32 => pairs
            .flat_map(|(s, b)| [s.to_bits(), b.to_bits()])
            .collect(),
    }
}
