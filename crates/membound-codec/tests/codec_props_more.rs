//! What the codebook, polynomial and factor codecs promise: finite,
//! deterministic decoding; exact bit accounting; analytic reconstructions;
//! the classic Lloyd-Max figure; typed errors on bad input.

use membound_codec::{Codec, Encoded, Error, Matrix, PartDType, codec_from_spec, decode};
use proptest::prelude::*;

/// Every codec of this suite at the settings the research notes used, plus
/// edge settings.
const SPECS: &[&str] = &[
    "kmeans:bits=2,scope=row",
    "kmeans:bits=3,scope=tensor",
    "kmeans:bits=4,scope=row",
    "vq:d=2,k=16",
    "vq:d=4,k=256",
    "vq:d=8,k=300",
    "poly:degree=3",
    "polymse:degree=3",
    "positional:degree=2",
    "positional:degree=8",
    "positional:degree=32",
    "positional:degree=128",
    "svd:rank=32,method=auto",
    "svd:rank=4,method=random",
    "dct:k=50",
    "dct:k=5",
    "kron:rank=4",
    "kron:rank=16",
];

/// SplitMix64: a tiny seeded generator, so the tests need no RNG crate.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn gaussian(&mut self) -> f32 {
        let (u1, u2) = (1.0 - self.uniform(), self.uniform());
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }

    fn gaussians(&mut self, n: usize, std: f32) -> Vec<f32> {
        (0..n).map(|_| self.gaussian() * std).collect()
    }
}

fn codec(spec: &str) -> Box<dyn Codec> {
    codec_from_spec(spec).unwrap_or_else(|e| panic!("{spec}: {e}"))
}

fn sqnr_db(x: &[f32], y: &[f32]) -> f64 {
    let s: f64 = x.iter().map(|&v| f64::from(v).powi(2)).sum();
    let e: f64 = x
        .iter()
        .zip(y)
        .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
        .sum();
    10.0 * (s / e).log10()
}

/// ‖x − y‖ / ‖x‖.
fn rel_err(x: &[f32], y: &[f32]) -> f64 {
    let s: f64 = x.iter().map(|&v| f64::from(v).powi(2)).sum();
    let e: f64 = x
        .iter()
        .zip(y)
        .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
        .sum();
    (e / s).sqrt()
}

/// Encodes, checks the promises every encoding keeps, and returns the decode.
fn round_trip(spec: &str, rows: usize, cols: usize, data: &[f32]) -> (Encoded, Vec<f32>) {
    let c = codec(spec);
    let m = Matrix::new(rows, cols, data).unwrap();
    let e = c
        .encode(m)
        .unwrap_or_else(|err| panic!("{spec} {rows}×{cols}: {err}"));
    assert_eq!((e.rows, e.cols), (rows, cols));
    assert_eq!(e.spec, c.spec());
    for p in &e.parts {
        let n: usize = p.shape.iter().product();
        assert_eq!(p.data.len(), n * p.dtype.size(), "{spec}: part {}", p.name);
    }
    assert_eq!(
        c.bits_per_weight(rows, cols),
        e.bits_per_weight(),
        "{spec} {rows}×{cols}"
    );
    let n = rows * cols;
    if n > 0 {
        assert_eq!(
            c.bits_per_weight(rows, cols),
            8.0 * e.bytes() as f64 / n as f64
        );
    }
    let out = c.decode(&e).unwrap();
    assert_eq!(out.len(), n, "{spec}");
    assert!(
        out.iter().all(|v| v.is_finite()),
        "{spec}: non-finite decode"
    );
    assert_eq!(decode(&e).unwrap(), out, "{spec}: crate::decode differs");
    (e, out)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn decoding_is_finite_deterministic_and_accounted(
        rows in 0usize..7,
        cols in 0usize..45,
        seed in any::<u64>(),
        scale in prop::sample::select(vec![1e-3f32, 0.05, 1.0, 30.0]),
    ) {
        let data = Rng(seed).gaussians(rows * cols, scale);
        for spec in SPECS {
            let (e, out) = round_trip(spec, rows, cols, &data);
            let again = codec(spec).encode(Matrix::new(rows, cols, &data).unwrap()).unwrap();
            prop_assert_eq!(&e, &again, "{} is not deterministic", spec);
            prop_assert_eq!(codec(spec).decode(&again).unwrap(), out);
        }
    }

    #[test]
    fn kmeans_is_exact_when_levels_suffice(
        bits in 2u32..=4,
        row_scope in any::<bool>(),
        rows in 1usize..6,
        cols in 1usize..60,
        seed in any::<u64>(),
    ) {
        let mut rng = Rng(seed);
        // At most 2^bits distinct f16-representable values (multiples of 1/64).
        let values: Vec<f32> =
            (0..1usize << bits).map(|_| (rng.next_u64() % 4001) as f32 / 64.0 - 31.25).collect();
        let data: Vec<f32> =
            (0..rows * cols).map(|_| values[rng.next_u64() as usize % values.len()]).collect();
        let spec = format!("kmeans:bits={bits},scope={}", if row_scope { "row" } else { "tensor" });
        let (_, out) = round_trip(&spec, rows, cols, &data);
        prop_assert_eq!(out, data);
    }
}

