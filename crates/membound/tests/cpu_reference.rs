//! The CPU reference decoder reproduces known outputs of real models.

use membound::model::{CpuLlama, LlamaConfig, LlamaWeights};
use membound_tensor::{open, registry};

fn greedy(model: &str, steps: usize) -> Option<Vec<u32>> {
    let Some((path, _)) = registry::fixture(model) else {
        assert!(
            std::env::var("MEMBOUND_REQUIRE_MODELS").as_deref() != Ok("1"),
            "{model} missing"
        );
        eprintln!("SKIPPED: fixture {model} not found");
        return None;
    };
    let src = open(&path).unwrap();
    let cfg = LlamaConfig::from_source(src.as_ref()).unwrap();
    let w = LlamaWeights::load(src.as_ref(), &cfg).unwrap();
    let mut m = CpuLlama::new(cfg, w);
    let mut tok = 1u32; // BOS
    let mut out = Vec::new();
    for pos in 0..steps {
        let logits = m.forward(tok, pos).unwrap();
        tok = logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0 as u32;
        out.push(tok);
    }
    Some(out)
}

/// Token ids from an independent float64 NumPy implementation of llama2.c's
/// forward pass (greedy from BOS); they decode to " Once upon a time, there
/// was a little girl named Lily. She loved to play outside ...".
#[test]
fn llama2xs_greedy_matches_reference() {
    let want = [
        403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396,
        267, 337,
    ];
    if let Some(got) = greedy("llama2xs-280K", want.len()) {
        assert_eq!(got, want);
    }
}
