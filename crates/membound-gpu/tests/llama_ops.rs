//! The decode-step kernels against scalar f64 references: RMSNorm (with the
//! residual add), attention with bias, RoPE (both layouts) and the KV-cache
//! write over many positions (several 256-position chunks, grouped-query
//! heads), SwiGLU and argmax.
//!
//! Tolerance: all kernels compute in f32; sums over a few hundred terms
//! and hardware exp/inverseSqrt keep relative errors near 1e-6, so 1e-4 of
//! the reference's largest magnitude is a loose, dtype-justified bound.

mod common;

use common::{Rng, context};
use membound_gpu::kernels::llama as ops;
use membound_gpu::{
    AttentionShape, GpuBuffer, GpuFeatures, GpuVector, KvCache, KvDType, StepBuffer, wgpu,
};

fn close(got: &[f32], want: &[f64], what: &str) {
    let scale = want.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            ((*g as f64) - w).abs() <= 1e-4 * scale,
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

fn randn(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.unit()).collect()
}

#[test]
fn rms_norm_and_residual_add() {
    let Some(ctx) = context(GpuFeatures::NONE) else {
        return;
    };
    let mut rng = Rng::new(3);
    for dim in [1usize, 7, 64, 576, 1000] {
        let (x, y, w) = (
            randn(&mut rng, dim),
            randn(&mut rng, dim),
            randn(&mut rng, dim),
        );
        let eps = 1e-5;
        let reference = |x: &[f64]| -> Vec<f64> {
            let ms = x.iter().map(|v| v * v).sum::<f64>() / dim as f64;
            x.iter()
                .zip(&w)
                .map(|(v, g)| v / (ms + eps as f64).sqrt() * *g as f64)
                .collect()
        };
        let gx = GpuVector::from_slice(&ctx, "x", &x).unwrap();
        let gy = GpuVector::from_slice(&ctx, "y", &y).unwrap();
        let gw = GpuVector::from_slice(&ctx, "w", &w).unwrap();
        let out = GpuVector::zeros(&ctx, "out", dim).unwrap();
        let d = ops::rms_norm(&ctx, &gx, &gw, eps, &out).unwrap();
        ctx.submit(&[&d]).unwrap();
        let x64: Vec<f64> = x.iter().map(|v| *v as f64).collect();
        close(&out.read(&ctx).unwrap(), &reference(&x64), "rms_norm");

        let d = ops::add_rms_norm(&ctx, &gx, &gy, &gw, eps, &out).unwrap();
        ctx.submit(&[&d]).unwrap();
        let sum: Vec<f64> = x.iter().zip(&y).map(|(a, b)| (a + b) as f64).collect();
        close(&out.read(&ctx).unwrap(), &reference(&sum), "add_rms_norm");
        close(&gx.read(&ctx).unwrap(), &sum, "residual");
    }
}

/// Scalar reference: bias, RoPE, then causal softmax attention over all
/// positions so far, per query head.
struct RefAttention {
    /// Stored values as the cache holds them (quantized per its dtype).
    quantize: bool,
    shape: AttentionShape,
    theta: f64,
    keys: Vec<Vec<f64>>,
    values: Vec<Vec<f64>>,
}

