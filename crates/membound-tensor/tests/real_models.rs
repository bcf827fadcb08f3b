//! The real models open end to end with the tensors, shapes and values they
//! are known to have.

mod common;

use membound_tensor::registry::{MINILM, SMOLLM2};
use membound_tensor::{
    DType, Format, GgmlType, GgufFile, Llama2cFile, Llama2cTokenizer, SafetensorsFile,
    TensorSource, open,
};
use sha2::{Digest, Sha256};

fn shape_of(src: &dyn TensorSource, name: &str) -> Vec<usize> {
    src.tensor(name)
        .unwrap_or_else(|e| panic!("{e}"))
        .shape()
        .to_vec()
}

#[test]
fn smollm2_gguf_structure() {
    let Some(path) = common::registry_model(SMOLLM2) else {
        return;
    };
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.architecture(), Some("llama"));
    assert_eq!(f.arch_u64("block_count"), Some(30));
    assert_eq!(f.arch_u64("embedding_length"), Some(576));
    assert_eq!(f.arch_u64("feed_forward_length"), Some(1536));
    assert_eq!(f.arch_u64("attention.head_count"), Some(9));
    assert_eq!(f.arch_u64("attention.head_count_kv"), Some(3));
    assert_eq!(
        f.get("tokenizer.ggml.model").and_then(|v| v.as_str()),
        Some("gpt2")
    );
    assert_eq!(
        f.get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
            .map(<[_]>::len),
        Some(49152)
    );

    let tensors = f.tensors();
    assert_eq!(
        tensors.len(),
        272,
        "30 layers × 9 + token_embd + output_norm"
    );
    let emb = f.tensor("token_embd.weight").unwrap();
    assert_eq!(emb.shape(), [49152, 576]);
    assert_eq!(emb.dtype(), DType::Ggml(GgmlType::Q8_0));
    assert_eq!(shape_of(&f, "blk.0.attn_q.weight"), [576, 576]);
    assert_eq!(shape_of(&f, "blk.0.attn_k.weight"), [192, 576]);
    assert_eq!(shape_of(&f, "blk.29.ffn_down.weight"), [576, 1536]);
    assert_eq!(shape_of(&f, "blk.29.ffn_gate.weight"), [1536, 576]);
    assert_eq!(
        f.tensor("blk.0.ffn_up.weight").unwrap().dtype(),
        DType::Ggml(GgmlType::Q4_1)
    );
    assert_eq!(f.tensor("output_norm.weight").unwrap().dtype(), DType::F32);
    let params: usize = tensors.iter().map(|t| t.numel()).sum();
    assert_eq!(params, 134_515_008);
}

/// Every tensor of SmolLM2 dequantizes to exactly the f32 bytes that the
/// `gguf` Python package's dequantization gives (hashes made by
/// `scripts/gen_smollm2_refs.py`).
#[test]
fn smollm2_dequantizes_like_ggml() {
    let Some(path) = common::registry_model(SMOLLM2) else {
        return;
    };
    let refs: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/smollm2_f32_sha256.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let f = open(&path).unwrap();
    let mut checked = 0;
    for t in f.tensors() {
        let r = &refs[t.name()];
        assert!(r.is_object(), "no reference for {}", t.name());
        let values = t.to_f32().unwrap();
        assert!(
            values.iter().all(|v| v.is_finite()),
            "{} has non-finite values",
            t.name()
        );
        let shape: Vec<usize> = serde_json::from_value(r["shape"].clone()).unwrap();
        assert_eq!(t.shape(), shape, "{}", t.name());
        let mut h = Sha256::new();
        for v in &values {
            h.update(v.to_le_bytes());
        }
        let got: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            got,
            r["sha256"].as_str().unwrap(),
            "{} ({}) differs from gguf-py",
            t.name(),
            t.dtype()
        );
        checked += 1;
    }
    assert_eq!(checked, 272);
}

