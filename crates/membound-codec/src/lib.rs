//! Weight quantization codecs behind one trait, bit packing, and error
//! metrics (SQNR, bits/weight, kurtosis).
//!
//! This crate is filled by the codec issue; it depends only on
//! `membound-tensor`. Nothing is public yet.
