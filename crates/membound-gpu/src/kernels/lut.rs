//! Lookup-table GEMV for the codebook codecs (`shaders/gemv_lut.wgsl`):
//! `y = Ŵ·x` with `Ŵ[r, k] = L[r, q[r, k]]` (k-means, polynomial levels) or
//! `L[q[r, k]]·absmax[r, k / block]` (NF4), straight from the codec's
//! encoding.

use std::sync::Arc;

use half::{bf16, f16};
use membound_codec::{Encoded, NF4_LEVELS, Nf4Codec, Part, PartDType, ScaleDType, Spec};

use super::affine::{
    CodeRows, Launch, block_name, check_launch, check_vectors, params_buffer, rows_per_block,
    workgroup_size,
};
use crate::buffer::{GpuBuffer, GpuVector};
use crate::context::GpuContext;
use crate::dispatch::{Dispatch, Workgroups};
use crate::error::{GpuError, Result};
use crate::pipeline::{Binding, Pipeline, PipelineSpec};
use crate::shaders::GEMV_LUT;

const BINDINGS: &[Binding] = &[
    Binding::Uniform,
    Binding::Storage,
    Binding::Storage,
    Binding::Storage,
    Binding::Storage,
    Binding::StorageReadWrite,
];

/// The codebook encodings [`LutGemv`] reads, as their specs name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LutSource {
    /// `kmeans:bits=B,scope=row|tensor`: an f16 codebook of 2^B levels per
    /// row (`per_row`) or for the whole tensor; B-bit codes.
    KMeans {
        /// Bits per code (the kernel reads 2, 3, 4 and 8).
        bits: u32,
        /// One codebook per row, else one for the tensor.
        per_row: bool,
    },
    /// `nf4:block=K,scale=S`: the 16 NF4 levels times a per-block absmax.
    Nf4 {
        /// Weights per absmax block.
        block: usize,
        /// Storage type of the absmax.
        scale: ScaleDType,
    },
    /// `poly:degree=D` and `polymse:degree=D`: 16 levels per row from a
    /// polynomial in the level index; 4-bit codes.
    Poly {
        /// Degree of the level polynomial.
        degree: usize,
    },
}

impl LutSource {
    /// Bits per code.
    pub fn bits(&self) -> u32 {
        match self {
            Self::KMeans { bits, .. } => *bits,
            Self::Nf4 { .. } | Self::Poly { .. } => 4,
        }
    }

    /// Whether levels differ from row to row.
    pub fn per_row(&self) -> bool {
        match self {
            Self::KMeans { per_row, .. } => *per_row,
            Self::Nf4 { .. } => false,
            Self::Poly { .. } => true,
        }
    }
}

/// Rows of the matrix held in one set of device buffers.
#[derive(Debug)]
struct Block {
    codes: GpuBuffer,
    levels: GpuBuffer,
    scales: GpuBuffer,
    params: GpuBuffer,
    rows: usize,
}

/// A codebook-coded matrix (k-means, NF4, polynomial levels) uploaded once,
/// and the pipeline that multiplies it by a vector.
///
/// Codes keep the codec's packing (MLX's word layout, each row padded with
/// zero words to whole chunks of 16 bytes, 48 at 3 bits). Levels
/// are uploaded as f32, per row or once, and staged in workgroup memory by
/// each workgroup: k-means codebooks widened from f16; the polynomial
/// codecs' 16 levels evaluated on the host from the stored coefficients,
/// exactly as the codec's decoder does (Horner's rule with fused
/// multiply-adds in f32; WGSL's `fma` may or may not fuse, so evaluating in
/// the shader could differ in the last bit); NF4's fixed table. NF4 absmax
/// scales are packed two to a u32 (f16, bf16) or one (f32).
#[derive(Debug)]
pub struct LutGemv {
    name: String,
    rows: usize,
    cols: usize,
    source: LutSource,
    layout: CodeRows,
    blocks: Vec<Block>,
    pipeline: Arc<Pipeline>,
    workgroup_size: u32,
    /// Bytes of levels and scales on the device.
    side_bytes: u64,
}

