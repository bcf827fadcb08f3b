//! The `membound` binary on malformed inputs: a clean `error:` line naming
//! the file and exit code 1, never a panic (101) or success; and `convert`
//! never overwriting its input or an existing file without `--force`.

#![allow(missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

// ---------------------------------------------------------------------------
// Small byte builders (kept local: the tensor crate's tests have their own)
// ---------------------------------------------------------------------------

/// A GGUF v3 file: `general.architecture = "llama"` and one F32 tensor
/// `w` of 8 elements (0..8), data aligned to 32 bytes.
fn gguf() -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes()); // tensors
    b.extend_from_slice(&1u64.to_le_bytes()); // key/value pairs
    let key = b"general.architecture";
    b.extend_from_slice(&(key.len() as u64).to_le_bytes());
    b.extend_from_slice(key);
    b.extend_from_slice(&8u32.to_le_bytes()); // string
    b.extend_from_slice(&5u64.to_le_bytes());
    b.extend_from_slice(b"llama");
    b.extend_from_slice(&1u64.to_le_bytes());
    b.extend_from_slice(b"w");
    b.extend_from_slice(&1u32.to_le_bytes()); // dims
    b.extend_from_slice(&8u64.to_le_bytes()); // ne[0]
    b.extend_from_slice(&0u32.to_le_bytes()); // F32
    b.extend_from_slice(&0u64.to_le_bytes()); // offset
    b.resize(b.len().next_multiple_of(32), 0);
    for i in 0..8 {
        b.extend_from_slice(&(i as f32).to_le_bytes());
    }
    b
}

/// A GGUF v3 file with one empty F32 tensor `z` whose ggml `ne` is given
/// (innermost first).
fn gguf_empty_tensor(ne: &[u64]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes()); // tensors
    b.extend_from_slice(&0u64.to_le_bytes()); // key/value pairs
    b.extend_from_slice(&1u64.to_le_bytes());
    b.extend_from_slice(b"z");
    b.extend_from_slice(&(ne.len() as u32).to_le_bytes());
    for d in ne {
        b.extend_from_slice(&d.to_le_bytes());
    }
    b.extend_from_slice(&0u32.to_le_bytes()); // F32
    b.extend_from_slice(&0u64.to_le_bytes()); // offset
    b.resize(b.len().next_multiple_of(32), 0);
    b
}

/// A safetensors file from a JSON header and data.
fn safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(data);
    b
}

/// A valid safetensors file: `a` F32 [2, 2].
fn valid_safetensors() -> Vec<u8> {
    let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    safetensors(
        r#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#,
        &data,
    )
}

/// A llama2.c checkpoint: dim 4, hidden 8, 1 layer, 2 heads, 1 kv head,
/// vocab 3 (shared classifier), seq 2; weights 0, 1, 2, ...
fn llama2c() -> Vec<u8> {
    let (d, h, l, heads, kv, v, seq) = (4usize, 8, 1, 2, 1, 3, 2);
    let hs = d / heads;
    let kvd = hs * kv;
    let floats = v * d + l * (d + d * d + 2 * kvd * d + d * d + d + 3 * h * d) + d + seq * hs;
    let mut b: Vec<u8> = [d, h, l, heads, kv, v, seq]
        .iter()
        .flat_map(|&x| (x as i32).to_le_bytes())
        .collect();
    for i in 0..floats {
        b.extend_from_slice(&(i as f32).to_le_bytes());
    }
    b
}

// ---------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------

