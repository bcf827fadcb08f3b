//! Quality of a decoder against a reference: perplexity, KL divergence and
//! top-1 agreement over a text.
