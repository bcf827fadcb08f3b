//! Activation-sparse GEMV against membound-sparse's CPU references
//! (`ColMajorF16`, `ColMajorAffine4`, `active_indices`), on every feature set
//! the adapter offers and on the forced fallbacks (workgroup-memory scan).
//!
//! Tolerances. The GPU multiplies the very weights the reference does (the
//! f16-rounded ones, or the 4-bit ones decoded bit for bit: `code · scale` is
//! exact, so `fma(code, scale, bias)` and the CPU's `code * scale + bias`
//! round once, identically) by the same x values (the compaction copies
//! their bits). What differs is the f32 arithmetic of the sum alone. Each
//! output adds its terms along a tree: a column lane adds its share of a
//! chunk's active inputs in order (at most `chunk_len` terms), the lanes
//! (at most 256) are added in order, then the chunks (`chunks`); each
//! product rounds once (or not at all, fused). With D that depth plus one,
//! |y − y_exact| ≤ γ(D)·Σ_j |w_j·x_j|, γ(n) = n·u/(1 − n·u), u = 2⁻²⁴ (Higham,
//! any summation order), where D ≤ min(n_active, chunk_len + 256 + chunks) + 1.
//! The reference itself is the f64 sum rounded to f32 (half an ulp more),
//! and a GPU may flush subnormal products to zero (2⁻¹²⁶ per term).
//!
//! Where weights and inputs are small integers every partial sum is an
//! integer below 2²⁴, exact in any order: those tests compare exactly, so a
//! dropped, repeated or misplaced column shows. A fully inactive input gives
//! exactly zero.

mod common;

use common::{FEATURE_SETS, Rng, context};
use membound_gpu::{
    Binding, Dispatch, GpuBuffer, GpuContext, GpuError, GpuFeatures, GpuVector, PipelineSpec,
    Shader, SparseDType, SparseGemv, SparseReduce, SparseTuning, Threshold, Workgroups, wgpu,
};
use membound_sparse::{ColMajorAffine4, ColMajorF16, active_indices, threshold_for_sparsity};

const SPARSITIES: [f64; 4] = [0.0, 0.5, 0.99, 1.0];

/// f16, then 4-bit affine with each group size.
const DTYPES: [SparseDType; 4] = [
    SparseDType::F16,
    SparseDType::Affine4 { group: 32 },
    SparseDType::Affine4 { group: 64 },
    SparseDType::Affine4 { group: 128 },
];

/// Edge shapes (rows × cols), then random ones: odd sizes, sizes off the
/// 8- and 32-output chunks and the 4-input granule, 1×N, N×1, long K.
fn shapes() -> Vec<(usize, usize)> {
    let mut shapes = vec![
        (1, 1),
        (1, 1000),
        (1000, 1),
        (3, 20000),
        (5, 7),
        (13, 9),
        (17, 33),
        (63, 129),
        (64, 256),
        (257, 255),
        (130, 2049),
    ];
    let mut rng = Rng::new(17);
    for _ in 0..6 {
        shapes.push((rng.range(1, 400), rng.range(1, 3000)));
    }
    shapes
}

/// The CPU reference of one matrix.
enum Reference {
    F16(ColMajorF16),
    Affine4(ColMajorAffine4),
}

impl Reference {
    fn new(w: &[f32], rows: usize, cols: usize, dtype: SparseDType) -> Self {
        match dtype {
            SparseDType::F16 => Self::F16(ColMajorF16::from_row_major(w, rows, cols).unwrap()),
            SparseDType::Affine4 { group } => {
                Self::Affine4(ColMajorAffine4::from_row_major(w, rows, cols, group).unwrap())
            }
        }
    }

    fn upload(&self, ctx: &GpuContext) -> SparseGemv {
        match self {
            Self::F16(m) => SparseGemv::from_f16(ctx, "w", m).unwrap(),
            Self::Affine4(m) => SparseGemv::from_affine4(ctx, "w", m).unwrap(),
        }
    }

    fn sparse_gemv(&self, x: &[f32], active: &[u32]) -> Vec<f32> {
        match self {
            Self::F16(m) => m.sparse_gemv(x, active).unwrap(),
            Self::Affine4(m) => m.sparse_gemv(x, active).unwrap(),
        }
    }

    /// Column j as the GPU holds it, in f32.
    fn column(&self, j: usize) -> Vec<f32> {
        match self {
            Self::F16(m) => m.column(j).iter().map(|v| v.to_f32()).collect(),
            Self::Affine4(m) => m.column(j).to_vec(),
        }
    }

    /// Σ_{j active} |w_rj·x_j| per row.
    fn magnitudes(&self, rows: usize, x: &[f32], active: &[u32]) -> Vec<f64> {
        let mut mag = vec![0f64; rows];
        for &j in active {
            for (m, w) in mag.iter_mut().zip(self.column(j as usize)) {
                *m += (f64::from(w) * f64::from(x[j as usize])).abs();
            }
        }
        mag
    }
}