#[test]
fn deterministic_on_a_larger_matrix() {
    // Big enough for the parallel and sampled paths (vq samples, svd and kron
    // go randomized).
    let (rows, cols) = (1040, 576);
    let data = Rng(3).gaussians(rows * cols, 0.02);
    let m = Matrix::new(rows, cols, &data).unwrap();
    for spec in [
        "vq:d=4,k=256",
        "svd:rank=32",
        "kron:rank=4",
        "kmeans:bits=3,scope=tensor",
        "dct:k=50",
    ] {
        let c = codec(spec);
        assert_eq!(c.encode(m).unwrap(), c.encode(m).unwrap(), "{spec}");
    }
}

#[test]
fn svd_full_rank_reconstructs_within_f16() {
    let (rows, cols) = (40, 30);
    let data = Rng(1).gaussians(rows * cols, 0.5);
    for spec in [
        "svd:rank=64,method=exact",
        "svd:rank=30,method=random",
        "svd:rank=256",
    ] {
        let (e, out) = round_trip(spec, rows, cols, &data);
        assert_eq!(e.part("us").unwrap().shape, vec![rows, 30]);
        let err = rel_err(&data, &out);
        assert!(err < 2e-3, "{spec}: relative error {err}");
    }
}

/// Mean squared reconstruction error of `spec` on `data`.
fn mse(spec: &str, rows: usize, cols: usize, data: &[f32]) -> f64 {
    let out = round_trip(spec, rows, cols, data).1;
    data.iter()
        .zip(&out)
        .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
        .sum::<f64>()
        / data.len() as f64
}

#[test]
fn randomized_svd_is_within_a_few_percent_of_exact() {
    // Above the size threshold (min dim > 512). An i.i.d. Gaussian matrix
    // (flat spectrum, the hardest case for a range finder) and one with a
    // decaying spectrum like a trained weight's: W = G·diag(s)·H with
    // s_i = (1 + i)^-0.7.
    let (rows, cols, inner) = (700, 600, 600);
    let mut rng = Rng(11);
    let flat = rng.gaussians(rows * cols, 0.02);
    let g = rng.gaussians(rows * inner, 1.0);
    let h = rng.gaussians(inner * cols, 1.0);
    let mut decaying = vec![0f32; rows * cols];
    for i in 0..rows {
        for k in 0..inner {
            let a = g[i * inner + k] * (1.0 + k as f32).powf(-0.7) * 0.02;
            for j in 0..cols {
                decaying[i * cols + j] += a * h[k * cols + j];
            }
        }
    }
    for (name, data) in [("flat", &flat), ("decaying", &decaying)] {
        for rank in [32, 64] {
            let exact = mse(&format!("svd:rank={rank},method=exact"), rows, cols, data);
            let random = mse(&format!("svd:rank={rank},method=random"), rows, cols, data);
            let ratio = random / exact;
            assert!(
                (0.999..1.03).contains(&ratio),
                "{name} rank {rank}: randomized/exact error {ratio:.4}"
            );
        }
    }
    // auto agrees with one of them (randomized here: 42·8 ≤ 600).
    let auto = mse("svd:rank=32", rows, cols, &flat);
    assert_eq!(auto, mse("svd:rank=32,method=random", rows, cols, &flat));
}

