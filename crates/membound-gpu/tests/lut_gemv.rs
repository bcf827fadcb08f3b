//! LUT GEMV against the scalar reference — the codec's own `decode` (f32),
//! then a dense GEMV in f64 — on every feature set the adapter offers and
//! on the forced fallbacks, for the k-means (2, 3, 4 and 8 bits, per row and
//! per tensor), NF4 (several blocks, f16/bf16/f32 absmax) and polynomial
//! level codecs.
//!
//! Tolerances. The kernel's levels are the decoder's values exactly
//! (k-means: the f16 codebook widened; polynomial levels evaluated on the
//! host with the decoder's arithmetic; NF4's table), so for k-means and the
//! polynomial codecs only f32 summation differs from the reference, along a
//! tree of depth at most `D = 32 + 2 + 4 + ⌈K/1024⌉ + 256` (sums within a
//! run of at most 32 codes, the block-scale product, the runs of a chunk,
//! the ⌈K/(16·64)⌉ chunks a thread visits, a workgroup reduction of at most
//! 256 partials): `|y − y_ref| ≤ γ(D)·Σ_k |ŵ_k·x_k|`, γ(n) = n·u/(1 − n·u),
//! u = 2⁻²⁴. For NF4 with blocks of whole 32-code runs the kernel multiplies
//! a run's `Σ L·x` by the block's absmax instead of rounding each `L·a`
//! like the decoder, which adds at most `2u·Σ|ŵ·x|` (to first order), so
//! the bound used is γ(D + 2)·Σ|ŵ·x| throughout. The reference's f64 sum
//! adds ~K·2⁻⁵³, far below.
//!
//! The exact tests need no tolerance: hand-made k-means encodings with
//! integer levels and inputs in {−1, 0, 1} make every partial sum an
//! integer below 2²⁴, exact in f32 in any order, so a misplaced code shows.

mod common;

use common::{FEATURE_SETS, Rng, context, context_with};
use half::f16;
use membound_codec::{Encoded, Matrix, Part, PartDType, codec_from_spec, pack};
use membound_gpu::{
    GpuContext, GpuFeatures, GpuOptions, GpuVector, Launch, LutGemv, LutSource, SHADERS,
    dense_gemv_reference,
};

/// Edge shapes, then random ones: odd sizes, sizes off the 4-row, word,
/// chunk and block granules, 1×N, N×1, long K.
fn shapes(seed: u64, random: usize, max_cols: usize) -> Vec<(usize, usize)> {
    let mut shapes = vec![
        (1, 1),
        (1, 1000),
        (300, 1),
        (3, 20000),
        (5, 7),
        (13, 33),
        (17, 97),
        (63, 129),
        (9, 385),
    ];
    let mut rng = Rng::new(seed);
    for _ in 0..random {
        shapes.push((rng.range(1, 150), rng.range(1, max_cols)));
    }
    shapes
}

/// Shapes that all take the smallest workgroup (one pipeline): odd sizes,
/// 1×1, N×1, 1×N, sizes off every granule.
const SHORT: [(usize, usize); 6] = [(1, 1), (1, 700), (40, 1), (5, 7), (9, 385), (21, 600)];

fn gamma(n: usize) -> f64 {
    let nu = n as f64 * f64::from(f32::EPSILON) / 2.0;
    nu / (1.0 - nu)
}

fn run(ctx: &GpuContext, e: &Encoded, x: &[f32]) -> Vec<f32> {
    let gemv = LutGemv::new(ctx, "w", e).unwrap();
    let xv = GpuVector::from_slice(ctx, "x", x).unwrap();
    let yv = GpuVector::zeros(ctx, "y", e.rows).unwrap();
    gemv.run(ctx, &xv, &yv).unwrap();
    yv.read(ctx).unwrap()
}

/// Encodes random weights with `spec` and checks the kernel against the
/// decoded reference within γ(D + 2)·Σ|ŵ·x|.
fn check_spec(ctx: &GpuContext, set: &str, spec: &str, rows: usize, cols: usize, rng: &mut Rng) {
    let codec = codec_from_spec(spec).unwrap();
    // Gaussian-ish weights: the sum of two uniforms.
    let w: Vec<f32> = (0..rows * cols).map(|_| rng.unit() + rng.unit()).collect();
    let x: Vec<f32> = (0..cols).map(|_| rng.unit()).collect();
    let e = codec.encode(Matrix::new(rows, cols, &w).unwrap()).unwrap();
    let decoded = codec.decode(&e).unwrap();
    let want = dense_gemv_reference(&decoded, rows, cols, &x);
    let aw: Vec<f32> = decoded.iter().map(|v| v.abs()).collect();
    let ax: Vec<f32> = x.iter().map(|v| v.abs()).collect();
    let mag = dense_gemv_reference(&aw, rows, cols, &ax);
    let g = gamma(32 + 2 + 4 + cols.div_ceil(1024) + 256 + 2);
    let got = run(ctx, &e, &x);
    for r in 0..rows {
        let tol = g * mag[r] + 1e-30;
        let v = f64::from(got[r]);
        assert!(
            (v - want[r]).abs() <= tol,
            "{set} {spec} {rows}×{cols} row {r}: got {v}, want {} ± {tol}",
            want[r]
        );
    }
}

