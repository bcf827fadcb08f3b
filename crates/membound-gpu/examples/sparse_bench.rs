//! Times the activation-sparse GEMV (f16 and 4-bit affine) against our
//! dense f16 GEMV at the same shapes, in the same run, on the present
//! adapter: mask, compaction and mat-vec all counted.
//!
//! Each kernel rotates through enough matrices that the working set exceeds
//! the GPU's last-level cache. Before each measurement the GPU is warmed up
//! with the measured calls interleaved with a dense GEMV (light work alone
//! may not keep the clocks up). Two figures per call, medians of `reps`
//! timestamped passes:
//!   - batched: `batch` calls per pass sharing one output, per call. Calls
//!     of different matrices share only x and y, so a sparse call's first
//!     stage may overlap the previous call's second stage;
//!   - single: one call per pass, nothing overlaps (includes the pass's own
//!     start and end, as it does for the dense baseline).
//!
//! x is random in [-1, 1) with τ chosen for each sparsity (a random mask);
//! sparsity 1 (τ = +∞) leaves only the fixed cost.
//!
//! ```sh
//! cargo run --release -p membound-gpu --example sparse_bench -- \
//!     [--shapes 4096x14336,14336x4096] [--sparsities 0,0.25,0.5,0.7,0.9,1] \
//!     [--f16-tunings 32:256,...] [--q4-tunings 16:256,...] [--sweep-sparsities 0.5,0.9] \
//!     [--group 64] [--dense-extra 4096x1434] [--working-set-mb 1024] [--reps 30] \
//!     [--batch 8] [--warm-up-ms 500]
//! ```
//!
//! A tuning is `threads_per_column:target_workgroups[:last|:second]` (the
//! reduction of several chunks: last workgroup or second dispatch; default
//! auto); the first of each list
//! (or the library default when the list is empty) is timed at every
//! sparsity, the others at the sweep sparsities. Before timing, each
//! configuration's output is checked against the CPU reference.

use std::time::{Duration, Instant};

use membound_gpu::{
    DenseGemv, Dispatch, GpuContext, GpuVector, SparseGemv, SparseReduce, SparseTuning, Threshold,
    TimingMethod, WeightDType, wgpu,
};
use membound_sparse::{ColMajorAffine4, ColMajorF16, active_indices, threshold_for_sparsity};

struct Args {
    shapes: Vec<(usize, usize)>,
    sparsities: Vec<f64>,
    sweep_sparsities: Vec<f64>,
    f16_tunings: Vec<SparseTuning>,
    q4_tunings: Vec<SparseTuning>,
    group: usize,
    dense_extra: Vec<(usize, usize)>,
    working_set: u64,
    reps: usize,
    batch: usize,
    warm_up_ms: u64,
}

fn list<T>(value: &str, f: impl Fn(&str) -> T) -> Vec<T> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(f)
        .collect()
}

fn shape(s: &str) -> (usize, usize) {
    let (r, c) = s.split_once('x').expect("ROWSxCOLS");
    (r.parse().unwrap(), c.parse().unwrap())
}

/// `THREADS:TARGET[:last|:second]` (the reduction; the default is `Auto`).
fn tuning(s: &str) -> SparseTuning {
    let mut parts = s.split(':');
    let (Some(t), Some(w)) = (parts.next(), parts.next()) else {
        panic!("a tuning is THREADS:TARGET[:last|:second], not {s}");
    };
    let reduce = match parts.next() {
        None => SparseReduce::Auto,
        Some("last") => SparseReduce::LastWorkgroup,
        Some("second") => SparseReduce::SecondDispatch,
        Some(other) => panic!("reduction `{other}`: last or second"),
    };
    SparseTuning {
        threads_per_column: t.parse().unwrap(),
        target_workgroups: w.parse().unwrap(),
        reduce,
    }
}

