//! Fuzzes the GGUF reader: header, metadata, tensor infos, alignment and
//! data ranges, then converts every tensor of a successful parse to f32
//! (dequantizing the ggml block formats).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    membound_tensor::gguf::fuzz_parse(data);
});
