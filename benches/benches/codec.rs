//! Single-threaded encode and decode throughput of the scalar-quantization
//! codecs on a 4096 × 4096 f32 matrix (64 MiB, larger than the CPU caches).
//!
//! Throughput is counted in bytes of f32 weights: read by `encode`, written
//! by `decode`. Targets for `affine:bits=4,group=64,scale=f16` (the
//! default): encode ≥ 1 GB/s, decode ≥ 2 GB/s.
//!
//! `codec_decode` goes through `Codec::decode`, which returns a fresh
//! 64 MiB `Vec`: the OS must fault in and zero every page of it, a cost
//! `baseline/fresh_vec_fill` (allocate and write the same 64 MiB, nothing
//! else) measures on its own. `codec_decode_into` decodes into a reused
//! buffer, which is the codec's own speed. Outputs are dropped outside the
//! timed region (`iter_with_large_drop`): freeing them is the caller's cost.
#![allow(missing_docs)]

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use membound_codec::{AbsmaxCodec, AffineCodec, Encoded, Matrix, Nf4Codec, Spec, codec_from_spec};

const N: usize = 4096;

const SPECS: &[&str] = &[
    "affine:bits=4,group=64,scale=f16",
    "affine:bits=4,group=64,scale=f32",
    "affine:bits=3,group=64,scale=f16",
    "affine:bits=8,group=128,scale=bf16",
    "absmax:bits=4,block=32,scale=f16",
    "nf4:block=64,scale=f16",
];

/// Deterministic weights: a sum of uniforms (close to Gaussian), std ≈ 0.02.
fn weights() -> Vec<f32> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..N * N)
        .map(|_| (next() + next() + next() + next() - 2.0) * 0.035)
        .collect()
}

fn codecs(c: &mut Criterion) {
    let data = weights();
    let m = Matrix::new(N, N, &data).unwrap();
    let mut enc = c.benchmark_group("codec_encode");
    enc.throughput(Throughput::Bytes((N * N * 4) as u64));
    for spec in SPECS {
        let codec = codec_from_spec(spec).unwrap();
        enc.bench_with_input(BenchmarkId::from_parameter(spec), &m, |b, &m| {
            b.iter_with_large_drop(|| codec.encode(m).unwrap())
        });
    }
    enc.finish();
    let mut dec = c.benchmark_group("codec_decode");
    dec.throughput(Throughput::Bytes((N * N * 4) as u64));
    for spec in SPECS {
        let codec = codec_from_spec(spec).unwrap();
        let e = codec.encode(m).unwrap();
        dec.bench_with_input(BenchmarkId::from_parameter(spec), &e, |b, e| {
            b.iter_with_large_drop(|| codec.decode(e).unwrap())
        });
    }
    dec.finish();
}

type DecodeInto = Box<dyn Fn(&Encoded, &mut [f32])>;

/// The codec's `decode_into`, by spec.
fn decode_into(spec: &str) -> DecodeInto {
    let s = Spec::parse(spec).unwrap();
    match s.name.as_str() {
        "affine" => {
            let c = AffineCodec::from_spec(s).unwrap();
            Box::new(move |e, o| c.decode_into(e, o).unwrap())
        }
        "absmax" => {
            let c = AbsmaxCodec::from_spec(s).unwrap();
            Box::new(move |e, o| c.decode_into(e, o).unwrap())
        }
        _ => {
            let c = Nf4Codec::from_spec(s).unwrap();
            Box::new(move |e, o| c.decode_into(e, o).unwrap())
        }
    }
}

fn reused_buffer(c: &mut Criterion) {
    let data = weights();
    let m = Matrix::new(N, N, &data).unwrap();
    let mut g = c.benchmark_group("codec_decode_into");
    g.throughput(Throughput::Bytes((N * N * 4) as u64));
    let mut out = vec![0f32; N * N];
    for spec in SPECS {
        let e = codec_from_spec(spec).unwrap().encode(m).unwrap();
        let f = decode_into(spec);
        g.bench_with_input(BenchmarkId::from_parameter(spec), &e, |b, e| {
            b.iter(|| f(e, &mut out))
        });
    }
    g.finish();
    let mut g = c.benchmark_group("baseline");
    g.throughput(Throughput::Bytes((N * N * 4) as u64));
    g.bench_function("fresh_vec_fill", |b| {
        b.iter_with_large_drop(|| {
            let mut v = vec![0f32; N * N];
            v.iter_mut().enumerate().for_each(|(i, x)| *x = i as f32);
            v
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = codecs, reused_buffer
}
criterion_main!(benches);