#[test]
fn kmeans_every_width_and_scope_within_the_stated_tolerance() {
    for &(set, disable) in FEATURE_SETS {
        let Some(ctx) = context(disable) else { return };
        let mut rng = Rng::new(11);
        for bits in [2u32, 3, 4, 8] {
            for scope in ["row", "tensor"] {
                let spec = format!("kmeans:bits={bits},scope={scope}");
                // 256 levels make the encoder's search slow, and every
                // pipeline takes a second to compile on llvmpipe: the full
                // list for per-row codebooks up to 4 bits, short ones else.
                let list = if bits == 8 || scope == "tensor" {
                    SHORT.to_vec()
                } else {
                    shapes(u64::from(bits), 3, 2500)
                };
                for (rows, cols) in list {
                    check_spec(&ctx, set, &spec, rows, cols, &mut rng);
                }
            }
        }
    }
}

#[test]
fn nf4_every_block_and_scale_type_within_the_stated_tolerance() {
    for &(set, disable) in FEATURE_SETS {
        let Some(ctx) = context(disable) else { return };
        let mut rng = Rng::new(13);
        // The default on every shape; then blocks of whole 32-code runs
        // (one scale a run) and others (one scale a code), and other scale
        // types, on short lists (each pipeline compiles for a second on
        // llvmpipe).
        for (rows, cols) in shapes(64, 3, 2500) {
            check_spec(&ctx, set, "nf4:block=64,scale=f16", rows, cols, &mut rng);
        }
        for spec in [
            "nf4:block=32,scale=f16",
            "nf4:block=128,scale=f16",
            "nf4:block=4096,scale=f16",
            "nf4:block=8,scale=f16",
            "nf4:block=12,scale=f16",
            "nf4:block=100,scale=f16",
            "nf4:block=1,scale=f16",
            "nf4:block=64,scale=bf16",
            "nf4:block=64,scale=f32",
            "nf4:block=12,scale=bf16",
            "nf4:block=12,scale=f32",
        ] {
            for (rows, cols) in SHORT {
                check_spec(&ctx, set, spec, rows, cols, &mut rng);
            }
        }
    }
}

#[test]
fn polynomial_levels_within_the_stated_tolerance() {
    for &(set, disable) in FEATURE_SETS {
        let Some(ctx) = context(disable) else { return };
        let mut rng = Rng::new(17);
        for spec in [
            "polymse:degree=3",
            "polymse:degree=1",
            "poly:degree=3",
            "poly:degree=7",
        ] {
            for (rows, cols) in shapes(spec.len() as u64, 3, 2500) {
                check_spec(&ctx, set, spec, rows, cols, &mut rng);
            }
        }
    }
}

/// A k-means encoding made by hand: random codes and integer levels in
/// [−8, 8], per row or for the tensor.
fn integer_kmeans(bits: u32, per_row: bool, rows: usize, cols: usize, rng: &mut Rng) -> Encoded {
    let wpr = pack::words_for(cols, bits);
    let mut codes = Vec::with_capacity(rows * wpr * 4);
    let mut words = vec![0u32; wpr];
    for _ in 0..rows {
        let c: Vec<u8> = (0..cols)
            .map(|_| (rng.next_u64() % (1 << bits)) as u8)
            .collect();
        pack::pack_words(&c, bits, &mut words).unwrap();
        codes.extend(words.iter().flat_map(|w| w.to_le_bytes()));
    }
    let books = if per_row { rows } else { 1 };
    let levels: Vec<u8> = (0..books << bits)
        .flat_map(|_| f16::from_f32(rng.int(8)).to_le_bytes())
        .collect();
    let scope = if per_row { "row" } else { "tensor" };
    Encoded {
        spec: format!("kmeans:bits={bits},scope={scope}"),
        rows,
        cols,
        parts: vec![
            Part {
                name: "codebook".into(),
                dtype: PartDType::F16,
                shape: vec![books, 1 << bits],
                data: levels,
            },
            Part {
                name: "codes".into(),
                dtype: PartDType::U32,
                shape: vec![rows, wpr],
                data: codes,
            },
        ],
    }
}

fn check_exact(ctx: &GpuContext, what: &str, gemv: &LutGemv, e: &Encoded, x: &[f32]) {
    let decoded = membound_codec::decode(e).unwrap();
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
            e.spec,
            e.rows,
            e.cols
        );
    }
}

