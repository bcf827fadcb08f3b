//! Sampling the next token from logits: greedy, temperature, top-k, top-p.