/// A kernel-ready view of an encoding: levels (per row or shared), codes,
/// and NF4's packed scales.
struct Prepared<'e> {
    codes: std::borrow::Cow<'e, [u32]>,
    /// `rows × levels` or `levels` values.
    levels: Vec<f32>,
    /// Packed scale words, `scale_stride` a row (empty without scales).
    scales: Vec<u32>,
    scale_stride: usize,
    /// Scales per row (1 without scales).
    scale_blocks: usize,
}

/// Rows each workgroup computes (the shader's constant).
const ROWS: usize = 4;

/// The kernel's chunk (what a thread loads from a row at once): codes and
/// u32 words, one 16-byte vector (three at 3 bits).
fn chunk(source: LutSource) -> (usize, u32) {
    match source.bits() {
        2 => (64, 4),
        3 => (128, 12),
        4 => (32, 4),
        _ => (16, 4),
    }
}

/// Levels staged in workgroup memory: a set per row, or one.
fn lut_len(source: LutSource) -> u32 {
    let n = 1u32 << source.bits();
    if source.per_row() { ROWS as u32 * n } else { n }
}

/// Workgroup memory of the LUT kernel: a vec4 partial sum a thread and the
/// staged levels.
fn lut_shared_bytes(source: LutSource, wg: u32) -> u32 {
    wg * 16 + lut_len(source) * 4
}

impl LutGemv {
    /// Checks `encoded` (a `kmeans`, `nf4`, `poly` or `polymse` encoding:
    /// spec, part shapes and types, finite levels and scales) and uploads
    /// it. `name` (the tensor's) labels the buffers and every error about
    /// them.
    pub fn new(ctx: &GpuContext, name: &str, encoded: &Encoded) -> Result<Self> {
        let what = format!("LUT GEMV `{name}`");
        let (rows, cols) = (encoded.rows, encoded.cols);
        if rows == 0 || u32::try_from(rows).is_err() {
            return Err(GpuError::invalid(
                &what,
                format!("{rows}×{cols}: the kernel takes 1 to 2^32 - 1 rows"),
            ));
        }
        let source = source_of(&what, encoded)?;
        let mut layout = CodeRows::new(&what, source.bits(), cols)?;
        // Rows padded to whole chunks.
        let (chunk_codes, chunk_words) = chunk(source);
        let chunks = cols.div_ceil(chunk_codes);
        layout.stride = chunks * chunk_words as usize;
        let p = prepare(&what, encoded, source, &layout)?;

        let n_levels = 1usize << source.bits();
        let level_row_bytes = if source.per_row() {
            (n_levels * 4) as u64
        } else {
            0
        };
        let scale_row_bytes = (p.scale_stride * 4) as u64;
        let rows_per_block = rows_per_block(
            ctx,
            name,
            &what,
            rows,
            &layout,
            &[level_row_bytes, scale_row_bytes],
        )?;
        if u32::try_from(rows_per_block * n_levels.max(p.scale_stride)).is_err() {
            return Err(GpuError::invalid(
                &what,
                "levels or scales of a block exceed 2^32 values".to_owned(),
            ));
        }

        let stride_vec4 = layout.stride / 4;
        let wg = workgroup_size(ctx, chunks, |wg| lut_shared_bytes(source, wg));
        let pipeline = Self::pipeline(ctx, source, wg)?;

        let mut blocks = Vec::new();
        let mut side_bytes = 0;
        let mut first = 0;
        while first < rows {
            let block_rows = rows_per_block.min(rows - first);
            let block_name = block_name(name, first, block_rows, rows);
            let codes = layout.upload(ctx, &block_name, &p.codes, first, block_rows)?;
            let levels: &[f32] = if source.per_row() {
                &p.levels[first * n_levels..(first + block_rows) * n_levels]
            } else {
                &p.levels
            };
            let levels = GpuBuffer::from_bytes(
                ctx,
                &format!("{block_name} levels"),
                bytemuck::cast_slice(levels),
                wgpu::BufferUsages::STORAGE,
            )?;
            let scale_words =
                &p.scales[first * p.scale_stride..(first + block_rows) * p.scale_stride];
            let scales = GpuBuffer::from_bytes(
                ctx,
                &format!("{block_name} scales"),
                bytemuck::cast_slice(scale_words),
                wgpu::BufferUsages::STORAGE,
            )?;
            side_bytes += levels.size() + (scale_words.len() * 4) as u64;
            let params = params_buffer(
                ctx,
                &block_name,
                [
                    block_rows as u32,
                    cols as u32,
                    stride_vec4 as u32,
                    first as u32,
                    chunks as u32,
                    (cols / chunk_codes) as u32,
                    p.scale_blocks as u32,
                    p.scale_stride as u32,
                ],
            )?;
            blocks.push(Block {
                codes,
                levels,
                scales,
                params,
                rows: block_rows,
            });
            first += block_rows;
        }

        Ok(Self {
            name: name.to_owned(),
            rows,
            cols,
            source,
            layout,
            blocks,
            pipeline,
            workgroup_size: wg,
            side_bytes,
        })
    }

