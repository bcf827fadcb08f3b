//! Benchmarks that need more than one crate: GPU kernels over real layer
//! shapes, with the device's peak bandwidth as the yardstick.

pub mod decode;
pub mod kernels;
mod peak;

pub use peak::{KNOWN_PEAKS, known_peak_gbps};
