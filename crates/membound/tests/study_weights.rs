//! The weights study on real and synthetic models. The full SmolLM2 run is
//! too slow for the suite (minutes); the tests here run the whole study on
//! llama2xs-280K and slices of the larger models.

use std::path::PathBuf;

use membound::study::weights::{self, WeightsOptions, WeightsStudy};
use membound_tensor::registry::{self, MINILM, SMOLLM2};
use membound_tensor::{DType, OwnedTensor};

fn required() -> bool {
    std::env::var("MEMBOUND_REQUIRE_MODELS").is_ok_and(|v| v == "1")
}

/// A model's path, or `None` with a printed reason (a failure under
/// MEMBOUND_REQUIRE_MODELS=1).
fn model(name: &str) -> Option<PathBuf> {
    let found = match name {
        "smollm2" => SMOLLM2.locate(),
        "minilm" => MINILM.locate(),
        fixture => registry::fixture(fixture).map(|(m, _)| m),
    };
    if found.is_none() {
        assert!(
            !required(),
            "{name} is missing and MEMBOUND_REQUIRE_MODELS=1"
        );
        eprintln!(
            "SKIPPED: {name} is missing (run `membound models fetch`, or see ../shared/models)"
        );
    }
    found
}

fn study(path: &std::path::Path, name: &str, opts: &WeightsOptions) -> WeightsStudy {
    let src = membound_tensor::open(path).unwrap();
    weights::run(name, src.as_ref(), opts, &|_| {}).unwrap()
}

#[test]
fn llama2xs_full_study_has_every_table() {
    let Some(path) = model("llama2xs-280K") else {
        return;
    };
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let src = membound_tensor::open(&path).unwrap();
    let s = weights::run(
        "llama2xs-280K",
        src.as_ref(),
        &WeightsOptions::default(),
        &|p| {
            assert!(p.done <= p.total && p.total == 36);
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        },
    )
    .unwrap();
    assert_eq!(calls.into_inner(), 36);
    // 1 embedding + 5 layers × 7 matrices; the 11 norms are 1-D.
    assert_eq!((s.tensors.len(), s.skipped.len()), (36, 11));
    assert!(s.skipped.iter().all(|k| k.reason.contains("1-D")));
    assert_eq!(s.settings.len(), weights::SETTINGS.len());
    for t in &s.tensors {
        assert_eq!(t.results.len(), weights::SETTINGS.len());
        assert_eq!(t.studied_rows, t.rows, "nothing is sampled in a 280K model");
    }
    let g64 = s.setting(weights::BASELINE).unwrap();
    assert_eq!(g64.bits_per_weight, 4.5);
    assert!(
        g64.mean_sqnr_db > 18.0 && g64.mean_sqnr_db < 24.0,
        "{g64:?}"
    );
    // Positional degree 2: 3 f16 coefficients per row, nearly no signal.
    let pos = s.setting("positional:degree=2").unwrap();
    assert!(pos.mean_sqnr_db < 1.0 && pos.bits_per_weight < 1.0);
    assert!(
        s.settings
            .iter()
            .any(|x| x.on_frontier && x.family == "affine")
    );
    assert!(
        !s.settings
            .iter()
            .find(|x| x.setting == weights::POLY)
            .unwrap()
            .on_frontier
    );
    assert!(
        !s.histograms.is_empty()
            && s.histograms
                .iter()
                .all(|h| h.counts.iter().sum::<u64>() + h.below + h.above == h.count)
    );

    let tables = s.tables();
    let ids: Vec<&str> = tables.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "table_3_2",
            "table_3_2_kinds",
            "table_4_1",
            "table_4_2",
            "table_4_3",
            "table_4_4",
            "table_4_5",
            "pareto"
        ]
    );
    let t = |id: &str| tables.iter().find(|t| t.id == id).unwrap();
    // Ours, then the notes' four models.
    assert_eq!(t("table_3_2").rows.len(), 5);
    assert!(t("table_3_2").rows[0][0].starts_with("llama2xs-280K"));
    assert_eq!(t("table_3_2_kinds").rows.len(), 8);
    // Each notes setting, our three 4-bit baselines, and (4.1, 4.2) the notes' own baseline.
    assert_eq!(
        [
            t("table_4_1").rows.len(),
            t("table_4_2").rows.len(),
            t("table_4_3").rows.len(),
            t("table_4_4").rows.len()
        ],
        [8, 8, 6, 6]
    );
    assert!(
        t("table_4_1").rows[0][0].contains("positional:degree=2")
            && t("table_4_1").rows[0][7] == "384×"
    );
    assert_eq!(t("pareto").rows.len(), weights::SETTINGS.len());
    for tab in &tables {
        assert!(
            tab.rows.iter().all(|r| r.len() == tab.headers.len()),
            "{}",
            tab.id
        );
        assert!(tab.to_csv().lines().count() == tab.rows.len() + 1);
    }
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["tensors"].as_array().unwrap().len(), 36);
}

