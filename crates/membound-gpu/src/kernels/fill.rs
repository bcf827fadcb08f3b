//! Seeded pseudo-random buffer fills (`shaders/fill.wgsl`): synthetic
//! weights of real sizes, made on the GPU with no file and no upload.

use crate::buffer::GpuBuffer;
use crate::context::GpuContext;
use crate::dispatch::{Dispatch, Workgroups};
use crate::error::{GpuError, Result};
use crate::pipeline::{Binding, PipelineSpec};
use crate::shaders::FILL;

/// What each 32-bit word of a filled buffer holds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fill {
    /// Uniformly random bits (packed codes).
    Bits,
    /// Two f16 uniform in `[-a, a]`.
    F16Pair(f32),
    /// One f32 uniform in `[-a, a]`.
    F32(f32),
    /// The constant f16 pair `(a, b)` (a scale and a bias).
    ConstPair(f32, f32),
}

/// `count` storage buffers (readable back) of `size` bytes, named
/// `{name} #i`, each filled
/// with random bits (buffer i from seed i): distinct memory for a benchmark
/// that rotates through copies to read past the last-level cache.
pub fn random_buffers(
    ctx: &GpuContext,
    name: &str,
    size: u64,
    count: usize,
) -> Result<Vec<GpuBuffer>> {
    (0..count)
        .map(|i| {
            let b = GpuBuffer::new(
                ctx,
                &format!("{name} #{i}"),
                size,
                wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            )?;
            fill_buffer(ctx, &b, Fill::Bits, i as u32)?;
            Ok(b)
        })
        .collect()
}

/// Overwrites every word of `buffer` (which needs `STORAGE` usage) with
/// `fill`, reproducibly from `seed`, and submits without waiting.
pub fn fill_buffer(ctx: &GpuContext, buffer: &GpuBuffer, fill: Fill, seed: u32) -> Result<()> {
    let what = format!("filling `{}`", buffer.name());
    let words = u32::try_from(buffer.size() / 4)
        .map_err(|_| GpuError::invalid(&what, "more than 2^32 words".to_owned()))?;
    let (mode, a, b) = match fill {
        Fill::Bits => (0u32, 0.0f32, 0.0f32),
        Fill::F16Pair(a) => (1, a, 0.0),
        Fill::F32(a) => (2, a, 0.0),
        Fill::ConstPair(a, b) => (3, a, b),
    };
    let params: [u32; 8] = [seed, words, mode, 0, a.to_bits(), b.to_bits(), 0, 0];
    let params = GpuBuffer::uniform(ctx, &format!("{what} params"), &params)?;
    let pipeline = ctx.pipeline(&PipelineSpec {
        shader: FILL,
        entry: "fill_random",
        constants: &[],
        bindings: &[Binding::Uniform, Binding::StorageReadWrite],
    })?;
    let bind_group = pipeline.bind(ctx, &[&params, buffer])?;
    // Each thread loops over words; 16k workgroups saturate any GPU.
    let groups = words.div_ceil(256).clamp(1, 16384);
    let grid = ctx.grid_1d(&what, groups)?;
    let mut d = Dispatch::new();
    d.push(pipeline, bind_group, Workgroups::Direct(grid));
    ctx.submit(&[&d])?;
    Ok(())
}
