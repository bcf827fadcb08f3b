//! The `membound` binary on the real models: inspect prints correct shapes
//! and statistics, convert reproduces ggml's dequantization exactly.

use std::path::{Path, PathBuf};
use std::process::Command;

use membound_tensor::registry::{self, MINILM, SMOLLM2};
use membound_tensor::{DType, SafetensorsFile, TensorSource};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn required() -> bool {
    std::env::var("MEMBOUND_REQUIRE_MODELS").is_ok_and(|v| v == "1")
}

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
        eprintln!("SKIPPED: {name} is missing (run `membound models fetch`)");
    }
    found
}

fn membound(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_membound"))
        .args(args)
        .output()
        .unwrap();
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    (out.status.code().unwrap_or(-1), o, e)
}

fn inspect_json(path: &Path) -> Value {
    let (code, out, err) = membound(&["inspect", path.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

fn tensor<'a>(json: &'a Value, name: &str) -> &'a Value {
    json["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no {name}"))
}

/// Mean and population std in f64, two-pass: the reference for the CLI's
/// streaming moments.
fn mean_std(v: &[f32]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    let var = v
        .iter()
        .map(|&x| (f64::from(x) - mean).powi(2))
        .sum::<f64>()
        / n;
    (mean, var.sqrt())
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1e-6)
}

#[test]
fn inspect_llama2c_fixtures() {
    for (name, dim, vocab, n) in [
        ("llama2xs-280K", 64usize, 512usize, 279_232u64),
        ("babyllama105", 128, 105, 936_448),
    ] {
        let Some(path) = model(name) else { continue };
        let j = inspect_json(&path);
        assert_eq!(j["format"], "llama2c");
        assert_eq!(j["summary"]["parameters"], n);
        assert_eq!(j["tensors"].as_array().unwrap().len(), 47);
        let emb = tensor(&j, "model.embed_tokens.weight");
        assert_eq!(emb["shape"], serde_json::json!([vocab, dim]));
        // Independent statistics straight from the file's bytes.
        let raw = std::fs::read(&path).unwrap();
        let vals: Vec<f32> = raw[28..28 + vocab * dim * 4]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let (mean, std) = mean_std(&vals);
        assert!(
            close(emb["mean"].as_f64().unwrap(), mean),
            "{} vs {mean}",
            emb["mean"]
        );
        assert!(close(emb["std"].as_f64().unwrap(), std));
        assert!(emb["excess_kurtosis"].as_f64().unwrap().is_finite());
    }
}

#[test]
fn inspect_minilm() {
    let Some(path) = model("minilm") else { return };
    let j = inspect_json(&path);
    assert_eq!(j["format"], "safetensors");
    assert_eq!(j["tensors"].as_array().unwrap().len(), 104);
    let w = tensor(&j, "encoder.layer.0.attention.self.query.weight");
    assert_eq!(w["shape"], serde_json::json!([384, 384]));
    let f = SafetensorsFile::open(&path).unwrap();
    let v = f
        .tensor("encoder.layer.0.attention.self.query.weight")
        .unwrap()
        .to_f32()
        .unwrap();
    let (mean, std) = mean_std(&v);
    assert!(close(w["mean"].as_f64().unwrap(), mean));
    assert!(close(w["std"].as_f64().unwrap(), std));
}

