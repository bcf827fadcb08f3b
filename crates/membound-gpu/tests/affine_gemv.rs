//! Affine GEMV against the scalar reference — the codec's own `decode`
//! (f32), then a dense GEMV in f64 — on every feature set the adapter offers
//! and on the forced fallbacks (workgroup-memory reduction), for bits 2, 3,
//! 4, 8, groups 32, 64, 128, `row` and `tensor`, and f16, bf16 and f32
//! scales.
//!
//! Tolerances. Write the stored weight as the exact real `q·s + b`. The
//! kernel computes, per unit of at most 32 codes within a group,
//! `s·Σ q·x + b·Σ x` in f32 (each product `q·x` is formed exactly as the
//! rounded f32 product: the codes are scaled by powers of two and x by their
//! inverses), and adds these up along a tree of depth at most
//! `D = 32 + 2 + 4 + ⌈K/1024⌉ + 256`: 32 for the sums within a unit, 2 for
//! the scale and bias products and their sum, 4 to spare,
//! ⌈K/(16·64)⌉ for the units a thread visits (the default launch takes at
//! least 16 codes a unit and 64 threads), and at most 256 for the workgroup
//! reduction (a tree of depth log₂ WG, or subgroupAdd in an order the driver
//! picks). So
//! `|y − y*| ≤ γ(D)·Σ_k (|q_k·s| + |b|)·|x_k|`, with γ(n) = n·u/(1 − n·u),
//! u = 2⁻²⁴, y* the exact result for the stored weights. The sums are of
//! `|q·s|` and `|b|` separately because the folded form can cancel between
//! the scale and the bias terms. The reference uses the decoded weights
//! `ŵ = fl(fl(q·s) + b)` (MLX's decode: multiply, then add), which differ
//! from `q·s + b` by at most `u·(|q·s| + |ŵ|)`, so the reference is within
//! `u·Σ (|q·s| + |ŵ|)·|x|` of y* (its f64 sum adds ~K·2⁻⁵³, far below).
//!
//! The exact tests need no tolerance: hand-made encodings with random codes,
//! integer scales and biases and inputs in {−1, 0, 1} make every partial sum
//! an integer below 2²⁴, exact in f32 in any order, so a dropped, repeated
//! or misplaced code or group shows as an inexact result.

mod common;

use common::{FEATURE_SETS, Rng, context, context_with, integer_encoding};
use half::f16;
use membound_codec::{AffineCodec, Codec, Encoded, Group, Matrix, ScaleDType, pack};
use membound_gpu::{
    AffineGemv, GpuContext, GpuFeatures, GpuOptions, GpuVector, Launch, SHADERS,
    dense_gemv_reference,
};

const BITS: [u32; 4] = [2, 3, 4, 8];
const GROUPS: [Group; 3] = [Group::Size(32), Group::Size(64), Group::Size(128)];

/// Edge shapes, then random ones: odd sizes, sizes off the 4-row, word,
/// chunk and group granules, 1×N, N×1, long K.
fn shapes(seed: u64, random: usize) -> Vec<(usize, usize)> {
    let mut shapes = vec![
        (1, 1),
        (1, 1000),
        (1000, 1),
        (3, 20000),
        (5, 7),
        (13, 33),
        (17, 97),
        (63, 129),
        (64, 256),
        (9, 385),
    ];
    let mut rng = Rng::new(seed);
    for _ in 0..random {
        shapes.push((rng.range(1, 200), rng.range(1, 2500)));
    }
    shapes
}

fn encode(codec: &AffineCodec, rows: usize, cols: usize, w: &[f32]) -> Encoded {
    codec.encode(Matrix::new(rows, cols, w).unwrap()).unwrap()
}

fn run(ctx: &GpuContext, codec: &AffineCodec, e: &Encoded, x: &[f32]) -> Vec<f32> {
    let gemv = AffineGemv::new(ctx, "w", codec, e).unwrap();
    let xv = GpuVector::from_slice(ctx, "x", x).unwrap();
    let yv = GpuVector::zeros(ctx, "y", e.rows).unwrap();
    gemv.run(ctx, &xv, &yv).unwrap();
    yv.read(ctx).unwrap()
}

