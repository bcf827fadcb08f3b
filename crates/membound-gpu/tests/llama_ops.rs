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
    AttentionShape, GpuBuffer, GpuContext, GpuFeatures, GpuVector, KvCache, KvDType, StepBuffer,
    wgpu,
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

    /// This token's q and k (biased, rotated to `pos`) and v, exact.
    fn project(
        &self,
        qkv: &[f32],
        bias: Option<&[f32]>,
        pos: usize,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let s = self.shape;
        let (qd, kvd) = (s.q_dim(), s.kv_dim());
        let v: Vec<f64> = qkv
            .iter()
            .enumerate()
            .map(|(i, x)| *x as f64 + bias.map_or(0.0, |b| b[i] as f64))
            .collect();
        let mut q = v[..qd].to_vec();
        let mut k = v[qd..qd + kvd].to_vec();
        self.rotate(&mut q, pos);
        self.rotate(&mut k, pos);
        (q, k, v[qd + kvd..].to_vec())
    }

    /// One decode step over exact values: this position's k and v are
    /// appended, then every query head attends.
    fn step(&mut self, qkv: &[f32], bias: Option<&[f32]>, pos: usize) -> Vec<f64> {
        let (q, k, v) = self.project(qkv, bias, pos);
        self.attend(&q, k, v)
    }

    /// Appends a position's stored k and v and attends over all positions
    /// so far with the rotated queries `q`.
    fn attend(&mut self, q: &[f64], k: Vec<f64>, v: Vec<f64>) -> Vec<f64> {
        let s = self.shape;
        let (qd, hd) = (s.q_dim(), s.head_dim);
        self.keys.push(k);
        self.values.push(v);
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

/// What the GPU's cache holds for one position's keys (or values): each
/// element's value and, in a quantized cache, its code and its group's
/// (scale, minimum), decoded from the buffers by the published layout
/// (position-major, codes LSB first in u32 words, an f16 pair per group).
struct Stored {
    value: Vec<f64>,
    code: Vec<u32>,
    scale_min: Vec<(f64, f64)>,
}

fn read_stored(
    ctx: &GpuContext,
    cache: &KvCache,
    shape: &AttentionShape,
    pos: usize,
    values: bool,
) -> Stored {
    use half::f16;
    let (codes, params) = if values {
        (&cache.v, &cache.v_params)
    } else {
        (&cache.k, &cache.k_params)
    };
    let kvd = shape.kv_dim();
    let bits = shape.kv.bits() as usize;
    let bytes = kvd * bits / 8;
    let raw = codes
        .read_bytes(ctx, (pos * bytes) as u64, bytes as u64)
        .unwrap();
    let word = |e: usize| {
        let at = 4 * (e * bits / 32);
        u32::from_le_bytes(raw[at..at + 4].try_into().unwrap())
    };
    let half = |h: u32| f64::from(f16::from_bits(h as u16).to_f32());
    let mut out = Stored {
        value: Vec::with_capacity(kvd),
        code: Vec::new(),
        scale_min: Vec::new(),
    };
    if !shape.kv.is_quantized() {
        for e in 0..kvd {
            out.value.push(match bits {
                32 => f64::from(f32::from_bits(word(e))),
                _ => half(word(e) >> (16 * (e % 2))),
            });
        }
        return out;
    }
    let group = shape.kv_group();
    let groups = kvd / group;
    let p = params
        .read_bytes(ctx, (pos * groups * 4) as u64, (groups * 4) as u64)
        .unwrap();
    for e in 0..kvd {
        let code = (word(e) >> (bits * (e % (32 / bits)))) & ((1 << bits) - 1);
        let at = 4 * (e / group);
        let pair = u32::from_le_bytes(p[at..at + 4].try_into().unwrap());
        let (scale, min) = (half(pair & 0xffff), half(pair >> 16));
        out.code.push(code);
        out.scale_min.push((scale, min));
        out.value.push(f64::from(code) * scale + min);
    }
    out
}

/// Checks that `stored` holds `exact` (the reference's f64 values) in
/// `shape`'s cache format:
/// - f32 and f16: the value, or the nearest f16, give or take the f32
///   rotation's rounding;
/// - codes: each group's scale (max − min) / (2^bits − 1) and minimum the
///   nearest f16 to the reference's, within one f16 step (the GPU takes
///   them from k rotated in f32); each code round((x − min) / scale) with
///   the stored scale and minimum, or the other neighbour within 1 % of a
///   step of the half-way point (f32 arithmetic may land on either side).
///
/// Returns how many codes were such near-ties.
fn check_stored(stored: &Stored, exact: &[f64], shape: &AttentionShape, what: &str) -> usize {
    use half::f16;
    let r16 = |v: f64| f64::from(f16::from_f64(v).to_f32());
    let step16 = |v: f64| {
        (v.abs().max(f64::from(f16::MIN_POSITIVE)))
            .log2()
            .floor()
            .exp2()
            / 1024.0
    };
    if !shape.kv.is_quantized() {
        for (i, (&g, &x)) in stored.value.iter().zip(exact).enumerate() {
            // k is rotated in f32 from inputs of order 1: absolute errors
            // up to a few 1e-8 whatever |x| (a value that cancels to
            // nearly 0 keeps them).
            let f32_err = 1e-6 * x.abs() + 2e-7;
            let tol = if shape.kv.bits() == 32 {
                f32_err
            } else {
                0.5 * step16(x) + f32_err
            };
            assert!((g - x).abs() <= tol, "{what} stored[{i}]: {g}, want {x}");
        }
        return 0;
    }
    let top = f64::from((1u32 << shape.kv.bits()) - 1);
    let mut ties = 0;
    for (gi, g) in exact.chunks(shape.kv_group()).enumerate() {
        let lo = g.iter().cloned().fold(f64::MAX, f64::min);
        let hi = g.iter().cloned().fold(f64::MIN, f64::max);
        let (want_scale, want_min) = (r16((hi - lo) / top), r16(lo));
        for (j, &x) in g.iter().enumerate() {
            let i = gi * shape.kv_group() + j;
            let (scale, min) = stored.scale_min[i];
            assert!(
                (scale - want_scale).abs() <= step16(want_scale)
                    && (min - want_min).abs() <= step16(want_min),
                "{what} group {gi}: (scale, min) = ({scale}, {min}), want ({want_scale}, {want_min})"
            );
            let t = ((x - min) / scale).clamp(0.0, top);
            let code = f64::from(stored.code[i]);
            if code != t.round() {
                let near_tie = (t - t.floor() - 0.5).abs() < 0.01 && (code - t).abs() < 1.0;
                assert!(
                    near_tie,
                    "{what} code[{i}]: {code}, want {} ({t})",
                    t.round()
                );
                ties += 1;
            }
        }
    }
    ties
}

/// f16, 8-bit and 4-bit caches: what the GPU stored is each format's
/// encoding of the reference's k and v (`check_stored`), the attention
/// over what it stored matches the reference attention over the same
/// values (tight), and against exact values the loss is as stated (8-bit
/// codes move outputs by about 1% of their range, 4-bit by about 10%).
#[test]
fn quantized_kv_cache_matches_its_reference() {
    let Some(ctx) = context(GpuFeatures::NONE) else {
        return;
    };
    let mut rng = Rng::new(21);
    for kv in [KvDType::F32, KvDType::F16, KvDType::Q8, KvDType::Q4] {
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
            let new = || RefAttention {
                shape,
                theta: 10_000.0,
                keys: Vec::new(),
                values: Vec::new(),
            };
            // `stored` attends over what the GPU stored, `exact` over the
            // exact values.
            let (mut stored, mut exact) = (new(), new());
            let (mut worst, mut ties) = (0f64, 0);
            for pos in 0..positions {
                let x = randn(&mut rng, total);
                qkv.write(&ctx, &x).unwrap();
                step.write(&ctx, pos as u32, 0);
                ctx.submit(&[&d]).unwrap();
                let what = format!("{kv:?} {n_heads}/{n_kv_heads}×{head_dim} at {pos}");
                let (q, k, v) = stored.project(&x, None, pos);
                let (gk, gv) = (
                    read_stored(&ctx, &cache, &shape, pos, false),
                    read_stored(&ctx, &cache, &shape, pos, true),
                );
                ties += check_stored(&gk, &k, &shape, &format!("{what} k"));
                ties += check_stored(&gv, &v, &shape, &format!("{what} v"));
                let want = stored.attend(&q, gk.value, gv.value);
                let ideal = exact.step(&x, None, pos);
                if pos < 2 || pos % 61 == 0 || pos + 1 == positions {
                    let got = out.read(&ctx).unwrap();
                    close(&got, &want, &what);
                    let scale = ideal.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
                    for (g, i) in got.iter().zip(&ideal) {
                        worst = worst.max((f64::from(*g) - i).abs() / scale);
                    }
                }
            }
            let bound = match kv {
                KvDType::F32 => 1e-4,
                KvDType::F16 => 2e-3,
                KvDType::Q8 => 2e-2,
                _ => 0.2,
            };
            eprintln!(
                "{kv:?} {n_heads}/{n_kv_heads}×{head_dim}: worst error vs f32 {worst:.2e}, \
                 {ties} near-tie codes"
            );
            // Near-ties are rare: a few in a thousand codes at most.
            assert!(
                ties * 200 <= positions * 2 * shape.kv_dim(),
                "{ties} near-ties"
            );
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