    fn pipeline(ctx: &GpuContext, source: LutSource, wg: u32) -> Result<Arc<Pipeline>> {
        let (block, scale_kind) = match source {
            LutSource::Nf4 { block, scale } => (
                block as f64,
                match scale {
                    ScaleDType::F16 => 0.0,
                    ScaleDType::BF16 => 1.0,
                    ScaleDType::F32 => 2.0,
                },
            ),
            _ => (0.0, 0.0),
        };
        let entry = if ctx.features().subgroups {
            "gemv_lut_subgroup"
        } else {
            "gemv_lut"
        };
        ctx.pipeline(&PipelineSpec {
            shader: GEMV_LUT,
            entry,
            constants: &[
                ("WG", f64::from(wg)),
                ("BITS", f64::from(source.bits())),
                ("BLOCK", block),
                ("SCALE_KIND", scale_kind),
                ("PER_ROW", if source.per_row() { 1.0 } else { 0.0 }),
                ("LUT_LEN", f64::from(lut_len(source))),
            ],
            bindings: BINDINGS,
        })
    }

    /// Launches the dispatches bound from now on with `launch` instead of
    /// the shape chosen from the row length: for tuning and benchmarks. Only
    /// the workgroup size can change: the LUT kernel computes 4 rows a
    /// workgroup and takes a 16-byte chunk (48 at 3 bits) of a row at once
    /// (see [`LutGemv::launch`]).
    pub fn set_launch(&mut self, ctx: &GpuContext, launch: Launch) -> Result<()> {
        let what = format!("LUT GEMV `{}`", self.name);
        let fixed = self.launch();
        if (launch.rows_per_workgroup, launch.unit_words) != (ROWS, fixed.unit_words) {
            return Err(GpuError::invalid(
                &what,
                format!(
                    "{launch}: this kernel takes {ROWS} rows and {}-word units",
                    fixed.unit_words
                ),
            ));
        }
        let wg = launch.workgroup_size;
        check_launch(ctx, &what, ROWS, wg, lut_shared_bytes(self.source, wg))?;
        self.pipeline = Self::pipeline(ctx, self.source, wg)?;
        self.workgroup_size = wg;
        Ok(())
    }

