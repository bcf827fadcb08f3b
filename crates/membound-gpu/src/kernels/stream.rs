//! A plain streaming read (`shaders/stream_read.wgsl`): the floor under
//! every memory-bound kernel.
//!
//! A GEMV that reads N bytes cannot finish sooner than the device reads N
//! bytes with nothing else to do, and for the sizes of one layer's weights
//! (tens of MiB) that floor sits well under the datasheet bandwidth.
//! Benchmarks time [`stream_read`] over each case's byte count in the same
//! run, so a kernel's time can be judged against what the device and API
//! allow at that size, not only against the peak.

use crate::buffer::{GpuBuffer, check_binding_size};
use crate::context::GpuContext;
use crate::dispatch::{Dispatch, Workgroups};
use crate::error::{GpuError, Result};
use crate::pipeline::{Binding, PipelineSpec};
use crate::shaders::STREAM_READ;

/// Threads a workgroup.
const WG: u32 = 256;
/// 16-byte loads a thread.
const PER: u32 = 4;

/// Bytes one workgroup reads: one block, whose XOR it writes.
pub const STREAM_BLOCK_BYTES: u64 = 16 * WG as u64 * PER as u64;

/// Blocks (workgroups, u32 outputs) a read of `bytes` takes.
pub fn stream_read_blocks(bytes: u64) -> u64 {
    bytes.div_ceil(STREAM_BLOCK_BYTES)
}

/// A dispatch that reads all of `src` (a non-empty multiple of 16 bytes,
/// `STORAGE` usage) in 16-byte loads and writes, for each block of
/// [`STREAM_BLOCK_BYTES`], the XOR of its u32 words to `out` (at least
/// [`stream_read_blocks`] words, `STORAGE` usage). The XORs exist so the
/// reads cannot be optimised away, and so a test can check them against
/// [`stream_read_reference`].
pub fn stream_read(ctx: &GpuContext, src: &GpuBuffer, out: &GpuBuffer) -> Result<Dispatch> {
    let what = format!("streaming read of `{}`", src.name());
    let bytes = src.size();
    if bytes == 0 || bytes % 16 != 0 {
        return Err(GpuError::invalid(
            &what,
            format!("{bytes} bytes: needs a non-empty multiple of 16"),
        ));
    }
    check_binding_size(ctx, src.name(), bytes)?;
    let n = u32::try_from(bytes / 16)
        .map_err(|_| GpuError::invalid(&what, format!("{bytes} bytes: over 2^32 vec4 loads")))?;
    let blocks = stream_read_blocks(bytes);
    if out.size() < blocks * 4 {
        return Err(GpuError::invalid(
            &what,
            format!(
                "output `{}` has {} bytes, needs {} (one u32 per {STREAM_BLOCK_BYTES}-byte block)",
                out.name(),
                out.size(),
                blocks * 4
            ),
        ));
    }
    let grid = ctx.grid_1d(&what, blocks as u32)?;
    let params: [u32; 4] = [n, 0, 0, 0];
    let params = GpuBuffer::from_bytes(
        ctx,
        &format!("{what} params"),
        bytemuck::cast_slice(&params),
        wgpu::BufferUsages::UNIFORM,
    )?;
    let pipeline = ctx.pipeline(&PipelineSpec {
        shader: STREAM_READ,
        entry: "stream_read",
        constants: &[("WG", f64::from(WG)), ("PER", f64::from(PER))],
        bindings: &[
            Binding::Uniform,
            Binding::Storage,
            Binding::StorageReadWrite,
        ],
    })?;
    let bind_group = pipeline.bind(ctx, &[&params, src, out])?;
    let mut d = Dispatch::new();
    d.push(pipeline, bind_group, Workgroups::Direct(grid));
    Ok(d)
}

/// What [`stream_read`] writes for `words` (the u32 words of the source):
/// the XOR of each block's words.
pub fn stream_read_reference(words: &[u32]) -> Vec<u32> {
    words
        .chunks((STREAM_BLOCK_BYTES / 4) as usize)
        .map(|b| b.iter().fold(0, |a, &w| a ^ w))
        .collect()
}
