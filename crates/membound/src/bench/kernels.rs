//! `membound bench kernels`: every GEMV kernel at real layer shapes.
//!
//! Each case uploads enough copies of its matrix that the working set
//! exceeds the GPU's last-level cache, warms the GPU up to full clocks,
//! then times passes that run every copy once; the time per GEMV is the
//! median pass time divided by the number of copies. Bytes read count the
//! weights, scales and everything else the kernel actually loads.
//!
//! Each case is also set against the *floor*: a plain streaming read of
//! the same number of bytes (`shaders/stream_read.wgsl`), timed the same
//! way in the same run. No kernel that reads those bytes can beat it, so
//! `floor / time` says how much of what the device allows at that size a
//! kernel reaches, and `dense f16 / floor` is the largest speedup over
//! dense f16 that any kernel reading those bytes could show.

use std::time::Duration;

use membound_codec::{AffineCodec, Codec, Encoded, Group, Matrix, ScaleDType};
use std::collections::HashMap;
use std::collections::hash_map::Entry;

use membound_gpu::{
    AffineGemv, DenseGemv, Dispatch, GpuBuffer, GpuContext, GpuVector, Launch, LutGemv, SparseGemv,
    TimingMethod, WeightDType, random_buffers, stream_read, stream_read_blocks, wgpu,
};
use membound_sparse::{ColMajorAffine4, ColMajorF16, threshold_for_sparsity};
use serde::{Deserialize, Serialize};

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

/// How a benchmarked matrix is stored, and which kernel multiplies it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum Weights {
    /// Dense f32.
    F32,
    /// Dense f16.
    F16,
    /// Affine in MLX's layout with f16 scales and biases.
    Affine {
        /// Bits per code.
        bits: u32,
        /// Weights per scale, along the row.
        group: usize,
    },
    /// 4-bit affine (f16 scales) with the input quantized to 8 bits per
    /// block of 32 inside the kernel (integer dot products).
    AffineQ8 {
        /// Weights per scale, along the row.
        group: usize,
    },
    /// NF4 with f16 absmax scales per block of 64 (LUT kernel).
    Nf4,
    /// Activation-sparse: column-major f16, reading only active columns.
    SparseF16,
    /// Activation-sparse: column-major 4-bit affine, groups along the output.
    SparseAffine4 {
        /// Outputs per scale.
        group: usize,
    },
}

/// Every format `membound bench kernels` measures by default.
pub const ALL_WEIGHTS: &[Weights] = &[
    Weights::F32,
    Weights::F16,
    Weights::Affine { bits: 4, group: 64 },
    Weights::AffineQ8 { group: 64 },
    Weights::Affine { bits: 3, group: 64 },
    Weights::Affine { bits: 2, group: 64 },
    Weights::Nf4,
    Weights::SparseF16,
    Weights::SparseAffine4 { group: 64 },
];

impl Weights {
    /// Parses `f32`, `f16`, `affineB[-gG]`, `affine4-q8[-gG]`, `nf4`,
    /// `sparse-f16`, `sparse-affine4[-gG]`.
    pub fn parse(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        let (base, group) = match t.rsplit_once("-g") {
            Some((b, g)) => (b, g.parse::<usize>().map_err(|_| bad(s))?),
            None => (t.as_str(), 64),
        };
        Ok(match base {
            "f32" => Weights::F32,
            "f16" => Weights::F16,
            "nf4" => Weights::Nf4,
            "sparse-f16" => Weights::SparseF16,
            "sparse-affine4" => Weights::SparseAffine4 { group },
            "affine4-q8" => Weights::AffineQ8 { group },
            b if b.starts_with("affine") => Weights::Affine {
                bits: b["affine".len()..].parse().map_err(|_| bad(s))?,
                group,
            },
            _ => return Err(bad(s)),
        })
    }

