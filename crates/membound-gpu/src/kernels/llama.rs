//! The small kernels of a LLaMA-family decode step (`shaders/llama_ops.wgsl`):
//! RMSNorm with the residual add fused in, attention (with the biases,
//! RoPE and the KV-cache write fused in), SwiGLU and argmax.
//!
//! Each function checks its buffers and returns a [`Dispatch`] to record
//! every token. The step's position and token live in a 16-byte uniform
//! ([`StepBuffer`]) that the host rewrites before each submission, so one
//! recording serves every position.

use std::sync::Arc;

use crate::buffer::{GpuBuffer, GpuVector, check_binding_size};
use crate::context::GpuContext;
use crate::dispatch::{Dispatch, Workgroups};
use crate::error::{GpuError, Result};
use crate::pipeline::{Binding, Pipeline, PipelineSpec};
use crate::shaders::LLAMA_OPS;

/// The uniform holding the step's position and input token.
#[derive(Debug)]
pub struct StepBuffer {
    buffer: GpuBuffer,
}

impl StepBuffer {
    /// A step buffer at position 0, token 0.
    pub fn new(ctx: &GpuContext) -> Result<Self> {
        let buffer = GpuBuffer::new(
            ctx,
            "decode step",
            16,
            wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        )?;
        Ok(Self { buffer })
    }

    /// Queues the position and token of the next submission.
    pub fn write(&self, ctx: &GpuContext, pos: u32, token: u32) {
        ctx.queue().write_buffer(
            self.buffer.raw(),
            0,
            bytemuck::cast_slice(&[pos, token, 0, 0]),
        );
    }

    /// The buffer.
    pub fn buffer(&self) -> &GpuBuffer {
        &self.buffer
    }
}

/// How the KV cache stores keys and values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum KvDType {
    /// 4 bytes a value.
    #[default]
    F32,
    /// IEEE half.
    F16,
    /// 8-bit affine codes, with an f16 scale and minimum per 32 values of
    /// a head (per head when narrower): MLX's affine convention.
    Q8,
    /// 4-bit affine codes, grouped like [`KvDType::Q8`].
    Q4,
}

impl KvDType {
    /// Bits per stored value (without the groups' scales).
    pub const fn bits(self) -> u32 {
        match self {
            Self::F32 => 32,
            Self::F16 => 16,
            Self::Q8 => 8,
            Self::Q4 => 4,
        }
    }

    /// Parses `f32`, `f16`, `q8` or `q4`.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "f32" => Self::F32,
            "f16" => Self::F16,
            "q8" => Self::Q8,
            "q4" => Self::Q4,
            other => {
                return Err(GpuError::invalid(
                    "KV cache",
                    format!("{other:?} is not a KV-cache type; use f32, f16, q8 or q4"),
                ));
            }
        })
    }

    /// The name `parse` reads.
    pub const fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Q8 => "q8",
            Self::Q4 => "q4",
        }
    }

    /// Whether values are codes with per-group scales.
    pub const fn is_quantized(self) -> bool {
        matches!(self, Self::Q8 | Self::Q4)
    }
}

/// Attention shapes and conventions of one model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionShape {
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads; divides `n_heads`.
    pub n_kv_heads: usize,
    /// Width of a head: a multiple of 4 that divides 256.
    pub head_dim: usize,
    /// Positions the KV cache holds.
    pub context: usize,
    /// `true`: dimensions (i, i + d/2) rotate together (Hugging Face);
    /// `false`: (2i, 2i + 1) do (llama2.c, GGUF).
    pub rope_half: bool,
    /// How the cache stores keys and values.
    pub kv: KvDType,
    /// Workgroups sharing each KV head's positions (1: one workgroup per
    /// KV head, output written directly; more: flash-decoding style
    /// ranges merged by a second dispatch, for long contexts).
    pub splits: usize,
}

