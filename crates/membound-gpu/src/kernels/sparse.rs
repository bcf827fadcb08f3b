//! Activation-sparse GEMV `y = Σ_{j : |x_j| > τ} x_j·W[:, j]`
//! (`shaders/sparse_gemv.wgsl`, `shaders/sparse_reduce.wgsl`): the mask, the
//! compaction of active inputs and a mat-vec that reads only their weight
//! columns, all on the GPU, in f16 or 4-bit affine.
//!
//! W is stored column-major, so each active input costs one contiguous
//! read of its column. The first dispatch gives each workgroup a tile of
//! output rows and a chunk of inputs: it masks and compacts its chunk in
//! workgroup memory (an ordered prefix sum, so results are deterministic)
//! and streams the active columns' rows of its tile. With one chunk it
//! writes y and the compacted list directly. With several (needed to fill
//! a large GPU when outputs are few) each chunk's partial sums must be
//! added up: by the last workgroup of each row tile to finish, in the same
//! dispatch ([`SparseReduce::LastWorkgroup`]), or by a second small
//! dispatch ([`SparseReduce::SecondDispatch`]). Both add the chunks in the
//! same fixed order, so their results agree bit for bit.

use std::sync::Arc;

use half::f16;
use membound_sparse::{ColMajorAffine4, ColMajorF16};

use crate::buffer::{GpuBuffer, GpuVector, check_binding_size};
use crate::context::GpuContext;
use crate::dispatch::{Dispatch, Workgroups};
use crate::error::{GpuError, Result};
use crate::pipeline::{Binding, Pipeline, PipelineSpec};
use crate::shaders::{SPARSE_GEMV, SPARSE_REDUCE};

/// How the column-major weights are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SparseDType {
    /// IEEE half.
    F16,
    /// `affine:bits=4,group=G,scale=f16` applied to Wᵀ: MLX-packed codes,
    /// one f16 scale and bias per `group` outputs of a column.
    Affine4 {
        /// Outputs per scale group: 32, 64 or 128.
        group: usize,
    },
}

impl SparseDType {
    /// Bytes of one unit, the 8 consecutive outputs of a column that one
    /// thread reads at once: 16 for f16, one u32 of codes for 4-bit.
    pub const fn unit_bytes(self) -> usize {
        match self {
            Self::F16 => 16,
            Self::Affine4 { .. } => 4,
        }
    }
}

/// Outputs per unit, for every dtype.
const UNIT_ROWS: usize = 8;

/// How the partial sums of several input chunks become y.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SparseReduce {
    /// [`SparseReduce::LastWorkgroup`] where the plan allows it (fewer than
    /// 1024 chunks and 2²² inputs), [`SparseReduce::SecondDispatch`]
    /// otherwise.
    #[default]
    Auto,
    /// One dispatch: each workgroup stores its partial sums in atomic slots
    /// and counts itself in on an atomic counter of its row tile; the last
    /// to arrive takes the tile's sums (waiting on any slot whose store is
    /// not yet visible, and emptying each for the next call) and adds them
    /// into y. It relies on no ordering between memory locations, only on
    /// atomics becoming visible. On an H100, 2–4 µs a call faster than a
    /// second dispatch in a chain of dependent calls (a decode step); timed
    /// back to back with nothing depending on the previous call, where a
    /// second dispatch can overlap the next call's first, it is slower.
    LastWorkgroup,
    /// A second dispatch (`sparse_reduce.wgsl`) adds the sums and joins the
    /// chunks' compacted lists into one.
    SecondDispatch,
}

/// How the work is split; [`SparseTuning::default_for`] gives the measured
/// defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SparseTuning {
    /// Threads reading one column together, one unit (8 outputs) each (a
    /// power of two, at most the workgroup size): a workgroup's row tile is
    /// this many units of every column. Capped at the column's unit count.
    pub threads_per_column: u32,
    /// Workgroups wanted in the first dispatch: the inputs are split into
    /// as many chunks (of at least 64 inputs) as it takes. At most the
    /// number of row tiles gives one chunk: one dispatch, no second stage.
    pub target_workgroups: u32,
    /// How several chunks' partial sums are added up.
    pub reduce: SparseReduce,
}

impl SparseTuning {
    /// The defaults for `dtype`: 32 threads reading one column (512
    /// contiguous bytes of f16, 128 of 4-bit codes) and about 256
    /// workgroups. On an H100 (Vulkan, last-workgroup reduction), at
    /// 4096×14336, 14336×4096, 4096×4096, 6144×4096 and 28672×4096 with 50%
    /// of the inputs active, these were the fastest of 4–5 splits per dtype
    /// or within 6% (`docs/data/sparse-bench-reduce-tpc-h100.txt`). One
    /// dispatch with no K split
    /// (`target_workgroups: 1`) was 1.4-1.5× slower at 50% for 14336
    /// outputs and 4-5× for 4096.
    pub const fn default_for(dtype: SparseDType) -> Self {
        match dtype {
            SparseDType::F16 => Self {
                threads_per_column: 32,
                target_workgroups: 256,
                reduce: SparseReduce::Auto,
            },
            SparseDType::Affine4 { .. } => Self {
                threads_per_column: 32,
                target_workgroups: 256,
                reduce: SparseReduce::Auto,
            },
        }
    }
}

