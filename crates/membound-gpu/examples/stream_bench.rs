//! Tunes the streaming-read floor kernel: times `stream_read_with` at
//! several launches and sizes on the present adapter, next to our dense
//! f16 GEMV reading the same bytes (which the floor must not lose to).
//!
//! Each case rotates through GPU-filled copies totalling the working set
//! (more than the last-level cache), like `membound bench kernels`.
//!
//! ```sh
//! cargo run --release -p membound-gpu --example stream_bench -- \
//!     [--mib 11.25,31.5,56,112] [--launches 256x4x1,128x8x2,...] [--working-set-mb 512] \
//!     [--reps 20]
//! ```
//!
//! A launch is THREADSxLOADSxROUNDS (see `StreamLaunch`).

use std::time::Duration;

use membound_gpu::{
    DenseGemv, Dispatch, GpuBuffer, GpuContext, GpuVector, STREAM_NO_MATCH, StreamLaunch,
    WeightDType, random_buffers, stream_read_with, wgpu,
};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn time(ctx: &GpuContext, dispatches: &[Dispatch], reps: usize) -> f64 {
    ctx.time_dispatches(dispatches, Duration::from_millis(300), reps)
        .unwrap()
}

fn main() {
    let mib: Vec<f64> = arg("--mib")
        .unwrap_or_else(|| "11.25,15.75,31.5,56,112".into())
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let launches: Vec<StreamLaunch> = arg("--launches")
        .unwrap_or_else(|| "256x2x1,256x4x1,128x4x1,512x2x1,256x8x1,128x8x1".into())
        .split(',')
        .map(|s| {
            let v: Vec<u32> = s.trim().split('x').map(|p| p.parse().unwrap()).collect();
            StreamLaunch {
                threads: v[0],
                loads: v[1],
                rounds: v[2],
            }
        })
        .collect();
    let ws: u64 = arg("--working-set-mb").map_or(512, |s| s.parse().unwrap()) << 20;
    let reps: usize = arg("--reps").map_or(20, |s| s.parse().unwrap());
    let ctx = GpuContext::new().unwrap();
    eprintln!("adapter: {}", ctx.adapter());
    for &m in &mib {
        let size = ((m * (1 << 20) as f64) as u64).next_multiple_of(16 * 4096);
        let copies = ws.div_ceil(size).clamp(2, 1024) as usize;
        let bufs = random_buffers(&ctx, "copy", size, copies).unwrap();
        let mut line = format!("{m:8.2} MiB");
        for &l in &launches {
            let out = GpuBuffer::new(&ctx, "out", l.blocks(size) * 4, wgpu::BufferUsages::STORAGE)
                .unwrap();
            let ds: Vec<Dispatch> = bufs
                .iter()
                .map(|b| stream_read_with(&ctx, b, &out, STREAM_NO_MATCH, l).unwrap())
                .collect();
            let s = time(&ctx, &ds, reps);
            line += &format!(
                "  {}x{}x{} {:6.2} us",
                l.threads,
                l.loads,
                l.rounds,
                s * 1e6
            );
        }
        drop(bufs);
        // Dense f16 GEMV of 4096 rows reading about the same bytes.
        let cols = (size / 2 / 4096) as usize;
        let data: Vec<f32> = (0..4096 * cols)
            .map(|i| ((i * 7919) % 997) as f32 * 1e-3)
            .collect();
        let x = GpuVector::from_slice(&ctx, "x", &vec![0.5; cols]).unwrap();
        let y = GpuVector::zeros(&ctx, "y", 4096).unwrap();
        let n = copies.min(64);
        let ms: Vec<DenseGemv> = (0..n)
            .map(|i| {
                DenseGemv::new(&ctx, &format!("w{i}"), 4096, cols, &data, WeightDType::F16).unwrap()
            })
            .collect();
        let ds: Vec<Dispatch> = ms.iter().map(|w| w.bind(&ctx, &x, &y).unwrap()).collect();
        let s = time(&ctx, &ds, reps);
        line += &format!("  | dense f16 4096x{cols} ({n} copies) {:6.2} us", s * 1e6);
        println!("{line}");
    }
}