#[test]
fn dct_with_every_coefficient_reconstructs_within_f16() {
    for (rows, cols) in [(3, 576), (5, 17), (2, 1)] {
        let data = Rng(2).gaussians(rows * cols, 0.05);
        let (_, out) = round_trip(&format!("dct:k={cols}"), rows, cols, &data);
        let err = rel_err(&data, &out);
        assert!(err < 1e-3, "{rows}×{cols}: relative error {err}");
    }
}

#[test]
fn kron_of_an_exact_product_reconstructs_at_rank_one() {
    // 12 = 3·4 and 20 = 4·5 are the shapes the balanced rule picks.
    let (m1, n1, m2, n2) = (3, 4, 4, 5);
    let mut rng = Rng(5);
    let a = rng.gaussians(m1 * n1, 1.0);
    let b = rng.gaussians(m2 * n2, 1.0);
    let (rows, cols) = (m1 * m2, n1 * n2);
    let mut data = vec![0f32; rows * cols];
    for (i, row) in data.chunks_mut(cols).enumerate() {
        for (j, w) in row.iter_mut().enumerate() {
            *w = a[(i / m2) * n1 + j / n2] * b[(i % m2) * n2 + j % n2];
        }
    }
    let (e, out) = round_trip("kron:rank=1", rows, cols, &data);
    assert_eq!(e.part("a").unwrap().shape, vec![1, m1, n1]);
    assert_eq!(e.part("b").unwrap().shape, vec![1, m2, n2]);
    let err = rel_err(&data, &out);
    assert!(err < 2e-3, "relative error {err}");
}

#[test]
fn positional_reconstructs_a_polynomial_row() {
    let cols = 576;
    // Row 0: a quintic in the column index; row 1: a degree-100 Chebyshev
    // polynomial, which a monomial fit on 576 points could not recover.
    let mut data = Vec::with_capacity(2 * cols);
    for c in 0..cols {
        let t = c as f64 / cols as f64;
        data.push((0.3 - 1.2 * t + 2.0 * t.powi(2) - 0.5 * t.powi(3) + 0.25 * t.powi(5)) as f32);
    }
    for c in 0..cols {
        let x = (2 * c + 1) as f64 / cols as f64 - 1.0;
        data.push((100.0 * x.clamp(-1.0, 1.0).acos()).cos() as f32 * 0.1);
    }
    for (degree, rows) in [(8, 1), (128, 2)] {
        let (_, out) = round_trip(
            &format!("positional:degree={degree}"),
            rows,
            cols,
            &data[..rows * cols],
        );
        let err = rel_err(&data[..rows * cols], &out);
        assert!(err < 3e-3, "degree {degree}: relative error {err}");
    }
    // More degrees than columns: clamped, exact interpolation.
    let (e, out) = round_trip("positional:degree=32", 2, 5, &data[..10]);
    assert_eq!(e.part("coeffs").unwrap().shape, vec![2, 5]);
    assert!(rel_err(&data[..10], &out) < 1e-3);
}

/// The f32 levels of a `poly`/`polymse` row, by Horner's rule.
fn poly_levels(e: &Encoded, row: usize) -> Vec<f32> {
    let p = e.part("coeffs").unwrap();
    assert_eq!(p.dtype, PartDType::F32);
    let nc = p.shape[1];
    let c: Vec<f32> = p.data[row * nc * 4..(row + 1) * nc * 4]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (0..16)
        .map(|j| c.iter().rev().fold(0f32, |a, &c| a.mul_add(j as f32, c)))
        .collect()
}

