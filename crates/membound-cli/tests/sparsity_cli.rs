//! `membound sparsity` and the sparsity flags of `eval` through the built
//! binary, on the llama2xs-280K fixture.

use std::process::Command;

use membound_tensor::registry;
use serde_json::Value;

fn have_llama2xs() -> bool {
    if registry::fixture("llama2xs-280K").is_some() {
        return true;
    }
    assert!(
        std::env::var("MEMBOUND_REQUIRE_MODELS").as_deref() != Ok("1"),
        "llama2xs-280K is missing and MEMBOUND_REQUIRE_MODELS=1"
    );
    eprintln!("SKIPPED: llama2xs-280K is missing (../shared/models)");
    false
}

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

#[test]
fn sparsity_json_smoke() {
    if !have_llama2xs() {
        return;
    }
    let (code, out, err) = membound(&["sparsity", "llama2xs-280K", "--tokens", "32", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["tokens"], 32);
    let rows = v["rows"].as_array().unwrap();
    // 5 layers × 4 sites.
    assert_eq!(rows.len(), 20);
    for r in rows {
        assert_eq!(r["count"].as_u64().unwrap() % 32, 0);
        let z = r["exact_zero_share"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&z));
        for pair in r["abs"].as_array().unwrap() {
            assert!((0.0..=1.0).contains(&pair[1].as_f64().unwrap()));
        }
    }
    assert_eq!(v["per_site"].as_array().unwrap().len(), 4);
}

/// `--plot DIR` writes the histogram and per-layer plots as whole SVGs
/// (rendered first, then renamed into place: no temporary file is left).
#[test]
fn sparsity_plots() {
    if !have_llama2xs() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = membound(&[
        "sparsity",
        "llama2xs-280K",
        "--tokens",
        "16",
        "--plot",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    for n in &names {
        assert!(
            n.starts_with("sparsity-") && n.ends_with(".svg"),
            "{names:?}"
        );
        let svg = std::fs::read_to_string(dir.path().join(n)).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{n}"
        );
        assert!(svg.contains("<text"), "{n} has no labels");
    }
}

#[test]
fn sidecar_written_and_applied() {
    if !have_llama2xs() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let side = dir.path().join("t.json");
    let s = side.to_str().unwrap();
    let (code, _, err) = membound(&[
        "sparsity",
        "llama2xs-280K",
        "--tokens",
        "64",
        "--calibrate",
        "0.5",
        "-o",
        s,
    ]);
    assert_eq!(code, 0, "{err}");
    // Not overwritten without --force.
    let (code, _, err) = membound(&[
        "sparsity",
        "llama2xs-280K",
        "--tokens",
        "64",
        "--calibrate",
        "0.5",
        "-o",
        s,
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("--force"), "{err}");
    let (code, out, err) = membound(&[
        "eval",
        "-m",
        "llama2xs-280K",
        "--device",
        "cpu",
        "--weights",
        "f32",
        "--thresholds",
        s,
        "--max-tokens",
        "64",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let a = v["sparsity"]["achieved"].as_f64().unwrap();
    assert!((0.4..0.6).contains(&a), "{a}");
    // The GPU path takes only what its sparse down kernels store (f16 or
    // 4-bit affine), and says so (or that no GPU opened).
    let (code, _, err) = membound(&[
        "eval",
        "-m",
        "llama2xs-280K",
        "--weights",
        "f32",
        "--sparsity",
        "0.5",
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("sparse decoding on the GPU") || err.contains("opening the GPU"),
        "{err}"
    );
    // Thresholds at every site run on the GPU (f16 sparse kernels),
    // where an adapter opens; a key past the model's layers is refused.
    let mut t = serde_json::Map::new();
    for l in 0..5 {
        t.insert(format!("layers.{l}.qkv"), 0.05.into());
        t.insert(format!("layers.{l}.o"), 0.01.into());
        t.insert(format!("layers.{l}.gate_up"), 0.05.into());
        t.insert(format!("layers.{l}.down"), 0.02.into());
    }
    let doc =
        serde_json::json!({"model": "m", "target": 0.3, "method": "uniform", "thresholds": t});
    std::fs::write(&side, doc.to_string()).unwrap();
    let (code, out, err) = membound(&[
        "eval",
        "-m",
        "llama2xs-280K",
        "--weights",
        "f16",
        "--thresholds",
        s,
        "--max-tokens",
        "16",
        "--json",
    ]);
    if err.contains("opening the GPU") {
        eprintln!("SKIPPED the GPU part: {err}");
    } else {
        assert_eq!(code, 0, "{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["sparsity"]["device"], "gpu", "{out}");
        let mut doc = doc;
        doc["thresholds"]["layers.7.down"] = 0.1.into();
        std::fs::write(&side, doc.to_string()).unwrap();
        let (code, _, err) = membound(&[
            "eval",
            "-m",
            "llama2xs-280K",
            "--weights",
            "f16",
            "--thresholds",
            s,
        ]);
        assert_ne!(code, 0);
        assert!(
            err.contains("layers.7.down") && err.contains("5-layer model"),
            "{err}"
        );
    }
    // A bad sidecar is an error, not a panic.
    std::fs::write(
        &side,
        r#"{"model":"m","target":0.5,"method":"uniform","thresholds":{"layers.0.down":-1}}"#,
    )
    .unwrap();
    let (code, _, err) = membound(&[
        "eval",
        "-m",
        "llama2xs-280K",
        "--device",
        "cpu",
        "--thresholds",
        s,
        "--max-tokens",
        "8",
    ]);
    assert_eq!(code, 1);
    assert!(err.starts_with("error:") && err.contains("≥ 0"), "{err}");
}