    /// Short label for tables, e.g. `affine4-g64`.
    pub fn label(self) -> String {
        match self {
            Weights::F32 => "f32".into(),
            Weights::F16 => "f16".into(),
            Weights::Affine { bits, group } => format!("affine{bits}-g{group}"),
            Weights::AffineQ8 { group } => format!("affine4-q8-g{group}"),
            Weights::Nf4 => "nf4".into(),
            Weights::SparseF16 => "sparse-f16".into(),
            Weights::SparseAffine4 { group } => format!("sparse-affine4-g{group}"),
        }
    }

    /// Whether the kernel skips inactive inputs.
    pub fn is_sparse(self) -> bool {
        matches!(self, Weights::SparseF16 | Weights::SparseAffine4 { .. })
    }
}

fn bad(s: &str) -> Error {
    Error::Request(format!(
        "unknown weight format {s:?} (expected f32, f16, affine2|3|4|8[-g32|64|128], affine4-q8[-gG], nf4, sparse-f16, sparse-affine4[-gG])"
    ))
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// (rows, cols) of each matrix.
    pub shapes: Vec<(usize, usize)>,
    /// Storage formats.
    pub weights: Vec<Weights>,
    /// Input sparsities for the sparse kernels (dense kernels run once).
    pub sparsities: Vec<f64>,
    /// Bytes of distinct weight copies each case rotates through.
    pub working_set: u64,
    /// Timed passes per case.
    pub reps: usize,
    /// Warm-up before each case.
    pub warm_up: Duration,
    /// Most copies of one matrix (bounds dispatches per pass).
    pub max_copies: usize,
    /// Launch shape for the affine kernels instead of the one each picks
    /// from its bit width and row length (for tuning).
    pub affine_launch: Option<Launch>,
    /// Also time the streaming-read floor of each case's byte count.
    pub floor: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            shapes: DEFAULT_SHAPES.to_vec(),
            weights: ALL_WEIGHTS.to_vec(),
            sparsities: vec![0.0, 0.25, 0.5, 0.7, 0.9],
            working_set: 512 << 20,
            reps: 20,
            warm_up: Duration::from_millis(300),
            max_copies: 1024,
            affine_launch: None,
            floor: true,
        }
    }
}

/// One measured case.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    /// Storage format label.
    pub weights: String,
    /// Share of inputs actually skipped (0 for dense kernels).
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
    /// Median time of a plain streaming read of `bytes_read` bytes, in
    /// microseconds: as many copies as the case, each read once a pass, so
    /// both touch the same memory per pass (`None` with the floor off).
    pub floor_us: Option<f64>,
    /// `floor_us / median_us`: the share of the floor's speed reached.
    pub floor_fraction: Option<f64>,
    /// Dense f16 time at the same shape ÷ `floor_us`: the largest speedup
    /// over dense f16 that any kernel reading these bytes could show here.
    pub floor_speedup_vs_dense_f16: Option<f64>,
}

/// Everything one run measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
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
    fn dispatch(
        &self,
        ctx: &GpuContext,
        x: &GpuVector,
        tau: f32,
        y: &GpuVector,
    ) -> Result<Dispatch>;
    fn weight_bytes(&self) -> u64;
    /// Bytes one call reads with `active` of the inputs active.
    fn bytes_read(&self, active: usize) -> u64;
}

impl BenchKernel for DenseGemv {
    fn dispatch(&self, ctx: &GpuContext, x: &GpuVector, _: f32, y: &GpuVector) -> Result<Dispatch> {
        Ok(self.bind(ctx, x, y)?)
    }
    fn weight_bytes(&self) -> u64 {
        DenseGemv::weight_bytes(self)
    }
    fn bytes_read(&self, _: usize) -> u64 {
        DenseGemv::bytes_read(self)
    }
}

impl BenchKernel for AffineGemv {
    fn dispatch(&self, ctx: &GpuContext, x: &GpuVector, _: f32, y: &GpuVector) -> Result<Dispatch> {
        Ok(self.bind(ctx, x, y)?)
    }
    fn weight_bytes(&self) -> u64 {
        AffineGemv::weight_bytes(self)
    }
    fn bytes_read(&self, _: usize) -> u64 {
        AffineGemv::bytes_read(self)
    }
}

