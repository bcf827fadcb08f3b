//! Throughput of ggml dequantization and f16 conversion on a working set
//! larger than the CPU caches.
#![allow(missing_docs)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use membound_tensor::{GgmlType, dequantize};

fn blocks(ty: GgmlType, n_blocks: usize) -> Vec<u8> {
    // Deterministic bytes with a small finite f16 scale at the block start
    // (every type benchmarked stores its f16 scale first or reads it as f16).
    let mut state = 0x9e37_79b9_u32;
    let mut data: Vec<u8> = (0..n_blocks * ty.type_size())
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect();
    for b in data.chunks_exact_mut(ty.type_size()) {
        b[0..2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
    }
    data
}

fn dequant(c: &mut Criterion) {
    let mut g = c.benchmark_group("dequantize");
    let n = 16 << 20; // 16 Mi weights: 64 MiB of f32 output
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
    ] {
        let src = blocks(ty, n / ty.block_size());
        let mut out = vec![0f32; n];
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(ty.name(), |b| {
            b.iter(|| dequantize(ty, &src, &mut out).unwrap())
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = dequant
}
criterion_main!(benches);