/// The threshold τ of a sparse GEMV: input j is active iff |x_j| > τ, so
/// τ = 0 keeps every non-zero input (lossless) and τ = +∞ none. It lives in
/// a small uniform buffer, so an engine can give every layer its own and
/// change it without rebinding.
#[derive(Debug)]
pub struct Threshold {
    buffer: GpuBuffer,
}

impl Threshold {
    /// A threshold buffer holding `tau` (≥ 0, or +∞; not NaN).
    pub fn new(ctx: &GpuContext, name: &str, tau: f32) -> Result<Self> {
        let bits = tau_bits(name, tau)?;
        let buffer = GpuBuffer::from_bytes(
            ctx,
            name,
            bytemuck::bytes_of(&[bits, 0, 0, 0]),
            wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        )?;
        Ok(Self { buffer })
    }

    /// Sets τ for work submitted afterwards.
    pub fn set(&self, ctx: &GpuContext, tau: f32) -> Result<()> {
        let bits = tau_bits(self.buffer.name(), tau)?;
        ctx.queue()
            .write_buffer(self.buffer.raw(), 0, bytemuck::bytes_of(&bits));
        Ok(())
    }

    /// The uniform buffer (the magnitude bits of τ, then padding).
    pub fn buffer(&self) -> &GpuBuffer {
        &self.buffer
    }
}

/// The bits the kernel compares magnitudes against: for τ ≥ 0 (−0 counts
/// as 0) and non-NaN x, `|x| > τ` iff `bits(|x|) > bits(τ)`.
fn tau_bits(name: &str, tau: f32) -> Result<u32> {
    if tau.is_nan() || tau < 0.0 {
        return Err(GpuError::invalid(
            format!("threshold `{name}`"),
            format!("τ = {tau}; it must be ≥ 0 (0 drops exact zeros only, +∞ drops everything)"),
        ));
    }
    Ok(if tau == 0.0 { 0 } else { tau.to_bits() })
}

/// The active inputs as the GPU compacted them, read back.
#[derive(Clone, Debug, PartialEq)]
pub struct Compaction {
    /// Indices of active inputs, increasing.
    pub indices: Vec<u32>,
    /// Their values in x, bit for bit.
    pub values: Vec<f32>,
}

/// How a sparse GEMV makes its input from the vector it is bound to, in
/// the same dispatch (so no other dispatch has to write the input first).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum SparseInput {
    /// The vector as it is.
    #[default]
    Plain,
    /// The vector holds `[gate; up]`, `2·cols` values; the input is
    /// `silu(gate)·up` (a down projection reading the gate/up output).
    /// Needs `cols` a multiple of 4.
    SwiGlu,
    /// The input is the vector RMS-normalised with this ε and the scale
    /// given to [`SparseGemv::bind_with`] (a gate/up projection reading the
    /// residual stream).
    RmsNorm {
        /// ε under the square root.
        eps: f32,
    },
}

/// Per-matrix constants of `sparse_gemv.wgsl` (its `Params`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    stride: u32,
    units: u32,
    chunk_len: u32,
    chunks: u32,
    groups: u32,
    group_shift: u32,
}

const _: () = assert!(std::mem::size_of::<Params>() == 32);

const GEMV_BINDINGS_F16: &[Binding] = &[
    Binding::Uniform,
    Binding::Uniform,
    Binding::Storage,
    Binding::Storage,
    Binding::StorageReadWrite,
    Binding::StorageReadWrite,
    Binding::StorageReadWrite,
    // The affine kernels' scales (unused here; the weights are bound).
    Binding::Storage,
    // NORM_IN's scale (the input when unused).
    Binding::Storage,
    // LAST_REDUCE's y (the output when unused).
    Binding::StorageReadWrite,
];

const GEMV_BINDINGS_AFFINE: &[Binding] = &[
    Binding::Uniform,
    Binding::Uniform,
    Binding::Storage,
    Binding::Storage,
    Binding::StorageReadWrite,
    Binding::StorageReadWrite,
    Binding::StorageReadWrite,
    Binding::Storage,
    Binding::Storage,
    Binding::StorageReadWrite,
];

const REDUCE_BINDINGS: &[Binding] = &[
    Binding::Uniform,
    Binding::Storage,
    Binding::Storage,
    Binding::StorageReadWrite,
    Binding::StorageReadWrite,
    Binding::StorageReadWrite,
];

/// Entries of `counts` before the per-chunk counts (and, with
/// [`SparseReduce::LastWorkgroup`], the per-tile arrival counters after
/// them): the total, then the rest of an indirect-dispatch triple, then
/// padding.
const COUNTS_HEADER: usize = 4;

/// Most threads per workgroup.
const MAX_WG: u32 = 256;

/// Fewest inputs per chunk, which bounds the partial sums and the join.
const MIN_CHUNK: usize = 64;

/// How one matrix's work is laid out on this device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Plan {
    wg: u32,
    tpc: u32,
    row_tiles: u32,
    chunk_len: u32,
    chunks: u32,
    /// Several chunks, added up by the last workgroup of each row tile.
    last_reduce: bool,
}

/// Scratch buffers of one plan.
#[derive(Debug)]
struct Scratch {
    params: GpuBuffer,
    /// Each chunk's compacted list, (index, x bits) per active input in
    /// increasing order, `chunk_len` slots a chunk (with one chunk, the
    /// whole list).
    lists: GpuBuffer,
    /// `[count, 1, 1, 0, count of chunk 0, count of chunk 1, …]`, then
    /// under [`SparseReduce::LastWorkgroup`] one arrival counter per row
    /// tile (zero between calls).
    counts: GpuBuffer,
    /// With several chunks: their partial sums and (unless the last
    /// workgroups add them up) the second stage.
    split: Option<Split>,
}