impl BenchKernel for LutGemv {
    fn dispatch(&self, ctx: &GpuContext, x: &GpuVector, _: f32, y: &GpuVector) -> Result<Dispatch> {
        Ok(self.bind(ctx, x, y)?)
    }
    fn weight_bytes(&self) -> u64 {
        LutGemv::weight_bytes(self)
    }
    fn bytes_read(&self, _: usize) -> u64 {
        LutGemv::bytes_read(self)
    }
}

impl BenchKernel for SparseGemv {
    fn dispatch(
        &self,
        ctx: &GpuContext,
        x: &GpuVector,
        tau: f32,
        y: &GpuVector,
    ) -> Result<Dispatch> {
        Ok(self.bind(ctx, x, tau, y)?)
    }
    fn weight_bytes(&self) -> u64 {
        SparseGemv::weight_bytes(self)
    }
    fn bytes_read(&self, active: usize) -> u64 {
        SparseGemv::bytes_read(self, active)
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

/// Roughly Gaussian (Irwin–Hall of four hashes), unit variance.
fn gauss(k: u64) -> f32 {
    // Each hash is uniform on [-1, 1) with variance 1/3; four sum to variance 4/3.
    (0..4)
        .map(|i| unit(k.wrapping_mul(4).wrapping_add(i)))
        .sum::<f32>()
        * (3.0f32 / 4.0).sqrt()
}

/// The input vector and threshold of a case.
///
/// `random`: exactly ⌊s·n⌋ inputs, at hashed positions, are exact zeros and
/// τ = 0 (the lossless exact-zero test). `magnitude`: a SwiGLU-like vector
/// silu(a)·b with Gaussian a, b, thresholded at the magnitude that drops a
/// share s — what a TEAL-style engine does.
fn input(cols: usize, sparsity: f64, mask: &str) -> Result<(Vec<f32>, f32)> {
    match mask {
        "magnitude" => {
            let x: Vec<f32> = (0..cols as u64)
                .map(|j| {
                    let (a, b) = (gauss(2 * j + 7), gauss(2 * j + 8));
                    a / (1.0 + (-a).exp()) * b
                })
                .collect();
            let tau =
                threshold_for_sparsity(&x, sparsity).map_err(|e| Error::Request(e.to_string()))?;
            Ok((x, tau))
        }
        _ => {
            let mut x: Vec<f32> = (0..cols as u64).map(|j| 0.05 + unit(!j).abs()).collect();
            let mut order: Vec<usize> = (0..cols).collect();
            order.sort_by_key(|&j| (unit(j as u64 ^ 0xA5A5) * 1e6) as i64);
            for &j in order.iter().take((sparsity * cols as f64).floor() as usize) {
                x[j] = 0.0;
            }
            Ok((x, 0.0))
        }
    }
}

/// Weights of one shape in one format, encoded once and uploaded per copy.
enum Prepared {
    Dense(WeightDType),
    Affine(AffineCodec, Encoded),
    AffineQ8(AffineCodec, Encoded),
    Lut(Encoded),
    SparseF16(ColMajorF16),
    SparseAffine4(ColMajorAffine4),
}

fn prepare(w: Weights, rows: usize, cols: usize, data: &[f32]) -> Result<Prepared> {
    let m = Matrix::new(rows, cols, data)?;
    Ok(match w {
        Weights::F32 => Prepared::Dense(WeightDType::F32),
        Weights::F16 => Prepared::Dense(WeightDType::F16),
        Weights::Affine { bits, group } => {
            let codec = AffineCodec::new(bits, Group::Size(group), ScaleDType::F16)?;
            let e = codec.encode(m)?;
            Prepared::Affine(codec, e)
        }
        Weights::AffineQ8 { group } => {
            let codec = AffineCodec::new(4, Group::Size(group), ScaleDType::F16)?;
            let e = codec.encode(m)?;
            Prepared::AffineQ8(codec, e)
        }
        Weights::Nf4 => Prepared::Lut(membound_codec::codec_from_spec("nf4:block=64")?.encode(m)?),
        Weights::SparseF16 => Prepared::SparseF16(
            ColMajorF16::from_row_major(data, rows, cols)
                .map_err(|e| Error::Request(e.to_string()))?,
        ),
        Weights::SparseAffine4 { group } => Prepared::SparseAffine4(
            ColMajorAffine4::from_row_major(data, rows, cols, group)
                .map_err(|e| Error::Request(e.to_string()))?,
        ),
    })
}

fn upload(
    ctx: &GpuContext,
    p: &Prepared,
    rows: usize,
    cols: usize,
    data: &[f32],
    name: &str,
    launch: Option<Launch>,
) -> Result<Box<dyn BenchKernel>> {
    Ok(match p {
        Prepared::Dense(dt) => Box::new(DenseGemv::new(ctx, name, rows, cols, data, *dt)?),
        Prepared::Affine(codec, e) => {
            let mut m = AffineGemv::new(ctx, name, codec, e)?;
            if let Some(l) = launch {
                m.set_launch(ctx, l)?;
            }
            Box::new(m)
        }
        Prepared::AffineQ8(codec, e) => {
            let mut m = AffineGemv::new(ctx, name, codec, e)?;
            m.set_q8_activations(ctx, true)?;
            Box::new(m)
        }
        Prepared::Lut(e) => Box::new(LutGemv::new(ctx, name, e)?),
        Prepared::SparseF16(m) => Box::new(SparseGemv::from_f16(ctx, name, m)?),
        Prepared::SparseAffine4(m) => Box::new(SparseGemv::from_affine4(ctx, name, m)?),
    })
}

/// Warms up, then times passes that run every copy in `kernels` once.
/// Returns (seconds per GEMV, bytes per GEMV).
fn time_case(
    ctx: &GpuContext,
    cfg: &Config,
    kernels: &[Box<dyn BenchKernel>],
    x: &GpuVector,
    tau: f32,
    active: usize,
    y: &GpuVector,
) -> Result<(f64, u64)> {
    let dispatches = kernels
        .iter()
        .map(|k| k.dispatch(ctx, x, tau, y))
        .collect::<Result<Vec<_>>>()?;
    Ok((
        ctx.time_dispatches(&dispatches, cfg.warm_up, cfg.reps)?,
        kernels[0].bytes_read(active),
    ))
}

/// Times the streaming-read floor of `bytes` (rounded up to 16): `copies`
/// (at least 2) buffers of GPU-filled random bytes, each read once a pass,
/// like [`time_case`]. Returns seconds per read.
pub(crate) fn time_floor(
    ctx: &GpuContext,
    bytes: u64,
    copies: usize,
    warm_up: Duration,
    reps: usize,
) -> Result<f64> {
    let size = bytes.max(16).next_multiple_of(16);
    let out = GpuBuffer::new(
        ctx,
        "floor out",
        stream_read_blocks(size) * 4,
        wgpu::BufferUsages::STORAGE,
    )?;
    let buffers = random_buffers(ctx, &format!("floor {size} bytes"), size, copies.max(2))?;
    let dispatches = buffers
        .iter()
        .map(|b| Ok(stream_read(ctx, b, &out)?))
        .collect::<Result<Vec<_>>>()?;
    Ok(ctx.time_dispatches(&dispatches, warm_up, reps)?)
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
    let cases_per_shape: usize = cfg
        .weights
        .iter()
        .map(|w| {
            if w.is_sparse() {
                2 * cfg.sparsities.len()
            } else {
                1
            }
        })
        .sum();
    let total = cfg.shapes.len() * cases_per_shape;
    let mut rows = Vec::new();
    // Floor times by (bytes, copies).
    let mut floors: HashMap<(u64, usize), f64> = HashMap::new();
    for &(r, c) in &cfg.shapes {
        let data: Vec<f32> = (0..r * c).map(|i| unit(i as u64) * 0.05).collect();
        let y = GpuVector::zeros(ctx, "bench y", r)?;
        let mut dense_f16 = None;
        let mut shape_rows = Vec::new();
        for &w in &cfg.weights {
            let prepared = prepare(w, r, c, &data)?;
            let first = upload(
                ctx,
                &prepared,
                r,
                c,
                &data,
                &format!("bench {r}x{c} {} #0", w.label()),
                cfg.affine_launch,
            )?;
            let copies = (cfg.working_set.div_ceil(first.weight_bytes().max(1)) as usize)
                .clamp(2, cfg.max_copies);
            let mut kernels = vec![first];
            for i in 1..copies {
                kernels.push(upload(
                    ctx,
                    &prepared,
                    r,
                    c,
                    &data,
                    &format!("bench {r}x{c} {} #{i}", w.label()),
                    cfg.affine_launch,
                )?);
            }
            let cases: Vec<(f64, &str)> = if w.is_sparse() {
                ["random", "magnitude"]
                    .iter()
                    .flat_map(|m| cfg.sparsities.iter().map(move |&s| (s, *m)))
                    .collect()
            } else {
                vec![(0.0, "dense")]
            };
            for (sparsity, mask) in cases {
                progress(
                    rows.len() + shape_rows.len(),
                    total,
                    &format!("{r}x{c} {} {mask} {sparsity}", w.label()),
                );
                let (xs, tau) = input(c, sparsity, mask)?;
                let active = xs.iter().filter(|v| v.abs() > tau).count();
                let x = GpuVector::from_slice(ctx, "bench x", &xs)?;
                let (secs, bytes) = time_case(ctx, cfg, &kernels, &x, tau, active, &y)?;
                if w == Weights::F16 {
                    dense_f16 = Some(secs);
                }
                // As many copies as the case rotates through, so that both
                // touch the same memory per pass (a sparse case reads only
                // its active columns of each copy).
                let floor = if cfg.floor {
                    Some(match floors.entry((bytes, copies)) {
                        Entry::Occupied(e) => *e.get(),
                        Entry::Vacant(e) => {
                            *e.insert(time_floor(ctx, bytes, copies, cfg.warm_up, cfg.reps)?)
                        }
                    })
                } else {
                    None
                };
                let gbps = bytes as f64 / secs / 1e9;
                shape_rows.push(Row {
                    rows: r,
                    cols: c,
                    weights: w.label(),
                    sparsity: if w.is_sparse() {
                        1.0 - active as f64 / c as f64
                    } else {
                        0.0
                    },
                    mask: mask.into(),
                    copies,
                    median_us: secs * 1e6,
                    bytes_read: bytes,
                    gbps,
                    peak_fraction: peak_gbps.map(|p| gbps / p),
                    speedup_vs_dense_f16: None,
                    floor_us: floor.map(|f| f * 1e6),
                    floor_fraction: floor.map(|f| f / secs),
                    floor_speedup_vs_dense_f16: None,
                });
            }
        }
        for row in &mut shape_rows {
            row.speedup_vs_dense_f16 = dense_f16.map(|d| d / (row.median_us * 1e-6));
            row.floor_speedup_vs_dense_f16 =
                dense_f16.zip(row.floor_us).map(|(d, f)| d / (f * 1e-6));
        }
        rows.extend(shape_rows);
    }
    progress(total, total, "done");
    let timing = if ctx.features().timestamps {
        TimingMethod::GpuTimestamps
    } else {
        TimingMethod::WallClock
    };
    Ok(Report {
        device: adapter.name.clone(),
        backend: format!("{:?}", adapter.backend),
        driver: format!("{} {}", adapter.driver, adapter.driver_info),
        peak_gbps,
        peak_source,
        timing: format!("{timing:?}"),
        working_set: cfg.working_set,
        rows,
    })
}
