//! Times the dense GEMV kernel (or a variant of its WGSL) on the present
//! adapter, rotating through enough matrices that the working set exceeds
//! the GPU's last-level cache, after warming the GPU up to full clocks.
//!
//! By default it times `DenseGemv` as the library configures it. With
//! `--shader` or `--wg` it times raw pipelines instead, for tuning.
//!
//! ```sh
//! cargo run --release -p membound-gpu --example gemv_bench -- \
//!     [--shader FILE.wgsl] [--wg 128,256] [--dtype f16,f32] \
//!     [--shapes 4096x14336,14336x4096] [--working-set-mb 512] [--reps 20] [--batch 8] \
//!     [--rows-per-wg 4] [--data random|pattern] [--distinct-y 0|1] [--warm-up-ms 500]
//! ```
//!
//! A `--shader` variant must keep `gemv_dense.wgsl`'s entry points, bindings,
//! `Params` and weight layout (rows of 16-byte chunks). Each variant is first
//! checked against the CPU reference on a small integer problem.

use std::sync::Arc;
use std::time::Duration;

use membound_gpu::{
    Binding, DenseGemv, Dispatch, GpuBuffer, GpuContext, GpuVector, Pipeline, PipelineSpec, Shader,
    TimingMethod, WeightDType, Workgroups, dense_gemv_reference, shaders, wgpu,
};

const BINDINGS: &[Binding] = &[
    Binding::Uniform,
    Binding::Storage,
    Binding::Storage,
    Binding::StorageReadWrite,
];

struct Args {
    shaders: Vec<Shader>,
    wgs: Vec<u32>,
    dtypes: Vec<WeightDType>,
    shapes: Vec<(usize, usize)>,
    working_set: u64,
    reps: usize,
    batch: usize,
    rows_per_workgroup: usize,
    random: bool,
    distinct_y: bool,
    warm_up_ms: u64,
    library: bool,
}

fn parse_args() -> Args {
    let mut args = Args {
        shaders: Vec::new(),
        wgs: Vec::new(),
        dtypes: vec![WeightDType::F16, WeightDType::F32],
        shapes: vec![(4096, 4096), (4096, 14336), (14336, 4096)],
        working_set: 512 << 20,
        reps: 20,
        batch: 8,
        rows_per_workgroup: 4,
        random: true,
        distinct_y: false,
        warm_up_ms: 500,
        library: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        let list = || value.split(',').map(str::trim).filter(|s| !s.is_empty());
        match flag.as_str() {
            "--shader" => {
                let text = std::fs::read_to_string(&value).unwrap();
                let name: &'static str = Box::leak(value.clone().into_boxed_str());
                args.shaders
                    .push(Shader::new(name, Box::leak(text.into_boxed_str())));
            }
            "--wg" => args.wgs = list().map(|s| s.parse().unwrap()).collect(),
            "--dtype" => {
                args.dtypes = list()
                    .map(|s| match s {
                        "f16" => WeightDType::F16,
                        "f32" => WeightDType::F32,
                        _ => panic!("dtype {s}"),
                    })
                    .collect();
            }
            "--shapes" => {
                args.shapes = list()
                    .map(|s| {
                        let (r, c) = s.split_once('x').expect("ROWSxCOLS");
                        (r.parse().unwrap(), c.parse().unwrap())
                    })
                    .collect();
            }
            "--working-set-mb" => args.working_set = value.parse::<u64>().unwrap() << 20,
            "--reps" => args.reps = value.parse().unwrap(),
            "--batch" => args.batch = value.parse().unwrap(),
            "--rows-per-wg" => args.rows_per_workgroup = value.parse().unwrap(),
            "--data" => args.random = value == "random",
            "--distinct-y" => args.distinct_y = value == "1",
            "--warm-up-ms" => args.warm_up_ms = value.parse().unwrap(),
            _ => panic!("unknown flag {flag}"),
        }
    }
    args.library = args.shaders.is_empty() && args.wgs.is_empty();
    if args.shaders.is_empty() {
        args.shaders.push(shaders::GEMV_DENSE);
    }
    if args.wgs.is_empty() {
        args.wgs.push(256);
    }
    args
}

/// One matrix in the kernel's layout, with its bind group inputs.
struct Matrix {
    weights: GpuBuffer,
    params: GpuBuffer,
}