impl AttentionShape {
    /// Query width.
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Key (and value) width.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Values per scale group of a quantized cache: 32, or the head width
    /// when narrower.
    pub fn kv_group(&self) -> usize {
        self.head_dim.min(32)
    }

    /// Bytes of keys (or of values) one position takes in the cache, scales
    /// included.
    pub fn kv_bytes_per_position(&self) -> usize {
        let codes = self.kv_dim() * self.kv.bits() as usize / 8;
        let params = if self.kv.is_quantized() {
            self.kv_dim() / self.kv_group() * 4
        } else {
            0
        };
        codes + params
    }

    fn check(&self) -> Result<()> {
        let bad = |p: String| Err(GpuError::invalid("attention", p));
        if self.n_heads == 0 || self.n_kv_heads == 0 || self.n_heads % self.n_kv_heads != 0 {
            return bad(format!(
                "{} heads are not a multiple of {} kv heads",
                self.n_heads, self.n_kv_heads
            ));
        }
        if self.head_dim == 0 || self.head_dim % 4 != 0 || 256 % self.head_dim != 0 {
            return bad(format!(
                "head width {}: the kernel takes multiples of 4 that divide 256",
                self.head_dim
            ));
        }
        let group = self.n_heads / self.n_kv_heads;
        if group > 8 || group * self.head_dim > 1024 {
            return bad(format!(
                "{group} query heads of width {} per KV head: the kernel stages at most 8 \
                 heads and 1024 values",
                self.head_dim
            ));
        }
        if self.context == 0 {
            return bad("a context of 0 positions".into());
        }
        if self.splits == 0 || self.splits > 256 {
            return bad(format!("{} splits: take 1 to 256", self.splits));
        }
        Ok(())
    }

    /// The host-computed RoPE table: for position p and pair i, cos and sin
    /// of p·θ^(−2i/d) at `[2·(p·d/2 + i)]`, computed in f64.
    pub fn rope_table(&self, theta: f64) -> Vec<f32> {
        let half = self.head_dim / 2;
        let mut t = Vec::with_capacity(self.context * half * 2);
        for p in 0..self.context {
            for i in 0..half {
                let freq = theta.powf(-((2 * i) as f64) / self.head_dim as f64);
                let (s, c) = (p as f64 * freq).sin_cos();
                t.push(c as f32);
                t.push(s as f32);
            }
        }
        t
    }
}

fn pipeline(
    ctx: &GpuContext,
    entry: &str,
    constants: &[(&str, f64)],
    bindings: &[Binding],
) -> Result<Arc<Pipeline>> {
    ctx.pipeline(&PipelineSpec {
        shader: LLAMA_OPS,
        entry,
        constants,
        bindings,
    })
}

fn one(
    ctx: &GpuContext,
    pipeline: Arc<Pipeline>,
    buffers: &[&GpuBuffer],
    grid: [u32; 3],
) -> Result<Dispatch> {
    let bind_group = pipeline.bind(ctx, buffers)?;
    let mut d = Dispatch::new();
    d.push(pipeline, bind_group, Workgroups::Direct(grid));
    Ok(d)
}

fn need(what: &str, v: &GpuVector, len: usize) -> Result<()> {
    if v.len() < len {
        return Err(GpuError::invalid(
            what,
            format!(
                "vector `{}` has {} values, needs {len}",
                v.buffer().name(),
                v.len()
            ),
        ));
    }
    Ok(())
}

fn need_bytes(what: &str, b: &GpuBuffer, bytes: u64) -> Result<()> {
    if b.size() < bytes {
        return Err(GpuError::invalid(
            what,
            format!(
                "buffer `{}` has {} bytes, needs {bytes}",
                b.name(),
                b.size()
            ),
        ));
    }
    Ok(())
}

fn u32_of(what: &str, n: usize) -> Result<f64> {
    u32::try_from(n)
        .map(f64::from)
        .map_err(|_| GpuError::invalid(what, format!("{n} exceeds 2^32 - 1")))
}

