//! `membound bench decode` through the built binary on whatever adapter
//! exists (llvmpipe in CI): the report's fields and their arithmetic, the
//! sparse and KV-cache cases, and clear errors. Speeds on a software
//! adapter mean nothing; the shape of the report is what is tested.

use std::process::Command;

use membound_tensor::registry;
use serde_json::Value;

fn membound(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_membound"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn skip_gpu(stderr: &str) -> bool {
    let no_adapter = stderr.contains("no GPU adapter") || stderr.contains("No adapter");
    if no_adapter && std::env::var("MEMBOUND_SKIP_GPU").as_deref() == Ok("1") {
        println!("SKIPPED (MEMBOUND_SKIP_GPU=1): {stderr}");
        return true;
    }
    false
}

#[test]
fn decode_report_on_a_real_model_with_sparse_and_quantized_cache() {
    let Some((path, _)) = registry::fixture("llama2xs-280K") else {
        assert!(
            std::env::var("MEMBOUND_REQUIRE_MODELS").as_deref() != Ok("1"),
            "llama2xs-280K missing"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("decode.json");
    let (code, _, err) = membound(&[
        "bench",
        "decode",
        "--model",
        path.to_str().unwrap(),
        "--weights",
        "f16",
        "--weights",
        "affine:bits=4,group=32",
        "--sparsity",
        "0.5",
        "--kv-cache",
        "q8",
        "--tokens",
        "3",
        "--warm-up",
        "1",
        "--profile-reps",
        "1",
        "--peak-gbps",
        "100",
        "--json",
        json.to_str().unwrap(),
    ]);
    if skip_gpu(&err) {
        return;
    }
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "dense and sparse for each of two specs");
    for (i, r) in rows.iter().enumerate() {
        let tps = r["tokens_per_s"].as_f64().unwrap();
        let ms = r["ms_per_token"].as_f64().unwrap();
        assert!((tps * ms - 1000.0).abs() < 1e-6 * tps * ms);
        // The GPU-resident rerun chose the same tokens (else the command
        // fails) and reports its own rate.
        let rms = r["resident_ms_per_token"].as_f64().unwrap();
        let rtps = r["resident_tokens_per_s"].as_f64().unwrap();
        assert!(rms > 0.0 && (rtps * rms - 1000.0).abs() < 1e-6 * rtps * rms);
        let bytes = r["weight_bytes"].as_f64().unwrap();
        assert!((r["effective_gbps"].as_f64().unwrap() - bytes * tps / 1e9).abs() < 1e-9);
        let roofline = r["roofline_tokens_per_s"].as_f64().unwrap();
        assert!((roofline - 100e9 / bytes).abs() < 1e-6 * roofline);
        assert_eq!(r["kv_cache"], "q8");
        let sparse = i % 2 == 1;
        assert_eq!(r["sparsity"].is_null(), !sparse);
        if sparse {
            let got = r["achieved_sparsity"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&got));
            assert!(r["speedup_vs_dense"].as_f64().unwrap() > 0.0);
        }
        // Every row gets the floor of its weight reads (a sparse row's: what
        // its last token read).
        let floor = r["floor_ms_per_token"].as_f64().unwrap();
        assert!(floor > 0.0, "{r}");
        let f = r["floor_fraction"].as_f64().unwrap();
        assert!((f - floor / ms).abs() <= 1e-9 * f, "{r}");
        let rf = r["resident_floor_fraction"].as_f64().unwrap();
        assert!((rf - floor / rms).abs() <= 1e-9 * rf, "{r}");
        assert!(r["split"]["dispatches"].as_u64().unwrap() > 0);
    }
    // 4-bit stores fewer bytes than f16.
    assert!(rows[2]["weight_bytes"].as_u64() < rows[0]["weight_bytes"].as_u64());
}