#[test]
fn minilm_safetensors() {
    let Some(path) = common::registry_model(MINILM) else {
        return;
    };
    let f = SafetensorsFile::open(&path).unwrap();
    assert_eq!(f.format(), Format::Safetensors);
    let tensors = f.tensors();
    assert_eq!(tensors.len(), 104);
    assert_eq!(
        shape_of(&f, "embeddings.word_embeddings.weight"),
        [30522, 384]
    );
    assert_eq!(
        shape_of(&f, "encoder.layer.0.intermediate.dense.weight"),
        [1536, 384]
    );
    assert_eq!(
        shape_of(&f, "encoder.layer.5.output.dense.weight"),
        [384, 1536]
    );
    assert_eq!(
        f.tensor("embeddings.position_ids").unwrap().dtype(),
        DType::I64
    );
    let params: usize = tensors.iter().map(|t| t.numel()).sum();
    assert_eq!(params, 22_713_728);
    for t in tensors {
        let v = t.to_f32().unwrap();
        assert!(v.iter().all(|x| x.is_finite()), "{}", t.name());
    }
    // LayerNorm weights of a trained BERT sit near 1; word embeddings near 0.
    let ln = f
        .tensor("embeddings.LayerNorm.weight")
        .unwrap()
        .to_f32()
        .unwrap();
    let mean = ln.iter().sum::<f32>() / ln.len() as f32;
    assert!((0.5..1.5).contains(&mean), "{mean}");
}

fn check_fixture(name: &str, dim: usize, hidden: usize, vocab: usize, params: usize) {
    let Some((model, tok)) = common::fixture(name) else {
        return;
    };
    let f = Llama2cFile::open(&model).unwrap();
    let c = f.config();
    assert_eq!(
        (
            c.dim,
            c.hidden_dim,
            c.n_layers,
            c.n_heads,
            c.n_kv_heads,
            c.vocab_size,
            c.seq_len
        ),
        (dim, hidden, 5, 8, 4, vocab, 256)
    );
    assert!(c.shared_classifier);
    let kv = dim / 8 * 4;
    assert_eq!(shape_of(&f, "model.embed_tokens.weight"), [vocab, dim]);
    assert_eq!(
        shape_of(&f, "model.layers.4.self_attn.q_proj.weight"),
        [dim, dim]
    );
    assert_eq!(
        shape_of(&f, "model.layers.0.self_attn.k_proj.weight"),
        [kv, dim]
    );
    assert_eq!(
        shape_of(&f, "model.layers.0.self_attn.v_proj.weight"),
        [kv, dim]
    );
    assert_eq!(
        shape_of(&f, "model.layers.2.mlp.gate_proj.weight"),
        [hidden, dim]
    );
    assert_eq!(
        shape_of(&f, "model.layers.2.mlp.down_proj.weight"),
        [dim, hidden]
    );
    assert_eq!(shape_of(&f, "model.norm.weight"), [dim]);
    assert!(f.tensor("lm_head.weight").is_err(), "classifier is shared");
    let tensors = f.tensors();
    assert_eq!(tensors.len(), 1 + 5 * 9 + 1);
    assert_eq!(tensors.iter().map(|t| t.numel()).sum::<usize>(), params);

    // Independent check of the layout: the embedding is the first tensor
    // after the 28-byte header, and the final norm sits just before the RoPE
    // tables at the end of the file.
    let raw = std::fs::read(&model).unwrap();
    let emb = f
        .tensor("model.embed_tokens.weight")
        .unwrap()
        .to_f32()
        .unwrap();
    assert_eq!(emb[0].to_le_bytes(), raw[28..32]);
    let rope_bytes = 256 * (dim / 8) / 2 * 2 * 4;
    let norm_end = raw.len() - rope_bytes;
    let norm = f.tensor("model.norm.weight").unwrap().to_f32().unwrap();
    assert_eq!(norm[dim - 1].to_le_bytes(), raw[norm_end - 4..norm_end]);

    let t = Llama2cTokenizer::open(&tok, Some(vocab)).unwrap();
    assert_eq!(t.tokens.len(), vocab);
    assert!(t.tokens.iter().all(|(b, _)| b.len() <= t.max_token_length));
    // Both tokenizers put the special tokens first, as llama2.c expects.
    assert_eq!(t.tokens[1].0, b"\n<s>\n");
    assert_eq!(t.tokens[2].0, b"\n</s>\n");
}

#[test]
fn llama2xs_280k_fixture() {
    check_fixture("llama2xs-280K", 64, 192, 512, 279_232);
}

#[test]
fn babyllama105_fixture() {
    check_fixture("babyllama105", 128, 352, 105, 936_448);
}

#[test]
fn open_sniffs_every_format() {
    if let Some(p) = common::registry_model(SMOLLM2) {
        assert_eq!(open(p).unwrap().format(), Format::Gguf);
    }
    if let Some(p) = common::registry_model(MINILM) {
        assert_eq!(open(p).unwrap().format(), Format::Safetensors);
    }
    if let Some((p, _)) = common::fixture("llama2xs-280K") {
        assert_eq!(open(p).unwrap().format(), Format::Llama2c);
    }
}