/// Checks y against the reference within the tolerance of the header.
fn check_y(got: &[f32], r: &Reference, gemv: &SparseGemv, x: &[f32], active: &[u32], what: &str) {
    let want = r.sparse_gemv(x, active);
    let n = active.len();
    if n == 0 {
        assert!(
            got.iter().all(|&v| v == 0.0),
            "{what}: all inactive must give 0, got {got:?}"
        );
        return;
    }
    let mag = r.magnitudes(got.len(), x, active);
    let depth = n.min(gemv.chunk_len() + 256 + gemv.chunks()) + 1;
    let nu = depth as f64 * f64::from(f32::EPSILON) / 2.0;
    let gamma = nu / (1.0 - nu);
    for (row, (&g, &w)) in got.iter().zip(&want).enumerate() {
        let tol = gamma * mag[row]
            + f64::from(w.abs()) * f64::from(f32::EPSILON) / 2.0
            + n as f64 * f64::from(f32::MIN_POSITIVE);
        let err = (f64::from(g) - f64::from(w)).abs();
        assert!(err <= tol, "{what} row {row}: got {g}, want {w} ± {tol}");
    }
}

/// Checks the GPU's compacted list: exactly the reference's active indices,
/// with x's values bit for bit.
fn check_compaction(ctx: &GpuContext, gemv: &SparseGemv, x: &[f32], active: &[u32], what: &str) {
    let c = gemv.read_compaction(ctx).unwrap();
    assert_eq!(c.indices, active, "{what}: active indices");
    let want: Vec<u32> = active.iter().map(|&j| x[j as usize].to_bits()).collect();
    let got: Vec<u32> = c.values.iter().map(|v| v.to_bits()).collect();
    assert_eq!(got, want, "{what}: compacted values");
    let counts = gemv.counts_buffer().read_bytes(ctx, 0, 12).unwrap();
    let counts: Vec<u32> = bytemuck::pod_collect_to_vec(&counts);
    assert_eq!(
        counts,
        [active.len() as u32, 1, 1],
        "{what}: indirect triple"
    );
}

fn run(ctx: &GpuContext, gemv: &SparseGemv, x: &[f32], tau: f32) -> Vec<f32> {
    let xv = GpuVector::from_slice(ctx, "x", x).unwrap();
    // NaN fill: every output must be written.
    let yv = GpuVector::from_slice(ctx, "y", &vec![f32::NAN; gemv.rows()]).unwrap();
    gemv.run(ctx, &xv, tau, &yv).unwrap();
    yv.read(ctx).unwrap()
}

#[test]
fn random_values_within_the_stated_tolerance() {
    for &(set, disable) in FEATURE_SETS {
        let Some(ctx) = context(disable) else { return };
        let mut rng = Rng::new(1);
        for (rows, cols) in shapes() {
            let w: Vec<f32> = (0..rows * cols).map(|_| rng.unit()).collect();
            let x: Vec<f32> = (0..cols).map(|_| rng.unit()).collect();
            for dtype in DTYPES {
                let r = Reference::new(&w, rows, cols, dtype);
                let gemv = r.upload(&ctx);
                for sparsity in SPARSITIES {
                    let tau = threshold_for_sparsity(&x, sparsity).unwrap();
                    let active = active_indices(&x, tau);
                    let what = format!(
                        "{set} {dtype:?} {rows}×{cols} sparsity {sparsity} ({} chunks)",
                        gemv.chunks()
                    );
                    let got = run(&ctx, &gemv, &x, tau);
                    check_compaction(&ctx, &gemv, &x, &active, &what);
                    check_y(&got, &r, &gemv, &x, &active, &what);
                }
            }
        }
    }
}