/// Widths the norm kernels take: each of 256 threads holds 32 values.
pub const MAX_NORM_WIDTH: usize = 8192;

fn norm_width(what: &str, weight: &GpuVector) -> Result<usize> {
    let dim = weight.len();
    if dim == 0 || dim > MAX_NORM_WIDTH {
        return Err(GpuError::invalid(
            what,
            format!("width {dim}: the kernel takes 1 to {MAX_NORM_WIDTH}"),
        ));
    }
    Ok(dim)
}

/// `out = x / rms(x) · weight` over the first `weight.len()` values.
pub fn rms_norm(
    ctx: &GpuContext,
    x: &GpuVector,
    weight: &GpuVector,
    eps: f32,
    out: &GpuVector,
) -> Result<Dispatch> {
    let what = "RMSNorm";
    let dim = norm_width(what, weight)?;
    need(what, x, dim)?;
    need(what, out, dim)?;
    let p = pipeline(
        ctx,
        "rms_norm",
        &[("DIM", u32_of(what, dim)?), ("NORM_EPS", f64::from(eps))],
        &[
            Binding::Storage,
            Binding::Storage,
            Binding::StorageReadWrite,
        ],
    )?;
    one(
        ctx,
        p,
        &[x.buffer(), weight.buffer(), out.buffer()],
        [1, 1, 1],
    )
}

/// `x += y`, then `out = x / rms(x) · weight`: the residual add and the
/// next RMSNorm in one dispatch.
pub fn add_rms_norm(
    ctx: &GpuContext,
    x: &GpuVector,
    y: &GpuVector,
    weight: &GpuVector,
    eps: f32,
    out: &GpuVector,
) -> Result<Dispatch> {
    let what = "residual add + RMSNorm";
    let dim = norm_width(what, weight)?;
    need(what, x, dim)?;
    need(what, y, dim)?;
    need(what, out, dim)?;
    let p = pipeline(
        ctx,
        "add_rms_norm",
        &[("DIM", u32_of(what, dim)?), ("NORM_EPS", f64::from(eps))],
        &[
            Binding::StorageReadWrite,
            Binding::Storage,
            Binding::Storage,
            Binding::StorageReadWrite,
        ],
    )?;
    one(
        ctx,
        p,
        &[x.buffer(), y.buffer(), weight.buffer(), out.buffer()],
        [1, 1, 1],
    )
}

/// The KV cache of one layer: `context × kv_dim` keys and values in the
/// shape's [`KvDType`], and for quantized caches their groups' scales.
#[derive(Debug)]
pub struct KvCache {
    /// Keys, position-major, packed in u32 words.
    pub k: GpuBuffer,
    /// Values, the same way.
    pub v: GpuBuffer,
    /// Keys' (scale, minimum) per group as f16 pairs (4 bytes unless
    /// quantized).
    pub k_params: GpuBuffer,
    /// Values' (scale, minimum).
    pub v_params: GpuBuffer,
}

impl KvCache {
    /// A zeroed cache for `shape`, named after `layer`.
    pub fn new(ctx: &GpuContext, layer: usize, shape: &AttentionShape) -> Result<Self> {
        shape.check()?;
        let n = shape.context as u64;
        let codes =
            (n * (shape.kv_dim() as u64) * u64::from(shape.kv.bits()) / 8).next_multiple_of(16);
        let params = if shape.kv.is_quantized() {
            n * (shape.kv_dim() / shape.kv_group()) as u64 * 4
        } else {
            4
        };
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
        let make = |kind: &str, bytes: u64| {
            let name = format!(
                "layer {layer} {kind} ({} positions, {})",
                shape.context,
                shape.kv.name()
            );
            crate::buffer::check_binding_size(ctx, &name, bytes)?;
            GpuBuffer::new(ctx, &name, bytes, usage)
        };
        Ok(Self {
            k: make("key cache", codes)?,
            v: make("value cache", codes)?,
            k_params: make("key scales", params)?,
            v_params: make("value scales", params)?,
        })
    }

