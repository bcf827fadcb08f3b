//! `membound bench kernels`: every GEMV kernel at real layer shapes.
//!
//! Each case uploads enough copies of its matrix that the working set
//! exceeds the GPU's last-level cache, warms the GPU up to full clocks,
//! then times passes that run every copy once; the time per GEMV is the
//! median pass time divided by the number of copies. Bytes read count the
//! weights, scales and everything else the kernel actually loads.

use std::time::Duration;

use membound_gpu::{DenseGemv, Dispatch, GpuContext, GpuVector, TimingMethod, WeightDType};
use serde::Serialize;

use super::known_peak_gbps;
use crate::{Error, Result};

/// LLaMA-7B/8B projection shapes (rows × cols = out × in) and SmolLM2-135M's.
pub const DEFAULT_SHAPES: &[(usize, usize)] = &[
    (4096, 4096),
    (4096, 14336),
    (14336, 4096),
    (576, 576),
    (192, 576),
    (1536, 576),
    (576, 1536),
    (49152, 576),
];

/// How a benchmarked matrix is stored.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum Weights {
    /// Dense f32.
    F32,
    /// Dense f16.
    F16,
}

impl Weights {
    /// Parses `f32`, `f16`.
    pub fn parse(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" => Ok(Weights::F32),
            "f16" => Ok(Weights::F16),
            other => Err(Error::Request(format!("unknown weight format {other:?} (expected f32, f16)"))),
        }
    }

    /// Short label for tables.
    pub fn label(self) -> String {
        match self {
            Weights::F32 => "f32".into(),
            Weights::F16 => "f16".into(),
        }
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// (rows, cols) of each matrix.
    pub shapes: Vec<(usize, usize)>,
    /// Storage formats.
    pub weights: Vec<Weights>,
    /// Bytes of distinct weight copies each case rotates through.
    pub working_set: u64,
    /// Timed passes per case.
    pub reps: usize,
    /// Warm-up before each case.
    pub warm_up: Duration,
    /// Most copies of one matrix (bounds dispatches per pass).
    pub max_copies: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            shapes: DEFAULT_SHAPES.to_vec(),
            weights: vec![Weights::F32, Weights::F16],
            working_set: 512 << 20,
            reps: 20,
            warm_up: Duration::from_millis(300),
            max_copies: 1024,
        }
    }
}

/// One measured case.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    /// Storage format label.
    pub weights: String,
    /// Share of inputs skipped (0 for dense kernels).
    pub sparsity: f64,
    /// How the input's zeros were made: `dense`, `random` or `magnitude`.
    pub mask: String,
    /// Copies rotated through.
    pub copies: usize,
    /// Median time of one GEMV, in microseconds.
    pub median_us: f64,
    /// Bytes one GEMV reads.
    pub bytes_read: u64,
    /// `bytes_read / median`.
    pub gbps: f64,
    /// Fraction of the device's peak bandwidth, when the peak is known.
    pub peak_fraction: Option<f64>,
    /// Dense f16 time at the same shape ÷ this time.
    pub speedup_vs_dense_f16: Option<f64>,
}

/// Everything one run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Adapter name.
    pub device: String,
    /// Backend (Vulkan, Metal, ...).
    pub backend: String,
    /// Driver and version.
    pub driver: String,
    /// Peak bandwidth used for `peak_fraction`, GB/s.
    pub peak_gbps: Option<f64>,
    /// Where the peak came from: `datasheet` or `--peak-gbps`.
    pub peak_source: Option<String>,
    /// GPU timestamps or wall clock.
    pub timing: String,
    /// Working set per case, bytes.
    pub working_set: u64,
    /// The measurements.
    pub rows: Vec<Row>,
}

/// A kernel bound to one copy of its weights.
trait BenchKernel {
    fn dispatch(&self, ctx: &GpuContext, x: &GpuVector, y: &GpuVector) -> Result<Dispatch>;
    fn bytes_read(&self) -> u64;
    fn weight_bytes(&self) -> u64;
}

impl BenchKernel for DenseGemv {
    fn dispatch(&self, ctx: &GpuContext, x: &GpuVector, y: &GpuVector) -> Result<Dispatch> {
        Ok(self.bind(ctx, x, y)?)
    }
    fn bytes_read(&self) -> u64 {
        DenseGemv::bytes_read(self)
    }
    fn weight_bytes(&self) -> u64 {
        DenseGemv::weight_bytes(self)
    }
}

