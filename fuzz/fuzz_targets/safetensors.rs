//! Fuzzes the safetensors reader: header length and cap, JSON header,
//! dtypes, shapes and data offsets, then converts every tensor of a
//! successful parse to f32.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    membound_tensor::safetensors::fuzz_parse(data);
});