    /// Bytes of keys and values together, scales included.
    pub fn bytes(&self) -> u64 {
        let params = if self.k_params.size() > 4 {
            self.k_params.size() + self.v_params.size()
        } else {
            0
        };
        self.k.size() + self.v.size() + params
    }
}

/// The decode step's attention for every head, one workgroup per KV head:
/// adds the optional q/k/v `bias` to `qkv` (q, k and v of this token,
/// concatenated), rotates q and k to the step's position with `rope_table`
/// (from [`AttentionShape::rope_table`]), writes k and v into `cache` at the
/// position, and writes `out = softmax(q·Kᵀ/√d)·V` over positions `0..=pos`
/// for each query head. K and V are read once per group of query heads.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    ctx: &GpuContext,
    shape: &AttentionShape,
    step: &StepBuffer,
    qkv: &GpuVector,
    bias: Option<&GpuVector>,
    rope_table: &GpuVector,
    cache: &KvCache,
    out: &GpuVector,
) -> Result<Dispatch> {
    let what = "attention";
    shape.check()?;
    let total = shape.q_dim() + 2 * shape.kv_dim();
    need(what, qkv, total)?;
    if let Some(b) = bias {
        need(what, b, total)?;
    }
    need(what, rope_table, shape.context * shape.head_dim)?;
    need(what, out, shape.q_dim())?;
    let cache_bytes = (shape.context * shape.kv_dim()) as u64 * u64::from(shape.kv.bits()) / 8;
    need_bytes(what, &cache.k, cache_bytes)?;
    need_bytes(what, &cache.v, cache_bytes)?;
    let p = pipeline(
        ctx,
        "attention",
        &[
            ("N_HEADS", u32_of(what, shape.n_heads)?),
            ("N_KV_HEADS", u32_of(what, shape.n_kv_heads)?),
            ("HEAD_DIM", u32_of(what, shape.head_dim)?),
            ("ROPE_HALF", if shape.rope_half { 1.0 } else { 0.0 }),
            ("HAS_BIAS", if bias.is_some() { 1.0 } else { 0.0 }),
            ("KV_BITS", f64::from(shape.kv.bits())),
            ("KV_GROUP", shape.kv_group() as f64),
            ("ATT_SPLITS", shape.splits as f64),
        ],
        &[
            Binding::Uniform,
            Binding::Storage,
            Binding::Storage,
            Binding::Storage,
            Binding::StorageReadWrite,
            Binding::StorageReadWrite,
            Binding::StorageReadWrite,
            Binding::StorageReadWrite,
            Binding::StorageReadWrite,
            Binding::StorageReadWrite,
        ],
    )?;
    let kv_heads = u32_of(what, shape.n_kv_heads)? as u32;
    let grid = [kv_heads, shape.splits as u32, 1];
    let group = shape.n_heads / shape.n_kv_heads;
    let partial_bytes = if shape.splits > 1 {
        (shape.n_kv_heads * shape.splits * group * (shape.head_dim + 2) * 4) as u64
    } else {
        4
    };
    let partials = GpuBuffer::new(
        ctx,
        "attention partial results",
        partial_bytes,
        wgpu::BufferUsages::STORAGE,
    )?;
    let mut d = one(
        ctx,
        p,
        &[
            step.buffer(),
            qkv.buffer(),
            bias.unwrap_or(qkv).buffer(),
            rope_table.buffer(),
            &cache.k,
            &cache.v,
            out.buffer(),
            &cache.k_params,
            &cache.v_params,
            &partials,
        ],
        grid,
    )?;
    if shape.splits > 1 {
        let combine = pipeline(
            ctx,
            "attention_combine",
            &[
                ("N_HEADS", u32_of(what, shape.n_heads)?),
                ("N_KV_HEADS", f64::from(kv_heads)),
                ("HEAD_DIM", u32_of(what, shape.head_dim)?),
                ("ATT_SPLITS", shape.splits as f64),
            ],
            &[Binding::Storage, Binding::StorageReadWrite],
        )?;
        d.extend(one(
            ctx,
            combine,
            &[&partials, out.buffer()],
            [kv_heads, 1, 1],
        )?);
    }
    Ok(d)
}