fn gamma(n: usize) -> f64 {
    let nu = n as f64 * f64::from(f32::EPSILON) / 2.0;
    nu / (1.0 - nu)
}

/// Per row: the kernel's bound and the reference's distance to the exact
/// result, as described in the module documentation.
fn tolerances(codec: &AffineCodec, e: &Encoded, decoded: &[f32], x: &[f32]) -> Vec<f64> {
    let p = codec.parts(e).unwrap();
    let l = p.layout;
    let u = f64::from(f32::EPSILON) / 2.0;
    let g = gamma(32 + 2 + 4 + l.cols.div_ceil(1024) + 256);
    let mut codes = vec![0u8; l.cols];
    (0..l.rows)
        .map(|r| {
            let words = &p.words[r * l.words_per_row..(r + 1) * l.words_per_row];
            pack::unpack_words(words, codec.bits, &mut codes).unwrap();
            let (mut folded, mut reference) = (0.0, 0.0);
            for (c, &q) in codes.iter().enumerate() {
                let i = l.group_index(r, c);
                let qs = (f64::from(q) * f64::from(p.scales[i])).abs();
                let ax = f64::from(x[c].abs());
                folded += (qs + f64::from(p.biases[i]).abs()) * ax;
                reference += (qs + f64::from(decoded[r * l.cols + c]).abs()) * ax;
            }
            g * folded + u * reference + 1e-30
        })
        .collect()
}

fn check_within_tolerance(
    ctx: &GpuContext,
    set: &str,
    codec: &AffineCodec,
    rows: usize,
    cols: usize,
    rng: &mut Rng,
) {
    let w: Vec<f32> = (0..rows * cols).map(|_| rng.unit()).collect();
    let x: Vec<f32> = (0..cols).map(|_| rng.unit()).collect();
    let e = encode(codec, rows, cols, &w);
    let decoded = codec.decode(&e).unwrap();
    let want = dense_gemv_reference(&decoded, rows, cols, &x);
    let tol = tolerances(codec, &e, &decoded, &x);
    let got = run(ctx, codec, &e, &x);
    for r in 0..rows {
        let g = f64::from(got[r]);
        assert!(
            (g - want[r]).abs() <= tol[r],
            "{set} {} {rows}×{cols} row {r}: got {g}, want {} ± {}",
            codec.spec(),
            want[r],
            tol[r]
        );
    }
}

#[test]
fn every_width_and_group_within_the_stated_tolerance() {
    for &(set, disable) in FEATURE_SETS {
        let Some(ctx) = context(disable) else { return };
        let mut rng = Rng::new(11);
        for bits in BITS {
            for group in GROUPS {
                let codec = AffineCodec::new(bits, group, ScaleDType::F16).unwrap();
                for (rows, cols) in shapes(u64::from(bits) * 1000 + group_seed(group), 4) {
                    check_within_tolerance(&ctx, set, &codec, rows, cols, &mut rng);
                }
            }
        }
    }
}

fn group_seed(group: Group) -> u64 {
    match group {
        Group::Size(g) => g as u64,
        Group::Row => 1,
        Group::Tensor => 2,
    }
}

/// One group per row or for the whole tensor, and bf16 or f32 scales.
#[test]
fn other_groupings_and_scale_types_within_the_stated_tolerance() {
    for &(set, disable) in FEATURE_SETS {
        let Some(ctx) = context(disable) else { return };
        let mut rng = Rng::new(17);
        for bits in BITS {
            for (group, scale) in [
                (Group::Row, ScaleDType::F16),
                (Group::Tensor, ScaleDType::F16),
                (Group::Size(64), ScaleDType::BF16),
                (Group::Size(32), ScaleDType::F32),
                (Group::Row, ScaleDType::F32),
            ] {
                let codec = AffineCodec::new(bits, group, scale).unwrap();
                for (rows, cols) in [(1, 1), (7, 300), (33, 1000), (5, 2049)] {
                    check_within_tolerance(&ctx, set, &codec, rows, cols, &mut rng);
                }
            }
        }
    }
}

