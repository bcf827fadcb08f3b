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

/// How [`stream_read_with`] lays out its reads: `threads` a workgroup (a
/// power of two, 32 to 1024), each with `loads` 16-byte loads in flight (1
/// to 32) in each of `rounds` rounds (1 to 64); a workgroup reads one
/// contiguous block of `16 · threads · loads · rounds` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamLaunch {
    /// Threads a workgroup.
    pub threads: u32,
    /// 16-byte loads a thread per round.
    pub loads: u32,
    /// Rounds a workgroup.
    pub rounds: u32,
}

/// 256 threads × 2 loads × 1 round (8 KiB blocks): on an H100 the fastest
/// of 19 launches at 11-112 MiB, or within 1% of it
/// (`examples/stream_bench.rs`, 2026-11-27).
const DEFAULT_LAUNCH: StreamLaunch = StreamLaunch {
    threads: 256,
    loads: 2,
    rounds: 1,
};

/// The XOR [`stream_read`] compares against: a thread writes only if the
/// XOR of its random words happens to equal it (one chance in 2³²).
pub const STREAM_NO_MATCH: u32 = 0x9e37_79b9;

impl Default for StreamLaunch {
    /// [`stream_read`]'s launch: 256 threads × 2 loads × 1 round.
    fn default() -> Self {
        DEFAULT_LAUNCH
    }
}

impl StreamLaunch {
    /// Bytes one workgroup reads.
    pub const fn block_bytes(self) -> u64 {
        16 * self.threads as u64 * self.loads as u64 * self.rounds as u64
    }

    /// Blocks (workgroups, u32 outputs) a read of `bytes` takes.
    pub const fn blocks(self, bytes: u64) -> u64 {
        bytes.div_ceil(self.block_bytes())
    }
}

/// Bytes one workgroup of [`stream_read`] reads: one block.
pub const STREAM_BLOCK_BYTES: u64 = DEFAULT_LAUNCH.block_bytes();

/// Blocks (workgroups, u32 outputs) a [`stream_read`] of `bytes` takes.
pub fn stream_read_blocks(bytes: u64) -> u64 {
    DEFAULT_LAUNCH.blocks(bytes)
}

/// A dispatch that reads all of `src` (a non-empty multiple of 16 bytes,
/// `STORAGE` usage) in 16-byte loads, one block of [`STREAM_BLOCK_BYTES`]
/// a workgroup, for timing. `out` (at least [`stream_read_blocks`] words,
/// `STORAGE` usage) is written only by the rare thread described in
/// [`stream_read_with`].
pub fn stream_read(ctx: &GpuContext, src: &GpuBuffer, out: &GpuBuffer) -> Result<Dispatch> {
    stream_read_with(ctx, src, out, STREAM_NO_MATCH, DEFAULT_LAUNCH)
}

/// [`stream_read`] with a chosen `magic` and launch (for tests and
/// tuning): blocks of `launch.block_bytes()`. Each thread XORs the u32
/// words it loads (see [`stream_read_xors`]); where a thread's XOR equals
/// `magic`, it writes its index + 1 to `out[block]` (other words are left
/// alone). The write depends on every word read, so no read can be
/// optimised away, and a test can make one thread of each block match.
pub fn stream_read_with(
    ctx: &GpuContext,
    src: &GpuBuffer,
    out: &GpuBuffer,
    magic: u32,
    launch: StreamLaunch,
) -> Result<Dispatch> {
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
    let StreamLaunch {
        threads,
        loads,
        rounds,
    } = launch;
    if !threads.is_power_of_two()
        || !(32..=1024).contains(&threads)
        || !(1..=32).contains(&loads)
        || !(1..=64).contains(&rounds)
        || threads > ctx.limits().max_compute_invocations_per_workgroup
    {
        return Err(GpuError::invalid(
            &what,
            format!(
                "launch {threads} threads × {loads} loads × {rounds} rounds: needs a power of two \
                 from 32 to 1024 threads (within the device's limit), 1 to 32 loads and 1 to 64 \
                 rounds"
            ),
        ));
    }
    let blocks = launch.blocks(bytes);
    if out.size() < blocks * 4 {
        return Err(GpuError::invalid(
            &what,
            format!(
                "output `{}` has {} bytes, needs {} (a u32 per {}-byte block)",
                out.name(),
                out.size(),
                blocks * 4,
                launch.block_bytes()
            ),
        ));
    }
    let grid = ctx.grid_1d(&what, blocks as u32)?;
    let params: [u32; 4] = [n, magic, 0, 0];
    let params = GpuBuffer::uniform(ctx, &format!("{what} params"), &params)?;
    let pipeline = ctx.pipeline(&PipelineSpec {
        shader: STREAM_READ,
        entry: "stream_read",
        constants: &[
            ("WG", f64::from(threads)),
            ("PER", f64::from(loads)),
            ("ITERS", f64::from(rounds)),
        ],
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

/// The XOR each thread of a streaming read with `launch` computes over
/// `words` (the u32 words of the source), at `[block · threads + thread]`.
pub fn stream_read_xors(words: &[u32], launch: StreamLaunch) -> Vec<u32> {
    let (threads, loads, rounds) = (
        launch.threads as usize,
        launch.loads as usize,
        launch.rounds as usize,
    );
    let vec4s = words.len() / 4;
    let blocks = launch.blocks(4 * words.len() as u64) as usize;
    let mut xors = vec![0u32; blocks * threads];
    for (b, chunk) in xors.chunks_mut(threads).enumerate() {
        for (t, x) in chunk.iter_mut().enumerate() {
            for j in 0..rounds * loads {
                let i = (b * rounds * loads + j) * threads + t;
                if i < vec4s {
                    *x ^= words[4 * i..4 * i + 4].iter().fold(0, |a, &w| a ^ w);
                }
            }
        }
    }
    xors
}
