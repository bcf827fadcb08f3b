//! Timing repeated GPU work: timestamp queries around each compute pass
//! where the device has `TIMESTAMP_QUERY`, else wall-clock time around each
//! submission and its wait.

use std::time::{Duration, Instant};

use crate::buffer::GpuBuffer;
use crate::context::GpuContext;
use crate::dispatch::Dispatch;
use crate::error::Result;

/// How a [`Timings`] was measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimingMethod {
    /// GPU timestamps at the start and end of each pass: kernel time only.
    GpuTimestamps,
    /// Host time from before the submission to the end of the wait: includes
    /// submission and wake-up latency (tens of microseconds).
    WallClock,
}

/// One duration per repetition.
#[derive(Clone, Debug)]
pub struct Timings {
    /// How the samples were taken.
    pub method: TimingMethod,
    /// Per repetition, in order.
    pub samples: Vec<Duration>,
}

impl Timings {
    /// The median sample (the lower middle one for an even count); zero if
    /// there are none.
    pub fn median(&self) -> Duration {
        let mut sorted = self.samples.clone();
        sorted.sort_unstable();
        sorted
            .get(sorted.len().saturating_sub(1) / 2)
            .copied()
            .unwrap_or_default()
    }

    /// The fastest sample; zero if there are none.
    pub fn min(&self) -> Duration {
        self.samples.iter().copied().min().unwrap_or_default()
    }
}

/// Repetitions per query set (two timestamps each, within wgpu's cap).
const BATCH: usize = (wgpu::QUERY_SET_MAX_QUERIES / 2) as usize;

impl GpuContext {
    /// Runs `reps` repetitions of the work `record` puts into a compute
    /// pass, each in its own pass, command buffer and submission, and
    /// returns their durations.
    pub fn time_repeated(
        &self,
        reps: usize,
        mut record: impl FnMut(&mut wgpu::ComputePass<'_>),
    ) -> Result<Timings> {
        if self.features().timestamps {
            let mut samples = Vec::with_capacity(reps);
            let mut done = 0;
            while done < reps {
                let n = BATCH.min(reps - done);
                samples.extend(self.time_batch(n, &mut record)?);
                done += n;
            }
            Ok(Timings {
                method: TimingMethod::GpuTimestamps,
                samples,
            })
        } else {
            let mut samples = Vec::with_capacity(reps);
            for _ in 0..reps {
                let start = Instant::now();
                let mut encoder = self.encoder("membound timed");
                {
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("membound timed"),
                        timestamp_writes: None,
                    });
                    record(&mut pass);
                }
                self.queue().submit([encoder.finish()]);
                self.poll_wait("timing")?;
                samples.push(start.elapsed());
            }
            self.check()?;
            Ok(Timings {
                method: TimingMethod::WallClock,
                samples,
            })
        }
    }

    /// Repeats the work `record` puts into a compute pass, one submission
    /// at a time, until `duration` of wall-clock time has passed, and waits
    /// for it.
    ///
    /// GPUs lower their clocks when idle and take a while to raise them: an
    /// H100 read 2.6 TB/s in a GEMV right after other work but 1.2 TB/s
    /// after five idle seconds with a few milliseconds of warm-up. Time
    /// only after warming up like this for a few hundred milliseconds.
    pub fn warm_up(
        &self,
        duration: std::time::Duration,
        mut record: impl FnMut(&mut wgpu::ComputePass<'_>),
    ) -> Result<()> {
        let start = Instant::now();
        while start.elapsed() < duration {
            // A few submissions in flight keep the GPU busy between waits.
            for _ in 0..4 {
                let mut encoder = self.encoder("membound warm-up");
                {
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("membound warm-up"),
                        timestamp_writes: None,
                    });
                    record(&mut pass);
                }
                self.queue().submit([encoder.finish()]);
            }
            self.poll_wait("warming up")?;
        }
        self.check()
    }

    fn time_batch(
        &self,
        n: usize,
        record: &mut impl FnMut(&mut wgpu::ComputePass<'_>),
    ) -> Result<Vec<Duration>> {
        let count = (2 * n) as u32;
        let queries = self.device().create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("membound timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count,
        });
        for i in 0..n {
            let mut encoder = self.encoder("membound timed");
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("membound timed"),
                    timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                        query_set: &queries,
                        beginning_of_pass_write_index: Some(2 * i as u32),
                        end_of_pass_write_index: Some(2 * i as u32 + 1),
                    }),
                });
                record(&mut pass);
            }
            self.queue().submit([encoder.finish()]);
        }

        let bytes = u64::from(count) * wgpu::QUERY_SIZE as u64;
        let resolved = GpuBuffer::new(
            self,
            "timestamp queries",
            bytes,
            wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
        )?;
        let mut encoder = self.encoder("membound resolve timestamps");
        encoder.resolve_query_set(&queries, 0..count, resolved.raw(), 0);
        self.queue().submit([encoder.finish()]);
        let raw: Vec<u64> = bytemuck::pod_collect_to_vec(&resolved.read_bytes(self, 0, bytes)?);

        let period_ns = f64::from(self.queue().get_timestamp_period());
        Ok(raw
            .chunks_exact(2)
            .map(|t| Duration::from_secs_f64(t[1].saturating_sub(t[0]) as f64 * period_ns * 1e-9))
            .collect())
    }

    pub(crate) fn encoder(&self, label: &str) -> wgpu::CommandEncoder {
        self.device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) })
    }

    /// Warms up for `warm_up` recording `dispatches` into each pass, then
    /// times `reps` (at least 1) passes of them: the median seconds per
    /// dispatch, the usual figure of a benchmark that rotates through
    /// copies of one kernel's inputs.
    pub fn time_dispatches(
        &self,
        dispatches: &[Dispatch],
        warm_up: Duration,
        reps: usize,
    ) -> Result<f64> {
        let record = |pass: &mut wgpu::ComputePass<'_>| {
            for d in dispatches {
                d.record(pass);
            }
        };
        self.warm_up(warm_up, record)?;
        let t = self.time_repeated(reps.max(1), record)?;
        Ok(t.median().as_secs_f64() / dispatches.len().max(1) as f64)
    }
}