#[test]
fn poly_levels_are_monotone_for_gaussian_rows() {
    let (rows, cols) = (8, 4096);
    let data = Rng(9).gaussians(rows * cols, 0.02);
    for spec in ["poly:degree=3", "polymse:degree=3"] {
        let (e, _) = round_trip(spec, rows, cols, &data);
        for r in 0..rows {
            let l = poly_levels(&e, r);
            assert!(l.windows(2).all(|w| w[0] < w[1]), "{spec} row {r}: {l:?}");
        }
    }
}

#[test]
fn lloyd_max_gaussian_sqnr_matches_max_1960() {
    // Max (1960): the 16-level MSE-optimal quantizer of a unit Gaussian has
    // distortion 0.009497, i.e. 20.22 dB.
    let n = 1 << 20;
    let data = Rng(42).gaussians(n, 1.0);
    let (_, out) = round_trip("kmeans:bits=4,scope=tensor", 1, n, &data);
    let db = sqnr_db(&data, &out);
    assert!((db - 20.22).abs() < 0.5, "4-bit Lloyd-Max SQNR {db:.3} dB");
    // And the 2- and 3-bit figures (Max: 9.30 dB and 14.62 dB).
    for (bits, want) in [(2, 9.30), (3, 14.62)] {
        let (_, out) = round_trip(&format!("kmeans:bits={bits},scope=tensor"), 1, n, &data);
        let db = sqnr_db(&data, &out);
        assert!(
            (db - want).abs() < 0.5,
            "{bits}-bit Lloyd-Max SQNR {db:.3} dB"
        );
    }
}

#[test]
fn random_rows_have_no_positional_or_spectral_structure() {
    // Facts the research notes report: on i.i.d. rows a projection onto a
    // p-dimensional subspace keeps p/cols of the energy, so positional
    // degree D gives SQNR ≈ −10·log10(1 − (D+1)/cols).
    let (rows, cols) = (64, 576);
    let data = Rng(13).gaussians(rows * cols, 0.02);
    for degree in [8usize, 128] {
        let (_, out) = round_trip(&format!("positional:degree={degree}"), rows, cols, &data);
        let want = -10.0 * (1.0 - (degree + 1) as f64 / cols as f64).log10();
        let got = sqnr_db(&data, &out);
        assert!(
            (got - want).abs() < 0.15,
            "degree {degree}: {got:.3} dB, expected ≈ {want:.3}"
        );
    }
}

#[test]
fn edge_shapes_encode_and_decode() {
    for spec in SPECS {
        for (rows, cols) in [(0, 0), (0, 7), (5, 0), (4, 1), (1, 1), (1, 9)] {
            let data = Rng(rows as u64 * 31 + cols as u64).gaussians(rows * cols, 0.1);
            round_trip(spec, rows, cols, &data);
        }
    }
}

#[test]
fn non_finite_weights_are_input_errors() {
    for spec in SPECS {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut data = vec![0.5f32; 12];
            data[7] = bad;
            let err = codec(spec)
                .encode(Matrix::new(3, 4, &data).unwrap())
                .unwrap_err();
            assert!(matches!(err, Error::Input { .. }), "{spec}: {err}");
        }
    }
}