/// `out[i] = silu(gate_up[i]) · gate_up[hidden + i]` for `i < out.len()`.
pub fn swiglu(ctx: &GpuContext, gate_up: &GpuVector, out: &GpuVector) -> Result<Dispatch> {
    let what = "SwiGLU";
    let hidden = out.len();
    need(what, gate_up, 2 * hidden)?;
    let p = pipeline(
        ctx,
        "swiglu",
        &[("HIDDEN", u32_of(what, hidden)?)],
        &[Binding::Storage, Binding::StorageReadWrite],
    )?;
    let grid = ctx.grid_1d(what, hidden.div_ceil(256) as u32)?;
    one(ctx, p, &[gate_up.buffer(), out.buffer()], grid)
}

/// `out = table[token[0]]`: the embedding row of the token in the first
/// word of `token` (e.g. [`argmax`]'s output), for `table` row-major
/// `[vocab, out.len()]` f32 (a token past the table takes its last row).
/// Feeding each step's argmax to the next on the GPU lets a greedy loop
/// run without the host in between.
pub fn embed_gather(
    ctx: &GpuContext,
    table: &GpuBuffer,
    vocab: usize,
    token: &GpuBuffer,
    out: &GpuVector,
) -> Result<Dispatch> {
    let what = "embedding gather";
    let dim = out.len();
    if vocab == 0 || dim == 0 {
        return Err(GpuError::invalid(what, "empty embedding table"));
    }
    let bytes = (vocab as u64)
        .checked_mul(dim as u64 * 4)
        .ok_or_else(|| GpuError::invalid(what, "table size overflows"))?;
    need_bytes(what, table, bytes)?;
    need_bytes(what, token, 4)?;
    u32_of(what, vocab * dim)?;
    check_binding_size(ctx, table.name(), bytes)?;
    let p = pipeline(
        ctx,
        "embed_gather",
        &[
            ("EMBED_VOCAB", u32_of(what, vocab)?),
            ("EMBED_DIM", u32_of(what, dim)?),
        ],
        &[
            Binding::Storage,
            Binding::Storage,
            Binding::StorageReadWrite,
        ],
    )?;
    let grid = ctx.grid_1d(what, dim.div_ceil(256) as u32)?;
    one(ctx, p, &[table, token, out.buffer()], grid)
}

/// `out[0]` = the index of the largest of `logits` (the lowest on ties;
/// NaN never wins; 0 if all are NaN), in two dispatches (64 workgroups,
/// then one). `out` needs `STORAGE` and 4 bytes.
pub fn argmax(ctx: &GpuContext, logits: &GpuVector, out: &GpuBuffer) -> Result<Dispatch> {
    let what = "argmax";
    need_bytes(what, out, 4)?;
    let vocab = [("VOCAB", u32_of(what, logits.len())?)];
    let stage1 = pipeline(
        ctx,
        "argmax_stage1",
        &vocab,
        &[Binding::Storage, Binding::StorageReadWrite],
    )?;
    let stage2 = pipeline(
        ctx,
        "argmax_stage2",
        &[],
        &[Binding::Storage, Binding::StorageReadWrite],
    )?;
    let partial = GpuBuffer::new(
        ctx,
        "argmax partial winners",
        64 * 8,
        wgpu::BufferUsages::STORAGE,
    )?;
    let mut d = one(ctx, stage1, &[logits.buffer(), &partial], [64, 1, 1])?;
    d.extend(one(ctx, stage2, &[&partial, out], [1, 1, 1])?);
    Ok(d)
}