fn parse_args() -> Args {
    let mut args = Args {
        shapes: vec![(4096, 14336), (14336, 4096)],
        sparsities: vec![0.0, 0.25, 0.5, 0.7, 0.9, 1.0],
        sweep_sparsities: vec![0.5, 0.9],
        f16_tunings: Vec::new(),
        q4_tunings: Vec::new(),
        group: 64,
        dense_extra: Vec::new(),
        working_set: 1 << 30,
        reps: 30,
        batch: 8,
        warm_up_ms: 500,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--shapes" => args.shapes = list(&value, shape),
            "--sparsities" => args.sparsities = list(&value, |s| s.parse().unwrap()),
            "--sweep-sparsities" => args.sweep_sparsities = list(&value, |s| s.parse().unwrap()),
            "--f16-tunings" => args.f16_tunings = list(&value, tuning),
            "--q4-tunings" => args.q4_tunings = list(&value, tuning),
            "--group" => args.group = value.parse().unwrap(),
            "--dense-extra" => args.dense_extra = list(&value, shape),
            "--working-set-mb" => args.working_set = value.parse::<u64>().unwrap() << 20,
            "--reps" => args.reps = value.parse().unwrap(),
            "--batch" => args.batch = value.parse().unwrap(),
            "--warm-up-ms" => args.warm_up_ms = value.parse().unwrap(),
            _ => panic!("unknown flag {flag}"),
        }
    }
    args
}