fn upload(
    ctx: &GpuContext,
    rows: usize,
    cols: usize,
    dtype: WeightDType,
    fill: &dyn Fn(usize) -> f32,
) -> Matrix {
    let stride = cols.div_ceil(dtype.per_chunk());
    let row_bytes = stride * 16;
    let weights = GpuBuffer::with_contents(
        ctx,
        "bench weights",
        (rows * row_bytes) as u64,
        wgpu::BufferUsages::STORAGE,
        |mut view| {
            let mut row = vec![0u8; cols * dtype.bytes()];
            for r in 0..rows {
                for c in 0..cols {
                    let v = fill(r * cols + c);
                    match dtype {
                        WeightDType::F32 => row[4 * c..4 * c + 4].copy_from_slice(&v.to_le_bytes()),
                        WeightDType::F16 => row[2 * c..2 * c + 2]
                            .copy_from_slice(&half::f16::from_f32(v).to_le_bytes()),
                    }
                }
                view.slice(r * row_bytes..r * row_bytes + row.len())
                    .copy_from_slice(&row);
            }
        },
    )
    .unwrap();
    let params = [rows as u32, cols as u32, stride as u32, 0];
    let params = GpuBuffer::from_bytes(
        ctx,
        "bench params",
        bytemuck::bytes_of(&params),
        wgpu::BufferUsages::UNIFORM,
    )
    .unwrap();
    Matrix { weights, params }
}

fn dispatch(
    ctx: &GpuContext,
    pipeline: &Arc<Pipeline>,
    m: &Matrix,
    rows: usize,
    rows_per_workgroup: usize,
    x: &GpuVector,
    y: &GpuVector,
) -> Dispatch {
    let group = pipeline
        .bind(ctx, &[&m.params, &m.weights, x.buffer(), y.buffer()])
        .unwrap();
    let grid = ctx
        .grid_1d("bench", rows.div_ceil(rows_per_workgroup) as u32)
        .unwrap();
    let mut d = Dispatch::new();
    d.push(Arc::clone(pipeline), group, Workgroups::Direct(grid));
    d
}

/// A hash of `k` in [-1, 1): incompressible weights (compressible data
/// can read faster than memory allows on GPUs that compress).
fn unit(k: u64) -> f32 {
    let mut z = k.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

fn entry(dtype: WeightDType, subgroups: bool) -> &'static str {
    match (dtype, subgroups) {
        (WeightDType::F32, false) => "gemv_f32",
        (WeightDType::F16, false) => "gemv_f16",
        (WeightDType::F32, true) => "gemv_f32_subgroup",
        (WeightDType::F16, true) => "gemv_f16_subgroup",
    }
}

/// Checks the variant on a small integer problem (exact in f32).
fn check(ctx: &GpuContext, pipeline: &Arc<Pipeline>, dtype: WeightDType, rpw: usize) -> bool {
    let (rows, cols) = (37, 1001);
    let f = |i: usize| (unit(i as u64) * 3.0).round();
    let w: Vec<f32> = (0..rows * cols).map(f).collect();
    let xs: Vec<f32> = (0..cols)
        .map(|i| (unit(!(i as u64)) * 2.0).round())
        .collect();
    let m = upload(ctx, rows, cols, dtype, &f);
    let x = GpuVector::from_slice(ctx, "x", &xs).unwrap();
    let y = GpuVector::zeros(ctx, "y", rows).unwrap();
    ctx.submit(&[&dispatch(ctx, pipeline, &m, rows, rpw, &x, &y)])
        .unwrap();
    let got = y.read(ctx).unwrap();
    let want = dense_gemv_reference(&w, rows, cols, &xs);
    assert!(
        want.iter().any(|v| *v != 0.0),
        "the check must not be trivial"
    );
    got.iter().zip(&want).all(|(g, w)| f64::from(*g) == *w)
}

/// Times `calls` (rotating, `batch` per pass) after warming up; returns
/// the median and best seconds per call and how they were measured.
fn time_calls(ctx: &GpuContext, args: &Args, calls: &[Dispatch]) -> (f64, f64, TimingMethod) {
    let mut next = 0;
    let mut record = |pass: &mut wgpu::ComputePass<'_>| {
        for _ in 0..args.batch {
            calls[next % calls.len()].record(pass);
            next += 1;
        }
    };
    ctx.warm_up(Duration::from_millis(args.warm_up_ms), &mut record)
        .unwrap();
    let t = ctx.time_repeated(args.reps, &mut record).unwrap();
    let batch = args.batch as f64;
    (
        t.median().as_secs_f64() / batch,
        t.min().as_secs_f64() / batch,
        t.method,
    )
}

