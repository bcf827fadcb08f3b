//! `membound generate`, `eval`, `chat` and `demo` through the built binary,
//! on the llama2xs-280K fixture (fast on the CPU).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use membound_tensor::registry;
use serde_json::Value;

fn llama2xs() -> Option<PathBuf> {
    let found = registry::fixture("llama2xs-280K").map(|(m, _)| m);
    if found.is_none() {
        assert!(
            std::env::var("MEMBOUND_REQUIRE_MODELS").as_deref() != Ok("1"),
            "llama2xs-280K is missing and MEMBOUND_REQUIRE_MODELS=1"
        );
        eprintln!("SKIPPED: llama2xs-280K is missing (../shared/models)");
    }
    found
}

fn membound(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_membound"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn generate_json_on_cpu() {
    let Some(path) = llama2xs() else { return };
    let p = path.to_str().unwrap();
    let args = [
        "generate",
        "--model",
        p,
        "--device",
        "cpu",
        "--weights",
        "f32",
        "--max-tokens",
        "20",
        "--json",
    ];
    let (code, out, err) = membound(&args, None);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let text = v["text"].as_str().unwrap();
    assert!(
        text.starts_with("Once upon a time, there was a little girl named Lily."),
        "{text:?}"
    );
    assert_eq!(v["tokens"].as_array().unwrap().len(), 20);
    assert_eq!(v["prompt_ids"], serde_json::json!([1]));
    let s = &v["stats"];
    assert_eq!(s["generated_tokens"], 20);
    assert_eq!(s["decode_steps"], 19);
    assert_eq!(s["greedy"], true);
    assert_eq!(s["stop"], "max_tokens");
    assert!(s["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(s["bytes_read_per_token"].as_u64().unwrap() > 1_000_000);
    assert!(s["effective_gbps"].as_f64().unwrap() > 0.0);
    assert!(s["peak_gbps"].is_null());
    assert_eq!(
        s["weights"],
        "f32 ×20 matrices, f32 classifier, f32 embedding"
    );
    assert_eq!(v["engine"]["device"], "cpu");
}

/// The GPU path end to end, with a mixed plan whose summary names both modes.
#[test]
fn generate_json_on_gpu_with_a_mixed_plan() {
    let Some(path) = llama2xs() else { return };
    let args = [
        "generate",
        "--model",
        path.to_str().unwrap(),
        "--max-tokens",
        "8",
        "--weights",
        "affine:bits=8,group=32",
        "--classifier",
        "f16",
        "--override",
        "layers.0.*=f32",
        "--json",
    ];
    let (code, out, err) = membound(&args, None);
    if code != 0
        && err.contains("no GPU adapter")
        && std::env::var("MEMBOUND_SKIP_GPU").as_deref() == Ok("1")
    {
        eprintln!("SKIPPED (MEMBOUND_SKIP_GPU=1): {err}");
        return;
    }
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["stats"]["weights"],
        "affine:bits=8,group=32,scale=f16 ×16 matrices, f32 ×4 matrices, f16 classifier, f16 embedding"
    );
    assert!(v["engine"]["adapter"].is_string());
    assert_eq!(v["tokens"].as_array().unwrap().len(), 8);
}

#[test]
fn eval_json_against_dense() {
    let Some(_) = llama2xs() else { return };
    let args = [
        "eval",
        "--model",
        "llama2xs-280K",
        "--weights",
        "affine:bits=4,group=64",
        "--device",
        "cpu",
        "--max-tokens",
        "64",
        "--json",
    ];
    let (code, out, err) = membound(&args, None);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let r = &v["report"];
    assert_eq!(r["tokens"], 64);
    let kl = r["kl"].as_f64().unwrap();
    assert!(kl > 0.0 && kl < 5.0, "{kl}");
    let agree = r["top1_agreement"].as_f64().unwrap();
    assert!(agree > 0.0 && agree <= 1.0, "{agree}");
    assert!(r["perplexity"].as_f64().unwrap() > 1.0);
    assert!(v["reference"].as_str().unwrap().contains("CPU"));
}

#[test]
fn bad_spec_is_named() {
    for (flag, spec) in [
        ("--weights", "affine:bits=17"),
        ("--classifier", "bogus"),
        ("--weights", "svd:rank=8"),
    ] {
        let (code, _, err) = membound(
            &[
                "generate",
                "--model",
                "llama2xs-280K",
                "--device",
                "cpu",
                flag,
                spec,
                "--prompt",
                "x",
            ],
            None,
        );
        assert_ne!(code, 0);
        assert!(err.contains(spec), "{flag} {spec}: {err}");
    }
    let (code, _, err) = membound(&["eval", "--override", "nonsense", "--device", "cpu"], None);
    assert_ne!(code, 0);
    assert!(err.contains("PATTERN=SPEC"), "{err}");
}

#[test]
fn unknown_model_and_device_are_explained() {
    let (code, _, err) = membound(
        &["generate", "--model", "nosuchmodel", "--device", "cpu"],
        None,
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("nosuchmodel") && err.contains("known models"),
        "{err}"
    );
    let (code, _, err) = membound(&["generate", "--device", "tpu"], None);
    assert_ne!(code, 0);
    assert!(err.contains("tpu"), "{err}");
}

#[test]
fn prompt_past_the_context_is_refused() {
    let Some(_) = llama2xs() else { return };
    let prompt = "Once upon a time there was a dog. ".repeat(10);
    let args = [
        "generate",
        "--model",
        "llama2xs-280K",
        "--device",
        "cpu",
        "--context",
        "16",
        "--prompt",
        &prompt,
    ];
    let (code, _, err) = membound(&args, None);
    assert_ne!(code, 0);
    assert!(err.contains("context of 16"), "{err}");
}

/// Chat in JSON mode: one reply per line, the cache reused on turn two,
/// `/reset` acknowledged.
#[test]
fn chat_json_reuses_the_cache() {
    let Some(_) = llama2xs() else { return };
    let args = [
        "chat",
        "--model",
        "llama2xs-280K",
        "--device",
        "cpu",
        "--max-tokens",
        "8",
        "--json",
    ];
    let (code, out, err) = membound(&args, Some("Hello\nTell me more\n/reset\nHi\n"));
    assert_eq!(code, 0, "{err}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[0]["reply"].is_string());
    assert_eq!(lines[0]["cached_tokens"], 0);
    assert!(
        lines[1]["cached_tokens"].as_u64().unwrap() > 10,
        "{}",
        lines[1]
    );
    assert_eq!(lines[2]["reset"], true);
    assert_eq!(lines[3]["cached_tokens"], 0);
}

#[test]
fn help_teaches() {
    for cmd in ["generate", "chat", "eval", "demo"] {
        let (code, out, _) = membound(&[cmd, "--help"], None);
        assert_eq!(code, 0);
        assert!(out.contains("Examples:"), "{cmd}: {out}");
        assert!(out.contains(&format!("membound {cmd}")), "{cmd}");
        assert!(out.contains("--json"), "{cmd}");
    }
}

/// The demo's three sections on the small fixture, on the CPU (no profile).
#[test]
fn demo_json_on_the_cpu() {
    let Some(_) = llama2xs() else { return };
    let args = [
        "demo",
        "--model",
        "llama2xs-280K",
        "--device",
        "cpu",
        "--max-tokens",
        "6",
        "--kl-tokens",
        "32",
        "--json",
    ];
    let (code, out, err) = membound(&args, None);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["compression"].as_array().unwrap().len(), 12);
    let bytes = v["bytes_per_token"].as_array().unwrap();
    assert!(bytes[2]["bytes_per_token"].as_u64() < bytes[1]["bytes_per_token"].as_u64());
    let gens = v["generation"].as_array().unwrap();
    assert_eq!(gens.len(), 2);
    assert_eq!(gens[0]["tokens"].as_array().unwrap().len(), 6);
    assert_eq!(v["kl"]["tokens"], 32);
    assert!(v["kl"]["kl"].as_f64().unwrap() > 0.0);
    assert!(v["profile"].as_array().unwrap().is_empty());
}

/// With no GPU adapter at all (Vulkan pointed at a missing driver), the
/// demo says so and runs on the CPU instead of failing.
#[test]
fn demo_falls_back_to_the_cpu_without_an_adapter() {
    let Some(model) = llama2xs() else { return };
    let out = Command::new(env!("CARGO_BIN_EXE_membound"))
        .args([
            "demo",
            "--model",
            model.to_str().unwrap(),
            "--kl-tokens",
            "16",
            "--max-tokens",
            "4",
            "--profile-reps",
            "0",
            "--json",
        ])
        .env("VK_DRIVER_FILES", "/nonexistent")
        .env("VK_ICD_FILENAMES", "/nonexistent")
        .env("MEMBOUND_GPU_BACKEND", "vulkan")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["device"], "cpu", "{stderr}");
}