#[test]
fn inspect_smollm2_summary_and_stats() {
    let Some(path) = model("smollm2") else { return };
    let j = inspect_json(&path);
    let s = &j["summary"];
    assert_eq!(s["architecture"], "llama");
    assert_eq!(s["block count"], 30);
    assert_eq!(s["embedding length"], 576);
    assert_eq!(s["kv heads"], 3);
    assert_eq!(s["vocab size"], 49152);
    assert_eq!(s["tokenizer"], "byte-level BPE (gpt2)");
    assert_eq!(j["tensors"].as_array().unwrap().len(), 272);
    // Means against the gguf-py reference sums (scripts/gen_smollm2_refs.py).
    let refs: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../membound-tensor/tests/data/smollm2_f32_sha256.json"
        ))
        .unwrap(),
    )
    .unwrap();
    for name in [
        "token_embd.weight",
        "blk.0.attn_q.weight",
        "blk.29.ffn_down.weight",
        "output_norm.weight",
    ] {
        let t = tensor(&j, name);
        let n: u64 = t["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .product();
        let want = refs[name]["sum"].as_f64().unwrap() / n as f64;
        let got = t["mean"].as_f64().unwrap();
        assert!(
            (got - want).abs() <= 1e-6 * want.abs().max(1e-3),
            "{name}: {got} vs {want}"
        );
    }
    // The table form names the same facts.
    let (code, out, _) = membound(&["inspect", path.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        out.contains("blk.0.attn_q.weight") && out.contains("Q4_1") && out.contains("[576, 576]")
    );
}

/// `membound convert` of SmolLM2 writes, for every tensor, exactly the f32
/// values of ggml's dequantization (hashes from the gguf Python package).
#[test]
fn convert_smollm2_matches_ggml_dequantization() {
    let Some(path) = model("smollm2") else { return };
    let refs: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../membound-tensor/tests/data/smollm2_f32_sha256.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("smollm2.safetensors");
    let (code, _, err) = membound(&[
        "convert",
        path.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let f = SafetensorsFile::open(&out).unwrap();
    let tensors = f.tensors();
    assert_eq!(tensors.len(), 272);
    for t in tensors {
        assert_eq!(t.dtype(), DType::F32);
        let digest: String = Sha256::digest(t.data())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            digest,
            refs[t.name()]["sha256"].as_str().unwrap(),
            "{}",
            t.name()
        );
    }
    let meta = f.string_metadata();
    let get = |k: &str| {
        meta.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("general.architecture"), Some("llama"));
    assert_eq!(get("membound.source_format"), Some("GGUF"));
    assert_eq!(get("llama.block_count"), Some("30"));
}

#[test]
fn convert_llama2c_to_f16_with_hf_names() {
    let Some(path) = model("llama2xs-280K") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("xs.safetensors");
    let (code, _, err) = membound(&[
        "convert",
        path.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--dtype",
        "f16",
    ]);
    assert_eq!(code, 0, "{err}");
    let src = membound_tensor::open(&path).unwrap();
    let f = SafetensorsFile::open(&out).unwrap();
    assert_eq!(f.tensors().len(), 47);
    for t in src.tensors() {
        let c = f.tensor(t.name()).unwrap();
        assert_eq!(c.dtype(), DType::F16);
        assert_eq!(c.shape(), t.shape());
        let want: Vec<u8> = t
            .to_f32()
            .unwrap()
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect();
        assert_eq!(c.data(), &want[..], "{}", t.name());
    }
    let meta = f.string_metadata();
    assert!(
        meta.iter()
            .any(|(k, v)| k == "rope.layout" && v == "interleaved")
    );
}

#[test]
fn help_teaches() {
    let (code, out, _) = membound(&["inspect", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("Examples:") && out.contains("--json"));
    let (code, out, _) = membound(&["convert", "--help"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("--dtype") && out.contains("renamed into place"),
        "{out}"
    );
}

/// `bench kernels --quick` runs on whatever adapter exists (llvmpipe in CI)
/// and writes a JSON report whose figures are consistent with each other.
#[test]
fn bench_kernels_quick_json() {
    if std::env::var("MEMBOUND_SKIP_GPU").as_deref() == Ok("1") {
        eprintln!("SKIPPED: MEMBOUND_SKIP_GPU=1");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let plot = dir.path().join("kernels.svg");
    let (code, out, err) = membound(&[
        "bench",
        "kernels",
        "--quick",
        "--shapes",
        "64x96",
        "--json",
        json.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("× dense f16"), "{out}");
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("floor: a plain read") && svg.contains("sparse-f16"));
    // --from re-reads the report without measuring: the same table.
    let (code, again, err) = membound(&["bench", "kernels", "--from", json.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let table = |o: &str| {
        o.lines()
            .filter(|l| l.contains('│'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(table(&again), table(&out));
    let (code, _, err) = membound(&["bench", "kernels", "--from", plot.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        err.contains("not a `membound bench kernels --json` report"),
        "{err}"
    );
    // A plot into a folder that does not exist fails before measuring.
    let (code, _, err) = membound(&[
        "bench",
        "kernels",
        "--quick",
        "--plot",
        dir.path().join("no/such/k.svg").to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("does not exist"), "{err}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = r["rows"].as_array().unwrap();
    assert!(!rows.is_empty());
    for row in rows {
        let (us, bytes, gbps) = (
            row["median_us"].as_f64().unwrap(),
            row["bytes_read"].as_f64().unwrap(),
            row["gbps"].as_f64().unwrap(),
        );
        assert!(us > 0.0 && bytes > 0.0);
        assert!((bytes / (us * 1e-6) / 1e9 - gbps).abs() <= 1e-6 * gbps);
    }
    let f16 = rows.iter().find(|r| r["weights"] == "f16").unwrap();
    assert!((f16["speedup_vs_dense_f16"].as_f64().unwrap() - 1.0).abs() < 1e-9);
    // Every case is set against the streaming-read floor of its bytes,
    // measured once per byte count and number of copies.
    assert!(out.contains("% floor"), "{out}");
    let f16_us = f16["median_us"].as_f64().unwrap();
    let mut floors = std::collections::HashMap::new();
    for row in rows {
        let (us, floor) = (
            row["median_us"].as_f64().unwrap(),
            row["floor_us"].as_f64().unwrap(),
        );
        assert!(floor > 0.0, "{row}");
        assert!((row["floor_fraction"].as_f64().unwrap() - floor / us).abs() <= 1e-9 * floor / us);
        let best = row["floor_speedup_vs_dense_f16"].as_f64().unwrap();
        assert!((best - f16_us / floor).abs() <= 1e-9 * best, "{row}");
        let key = (
            row["bytes_read"].as_u64().unwrap(),
            row["copies"].as_u64().unwrap(),
        );
        assert_eq!(*floors.entry(key).or_insert(floor), floor, "{row}");
    }
}

/// `bench kernels --launch` tunes the affine kernels' launch shape (and
/// rejects shapes the kernel cannot run), and `MEMBOUND_SHADER_DIR` swaps in
/// WGSL from a folder at run time: a copy of the real shader runs, a broken
/// one fails with an error naming the file.
#[test]
fn bench_kernels_launch_and_shader_dir() {
    if std::env::var("MEMBOUND_SKIP_GPU").as_deref() == Ok("1") {
        eprintln!("SKIPPED: MEMBOUND_SKIP_GPU=1");
        return;
    }
    let base = [
        "bench",
        "kernels",
        "--quick",
        "--shapes",
        "40x96",
        "--weights",
        "affine4",
    ];
    let run = |extra: &[&str], shader_dir: Option<&Path>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_membound"));
        cmd.args(base).args(extra);
        match shader_dir {
            Some(d) => cmd.env("MEMBOUND_SHADER_DIR", d),
            None => cmd.env_remove("MEMBOUND_SHADER_DIR"),
        };
        let out = cmd.output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&["--launch", "4,64,1", "--no-floor", "--json", "-"], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("affine4-g64"), "{out}");
    let json: Value = serde_json::from_str(&out[out.find("{\n").unwrap()..]).unwrap();
    assert!(json["rows"][0]["floor_us"].is_null(), "--no-floor: {out}");
    let (code, _, err) = run(&["--launch", "3,64,1"], None);
    assert_ne!(code, 0);
    assert!(err.contains("4 or 8"), "{err}");
    let (code, _, err) = run(&["--launch", "8x128"], None);
    assert_ne!(code, 0);
    assert!(err.contains("ROWS,THREADS,WORDS"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let shader = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shaders/gemv_affine.wgsl");
    let text = std::fs::read_to_string(shader).unwrap();
    std::fs::write(dir.path().join("gemv_affine.wgsl"), &text).unwrap();
    let (code, _, err) = run(&[], Some(dir.path()));
    assert_eq!(code, 0, "{err}");
    std::fs::write(
        dir.path().join("gemv_affine.wgsl"),
        text.replace("fn fold(", "fn fold(!"),
    )
    .unwrap();
    let (code, _, err) = run(&[], Some(dir.path()));
    assert_ne!(code, 0);
    assert!(err.contains("gemv_affine.wgsl"), "{err}");
}