#[test]
fn integer_codebooks_exactly() {
    for &(set, disable) in FEATURE_SETS {
        let Some(ctx) = context(disable) else { return };
        let mut rng = Rng::new(19);
        for bits in [2u32, 3, 4, 8] {
            for per_row in [true, false] {
                for (rows, cols) in shapes(u64::from(bits) + 100, 2, 2000) {
                    let e = integer_kmeans(bits, per_row, rows, cols, &mut rng);
                    let x: Vec<f32> = (0..cols).map(|_| rng.int(1)).collect();
                    let gemv = LutGemv::new(&ctx, "w", &e).unwrap();
                    assert_eq!(gemv.source(), LutSource::KMeans { bits, per_row });
                    check_exact(&ctx, set, &gemv, &e, &x);
                }
            }
        }
    }
}

/// Every workgroup size gives the same exact result.
#[test]
fn every_launch_shape_exactly() {
    for &(set, disable) in FEATURE_SETS {
        let Some(ctx) = context(disable) else { return };
        let mut rng = Rng::new(23);
        for bits in [2u32, 3, 4, 8] {
            let e = integer_kmeans(bits, true, 11, 5000, &mut rng);
            let x: Vec<f32> = (0..5000).map(|_| rng.int(1)).collect();
            let mut gemv = LutGemv::new(&ctx, "w", &e).unwrap();
            let unit_words = gemv.launch().unit_words;
            for workgroup_size in [4, 8, 32, 64, 128, 256] {
                let launch = Launch {
                    rows_per_workgroup: 4,
                    workgroup_size,
                    unit_words,
                };
                gemv.set_launch(&ctx, launch).unwrap();
                assert_eq!(gemv.launch(), launch);
                check_exact(&ctx, &format!("{set} {launch}"), &gemv, &e, &x);
            }
        }
    }
}

