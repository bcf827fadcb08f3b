//! Property tests: safetensors write-then-read, and f16/bf16 conversion
//! against the `half` crate's reference conversions.

use half::{bf16, f16};
use membound_tensor::{
    DType, OwnedTensor, SafetensorsFile, TensorSource, TensorView, write_safetensors,
};
use proptest::prelude::*;

fn dtype() -> impl Strategy<Value = DType> {
    prop::sample::select(vec![
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::F64,
        DType::I8,
        DType::U8,
        DType::I32,
        DType::I64,
        DType::Bool,
    ])
}

fn tensor() -> impl Strategy<Value = OwnedTensor> {
    (
        "[a-z][a-z0-9_.]{0,24}",
        dtype(),
        prop::collection::vec(0usize..6, 0..4),
    )
        .prop_flat_map(|(name, dtype, shape)| {
            let n: usize = shape.iter().product();
            let bytes = n * dtype.bits().unwrap() / 8;
            prop::collection::vec(any::<u8>(), bytes).prop_map(move |data| {
                // Bool must be 0 or 1 to be valid safetensors.
                let data = if dtype == DType::Bool {
                    data.iter().map(|b| b & 1).collect()
                } else {
                    data
                };
                OwnedTensor {
                    name: name.clone(),
                    dtype,
                    shape: shape.clone(),
                    data,
                }
            })
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn safetensors_write_then_read(
        tensors in prop::collection::vec(tensor(), 0..6),
        meta in prop::collection::btree_map("[a-z.]{1,12}", ".{0,20}", 0..4),
    ) {
        let mut tensors = tensors;
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        tensors.dedup_by(|a, b| a.name == b.name);
        let meta: Vec<(String, String)> = meta.into_iter().collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        write_safetensors(&path, &tensors, &meta).unwrap();
        // Nothing but the output is left in the directory.
        prop_assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        let f = SafetensorsFile::open(&path).unwrap();
        let mut read: Vec<TensorView<'_>> = f.tensors();
        read.sort_by_key(|t| t.name());
        prop_assert_eq!(read.len(), tensors.len());
        for (w, r) in tensors.iter().zip(&read) {
            prop_assert_eq!(&w.name, r.name());
            prop_assert_eq!(w.dtype, r.dtype());
            prop_assert_eq!(&w.shape[..], r.shape());
            prop_assert_eq!(&w.data[..], r.data());
        }
        prop_assert_eq!(f.string_metadata(), &meta[..]);
    }

    #[test]
    fn f16_to_f32_matches_half(bits in prop::collection::vec(any::<u16>(), 1..64)) {
        let data: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
        let shape = [bits.len()];
        let got = TensorView::new("x", DType::F16, &shape, &data).unwrap().to_f32().unwrap();
        for (b, g) in bits.iter().zip(&got) {
            let want = f16::from_bits(*b).to_f32();
            prop_assert!(want.to_bits() == g.to_bits() || (want.is_nan() && g.is_nan()), "{b:#06x}: {g} vs {want}");
        }
    }

    #[test]
    fn bf16_to_f32_matches_half(bits in prop::collection::vec(any::<u16>(), 1..64)) {
        let data: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
        let shape = [bits.len()];
        let got = TensorView::new("x", DType::BF16, &shape, &data).unwrap().to_f32().unwrap();
        for (b, g) in bits.iter().zip(&got) {
            // bf16 is the top half of an f32: an exact, independent reference.
            let want = f32::from_bits(u32::from(*b) << 16);
            prop_assert!(want.to_bits() == g.to_bits() || (want.is_nan() && g.is_nan()));
            let h = bf16::from_bits(*b).to_f32();
            prop_assert!(h.to_bits() == g.to_bits() || (h.is_nan() && g.is_nan()));
        }
    }

    #[test]
    fn f32_through_f16_round_trips_within_half_precision(x in -60000f32..60000f32) {
        let h = f16::from_f32(x);
        let data = h.to_le_bytes();
        let shape = [1];
        let back = TensorView::new("x", DType::F16, &shape, &data).unwrap().to_f32().unwrap()[0];
        // Round to nearest: relative error at most 2^-11 for normal values.
        let tol = (x.abs() * 2f32.powi(-11)).max(2f32.powi(-24));
        prop_assert!((back - x).abs() <= tol, "{x} -> {back}");
    }
}

#[test]
fn writer_never_leaves_partial_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.safetensors");
    // A tensor whose bytes disagree with its shape is rejected before writing.
    let bad = OwnedTensor {
        name: "w".into(),
        dtype: DType::F32,
        shape: vec![3],
        data: vec![0; 8],
    };
    assert!(write_safetensors(&path, &[bad], &[]).is_err());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    // Block-quantized tensors cannot be stored in safetensors.
    let q = OwnedTensor {
        name: "q".into(),
        dtype: DType::Ggml(membound_tensor::GgmlType::Q4_0),
        shape: vec![32],
        data: vec![0; 18],
    };
    let e = write_safetensors(&path, &[q], &[]).unwrap_err().to_string();
    assert!(e.contains("Q4_0") && e.contains("\"q\""), "{e}");
}
