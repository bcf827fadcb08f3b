//! Tokenizers: byte-level BPE from GGUF metadata, `tokenizer.json`, and the
//! llama2.c format; the SmolLM2-Instruct chat template.