/// Times `DenseGemv` as the library builds it.
fn library(ctx: &GpuContext, args: &Args) {
    for &dtype in &args.dtypes {
        for &(rows, cols) in &args.shapes {
            let w: Vec<f32> = (0..rows * cols).map(|k| unit(k as u64)).collect();
            let first = DenseGemv::new(ctx, "w0", rows, cols, &w, dtype).unwrap();
            let n = args.working_set.div_ceil(first.weight_bytes()).max(2) as usize;
            let mut mats = vec![first];
            for i in 1..n {
                mats.push(DenseGemv::new(ctx, &format!("w{i}"), rows, cols, &w, dtype).unwrap());
            }
            let x = GpuVector::from_slice(ctx, "x", &vec![1.0; cols]).unwrap();
            let ys: Vec<GpuVector> = (0..if args.distinct_y { n } else { 1 })
                .map(|_| GpuVector::zeros(ctx, "y", rows).unwrap())
                .collect();
            let calls: Vec<Dispatch> = mats
                .iter()
                .enumerate()
                .map(|(i, m)| m.bind(ctx, &x, &ys[i % ys.len()]).unwrap())
                .collect();
            let (per, best, method) = time_calls(ctx, args, &calls);
            let bytes = mats[0].bytes_read() as f64;
            println!(
                "DenseGemv WG {:4} {dtype:?} {rows:>6}x{cols:<6} {:8.2} us (best {:8.2}) {:7.1} GB/s  {n} matrices, {method:?}",
                mats[0].workgroup_size(),
                per * 1e6,
                best * 1e6,
                bytes / per / 1e9,
            );
        }
    }
}

fn main() {
    let args = parse_args();
    let ctx = GpuContext::new().unwrap_or_else(|e| panic!("{e}"));
    println!(
        "adapter: {}\nfeatures in use: {}",
        ctx.adapter(),
        ctx.features()
    );
    if args.library {
        library(&ctx, &args);
        return;
    }
    for shader in &args.shaders {
        for &wg in &args.wgs {
            for &dtype in &args.dtypes {
                let constants = [("WG", f64::from(wg))];
                let pipeline = match ctx.pipeline(&PipelineSpec {
                    shader: *shader,
                    entry: entry(dtype, ctx.features().subgroups),
                    constants: &constants,
                    bindings: BINDINGS,
                }) {
                    Ok(p) => p,
                    Err(e) => {
                        println!("{}: {e}", shader.name);
                        continue;
                    }
                };
                let ok = check(&ctx, &pipeline, dtype, args.rows_per_workgroup);
                for &(rows, cols) in &args.shapes {
                    let stride = cols.div_ceil(dtype.per_chunk());
                    let bytes = (rows * stride * 16) as u64;
                    let n = args.working_set.div_ceil(bytes).max(2) as usize;
                    let mats: Vec<Matrix> = (0..n)
                        .map(|i| {
                            let salt = (i as u64) << 40;
                            if args.random {
                                upload(&ctx, rows, cols, dtype, &|k| unit(salt + k as u64))
                            } else {
                                upload(&ctx, rows, cols, dtype, &|k| ((k + i) % 13) as f32 * 0.01)
                            }
                        })
                        .collect();
                    let x = GpuVector::from_slice(&ctx, "x", &vec![1.0; cols]).unwrap();
                    // One output per matrix makes the dispatches of a pass
                    // independent (no barrier between them); one shared
                    // output chains them like dependent layers.
                    let ys: Vec<GpuVector> = (0..if args.distinct_y { n } else { 1 })
                        .map(|_| GpuVector::zeros(&ctx, "y", rows).unwrap())
                        .collect();
                    let calls: Vec<Dispatch> = mats
                        .iter()
                        .enumerate()
                        .map(|(i, m)| {
                            let y = &ys[i % ys.len()];
                            dispatch(&ctx, &pipeline, m, rows, args.rows_per_workgroup, &x, y)
                        })
                        .collect();
                    let (per, best, method) = time_calls(&ctx, &args, &calls);
                    println!(
                        "{:28} WG {wg:4} {dtype:?} {rows:>6}x{cols:<6} {:8.2} us (best {:8.2}) {:7.1} GB/s  {} matrices, {:?}{}",
                        shader.name,
                        per * 1e6,
                        best * 1e6,
                        (bytes + cols as u64 * 4) as f64 / per / 1e9,
                        n,
                        method,
                        if ok { "" } else { "  WRONG RESULTS" }
                    );
                }
            }
        }
    }
}