#[derive(Debug)]
struct Split {
    partials: GpuBuffer,
    second: Option<SecondStage>,
}

#[derive(Debug)]
struct SecondStage {
    params: GpuBuffer,
    pipeline: Arc<Pipeline>,
    /// The chunks' lists joined into one.
    joined: GpuBuffer,
}

/// A weight matrix uploaded once, column-major, with the pipelines and
/// scratch buffers of the activation-sparse GEMV.
///
/// [`SparseGemv::bind`] gives a [`Dispatch`] computing
/// `y = Σ_{j : |x_j| > τ} x_j·W[:, j]` from x alone: the mask, the
/// compaction and the mat-vec all run on the GPU, in one or two dispatches
/// that record into any pass next to other kernels. The compacted list of
/// the last run stays readable ([`SparseGemv::read_compaction`],
/// [`SparseGemv::counts_buffer`]). Bindings of one `SparseGemv` share its
/// scratch buffers, so recorded together they run one after the other.
#[derive(Debug)]
pub struct SparseGemv {
    name: String,
    rows: usize,
    cols: usize,
    dtype: SparseDType,
    /// Units per column (`⌈rows / 8⌉`; also the stride between columns).
    stride: usize,
    /// Scale groups per column (4-bit).
    groups: usize,
    weights: Arc<GpuBuffer>,
    scales: Option<Arc<GpuBuffer>>,
    tuning: SparseTuning,
    plan: Plan,
    pipeline: Arc<Pipeline>,
    scratch: Scratch,
}

impl SparseGemv {
    /// Uploads row-major `weights` (`rows × cols`) as column-major f16
    /// (rounded to nearest).
    pub fn f16(
        ctx: &GpuContext,
        name: &str,
        rows: usize,
        cols: usize,
        weights: &[f32],
    ) -> Result<Self> {
        check_shape(name, rows, cols, weights.len())?;
        let m = ColMajorF16::from_row_major(weights, rows, cols)
            .map_err(|e| GpuError::invalid(format!("sparse GEMV `{name}`"), e.to_string()))?;
        Self::from_f16(ctx, name, &m)
    }

    /// Encodes row-major `weights` (`rows × cols`) column by column as
    /// 4-bit affine with `group` outputs per scale (32, 64 or 128; see
    /// [`ColMajorAffine4`]) and uploads it.
    pub fn affine4(
        ctx: &GpuContext,
        name: &str,
        rows: usize,
        cols: usize,
        weights: &[f32],
        group: usize,
    ) -> Result<Self> {
        check_shape(name, rows, cols, weights.len())?;
        let m = ColMajorAffine4::from_row_major(weights, rows, cols, group)
            .map_err(|e| GpuError::invalid(format!("sparse GEMV `{name}`"), e.to_string()))?;
        Self::from_affine4(ctx, name, &m)
    }

    /// A `rows × cols` matrix in `dtype` with weights uniform in about
    /// `[-a, a]` (4-bit: random codes under one scale and bias), generated
    /// on the GPU from `seed`: the layout and bytes of a real one, for
    /// synthetic models.
    pub fn synthetic(
        ctx: &GpuContext,
        name: &str,
        rows: usize,
        cols: usize,
        dtype: SparseDType,
        seed: u32,
        a: f32,
    ) -> Result<Self> {
        use crate::kernels::fill::{Fill, fill_buffer};
        check_shape(name, rows, cols, rows.saturating_mul(cols))?;
        let stride = check_layout(name, rows, cols, dtype)?;
        let usage = wgpu::BufferUsages::STORAGE;
        let weights = GpuBuffer::new(
            ctx,
            name,
            (cols * stride * dtype.unit_bytes()) as u64,
            usage,
        )?;
        check_binding_size(ctx, name, weights.size())?;
        match dtype {
            SparseDType::F16 => {
                fill_buffer(ctx, &weights, Fill::F16Pair(a), seed)?;
                Self::assemble(ctx, name, rows, cols, dtype, stride, 0, weights, None)
            }
            SparseDType::Affine4 { group } => {
                fill_buffer(ctx, &weights, Fill::Bits, seed)?;
                let groups = rows.div_ceil(group);
                let scales_name = format!("{name} scales");
                let scales = GpuBuffer::new(ctx, &scales_name, (cols * groups * 4) as u64, usage)?;
                check_binding_size(ctx, &scales_name, scales.size())?;
                fill_buffer(ctx, &scales, Fill::ConstPair(a / 7.5, -a), 0)?;
                Self::assemble(
                    ctx,
                    name,
                    rows,
                    cols,
                    dtype,
                    stride,
                    groups,
                    weights,
                    Some(Arc::new(scales)),
                )
            }
        }
    }

