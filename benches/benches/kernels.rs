//! GPU mat-vec kernels on whatever adapter is present, to track regressions.
//!
//! Each iteration submits one pass over copies of the matrix whose total
//! exceeds typical last-level caches and waits for the device inside the
//! timed region (`iter_custom`), so the figure is real memory traffic.
//! Without an adapter the benchmark prints why and measures nothing.
//! `floor_f16_bytes` is a plain streaming read of the f16 matrix's bytes
//! (`stream_read`), the floor the GEMVs are judged against.
#![allow(missing_docs)]

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use membound_codec::{AffineCodec, Codec, Group, Matrix, ScaleDType};
use membound_gpu::{
    AffineGemv, DenseGemv, Dispatch, GpuBuffer, GpuContext, GpuVector, SparseGemv, WeightDType,
    random_buffers, stream_read, stream_read_blocks, wgpu,
};

/// SmolLM2's MLP shape keeps llvmpipe runs short; a real GPU sees the same
/// code paths as at LLaMA sizes.
const ROWS: usize = 1536;
const COLS: usize = 576;
/// Copies per pass: 64 × 1.7 MB of f16 is past a 50 MB last-level cache.
const COPIES: usize = 64;

fn unit(k: u64) -> f32 {
    let mut z = k.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 23) as f32 - 1.0) * 0.05
}

fn time(ctx: &GpuContext, dispatches: &[Dispatch], iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        let refs: Vec<&Dispatch> = dispatches.iter().collect();
        ctx.submit(&refs).expect("submit");
        ctx.wait().expect("wait");
    }
    start.elapsed() / COPIES as u32
}

fn kernels(c: &mut Criterion) {
    let ctx = match GpuContext::new() {
        Ok(ctx) => ctx,
        Err(e) => {
            eprintln!("kernels bench skipped: {e}");
            return;
        }
    };
    let w: Vec<f32> = (0..ROWS * COLS).map(|i| unit(i as u64)).collect();
    let xs: Vec<f32> = (0..COLS)
        .map(|j| {
            if j % 2 == 0 {
                0.0
            } else {
                unit(!(j as u64)) * 20.0
            }
        })
        .collect();
    let x = GpuVector::from_slice(&ctx, "x", &xs).unwrap();
    let y = GpuVector::zeros(&ctx, "y", ROWS).unwrap();
    let mut g = c.benchmark_group(format!("gemv_{ROWS}x{COLS}"));
    g.sample_size(10);
    g.throughput(Throughput::Elements((ROWS * COLS) as u64));

    let dense: Vec<DenseGemv> = (0..COPIES)
        .map(|i| {
            DenseGemv::new(&ctx, &format!("f16 #{i}"), ROWS, COLS, &w, WeightDType::F16).unwrap()
        })
        .collect();
    let d: Vec<Dispatch> = dense
        .iter()
        .map(|k| k.bind(&ctx, &x, &y).unwrap())
        .collect();
    g.bench_function("dense_f16", |b| b.iter_custom(|n| time(&ctx, &d, n)));

    let bytes = (ROWS * COLS * 2) as u64;
    let out = GpuBuffer::new(
        &ctx,
        "floor out",
        stream_read_blocks(bytes) * 4,
        wgpu::BufferUsages::STORAGE,
    )
    .unwrap();
    let copies = random_buffers(&ctx, "floor", bytes, COPIES).unwrap();
    let d: Vec<Dispatch> = copies
        .iter()
        .map(|b| stream_read(&ctx, b, &out).unwrap())
        .collect();
    g.bench_function("floor_f16_bytes", |b| b.iter_custom(|n| time(&ctx, &d, n)));

    let codec = AffineCodec::new(4, Group::Size(64), ScaleDType::F16).unwrap();
    let e = codec.encode(Matrix::new(ROWS, COLS, &w).unwrap()).unwrap();
    let affine: Vec<AffineGemv> = (0..COPIES)
        .map(|i| AffineGemv::new(&ctx, &format!("a4 #{i}"), &codec, &e).unwrap())
        .collect();
    let d: Vec<Dispatch> = affine
        .iter()
        .map(|k| k.bind(&ctx, &x, &y).unwrap())
        .collect();
    g.bench_function("affine4_g64", |b| b.iter_custom(|n| time(&ctx, &d, n)));

    // Half of x is exactly zero: the exact-zero (τ = 0) sparse path at 50 %.
    let sparse: Vec<SparseGemv> = (0..COPIES)
        .map(|i| SparseGemv::f16(&ctx, &format!("s16 #{i}"), ROWS, COLS, &w).unwrap())
        .collect();
    let d: Vec<Dispatch> = sparse
        .iter()
        .map(|k| k.bind(&ctx, &x, 0.0, &y).unwrap())
        .collect();
    g.bench_function("sparse_f16_50pct", |b| b.iter_custom(|n| time(&ctx, &d, n)));
    g.finish();
}

criterion_group!(benches, kernels);
criterion_main!(benches);