/// A hash of `k` in [-1, 1): incompressible data.
fn unit(k: u64) -> f32 {
    let mut z = k.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

/// Per-call medians in seconds.
#[derive(Clone, Copy)]
struct Times {
    batched: f64,
    single: f64,
    method: TimingMethod,
}

struct Bench {
    ctx: GpuContext,
    args: Args,
    start: Instant,
    /// A dense GEMV (with its vectors) run during warm-ups.
    heater: (DenseGemv, GpuVector, GpuVector),
}

impl Bench {
    fn new(args: Args) -> Self {
        let ctx = GpuContext::new().unwrap_or_else(|e| panic!("{e}"));
        let (rows, cols) = (4096, 4096);
        let w: Vec<f32> = (0..rows * cols).map(|k| unit(k as u64)).collect();
        let gemv = DenseGemv::new(&ctx, "heater", rows, cols, &w, WeightDType::F16).unwrap();
        let x = GpuVector::from_slice(&ctx, "heater x", &vec![1.0; cols]).unwrap();
        let y = GpuVector::zeros(&ctx, "heater y", rows).unwrap();
        Self {
            ctx,
            args,
            start: Instant::now(),
            heater: (gemv, x, y),
        }
    }

    /// Times `calls`, rotating, after a warm-up.
    fn time(&self, calls: &[Dispatch]) -> Times {
        let (ctx, args) = (&self.ctx, &self.args);
        let heat = self
            .heater
            .0
            .bind(ctx, &self.heater.1, &self.heater.2)
            .unwrap();
        let mut next = 0;
        let mut warm = |pass: &mut wgpu::ComputePass<'_>| {
            heat.record(pass);
            for _ in 0..args.batch {
                calls[next % calls.len()].record(pass);
                next += 1;
            }
        };
        ctx.warm_up(Duration::from_millis(args.warm_up_ms), &mut warm)
            .unwrap();
        let mut batched = |pass: &mut wgpu::ComputePass<'_>| {
            for _ in 0..args.batch {
                calls[next % calls.len()].record(pass);
                next += 1;
            }
        };
        let t = ctx.time_repeated(args.reps, &mut batched).unwrap();
        let mut single = |pass: &mut wgpu::ComputePass<'_>| {
            calls[next % calls.len()].record(pass);
            next += 1;
        };
        let s = ctx.time_repeated(args.reps, &mut single).unwrap();
        Times {
            batched: t.median().as_secs_f64() / args.batch as f64,
            single: s.median().as_secs_f64(),
            method: t.method,
        }
    }

    fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Our dense f16 GEMV at `rows × cols`.
    fn dense(&self, rows: usize, cols: usize) -> Times {
        let ctx = &self.ctx;
        let w: Vec<f32> = (0..rows * cols).map(|k| unit(k as u64)).collect();
        let first = DenseGemv::new(ctx, "w0", rows, cols, &w, WeightDType::F16).unwrap();
        let n = self.args.working_set.div_ceil(first.weight_bytes()).max(2) as usize;
        let mut mats = vec![first];
        for i in 1..n {
            mats.push(
                DenseGemv::new(ctx, &format!("w{i}"), rows, cols, &w, WeightDType::F16).unwrap(),
            );
        }
        let x = GpuVector::from_slice(ctx, "x", &vec![1.0; cols]).unwrap();
        let y = GpuVector::zeros(ctx, "y", rows).unwrap();
        let calls: Vec<Dispatch> = mats.iter().map(|m| m.bind(ctx, &x, &y).unwrap()).collect();
        let t = self.time(&calls);
        let bytes = mats[0].bytes_read() as f64;
        println!(
            "[{:6.1}s] dense f16  {rows:>6}x{cols:<6}        batched {:7.2} us {:7.1} GB/s | single {:7.2} us  ({n} matrices, {:?})",
            self.elapsed(),
            t.batched * 1e6,
            bytes / t.batched / 1e9,
            t.single * 1e6,
            t.method
        );
        t
    }

    /// The sparse kernel over `host`'s weights under each tuning.
    fn sparse(&self, host: &Host, label: &str, dense: Times, tunings: &[SparseTuning]) {
        let (ctx, args) = (&self.ctx, &self.args);
        let first = host.upload(ctx, "w0");
        let (rows, cols) = (first.rows(), first.cols());
        let n = args.working_set.div_ceil(first.weight_bytes()).max(2) as usize;
        let mut mats = vec![first];
        for i in 1..n {
            mats.push(host.upload(ctx, &format!("w{i}")));
        }
        let xs: Vec<f32> = (0..cols).map(|k| unit(!(k as u64))).collect();
        let x = GpuVector::from_slice(ctx, "x", &xs).unwrap();
        let y = GpuVector::zeros(ctx, "y", rows).unwrap();
        let defaults = [mats[0].tuning()];
        let tunings = if tunings.is_empty() {
            &defaults[..]
        } else {
            tunings
        };
        for (t, &tuning) in tunings.iter().enumerate() {
            let tuned: Vec<SparseGemv> = mats
                .iter()
                .map(|m| m.with_tuning(ctx, tuning).unwrap())
                .collect();
            // Check against the CPU reference at 50%.
            let tau = threshold_for_sparsity(&xs, 0.5).unwrap();
            let active = active_indices(&xs, tau);
            tuned[0].run(ctx, &x, tau, &y).unwrap();
            let err = relative_error(&y.read(ctx).unwrap(), &host.reference(&xs, &active));
            // (A shader variant under MEMBOUND_SHADER_DIR may leave the
            // compaction unreadable: that is a wrong result, not a panic.)
            let compaction = tuned[0].read_compaction(ctx);
            let ok = err < 1e-5 && compaction.is_ok_and(|c| c.indices == active);
            let sparsities = if t == 0 {
                &args.sparsities
            } else {
                &args.sweep_sparsities
            };
            for &s in sparsities {
                let tau = if s >= 1.0 {
                    f32::INFINITY
                } else {
                    threshold_for_sparsity(&xs, s).unwrap()
                };
                let active = active_indices(&xs, tau).len();
                let calls: Vec<Dispatch> = tuned
                    .iter()
                    .map(|m| m.bind(ctx, &x, tau, &y).unwrap())
                    .collect();
                let tm = self.time(&calls);
                let bytes = tuned[0].bytes_read(active) as f64;
                println!(
                    "[{:6.1}s] {label:5} {:>3}:{:<4} {rows:>6}x{cols:<6} s={s:4.2} batched {:7.2} us {:7.1} GB/s x{:5.2} | single {:7.2} us x{:5.2}  [{} wg, {} chunks of {}, {} dispatch(es), {n} matrices, err {err:.1e}{}]",
                    self.elapsed(),
                    tuning.threads_per_column,
                    tuning.target_workgroups,
                    tm.batched * 1e6,
                    bytes / tm.batched / 1e9,
                    dense.batched / tm.batched,
                    tm.single * 1e6,
                    dense.single / tm.single,
                    tuned[0].workgroups(),
                    tuned[0].chunks(),
                    tuned[0].chunk_len(),
                    tuned[0].dispatches(),
                    if ok { "" } else { " WRONG RESULTS" }
                );
            }
            if t == 0 {
                self.stages(label, &tuned[0], &x, &y);
            }
        }
    }

    /// The fixed cost of one configuration, every input inactive: the first
    /// stage alone and the whole call, one matrix over and over (so the
    /// calls stay ordered).
    fn stages(&self, label: &str, m: &SparseGemv, x: &GpuVector, y: &GpuVector) {
        let ctx = &self.ctx;
        let tau = Threshold::new(ctx, "τ", f32::INFINITY).unwrap();
        let (first, _) = m.bind_stages(ctx, x, &tau, y).unwrap();
        let d1 = self.time(std::slice::from_ref(&first));
        let whole = m.bind_threshold(ctx, x, &tau, y).unwrap();
        let all = self.time(std::slice::from_ref(&whole));
        println!(
            "[{:6.1}s] {label:5} fixed cost (s=1): first stage batched {:6.2} us single {:6.2} us; whole call batched {:6.2} us single {:6.2} us ({} dispatches)",
            self.elapsed(),
            d1.batched * 1e6,
            d1.single * 1e6,
            all.batched * 1e6,
            all.single * 1e6,
            m.dispatches()
        );
    }
}