    /// Uploads column-major f16 weights as they are.
    pub fn from_f16(ctx: &GpuContext, name: &str, m: &ColMajorF16) -> Result<Self> {
        let (rows, cols) = (m.rows, m.cols);
        check_shape(name, rows, cols, m.data.len())?;
        let dtype = SparseDType::F16;
        let stride = check_layout(name, rows, cols, dtype)?;
        let col_bytes = stride * dtype.unit_bytes();
        let weights = GpuBuffer::with_contents(
            ctx,
            name,
            (cols * col_bytes) as u64,
            wgpu::BufferUsages::STORAGE,
            |mut view| {
                for j in 0..cols {
                    let bytes: &[u8] = bytemuck::cast_slice(m.column(j));
                    let at = j * col_bytes;
                    view.slice(at..at + bytes.len()).copy_from_slice(bytes);
                }
            },
        )?;
        check_binding_size(ctx, name, weights.size())?;
        Self::assemble(ctx, name, rows, cols, dtype, stride, 0, weights, None)
    }

    /// Uploads a column-major 4-bit affine matrix: its codes as packed (one
    /// column after the other, `⌈rows/8⌉` words each) and its scales and
    /// biases (one u32 per group).
    pub fn from_affine4(ctx: &GpuContext, name: &str, m: &ColMajorAffine4) -> Result<Self> {
        let what = || format!("sparse GEMV `{name}`");
        let (rows, cols, group) = (m.rows(), m.cols(), m.group());
        let parts = m
            .parts()
            .map_err(|e| GpuError::invalid(what(), e.to_string()))?;
        let dtype = SparseDType::Affine4 { group };
        let stride = check_layout(name, rows, cols, dtype)?;
        let groups = rows.div_ceil(group);
        let layout = parts.layout;
        let expected = (cols, rows, stride, [cols, groups]);
        if (
            layout.rows,
            layout.cols,
            layout.words_per_row,
            layout.scales_shape,
        ) != expected
        {
            return Err(GpuError::invalid(
                what(),
                format!("unexpected encoding layout {layout:?}"),
            ));
        }
        // The codec's packed words of Wᵀ are the kernel's layout as they are.
        let weights = GpuBuffer::from_bytes(
            ctx,
            name,
            bytemuck::cast_slice(&parts.words),
            wgpu::BufferUsages::STORAGE,
        )?;
        check_binding_size(ctx, name, weights.size())?;
        // Scales and biases came from f16, so converting back is exact.
        let packed: Vec<u32> = parts
            .scales
            .iter()
            .zip(&parts.biases)
            .map(|(&s, &b)| {
                u32::from(f16::from_f32(s).to_bits())
                    | (u32::from(f16::from_f32(b).to_bits()) << 16)
            })
            .collect();
        let scales_name = format!("{name} scales");
        let scales = GpuBuffer::from_bytes(
            ctx,
            &scales_name,
            bytemuck::cast_slice(&packed),
            wgpu::BufferUsages::STORAGE,
        )?;
        check_binding_size(ctx, &scales_name, scales.size())?;
        Self::assemble(
            ctx,
            name,
            rows,
            cols,
            dtype,
            stride,
            groups,
            weights,
            Some(Arc::new(scales)),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        ctx: &GpuContext,
        name: &str,
        rows: usize,
        cols: usize,
        dtype: SparseDType,
        stride: usize,
        groups: usize,
        weights: GpuBuffer,
        scales: Option<Arc<GpuBuffer>>,
    ) -> Result<Self> {
        let shape = Shape {
            name,
            rows,
            cols,
            dtype,
            stride,
            groups,
        };
        let tuning = SparseTuning::default_for(dtype);
        let (plan, pipeline, scratch) = prepare(ctx, &shape, tuning)?;
        Ok(Self {
            name: name.to_owned(),
            rows,
            cols,
            dtype,
            stride,
            groups,
            weights: Arc::new(weights),
            scales,
            tuning,
            plan,
            pipeline,
            scratch,
        })
    }

    /// The same weights (shared, not copied) with another work split.
    pub fn with_tuning(&self, ctx: &GpuContext, tuning: SparseTuning) -> Result<Self> {
        let (plan, pipeline, scratch) = prepare(ctx, &self.shape(), tuning)?;
        Ok(Self {
            name: self.name.clone(),
            weights: Arc::clone(&self.weights),
            scales: self.scales.clone(),
            tuning,
            plan,
            pipeline,
            scratch,
            ..*self
        })
    }

    fn shape(&self) -> Shape<'_> {
        Shape {
            name: &self.name,
            rows: self.rows,
            cols: self.cols,
            dtype: self.dtype,
            stride: self.stride,
            groups: self.groups,
        }
    }

    /// Binds the matrix to input `x` (at least `cols` values), threshold
    /// `tau` (≥ 0; 0 is the exact-zero test) and output `y` (at least `rows`
    /// values). Build it once and record it as often as wanted.
    pub fn bind(
        &self,
        ctx: &GpuContext,
        x: &GpuVector,
        tau: f32,
        y: &GpuVector,
    ) -> Result<Dispatch> {
        let threshold = Threshold::new(ctx, &format!("{} τ", self.name), tau)?;
        // The bind group keeps the threshold's buffer alive.
        self.bind_threshold(ctx, x, &threshold, y)
    }

    /// Like [`SparseGemv::bind`] with a [`Threshold`] buffer the caller
    /// keeps and may change between submissions.
    pub fn bind_threshold(
        &self,
        ctx: &GpuContext,
        x: &GpuVector,
        tau: &Threshold,
        y: &GpuVector,
    ) -> Result<Dispatch> {
        let (mut first, second) = self.bind_stages(ctx, x, tau, y)?;
        if let Some(second) = second {
            first.extend(second);
        }
        Ok(first)
    }

