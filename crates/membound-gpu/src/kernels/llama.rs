//! The small kernels of a LLaMA-family decode step (`shaders/llama_ops.wgsl`):
//! RMSNorm with the residual add fused in, attention (with the biases,
//! RoPE and the KV-cache write fused in), SwiGLU and argmax.
//!
//! Each function checks its buffers and returns a [`Dispatch`] to record
//! every token. The step's position and token live in a 16-byte uniform
//! ([`StepBuffer`]) that the host rewrites before each submission, so one
//! recording serves every position.

use std::sync::Arc;

use crate::buffer::{GpuBuffer, GpuVector};
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
        ctx.queue()
            .write_buffer(self.buffer.raw(), 0, bytemuck::cast_slice(&[pos, token, 0, 0]));
    }

    /// The buffer.
    pub fn buffer(&self) -> &GpuBuffer {
        &self.buffer
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
            format!("buffer `{}` has {} bytes, needs {bytes}", b.name(), b.size()),
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
        &[Binding::Storage, Binding::Storage, Binding::StorageReadWrite],
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

/// The KV cache of one layer: `context × kv_dim` f32 keys and values.
#[derive(Debug)]
pub struct KvCache {
    /// Keys, position-major.
    pub k: GpuBuffer,
    /// Values, position-major.
    pub v: GpuBuffer,
}

impl KvCache {
    /// A zeroed cache for `shape`, named after `layer`.
    pub fn new(ctx: &GpuContext, layer: usize, shape: &AttentionShape) -> Result<Self> {
        shape.check()?;
        let bytes = (shape.context as u64) * (shape.kv_dim() as u64) * 4;
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
        let make = |kind: &str| {
            let name = format!("layer {layer} {kind} cache ({} positions)", shape.context);
            crate::buffer::check_binding_size(ctx, &name, bytes)?;
            GpuBuffer::new(ctx, &name, bytes, usage)
        };
        Ok(Self {
            k: make("key")?,
            v: make("value")?,
        })
    }

    /// Bytes of keys and values together.
    pub fn bytes(&self) -> u64 {
        self.k.size() + self.v.size()
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
    let cache_bytes = (shape.context * shape.kv_dim() * 4) as u64;
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
        ],
        &[
            Binding::Uniform,
            Binding::Storage,
            Binding::Storage,
            Binding::Storage,
            Binding::StorageReadWrite,
            Binding::StorageReadWrite,
            Binding::StorageReadWrite,
        ],
    )?;
    let grid = [u32_of(what, shape.n_kv_heads)? as u32, 1, 1];
    one(
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
        ],
        grid,
    )
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
    let partial = GpuBuffer::new(ctx, "argmax partial winners", 64 * 8, wgpu::BufferUsages::STORAGE)?;
    let mut d = one(ctx, stage1, &[logits.buffer(), &partial], [64, 1, 1])?;
    d.extend(one(ctx, stage2, &[&partial, out], [1, 1, 1])?);
    Ok(d)
}