/// Every work split: one chunk (the first dispatch writes y), chunks of
/// the largest size (several scan rounds each), many small chunks; row
/// tiles of 1 to 32 chunks.
#[test]
fn every_work_split() {
    for &(set, disable) in FEATURE_SETS {
        let Some(ctx) = context(disable) else { return };
        let mut rng = Rng::new(2);
        for (rows, cols) in [(70, 3000), (1, 5000), (300, 65), (33, 4100)] {
            let w: Vec<f32> = (0..rows * cols).map(|_| rng.unit()).collect();
            let x: Vec<f32> = (0..cols).map(|_| rng.unit()).collect();
            for dtype in [SparseDType::F16, SparseDType::Affine4 { group: 64 }] {
                let r = Reference::new(&w, rows, cols, dtype);
                let base = r.upload(&ctx);
                for threads_per_column in [1, 4, 16, 32] {
                    for target_workgroups in [1, 64, 100_000] {
                        let tuning = SparseTuning {
                            threads_per_column,
                            target_workgroups,
                            reduce: SparseReduce::LastWorkgroup,
                        };
                        let gemv = base.with_tuning(&ctx, tuning).unwrap();
                        // With several chunks, the second-dispatch reduction
                        // too, which must agree bit for bit.
                        let second = (gemv.chunks() > 1).then(|| {
                            let tuning = SparseTuning {
                                reduce: SparseReduce::SecondDispatch,
                                ..tuning
                            };
                            base.with_tuning(&ctx, tuning).unwrap()
                        });
                        for sparsity in [0.0, 0.7] {
                            let tau = threshold_for_sparsity(&x, sparsity).unwrap();
                            let active = active_indices(&x, tau);
                            let what = format!(
                                "{set} {dtype:?} {rows}×{cols} {tuning:?} sparsity {sparsity} \
                                 ({} chunks of {}, {} dispatches)",
                                gemv.chunks(),
                                gemv.chunk_len(),
                                gemv.dispatches(),
                            );
                            assert_eq!(gemv.dispatches(), 1, "{what}");
                            let got = run(&ctx, &gemv, &x, tau);
                            check_compaction(&ctx, &gemv, &x, &active, &what);
                            check_y(&got, &r, &gemv, &x, &active, &what);
                            if let Some(second) = &second {
                                assert_eq!(second.dispatches(), 2, "{what}");
                                let again = run(&ctx, second, &x, tau);
                                check_compaction(&ctx, second, &x, &active, &what);
                                let bits =
                                    |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                                assert_eq!(
                                    bits(&again),
                                    bits(&got),
                                    "{what}: the two reductions differ"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Exact-zero mode: τ = 0 keeps every non-zero input, subnormals included,
/// and drops +0, −0 and NaN, like `active_indices`.
#[test]
fn exact_zero_mode() {
    for &(set, disable) in FEATURE_SETS {
        let Some(ctx) = context(disable) else { return };
        let mut rng = Rng::new(3);
        let (rows, cols) = (45, 1500);
        let w: Vec<f32> = (0..rows * cols).map(|_| rng.unit()).collect();
        let mut x: Vec<f32> = (0..cols)
            .map(|_| match rng.range(0, 10) {
                0..=5 => 0.0,
                6 => -0.0,
                _ => rng.unit(),
            })
            .collect();
        x[3] = 1e-40; // subnormal: active
        x[4] = -1e-45;
        x[5] = f32::NAN; // inactive under |x| > 0
        for dtype in DTYPES {
            let r = Reference::new(&w, rows, cols, dtype);
            let gemv = r.upload(&ctx);
            let active = active_indices(&x, 0.0);
            assert!(active.contains(&3) && active.contains(&4) && !active.contains(&5));
            let what = format!("{set} {dtype:?} exact zeros");
            let got = run(&ctx, &gemv, &x, 0.0);
            check_compaction(&ctx, &gemv, &x, &active, &what);
            check_y(&got, &r, &gemv, &x, &active, &what);
        }
    }
}

/// Small integers: exact in any order, so results must match exactly.
#[test]
fn integer_values_exactly() {
    for &(set, disable) in FEATURE_SETS {
        let Some(ctx) = context(disable) else { return };
        let mut rng = Rng::new(4);
        for (rows, cols) in shapes() {
            let x: Vec<f32> = (0..cols).map(|_| rng.int(3)).collect();
            let active = active_indices(&x, 0.0);
            // f16: weights in [-3, 3].
            let w: Vec<f32> = (0..rows * cols).map(|_| rng.int(3)).collect();
            // 4-bit: each group of outputs holds -8 and 7 (or is constant),
            // so scale 1 and bias -8 decode the integers in [-8, 7] exactly.
            let mut wq: Vec<f32> = (0..rows * cols).map(|_| rng.int(8).min(7.0)).collect();
            for c in 0..cols {
                for g in (0..rows).step_by(32) {
                    wq[g * cols + c] = -8.0;
                    if g + 1 < rows {
                        wq[(g + 1) * cols + c] = 7.0;
                    }
                }
            }
            for dtype in DTYPES {
                let weights = if dtype == SparseDType::F16 { &w } else { &wq };
                let r = Reference::new(weights, rows, cols, dtype);
                for j in 0..cols {
                    let col: Vec<f32> = (0..rows).map(|i| weights[i * cols + j]).collect();
                    assert_eq!(
                        r.column(j),
                        col,
                        "{dtype:?}: integer weights decode exactly"
                    );
                }
                let gemv = r.upload(&ctx);
                let got = run(&ctx, &gemv, &x, 0.0);
                let want = r.sparse_gemv(&x, &active);
                assert_eq!(got, want, "{set} {dtype:?} {rows}×{cols}");
            }
        }
    }
}

/// The row-major constructors equal the column-major references.
#[test]
fn row_major_constructors() {
    let Some(ctx) = context(GpuFeatures::NONE) else {
        return;
    };
    let (rows, cols) = (70, 90);
    let mut rng = Rng::new(5);
    let w: Vec<f32> = (0..rows * cols).map(|_| rng.int(3)).collect();
    let x: Vec<f32> = (0..cols).map(|_| rng.int(2)).collect();
    let active = active_indices(&x, 0.0);
    let f16 = SparseGemv::f16(&ctx, "w16", rows, cols, &w).unwrap();
    let want = Reference::new(&w, rows, cols, SparseDType::F16).sparse_gemv(&x, &active);
    assert_eq!(run(&ctx, &f16, &x, 0.0), want);
    let q = SparseGemv::affine4(&ctx, "w4", rows, cols, &w, 64).unwrap();
    assert_eq!(q.dtype(), SparseDType::Affine4 { group: 64 });
    let r = Reference::new(&w, rows, cols, q.dtype());
    check_y(&run(&ctx, &q, &x, 0.0), &r, &q, &x, &active, "affine4");
}

/// One binding reused: new inputs and a new τ through a kept `Threshold`.
#[test]
fn reused_binding_with_a_changing_threshold() {
    for &(set, disable) in FEATURE_SETS {
        let Some(ctx) = context(disable) else { return };
        let (rows, cols) = (200, 3000);
        let mut rng = Rng::new(6);
        let w: Vec<f32> = (0..rows * cols).map(|_| rng.int(3)).collect();
        let r = Reference::new(&w, rows, cols, SparseDType::F16);
        let gemv = r.upload(&ctx);
        assert!(gemv.chunks() > 1, "the two-stage path is meant here");
        let xv = GpuVector::zeros(&ctx, "x", cols).unwrap();
        let yv = GpuVector::zeros(&ctx, "y", rows).unwrap();
        let tau = Threshold::new(&ctx, "τ", 0.0).unwrap();
        let dispatch = gemv.bind_threshold(&ctx, &xv, &tau, &yv).unwrap();
        for (round, t) in [0.0_f32, 2.5, 1.5, f32::INFINITY].into_iter().enumerate() {
            let x: Vec<f32> = (0..cols).map(|_| rng.int(3)).collect();
            xv.write(&ctx, &x).unwrap();
            tau.set(&ctx, t).unwrap();
            ctx.submit(&[&dispatch]).unwrap();
            let active = active_indices(&x, t);
            let what = format!("{set} round {round} τ = {t}");
            assert_eq!(yv.read(&ctx).unwrap(), r.sparse_gemv(&x, &active), "{what}");
            check_compaction(&ctx, &gemv, &x, &active, &what);
        }
    }
}

/// Two sparse GEMVs in one submission, the second reading the first's
/// output: one chunk, and several added up either way.
#[test]
fn chained_in_one_submission() {
    for &(set, disable) in FEATURE_SETS {
        let Some(ctx) = context(disable) else { return };
        let mut rng = Rng::new(7);
        let (n0, n1, n2) = (3000, 40, 700);
        let w1: Vec<f32> = (0..n1 * n0).map(|_| rng.int(2)).collect();
        let w2: Vec<f32> = (0..n2 * n1).map(|_| rng.int(2)).collect();
        let r1 = Reference::new(&w1, n1, n0, SparseDType::F16);
        let r2 = Reference::new(&w2, n2, n1, SparseDType::Affine4 { group: 32 });
        let (g1, g2) = (r1.upload(&ctx), r2.upload(&ctx));
        let single = SparseTuning {
            threads_per_column: 8,
            target_workgroups: 1,
            reduce: SparseReduce::Auto,
        };
        let g2 = g2.with_tuning(&ctx, single).unwrap();
        let x: Vec<f32> = (0..n0).map(|_| rng.int(2)).collect();
        let hv = r1.sparse_gemv(&x, &active_indices(&x, 0.0));
        let want = r2.sparse_gemv(&hv, &active_indices(&hv, 3.0));
        for (reduce, dispatches) in [
            (SparseReduce::LastWorkgroup, 1),
            (SparseReduce::SecondDispatch, 2),
        ] {
            let tuning = SparseTuning {
                reduce,
                ..g1.tuning()
            };
            let g1 = g1.with_tuning(&ctx, tuning).unwrap();
            assert!(g1.chunks() > 1 && g2.chunks() == 1);
            let xv = GpuVector::from_slice(&ctx, "x", &x).unwrap();
            let h = GpuVector::zeros(&ctx, "h", n1).unwrap();
            let y = GpuVector::zeros(&ctx, "y", n2).unwrap();
            let d1 = g1.bind(&ctx, &xv, 0.0, &h).unwrap();
            let d2 = g2.bind(&ctx, &h, 3.0, &y).unwrap();
            assert_eq!((d1.len(), d2.len()), (dispatches, 1));
            ctx.submit(&[&d1, &d2]).unwrap();
            assert_eq!(y.read(&ctx).unwrap(), want, "{set} {reduce:?}");
        }
    }
}

/// The last-workgroup reduction resets its arrival counters: the same call
/// recorded three times in one submission, then submitted twice more, adds
/// W·x to y five times, exactly (small integers), and the count stays
/// right. A counter left non-zero would skip a tile's final sum.
#[test]
fn last_workgroup_reduction_repeats() {
    for &(set, disable) in FEATURE_SETS {
        let Some(ctx) = context(disable) else { return };
        let mut rng = Rng::new(11);
        for dtype in [SparseDType::F16, SparseDType::Affine4 { group: 32 }] {
            let (rows, cols) = (300, 2000);
            let w: Vec<f32> = (0..rows * cols).map(|_| rng.int(3)).collect();
            let x: Vec<f32> = (0..cols).map(|_| rng.int(2)).collect();
            let r = Reference::new(&w, rows, cols, dtype);
            let tuning = SparseTuning {
                threads_per_column: 8,
                target_workgroups: 100_000,
                reduce: SparseReduce::LastWorkgroup,
            };
            let gemv = r.upload(&ctx).with_tuning(&ctx, tuning).unwrap();
            assert!(gemv.chunks() > 1 && gemv.dispatches() == 1);
            let active = active_indices(&x, 0.0);
            let once = r.sparse_gemv(&x, &active);
            let xv = GpuVector::from_slice(&ctx, "x", &x).unwrap();
            let yv = GpuVector::zeros(&ctx, "y", rows).unwrap();
            let tau = Threshold::new(&ctx, "τ", 0.0).unwrap();
            let d = gemv.bind_accumulate(&ctx, &xv, &tau, &yv).unwrap();
            ctx.submit(&[&d, &d, &d]).unwrap();
            ctx.submit(&[&d]).unwrap();
            ctx.submit(&[&d]).unwrap();
            let want: Vec<f32> = once.iter().map(|v| 5.0 * v).collect();
            assert_eq!(yv.read(&ctx).unwrap(), want, "{set} {dtype:?}");
            assert_eq!(gemv.read_active_count(&ctx).unwrap(), active.len());
            check_compaction(&ctx, &gemv, &x, &active, &format!("{set} {dtype:?}"));
        }
    }
}

/// The count is where an indirect dispatch reads it: a kernel dispatched
/// from `counts_buffer()` runs once per active input.
#[test]
fn count_drives_an_indirect_dispatch() {
    const COUNTER: Shader = Shader::new(
        "test_counter.wgsl",
        "@group(0) @binding(0) var<storage, read_write> hits: atomic<u32>;\n\
         @compute @workgroup_size(1) fn main() { atomicAdd(&hits, 1u); }\n",
    );
    let Some(ctx) = context(GpuFeatures::NONE) else {
        return;
    };
    let (rows, cols) = (8, 5000);
    let mut rng = Rng::new(8);
    let w: Vec<f32> = (0..rows * cols).map(|_| rng.unit()).collect();
    let x: Vec<f32> = (0..cols).map(|_| rng.unit()).collect();
    let gemv = SparseGemv::f16(&ctx, "w", rows, cols, &w).unwrap();
    let tau = threshold_for_sparsity(&x, 0.9).unwrap();
    let xv = GpuVector::from_slice(&ctx, "x", &x).unwrap();
    let yv = GpuVector::zeros(&ctx, "y", rows).unwrap();
    let hits = GpuBuffer::new(
        &ctx,
        "hits",
        4,
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    )
    .unwrap();
    let pipeline = ctx
        .pipeline(&PipelineSpec {
            shader: COUNTER,
            entry: "main",
            constants: &[],
            bindings: &[Binding::StorageReadWrite],
        })
        .unwrap();
    let mut counter = Dispatch::new();
    counter.push(
        pipeline.clone(),
        pipeline.bind(&ctx, &[&hits]).unwrap(),
        Workgroups::Indirect {
            buffer: gemv.counts_buffer().raw().clone(),
            offset: 0,
        },
    );
    let sparse = gemv.bind(&ctx, &xv, tau, &yv).unwrap();
    ctx.submit(&[&sparse, &counter]).unwrap();
    let got = u32::from_le_bytes(hits.read_bytes(&ctx, 0, 4).unwrap().try_into().unwrap());
    assert_eq!(got as usize, active_indices(&x, tau).len());
}

#[test]
fn bytes_read_counts_active_columns_and_input() {
    let Some(ctx) = context(GpuFeatures::NONE) else {
        return;
    };
    let w = vec![0.5; 70 * 10];
    let f16 = SparseGemv::f16(&ctx, "w", 70, 10, &w).unwrap();
    // 70 outputs pad to 9 units of 8 f16 (144 bytes); x is 40 bytes.
    assert_eq!(f16.column_bytes(), 144);
    assert_eq!(f16.bytes_read(3), 3 * 144 + 40);
    assert_eq!(f16.bytes_read(99), 10 * 144 + 40);
    let q = SparseGemv::affine4(&ctx, "w", 70, 10, &w, 32).unwrap();
    // 9 words of 8 codes (36 bytes) and 3 groups of 32 (12 bytes).
    assert_eq!(q.column_bytes(), 48);
    assert_eq!(q.weight_bytes(), 480);
    assert_eq!(q.bytes_read(0), 40);
}

/// Wrong shapes, lengths, thresholds and tunings are errors that say what
/// is wrong, never panics.
#[test]
fn bad_inputs_are_clear_errors() {
    let Some(ctx) = context(GpuFeatures::NONE) else {
        return;
    };
    let invalid = |r: Result<_, GpuError>, words: &[&str]| {
        let Err(e) = r else {
            panic!("expected an error containing {words:?}")
        };
        assert!(matches!(e, GpuError::InvalidArgument { .. }), "{e:?}");
        let text = e.to_string();
        for w in words {
            assert!(text.contains(w), "{text:?} should mention {w:?}");
        }
    };
    invalid(
        SparseGemv::f16(&ctx, "blk.1.ffn_down", 4, 5, &[0.0; 19]).map(drop),
        &["blk.1.ffn_down", "19"],
    );
    invalid(SparseGemv::f16(&ctx, "w", 0, 5, &[]).map(drop), &["0×5"]);
    invalid(
        SparseGemv::affine4(&ctx, "w", 4, 5, &[0.0; 20], 48).map(drop),
        &["48"],
    );
    invalid(
        SparseGemv::affine4(&ctx, "w", 1, 2, &[0.0, f32::NAN], 64).map(drop),
        &["NaN"],
    );

    let gemv = SparseGemv::f16(&ctx, "w", 4, 5, &[1.0; 20]).unwrap();
    let x = GpuVector::zeros(&ctx, "x", 5).unwrap();
    let short_x = GpuVector::zeros(&ctx, "short x", 4).unwrap();
    let y = GpuVector::zeros(&ctx, "y", 4).unwrap();
    let short_y = GpuVector::zeros(&ctx, "short y", 3).unwrap();
    invalid(
        gemv.bind(&ctx, &short_x, 0.0, &y).map(drop),
        &["short x", "4", "5"],
    );
    invalid(
        gemv.bind(&ctx, &x, 0.0, &short_y).map(drop),
        &["short y", "3", "4"],
    );
    let square = SparseGemv::f16(&ctx, "sq", 5, 5, &[1.0; 25]).unwrap();
    invalid(square.bind(&ctx, &x, 0.0, &x).map(drop), &["same buffer"]);
    invalid(gemv.bind(&ctx, &x, f32::NAN, &y).map(drop), &["NaN"]);
    invalid(gemv.bind(&ctx, &x, -1.0, &y).map(drop), &["-1"]);
    let tau = Threshold::new(&ctx, "layer 3 τ", 0.5).unwrap();
    invalid(tau.set(&ctx, f32::NAN), &["layer 3 τ", "NaN"]);
    invalid(Threshold::new(&ctx, "τ", -0.5).map(drop), &["-0.5"]);
    for tuning in [
        SparseTuning {
            threads_per_column: 3,
            target_workgroups: 8,
            reduce: SparseReduce::Auto,
        },
        SparseTuning {
            threads_per_column: 4,
            target_workgroups: 0,
            reduce: SparseReduce::Auto,
        },
    ] {
        invalid(gemv.with_tuning(&ctx, tuning).map(drop), &["tuning"]);
    }
    // −0 is 0, and +∞ drops everything: both fine.
    gemv.run(&ctx, &x, -0.0, &y).unwrap();
    gemv.run(&ctx, &x, f32::INFINITY, &y).unwrap();
    ctx.check().unwrap();
}

/// `bind_accumulate` adds to y, with one input chunk (the first stage
/// writes y) and with several (the reduction does): small integers, so
/// exactly `y0 + W·x`.
#[test]
fn accumulate_adds_to_the_output_exactly() {
    for &(set, disable) in FEATURE_SETS {
        let Some(ctx) = context(disable) else { return };
        let mut rng = Rng::new(9);
        let (rows, cols) = (70, 3000);
        let w: Vec<f32> = (0..rows * cols).map(|_| rng.int(3)).collect();
        let x: Vec<f32> = (0..cols).map(|_| rng.int(2)).collect();
        let y0: Vec<f32> = (0..rows).map(|_| rng.int(100)).collect();
        let active = active_indices(&x, 0.0);
        let r = Reference::new(&w, rows, cols, SparseDType::F16);
        let want: Vec<f32> = r
            .sparse_gemv(&x, &active)
            .iter()
            .zip(&y0)
            .map(|(a, b)| a + b)
            .collect();
        let base = r.upload(&ctx);
        let mut chunk_counts = Vec::new();
        for (target_workgroups, reduce) in [
            (1, SparseReduce::Auto),
            (100_000, SparseReduce::LastWorkgroup),
            (100_000, SparseReduce::SecondDispatch),
        ] {
            let tuning = SparseTuning {
                threads_per_column: 16,
                target_workgroups,
                reduce,
            };
            let gemv = base.with_tuning(&ctx, tuning).unwrap();
            chunk_counts.push(gemv.chunks());
            let xv = GpuVector::from_slice(&ctx, "x", &x).unwrap();
            let yv = GpuVector::from_slice(&ctx, "y", &y0).unwrap();
            let tau = Threshold::new(&ctx, "τ", 0.0).unwrap();
            let d = gemv.bind_accumulate(&ctx, &xv, &tau, &yv).unwrap();
            ctx.submit(&[&d]).unwrap();
            let got = yv.read(&ctx).unwrap();
            assert_eq!(got, want, "{set} {} chunks", gemv.chunks());
        }
        assert!(
            chunk_counts.contains(&1) && chunk_counts.iter().any(|c| *c > 1),
            "{chunk_counts:?}"
        );
    }
}

/// A threshold at `sparsity` that sits in a gap of the magnitudes, so that
/// inputs computed on the GPU a few ulps apart from the CPU's (exp, the
/// norm's square root) fall on the same side of it.
fn gap_tau(x: &[f32], sparsity: f64) -> f32 {
    let mut m: Vec<f32> = x.iter().map(|v| v.abs()).collect();
    m.sort_by(f32::total_cmp);
    let mut k = ((sparsity * m.len() as f64) as usize).clamp(1, m.len() - 1);
    while k + 1 < m.len() && m[k] - m[k - 1] < 1e-4 * m[k] {
        k += 1;
    }
    0.5 * (m[k - 1] + m[k])
}

/// (name, vector bound, input made from it on the CPU, norm scale, mode).
type Case<'a> = (
    &'a str,
    &'a [f32],
    &'a [f32],
    Option<&'a GpuVector>,
    membound_gpu::SparseInput,
);

/// SwiGLU and RMSNorm inputs made in the kernel equal the plain kernel's
/// reference on the input made on the CPU: the same active set, values
/// within a few ulps, y within the plain tolerance plus 1e-5 of the
/// magnitudes; with one chunk and several, with and without accumulation.
#[test]
fn swiglu_and_rms_norm_inputs() {
    use membound_gpu::SparseInput;
    for &(set, disable) in FEATURE_SETS {
        let Some(ctx) = context(disable) else { return };
        let mut rng = Rng::new(10);
        for (rows, cols) in [(70, 3000), (300, 64), (33, 4100)] {
            let w: Vec<f32> = (0..rows * cols).map(|_| rng.unit()).collect();
            let gate_up: Vec<f32> = (0..2 * cols).map(|_| 3.0 * rng.unit()).collect();
            let h: Vec<f32> = (0..cols).map(|_| 2.0 * rng.unit()).collect();
            let g: Vec<f32> = (0..cols).map(|_| 0.5 + rng.unit().abs()).collect();
            let y0: Vec<f32> = (0..rows).map(|_| rng.unit()).collect();
            let silu: Vec<f32> = (0..cols)
                .map(|j| {
                    let a = gate_up[j];
                    a / (1.0 + (-a).exp()) * gate_up[cols + j]
                })
                .collect();
            let ms = h.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / cols as f64;
            let inv = (1.0 / (ms + 1e-5).sqrt()) as f32;
            let normed: Vec<f32> = h.iter().zip(&g).map(|(a, b)| a * b * inv).collect();
            let gv = GpuVector::from_slice(&ctx, "g", &g).unwrap();
            for dtype in DTYPES {
                let r = Reference::new(&w, rows, cols, dtype);
                let base = r.upload(&ctx);
                for (target_workgroups, reduce) in [
                    (1, SparseReduce::Auto),
                    (100_000, SparseReduce::LastWorkgroup),
                    (100_000, SparseReduce::SecondDispatch),
                ] {
                    let tuning = SparseTuning {
                        threads_per_column: 16,
                        target_workgroups,
                        reduce,
                    };
                    let gemv = base.with_tuning(&ctx, tuning).unwrap();
                    let cases: [Case<'_>; 2] = [
                        ("swiglu", &gate_up, &silu, None, SparseInput::SwiGlu),
                        (
                            "norm",
                            &h,
                            &normed,
                            Some(&gv),
                            SparseInput::RmsNorm { eps: 1e-5 },
                        ),
                    ];
                    for (name, raw, made, norm, input) in cases {
                        if name == "swiglu" && cols % 4 != 0 {
                            continue;
                        }
                        let tau = gap_tau(made, 0.6);
                        let active = active_indices(made, tau);
                        for accumulate in [false, true] {
                            let what = format!(
                                "{set} {dtype:?} {rows}×{cols} {name} acc={accumulate} ({} chunks, {reduce:?})",
                                gemv.chunks()
                            );
                            let xv = GpuVector::from_slice(&ctx, "x", raw).unwrap();
                            let yv = GpuVector::from_slice(&ctx, "y", &y0).unwrap();
                            let t = Threshold::new(&ctx, "τ", tau).unwrap();
                            let d = gemv
                                .bind_with(&ctx, &xv, norm, &t, &yv, accumulate, input)
                                .unwrap();
                            ctx.submit(&[&d]).unwrap();
                            let got = yv.read(&ctx).unwrap();
                            let c = gemv.read_compaction(&ctx).unwrap();
                            assert_eq!(c.indices, active, "{what}: active set");
                            for (k, &j) in active.iter().enumerate() {
                                let (a, b) = (c.values[k], made[j as usize]);
                                assert!(
                                    (a - b).abs() <= 1e-5 * b.abs(),
                                    "{what}: value {j}: {a} vs {b}"
                                );
                            }
                            let want = r.sparse_gemv(made, &active);
                            let mag = r.magnitudes(rows, made, &active);
                            for row in 0..rows {
                                let add = if accumulate { y0[row] } else { 0.0 };
                                let w = f64::from(want[row]) + f64::from(add);
                                let err = (f64::from(got[row]) - w).abs();
                                let tol = 1e-5 * (mag[row] + f64::from(add.abs())) + 1e-6;
                                assert!(err <= tol, "{what} row {row}: got {}, want {w}", got[row]);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The two reductions agree bit for bit under load: sixteen accumulating
/// calls with different inputs, recorded back to back in one submission, on
/// a matrix big enough for many workgroups per row tile to run at once.
/// (On the H100 this test passed with the first, barrier-ordered form of
/// the reduction; the stale sums it read showed in
/// `accumulate_adds_to_the_output_exactly` and
/// `last_workgroup_reduction_repeats`.)
#[test]
fn reductions_agree_under_load() {
    let Some(ctx) = context(GpuFeatures::NONE) else {
        return;
    };
    let mut rng = Rng::new(12);
    let (rows, cols) = (1024, 4096);
    let w: Vec<f32> = (0..rows * cols).map(|_| rng.unit()).collect();
    let xs: Vec<GpuVector> = (0..16)
        .map(|k| {
            let x: Vec<f32> = (0..cols).map(|_| rng.unit()).collect();
            GpuVector::from_slice(&ctx, &format!("x{k}"), &x).unwrap()
        })
        .collect();
    let y0: Vec<f32> = (0..rows).map(|_| rng.unit()).collect();
    for dtype in [SparseDType::F16, SparseDType::Affine4 { group: 64 }] {
        let base = Reference::new(&w, rows, cols, dtype).upload(&ctx);
        // The default (Auto) is the one-dispatch form.
        assert!(base.chunks() > 1 && base.dispatches() == 1, "{dtype:?}");
        let mut results = Vec::new();
        for reduce in [SparseReduce::LastWorkgroup, SparseReduce::SecondDispatch] {
            let tuning = SparseTuning {
                reduce,
                ..SparseTuning::default_for(dtype)
            };
            let gemv = base.with_tuning(&ctx, tuning).unwrap();
            assert!(gemv.chunks() > 1, "{dtype:?}: one chunk");
            let tau = Threshold::new(&ctx, "τ", 0.3).unwrap();
            let y = GpuVector::from_slice(&ctx, "y", &y0).unwrap();
            let calls: Vec<Dispatch> = xs
                .iter()
                .map(|x| gemv.bind_accumulate(&ctx, x, &tau, &y).unwrap())
                .collect();
            ctx.submit(&calls.iter().collect::<Vec<_>>()).unwrap();
            let bits: Vec<u32> = y.read(&ctx).unwrap().iter().map(|v| v.to_bits()).collect();
            results.push(bits);
        }
        let differ = results[0]
            .iter()
            .zip(&results[1])
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(differ, 0, "{dtype:?}: {differ} of {rows} outputs differ");
    }
}