    /// Like [`SparseGemv::bind_threshold`], adding the product to `y`
    /// (`y += W·x`, a residual add) instead of storing it.
    pub fn bind_accumulate(
        &self,
        ctx: &GpuContext,
        x: &GpuVector,
        tau: &Threshold,
        y: &GpuVector,
    ) -> Result<Dispatch> {
        let (mut first, second) =
            self.bind_stages_with(ctx, x, None, tau, y, true, SparseInput::Plain)?;
        if let Some(second) = second {
            first.extend(second);
        }
        Ok(first)
    }

    /// The two stages of [`SparseGemv::bind_threshold`] apart: the masked,
    /// compacted mat-vec, and (with several input chunks) the addition of
    /// the chunks' partial sums, which must follow it. For timing stages,
    /// or recording independent work between them.
    pub fn bind_stages(
        &self,
        ctx: &GpuContext,
        x: &GpuVector,
        tau: &Threshold,
        y: &GpuVector,
    ) -> Result<(Dispatch, Option<Dispatch>)> {
        self.bind_stages_with(ctx, x, None, tau, y, false, SparseInput::Plain)
    }

    /// The general form of the binds above: the input made from `x` as
    /// `input` says (`norm_w`: the RMSNorm scale, at least `cols` values,
    /// for [`SparseInput::RmsNorm`] only), added to `y` if `accumulate`.
    /// The threshold applies to the input so made.
    #[allow(clippy::too_many_arguments)]
    pub fn bind_with(
        &self,
        ctx: &GpuContext,
        x: &GpuVector,
        norm_w: Option<&GpuVector>,
        tau: &Threshold,
        y: &GpuVector,
        accumulate: bool,
        input: SparseInput,
    ) -> Result<Dispatch> {
        let (mut first, second) =
            self.bind_stages_with(ctx, x, norm_w, tau, y, accumulate, input)?;
        if let Some(second) = second {
            first.extend(second);
        }
        Ok(first)
    }

    #[allow(clippy::too_many_arguments)]
    fn bind_stages_with(
        &self,
        ctx: &GpuContext,
        x: &GpuVector,
        norm_w: Option<&GpuVector>,
        tau: &Threshold,
        y: &GpuVector,
        accumulate: bool,
        input: SparseInput,
    ) -> Result<(Dispatch, Option<Dispatch>)> {
        let what = || format!("sparse GEMV `{}`", self.name);
        let need = if input == SparseInput::SwiGlu {
            2 * self.cols
        } else {
            self.cols
        };
        if x.len() < need {
            return Err(GpuError::invalid(
                what(),
                format!(
                    "input `{}` has {} values, needs {need}",
                    x.buffer().name(),
                    x.len(),
                ),
            ));
        }
        if input == SparseInput::SwiGlu && self.cols % 4 != 0 {
            return Err(GpuError::invalid(
                what(),
                format!(
                    "SwiGLU input needs a multiple of 4 columns, not {}",
                    self.cols
                ),
            ));
        }
        let g = match (input, norm_w) {
            (SparseInput::RmsNorm { eps }, Some(g)) => {
                if g.len() < self.cols {
                    return Err(GpuError::invalid(
                        what(),
                        format!(
                            "norm scale `{}` has {} values, needs {}",
                            g.buffer().name(),
                            g.len(),
                            self.cols
                        ),
                    ));
                }
                if !(eps.is_finite() && eps >= 0.0) {
                    return Err(GpuError::invalid(
                        what(),
                        format!("RMSNorm ε {eps} is not a finite value ≥ 0"),
                    ));
                }
                g
            }
            (SparseInput::RmsNorm { .. }, None) => {
                return Err(GpuError::invalid(
                    what(),
                    "RMSNorm input without a norm scale".to_owned(),
                ));
            }
            (_, Some(_)) => {
                return Err(GpuError::invalid(
                    what(),
                    "a norm scale without RMSNorm input".to_owned(),
                ));
            }
            (_, None) => x,
        };
        if y.len() < self.rows {
            return Err(GpuError::invalid(
                what(),
                format!(
                    "output `{}` has {} values, needs {}",
                    y.buffer().name(),
                    y.len(),
                    self.rows
                ),
            ));
        }
        if x.buffer().raw() == y.buffer().raw() {
            return Err(GpuError::invalid(
                what(),
                format!(
                    "input and output are the same buffer `{}`",
                    x.buffer().name()
                ),
            ));
        }
        let s = &self.scratch;
        let out = match &s.split {
            Some(split) => &split.partials,
            None => y.buffer(),
        };
        let mut buffers = vec![
            &s.params,
            tau.buffer(),
            &*self.weights,
            x.buffer(),
            out,
            &s.lists,
            &s.counts,
        ];
        // Binding 7: the scales, or (f16) the weights as a stand-in.
        buffers.push(self.scales.as_deref().unwrap_or(&*self.weights));
        buffers.push(g.buffer());
        // With one chunk, or several added up by the last workgroups, the
        // first stage writes y (and adds to it); otherwise the second does.
        let second_stage = s.split.as_ref().and_then(|split| split.second.as_ref());
        // Binding 9: y where the last workgroups add into it; otherwise
        // `out` as a stand-in, so that a first stage that leaves y alone
        // does not have to wait for the work before it that writes y.
        buffers.push(if self.plan.last_reduce {
            y.buffer()
        } else {
            out
        });
        let add_here = accumulate && second_stage.is_none();
        let pipeline = if add_here || input != SparseInput::Plain {
            gemv_pipeline(ctx, self.dtype, &self.plan, add_here, input)?
        } else {
            Arc::clone(&self.pipeline)
        };
        let mut first = Dispatch::new();
        let bind_group = pipeline.bind(ctx, &buffers)?;
        first.push(
            pipeline,
            bind_group,
            Workgroups::Direct([self.plan.row_tiles, self.plan.chunks, 1]),
        );
        let mut second = None;
        if let (Some(split), Some(stage)) = (&s.split, second_stage) {
            let reduce = if accumulate {
                reduce_pipeline(ctx, self.plan.wg, true)?
            } else {
                Arc::clone(&stage.pipeline)
            };
            let bind_group = reduce.bind(
                ctx,
                &[
                    &stage.params,
                    &split.partials,
                    &s.lists,
                    y.buffer(),
                    &stage.joined,
                    &s.counts,
                ],
            )?;
            let groups = (self.rows.div_ceil(self.plan.wg as usize) as u32).max(self.plan.chunks);
            let grid = ctx.grid_1d(&what(), groups)?;
            let mut dispatch = Dispatch::new();
            dispatch.push(reduce, bind_group, Workgroups::Direct(grid));
            second = Some(dispatch);
        }
        Ok((first, second))
    }