#[test]
fn damaged_encodings_are_encoded_errors() {
    let data = Rng(4).gaussians(6 * 24, 0.1);
    for spec in SPECS {
        let c = codec(spec);
        let e = c.encode(Matrix::new(6, 24, &data).unwrap()).unwrap();
        for i in 0..e.parts.len() {
            let mut missing = e.clone();
            missing.parts.remove(i);
            let mut reshaped = e.clone();
            reshaped.parts[i].shape[0] += 1;
            let mut retyped = e.clone();
            retyped.parts[i].dtype = if e.parts[i].dtype == PartDType::F32 {
                PartDType::F16
            } else {
                PartDType::F32
            };
            let mut truncated = e.clone();
            truncated.parts[i].data.pop();
            for (what, bad) in [
                ("missing", missing),
                ("reshaped", reshaped),
                ("retyped", retyped),
                ("truncated", truncated),
            ] {
                let err = c.decode(&bad).unwrap_err();
                assert!(
                    matches!(err, Error::Encoded { .. }),
                    "{spec} {what} part {i}: {err}"
                );
            }
        }
        let mut other = e.clone();
        other.rows = 7;
        assert!(
            matches!(c.decode(&other).unwrap_err(), Error::Encoded { .. }),
            "{spec}: wrong rows"
        );
        let mut foreign = e.clone();
        foreign.spec = "dct:k=3".into();
        if !spec.starts_with("dct:k=3") {
            assert!(
                matches!(c.decode(&foreign).unwrap_err(), Error::Encoded { .. }),
                "{spec}: foreign spec"
            );
        }
    }
}

#[test]
fn out_of_range_indices_are_encoded_errors() {
    let data = Rng(6).gaussians(3 * 40, 0.1);
    let c = codec("dct:k=5");
    let mut e = c.encode(Matrix::new(3, 40, &data).unwrap()).unwrap();
    e.parts[0].data[0..2].copy_from_slice(&200u16.to_le_bytes());
    assert!(matches!(c.decode(&e).unwrap_err(), Error::Encoded { .. }));
    let c = codec("vq:d=4,k=300");
    let mut e = c.encode(Matrix::new(3, 40, &data).unwrap()).unwrap();
    let idx = e.parts.iter_mut().find(|p| p.name == "indices").unwrap();
    idx.data[0..2].copy_from_slice(&300u16.to_le_bytes());
    assert!(matches!(c.decode(&e).unwrap_err(), Error::Encoded { .. }));
}

#[test]
fn specs_round_trip_and_reject_bad_settings() {
    for spec in SPECS {
        let c = codec(spec);
        assert_eq!(c.spec(), *spec, "canonical form");
        assert_eq!(codec(&c.spec()).spec(), c.spec());
    }
    // Defaults and spellings canonicalise.
    for (given, canonical) in [
        ("kmeans", "kmeans:bits=4,scope=row"),
        ("KMEANS: scope=Tensor, bits=3", "kmeans:bits=3,scope=tensor"),
        ("vq", "vq:d=4,k=256"),
        ("poly", "poly:degree=3"),
        ("polymse", "polymse:degree=3"),
        ("positional", "positional:degree=8"),
        ("svd:rank=128", "svd:rank=128,method=auto"),
        ("dct", "dct:k=100"),
        ("kron", "kron:rank=8"),
    ] {
        assert_eq!(codec(given).spec(), canonical, "{given}");
    }
    for bad in [
        "kmeans:bit=4",
        "kmeans:bits=9",
        "kmeans:bits=0",
        "kmeans:scope=column",
        "vq:d=3",
        "vq:k=1",
        "vq:k=65537",
        "vq:d=4,k=256,seed=1",
        "poly:degree=0",
        "poly:degree=8",
        "polymse:degree=-1",
        "positional:degree=5000",
        "positional:order=3",
        "svd:rank=0",
        "svd:method=lanczos",
        "svd:rank=64,bits=4",
        "dct:k=0",
        "dct:top=5",
        "kron:rank=0",
        "kron:rank=four",
    ] {
        assert!(
            matches!(codec_from_spec(bad), Err(Error::Spec { .. })),
            "{bad} should be a spec error"
        );
    }
}