/// The weights of one shape on the host, in one form.
enum Host {
    F16(ColMajorF16),
    Q4(ColMajorAffine4),
}

impl Host {
    fn upload(&self, ctx: &GpuContext, name: &str) -> SparseGemv {
        match self {
            Host::F16(m) => SparseGemv::from_f16(ctx, name, m).unwrap(),
            Host::Q4(m) => SparseGemv::from_affine4(ctx, name, m).unwrap(),
        }
    }

    fn reference(&self, x: &[f32], active: &[u32]) -> Vec<f32> {
        match self {
            Host::F16(m) => m.sparse_gemv(x, active).unwrap(),
            Host::Q4(m) => m.sparse_gemv(x, active).unwrap(),
        }
    }
}

/// Largest |got − want| relative to the largest |want|.
fn relative_error(got: &[f32], want: &[f32]) -> f64 {
    let scale = want.iter().fold(0f64, |a, &w| a.max(f64::from(w.abs())));
    let err = got.iter().zip(want).fold(0f64, |a, (&g, &w)| {
        a.max((f64::from(g) - f64::from(w)).abs())
    });
    if scale == 0.0 { err } else { err / scale }
}

fn main() {
    let bench = Bench::new(parse_args());
    println!(
        "adapter: {}\nfeatures in use: {}",
        bench.ctx.adapter(),
        bench.ctx.features()
    );
    for &(rows, cols) in &bench.args.dense_extra {
        bench.dense(rows, cols);
    }
    for &(rows, cols) in &bench.args.shapes {
        let dense = bench.dense(rows, cols);
        let w: Vec<f32> = (0..rows * cols).map(|k| unit(k as u64)).collect();
        let f16 = Host::F16(ColMajorF16::from_row_major(&w, rows, cols).unwrap());
        bench.sparse(&f16, "f16", dense, &bench.args.f16_tunings);
        drop(f16);
        let group = bench.args.group;
        let q4 = Host::Q4(ColMajorAffine4::from_row_major(&w, rows, cols, group).unwrap());
        bench.sparse(&q4, &format!("q4g{group}"), dense, &bench.args.q4_tunings);
        drop(q4);
        // Again, as a check that the baseline did not drift.
        bench.dense(rows, cols);
    }
}