    /// Binds, records and submits without waiting.
    pub fn run(&self, ctx: &GpuContext, x: &GpuVector, tau: f32, y: &GpuVector) -> Result<()> {
        let dispatch = self.bind(ctx, x, tau, y)?;
        ctx.submit(&[&dispatch])?;
        Ok(())
    }

    /// The last run's active count at byte 0, followed by 1 and 1: bound as
    /// [`Workgroups::Indirect`] at offset 0 it dispatches one workgroup per
    /// active input. (Per-chunk counts follow from byte 16.)
    pub fn counts_buffer(&self) -> &GpuBuffer {
        &self.scratch.counts
    }

    /// How many inputs were active in the last call that ran (waits for
    /// the GPU).
    pub fn read_active_count(&self, ctx: &GpuContext) -> Result<usize> {
        let count = self.scratch.counts.read_bytes(ctx, 0, 4)?;
        Ok(u32::from_le_bytes([count[0], count[1], count[2], count[3]]) as usize)
    }

    /// Reads the last run's compacted list back (waits for the GPU). Unless
    /// a second dispatch joined them, the GPU leaves one list per chunk and
    /// they are joined here.
    pub fn read_compaction(&self, ctx: &GpuContext) -> Result<Compaction> {
        let bad = |what: String| GpuError::invalid(format!("sparse GEMV `{}`", self.name), what);
        let chunks = self.plan.chunks as usize;
        let header =
            self.scratch
                .counts
                .read_bytes(ctx, 0, ((COUNTS_HEADER + chunks) * 4) as u64)?;
        let counts: Vec<u32> = bytemuck::pod_collect_to_vec(&header);
        let count = counts[0] as usize;
        if count > self.cols {
            return Err(bad(format!(
                "the GPU reported {count} active inputs of {}",
                self.cols
            )));
        }
        let second = self.scratch.split.as_ref().and_then(|s| s.second.as_ref());
        let words: Vec<u32> = if let Some(stage) = second {
            bytemuck::pod_collect_to_vec(&stage.joined.read_bytes(ctx, 0, count as u64 * 8)?)
        } else {
            // The chunks' lists, joined here.
            let chunk_len = self.plan.chunk_len as usize;
            let lists = &self.scratch.lists;
            let lists: Vec<u32> =
                bytemuck::pod_collect_to_vec(&lists.read_bytes(ctx, 0, lists.size())?);
            let mut words = Vec::with_capacity(2 * count);
            for (c, &n) in counts[COUNTS_HEADER..].iter().enumerate() {
                let n = n as usize;
                if n > chunk_len {
                    return Err(bad(format!(
                        "the GPU reported {n} active inputs in a chunk of {chunk_len}"
                    )));
                }
                let at = 2 * c * chunk_len;
                words.extend_from_slice(&lists[at..at + 2 * n]);
            }
            if words.len() != 2 * count {
                return Err(bad(format!(
                    "the chunks' counts add up to {}, the total is {count}",
                    words.len() / 2
                )));
            }
            words
        };
        Ok(Compaction {
            indices: words.iter().step_by(2).copied().collect(),
            values: words
                .iter()
                .skip(1)
                .step_by(2)
                .map(|&b| f32::from_bits(b))
                .collect(),
        })
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
    pub fn dtype(&self) -> SparseDType {
        self.dtype
    }

    /// The work split asked for.
    pub fn tuning(&self) -> SparseTuning {
        self.tuning
    }

    /// Input chunks of the first dispatch (more than one needs their
    /// partial sums added up; see [`SparseGemv::dispatches`]).
    pub fn chunks(&self) -> usize {
        self.plan.chunks as usize
    }

    /// Dispatches a call records: 2 with several chunks added up by
    /// [`SparseReduce::SecondDispatch`], 1 otherwise.
    pub fn dispatches(&self) -> usize {
        match &self.scratch.split {
            Some(split) if split.second.is_some() => 2,
            _ => 1,
        }
    }

    /// Inputs per chunk.
    pub fn chunk_len(&self) -> usize {
        self.plan.chunk_len as usize
    }

    /// Workgroups of the first dispatch.
    pub fn workgroups(&self) -> usize {
        self.plan.row_tiles as usize * self.plan.chunks as usize
    }

    /// Bytes of one column as stored: its units, plus its scales and biases
    /// (4 bytes a group) for 4-bit.
    pub fn column_bytes(&self) -> u64 {
        (self.stride * self.dtype.unit_bytes() + self.groups * 4) as u64
    }

    /// Bytes of weights on the device, padding included.
    pub fn weight_bytes(&self) -> u64 {
        self.cols as u64 * self.column_bytes()
    }

    /// Bytes one call reads from memory with `active` active inputs: their
    /// columns and x once. Workgroups re-read x and the compacted lists, and
    /// the second stage reads the partial sums, all from cache (a few
    /// hundred KB at LLaMA sizes); writes are not counted.
    pub fn bytes_read(&self, active: usize) -> u64 {
        active.min(self.cols) as u64 * self.column_bytes() + self.cols as u64 * 4
    }
}

fn check_shape(name: &str, rows: usize, cols: usize, len: usize) -> Result<()> {
    if rows == 0 || cols == 0 || rows.checked_mul(cols) != Some(len) {
        return Err(GpuError::invalid(
            format!("sparse GEMV `{name}`"),
            format!("{len} weights do not make a non-empty {rows}×{cols} matrix"),
        ));
    }
    Ok(())
}

/// The units per column, after checking that every index the kernels
/// compute fits in u32.
fn check_layout(name: &str, rows: usize, cols: usize, dtype: SparseDType) -> Result<usize> {
    let stride = rows.div_ceil(UNIT_ROWS);
    let groups = match dtype {
        SparseDType::F16 => 0,
        SparseDType::Affine4 { group } => {
            if !membound_sparse::AFFINE4_GROUP_SIZES.contains(&group) {
                return Err(GpuError::invalid(
                    format!("sparse GEMV `{name}`"),
                    format!("group {group} is not one of 32, 64, 128"),
                ));
            }
            rows.div_ceil(group)
        }
    };
    let fits = |n: Option<usize>| n.is_some_and(|n| u32::try_from(n).is_ok());
    if !fits(Some(rows)) || !fits(cols.checked_mul(stride)) || !fits(cols.checked_mul(groups)) {
        return Err(GpuError::invalid(
            format!("sparse GEMV `{name}`"),
            format!("{rows}×{cols} exceeds the kernel's u32 indexing"),
        ));
    }
    Ok(stride)
}

/// Lays the work out: the workgroup size, the row tile (threads per
/// column), and the input chunks that bring the grid to the target size.
fn plan(
    ctx: &GpuContext,
    name: &str,
    rows: usize,
    cols: usize,
    stride: usize,
    tuning: SparseTuning,
) -> Result<Plan> {
    let what = || format!("sparse GEMV `{name}`");
    let tpc = tuning.threads_per_column;
    if !tpc.is_power_of_two() || tuning.target_workgroups == 0 {
        return Err(GpuError::invalid(
            what(),
            format!(
                "tuning {tuning:?}: threads per column must be a power of two and the target positive"
            ),
        ));
    }
    let l = ctx.limits();
    // Workgroup memory: the list (or the reduction), 8 bytes for each of the
    // segment's 4·WG inputs, and one u32 a thread for the scan.
    let wg = MAX_WG
        .min(l.max_compute_invocations_per_workgroup)
        .min(l.max_compute_workgroup_size_x)
        .min(l.max_compute_workgroup_storage_size / 36);
    if wg == 0 {
        return Err(GpuError::invalid(
            what(),
            format!(
                "the device's {} bytes of workgroup memory are too few",
                l.max_compute_workgroup_storage_size
            ),
        ));
    }
    let wg = 1 << wg.ilog2();
    let tpc = tpc.min(wg).min(stride.next_power_of_two() as u32);
    let row_tiles = stride.div_ceil(tpc as usize);
    let wanted = (tuning.target_workgroups as usize)
        .div_ceil(row_tiles)
        .max(1);
    let chunk_len = cols.div_ceil(wanted).next_multiple_of(4).max(MIN_CHUNK);
    let chunks = cols.div_ceil(chunk_len);
    let max = l.max_compute_workgroups_per_dimension as usize;
    if row_tiles > max || chunks > max || chunks.saturating_mul(rows) > u32::MAX as usize {
        return Err(GpuError::invalid(
            what(),
            format!("{row_tiles}×{chunks} workgroups exceed the device's grid or u32 indexing"),
        ));
    }
    // The shader's arrival counters hold the arrivals in 10 bits and row
    // tile 0's active count above them.
    let last_reduce = chunks > 1
        && chunks < 1 << 10
        && cols < 1 << 22
        && tuning.reduce != SparseReduce::SecondDispatch;
    Ok(Plan {
        wg,
        tpc,
        row_tiles: row_tiles as u32,
        chunk_len: chunk_len as u32,
        chunks: chunks as u32,
        last_reduce,
    })
}

/// What [`prepare`] needs to know of a matrix.
struct Shape<'a> {
    name: &'a str,
    rows: usize,
    cols: usize,
    dtype: SparseDType,
    stride: usize,
    groups: usize,
}

