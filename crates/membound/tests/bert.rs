//! The BERT encoder on all-MiniLM-L6-v2: sentence similarity behaves, and
//! one embedding matches an independent float64 NumPy forward pass
//! (`scripts/ref_minilm.py`).

use membound::model::Bert;
use membound_tensor::registry;
use tokenizers::Tokenizer;

fn minilm() -> Option<(Bert, Tokenizer)> {
    let Some(path) = registry::MINILM.locate() else {
        assert!(
            std::env::var("MEMBOUND_REQUIRE_MODELS").as_deref() != Ok("1"),
            "minilm missing"
        );
        eprintln!("SKIPPED: minilm not found (membound models fetch minilm)");
        return None;
    };
    let bert = Bert::load(&path).unwrap();
    let mut tok = Tokenizer::from_file(path.with_file_name("tokenizer.json")).unwrap();
    // tokenizer.json pads to 128; the encoder takes the real tokens only.
    tok.with_padding(None);
    tok.with_truncation(None).unwrap();
    Some((bert, tok))
}

fn ids(tok: &Tokenizer, text: &str) -> Vec<u32> {
    tok.encode(text, true).unwrap().get_ids().to_vec()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// From `scripts/ref_minilm.py` (float64 NumPy, hand-read safetensors):
/// "A man is eating food." = [CLS] a man is eating food . [SEP].
const IDS: [u32; 8] = [101, 1037, 2158, 2003, 5983, 2833, 1012, 102];
const REF_FIRST8: [f64; 8] = [
    0.033_241_573,
    0.004_406_063_6,
    -0.006_276_944_8,
    0.048_378_713,
    -0.138_702_25,
    -0.033_617_409,
    0.101_128_33,
    -0.054_384_974,
];
/// Norm of the mean-pooled hidden state before normalising.
const REF_MEAN_NORM: f64 = 5.632_677_08;
/// Token 0's last hidden state, first 8 values.
const REF_TOKEN0: [f64; 8] = [
    -0.002_550_406_1,
    0.117_697_31,
    0.003_737_892_2,
    0.244_708_14,
    -0.517_231_3,
    -0.129_285_27,
    0.061_944_582,
    -0.234_084_73,
];

#[test]
fn embedding_matches_numpy_float64_reference() {
    let Some((bert, tok)) = minilm() else { return };
    let c = bert.config();
    assert_eq!(
        (
            c.hidden,
            c.n_layers,
            c.n_heads,
            c.intermediate,
            c.vocab_size
        ),
        (384, 6, 12, 1536, 30522)
    );
    assert_eq!(c.layer_norm_eps, 1e-12);
    assert_eq!(ids(&tok, "A man is eating food."), IDS);
    let e = bert.embed(&IDS).unwrap();
    assert_eq!(e.len(), 384);
    let norm = e.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() < 1e-6, "|e| = {norm}");
    for (i, (got, want)) in e.iter().zip(REF_FIRST8).enumerate() {
        assert!(
            (f64::from(*got) - want).abs() < 2e-6,
            "embedding[{i}] = {got}, reference {want}"
        );
    }
    let states = bert.hidden_states(&IDS).unwrap();
    assert_eq!(states.len(), IDS.len());
    for (i, (got, want)) in states[0].iter().zip(REF_TOKEN0).enumerate() {
        assert!(
            (f64::from(*got) - want).abs() < 2e-5,
            "token 0 state[{i}] = {got}, reference {want}"
        );
    }
    let mean: Vec<f64> = (0..384)
        .map(|j| states.iter().map(|s| s[j] as f64).sum::<f64>() / states.len() as f64)
        .collect();
    let mean_norm = mean.iter().map(|v| v * v).sum::<f64>().sqrt();
    assert!(
        (mean_norm - REF_MEAN_NORM).abs() < 1e-4,
        "mean norm {mean_norm}"
    );
}

#[test]
fn similar_sentences_are_closer() {
    let Some((bert, tok)) = minilm() else { return };
    let emb = |s: &str| bert.embed(&ids(&tok, s)).unwrap();
    let a = emb("A man is eating food.");
    let b = emb("A man is eating a piece of bread.");
    let c = emb("The stock market crashed today.");
    let (close, far) = (cosine(&a, &b), cosine(&a, &c));
    eprintln!("cos(food, bread) = {close:.4}, cos(food, stocks) = {far:.4}");
    assert!(close > far + 0.3, "cos {close} vs {far}");
    assert!(close > 0.5 && far < 0.3);
}

#[test]
fn forward_with_reports_every_projection_input() {
    let Some((bert, _)) = minilm() else { return };
    let mut seen: std::collections::BTreeMap<(usize, String), (usize, usize)> = Default::default();
    let states = bert
        .forward_with(&IDS, &mut |layer, site, v| {
            let e = seen
                .entry((layer, site.to_string()))
                .or_insert((0, v.len()));
            e.0 += 1;
            assert_eq!(e.1, v.len());
            assert!(v.iter().all(|x| x.is_finite()));
        })
        .unwrap();
    assert_eq!(states, bert.hidden_states(&IDS).unwrap());
    assert_eq!(seen.len(), 6 * 4);
    for ((layer, site), (count, len)) in seen {
        assert_eq!(count, IDS.len(), "{layer} {site}");
        let want = if site == "ffn_down_in" { 1536 } else { 384 };
        assert_eq!(len, want, "{layer} {site}");
    }
}

#[test]
fn bad_inputs_are_errors() {
    let Some((bert, _)) = minilm() else { return };
    assert!(bert.embed(&[]).is_err());
    let e = bert.embed(&[101, 30522, 102]).unwrap_err().to_string();
    assert!(e.contains("30522"), "{e}");
    let e = bert.embed(&vec![1000; 513]).unwrap_err().to_string();
    assert!(e.contains("513"), "{e}");
    let tmp = tempfile::tempdir().unwrap();
    assert!(Bert::load(tmp.path()).is_err());
}

#[test]
fn config_inferred_from_shapes_without_config_json() {
    let Some((bert, _)) = minilm() else { return };
    let path = registry::MINILM.locate().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let alone = tmp.path().join("model.safetensors");
    std::os::unix::fs::symlink(&path, &alone).unwrap();
    let inferred = Bert::load(tmp.path()).unwrap();
    assert_eq!(inferred.config(), bert.config());
    assert_eq!(inferred.embed(&IDS).unwrap(), bert.embed(&IDS).unwrap());
}