#[test]
fn large_tensors_are_row_sampled_with_full_shape_bits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    let (rows, cols) = (300usize, 64usize);
    let w: Vec<f32> = (0..rows * cols)
        .map(|i| (i as f32 * 0.7391).sin() * 0.05)
        .collect();
    let t = |name: &str, shape: Vec<usize>, v: &[f32]| OwnedTensor {
        name: name.into(),
        dtype: DType::F32,
        shape,
        data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    };
    let tensors = [
        t("big.weight", vec![rows, cols], &w),
        t("norm.weight", vec![cols], &w[..cols]),
        t("tiny.weight", vec![2, cols], &w[..2 * cols]),
    ];
    membound_tensor::write_safetensors(&path, &tensors, &[]).unwrap();
    let opts = WeightsOptions {
        settings: vec!["affine:bits=4,group=64".into(), "svd:rank=8".into()],
        sample_above: 10_000,
        sample_rows: 50,
        ..WeightsOptions::default()
    };
    let s = study(&path, "synthetic", &opts);
    assert_eq!(s.tensors.len(), 1);
    assert_eq!(s.skipped.len(), 2);
    let big = &s.tensors[0];
    assert_eq!((big.rows, big.studied_rows), (rows, 50));
    let svd = big.result("svd:rank=8").unwrap();
    // Bits for the full 300 × 64 shape: 16·8·(300 + 64) / (300·64).
    assert_eq!(
        svd.bits_per_weight_full,
        16.0 * 8.0 * 364.0 / (300.0 * 64.0)
    );
    assert_ne!(svd.bits_per_weight, svd.bits_per_weight_full);
    assert!(s.tables()[2].note.contains("50 of 300 rows"));
    // The same study twice is the same (seeded sample), timings aside.
    let again = study(&path, "synthetic", &opts);
    assert_eq!(again.tensors[0].results[1].sqnr_db, svd.sqnr_db);
}

#[test]
fn minilm_output_projections_are_heavy_tailed() {
    let Some(path) = model("minilm") else { return };
    let opts = WeightsOptions {
        settings: vec![
            weights::AFFINE_ROW.into(),
            weights::POLY.into(),
            weights::BASELINE.into(),
        ],
        only: vec!["output.dense".into(), "attention.self.query".into()],
        ..WeightsOptions::default()
    };
    let s = study(&path, "minilm", &opts);
    let (out, query): (Vec<_>, Vec<_>) = s
        .tensors
        .iter()
        .partition(|t| t.name.contains("output.dense"));
    assert_eq!((out.len(), query.len()), (12, 6));
    // The FFN output projections (384 × 1536) are far from Gaussian.
    let ffn_out: Vec<_> = out.iter().filter(|t| t.cols == 1536).collect();
    assert_eq!(ffn_out.len(), 6);
    assert!(
        ffn_out.iter().all(|t| t.excess_kurtosis > 3.0),
        "{:?}",
        ffn_out
            .iter()
            .map(|t| t.excess_kurtosis)
            .collect::<Vec<_>>()
    );
    assert!(query.iter().all(|t| t.excess_kurtosis < 3.0));
}

#[test]
fn smollm2_q4_1_layer_is_studied_as_dequantized() {
    let Some(path) = model("smollm2") else { return };
    let opts = WeightsOptions {
        settings: vec![
            "affine:bits=4,group=32".into(),
            weights::BASELINE.into(),
            weights::POLY.into(),
        ],
        only: vec!["blk.0.".into()],
        ..WeightsOptions::default()
    };
    let s = study(&path, "smollm2", &opts);
    assert_eq!(s.tensors.len(), 7);
    assert!(s.tensors.iter().all(|t| t.dtype == "Q4_1"));
    // Re-quantizing 4-bit weights: the g32 grid sees at most 16 distinct
    // values per group, but MLX's zero-exact grid is not Q4_1's.
    let g32 = s.setting("affine:bits=4,group=32").unwrap();
    assert!(
        g32.mean_sqnr_db > 18.0 && g32.mean_sqnr_db.is_finite(),
        "{g32:?}"
    );
    let src = membound_tensor::open(&path).unwrap();
    assert!(
        src.tensors()
            .iter()
            .any(|t| t.name() == "token_embd.weight")
    );
}