/// The plan, first-stage pipeline and scratch buffers of `shape` under
/// `tuning`.
fn prepare(
    ctx: &GpuContext,
    shape: &Shape<'_>,
    tuning: SparseTuning,
) -> Result<(Plan, Arc<Pipeline>, Scratch)> {
    let Shape {
        name,
        rows,
        cols,
        dtype,
        stride,
        groups,
    } = *shape;
    let plan = plan(ctx, name, rows, cols, stride, tuning)?;
    let pipeline = gemv_pipeline(ctx, dtype, &plan, false, SparseInput::Plain)?;
    let group_shift = match dtype {
        SparseDType::F16 => 0,
        SparseDType::Affine4 { group } => (group / UNIT_ROWS).ilog2(),
    };
    let params = Params {
        rows: rows as u32,
        cols: cols as u32,
        stride: stride as u32,
        units: stride as u32,
        chunk_len: plan.chunk_len,
        chunks: plan.chunks,
        groups: groups as u32,
        group_shift,
    };
    let params = GpuBuffer::uniform(ctx, &format!("{name} params"), &params)?;
    let lists_name = format!("{name} chunk lists");
    let lists = GpuBuffer::new(
        ctx,
        &lists_name,
        u64::from(plan.chunks) * u64::from(plan.chunk_len) * 8,
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    )?;
    check_binding_size(ctx, &lists_name, lists.size())?;
    let arrivals = if plan.last_reduce {
        plan.row_tiles as usize
    } else {
        0
    };
    let counts = GpuBuffer::new(
        ctx,
        &format!("{name} active counts"),
        (COUNTS_HEADER + plan.chunks as usize + arrivals) as u64 * 4,
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::INDIRECT | wgpu::BufferUsages::COPY_SRC,
    )?;
    let split = if plan.chunks > 1 {
        let partials_name = format!("{name} partial sums");
        let size = u64::from(plan.chunks) * rows as u64 * 4;
        let partials = if plan.last_reduce {
            // Every slot starts EMPTY (all ones), as the shader leaves them.
            GpuBuffer::with_contents(
                ctx,
                &partials_name,
                size,
                wgpu::BufferUsages::STORAGE,
                |mut view| view.fill(0xff),
            )?
        } else {
            GpuBuffer::new(ctx, &partials_name, size, wgpu::BufferUsages::STORAGE)?
        };
        check_binding_size(ctx, &partials_name, partials.size())?;
        let second = if plan.last_reduce {
            None
        } else {
            let reduce = [rows as u32, plan.chunks, plan.chunk_len, 0];
            let params = GpuBuffer::uniform(ctx, &format!("{name} reduce params"), &reduce)?;
            let pipeline = reduce_pipeline(ctx, plan.wg, false)?;
            let joined_name = format!("{name} active inputs");
            let joined = GpuBuffer::new(
                ctx,
                &joined_name,
                cols as u64 * 8,
                wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            )?;
            check_binding_size(ctx, &joined_name, joined.size())?;
            Some(SecondStage {
                params,
                pipeline,
                joined,
            })
        };
        Some(Split { partials, second })
    } else {
        None
    };
    let scratch = Scratch {
        params,
        lists,
        counts,
        split,
    };
    Ok((plan, pipeline, scratch))
}