/// `y` of a hand-made integer encoding, exactly.
fn check_exact(
    ctx: &GpuContext,
    what: &str,
    gemv: &AffineGemv,
    codec: &AffineCodec,
    e: &Encoded,
    x: &[f32],
) {
    let decoded = codec.decode(e).unwrap();
    let want = dense_gemv_reference(&decoded, e.rows, e.cols, x);
    let xv = GpuVector::from_slice(ctx, "x", x).unwrap();
    let yv = GpuVector::zeros(ctx, "y", e.rows).unwrap();
    gemv.run(ctx, &xv, &yv).unwrap();
    let got = yv.read(ctx).unwrap();
    for r in 0..e.rows {
        assert_eq!(
            f64::from(got[r]),
            want[r],
            "{what} {} {}×{} row {r}",
            codec.spec(),
            e.rows,
            e.cols
        );
    }
}

#[test]
fn integer_encodings_exactly() {
    for &(set, disable) in FEATURE_SETS {
        let Some(ctx) = context(disable) else { return };
        let mut rng = Rng::new(23);
        for bits in BITS {
            for group in [
                Group::Size(32),
                Group::Size(64),
                Group::Size(128),
                Group::Row,
                Group::Tensor,
            ] {
                for scale in [ScaleDType::F16, ScaleDType::BF16, ScaleDType::F32] {
                    let codec = AffineCodec::new(bits, group, scale).unwrap();
                    for (rows, cols) in shapes(u64::from(bits) + group_seed(group), 2) {
                        let e = integer_encoding(&codec, rows, cols, &mut rng);
                        let x: Vec<f32> = (0..cols).map(|_| rng.int(1)).collect();
                        let gemv = AffineGemv::new(&ctx, "w", &codec, &e).unwrap();
                        check_exact(&ctx, set, &gemv, &codec, &e, &x);
                    }
                }
            }
        }
    }
}

/// Every launch shape (4 or 8 rows, any workgroup size, every unit size)
/// gives the same exact result.
#[test]
fn every_launch_shape_exactly() {
    for &(set, disable) in FEATURE_SETS {
        let Some(ctx) = context(disable) else { return };
        let mut rng = Rng::new(29);
        for bits in BITS {
            let codec = AffineCodec::new(bits, Group::Size(64), ScaleDType::F16).unwrap();
            // Columns off every unit size.
            let (rows, cols) = (11, 5001);
            let e = integer_encoding(&codec, rows, cols, &mut rng);
            let x: Vec<f32> = (0..cols).map(|_| rng.int(1)).collect();
            let mut gemv = AffineGemv::new(&ctx, "w", &codec, &e).unwrap();
            let units: &[u32] = match bits {
                2 => &[1, 2],
                3 => &[3],
                _ => &[1, 2, 4],
            };
            for &unit_words in units {
                for (rows_per_workgroup, workgroup_size) in
                    [(4, 4), (8, 8), (4, 64), (8, 128), (8, 256)]
                {
                    let launch = Launch {
                        rows_per_workgroup,
                        workgroup_size,
                        unit_words,
                    };
                    gemv.set_launch(&ctx, launch).unwrap();
                    assert_eq!(gemv.launch(), launch);
                    check_exact(&ctx, &format!("{set} {launch}"), &gemv, &codec, &e, &x);
                }
            }
        }
    }
}

/// Values past `cols` in the input's allocation are ignored, even NaN.
#[test]
fn input_padding_is_masked() {
    for &(set, disable) in FEATURE_SETS {
        let Some(ctx) = context(disable) else { return };
        let mut rng = Rng::new(31);
        for bits in BITS {
            let codec = AffineCodec::new(bits, Group::Size(32), ScaleDType::F16).unwrap();
            for cols in [1, 2, 3, 5, 7, 9, 15, 31, 33, 63, 100, 127, 129] {
                let e = integer_encoding(&codec, 6, cols, &mut rng);
                let mut x: Vec<f32> = (0..cols + 200).map(|_| rng.int(1)).collect();
                x[cols..].fill(f32::NAN);
                let gemv = AffineGemv::new(&ctx, "w", &codec, &e).unwrap();
                check_exact(&ctx, set, &gemv, &codec, &e, &x);
            }
        }
    }
}