/// Values past `cols` in the input's allocation are ignored, even NaN.
#[test]
fn input_padding_is_masked() {
    for &(set, disable) in FEATURE_SETS {
        let Some(ctx) = context(disable) else { return };
        let mut rng = Rng::new(29);
        for bits in [2u32, 3, 4, 8] {
            for cols in [1, 2, 3, 5, 7, 9, 15, 31, 33, 63, 100, 127, 129] {
                let e = integer_kmeans(bits, true, 6, cols, &mut rng);
                let mut x: Vec<f32> = (0..cols + 200).map(|_| rng.int(1)).collect();
                x[cols..].fill(f32::NAN);
                let gemv = LutGemv::new(&ctx, "w", &e).unwrap();
                check_exact(&ctx, set, &gemv, &e, &x);
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
    let mut rng = Rng::new(31);
    let e = integer_kmeans(4, true, 300_001, 3, &mut rng);
    let gemv = LutGemv::new(&ctx, "tall", &e).unwrap();
    check_exact(&ctx, "tall", &gemv, &e, &[1.0, -1.0, 1.0]);
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
    let mut rng = Rng::new(37);
    for (bits, per_row) in [(4, true), (3, false), (8, true)] {
        let e = integer_kmeans(bits, per_row, 701, 1000, &mut rng);
        let x: Vec<f32> = (0..1000).map(|_| rng.int(1)).collect();
        let gemv = LutGemv::new(&ctx, "split", &e).unwrap();
        assert!(gemv.blocks() > 1, "{}: expected several blocks", e.spec);
        check_exact(&ctx, "split", &gemv, &e, &x);
    }
    // NF4 (scales split too) within tolerance.
    check_spec(&ctx, "split", "nf4:block=64,scale=f16", 701, 1000, &mut rng);
    check_spec(&ctx, "split", "polymse:degree=3", 701, 1000, &mut rng);
}

#[test]
fn bytes_read_counts_codes_levels_scales_and_input() {
    let Some(ctx) = context(GpuFeatures::NONE) else {
        return;
    };
    let mut rng = Rng::new(41);
    // 4-bit codes, 4096 columns: 2048 bytes a row; 16 f32 levels a row.
    let e = integer_kmeans(4, true, 3, 4096, &mut rng);
    let g = LutGemv::new(&ctx, "w", &e).unwrap();
    assert_eq!(g.code_bytes(), 3 * 2048);
    assert_eq!(g.weight_bytes(), 3 * 2048 + 3 * 64);
    assert_eq!(g.bytes_read(), 3 * 2048 + 3 * 64 + 4096 * 4);
    // NF4, block 64, f16: 64 scales a row, two a word; 16 shared levels.
    let w: Vec<f32> = (0..3 * 4096).map(|_| rng.unit()).collect();
    let codec = codec_from_spec("nf4").unwrap();
    let e = codec.encode(Matrix::new(3, 4096, &w).unwrap()).unwrap();
    let g = LutGemv::new(&ctx, "w", &e).unwrap();
    assert_eq!(
        g.source(),
        LutSource::Nf4 {
            block: 64,
            scale: membound_codec::ScaleDType::F16
        }
    );
    assert_eq!(g.weight_bytes(), 3 * 2048 + 64 + 3 * 32 * 4);
}

/// Encodings the kernel does not read, malformed ones and mismatched
/// vectors are errors, never panics.
#[test]
fn mismatches_are_clear_errors() {
    let Some(ctx) = context(GpuFeatures::NONE) else {
        return;
    };
    let mut rng = Rng::new(43);
    let err = |e: &Encoded| LutGemv::new(&ctx, "w", e).unwrap_err().to_string();
    let w: Vec<f32> = (0..5 * 100).map(|_| rng.unit()).collect();
    let m = Matrix::new(5, 100, &w).unwrap();
    let encode = |spec: &str| codec_from_spec(spec).unwrap().encode(m).unwrap();

    // Not a codebook encoding, or widths the kernel does not read.
    for spec in [
        "affine:bits=4,group=64",
        "positional:degree=4",
        "absmax",
        "svd:rank=2",
    ] {
        let e = encode(spec);
        let msg = err(&e);
        assert!(
            msg.contains("`w`") && msg.contains("LUT kernel"),
            "{spec}: {msg}"
        );
    }
    for bits in [1, 5, 6, 7] {
        let msg = err(&encode(&format!("kmeans:bits={bits}")));
        assert!(msg.contains(&format!("{bits}-bit")), "{msg}");
    }
    let mut bad = encode("kmeans:bits=4");
    bad.spec = "nonsense:x=1".into();
    assert!(err(&bad).contains("nonsense"));
    // Malformed parts.
    let good = encode("kmeans:bits=4,scope=row");
    let mut bad = good.clone();
    bad.parts.retain(|p| p.name != "codes");
    assert!(err(&bad).contains("codes"));
    let mut bad = good.clone();
    bad.parts[0].shape = vec![1, 16];
    assert!(err(&bad).contains("codebook"));
    let mut bad = good.clone();
    bad.parts[0].data[0..2].copy_from_slice(&f16::NAN.to_le_bytes());
    assert!(err(&bad).contains("codebook"));
    let mut bad = encode("nf4");
    let scales = bad.parts.iter_mut().find(|p| p.name == "scales").unwrap();
    scales.data.pop();
    assert!(err(&bad).contains("scales"));
    let mut bad = encode("polymse");
    let coeffs = bad.parts.iter_mut().find(|p| p.name == "coeffs").unwrap();
    coeffs.data[0..4].copy_from_slice(&f32::INFINITY.to_le_bytes());
    assert!(err(&bad).contains("coeffs"));
    // Empty matrices.
    let empty = codec_from_spec("nf4")
        .unwrap()
        .encode(Matrix::new(0, 64, &[]).unwrap())
        .unwrap();
    assert!(err(&empty).contains("`w`"));
    let empty = codec_from_spec("nf4")
        .unwrap()
        .encode(Matrix::new(4, 0, &[]).unwrap())
        .unwrap();
    assert!(err(&empty).contains("`w`"));

    // Vectors and workgroup sizes.
    let g = LutGemv::new(&ctx, "w", &good).unwrap();
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
    // 4 rows and 16-byte chunks (4 words) only.
    assert_eq!(g.launch().unit_words, 4);
    for bad in [
        launch(4, 0, 4),
        launch(4, 2, 4),
        launch(4, 3, 4),
        launch(4, 100_000, 4),
        launch(8, 64, 4),
        launch(5, 64, 4),
        launch(4, 64, 2),
    ] {
        assert!(g.set_launch(&ctx, bad).is_err(), "{bad}");
    }
    assert!(g.set_launch(&ctx, launch(4, 64, 4)).is_ok());
}

/// GPU-free: the shader validates and translates to SPIR-V, MSL and HLSL
/// for every specialisation the wrapper builds.
#[test]
fn every_specialisation_translates() {
    let shader = SHADERS.iter().find(|s| s.name == "gemv_lut.wgsl").unwrap();
    let module = naga::front::wgsl::parse_str(shader.source).unwrap();
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .validate(&module)
    .unwrap();
    for bits in [2u32, 3, 4, 8] {
        for per_row in [0.0, 1.0] {
            for (block, scale_kind) in [(0.0, 0.0), (64.0, 0.0), (12.0, 1.0), (32.0, 2.0)] {
                for wg in [64.0, 256.0] {
                    let lut_len = f64::from(if per_row == 1.0 { 4 << bits } else { 1 << bits });
                    let constants = [
                        ("WG", wg),
                        ("BITS", f64::from(bits)),
                        ("BLOCK", block),
                        ("SCALE_KIND", scale_kind),
                        ("PER_ROW", per_row),
                        ("LUT_LEN", lut_len),
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