/// A hash of `k` in [-1, 1): incompressible data, since GPUs that compress
/// memory read regular patterns faster than memory allows.
fn unit(k: u64) -> f32 {
    let mut z = k.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

fn build(ctx: &GpuContext, w: Weights, rows: usize, cols: usize, data: &[f32], copy: usize) -> Result<Box<dyn BenchKernel>> {
    let name = format!("bench {rows}x{cols} {} #{copy}", w.label());
    Ok(match w {
        Weights::F32 => Box::new(DenseGemv::new(ctx, &name, rows, cols, data, WeightDType::F32)?),
        Weights::F16 => Box::new(DenseGemv::new(ctx, &name, rows, cols, data, WeightDType::F16)?),
    })
}

/// Times one case: copies of the kernel rotated through in each pass.
fn time_case(
    ctx: &GpuContext,
    cfg: &Config,
    make: &dyn Fn(usize) -> Result<Box<dyn BenchKernel>>,
    x: &GpuVector,
    y: &GpuVector,
) -> Result<(usize, f64, u64)> {
    let first = make(0)?;
    let per_copy = first.weight_bytes().max(1);
    let copies = (cfg.working_set.div_ceil(per_copy) as usize).clamp(2, cfg.max_copies);
    let mut kernels = vec![first];
    for c in 1..copies {
        kernels.push(make(c)?);
    }
    let dispatches = kernels.iter().map(|k| k.dispatch(ctx, x, y)).collect::<Result<Vec<_>>>()?;
    let record = |pass: &mut membound_gpu::wgpu::ComputePass<'_>| {
        for d in &dispatches {
            d.record(pass);
        }
    };
    ctx.warm_up(cfg.warm_up, record)?;
    let t = ctx.time_repeated(cfg.reps, record)?;
    let per_gemv = t.median().as_secs_f64() / copies as f64;
    Ok((copies, per_gemv, kernels[0].bytes_read()))
}

/// Runs every case of `cfg`. `peak_override` replaces the datasheet peak;
/// `progress(done, total, label)` is called before each case.
pub fn run(
    ctx: &GpuContext,
    cfg: &Config,
    peak_override: Option<f64>,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<Report> {
    let adapter = ctx.adapter();
    let (peak_gbps, peak_source) = match peak_override {
        Some(p) => (Some(p), Some("--peak-gbps".to_string())),
        None => match known_peak_gbps(&adapter.name) {
            Some(p) => (Some(p), Some("datasheet".to_string())),
            None => (None, None),
        },
    };
    let total = cfg.shapes.len() * cfg.weights.len();
    let mut rows = Vec::new();
    let mut timing = None;
    for &(r, c) in &cfg.shapes {
        let data: Vec<f32> = (0..r * c).map(|i| unit(i as u64) * 0.05).collect();
        let xs: Vec<f32> = (0..c).map(|i| unit(!(i as u64))).collect();
        let x = GpuVector::from_slice(ctx, "bench x", &xs)?;
        let y = GpuVector::zeros(ctx, "bench y", r)?;
        let mut dense_f16 = None;
        let mut shape_rows = Vec::new();
        for &w in &cfg.weights {
            progress(rows.len() + shape_rows.len(), total, &format!("{r}x{c} {}", w.label()));
            let make = |copy| build(ctx, w, r, c, &data, copy);
            let (copies, secs, bytes) = time_case(ctx, cfg, &make, &x, &y)?;
            if w == Weights::F16 {
                dense_f16 = Some(secs);
            }
            let gbps = bytes as f64 / secs / 1e9;
            shape_rows.push(Row {
                rows: r,
                cols: c,
                weights: w.label(),
                sparsity: 0.0,
                mask: "dense".into(),
                copies,
                median_us: secs * 1e6,
                bytes_read: bytes,
                gbps,
                peak_fraction: peak_gbps.map(|p| gbps / p),
                speedup_vs_dense_f16: None,
            });
        }
        for row in &mut shape_rows {
            row.speedup_vs_dense_f16 = dense_f16.map(|d| d / (row.median_us * 1e-6));
        }
        rows.extend(shape_rows);
        timing.get_or_insert(if ctx.features().timestamps { TimingMethod::GpuTimestamps } else { TimingMethod::WallClock });
    }
    progress(total, total, "done");
    Ok(Report {
        device: adapter.name.clone(),
        backend: format!("{:?}", adapter.backend),
        driver: format!("{} {}", adapter.driver, adapter.driver_info),
        peak_gbps,
        peak_source,
        timing: format!("{:?}", timing.unwrap_or(TimingMethod::WallClock)),
        working_set: cfg.working_set,
        rows,
    })
}