fn reduce_pipeline(ctx: &GpuContext, wg: u32, accumulate: bool) -> Result<Arc<Pipeline>> {
    ctx.pipeline(&PipelineSpec {
        shader: SPARSE_REDUCE,
        entry: "sparse_reduce",
        constants: &[
            ("WG", f64::from(wg)),
            ("ACCUM", f64::from(u8::from(accumulate))),
        ],
        bindings: REDUCE_BINDINGS,
    })
}

fn gemv_pipeline(
    ctx: &GpuContext,
    dtype: SparseDType,
    plan: &Plan,
    accumulate: bool,
    input: SparseInput,
) -> Result<Arc<Pipeline>> {
    let (wg, tpc) = (plan.wg, plan.tpc);
    let subgroups = ctx.features().subgroups;
    let (entry, bindings) = match (dtype, subgroups) {
        (SparseDType::F16, false) => ("sparse_f16", GEMV_BINDINGS_F16),
        (SparseDType::F16, true) => ("sparse_f16_subgroup", GEMV_BINDINGS_F16),
        (SparseDType::Affine4 { .. }, false) => ("sparse_affine4", GEMV_BINDINGS_AFFINE),
        (SparseDType::Affine4 { .. }, true) => ("sparse_affine4_subgroup", GEMV_BINDINGS_AFFINE),
    };
    ctx.pipeline(&PipelineSpec {
        shader: SPARSE_GEMV,
        entry,
        constants: &[
            ("WG", f64::from(wg)),
            ("TPC", f64::from(tpc)),
            ("ACCUM", f64::from(u8::from(accumulate))),
            ("GLU_IN", f64::from(u8::from(input == SparseInput::SwiGlu))),
            (
                "NORM_IN",
                f64::from(u8::from(matches!(input, SparseInput::RmsNorm { .. }))),
            ),
            (
                "NORM_EPS",
                match input {
                    SparseInput::RmsNorm { eps } => f64::from(eps),
                    _ => 1e-5,
                },
            ),
            ("LAST_REDUCE", f64::from(u8::from(plan.last_reduce))),
        ],
        bindings,
    })
}
