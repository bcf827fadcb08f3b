//! Device buffers: weights uploaded once, reusable f32 activation vectors,
//! and read-back through a staging buffer.

use std::sync::{PoisonError, mpsc};

use crate::context::GpuContext;
use crate::error::{GpuError, Result};

/// A named device buffer. The name appears in every error about it.
#[derive(Debug)]
pub struct GpuBuffer {
    buffer: wgpu::Buffer,
    name: String,
    size: u64,
}

/// wgpu's copies and mappings work in multiples of 4 bytes, and bindings
/// must not be empty.
fn padded_size(size: u64) -> u64 {
    size.max(4).next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT)
}

impl GpuBuffer {
    /// A zero-filled buffer of `size` bytes (rounded up to 4).
    pub fn new(ctx: &GpuContext, name: &str, size: u64, usage: wgpu::BufferUsages) -> Result<Self> {
        Self::create(
            ctx,
            name,
            size,
            usage,
            None::<fn(wgpu::WriteOnly<'_, [u8]>)>,
        )
    }

    /// A buffer of `size` bytes whose contents `fill` writes once, through a
    /// mapping at creation (no second host copy of large weights). Bytes
    /// that `fill` leaves alone are zero.
    pub fn with_contents(
        ctx: &GpuContext,
        name: &str,
        size: u64,
        usage: wgpu::BufferUsages,
        fill: impl FnOnce(wgpu::WriteOnly<'_, [u8]>),
    ) -> Result<Self> {
        Self::create(ctx, name, size, usage, Some(fill))
    }

    /// A buffer holding `bytes`.
    pub fn from_bytes(
        ctx: &GpuContext,
        name: &str,
        bytes: &[u8],
        usage: wgpu::BufferUsages,
    ) -> Result<Self> {
        Self::with_contents(ctx, name, bytes.len() as u64, usage, |mut view| {
            view.slice(..bytes.len()).copy_from_slice(bytes);
        })
    }

    /// A uniform buffer holding `value`: a kernel's parameters, written
    /// once.
    pub fn uniform<T: bytemuck::Pod>(ctx: &GpuContext, name: &str, value: &T) -> Result<Self> {
        Self::from_bytes(
            ctx,
            name,
            bytemuck::bytes_of(value),
            wgpu::BufferUsages::UNIFORM,
        )
    }

    fn create(
        ctx: &GpuContext,
        name: &str,
        size: u64,
        usage: wgpu::BufferUsages,
        fill: Option<impl FnOnce(wgpu::WriteOnly<'_, [u8]>)>,
    ) -> Result<Self> {
        let size = padded_size(size);
        check_buffer_size(ctx, name, size)?;
        let buffer = ctx.scoped(
            name,
            size,
            || {
                ctx.device().create_buffer(&wgpu::BufferDescriptor {
                    label: Some(name),
                    size,
                    usage,
                    mapped_at_creation: fill.is_some(),
                })
            },
            |message| GpuError::Validation {
                operation: format!("creating buffer `{name}`"),
                message,
            },
        )?;
        if let Some(fill) = fill {
            {
                let mut view =
                    buffer
                        .slice(..)
                        .get_mapped_range_mut()
                        .map_err(|e| GpuError::Validation {
                            operation: format!("mapping buffer `{name}` for upload"),
                            message: e.to_string(),
                        })?;
                fill(view.slice(..));
            }
            buffer.unmap();
        }
        Ok(Self {
            buffer,
            name: name.to_owned(),
            size,
        })
    }

    /// The wgpu buffer.
    pub fn raw(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// The name given at creation.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Size in bytes (a multiple of 4).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Copies `len` bytes from `offset` back to the host through the
    /// context's staging buffer and waits for them. The buffer needs
    /// `COPY_SRC` usage; `offset` and `len` must be multiples of 4.
    pub fn read_bytes(&self, ctx: &GpuContext, offset: u64, len: u64) -> Result<Vec<u8>> {
        if offset % 4 != 0 || len % 4 != 0 || offset.saturating_add(len) > self.size {
            return Err(GpuError::invalid(
                format!("reading buffer `{}`", self.name),
                format!(
                    "range {offset}..{} must be 4-byte aligned and within its {} bytes",
                    offset.saturating_add(len),
                    self.size
                ),
            ));
        }
        if len == 0 {
            return Ok(Vec::new());
        }
        read_back(ctx, &[], 1, self, offset, len)
    }

    /// Records `calls` into compute passes and, in the last submission,
    /// copies `len` bytes of this buffer from `offset` to the host; waits
    /// and returns them. A decode step thus reads back only what the host
    /// needs (a token id, or the logits).
    ///
    /// With `submissions` = 1 everything goes in one submission. With more,
    /// the calls are split into that many submissions, each sent as soon as
    /// it is recorded, so the GPU runs the first part while the host still
    /// records the rest (recording costs the host a few µs a dispatch).
    pub fn run_and_read(
        &self,
        ctx: &GpuContext,
        calls: &[&crate::Dispatch],
        submissions: usize,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>> {
        self.check_read_range("reading", offset, len)?;
        read_back(ctx, calls, submissions, self, offset, len)
    }

    /// Runs `rounds` one after the other without waiting in between, and
    /// after each round copies `len` bytes of this buffer from `offset`
    /// into a log that is read back once at the end (round i's bytes at
    /// `i·len`). `before_round(i)` runs on the host before round i is
    /// submitted: queue writes it makes (a step's position, say) land
    /// before the round's dispatches. Each round is split into
    /// `submissions` submissions as in [`GpuBuffer::run_and_read`].
    ///
    /// This is a GPU-resident loop: when each round takes its input from
    /// the previous round's output on the device, the host never waits for
    /// the GPU until the end.
    pub fn run_rounds_and_read(
        &self,
        ctx: &GpuContext,
        rounds: &[Vec<&crate::Dispatch>],
        submissions: usize,
        offset: u64,
        len: u64,
        before_round: &mut dyn FnMut(usize),
    ) -> Result<Vec<u8>> {
        self.check_read_range("logging", offset, len)?;
        if rounds.is_empty() {
            return Ok(Vec::new());
        }
        let log = GpuBuffer::new(
            ctx,
            &format!("log of `{}`", self.name),
            len * rounds.len() as u64,
            wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
        )?;
        for (i, calls) in rounds.iter().enumerate() {
            before_round(i);
            let mut encoder = submit_pieces(ctx, calls, submissions);
            encoder.copy_buffer_to_buffer(&self.buffer, offset, &log.buffer, i as u64 * len, len);
            ctx.queue().submit([encoder.finish()]);
        }
        ctx.check()?;
        log.read_bytes(ctx, 0, log.size)
    }

    /// Errors unless `offset..offset + len` is a non-empty, 4-byte aligned
    /// range of this buffer (`doing` names the operation).
    fn check_read_range(&self, doing: &str, offset: u64, len: u64) -> Result<()> {
        if offset % 4 != 0 || len % 4 != 0 || len == 0 || offset.saturating_add(len) > self.size {
            return Err(GpuError::invalid(
                format!("{doing} buffer `{}`", self.name),
                format!(
                    "range {offset}..{} must be 4-byte aligned, non-empty and within its {} bytes",
                    offset.saturating_add(len),
                    self.size
                ),
            ));
        }
        Ok(())
    }

    /// Checks that the whole buffer may be bound as one storage binding.
    pub fn check_storage_binding(&self, ctx: &GpuContext) -> Result<()> {
        check_binding_size(ctx, &self.name, self.size)
    }
}

/// Errors if a buffer of `size` bytes may not be created on this device.
pub fn check_buffer_size(ctx: &GpuContext, name: &str, size: u64) -> Result<()> {
    let limit = ctx.limits().max_buffer_size;
    if size > limit {
        return Err(GpuError::BufferTooLarge {
            name: name.to_owned(),
            size,
            limit_name: "max_buffer_size",
            limit,
            adapter: ctx.adapter().name.clone(),
        });
    }
    Ok(())
}

/// Errors if `size` bytes may not be bound as one storage buffer.
pub fn check_binding_size(ctx: &GpuContext, name: &str, size: u64) -> Result<()> {
    let limit = ctx.limits().max_storage_buffer_binding_size;
    if size > limit {
        return Err(GpuError::BufferTooLarge {
            name: name.to_owned(),
            size,
            limit_name: "max_storage_buffer_binding_size",
            limit,
            adapter: ctx.adapter().name.clone(),
        });
    }
    Ok(())
}

/// Records `calls` split into `submissions` pieces, submits all but the
/// last, and returns the last piece's encoder (not yet submitted) for the
/// caller to finish.
fn submit_pieces(
    ctx: &GpuContext,
    calls: &[&crate::Dispatch],
    submissions: usize,
) -> wgpu::CommandEncoder {
    let new_encoder = || {
        ctx.device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("membound"),
            })
    };
    let record = |encoder: &mut wgpu::CommandEncoder, calls: &[&crate::Dispatch]| {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("membound"),
            timestamp_writes: None,
        });
        for call in calls {
            call.record(&mut pass);
        }
    };
    let per = calls.len().div_ceil(submissions.max(1)).max(1);
    let mut pieces = calls.chunks(per).peekable();
    let mut encoder = new_encoder();
    while let Some(piece) = pieces.next() {
        record(&mut encoder, piece);
        if pieces.peek().is_some() {
            ctx.queue().submit([encoder.finish()]);
            encoder = new_encoder();
        }
    }
    encoder
}

fn read_back(
    ctx: &GpuContext,
    calls: &[&crate::Dispatch],
    submissions: usize,
    source: &GpuBuffer,
    offset: u64,
    len: u64,
) -> Result<Vec<u8>> {
    let mut staging = ctx.staging.lock().unwrap_or_else(PoisonError::into_inner);
    // One staging buffer per context, grown to the largest read so far.
    if staging.as_ref().is_none_or(|s| s.size() < len) {
        let rounded = len.next_power_of_two().max(1 << 16);
        let size = if rounded > ctx.limits().max_buffer_size {
            len
        } else {
            rounded
        };
        let name = format!("staging for `{}`", source.name);
        check_buffer_size(ctx, &name, size)?;
        let buffer = ctx.scoped(
            &name,
            size,
            || {
                ctx.device().create_buffer(&wgpu::BufferDescriptor {
                    label: Some("membound staging"),
                    size,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            },
            |message| GpuError::Validation {
                operation: format!("creating {name}"),
                message,
            },
        )?;
        *staging = Some(buffer);
    }
    let Some(staging) = staging.as_ref() else {
        unreachable!("the staging buffer was just created")
    };

    let mut encoder = submit_pieces(ctx, calls, submissions);
    encoder.copy_buffer_to_buffer(source.raw(), offset, staging, 0, len);
    ctx.queue().submit([encoder.finish()]);

    let (sender, receiver) = mpsc::channel();
    staging.map_async(wgpu::MapMode::Read, 0..len, move |result| {
        // The receiver waits below; a failed send only means it gave up.
        let _ = sender.send(result);
    });
    let operation = format!("reading back `{}`", source.name);
    ctx.poll_wait(&operation)?;
    let mapped = receiver.recv().map_err(|e| GpuError::Wait {
        operation: operation.clone(),
        message: e.to_string(),
    })?;
    mapped.map_err(|e| GpuError::Wait {
        operation: operation.clone(),
        message: e.to_string(),
    })?;
    let bytes = {
        let view = staging
            .get_mapped_range(0..len)
            .map_err(|e| GpuError::Wait {
                operation: operation.clone(),
                message: e.to_string(),
            })?;
        view.to_vec()
    };
    staging.unmap();
    ctx.check()?;
    Ok(bytes)
}

/// An f32 vector on the device (an activation): created once, rewritten and
/// reused. Its allocation is rounded up to [`GpuVector::ALIGN`] values (zeros),
/// so kernels can read it in whole 8-value chunks.
#[derive(Debug)]
pub struct GpuVector {
    buffer: GpuBuffer,
    len: usize,
}

impl GpuVector {
    /// Values per allocation granule: kernels may read this many at once.
    pub const ALIGN: usize = 8;

    /// The usages every vector has: bound as storage, written from the
    /// host, read back.
    pub const USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
        .union(wgpu::BufferUsages::COPY_DST)
        .union(wgpu::BufferUsages::COPY_SRC);

    /// A zero vector of `len` values.
    pub fn zeros(ctx: &GpuContext, name: &str, len: usize) -> Result<Self> {
        let buffer = GpuBuffer::new(ctx, name, Self::bytes_for(len), Self::USAGE)?;
        Ok(Self { buffer, len })
    }

    /// A vector holding `values`.
    pub fn from_slice(ctx: &GpuContext, name: &str, values: &[f32]) -> Result<Self> {
        let bytes: &[u8] = bytemuck::cast_slice(values);
        let buffer = GpuBuffer::with_contents(
            ctx,
            name,
            Self::bytes_for(values.len()),
            Self::USAGE,
            |mut view| {
                view.slice(..bytes.len()).copy_from_slice(bytes);
            },
        )?;
        Ok(Self {
            buffer,
            len: values.len(),
        })
    }

    fn bytes_for(len: usize) -> u64 {
        (len.max(1).next_multiple_of(Self::ALIGN) * 4) as u64
    }

    /// Overwrites the vector with `values` (queued; ordered before work
    /// submitted afterwards).
    pub fn write(&self, ctx: &GpuContext, values: &[f32]) -> Result<()> {
        if values.len() != self.len {
            return Err(GpuError::invalid(
                format!("writing vector `{}`", self.buffer.name),
                format!("expected {} values, got {}", self.len, values.len()),
            ));
        }
        if !values.is_empty() {
            ctx.queue()
                .write_buffer(self.buffer.raw(), 0, bytemuck::cast_slice(values));
        }
        Ok(())
    }

    /// Reads the vector back (waits for the GPU).
    pub fn read(&self, ctx: &GpuContext) -> Result<Vec<f32>> {
        let bytes = self.buffer.read_bytes(ctx, 0, (self.len * 4) as u64)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the vector has no values.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Values the allocation holds (`len` rounded up to [`GpuVector::ALIGN`]).
    pub fn capacity(&self) -> usize {
        (self.buffer.size() / 4) as usize
    }

    /// The underlying buffer.
    pub fn buffer(&self) -> &GpuBuffer {
        &self.buffer
    }
}
