//! `membound study` and `membound quantize` from the command line: the
//! outputs exist and parse.

use std::path::{Path, PathBuf};
use std::process::Command;

use membound_tensor::{SafetensorsFile, TensorSource, registry};
use serde_json::Value;

fn required() -> bool {
    std::env::var("MEMBOUND_REQUIRE_MODELS").is_ok_and(|v| v == "1")
}

fn fixture(name: &str) -> Option<PathBuf> {
    let found = registry::fixture(name).map(|(m, _)| m);
    if found.is_none() {
        assert!(
            !required(),
            "{name} is missing and MEMBOUND_REQUIRE_MODELS=1"
        );
        eprintln!("SKIPPED: {name} is missing (expected ../shared/models)");
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

/// Every CSV in `dir`: header and rows with the same number of fields.
fn check_csvs(dir: &Path, expect: &[&str]) {
    for id in expect {
        let text = std::fs::read_to_string(dir.join(format!("{id}.csv")))
            .unwrap_or_else(|e| panic!("{id}.csv: {e}"));
        let fields = |line: &str| {
            let (mut n, mut quoted) = (1, false);
            for c in line.chars() {
                match c {
                    '"' => quoted = !quoted,
                    ',' if !quoted => n += 1,
                    _ => {}
                }
            }
            n
        };
        let mut lines = text.lines();
        let width = fields(lines.next().unwrap());
        assert!(width >= 3, "{id}");
        let rows: Vec<usize> = lines.map(fields).collect();
        assert!(
            !rows.is_empty() && rows.iter().all(|&w| w == width),
            "{id}: {rows:?} vs {width}"
        );
    }
}

fn check_svg(path: &Path) {
    let s = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        s.contains("<svg") && s.trim_end().ends_with("</svg>"),
        "{}",
        path.display()
    );
}

#[test]
fn synthetic_writes_json_csv_and_plot() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let json = d.join("s.json");
    let args = [
        "study",
        "synthetic",
        "--rows",
        "4",
        "--cols",
        "1024",
        "--seed",
        "5",
    ];
    let (code, out, err) = membound(
        &[
            &args[..],
            &[
                "--json",
                json.to_str().unwrap(),
                "--csv",
                d.join("csv").to_str().unwrap(),
                "--plot",
                d.join("plots").to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("### Table 3.1") && out.contains("| Gaussian |"),
        "{out}"
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["distributions"].as_array().unwrap().len(), 4);
    assert_eq!(v["options"]["seed"], 5);
    check_csvs(
        &d.join("csv"),
        &[
            "table_3_1",
            "table_3_1_more",
            "table_3_1_grouping",
            "table_3_1_bimodal",
        ],
    );
    check_svg(&d.join("plots/synthetic_grouping.svg"));
    // --json - prints only JSON, and the same JSON.
    let (code, out, _) = membound(&[&args[..], &["--json", "-"]].concat());
    assert_eq!(code, 0);
    let w: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(w, v);
}

#[test]
fn weights_on_llama2xs_writes_every_output() {
    let Some(_) = fixture("llama2xs-280K") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let codecs = "affine:bits=4,group=64,affine:bits=4,group=row,poly:degree=3,polymse:degree=3,svd:rank=8,positional:degree=2";
    let (code, out, err) = membound(&[
        "study",
        "weights",
        "llama2xs-280K",
        "--codecs",
        codecs,
        "--csv",
        d.join("csv").to_str().unwrap(),
        "--plot",
        d.join("plots").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("### Table 3.2")
            && out.contains("### Table 4.5")
            && out.contains("Pareto frontier"),
        "{out}"
    );
    check_csvs(
        &d.join("csv"),
        &[
            "table_3_2",
            "table_3_2_kinds",
            "table_4_1",
            "table_4_2",
            "table_4_3",
            "table_4_4",
            "table_4_5",
            "pareto",
        ],
    );
    check_svg(&d.join("plots/frontier.svg"));
    let hists: Vec<_> = std::fs::read_dir(d.join("plots"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("hist_"))
        .collect();
    assert!(!hists.is_empty() && hists.len() <= 3);
    for h in hists {
        check_svg(&h.path());
    }
    let (code, out, err) = membound(&[
        "study",
        "weights",
        "llama2xs-280K",
        "--codecs",
        "affine:bits=4,group=64,nf4",
        "--only",
        "mlp",
        "--json",
        "-",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["tensors"].as_array().unwrap().len(), 15);
    let settings: Vec<&str> = v["settings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["setting"].as_str().unwrap())
        .collect();
    assert_eq!(settings, ["affine:bits=4,group=64", "nf4"]);
    assert_eq!(v["settings"][0]["bits_per_weight"], 4.5);
}

#[test]
fn quantize_writes_a_readable_file_and_guards_outputs() {
    let Some(input) = fixture("llama2xs-280K") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q.safetensors");
    let o = out.to_str().unwrap();
    let (code, stdout, err) = membound(&[
        "quantize",
        "llama2xs-280K",
        "--codec",
        "affine:bits=4,group=64",
        "-o",
        o,
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (v["encoded_tensors"].as_u64(), v["copied_tensors"].as_u64()),
        (Some(36), Some(11))
    );
    let f = SafetensorsFile::open(&out).unwrap();
    let t = f.tensor("model.layers.0.mlp.up_proj.weight").unwrap();
    assert_eq!(
        (t.dtype().to_string().as_str(), t.shape()),
        ("U32", &[192usize, 8][..])
    );
    assert!(f.tensor("model.layers.0.mlp.up_proj.scales").is_ok());
    let decoded = membound::quantize::read_encoded(&f).unwrap();
    assert_eq!(decoded.len(), 36);
    // Refuses an existing output without --force, and the input even with it.
    let (code, _, err) = membound(&["quantize", "llama2xs-280K", "--codec", "nf4", "-o", o]);
    assert_ne!(code, 0);
    assert!(err.contains("--force"), "{err}");
    let (code, _, _) = membound(&[
        "quantize",
        "llama2xs-280K",
        "--codec",
        "nf4",
        "-o",
        o,
        "--force",
    ]);
    assert_eq!(code, 0);
    let (code, _, err) = membound(&[
        "quantize",
        input.to_str().unwrap(),
        "--codec",
        "nf4",
        "-o",
        input.to_str().unwrap(),
        "--force",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("refusing to overwrite the input"), "{err}");
    let (code, _, err) = membound(&[
        "quantize",
        "llama2xs-280K",
        "--codec",
        "affine:bits=7",
        "-o",
        dir.path().join("x.safetensors").to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("bits=7"), "{err}");
}

#[test]
fn help_teaches_with_examples() {
    for args in [
        &["study", "--help"][..],
        &["study", "weights", "--help"],
        &["study", "synthetic", "--help"],
        &["quantize", "--help"],
    ] {
        let (code, out, _) = membound(args);
        assert_eq!(code, 0);
        assert!(
            out.contains("Examples:") && out.contains("membound "),
            "{args:?}: {out}"
        );
    }
    let (code, out, _) = membound(&["study", "weights", "--list-codecs", "x"]);
    assert_eq!(code, 0);
    assert!(out.lines().count() >= 40 && out.contains("kron:rank=16"));
}