/// More than 65535 workgroups: the grid spills into its y dimension.
#[test]
fn tall_matrix_uses_a_two_dimensional_grid() {
    let Some(ctx) = context(GpuFeatures::NONE) else {
        return;
    };
    let mut rng = Rng::new(37);
    let codec = AffineCodec::new(4, Group::Size(32), ScaleDType::F16).unwrap();
    let (rows, cols) = (300_001, 3);
    let e = integer_encoding(&codec, rows, cols, &mut rng);
    let gemv = AffineGemv::new(&ctx, "tall", &codec, &e).unwrap();
    check_exact(&ctx, "tall", &gemv, &codec, &e, &[1.0, -1.0, 1.0]);
}

/// With a small storage-binding limit the matrix is split into row blocks,
/// each with its own buffers and dispatch, writing its part of y.
#[test]
fn matrix_over_the_binding_limit_is_split_into_blocks() {
    let options = GpuOptions {
        max_storage_buffer_binding_size: Some(64 << 10),
        ..GpuOptions::from_env().unwrap()
    };
    let Some(ctx) = context_with(&options) else {
        return;
    };
    let mut rng = Rng::new(41);
    for (bits, group) in [
        (4, Group::Size(64)),
        (3, Group::Size(32)),
        (8, Group::Tensor),
    ] {
        let codec = AffineCodec::new(bits, group, ScaleDType::F16).unwrap();
        let (rows, cols) = (701, 1000);
        let e = integer_encoding(&codec, rows, cols, &mut rng);
        let x: Vec<f32> = (0..cols).map(|_| rng.int(1)).collect();
        let gemv = AffineGemv::new(&ctx, "split", &codec, &e).unwrap();
        assert!(
            gemv.blocks() > 1,
            "{}: expected several blocks",
            codec.spec()
        );
        check_exact(&ctx, "split", &gemv, &codec, &e, &x);
    }
}

/// Two quantized GEMVs recorded into one pass, the second reading the
/// first's output; then the same dispatches again with a new input.
#[test]
fn chained_kernels_in_one_pass_and_reused_buffers() {
    for &(set, disable) in FEATURE_SETS {
        let Some(ctx) = context(disable) else { return };
        let mut rng = Rng::new(43);
        let (n0, n1, n2) = (100, 64, 50);
        let c1 = AffineCodec::new(4, Group::Size(32), ScaleDType::F16).unwrap();
        let c2 = AffineCodec::new(2, Group::Size(64), ScaleDType::F16).unwrap();
        let e1 = integer_encoding(&c1, n1, n0, &mut rng);
        let e2 = integer_encoding(&c2, n2, n1, &mut rng);
        let g1 = AffineGemv::new(&ctx, "w1", &c1, &e1).unwrap();
        let g2 = AffineGemv::new(&ctx, "w2", &c2, &e2).unwrap();
        let (w1, w2) = (c1.decode(&e1).unwrap(), c2.decode(&e2).unwrap());
        let x = GpuVector::zeros(&ctx, "x", n0).unwrap();
        let h = GpuVector::zeros(&ctx, "h", n1).unwrap();
        let y = GpuVector::zeros(&ctx, "y", n2).unwrap();
        let d1 = g1.bind(&ctx, &x, &h).unwrap();
        let d2 = g2.bind(&ctx, &h, &y).unwrap();
        for round in 0..2 {
            let xs: Vec<f32> = (0..n0).map(|_| rng.int(1)).collect();
            x.write(&ctx, &xs).unwrap();
            ctx.submit(&[&d1, &d2]).unwrap();
            let h_ref: Vec<f32> = dense_gemv_reference(&w1, n1, n0, &xs)
                .into_iter()
                .map(|v| v as f32)
                .collect();
            let want = dense_gemv_reference(&w2, n2, n1, &h_ref);
            let got: Vec<f64> = y.read(&ctx).unwrap().into_iter().map(f64::from).collect();
            assert_eq!(got, want, "{set} round {round}");
        }
    }
}