    /// Binds the matrix to input `x` (at least `cols` values) and output `y`
    /// (at least `rows` values). Build it once and record it as often as
    /// wanted.
    pub fn bind(&self, ctx: &GpuContext, x: &GpuVector, y: &GpuVector) -> Result<Dispatch> {
        let what = format!("LUT GEMV `{}`", self.name);
        check_vectors(&what, self.rows, self.cols, x, y)?;
        let mut dispatch = Dispatch::new();
        for block in &self.blocks {
            let bind_group = self.pipeline.bind(
                ctx,
                &[
                    &block.params,
                    &block.codes,
                    &block.levels,
                    &block.scales,
                    x.buffer(),
                    y.buffer(),
                ],
            )?;
            let workgroups = block.rows.div_ceil(ROWS) as u32;
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

    /// The encoding this holds.
    pub fn source(&self) -> LutSource {
        self.source
    }

    /// How the kernel is launched.
    pub fn launch(&self) -> Launch {
        Launch {
            rows_per_workgroup: ROWS,
            workgroup_size: self.workgroup_size,
            unit_words: chunk(self.source).1,
        }
    }

    /// Number of weight blocks (1 unless the matrix exceeded a binding limit).
    pub fn blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Bytes of packed codes on the device, row padding included.
    pub fn code_bytes(&self) -> u64 {
        self.rows as u64 * self.layout.row_bytes()
    }

    /// Bytes of weights on the device: codes, levels (f32) and scales.
    pub fn weight_bytes(&self) -> u64 {
        self.code_bytes() + self.side_bytes
    }

    /// Bytes one call reads from memory: every code (with row padding),
    /// level and scale, and x once. Workgroups re-read x, shared levels and
    /// scales, but from cache; y's writes are not counted.
    pub fn bytes_read(&self) -> u64 {
        self.weight_bytes() + (self.cols * 4) as u64
    }
}

/// Which codebook codec made `e`, from its spec.
fn source_of(what: &str, e: &Encoded) -> Result<LutSource> {
    let bad = |problem: String| GpuError::invalid(what, problem);
    // The codec's canonical spec: every setting spelled out, defaults included.
    let canonical = membound_codec::codec_from_spec(&e.spec)
        .map_err(|err| bad(err.to_string()))?
        .spec();
    let mut spec = Spec::parse(&canonical).map_err(|err| bad(err.to_string()))?;
    let spec_err = |err: membound_codec::Error| bad(err.to_string());
    match spec.name.as_str() {
        "kmeans" => {
            let bits: u32 = spec.take("bits", 4).map_err(spec_err)?;
            let scope: String = spec.take("scope", "row".to_owned()).map_err(spec_err)?;
            Ok(LutSource::KMeans {
                bits,
                per_row: scope == "row",
            })
        }
        "nf4" => {
            let c = Nf4Codec::from_spec(spec).map_err(spec_err)?;
            if u32::try_from(c.block).is_err() {
                return Err(bad(format!("block={} exceeds the kernel's u32", c.block)));
            }
            Ok(LutSource::Nf4 {
                block: c.block,
                scale: c.scale,
            })
        }
        "poly" | "polymse" => {
            let degree: usize = spec.take("degree", 3).map_err(spec_err)?;
            Ok(LutSource::Poly { degree })
        }
        other => Err(bad(format!(
            "`{}` ({other}) is not a codebook encoding; the LUT kernel reads kmeans, nf4, poly \
             and polymse",
            e.spec
        ))),
    }
}

/// Part `name` of `e`, checked to be `dtype` with `shape`.
fn part<'e>(
    what: &str,
    e: &'e Encoded,
    name: &str,
    dtype: PartDType,
    shape: [usize; 2],
) -> Result<&'e Part> {
    let p = e
        .part(name)
        .map_err(|err| GpuError::invalid(what, err.to_string()))?;
    let bytes = shape[0]
        .checked_mul(shape[1])
        .and_then(|n| n.checked_mul(dtype.size()));
    if p.dtype != dtype || p.shape != shape || Some(p.data.len()) != bytes {
        return Err(GpuError::invalid(
            what,
            format!(
                "part `{name}` is {:?} {:?} with {} bytes, expected {dtype:?} {shape:?}",
                p.dtype,
                p.shape,
                p.data.len()
            ),
        ));
    }
    Ok(p)
}