fn membound(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_membound"))
        .args(args)
        .current_dir(dir)
        .env("MEMBOUND_CACHE", dir.join("cache"))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run membound")
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// Asserts a clean failure: exit code 1, stderr starting with `error:`,
/// naming `names`, and no panic.
#[track_caller]
fn assert_clean_failure(out: &Output, names: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "exit status {:?}, stderr:\n{stderr}",
        out.status
    );
    assert!(
        stderr.starts_with("error:"),
        "stderr does not start with `error:`:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "panic:\n{stderr}");
    for n in names {
        assert!(
            stderr.contains(n),
            "stderr does not mention {n:?}:\n{stderr}"
        );
    }
    stderr
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// (file name, bytes, something the error must say).
fn malformed_files() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let g = gguf();
    let mut bad_magic = g.clone();
    bad_magic[..4].copy_from_slice(b"GGUX");
    let mut big_endian = g.clone();
    big_endian[4..8].copy_from_slice(&3u32.to_be_bytes());
    let overlapping = safetensors(
        r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F16","shape":[3],"data_offsets":[8,14]}}"#,
        &[0; 16],
    );
    let huge_header = {
        let mut b = (1u64 << 40).to_le_bytes().to_vec();
        b.extend_from_slice(b"{}");
        b
    };
    let mut long = llama2c();
    long.extend_from_slice(&[0; 4]);
    let mut short = llama2c();
    short.truncate(short.len() - 4);
    vec![
        ("truncated.gguf", g[..g.len() - 5].to_vec(), "truncated"),
        ("header-only.gguf", g[..40].to_vec(), "truncated"),
        (
            "bad-magic.gguf",
            bad_magic,
            "not a safetensors, GGUF or llama2.c file",
        ),
        ("big-endian.gguf", big_endian, "big-endian"),
        ("overlap.safetensors", overlapping, "\"b\""),
        ("huge-header.safetensors", huge_header, "100 MB"),
        ("size.bin", long, "file size"),
        ("short.bin", short, "truncated"),
        ("empty.bin", Vec::new(), "truncated"),
    ]
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn valid_files_are_accepted() {
    // The builders are right, so the failures below are for the stated reasons.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (name, bytes) in [
        ("ok.gguf", gguf()),
        ("ok.safetensors", valid_safetensors()),
        ("ok.bin", llama2c()),
    ] {
        let p = write(d, name, &bytes);
        let out = membound(d, &["inspect", path_str(&p)]);
        assert!(
            out.status.success(),
            "inspect {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let o = d.join(format!("{name}.safetensors"));
        let out = membound(d, &["convert", path_str(&p), "-o", path_str(&o)]);
        assert!(
            out.status.success(),
            "convert {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let converted = membound_tensor::open(&o).unwrap();
        assert!(!converted.tensors().is_empty());
    }
}

#[test]
fn inspect_malformed_files_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (name, bytes, needle) in malformed_files() {
        let p = write(d, name, &bytes);
        for extra in [&[][..], &["--json"], &["--no-stats"]] {
            let mut args = vec!["inspect", path_str(&p)];
            args.extend_from_slice(extra);
            let out = membound(d, &args);
            assert_clean_failure(&out, &[path_str(&p), needle]);
            assert!(
                out.stdout.is_empty(),
                "{name}: stdout {:?}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
}

#[test]
fn convert_malformed_files_fails_cleanly_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (name, bytes, needle) in malformed_files() {
        let p = write(d, name, &bytes);
        let o = d.join("out.safetensors");
        let out = membound(d, &["convert", path_str(&p), "-o", path_str(&o)]);
        assert_clean_failure(&out, &[path_str(&p), needle]);
        assert!(!o.exists(), "{name}: an output was written");
    }
    // No temporary files left behind either.
    let leftovers: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".membound-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn directory_and_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sub = d.join("model-dir");
    std::fs::create_dir(&sub).unwrap();
    let missing = d.join("missing.gguf");
    let o = d.join("out.safetensors");

    for cmd in [
        vec!["inspect", path_str(&sub)],
        vec!["convert", path_str(&sub), "-o", path_str(&o)],
    ] {
        let out = membound(d, &cmd);
        assert_clean_failure(&out, &[path_str(&sub), "directory"]);
    }
    for cmd in [
        vec!["inspect", path_str(&missing)],
        vec!["convert", path_str(&missing), "-o", path_str(&o)],
    ] {
        let out = membound(d, &cmd);
        assert_clean_failure(&out, &[path_str(&missing), "no such file"]);
    }
    assert!(!o.exists());
}

#[test]
fn convert_refuses_to_overwrite_its_input() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let original = valid_safetensors();
    let input = write(d, "in.safetensors", &original);
    let same_file_other_spelling = d.join(".").join("in.safetensors");
    for output in [&input, &same_file_other_spelling] {
        for force in [false, true] {
            let mut args = vec!["convert", path_str(&input), "-o", path_str(output)];
            if force {
                args.push("--force");
            }
            let out = membound(d, &args);
            assert_clean_failure(&out, &["in.safetensors", "refusing to overwrite the input"]);
            assert_eq!(
                std::fs::read(&input).unwrap(),
                original,
                "the input changed"
            );
        }
    }
    // Relative paths, from the file's directory.
    let out = membound(
        d,
        &[
            "convert",
            "in.safetensors",
            "-o",
            "./in.safetensors",
            "--force",
        ],
    );
    assert_clean_failure(&out, &["in.safetensors", "refusing to overwrite the input"]);
    assert_eq!(std::fs::read(&input).unwrap(), original);
}

#[test]
fn convert_refuses_an_existing_output_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let input = write(d, "model.gguf", &gguf());
    let output = write(d, "out.safetensors", b"keep me");

    let out = membound(d, &["convert", path_str(&input), "-o", path_str(&output)]);
    assert_clean_failure(&out, &[path_str(&output), "already exists", "--force"]);
    assert_eq!(std::fs::read(&output).unwrap(), b"keep me");

    // A directory in the way is refused even with --force.
    let sub = d.join("sub.safetensors");
    std::fs::create_dir(&sub).unwrap();
    let out = membound(
        d,
        &["convert", path_str(&input), "-o", path_str(&sub), "--force"],
    );
    assert_clean_failure(&out, &[path_str(&sub)]);
    assert!(sub.is_dir());

    // With --force the file is replaced by a valid conversion.
    let out = membound(
        d,
        &[
            "convert",
            path_str(&input),
            "-o",
            path_str(&output),
            "--force",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let converted = membound_tensor::open(&output).unwrap();
    let w = converted.tensor("w").unwrap();
    assert_eq!(
        w.to_f32().unwrap(),
        (0..8).map(|i| i as f32).collect::<Vec<_>>()
    );
}

#[test]
fn a_failed_conversion_keeps_the_previous_output() {
    // --force over an existing file, but the input is broken: the old file stays.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let g = gguf();
    let input = write(d, "cut.gguf", &g[..g.len() - 1]);
    let output = write(d, "out.safetensors", b"previous");
    let out = membound(
        d,
        &[
            "convert",
            path_str(&input),
            "-o",
            path_str(&output),
            "--force",
        ],
    );
    assert_clean_failure(&out, &[path_str(&input), "truncated"]);
    assert_eq!(std::fs::read(&output).unwrap(), b"previous");
}

#[test]
fn empty_tensor_with_huge_outer_dimensions() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = write(d, "empty.gguf", &gguf_empty_tensor(&[0, 1 << 32, 1 << 32]));
    let o = d.join("out.safetensors");
    for args in [
        vec!["inspect", path_str(&p)],
        vec!["convert", path_str(&p), "-o", path_str(&o)],
    ] {
        let out = membound(d, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "{args:?}: {:?}\n{stderr}",
            out.status
        );
    }
}

#[test]
fn empty_tensor_is_fine() {
    // The same file with a harmless shape: the builder is right.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = write(d, "empty.gguf", &gguf_empty_tensor(&[0, 4]));
    let out = membound(d, &["inspect", path_str(&p)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