#[test]
fn bytes_read_counts_codes_scales_and_input() {
    let Some(ctx) = context(GpuFeatures::NONE) else {
        return;
    };
    let mut rng = Rng::new(47);
    // 4-bit, 4096 columns: 512 words a row, 64 groups of one u32.
    let codec = AffineCodec::default();
    let e = integer_encoding(&codec, 3, 4096, &mut rng);
    let g = AffineGemv::new(&ctx, "w", &codec, &e).unwrap();
    assert_eq!(g.code_bytes(), 3 * 2048);
    assert_eq!(g.scale_bytes(), 3 * 64 * 4);
    assert_eq!(g.bytes_read(), 3 * 2048 + 3 * 256 + 4096 * 4);
    // 3-bit, 100 columns: 10 words, padded to one 48-byte chunk; f32 pairs.
    let codec = AffineCodec::new(3, Group::Size(32), ScaleDType::F32).unwrap();
    let e = integer_encoding(&codec, 2, 100, &mut rng);
    let g = AffineGemv::new(&ctx, "w", &codec, &e).unwrap();
    assert_eq!(g.code_bytes(), 2 * 48);
    assert_eq!(g.scale_bytes(), 2 * 4 * 8);
    assert_eq!(g.groups(), 4);
}

/// Mismatched or malformed encodings and vectors are errors, never panics.
#[test]
fn mismatches_are_clear_errors() {
    let Some(ctx) = context(GpuFeatures::NONE) else {
        return;
    };
    let mut rng = Rng::new(53);
    let codec = AffineCodec::default();
    let e = integer_encoding(&codec, 5, 100, &mut rng);
    let err = |r: membound_gpu::Result<AffineGemv>| r.unwrap_err().to_string();

    // Another codec's encoding.
    let other = AffineCodec::new(3, Group::Size(64), ScaleDType::F16).unwrap();
    let m = err(AffineGemv::new(&ctx, "w", &other, &e));
    assert!(m.contains("`w`") && m.contains("spec"), "{m}");
    // A part of the wrong shape, a missing part, non-finite scales.
    let mut bad = e.clone();
    bad.parts[0].shape = vec![5, 12];
    let m = err(AffineGemv::new(&ctx, "w", &codec, &bad));
    assert!(m.contains("weight"), "{m}");
    let mut bad = e.clone();
    bad.parts.retain(|p| p.name != "biases");
    let m = err(AffineGemv::new(&ctx, "w", &codec, &bad));
    assert!(m.contains("biases"), "{m}");
    let mut bad = e.clone();
    bad.parts[1].data[0..2].copy_from_slice(&f16::INFINITY.to_le_bytes());
    let m = err(AffineGemv::new(&ctx, "w", &codec, &bad));
    assert!(m.contains("scales"), "{m}");
    // Widths the kernel does not read; empty matrices.
    for bits in [5, 6] {
        let c = AffineCodec::new(bits, Group::Size(64), ScaleDType::F16).unwrap();
        let e = encode(&c, 2, 64, &vec![0.5; 128]);
        let m = err(AffineGemv::new(&ctx, "w", &c, &e));
        assert!(m.contains(&format!("{bits}-bit")), "{m}");
    }
    for (rows, cols) in [(0, 64), (3, 0)] {
        let e = encode(&codec, rows, cols, &[]);
        let m = err(AffineGemv::new(&ctx, "w", &codec, &e));
        assert!(m.contains("`w`"), "{m}");
    }

    // Vectors.
    let g = AffineGemv::new(&ctx, "w", &codec, &e).unwrap();
    let x = GpuVector::zeros(&ctx, "x", 100).unwrap();
    let short_x = GpuVector::zeros(&ctx, "short", 99).unwrap();
    let y = GpuVector::zeros(&ctx, "y", 5).unwrap();
    let short_y = GpuVector::zeros(&ctx, "short y", 4).unwrap();
    assert!(
        g.bind(&ctx, &short_x, &y)
            .unwrap_err()
            .to_string()
            .contains("short")
    );
    assert!(
        g.bind(&ctx, &x, &short_y)
            .unwrap_err()
            .to_string()
            .contains("short y")
    );
    assert!(
        g.bind(&ctx, &x, &x)
            .unwrap_err()
            .to_string()
            .contains("same buffer")
    );
    assert!(g.bind(&ctx, &x, &y).is_ok());
    let mut g = g;
    let launch = |rows_per_workgroup, workgroup_size, unit_words| Launch {
        rows_per_workgroup,
        workgroup_size,
        unit_words,
    };
    for bad in [
        launch(4, 0, 2),
        launch(4, 2, 2),
        launch(8, 4, 2),
        launch(4, 3, 2),
        launch(4, 100_000, 2),
        launch(5, 64, 2),
        launch(16, 64, 2),
        launch(0, 64, 2),
        launch(8, 64, 3),
        launch(8, 64, 8),
        launch(8, 64, 0),
    ] {
        assert!(g.set_launch(&ctx, bad).is_err(), "{bad}");
    }
    assert!(g.set_launch(&ctx, launch(8, 64, 4)).is_ok());
}

