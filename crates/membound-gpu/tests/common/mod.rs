//! Shared by the GPU test binaries: contexts that fail loudly without an
//! adapter (unless MEMBOUND_SKIP_GPU=1), and a small deterministic RNG.

#![allow(dead_code)]

use half::{bf16, f16};
use membound_codec::{AffineCodec, Codec, Encoded, Part, PartDType, ScaleDType, pack};
use membound_gpu::{GpuContext, GpuError, GpuFeatures, GpuOptions};

/// A context with `disable` features turned off, or `None` (after printing
/// SKIPPED) when there is no adapter and MEMBOUND_SKIP_GPU=1.
///
/// Without an adapter and without that variable this panics with the
/// error's install hint: GPU tests never pass silently.
pub fn context(disable: GpuFeatures) -> Option<GpuContext> {
    let mut options = GpuOptions::from_env().expect("MEMBOUND_GPU_* variables");
    options.disable_features = options.disable_features.union(disable);
    context_with(&options)
}

/// Like [`context`] with explicit options.
pub fn context_with(options: &GpuOptions) -> Option<GpuContext> {
    match GpuContext::with_options(options) {
        Ok(ctx) => {
            eprintln!(
                "adapter: {} — features in use: {} (available: {})",
                ctx.adapter(),
                ctx.features(),
                ctx.available_features()
            );
            Some(ctx)
        }
        Err(e @ GpuError::NoAdapter { .. }) if skip_requested() => {
            println!("SKIPPED (MEMBOUND_SKIP_GPU=1): {e}");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

fn skip_requested() -> bool {
    std::env::var("MEMBOUND_SKIP_GPU").is_ok_and(|v| v == "1")
}

/// The feature sets each kernel test runs under: everything the adapter
/// has, then the portable fallbacks.
pub const FEATURE_SETS: &[(&str, GpuFeatures)] = &[
    ("all features", GpuFeatures::NONE),
    ("fallbacks", GpuFeatures::ALL),
];

/// SplitMix64: deterministic test data without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo) as u64) as usize
    }

    /// Uniform in [-1, 1).
    pub fn unit(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// A small integer in [-k, k].
    pub fn int(&mut self, k: i64) -> f32 {
        (self.next_u64() % (2 * k as u64 + 1)) as i64 as f32 - k as f32
    }
}

/// An encoding made by hand: random codes, and random small integer scales
/// and biases stored as `codec.scale`.
pub fn integer_encoding(codec: &AffineCodec, rows: usize, cols: usize, rng: &mut Rng) -> Encoded {
    let l = codec.layout(rows, cols).unwrap();
    let mut weight = Vec::with_capacity(rows * l.words_per_row * 4);
    let mut words = vec![0u32; l.words_per_row];
    for _ in 0..rows {
        let codes: Vec<u8> = (0..cols)
            .map(|_| (rng.next_u64() % (1 << codec.bits)) as u8)
            .collect();
        pack::pack_words(&codes, codec.bits, &mut words).unwrap();
        weight.extend(words.iter().flat_map(|w| w.to_le_bytes()));
    }
    let n = l.scales_shape[0] * l.scales_shape[1];
    let scales: Vec<f32> = (0..n)
        .map(|_| [1.0, -1.0, 2.0, -2.0][rng.range(0, 4)])
        .collect();
    let biases: Vec<f32> = (0..n).map(|_| rng.int(3)).collect();
    let bytes = |v: &[f32]| -> Vec<u8> {
        v.iter()
            .flat_map(|&v| match codec.scale {
                ScaleDType::F16 => f16::from_f32(v).to_le_bytes().to_vec(),
                ScaleDType::BF16 => bf16::from_f32(v).to_le_bytes().to_vec(),
                ScaleDType::F32 => v.to_le_bytes().to_vec(),
            })
            .collect()
    };
    let part = |name: &str, dtype, shape: Vec<usize>, data| Part {
        name: name.into(),
        dtype,
        shape,
        data,
    };
    let sd = codec.scale.part_dtype();
    let shape = l.scales_shape.to_vec();
    Encoded {
        spec: codec.spec(),
        rows,
        cols,
        parts: vec![
            part(
                "weight",
                PartDType::U32,
                vec![rows, l.words_per_row],
                weight,
            ),
            part("scales", sd, shape.clone(), bytes(&scales)),
            part("biases", sd, shape, bytes(&biases)),
        ],
    }
}