impl RefAttention {
    fn rotate(&self, x: &mut [f64], pos: usize) {
        let hd = self.shape.head_dim;
        let half = hd / 2;
        for head in x.chunks_mut(hd) {
            for i in 0..half {
                let freq = self.theta.powf(-((2 * i) as f64) / hd as f64);
                let (s, c) = (pos as f64 * freq).sin_cos();
                let (a, b) = if self.shape.rope_half {
                    (i, i + half)
                } else {
                    (2 * i, 2 * i + 1)
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * c - x1 * s;
                head[b] = x0 * s + x1 * c;
            }
        }
    }

    /// What the cache returns for `x`: f16 rounding, or MLX-style affine
    /// codes per group with the scale and minimum rounded to f16.
    fn store(&self, x: &mut [f64]) {
        use half::f16;
        let r16 = |v: f64| f64::from(f16::from_f64(v).to_f32());
        match self.shape.kv {
            KvDType::F32 => x.iter_mut().for_each(|v| *v = f64::from(*v as f32)),
            KvDType::F16 => x.iter_mut().for_each(|v| *v = r16(*v)),
            KvDType::Q8 | KvDType::Q4 => {
                let top = f64::from((1u32 << self.shape.kv.bits()) - 1);
                for g in x.chunks_mut(self.shape.kv_group()) {
                    let lo = g.iter().cloned().fold(f64::MAX, f64::min) as f32 as f64;
                    let hi = g.iter().cloned().fold(f64::MIN, f64::max) as f32 as f64;
                    let (scale, min) = (r16((hi - lo) / top), r16(lo));
                    for v in g.iter_mut() {
                        let q = if scale > 0.0 {
                            ((*v - min) / scale).round().clamp(0.0, top)
                        } else {
                            0.0
                        };
                        *v = q * scale + min;
                    }
                }
            }
        }
    }

    fn step(&mut self, qkv: &[f32], bias: Option<&[f32]>, pos: usize) -> Vec<f64> {
        let s = self.shape;
        let (qd, kvd, hd) = (s.q_dim(), s.kv_dim(), s.head_dim);
        let v: Vec<f64> = qkv
            .iter()
            .enumerate()
            .map(|(i, x)| *x as f64 + bias.map_or(0.0, |b| b[i] as f64))
            .collect();
        let mut q = v[..qd].to_vec();
        let mut k = v[qd..qd + kvd].to_vec();
        self.rotate(&mut q, pos);
        self.rotate(&mut k, pos);
        let mut vv = v[qd + kvd..].to_vec();
        if self.quantize {
            self.store(&mut k);
            self.store(&mut vv);
        }
        self.keys.push(k);
        self.values.push(vv);
        let group = s.n_heads / s.n_kv_heads;
        let mut out = vec![0.0; qd];
        for h in 0..s.n_heads {
            let kvh = h / group;
            let qh = &q[h * hd..(h + 1) * hd];
            let scores: Vec<f64> = self
                .keys
                .iter()
                .map(|k| {
                    qh.iter()
                        .zip(&k[kvh * hd..])
                        .map(|(a, b)| a * b)
                        .sum::<f64>()
                        / (hd as f64).sqrt()
                })
                .collect();
            let max = scores.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            for (t, p) in e.iter().enumerate() {
                for j in 0..hd {
                    out[h * hd + j] += p / sum * self.values[t][kvh * hd + j];
                }
            }
        }
        out
    }
}

#[test]
fn attention_matches_reference_over_many_positions() {
    let Some(ctx) = context(GpuFeatures::NONE) else {
        return;
    };
    // (heads, kv heads, head width, positions, half-split RoPE, bias, splits)
    let cases = [
        (4, 1, 16, 600, false, true, 1),
        (6, 3, 8, 300, true, false, 1),
        (8, 8, 32, 40, false, false, 1),
        (2, 1, 128, 270, true, true, 1),
        (4, 2, 16, 600, false, true, 5),
        (2, 1, 128, 300, true, false, 17),
        // More than four query heads per KV head: the final reduction
        // takes them four at a time.
        (8, 1, 16, 90, false, false, 1),
        (12, 2, 8, 300, true, true, 3),
        (5, 1, 32, 70, false, false, 1),
        // Every group size 1-8 is covered (each head's sums live in their
        // own registers): 7 here, split.
        (14, 2, 16, 130, true, false, 2),
    ];
    let mut rng = Rng::new(11);
    for (n_heads, n_kv_heads, head_dim, positions, rope_half, with_bias, splits) in cases {
        let shape = AttentionShape {
            n_heads,
            n_kv_heads,
            head_dim,
            context: positions,
            rope_half,
            kv: KvDType::F32,
            splits,
        };
        let total = shape.q_dim() + 2 * shape.kv_dim();
        let theta = 10_000.0;
        let rope = GpuVector::from_slice(&ctx, "rope", &shape.rope_table(theta)).unwrap();
        let cache = KvCache::new(&ctx, 0, &shape).unwrap();
        let step = StepBuffer::new(&ctx).unwrap();
        let qkv = GpuVector::zeros(&ctx, "qkv", total).unwrap();
        let bias_values = randn(&mut rng, total);
        let bias = GpuVector::from_slice(&ctx, "bias", &bias_values).unwrap();
        let out = GpuVector::zeros(&ctx, "out", shape.q_dim()).unwrap();
        let d = ops::attention(
            &ctx,
            &shape,
            &step,
            &qkv,
            with_bias.then_some(&bias),
            &rope,
            &cache,
            &out,
        )
        .unwrap();
        let mut reference = RefAttention {
            quantize: false,
            shape,
            theta,
            keys: Vec::new(),
            values: Vec::new(),
        };
        for pos in 0..positions {
            // Larger inputs sharpen the softmax, so stale or misplaced
            // cache entries would show.
            let x: Vec<f32> = randn(&mut rng, total).iter().map(|v| v * 3.0).collect();
            qkv.write(&ctx, &x).unwrap();
            step.write(&ctx, pos as u32, 0);
            ctx.submit(&[&d]).unwrap();
            let want = reference.step(&x, with_bias.then_some(&bias_values), pos);
            // Checking every position is slow on a software adapter; the
            // chunk boundaries and the end are what matter.
            if pos < 3 || pos % 97 == 0 || pos + 1 == positions || pos % 256 <= 1 {
                let what = format!("{n_heads}/{n_kv_heads}×{head_dim} at {pos}");
                close(&out.read(&ctx).unwrap(), &want, &what);
            }
        }
    }
}

/// f16, 8-bit and 4-bit caches against the reference attention over the
/// values as each cache stores them (tight), and against f32 values
/// (within the stated loss: 8-bit codes move outputs by about 1% of their
/// range, 4-bit by about 10%).
#[test]
fn quantized_kv_cache_matches_its_reference() {
    let Some(ctx) = context(GpuFeatures::NONE) else {
        return;
    };
    let mut rng = Rng::new(21);
    for kv in [KvDType::F16, KvDType::Q8, KvDType::Q4] {
        for (n_heads, n_kv_heads, head_dim, positions, splits) in
            [(4, 2, 64, 300, 1), (8, 4, 8, 40, 1), (4, 2, 64, 300, 3)]
        {
            let shape = AttentionShape {
                n_heads,
                n_kv_heads,
                head_dim,
                context: positions,
                rope_half: true,
                kv,
                splits,
            };
            let total = shape.q_dim() + 2 * shape.kv_dim();
            let rope = GpuVector::from_slice(&ctx, "rope", &shape.rope_table(10_000.0)).unwrap();
            let cache = KvCache::new(&ctx, 0, &shape).unwrap();
            let step = StepBuffer::new(&ctx).unwrap();
            let qkv = GpuVector::zeros(&ctx, "qkv", total).unwrap();
            let out = GpuVector::zeros(&ctx, "out", shape.q_dim()).unwrap();
            let d = ops::attention(&ctx, &shape, &step, &qkv, None, &rope, &cache, &out).unwrap();
            let new = |quantize| RefAttention {
                quantize,
                shape,
                theta: 10_000.0,
                keys: Vec::new(),
                values: Vec::new(),
            };
            let (mut stored, mut exact) = (new(true), new(false));
            let mut worst = 0f64;
            for pos in 0..positions {
                let x = randn(&mut rng, total);
                qkv.write(&ctx, &x).unwrap();
                step.write(&ctx, pos as u32, 0);
                ctx.submit(&[&d]).unwrap();
                let want = stored.step(&x, None, pos);
                let ideal = exact.step(&x, None, pos);
                if pos < 2 || pos % 61 == 0 || pos + 1 == positions {
                    let got = out.read(&ctx).unwrap();
                    let what = format!("{kv:?} {n_heads}/{n_kv_heads}×{head_dim} at {pos}");
                    close(&got, &want, &what);
                    let scale = ideal.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
                    for (g, i) in got.iter().zip(&ideal) {
                        worst = worst.max((f64::from(*g) - i).abs() / scale);
                    }
                }
            }
            let bound = match kv {
                KvDType::F16 => 2e-3,
                KvDType::Q8 => 2e-2,
                _ => 0.2,
            };
            eprintln!("{kv:?} {n_heads}/{n_kv_heads}×{head_dim}: worst error vs f32 {worst:.2e}");
            assert!(worst < bound, "{kv:?}: {worst} vs f32");
            let per_pos = shape.kv_bytes_per_position() as u64;
            assert!(cache.bytes() >= 2 * per_pos * positions as u64);
        }
    }
}

#[test]
fn swiglu_and_argmax() {
    let Some(ctx) = context(GpuFeatures::NONE) else {
        return;
    };
    let mut rng = Rng::new(5);
    for hidden in [1usize, 255, 1536] {
        let gu = randn(&mut rng, 2 * hidden);
        let want: Vec<f64> = (0..hidden)
            .map(|i| {
                let g = gu[i] as f64;
                g / (1.0 + (-g).exp()) * gu[hidden + i] as f64
            })
            .collect();
        let g = GpuVector::from_slice(&ctx, "gate_up", &gu).unwrap();
        let out = GpuVector::zeros(&ctx, "out", hidden).unwrap();
        ctx.submit(&[&ops::swiglu(&ctx, &g, &out).unwrap()])
            .unwrap();
        close(&out.read(&ctx).unwrap(), &want, "swiglu");
    }
    let next = GpuBuffer::new(
        &ctx,
        "next",
        4,
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    )
    .unwrap();
    let argmax_of = |values: &[f32]| {
        let v = GpuVector::from_slice(&ctx, "logits", values).unwrap();
        let d = ops::argmax(&ctx, &v, &next).unwrap();
        let b = next.run_and_read(&ctx, &[&d], 1, 0, 4).unwrap();
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    };
    let mut v = randn(&mut rng, 128_256);
    v[77_777] = 5.0;
    assert_eq!(argmax_of(&v), 77_777);
    v[100] = 5.0;
    assert_eq!(argmax_of(&v), 100, "ties go to the lowest index");
    v[5] = f32::NAN;
    assert_eq!(argmax_of(&v), 100, "NaN never wins");
    assert_eq!(argmax_of(&[f32::NEG_INFINITY, -1e30, f32::NEG_INFINITY]), 1);
    assert_eq!(argmax_of(&[f32::NAN; 3]), 0);
}

#[test]
fn bad_shapes_are_errors() {
    let Some(ctx) = context(GpuFeatures::NONE) else {
        return;
    };
    let shape = AttentionShape {
        n_heads: 6,
        n_kv_heads: 4,
        head_dim: 16,
        context: 8,
        rope_half: false,
        kv: KvDType::F32,
        splits: 1,
    };
    let e = KvCache::new(&ctx, 0, &shape).unwrap_err().to_string();
    assert!(e.contains("kv heads"), "{e}");
    let shape = AttentionShape {
        n_kv_heads: 1,
        n_heads: 16,
        ..shape
    };
    let e = KvCache::new(&ctx, 0, &shape).unwrap_err().to_string();
    assert!(e.contains("at most 8"), "{e}");
    let x = GpuVector::zeros(&ctx, "x", 10).unwrap();
    let w = GpuVector::zeros(&ctx, "w", 12).unwrap();
    let e = ops::rms_norm(&ctx, &x, &w, 1e-5, &x)
        .unwrap_err()
        .to_string();
    assert!(e.contains("needs 12"), "{e}");
}
