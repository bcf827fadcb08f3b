//! `membound::quantize`: the written file reads back through
//! membound-tensor, and every encoded weight rebuilt from its parts and the
//! metadata decodes bit for bit to what the codec itself gives.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use half::f16;
use membound::codec::{Matrix, codec_from_spec};
use membound::quantize::{self, META_CODEC, META_FORMAT, META_TENSORS};
use membound_tensor::{DType, OwnedTensor, SafetensorsFile, TensorSource, registry};

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

/// Quantizes `input` with `spec` into `dir`, reads the file back, and checks
/// every tensor: encoded weights against the codec's own encode/decode of
/// the source's f32 values, copies byte for byte.
fn check_roundtrip(input: &Path, spec: &str, dir: &Path) -> SafetensorsFile {
    let src = membound_tensor::open(input).unwrap();
    let q = quantize::quantize(src.as_ref(), spec, &|_, _, _| {}).unwrap();
    let out = dir.join(format!(
        "{}.safetensors",
        spec.replace([':', ',', '='], "_")
    ));
    quantize::write(&q, input, &out, false).unwrap();
    let file = SafetensorsFile::open(&out).unwrap();
    let codec = codec_from_spec(spec).unwrap();
    let meta: HashMap<&str, &str> = file
        .string_metadata()
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(meta[META_FORMAT], quantize::FORMAT);
    assert_eq!(meta[META_CODEC], codec.spec());
    assert!(meta.contains_key(META_TENSORS));

    let encoded = quantize::read_encoded(&file).unwrap();
    let stored: HashMap<String, _> = file
        .tensors()
        .into_iter()
        .map(|t| (t.name().to_string(), t))
        .collect();
    let mut n_encoded = 0;
    for t in src.tensors() {
        let shape = t.shape();
        if quantize::is_encodable(&t) {
            n_encoded += 1;
            let (name, e) = encoded
                .iter()
                .find(|(n, _)| n == t.name())
                .unwrap_or_else(|| panic!("{} not encoded", t.name()));
            let w = t.to_f32().unwrap();
            let m = Matrix::new(shape[0], shape[1], &w).unwrap();
            let want = codec.encode(m).unwrap();
            assert_eq!(e, &want, "{spec}: {name} differs from the codec's encoding");
            let got = membound::codec::decode(e).unwrap();
            let want = codec.decode(&want).unwrap();
            assert!(
                got.iter()
                    .map(|x| x.to_bits())
                    .eq(want.iter().map(|x| x.to_bits())),
                "{spec}: {name} decodes differently"
            );
            if spec.starts_with("affine") {
                let stem = name.strip_suffix(".weight").unwrap_or(name);
                assert_eq!(
                    stored[name.as_str()].dtype(),
                    DType::U32,
                    "{name}: MLX stores packed u32 under the weight's name"
                );
                assert!(
                    stored.contains_key(&format!("{stem}.scales"))
                        && stored.contains_key(&format!("{stem}.biases"))
                );
            } else {
                for p in &e.parts {
                    assert!(
                        stored.contains_key(&format!("{name}.{}", p.name)),
                        "{name}.{}",
                        p.name
                    );
                }
            }
        } else {
            let s = &stored[t.name()];
            assert_eq!(s.shape(), shape);
            match t.dtype() {
                DType::Ggml(_) => {
                    assert_eq!(
                        s.dtype(),
                        DType::F32,
                        "block tensors are dequantized to f32"
                    );
                    assert_eq!(s.to_f32().unwrap(), t.to_f32().unwrap());
                }
                d => assert_eq!(
                    (s.dtype(), s.data()),
                    (d, t.data()),
                    "{} is copied as it is",
                    t.name()
                ),
            }
        }
    }
    assert_eq!(encoded.len(), n_encoded);
    file
}

const SPECS: &[&str] = &[
    "affine:bits=4,group=64",
    "affine:bits=3,group=32,scale=bf16",
    "affine:bits=8,group=row,scale=f32",
    "absmax:bits=4,block=32",
    "nf4:block=64",
    "kmeans:bits=3,scope=row",
    "kmeans:bits=2,scope=tensor",
    "vq:d=4,k=16",
    "poly:degree=3",
    "polymse:degree=3",
    "positional:degree=8",
    "svd:rank=8",
    "dct:k=10",
    "kron:rank=2",
];

fn f32_tensor(name: &str, shape: &[usize], seed: u32) -> OwnedTensor {
    let n: usize = shape.iter().product();
    let data = (0..n)
        .flat_map(|i| {
            (((i as f32 + seed as f32) * 0.618).sin() * 0.1 * (1.0 + (i % 7) as f32)).to_le_bytes()
        })
        .collect();
    OwnedTensor {
        name: name.into(),
        dtype: DType::F32,
        shape: shape.to_vec(),
        data,
    }
}

