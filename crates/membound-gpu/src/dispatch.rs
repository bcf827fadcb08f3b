//! Recorded kernel calls: a [`Dispatch`] is a kernel bound to its buffers,
//! ready to be recorded into any compute pass, as often as wanted.

use std::sync::Arc;

use crate::context::GpuContext;
use crate::error::{GpuError, Result};
use crate::pipeline::Pipeline;

/// The workgroup grid of one step.
#[derive(Clone, Debug)]
pub enum Workgroups {
    /// A grid known when recording.
    Direct([u32; 3]),
    /// A grid read on the GPU from three u32 in `buffer` at `offset` (for
    /// kernels whose size another kernel computes, e.g. after compaction).
    Indirect {
        /// Needs `INDIRECT` usage.
        buffer: wgpu::Buffer,
        /// Byte offset, a multiple of 4.
        offset: u64,
    },
}

#[derive(Debug)]
struct Step {
    pipeline: Arc<Pipeline>,
    bind_group: wgpu::BindGroup,
    workgroups: Workgroups,
}

/// One kernel call bound to its buffers: one or more GPU dispatches in
/// order (a kernel split over weight blocks, or a pipeline of stages).
///
/// Recording is cheap and does not touch the device, so an engine builds
/// its dispatches once and records a whole token's work into one pass.
#[derive(Debug, Default)]
pub struct Dispatch {
    steps: Vec<Step>,
}

impl Dispatch {
    /// An empty call.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a GPU dispatch.
    pub fn push(
        &mut self,
        pipeline: Arc<Pipeline>,
        bind_group: wgpu::BindGroup,
        workgroups: Workgroups,
    ) {
        self.steps.push(Step {
            pipeline,
            bind_group,
            workgroups,
        });
    }

    /// Appends another call's dispatches after this one's.
    pub fn extend(&mut self, other: Dispatch) {
        self.steps.extend(other.steps);
    }

    /// Number of GPU dispatches.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Whether there is nothing to dispatch.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Records the dispatches into `pass`. wgpu orders dispatches within a
    /// pass by their buffer uses, so a later kernel sees an earlier one's
    /// output.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        for step in &self.steps {
            pass.set_pipeline(step.pipeline.raw());
            pass.set_bind_group(0, &step.bind_group, &[]);
            match &step.workgroups {
                Workgroups::Direct([x, y, z]) => pass.dispatch_workgroups(*x, *y, *z),
                Workgroups::Indirect { buffer, offset } => {
                    pass.dispatch_workgroups_indirect(buffer, *offset);
                }
            }
        }
    }
}

impl GpuContext {
    /// A grid of at least `count` workgroups within the per-dimension limit:
    /// `[min(count, max), ceil(count / max), 1]`. Kernels linearise it as
    /// `id.x + id.y * num_workgroups.x` and ignore ids past `count`.
    pub fn grid_1d(&self, what: &str, count: u32) -> Result<[u32; 3]> {
        let max = self.limits().max_compute_workgroups_per_dimension.max(1);
        let x = count.clamp(1, max);
        let y = count.div_ceil(max).max(1);
        if y > max {
            return Err(GpuError::invalid(
                what,
                format!("{count} workgroups exceed the device's {max}×{max} grid"),
            ));
        }
        Ok([x, y, 1])
    }

    /// Records `calls` into one compute pass, submits it and returns
    /// without waiting (see [`GpuContext::wait`]).
    pub fn submit(&self, calls: &[&Dispatch]) -> Result<wgpu::SubmissionIndex> {
        let mut encoder = self
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("membound"),
            });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("membound"),
                timestamp_writes: None,
            });
            for call in calls {
                call.record(&mut pass);
            }
        }
        let index = self.queue().submit([encoder.finish()]);
        self.check()?;
        Ok(index)
    }
}
