//! Datasheet memory bandwidth of known GPUs.

/// (adapter-name substring, GB/s), most specific first. Figures are the
/// vendors' datasheet peaks; `--peak-gbps` overrides them.
pub const KNOWN_PEAKS: &[(&str, f64)] = &[
    ("H100 80GB HBM3", 3350.0),
    ("H100 NVL", 3900.0),
    ("H100 PCIe", 2000.0),
    ("H200", 4800.0),
    ("A100-SXM4-80GB", 2039.0),
    ("A100 80GB PCIe", 1935.0),
    ("A100", 1555.0),
    ("L40S", 864.0),
    ("RTX 4090", 1008.0),
    ("RTX 3090", 936.0),
    ("Apple M1 Ultra", 800.0),
    ("Apple M1 Max", 400.0),
    ("Apple M1 Pro", 200.0),
    ("Apple M1", 68.25),
    ("Apple M2 Ultra", 800.0),
    ("Apple M2 Max", 400.0),
    ("Apple M2 Pro", 200.0),
    ("Apple M2", 100.0),
    ("Apple M3 Max", 400.0),
    ("Apple M3 Pro", 150.0),
    ("Apple M3", 100.0),
    ("Apple M4 Max", 546.0),
    ("Apple M4 Pro", 273.0),
    ("Apple M4", 120.0),
];

/// The datasheet peak of the adapter called `name`, if known.
pub fn known_peak_gbps(name: &str) -> Option<f64> {
    KNOWN_PEAKS
        .iter()
        .find(|(k, _)| name.contains(k))
        .map(|(_, g)| *g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_specific_name_wins() {
        assert_eq!(known_peak_gbps("NVIDIA H100 80GB HBM3"), Some(3350.0));
        assert_eq!(known_peak_gbps("NVIDIA H100 PCIe"), Some(2000.0));
        assert_eq!(known_peak_gbps("Apple M1 Pro"), Some(200.0));
        assert_eq!(known_peak_gbps("Apple M1"), Some(68.25));
        assert_eq!(known_peak_gbps("llvmpipe (LLVM 15.0.6, 256 bits)"), None);
    }
}
