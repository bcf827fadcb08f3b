//! `affine` against MLX itself, bit for bit: vectors made with
//! `mx.quantize` / `mx.dequantize` by `scripts/gen_mlx_refs.py` (MLX 0.32.4,
//! CPU) for every bit width, groups 32/64/128 and f32/f16/bf16 inputs.

use membound_codec::{AffineCodec, Codec, Group, Matrix, ScaleDType, pack};
use serde_json::Value;

const INDEX: &str = include_str!("data/mlx/index.json");
const BLOB: &[u8] = include_bytes!("data/mlx/vectors.bin");

fn slice(v: &Value) -> &'static [u8] {
    let (off, len) = (
        v[0].as_u64().unwrap() as usize,
        v[1].as_u64().unwrap() as usize,
    );
    &BLOB[off..off + len]
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn u32s(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Little-endian values of `dtype`, widened exactly to f32.
fn widen(b: &[u8], dtype: ScaleDType) -> Vec<f32> {
    dtype.read(b)
}

fn bits_of(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

struct Case {
    label: String,
    codec: AffineCodec,
    rows: usize,
    cols: usize,
    input: Vec<f32>,
    c: &'static Value,
}

fn cases() -> Vec<Case> {
    let index: &'static Value = Box::leak(Box::new(serde_json::from_str::<Value>(INDEX).unwrap()));
    assert_eq!(index["mlx_version"], "0.32.4");
    let cases: Vec<Case> = index["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let m = index["matrices"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["name"] == c["matrix"])
                .unwrap();
            let scale: ScaleDType = c["dtype"].as_str().unwrap().parse().unwrap();
            let (bits, group) = (
                c["bits"].as_u64().unwrap() as u32,
                c["group"].as_u64().unwrap() as usize,
            );
            Case {
                label: format!("{} {} g{group} b{bits}", c["matrix"], c["dtype"]),
                codec: AffineCodec::new(bits, Group::Size(group), scale).unwrap(),
                rows: m["rows"].as_u64().unwrap() as usize,
                cols: m["cols"].as_u64().unwrap() as usize,
                input: f32s(slice(&m["data"])),
                c,
            }
        })
        .collect();
    // Every bit width × group × input type, for both matrices.
    assert_eq!(cases.len(), 2 * 6 * 3 * 3);
    cases
}

#[test]
fn codes_scales_and_biases_equal_mx_quantize() {
    for k in cases() {
        let m = Matrix::new(k.rows, k.cols, &k.input).unwrap();
        let e = k.codec.encode(m).unwrap();
        let p = k.codec.parts(&e).unwrap();
        assert_eq!(
            p.words,
            u32s(slice(&k.c["words"])),
            "{}: packed codes",
            k.label
        );
        assert_eq!(
            e.part("scales").unwrap().data,
            slice(&k.c["scales"]),
            "{}: scales",
            k.label
        );
        assert_eq!(
            e.part("biases").unwrap().data,
            slice(&k.c["biases"]),
            "{}: biases",
            k.label
        );
        assert_eq!(p.layout.words_per_row * k.rows, p.words.len());
        // The scalar reference agrees with the fast path.
        assert_eq!(
            k.codec.encode_reference(m).unwrap(),
            e,
            "{}: reference",
            k.label
        );
    }
}

#[test]
fn decode_mlx_equals_mx_dequantize() {
    for k in cases() {
        let e = k
            .codec
            .encode(Matrix::new(k.rows, k.cols, &k.input).unwrap())
            .unwrap();
        let want = widen(slice(&k.c["dequant"]), k.codec.scale);
        assert_eq!(
            bits_of(&k.codec.decode_mlx(&e).unwrap()),
            bits_of(&want),
            "{}",
            k.label
        );
    }
}

#[test]
fn decode_equals_mx_dequantize_in_f32() {
    let mut checked = 0;
    for k in cases() {
        let e = k
            .codec
            .encode(Matrix::new(k.rows, k.cols, &k.input).unwrap())
            .unwrap();
        let key = if k.codec.scale == ScaleDType::F32 {
            "dequant"
        } else {
            "dequant_f32"
        };
        if k.c.get(key).is_none() {
            continue;
        }
        let got = k.codec.decode(&e).unwrap();
        assert!(got.iter().all(|x| x.is_finite()), "{}", k.label);
        assert_eq!(
            bits_of(&got),
            bits_of(&f32s(slice(&k.c[key]))),
            "{}",
            k.label
        );
        checked += 1;
    }
    assert_eq!(checked, 2 * 6 * 3 + 2 * 6 * 2);
}

#[test]
fn packed_codes_are_the_lsb_first_stream() {
    // Decoding the MLX words with the bit-at-a-time reference gives codes
    // that reproduce MLX's dequantized values: the stream reading of the
    // layout is right for every width, including 3, 5 and 6 bits.
    for k in cases()
        .into_iter()
        .filter(|k| k.codec.scale == ScaleDType::F32)
    {
        let words = u32s(slice(&k.c["words"]));
        let (scales, biases) = (f32s(slice(&k.c["scales"])), f32s(slice(&k.c["biases"])));
        let dq = f32s(slice(&k.c["dequant"]));
        let Group::Size(g) = k.codec.group else {
            unreachable!()
        };
        let wpr = words.len() / k.rows;
        for r in 0..k.rows {
            let codes =
                pack::unpack_words_reference(&words[r * wpr..(r + 1) * wpr], k.codec.bits, k.cols);
            for (c, &q) in codes.iter().enumerate() {
                let gi = r * (k.cols / g) + c / g;
                let v = f32::from(q) * scales[gi] + biases[gi];
                assert_eq!(
                    v.to_bits(),
                    dq[r * k.cols + c].to_bits(),
                    "{} at ({r}, {c})",
                    k.label
                );
            }
        }
    }
}

#[test]
fn mlx_facts() {
    // The behaviour the vectors pin down, spelled out on small cases.
    let codec = |bits, scale| AffineCodec::new(bits, Group::Size(32), scale).unwrap();
    let enc = |c: AffineCodec, v: &[f32]| {
        let e = c.encode(Matrix::new(1, 32, v).unwrap()).unwrap();
        c.parts(&e).unwrap()
    };
    // Zeros: the scale is the 1e-7 floor, negated (edge = max), bias 0.
    let p = enc(codec(4, ScaleDType::F32), &[0.0; 32]);
    assert_eq!((p.scales[0], p.biases[0]), (-1e-7, 0.0));
    // The larger-magnitude extreme is the bias and decodes exactly; here
    // min = 0 lies on the grid too.
    let mut v = [0f32; 32];
    v[0] = 1.0;
    let p = enc(codec(4, ScaleDType::F32), &v);
    assert_eq!((p.scales[0], p.biases[0]), (1.0 / -15.0, 1.0));
    assert_eq!(p.words[0] & 0xff, 0xf0); // code 0 for 1.0, 15 for 0.0
    // Codes round half to even: with scale −1 and bias 15, 0.5 → 14.5 → 14,
    // 1.5 → 13.5 → 14, 2.5 → 12.5 → 12.
    let mut v = [0f32; 32];
    v[1] = 15.0;
    v[2..5].copy_from_slice(&[0.5, 1.5, 2.5]);
    let p = enc(codec(4, ScaleDType::F32), &v);
    assert_eq!((p.scales[0], p.biases[0]), (-1.0, 15.0));
    assert_eq!(p.words[0] & 0xfffff, 0xcee0f);
    // f16 input: scales are f16 and the codes use the unrounded scale.
    let c = codec(4, ScaleDType::F16);
    assert_eq!(
        c.encode(Matrix::new(1, 32, &v).unwrap())
            .unwrap()
            .part("scales")
            .unwrap()
            .dtype,
        membound_codec::PartDType::F16
    );
}