/// Little-endian values of a checked part.
fn values(p: &Part) -> Vec<f32> {
    match p.dtype {
        PartDType::F16 => p
            .data
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        PartDType::BF16 => p
            .data
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => p
            .data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    }
}

/// Errors unless every value is finite (an infinite level times a masked
/// zero would poison a whole row).
fn check_finite(what: &str, part: &str, v: &[f32]) -> Result<()> {
    match v.iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(i) => Err(GpuError::invalid(
            what,
            format!("part `{part}`: value {i} is {}", v[i]),
        )),
    }
}

fn prepare<'e>(
    what: &str,
    e: &'e Encoded,
    source: LutSource,
    layout: &CodeRows,
) -> Result<Prepared<'e>> {
    let (rows, wpr) = (e.rows, layout.words_per_row);
    let codes_part = match source {
        LutSource::Nf4 { .. } => "weight",
        _ => "codes",
    };
    let codes = part(what, e, codes_part, PartDType::U32, [rows, wpr])?;
    let codes = membound_codec::pack::le_words(&codes.data);
    let mut prepared = Prepared {
        codes,
        levels: Vec::new(),
        scales: Vec::new(),
        scale_stride: 0,
        scale_blocks: 1,
    };
    match source {
        LutSource::KMeans { bits, per_row } => {
            let books = if per_row { rows } else { 1 };
            let p = part(what, e, "codebook", PartDType::F16, [books, 1 << bits])?;
            prepared.levels = values(p);
            check_finite(what, "codebook", &prepared.levels)?;
        }
        LutSource::Poly { degree } => {
            let p = part(what, e, "coeffs", PartDType::F32, [rows, degree + 1])?;
            let coeffs = values(p);
            check_finite(what, "coeffs", &coeffs)?;
            prepared.levels = coeffs
                .chunks_exact(degree + 1)
                .flat_map(poly_levels)
                .collect();
            check_finite(what, "coeffs (evaluated levels)", &prepared.levels)?;
        }
        LutSource::Nf4 { block, scale } => {
            let blocks = e.cols.div_ceil(block);
            let p = part(what, e, "scales", scale.part_dtype(), [rows, blocks])?;
            let a = values(p);
            check_finite(what, "scales", &a)?;
            prepared.levels = NF4_LEVELS.to_vec();
            prepared.scale_blocks = blocks;
            match scale {
                ScaleDType::F32 => {
                    prepared.scale_stride = blocks;
                    prepared.scales = a.iter().map(|v| v.to_bits()).collect();
                }
                ScaleDType::F16 | ScaleDType::BF16 => {
                    // Two 16-bit scales a word, rows starting on a word.
                    prepared.scale_stride = blocks.div_ceil(2);
                    let half: Vec<u16> = p
                        .data
                        .chunks_exact(2)
                        .map(|b| u16::from_le_bytes([b[0], b[1]]))
                        .collect();
                    prepared.scales = half
                        .chunks_exact(blocks)
                        .flat_map(|row| {
                            row.chunks(2).map(|pair| {
                                u32::from(pair[0])
                                    | u32::from(pair.get(1).copied().unwrap_or(0)) << 16
                            })
                        })
                        .collect();
                }
            }
        }
    }
    Ok(prepared)
}

/// The 16 levels `L(j) = c0 + j·(c1 + j·(c2 + …))` of one row's polynomial
/// coefficients, by Horner's rule with fused multiply-adds in f32: the
/// arithmetic of the polynomial codecs' decoder, so the levels are equal.
fn poly_levels(coeffs: &[f32]) -> [f32; 16] {
    std::array::from_fn(|j| {
        let x = j as f32;
        coeffs.iter().rev().fold(0f32, |acc, &c| acc.mul_add(x, c))
    })
}