#[test]
fn bits_per_weight_formulas() {
    let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
    let (r, c) = (1536usize, 576usize);
    let n = (r * c) as f64;
    assert!(close(
        codec("kmeans:bits=4,scope=row").bits_per_weight(r, c),
        4.0 + (r * 16 * 16) as f64 / n
    ));
    assert!(close(
        codec("kmeans:bits=3,scope=tensor").bits_per_weight(r, c),
        3.0 + (8 * 16) as f64 / n
    ));
    assert!(close(
        codec("vq:d=4,k=256").bits_per_weight(r, c),
        2.0 + (256 * 4 * 16) as f64 / n
    ));
    assert!(close(
        codec("poly:degree=3").bits_per_weight(r, c),
        4.0 + 4.0 * 32.0 / c as f64
    ));
    assert!(close(
        codec("positional:degree=128").bits_per_weight(r, c),
        129.0 * 16.0 / c as f64
    ));
    assert!(close(
        codec("svd:rank=64").bits_per_weight(r, c),
        16.0 * 64.0 * (r + c) as f64 / n
    ));
    assert!(close(
        codec("dct:k=100").bits_per_weight(r, c),
        3200.0 / c as f64
    ));
    // kron: A 32×24, B 48×24.
    assert!(close(
        codec("kron:rank=8").bits_per_weight(r, c),
        16.0 * 8.0 * (32.0 * 24.0 + 48.0 * 24.0) / n
    ));
}

