//! Criterion benchmarks for membound; see `benches/`.