#[test]
fn bad_decode_requests_are_clear_errors() {
    let (code, _, err) = membound(&["bench", "decode", "--synthetic", "llama-70b"]);
    assert_ne!(code, 0);
    assert!(err.contains("llama-70b") || skip_gpu(&err), "{err}");
    let (code, _, err) = membound(&[
        "bench",
        "decode",
        "--synthetic",
        "llama-1b",
        "--weights",
        "svd:rank=4",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("no GPU kernel"), "{err}");
    let (code, _, err) = membound(&[
        "bench",
        "decode",
        "--kv-cache",
        "q3",
        "--synthetic",
        "llama-1b",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("q3") || skip_gpu(&err), "{err}");
}

/// `--bound` adds, after each spec's sparse row, the zero-overhead bound:
/// the sparse sites (here the down projections; every site is covered by
/// `gpu_decode.rs`) dense over half their inputs (SmolLM2's hidden 1536 →
/// 768), so it reads exactly the bytes of the inputs it drops fewer, and
/// is set against the dense row. It needs a synthetic model and a
/// sparsity.
#[test]
fn zero_overhead_bound_row() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("decode.json");
    let (code, out, err) = membound(&[
        "bench",
        "decode",
        "--synthetic",
        "smollm2-135m",
        "--weights",
        "f16",
        "--sparsity",
        "0.5",
        "--bound",
        "--tokens",
        "2",
        "--warm-up",
        "1",
        "--profile-reps",
        "0",
        "--no-floor",
        "--json",
        json.to_str().unwrap(),
    ]);
    if skip_gpu(&err) {
        return;
    }
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("zero-overhead bound"), "{out}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "dense, sparse, bound");
    let flags: Vec<bool> = rows
        .iter()
        .map(|r| r["zero_overhead_bound"].as_bool().unwrap())
        .collect();
    assert_eq!(flags, [false, false, true]);
    let (dense, bound) = (&rows[0], &rows[2]);
    assert_eq!(bound["sparsity"].as_f64(), Some(0.5));
    // 30 layers of f16 down projections (576 rows) lose 768 of 1536 inputs.
    let dropped = 30 * 2 * 576 * 768;
    assert_eq!(
        dense["weight_bytes"].as_u64().unwrap() - bound["weight_bytes"].as_u64().unwrap(),
        dropped
    );
    let tps = |r: &Value| r["tokens_per_s"].as_f64().unwrap();
    let x = bound["speedup_vs_dense"].as_f64().unwrap();
    assert!((x - tps(bound) / tps(dense)).abs() < 1e-9 * x);
    let rtps = |r: &Value| r["resident_tokens_per_s"].as_f64().unwrap();
    let rx = bound["resident_speedup_vs_dense"].as_f64().unwrap();
    assert!((rx - rtps(bound) / rtps(dense)).abs() < 1e-9 * rx);
    // Its tokens mean nothing: no sparse statistics.
    assert!(bound["achieved_sparsity"].is_null());

    // Only with a sparsity, and only on a synthetic model.
    let (code, _, err) = membound(&["bench", "decode", "--synthetic", "llama-1b", "--bound"]);
    assert_ne!(code, 0);
    assert!(err.contains("--sparsity"), "{err}");
    let (code, _, err) = membound(&[
        "bench",
        "decode",
        "--model",
        "smollm2",
        "--sparsity",
        "0.5",
        "--bound",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("--synthetic"), "{err}");
}

/// `--from` reads reports written by `--json` (here the H100 runs in
/// docs/data, one per sparsity) without a GPU, prints them as one table,
/// and `--plot` draws their sparse and bound rows against sparsity.
#[test]
fn reports_are_read_back_and_plotted() {
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/data");
    let report = |name: &str| data.join(name).to_str().unwrap().to_owned();
    let (s50, s70) = (
        report("decode-llama8b-bound-50-h100.json"),
        report("decode-llama8b-bound-70-h100.json"),
    );
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("sparsity.svg");
    let json = dir.path().join("both.json");
    let args = [
        "bench",
        "decode",
        "--from",
        &s50,
        "--from",
        &s70,
        "--plot",
        svg.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ];
    let (code, out, err) = membound(&args);
    assert_eq!(code, 0, "{err}");
    // Each report: f16 and 4-bit, each dense, sparse and bound.
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 12);
    assert_eq!(v["adapter"], "NVIDIA H100 80GB HBM3");
    // The rows are the files' own, in order: the first f16 bound at 50 %
    // is what the file says.
    let file: Value = serde_json::from_str(&std::fs::read_to_string(&s50).unwrap()).unwrap();
    assert_eq!(rows[2], file["rows"][2]);
    assert_eq!(rows[2]["zero_overhead_bound"], true);
    assert!(
        out.contains("f16 zero-overhead bound: 1.62× dense tokens/s (1.66× resident)"),
        "{out}"
    );
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg"));
    for label in [
        "f16: sparse kernels",
        "f16: zero-overhead bound",
        "affine:bits=4,group=64: zero-overhead bound",
        "research notes",
    ] {
        assert!(text.contains(label), "{label} missing from the plot");
    }

    // A report with no sparse row has nothing to plot; a file that is not
    // a decode report says so; an existing plot is replaced only whole.
    let dense_only = report("decode-llama8b-4k-f16-h100.json");
    let (code, _, err) = membound(&[
        "bench",
        "decode",
        "--from",
        &dense_only,
        "--plot",
        svg.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("no sparse or bound row"), "{err}");
    assert_eq!(std::fs::read_to_string(&svg).unwrap(), text);
    let torch = report("decode-torch-llama8b-h100.json");
    let (code, _, err) = membound(&["bench", "decode", "--from", &torch]);
    assert_ne!(code, 0);
    assert!(
        err.contains("not a `membound bench decode --json` report"),
        "{err}"
    );
    let (code, _, err) = membound(&["bench", "decode", "--from", &s50, "--synthetic", "llama-8b"]);
    assert_ne!(code, 0);
    assert!(err.contains("cannot be used with"), "{err}");
}