/// Encode timings on a SmolLM2-sized 1536×576 matrix; run with
/// `cargo test --release -p membound-codec --test codec_props_more -- --ignored --nocapture`.
#[test]
#[ignore = "timing report"]
fn timings_1536x576() {
    // MEMBOUND_TIMING_ROWS overrides the row count (49152: the embedding).
    let rows = std::env::var("MEMBOUND_TIMING_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1536);
    let cols = 576;
    let data = Rng(77).gaussians(rows * cols, 0.02);
    let m = Matrix::new(rows, cols, &data).unwrap();
    let specs = [
        "kmeans:bits=2,scope=row",
        "kmeans:bits=3,scope=row",
        "kmeans:bits=4,scope=row",
        "kmeans:bits=4,scope=tensor",
        "vq:d=2,k=256",
        "vq:d=4,k=256",
        "vq:d=8,k=256",
        "vq:d=8,k=4096",
        "poly:degree=3",
        "polymse:degree=3",
        "positional:degree=2",
        "positional:degree=8",
        "positional:degree=32",
        "positional:degree=128",
        "svd:rank=32",
        "svd:rank=64",
        "svd:rank=128",
        "svd:rank=256",
        "svd:rank=256,method=exact",
        "dct:k=50",
        "dct:k=100",
        "dct:k=200",
        "kron:rank=4",
        "kron:rank=8",
        "kron:rank=16",
    ];
    for spec in specs {
        let c = codec(spec);
        let t = std::time::Instant::now();
        let e = c.encode(m).unwrap();
        let enc = t.elapsed();
        let t = std::time::Instant::now();
        let out = c.decode(&e).unwrap();
        let dec = t.elapsed();
        println!(
            "{spec:28} encode {:8.1} ms  decode {:7.1} ms  {:7.3} bits/w  SQNR {:6.2} dB",
            enc.as_secs_f64() * 1e3,
            dec.as_secs_f64() * 1e3,
            e.bits_per_weight(),
            sqnr_db(&data, &out)
        );
    }
}

#[test]
fn zero_constant_and_huge_weights() {
    // Zeros at a size that takes the randomized SVD and sampled VQ paths.
    let (rows, cols) = (640, 576);
    let zeros = vec![0f32; rows * cols];
    for spec in SPECS {
        let (_, out) = round_trip(spec, rows, cols, &zeros);
        assert!(
            out.iter().all(|&v| v == 0.0),
            "{spec}: zeros must decode to zeros"
        );
    }
    // Constant rows: every codec but the low-rank ones reproduces them
    // exactly (0.25 is exact in f16; the DCT and positional bases are not
    // exact in floating point, hence the tolerance).
    let constant: Vec<f32> = (0..6 * 30).map(|i| 0.25 * (1 + i / 30) as f32).collect();
    for spec in SPECS {
        let (_, out) = round_trip(spec, 6, 30, &constant);
        let err = rel_err(&constant, &out);
        assert!(err < 1e-3, "{spec}: constant rows, relative error {err}");
    }
    // Weights beyond f16's range: a typed error or a faithful encoding
    // (f32 side information), never a panic or an infinity.
    let huge: Vec<f32> = (0..4 * 16)
        .map(|i| if i % 5 == 0 { 1e6 } else { -0.5 })
        .collect();
    for spec in SPECS {
        match codec(spec).encode(Matrix::new(4, 16, &huge).unwrap()) {
            Err(e) => assert!(matches!(e, Error::Input { .. }), "{spec}: {e}"),
            Ok(e) => assert!(
                codec(spec)
                    .decode(&e)
                    .unwrap()
                    .iter()
                    .all(|v| v.is_finite()),
                "{spec}"
            ),
        }
    }
}

/// The research notes' tables (sections 3.1 and 4), re-measured on synthetic
/// data; run with `-- --ignored --nocapture`.
#[test]
#[ignore = "report"]
fn research_notes_tables() {
    let (rows, cols) = (64, 4096);
    let mut rng = Rng(2026);
    let n = rows * cols;
    let laplace = |r: &mut Rng| {
        let u = r.uniform() - 0.5;
        (-u.signum() * (1.0 - 2.0 * u.abs()).max(1e-300).ln()) as f32
    };
    let student_t3 = |r: &mut Rng| {
        let z = r.gaussian();
        let chi: f32 = (0..3).map(|_| r.gaussian().powi(2)).sum();
        z / (chi / 3.0).sqrt()
    };
    let dists: Vec<(&str, Vec<f32>)> = vec![
        ("gaussian", rng.gaussians(n, 1.0)),
        ("laplacian", (0..n).map(|_| laplace(&mut rng)).collect()),
        ("student-t3", (0..n).map(|_| student_t3(&mut rng)).collect()),
        (
            "bimodal",
            (0..n)
                .map(|_| rng.gaussian() * 0.3 + if rng.uniform() < 0.5 { -1.0 } else { 1.0 })
                .collect(),
        ),
    ];
    println!("section 3.1, {rows}×{cols}: 4-bit per-row min/max affine vs level codecs (SQNR dB)");
    for (name, data) in &dists {
        // Per-row min/max affine, the notes' baseline formula (§2.3).
        let mut affine = Vec::with_capacity(n);
        for row in data.chunks(cols) {
            let (lo, hi) = row
                .iter()
                .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
            let scale = (hi - lo) / 15.0;
            affine.extend(
                row.iter()
                    .map(|&w| ((w - lo) / scale).round().clamp(0.0, 15.0) * scale + lo),
            );
        }
        let mut line = format!("{name:11} affine {:6.2}", sqnr_db(data, &affine));
        for spec in [
            "poly:degree=3",
            "polymse:degree=3",
            "kmeans:bits=4,scope=row",
        ] {
            let (_, out) = round_trip(spec, rows, cols, data);
            line += &format!("  {spec} {:6.2}", sqnr_db(data, &out));
        }
        println!("{line}");
    }
    println!("section 4, Gaussian: bits/weight, compression vs f16, SQNR dB");
    for (rows, cols) in [(576, 576), (1536, 576), (576, 1536)] {
        let data = Rng(rows as u64).gaussians(rows * cols, 0.02);
        for spec in [
            "positional:degree=2",
            "positional:degree=8",
            "positional:degree=32",
            "positional:degree=128",
            "svd:rank=32",
            "svd:rank=64",
            "svd:rank=128",
            "svd:rank=256",
            "dct:k=50",
            "dct:k=100",
            "dct:k=200",
            "kron:rank=4",
            "kron:rank=8",
            "kron:rank=16",
        ] {
            let (e, out) = round_trip(spec, rows, cols, &data);
            let bpw = e.bits_per_weight();
            println!(
                "{rows:5}×{cols:<5} {spec:24} {bpw:7.3} bits/w  {:6.1}x  {:5.2} dB",
                16.0 / bpw,
                sqnr_db(&data, &out)
            );
        }
    }
}