/// GPU-free: the shader validates and translates to SPIR-V, MSL and HLSL
/// for every specialisation the wrapper builds.
#[test]
fn every_specialisation_translates() {
    let shader = SHADERS
        .iter()
        .find(|s| s.name == "gemv_affine.wgsl")
        .unwrap();
    let module = naga::front::wgsl::parse_str(shader.source).unwrap();
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .validate(&module)
    .unwrap();
    for bits in BITS {
        for group in [32.0, 64.0, 128.0, f64::from(1u32 << 31)] {
            for scale_kind in [0.0, 1.0, 2.0] {
                for (rows, wg, unit) in [(4.0, 64.0, 1.0), (8.0, 256.0, 2.0), (8.0, 128.0, 4.0)] {
                    if bits == 2 && unit == 4.0 {
                        continue;
                    }
                    let constants = [
                        ("WG", wg),
                        ("ROWS", rows),
                        ("UNIT_WORDS", unit),
                        ("BITS", f64::from(bits)),
                        ("GROUP", group),
                        ("SCALE_KIND", scale_kind),
                    ];
                    for ep in &module.entry_points {
                        let what = format!("{}: {constants:?}", ep.name);
                        translate(&what, &module, &info, ep, &constants);
                    }
                }
            }
        }
    }
}

fn translate(
    what: &str,
    module: &naga::Module,
    info: &naga::valid::ModuleInfo,
    ep: &naga::EntryPoint,
    constants: &[(&str, f64)],
) {
    use naga::back::{hlsl, msl, spv};
    let constants: naga::back::PipelineConstants = constants
        .iter()
        .map(|(k, v)| ((*k).to_owned(), *v))
        .collect();
    let (module, info) = naga::back::pipeline_constants::process_overrides(
        module,
        info,
        Some((ep.stage, &ep.name)),
        &constants,
    )
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    let spv_options = spv::Options {
        lang_version: (1, 3),
        ..spv::Options::default()
    };
    let pipeline = spv::PipelineOptions {
        shader_stage: ep.stage,
        entry_point: ep.name.clone(),
    };
    spv::write_vec(&module, &info, &spv_options, Some(&pipeline))
        .unwrap_or_else(|e| panic!("{what}: SPIR-V: {e}"));
    let msl_options = msl::Options {
        lang_version: (2, 4),
        ..msl::Options::default()
    };
    let msl_pipeline = msl::PipelineOptions {
        entry_point: Some((ep.stage, ep.name.clone())),
        ..msl::PipelineOptions::default()
    };
    msl::write_string(&module, &info, &msl_options, &msl_pipeline)
        .unwrap_or_else(|e| panic!("{what}: MSL: {e}"));
    let hlsl_options = hlsl::Options {
        shader_model: hlsl::ShaderModel::V6_2,
        ..hlsl::Options::default()
    };
    let mut out = String::new();
    hlsl::Writer::new(
        &mut out,
        &hlsl_options,
        &hlsl::PipelineOptions {
            entry_point: Some((ep.stage, ep.name.clone())),
        },
    )
    .write(&module, &info, None)
    .unwrap_or_else(|e| panic!("{what}: HLSL: {e}"));
}
