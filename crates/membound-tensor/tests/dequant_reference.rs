//! `dequantize` against reference vectors from gguf-py (regenerate with
//! `scripts/gen_dequant_refs.py`), plus its error handling and the block
//! geometry table.
//!
//! gguf-py computes with numpy on whole arrays but performs, per element, the
//! same f32 operations in the same order as ggml's `dequantize_row_*` (one
//! multiply, or multiply then add/subtract, each rounded), so every type is
//! compared bit for bit.

use std::path::PathBuf;

use membound_tensor::{Error, GgmlType, dequantize, supports_dequantize};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/dequant");

fn data_file(name: &str) -> PathBuf {
    PathBuf::from(DATA).join(name)
}

/// The blocks and expected f32 output stored for `ty`.
fn reference(ty: GgmlType) -> (Vec<u8>, Vec<f32>) {
    let read = |ext: &str| {
        let path = data_file(&format!("{}.{ext}", ty.name()));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let blocks = read("blocks");
    let expected = read("f32")
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (blocks, expected)
}

#[test]
fn every_supported_type_matches_gguf_py_bit_for_bit() {
    let mut checked = Vec::new();
    for &ty in GgmlType::ALL.iter().filter(|&&ty| supports_dequantize(ty)) {
        let (blocks, expected) = reference(ty);
        assert_eq!(
            blocks.len() / ty.type_size() * ty.block_size(),
            expected.len(),
            "{ty:?} data files"
        );
        let mut out = vec![f32::NAN; expected.len()];
        dequantize(ty, &blocks, &mut out).unwrap_or_else(|e| panic!("{ty:?}: {e}"));
        for (i, (&got, &want)) in out.iter().zip(&expected).enumerate() {
            // half's f16 widening may quiet a signalling NaN where numpy keeps
            // the payload; any NaN is the right answer for a NaN input.
            let both_nan = ty == GgmlType::F16 && got.is_nan() && want.is_nan();
            assert!(
                got.to_bits() == want.to_bits() || both_nan,
                "{ty:?} element {i} (block {}): got {got:e} ({:#010x}), gguf-py {want:e} ({:#010x})",
                i / ty.block_size(),
                got.to_bits(),
                want.to_bits(),
            );
        }
        checked.push(ty.name());
    }
    // The types the crate promises; a kernel dropped by mistake fails here.
    for required in [
        "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
    ] {
        assert!(
            checked.contains(&required),
            "{required} not checked: {checked:?}"
        );
    }
}

#[test]
fn wrong_sizes_are_errors_not_panics() {
    for &ty in GgmlType::ALL.iter().filter(|&&ty| supports_dequantize(ty)) {
        let (bs, ts) = (ty.block_size(), ty.type_size());
        let cases: [(usize, usize); 5] = [
            (2 * ts - 1, 2 * bs), // source one byte short
            (2 * ts + 1, 2 * bs), // source one byte long
            (ts, 2 * bs),         // a whole block missing
            (0, bs),              // no source at all
            (2 * ts, 2 * bs + 1), // output not whole blocks
        ];
        for (src_len, out_len) in cases {
            if bs == 1 && out_len == 2 * bs + 1 {
                continue; // any length is whole blocks of one element
            }
            let src = vec![0x55; src_len];
            let mut out = vec![0.0; out_len];
            match dequantize(ty, &src, &mut out) {
                Err(Error::SizeMismatch {
                    tensor,
                    dtype,
                    numel,
                    found,
                    ..
                }) => {
                    assert!(tensor.is_empty());
                    assert_eq!(dtype, ty.name());
                    assert_eq!((numel, found), (out_len as u64, src_len as u64));
                }
                other => panic!("{ty:?} src {src_len} out {out_len}: {other:?}"),
            }
        }
    }
}

#[test]
fn unsupported_types_are_errors() {
    let unsupported: Vec<_> = GgmlType::ALL
        .iter()
        .filter(|&&ty| !supports_dequantize(ty))
        .collect();
    assert!(unsupported.contains(&&GgmlType::IQ2_XXS), "{unsupported:?}");
    for &ty in unsupported {
        let src = vec![0u8; ty.type_size()];
        let mut out = vec![0.0; ty.block_size()];
        match dequantize(ty, &src, &mut out) {
            Err(Error::UnsupportedConversion { tensor, dtype }) => {
                assert!(tensor.is_empty());
                assert_eq!(dtype, ty.name());
            }
            other => panic!("{ty:?}: {other:?}"),
        }
        // Unsupported wins over a size mismatch.
        assert!(matches!(
            dequantize(ty, &src[1..], &mut out),
            Err(Error::UnsupportedConversion { .. })
        ));
    }
}

#[test]
fn arbitrary_bytes_never_panic() {
    // NaN/Inf scales, every bit pattern in the code fields: only the values may
    // be odd, never control flow.
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let src: Vec<u8> = (0..64 * 292)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    for &ty in GgmlType::ALL.iter().filter(|&&ty| supports_dequantize(ty)) {
        let blocks = src.len() / ty.type_size();
        let mut out = vec![0.0; blocks * ty.block_size()];
        dequantize(ty, &src[..blocks * ty.type_size()], &mut out).unwrap();
    }
}

/// `GgmlType`'s ids and block geometry agree with gguf-py's
/// `GGML_QUANT_SIZES` for every type the crate knows.
#[test]
fn type_table_matches_gguf_py() {
    let path = data_file("sizes.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let sizes = doc["sizes"]
        .as_object()
        .expect("sizes.json: no \"sizes\" object");
    for &ty in GgmlType::ALL {
        let entry = sizes
            .get(ty.name())
            .unwrap_or_else(|| panic!("{ty:?} missing from gguf-py's table"));
        let field = |k: &str| {
            entry[k]
                .as_u64()
                .unwrap_or_else(|| panic!("{ty:?}: bad {k}"))
        };
        assert_eq!(field("id"), u64::from(ty.id()), "{ty:?} id");
        let ours = (ty.block_size() as u64, ty.type_size() as u64);
        if ty == GgmlType::Q8_1 {
            // gguf-py 0.19.0 still lists Q8_1's old layout with f32 `d` and `s`
            // (40 bytes). ggml's block_q8_1 has used f16 for both since 2023
            // and static_asserts `sizeof(block_q8_1) == 2*sizeof(ggml_half) + QK8_1`.
            assert_eq!(
                (field("block_size"), field("type_size")),
                (32, 40),
                "gguf-py's Q8_1 entry changed"
            );
            assert_eq!(ours, (32, 36));
            continue;
        }
        assert_eq!(
            ours,
            (field("block_size"), field("type_size")),
            "{ty:?} geometry"
        );
    }
}
