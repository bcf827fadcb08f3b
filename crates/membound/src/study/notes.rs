//! The research notes' own figures (`shared/docs/research-notes.md`,
//! sections 3–4), printed beside our measurements.
//!
//! The notes state neither the sample size, the grouping, the row length nor
//! the baseline of their compression ratios; `docs/study.md` works out which
//! choices reproduce which figure.

use serde::Serialize;

/// A row of the notes' table 3.1 (synthetic distributions).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Synthetic {
    /// Distribution as the notes name it.
    pub name: &'static str,
    /// Excess kurtosis as the notes give it (text: "0", ">6", "varies").
    pub kurtosis: &'static str,
    /// 4-bit affine SQNR, dB.
    pub affine_db: f64,
    /// Polynomial ICDF SQNR, dB.
    pub poly_db: f64,
    /// `poly − affine`, dB.
    pub delta_db: f64,
}

/// Table 3.1, in the notes' order: Gaussian, Laplacian, t, bimodal.
pub const TABLE_3_1: [Synthetic; 4] = [
    Synthetic {
        name: "Gaussian",
        kurtosis: "0",
        affine_db: 17.09,
        poly_db: 16.62,
        delta_db: -0.47,
    },
    Synthetic {
        name: "Laplacian",
        kurtosis: "3",
        affine_db: 13.07,
        poly_db: 11.89,
        delta_db: -1.18,
    },
    Synthetic {
        name: "Heavy-tail (t-dist)",
        kurtosis: ">6",
        affine_db: 6.63,
        poly_db: 7.19,
        delta_db: 0.56,
    },
    Synthetic {
        name: "Bimodal",
        kurtosis: "varies",
        affine_db: 8.64,
        poly_db: 5.60,
        delta_db: -3.04,
    },
];

/// A row of the notes' table 3.2 (real model weights).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct ModelKurtosis {
    /// Model as the notes name it.
    pub model: &'static str,
    /// Average excess kurtosis over the model's weights.
    pub avg_kurtosis: f64,
    /// Share of tensors with excess kurtosis > 3.
    pub heavy_share: f64,
    /// Share of tensors where the polynomial beats affine.
    pub poly_wins: f64,
}

/// Table 3.2.
pub const TABLE_3_2: [ModelKurtosis; 4] = [
    ModelKurtosis {
        model: "SmolLM-135M",
        avg_kurtosis: 0.35,
        heavy_share: 0.01,
        poly_wins: 0.0,
    },
    ModelKurtosis {
        model: "TinyLlama-1.1B",
        avg_kurtosis: 0.97,
        heavy_share: 0.05,
        poly_wins: 0.0,
    },
    ModelKurtosis {
        model: "Qwen2-1.5B",
        avg_kurtosis: 0.77,
        heavy_share: 0.0,
        poly_wins: 0.0,
    },
    ModelKurtosis {
        model: "GPT-2 (2019)",
        avg_kurtosis: 7.24,
        heavy_share: 0.46,
        poly_wins: 0.0,
    },
];

/// One setting of tables 4.1–4.4: the parameter, the notes' compression
/// ratio (baseline unstated) and SQNR.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Setting {
    /// Degree, rank or K.
    pub param: usize,
    /// The notes' compression ratio.
    pub compression: f64,
    /// The notes' SQNR, dB.
    pub sqnr_db: f64,
}

/// Table 4.1, positional polynomial ("Option B"): degree, compression, SQNR.
pub const TABLE_4_1: [Setting; 4] = [
    Setting {
        param: 2,
        compression: 384.0,
        sqnr_db: 0.01,
    },
    Setting {
        param: 8,
        compression: 128.0,
        sqnr_db: 0.04,
    },
    Setting {
        param: 32,
        compression: 35.0,
        sqnr_db: 0.09,
    },
    Setting {
        param: 128,
        compression: 9.0,
        sqnr_db: 0.12,
    },
];

/// Table 4.1's 4-bit affine baseline: compression, SQNR.
pub const TABLE_4_1_AFFINE: (f64, f64) = (4.0, 14.26);

/// Table 4.2, SVD: rank, compression, SQNR.
pub const TABLE_4_2: [Setting; 4] = [
    Setting {
        param: 32,
        compression: 19.0,
        sqnr_db: 0.9,
    },
    Setting {
        param: 64,
        compression: 9.0,
        sqnr_db: 1.4,
    },
    Setting {
        param: 128,
        compression: 5.0,
        sqnr_db: 2.4,
    },
    Setting {
        param: 256,
        compression: 2.4,
        sqnr_db: 4.5,
    },
];

/// Table 4.2's 4-bit baseline: compression, SQNR (sic: 2.2 dB, against
/// 14.26 dB in table 4.1).
pub const TABLE_4_2_AFFINE: (f64, f64) = (4.0, 2.2);

/// Table 4.3, DCT top-K per row: K, compression, SQNR.
pub const TABLE_4_3: [Setting; 3] = [
    Setting {
        param: 50,
        compression: 46.0,
        sqnr_db: 0.7,
    },
    Setting {
        param: 100,
        compression: 23.0,
        sqnr_db: 1.3,
    },
    Setting {
        param: 200,
        compression: 12.0,
        sqnr_db: 2.2,
    },
];

/// Table 4.4, Kronecker sum: rank, compression, SQNR.
pub const TABLE_4_4: [Setting; 3] = [
    Setting {
        param: 4,
        compression: 154.0,
        sqnr_db: 0.1,
    },
    Setting {
        param: 8,
        compression: 77.0,
        sqnr_db: 0.2,
    },
    Setting {
        param: 16,
        compression: 38.0,
        sqnr_db: 0.3,
    },
];

/// A row of table 4.5 (summary): method, best compression, quality vs 4-bit.
pub const TABLE_4_5: [(&str, &str, &str); 5] = [
    ("Polynomial (position)", "500x", "100x worse"),
    ("SVD (rank-128)", "5x", "Similar"),
    ("DCT (top-5%)", "20x", "5x worse"),
    ("Kronecker", "50x", "50x worse"),
    ("4-bit Affine", "4x", "Baseline"),
];
