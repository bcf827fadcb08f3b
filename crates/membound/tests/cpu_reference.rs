//! The CPU reference decoder reproduces known outputs of real models.

use membound::model::{CpuLlama, LlamaConfig, LlamaWeights};
use membound_tensor::{open, registry};

/// Greedy decoding from token 1 (BOS in both vocabularies used here).
fn greedy(m: &mut CpuLlama, steps: usize) -> Vec<u32> {
    let mut tok = 1u32;
    (0..steps)
        .map(|pos| {
            let logits = m.forward(tok, pos).unwrap();
            tok = logits
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0 as u32;
            tok
        })
        .collect()
}

fn load(path: &std::path::Path) -> CpuLlama {
    let src = open(path).unwrap();
    let cfg = LlamaConfig::from_source(src.as_ref()).unwrap();
    let w = LlamaWeights::load(src.as_ref(), &cfg).unwrap();
    CpuLlama::new(cfg, w)
}

fn missing(model: &str) {
    assert!(
        std::env::var("MEMBOUND_REQUIRE_MODELS").as_deref() != Ok("1"),
        "{model} missing"
    );
    eprintln!("SKIPPED: {model} not found (membound models fetch, or ../shared/models)");
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
    let Some((path, _)) = registry::fixture("llama2xs-280K") else {
        return missing("llama2xs-280K");
    };
    assert_eq!(greedy(&mut load(&path), want.len()), want);
}

/// SmolLM2-135M-Instruct (GGUF, Q4_1/Q8_0 dequantized exactly), greedy from
/// `<|im_start|>`: token ids from an independent float64 NumPy forward pass
/// over gguf-py's dequantization (the pieces read "-the-world-is-a-world-to").
#[test]
fn smollm2_greedy_matches_reference() {
    let Some(path) = registry::SMOLLM2.locate() else {
        return missing("smollm2");
    };
    let mut m = load(&path);
    let cfg = m.config();
    assert_eq!(
        (
            cfg.n_layers,
            cfg.dim,
            cfg.n_heads,
            cfg.n_kv_heads,
            cfg.vocab_size
        ),
        (30, 576, 9, 3, 49152)
    );
    assert_eq!(cfg.rope_theta, 100_000.0);
    let src = open(&path).unwrap();
    assert!(
        src.tensor("output.weight").is_err(),
        "SmolLM2 ties its classifier to the embedding"
    );
    let want = [29, 1195, 29, 6693, 29, 271, 29, 81, 29, 6693, 29, 1141];
    assert_eq!(greedy(&mut m, want.len()), want);
}

/// The activation hook sees every projection input once per token, with the
/// right widths, and a hook that changes nothing changes nothing; zeroing
/// the down-projection input does change the logits.
#[test]
fn activation_hook_sees_every_projection_input() {
    use membound::model::{ActivationHook, Site};
    use std::sync::{Arc, Mutex};

    struct Record(Arc<Mutex<Vec<(usize, Site, usize)>>>, bool);
    impl ActivationHook for Record {
        fn on_input(&mut self, layer: usize, site: Site, x: &mut [f32]) {
            self.0.lock().unwrap().push((layer, site, x.len()));
            if self.1 && site == Site::Down {
                x.fill(0.0);
            }
        }
    }
    let Some((path, _)) = registry::fixture("llama2xs-280K") else {
        return missing("llama2xs-280K");
    };
    let mut plain = load(&path);
    let want = plain.forward(1, 0).unwrap();
    let cfg = plain.config().clone();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut hooked = load(&path);
    hooked.set_hook(Some(Box::new(Record(Arc::clone(&seen), false))));
    assert_eq!(hooked.forward(1, 0).unwrap(), want);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), cfg.n_layers * 4);
    for (i, (layer, site, len)) in seen.iter().enumerate() {
        assert_eq!(*layer, i / 4);
        assert_eq!(*site, Site::ALL[i % 4]);
        let width = if *site == Site::Down {
            cfg.hidden_dim
        } else {
            cfg.dim
        };
        assert_eq!(*len, width);
    }
    let mut zeroing = load(&path);
    zeroing.set_hook(Some(Box::new(Record(
        Arc::new(Mutex::new(Vec::new())),
        true,
    ))));
    assert_ne!(zeroing.forward(1, 0).unwrap(), want);
}
