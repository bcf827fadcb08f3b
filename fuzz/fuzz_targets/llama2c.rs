//! Fuzzes the llama2.c readers: the same bytes are parsed as a checkpoint
//! (seven-int32 header, implied tensor layout, exact file size) and as a
//! tokenizer file (max token length, then score/length/bytes per token).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    membound_tensor::llama2c::fuzz_parse(data);
});