#[test]
fn synthetic_model_roundtrips_in_every_codec() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    let half: Vec<u8> = (0..16 * 64)
        .flat_map(|i| f16::from_f32((i as f32 * 0.37).cos() * 0.02).to_le_bytes())
        .collect();
    let tensors = vec![
        f32_tensor("layers.0.mlp.up_proj.weight", &[40, 96], 1),
        OwnedTensor {
            name: "layers.0.attn.q.weight".into(),
            dtype: DType::F16,
            shape: vec![16, 64],
            data: half,
        },
        f32_tensor("layers.0.norm.weight", &[40], 2),
        f32_tensor("lm_head", &[24, 40], 3),
        OwnedTensor {
            name: "position_ids".into(),
            dtype: DType::I64,
            shape: vec![1, 8],
            data: (0..8i64).flat_map(|i| i.to_le_bytes()).collect(),
        },
    ];
    membound_tensor::write_safetensors(&input, &tensors, &[("source.note".into(), "kept".into())])
        .unwrap();
    for spec in SPECS {
        let file = check_roundtrip(&input, spec, dir.path());
        assert!(
            file.string_metadata()
                .iter()
                .any(|(k, v)| k == "source.note" && v == "kept")
        );
    }
    // Affine names follow MLX: the weight keeps its name, scales/biases use the stem.
    let f = SafetensorsFile::open(dir.path().join("affine_bits_4_group_64.safetensors")).unwrap();
    let names: Vec<String> = f.tensors().iter().map(|t| t.name().to_string()).collect();
    for n in [
        "layers.0.mlp.up_proj.weight",
        "layers.0.mlp.up_proj.scales",
        "layers.0.mlp.up_proj.biases",
        "lm_head",
        "lm_head.scales",
        "lm_head.biases",
        "position_ids",
    ] {
        assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
    }
}

#[test]
fn never_overwrites_the_input_and_needs_force() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    membound_tensor::write_safetensors(&input, &[f32_tensor("w", &[8, 32], 0)], &[]).unwrap();
    let before = std::fs::read(&input).unwrap();
    let src = membound_tensor::open(&input).unwrap();
    let q = quantize::quantize(src.as_ref(), "affine:bits=4,group=32", &|_, _, _| {}).unwrap();
    let e = quantize::write(&q, &input, &input, true).unwrap_err();
    assert!(
        e.to_string().contains("refusing to overwrite the input"),
        "{e}"
    );
    let out = dir.path().join("out.safetensors");
    quantize::write(&q, &input, &out, false).unwrap();
    assert!(
        quantize::write(&q, &input, &out, false)
            .unwrap_err()
            .to_string()
            .contains("--force")
    );
    quantize::write(&q, &input, &out, true).unwrap();
    assert_eq!(std::fs::read(&input).unwrap(), before);
    assert!(quantize::quantize(src.as_ref(), "affine:bits=7", &|_, _, _| {}).is_err());
    // A file that is not ours is refused by the reader.
    assert!(quantize::read_encoded(&SafetensorsFile::open(&input).unwrap()).is_err());
}

/// A minimal GGUF v3: one 2-D Q8_0 weight, one 1-D Q8_0 vector, one 1-D F32.
fn tiny_gguf() -> Vec<u8> {
    fn q8_0_blocks(n_blocks: usize, seed: i32) -> Vec<u8> {
        let mut out = Vec::new();
        for b in 0..n_blocks {
            out.extend_from_slice(&f16::from_f32(0.01 * (b + 1) as f32).to_le_bytes());
            out.extend((0..32).map(|i| (((i * 7 + b as i32 * 13 + seed) % 255) - 127) as i8 as u8));
        }
        out
    }
    let tensors: Vec<(&str, Vec<u64>, u32, Vec<u8>)> = vec![
        ("blk.0.attn_q.weight", vec![64, 4], 8, q8_0_blocks(8, 1)),
        ("blk.0.bias_q8", vec![32], 8, q8_0_blocks(1, 2)),
        (
            "blk.0.attn_norm.weight",
            vec![8],
            0,
            (0..8).flat_map(|i| (i as f32).to_le_bytes()).collect(),
        ),
    ];
    let mut out = Vec::new();
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&1u64.to_le_bytes());
    let key = "general.architecture";
    out.extend_from_slice(&(key.len() as u64).to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(&8u32.to_le_bytes());
    out.extend_from_slice(&5u64.to_le_bytes());
    out.extend_from_slice(b"llama");
    let mut offset = 0u64;
    for (name, ne, ty, data) in &tensors {
        out.extend_from_slice(&(name.len() as u64).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(ne.len() as u32).to_le_bytes());
        for d in ne {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&ty.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        offset = (offset + data.len() as u64).next_multiple_of(32);
    }
    out.resize(out.len().next_multiple_of(32), 0);
    for (_, _, _, data) in &tensors {
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(32), 0);
    }
    out
}

#[test]
fn gguf_blocks_are_encoded_or_dequantized() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("tiny.gguf");
    std::fs::write(&input, tiny_gguf()).unwrap();
    let src = membound_tensor::open(&input).unwrap();
    assert_eq!(src.tensors()[0].shape(), [4, 64]);
    for spec in ["affine:bits=4,group=32", "kmeans:bits=2,scope=row"] {
        let f = check_roundtrip(&input, spec, dir.path());
        assert!(
            f.string_metadata()
                .iter()
                .any(|(k, v)| k == "general.architecture" && v == "llama")
        );
        assert!(
            f.string_metadata()
                .iter()
                .any(|(k, v)| k == "membound.source_format" && v == "GGUF")
        );
    }
}

#[test]
fn llama2xs_roundtrips() {
    let Some(input) = fixture("llama2xs-280K") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for spec in [
        "affine:bits=4,group=64",
        "nf4:block=64",
        "kmeans:bits=4,scope=row",
        "svd:rank=16",
    ] {
        let f = check_roundtrip(&input, spec, dir.path());
        // 36 matrices encoded, 11 norms copied.
        assert_eq!(quantize::entries(&f).unwrap().len(), 36);
    }
}
