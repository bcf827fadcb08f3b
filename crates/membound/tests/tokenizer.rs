//! Tokenizers against independent references.
//!
//! The constants marked "gen_tokenizer_refs.py" come from
//! `scripts/gen_tokenizer_refs.py`: SmolLM2 ids from the Python `tokenizers`
//! package over the GGUF's own vocabulary and merges (checked there against a
//! from-scratch byte-level BPE with llama.cpp's "smollm" regexes), MiniLM ids
//! from the Python package over its tokenizer.json, llama2.c ids from a
//! literal Python port of run.c's encode.

use membound::Error;
use membound::tokenizer::{ChatMessage, TextStream, Tokenizer, chat_prompt};
use membound_tensor::{GgufFile, open, registry};

fn missing(model: &str) {
    assert!(
        std::env::var("MEMBOUND_REQUIRE_MODELS").as_deref() != Ok("1"),
        "{model} missing"
    );
    eprintln!("SKIPPED: {model} not found (membound models fetch, or ../shared/models)");
}

fn llama2xs() -> Option<(std::path::PathBuf, Tokenizer)> {
    let (model, tok) = registry::fixture("llama2xs-280K")?;
    Some((model, Tokenizer::from_llama2c(&tok, 512).unwrap()))
}

fn smollm2() -> Option<Tokenizer> {
    let path = registry::SMOLLM2.locate()?;
    let src = open(&path).unwrap();
    Some(Tokenizer::from_gguf(src.as_ref()).unwrap())
}

/// Feeds `ids` one at a time; returns every push's output.
fn stream(tok: &Tokenizer, ids: &[u32], skip_leading_space: bool) -> Vec<String> {
    let mut s = TextStream::new(tok, skip_leading_space);
    ids.iter().map(|&id| s.push(id).unwrap()).collect()
}

#[track_caller]
fn assert_request_err<T: std::fmt::Debug>(r: membound::Result<T>, needle: &str) {
    match r {
        Err(Error::Request(m)) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
        other => panic!("expected Error::Request, got {other:?}"),
    }
}

#[track_caller]
fn assert_model_err<T: std::fmt::Debug>(r: membound::Result<T>, needle: &str) {
    match r {
        Err(Error::Model { path, problem }) => assert!(
            problem.contains(needle) || path.contains(needle),
            "{path}: {problem:?} lacks {needle:?}"
        ),
        other => panic!("expected Error::Model, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// llama2.c
// ---------------------------------------------------------------------------

/// Greedy ids from BOS of llama2xs-280K (tests/cpu_reference.rs, from an
/// independent NumPy forward pass).
const GREEDY: [u32; 20] = [
    403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396, 267,
    337,
];
const LILY: &str = "Once upon a time, there was a little girl named Lily.";
/// gen_tokenizer_refs.py: run.c encode of LILY with BOS.
const LILY_IDS: [u32; 16] = [
    1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426,
];
const TIES: &str =
    "aaaa bbbb eeeee  the the thethe   oooo!! Lily's mom said, \"Sleep now.\"\tzzz\n\nEND";
/// gen_tokenizer_refs.py: run.c encode of TIES with BOS (repeats make equal-score pairs).
const TIES_IDS: [u32; 51] = [
    1, 261, 412, 412, 412, 268, 430, 430, 430, 344, 411, 411, 411, 411, 410, 265, 265, 265, 413,
    260, 410, 410, 334, 347, 414, 443, 443, 317, 439, 419, 357, 336, 432, 313, 437, 305, 411, 427,
    297, 327, 426, 436, 12, 451, 451, 451, 13, 13, 459, 458, 455,
];
const BYTES: &str = "Tom said: \"東京, café!\"\n";
/// gen_tokenizer_refs.py: run.c encode of BYTES without BOS (東京 and é fall back to <0xXX>).
const BYTES_IDS: [u32; 19] = [
    274, 287, 336, 467, 313, 233, 160, 180, 231, 189, 175, 432, 280, 412, 431, 485, 443, 436, 13,
];

#[test]
fn llama2xs_decodes_the_reference_greedy_ids() {
    let Some((_, tok)) = llama2xs() else {
        return missing("llama2xs-280K");
    };
    let with_bos: Vec<u32> = std::iter::once(1).chain(GREEDY).collect();
    let text = tok.decode(&with_bos).unwrap();
    assert!(text.starts_with(&format!("{LILY} She")), "{text:?}");
    // Without BOS before it, the first piece keeps its space.
    assert_eq!(tok.decode(&GREEDY).unwrap(), format!(" {text}"));
    // Streaming gives the same text, with or without the BOS pushed.
    assert_eq!(stream(&tok, &with_bos, false).concat(), text);
    assert_eq!(stream(&tok, &GREEDY, true).concat(), text);
    assert_eq!(stream(&tok, &GREEDY, false).concat(), format!(" {text}"));
}

#[test]
fn llama2xs_encodes_like_run_c() {
    let Some((_, tok)) = llama2xs() else {
        return missing("llama2xs-280K");
    };
    assert_eq!(tok.encode(LILY, true).unwrap(), LILY_IDS);
    assert_eq!(LILY_IDS[1..], GREEDY[..15], "the model's own continuation");
    assert_eq!(tok.decode(&LILY_IDS).unwrap(), LILY);
    assert_eq!(tok.encode(LILY, false).unwrap(), LILY_IDS[1..]);

    assert_eq!(tok.encode(TIES, true).unwrap(), TIES_IDS);
    assert_eq!(tok.decode(&TIES_IDS).unwrap(), TIES);
    assert_eq!(stream(&tok, &TIES_IDS, false).concat(), TIES);

    let ids = tok.encode(BYTES, false).unwrap();
    assert_eq!(ids, BYTES_IDS);
    assert_eq!(tok.decode(&ids).unwrap(), format!(" {BYTES}"));
    let with_bos = tok.encode(BYTES, true).unwrap();
    assert_eq!(tok.decode(&with_bos).unwrap(), BYTES);
    // 東京 arrives as six byte tokens: the stream holds them until whole.
    let parts = stream(&tok, &with_bos, false);
    assert_eq!(parts.concat(), BYTES);
    assert!(parts.iter().all(|p| !p.contains('\u{FFFD}')), "{parts:?}");
    assert!(parts.iter().any(|p| p == "東"), "{parts:?}");

    assert_eq!(tok.encode("", true).unwrap(), [1]);
    assert!(tok.encode("", false).unwrap().is_empty());
}

#[test]
fn llama2xs_vocabulary_facts() {
    let Some((model, tok)) = llama2xs() else {
        return missing("llama2xs-280K");
    };
    assert_eq!(tok.kind(), "llama2.c");
    assert_eq!(tok.vocab_size(), 512);
    assert_eq!((tok.bos(), tok.eos()), (Some(1), Some(2)));
    assert_eq!(tok.stop_ids(), [2]);
    assert_eq!(tok.token_to_id(" t"), Some(259));
    assert_eq!(tok.token_to_id("<0x41>"), Some(0x41 + 3));
    assert_eq!(tok.token_to_id("no such piece"), None);
    assert_eq!(tok.decode(&[0x41 + 3]).unwrap(), "A");

    let src = open(&model).unwrap();
    let found = Tokenizer::for_model(&model, src.as_ref()).unwrap();
    assert_eq!((found.kind(), found.vocab_size()), ("llama2.c", 512));
    assert_eq!(found.encode(LILY, true).unwrap(), LILY_IDS);
}

#[test]
fn llama2c_without_byte_tokens_rejects_unknown_characters() {
    let Some((model, _)) = registry::fixture("babyllama105") else {
        return missing("babyllama105");
    };
    let src = open(&model).unwrap();
    let tok = Tokenizer::for_model(&model, src.as_ref()).unwrap();
    assert_eq!(tok.vocab_size(), 105);
    let text = "Once upon a time, Tom ran.";
    let ids = tok.encode(text, true).unwrap();
    assert_eq!(tok.decode(&ids).unwrap(), text);
    assert_request_err(tok.encode("a 東 b", false), "東");
}

#[test]
fn llama2c_missing_or_mismatched_tokenizer_is_an_error() {
    let Some((model, tok_path)) = registry::fixture("llama2xs-280K") else {
        return missing("llama2xs-280K");
    };
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("model.bin");
    std::fs::copy(&model, &copy).unwrap();
    let src = open(&copy).unwrap();
    assert_model_err(Tokenizer::for_model(&copy, src.as_ref()), "tok*.bin");
    // A tokenizer of another size is not taken.
    if let Some((_, tok105)) = registry::fixture("babyllama105") {
        std::fs::copy(tok105, dir.path().join("tok105.bin")).unwrap();
        let err = Tokenizer::for_model(&copy, src.as_ref()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("512 tokens") && msg.contains("tok105.bin"),
            "{msg}"
        );
    }
    std::fs::copy(&tok_path, dir.path().join("tok512.bin")).unwrap();
    assert_eq!(
        Tokenizer::for_model(&copy, src.as_ref())
            .unwrap()
            .vocab_size(),
        512
    );
    // The wrong vocabulary size for the file is an error, not a short read.
    assert!(Tokenizer::from_llama2c(&tok_path, 511).is_err());
    assert!(Tokenizer::from_llama2c(&tok_path, 513).is_err());
    assert!(Tokenizer::from_llama2c(&dir.path().join("nope.bin"), 512).is_err());
}

// ---------------------------------------------------------------------------
// SmolLM2 (GGUF)
// ---------------------------------------------------------------------------

const CHAT: &str = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";

/// gen_tokenizer_refs.py: (text, ids) from the Python `tokenizers` package.
const SMOL_CASES: [(&str, &[u32]); 6] = [
    (
        "Hello, world! It's a test: don't panic; we'll see (maybe).",
        &[
            19556, 28, 905, 17, 657, 506, 253, 1028, 42, 1326, 982, 14455, 43, 392, 3060, 963, 365,
            27066, 595,
        ],
    ),
    (
        "In 2024, 1234567 people paid $3.50 each, i.e. 12.5%.",
        &[
            788, 216, 34, 32, 34, 36, 28, 216, 33, 34, 35, 36, 37, 38, 39, 701, 5940, 1885, 35, 30,
            37, 32, 971, 28, 2056, 30, 85, 30, 216, 33, 34, 30, 37, 8006,
        ],
    ),
    (
        "multiple   spaces  and\ttabs",
        &[30404, 256, 5600, 216, 284, 197, 100, 7366],
    ),
    (
        "line one\nline two\n\n  indented\n",
        &[1311, 582, 198, 1311, 827, 8866, 641, 6574, 198],
    ),
    (
        "café naïve 東京 🚀",
        &[
            83, 1939, 2756, 15486, 46494, 17097, 247, 126, 16736, 122, 15107, 244, 218,
        ],
    ),
    (
        CHAT,
        &[
            1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411,
            407, 19712, 8182, 2, 198, 1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1,
            520, 9531, 198,
        ],
    ),
];
/// gen_tokenizer_refs.py: "東京 🚀".
const SMOL_STREAM: [u32; 7] = [30679, 126, 16736, 122, 15107, 244, 218];

#[test]
fn smollm2_encodes_like_python_tokenizers() {
    let Some(tok) = smollm2() else {
        return missing("smollm2");
    };
    assert_eq!(tok.kind(), "bpe (gguf)");
    assert_eq!(tok.vocab_size(), 49152);
    for (text, want) in SMOL_CASES {
        assert_eq!(tok.encode(text, false).unwrap(), want, "{text:?}");
        assert_eq!(tok.decode(want).unwrap(), text, "{text:?}");
        // add_bos_token is false in this GGUF: no BOS to add.
        assert_eq!(tok.encode(text, true).unwrap(), want, "{text:?}");
    }
    assert_eq!(tok.encode("東京 🚀", false).unwrap(), SMOL_STREAM);
    assert!(tok.encode("", false).unwrap().is_empty());
}

#[test]
fn smollm2_special_tokens_and_stop_ids() {
    let Some(tok) = smollm2() else {
        return missing("smollm2");
    };
    assert_eq!(tok.bos(), None, "GGUF says add_bos_token = false");
    assert_eq!(tok.eos(), Some(2));
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
    assert_eq!(tok.token_to_id("<|im_start|>"), Some(1));
    assert_eq!(tok.encode("<|im_end|>", false).unwrap(), [2]);
    assert_eq!(tok.encode("x<|im_end|>y", false).unwrap().len(), 3);
    let stops = tok.stop_ids();
    assert_eq!(stops[0], 2);
    assert!(stops.contains(&0), "<|endoftext|> is id 0: {stops:?}");
    assert!(!stops.contains(&1));
    // Special tokens decode as their text.
    assert_eq!(
        tok.decode(&[1, 2, 0]).unwrap(),
        "<|im_start|><|im_end|><|endoftext|>"
    );

    let path = registry::SMOLLM2.locate().unwrap();
    let src = open(&path).unwrap();
    let found = Tokenizer::for_model(&path, src.as_ref()).unwrap();
    assert_eq!(found.encode(CHAT, false).unwrap(), SMOL_CASES[5].1);
}

#[test]
fn smollm2_stream_reassembles_split_characters() {
    let Some(tok) = smollm2() else {
        return missing("smollm2");
    };
    let parts = stream(&tok, &SMOL_STREAM, false);
    assert_eq!(parts.concat(), "東京 🚀");
    assert_eq!(parts.concat(), tok.decode(&SMOL_STREAM).unwrap());
    assert!(parts.iter().all(|p| !p.contains('\u{FFFD}')), "{parts:?}");
    // 京 and 🚀 are split over byte tokens: some pushes must hold back.
    assert!(parts.iter().any(String::is_empty), "{parts:?}");
    // Streaming a whole chat prompt equals decoding it.
    let ids = SMOL_CASES[5].1;
    assert_eq!(stream(&tok, ids, false).concat(), CHAT);
    // skip_leading_space drops exactly one leading space.
    let ids = tok.encode("  hi", false).unwrap();
    assert_eq!(stream(&tok, &ids, true).concat(), " hi");
}

#[test]
fn chat_prompt_follows_the_smollm2_template() {
    let user = ChatMessage::new("user", "What is the capital of France?");
    assert_eq!(chat_prompt(std::slice::from_ref(&user), true), CHAT);
    assert_eq!(
        chat_prompt(std::slice::from_ref(&user), false),
        CHAT.trim_end_matches("<|im_start|>assistant\n")
    );
    let system = ChatMessage {
        role: "system".into(),
        content: "Be brief.".into(),
    };
    let reply = ChatMessage::new("assistant", "Paris.");
    assert_eq!(
        chat_prompt(&[system, user.clone(), reply], true),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\nParis.<|im_end|>\n<|im_start|>assistant\n"
    );
    // A system message later on does not replace the default one.
    let late = ChatMessage::new("system", "x");
    assert!(chat_prompt(&[user, late], false).starts_with("<|im_start|>system\nYou are a helpful"));
    // No messages: the template's loop adds nothing.
    assert_eq!(chat_prompt(&[], true), "<|im_start|>assistant\n");
    assert_eq!(chat_prompt(&[], false), "");
}

// ---------------------------------------------------------------------------
// MiniLM (tokenizer.json)
// ---------------------------------------------------------------------------

#[test]
fn minilm_tokenizer_json_matches_python() {
    let Some(model) = registry::MINILM.locate() else {
        return missing("minilm");
    };
    let src = open(&model).unwrap();
    let tok = Tokenizer::for_model(&model, src.as_ref()).unwrap();
    assert_eq!(tok.kind(), "tokenizer.json");
    // gen_tokenizer_refs.py (padding and truncation off).
    assert_eq!(
        tok.encode("Hello world", true).unwrap(),
        [101, 7592, 2088, 102]
    );
    assert_eq!(tok.encode("Hello world", false).unwrap(), [7592, 2088]);
    assert_eq!(tok.decode(&[7592, 2088]).unwrap(), "hello world");
    assert_eq!((tok.bos(), tok.eos()), (Some(101), Some(102)));
    // Long text is not truncated at the file's 128.
    let long = "word ".repeat(300);
    assert_eq!(tok.encode(&long, false).unwrap().len(), 300);
    assert_request_err(tok.decode(&[7592, 1 << 30]), "1073741824");
    // The directory works as well as the weights file.
    let by_dir = Tokenizer::for_model(&registry::MINILM.dir(), src.as_ref()).unwrap();
    assert_eq!(by_dir.encode("Hello world", false).unwrap(), [7592, 2088]);
}

// ---------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------

#[test]
fn bad_tokenizer_json_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, b"\x00\xffnot json at all").unwrap();
    assert_model_err(Tokenizer::from_json(&garbage), "garbage.json");
    let truncated = dir.path().join("truncated.json");
    std::fs::write(
        &truncated,
        br#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"model":{"type":"BPE","vocab":{"a":0,"#,
    )
    .unwrap();
    assert_model_err(Tokenizer::from_json(&truncated), "truncated.json");
    if let Some(model) = registry::MINILM.locate() {
        let real = std::fs::read(model.with_file_name("tokenizer.json")).unwrap();
        let cut = dir.path().join("cut.json");
        std::fs::write(&cut, &real[..real.len() / 2]).unwrap();
        assert_model_err(Tokenizer::from_json(&cut), "cut.json");
    }
    assert_model_err(
        Tokenizer::from_json(&dir.path().join("absent.json")),
        "absent.json",
    );
    // A safetensors model with no tokenizer.json beside it.
    let st = dir.path().join("model.safetensors");
    membound_tensor::write_safetensors(&st, &[], &[]).unwrap();
    let src = open(&st).unwrap();
    assert_model_err(Tokenizer::for_model(&st, src.as_ref()), "tokenizer.json");
}

/// GGUF metadata values for [`gguf`].
enum V {
    Str(&'static str),
    Bool(bool),
    U32(u32),
    Strs(Vec<&'static str>),
    I32s(Vec<i32>),
}

/// A GGUF v3 file with these key/values and no tensors.
fn gguf(kvs: &[(&str, V)]) -> GgufFile {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    let mut out = b"GGUF".to_vec();
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    out.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    for (k, v) in kvs {
        string(&mut out, k);
        match v {
            V::Str(s) => {
                out.extend_from_slice(&8u32.to_le_bytes());
                string(&mut out, s);
            }
            V::Bool(b) => {
                out.extend_from_slice(&7u32.to_le_bytes());
                out.push(u8::from(*b));
            }
            V::U32(x) => {
                out.extend_from_slice(&4u32.to_le_bytes());
                out.extend_from_slice(&x.to_le_bytes());
            }
            V::Strs(a) => {
                out.extend_from_slice(&9u32.to_le_bytes());
                out.extend_from_slice(&8u32.to_le_bytes());
                out.extend_from_slice(&(a.len() as u64).to_le_bytes());
                for s in a {
                    string(&mut out, s);
                }
            }
            V::I32s(a) => {
                out.extend_from_slice(&9u32.to_le_bytes());
                out.extend_from_slice(&5u32.to_le_bytes());
                out.extend_from_slice(&(a.len() as u64).to_le_bytes());
                for x in a {
                    out.extend_from_slice(&x.to_le_bytes());
                }
            }
        }
    }
    GgufFile::from_bytes("synthetic.gguf", out).unwrap()
}

/// A tiny byte-level BPE: "ab" and "Ġab" (Ġ is the byte-level space).
fn tiny_kvs() -> Vec<(&'static str, V)> {
    vec![
        ("general.architecture", V::Str("llama")),
        ("tokenizer.ggml.model", V::Str("gpt2")),
        ("tokenizer.ggml.pre", V::Str("smollm")),
        (
            "tokenizer.ggml.tokens",
            V::Strs(vec!["<|endoftext|>", "a", "b", "ab", "Ġ", "Ġab", "1", "Ġ1"]),
        ),
        ("tokenizer.ggml.merges", V::Strs(vec!["a b", "Ġ ab", "Ġ 1"])),
        (
            "tokenizer.ggml.token_type",
            V::I32s(vec![3, 1, 1, 1, 1, 1, 1, 1]),
        ),
        ("tokenizer.ggml.bos_token_id", V::U32(0)),
        ("tokenizer.ggml.eos_token_id", V::U32(0)),
    ]
}

fn with(mut kvs: Vec<(&'static str, V)>, key: &'static str, v: Option<V>) -> GgufFile {
    kvs.retain(|(k, _)| *k != key);
    if let Some(v) = v {
        kvs.push((key, v));
    }
    gguf(&kvs)
}

#[test]
fn synthetic_gguf_builds_and_encodes() {
    let tok = Tokenizer::from_gguf(&gguf(&tiny_kvs())).unwrap();
    assert_eq!(tok.vocab_size(), 8);
    assert_eq!(tok.encode("ab ab", false).unwrap(), [3, 5]);
    assert_eq!(tok.encode("ab ab", true).unwrap(), [0, 3, 5]);
    assert_eq!(tok.encode("ab<|endoftext|>", false).unwrap(), [3, 0]);
    // "smollm" splits digits before the byte-level regex: " 11" is Ġ 1 1, not Ġ1 1.
    assert_eq!(tok.encode(" 11", false).unwrap(), [4, 6, 6]);
    let plain = with(tiny_kvs(), "tokenizer.ggml.pre", Some(V::Str("gpt2")));
    let plain = Tokenizer::from_gguf(&plain).unwrap();
    assert_eq!(plain.encode(" 11", false).unwrap(), [7, 6]);
    // BOS is dropped wherever it is (here it is EOS too).
    assert_eq!(tok.decode(&[0, 3, 5, 0]).unwrap(), "ab ab");
    assert_eq!(tok.stop_ids(), [0]);
    assert_request_err(tok.decode(&[3, 8]), "8");
    let mut s = TextStream::new(&tok, false);
    assert_eq!(s.push(3).unwrap(), "ab");
    assert!(s.push(99).is_err());
    assert_eq!(s.push(5).unwrap(), " ab");
}

#[test]
fn bad_gguf_tokenizer_metadata_is_an_error() {
    let none = gguf(&[("general.architecture", V::Str("llama"))]);
    assert_model_err(Tokenizer::from_gguf(&none), "tokenizer.ggml.model");
    let cases: Vec<(&str, Option<V>, &str)> = vec![
        ("tokenizer.ggml.model", Some(V::Str("llama")), "\"llama\""),
        ("tokenizer.ggml.model", Some(V::U32(1)), "not a string"),
        (
            "tokenizer.ggml.tokens",
            None,
            "tokenizer.ggml.tokens is missing",
        ),
        ("tokenizer.ggml.tokens", Some(V::Strs(vec![])), "empty"),
        (
            "tokenizer.ggml.tokens",
            Some(V::Strs(vec![
                "<|endoftext|>",
                "a",
                "b",
                "ab",
                "Ġ",
                "Ġab",
                "1",
                "a",
            ])),
            "both token 1 and token 7",
        ),
        ("tokenizer.ggml.tokens", Some(V::U32(3)), "not an array"),
        ("tokenizer.ggml.merges", None, "merges is missing"),
        (
            "tokenizer.ggml.merges",
            Some(V::Strs(vec!["ab"])),
            "not two pieces",
        ),
        ("tokenizer.ggml.merges", Some(V::Strs(vec!["a c"])), "BPE"),
        (
            "tokenizer.ggml.token_type",
            Some(V::I32s(vec![3])),
            "1 entries for 8",
        ),
        (
            "tokenizer.ggml.bos_token_id",
            Some(V::U32(8)),
            "bos_token_id",
        ),
        (
            "tokenizer.ggml.eos_token_id",
            Some(V::Str("2")),
            "eos_token_id",
        ),
        (
            "tokenizer.ggml.pre",
            Some(V::Str("nonesuch")),
            "\"nonesuch\"",
        ),
        (
            "tokenizer.ggml.add_bos_token",
            Some(V::U32(1)),
            "not a bool",
        ),
    ];
    for (key, v, needle) in cases {
        assert_model_err(Tokenizer::from_gguf(&with(tiny_kvs(), key, v)), needle);
    }
    // add_bos_token = false: no BOS, and id 0 decodes as text.
    let no_bos = with(
        tiny_kvs(),
        "tokenizer.ggml.add_bos_token",
        Some(V::Bool(false)),
    );
    let tok = Tokenizer::from_gguf(&no_bos).unwrap();
    assert_eq!(tok.bos(), None);
    assert_eq!(tok.encode("ab", true).unwrap(), [3]);
    assert_eq!(tok.decode(&[0, 3]).unwrap(), "<|endoftext|>ab");
}

#[test]
fn gguf_reader_on_a_llama2c_model_is_an_error() {
    let Some((model, _)) = registry::fixture("llama2xs-280K") else {
        return missing("llama2xs-280K");
    };
    let src = open(&model).unwrap();
    assert_model_err(Tokenizer::from_gguf(src.as_ref()), "tokenizer.ggml.model");
}

#[test]
fn out_of_vocabulary_ids_are_errors() {
    if let Some((_, tok)) = llama2xs() {
        assert_request_err(tok.decode(&[1, 512]), "512");
        assert_request_err(tok.decode(&[u32::MAX]), "4294967295");
        assert!(TextStream::new(&tok, true).push(512).is_err());
    } else {
        missing("llama2xs-280K");
    }
    if let Some(tok) = smollm2() {
        assert_request_err(tok.decode(&[49152]), "49152");
        assert!(TextStream::new(&tok, false).push(49152).is_err());
    } else {
        missing("smollm2");
    }
}

/// Paths in errors name the file.
#[test]
fn llama2c_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("tok7.bin");
    std::fs::write(&bad, [1u8, 0, 0]).unwrap();
    let err = Tokenizer::from_llama2c(&bad, 7).unwrap_err().to_string();
    assert!(err.contains("tok7.bin"), "{err}");
}

/// Writes a llama2.c tokenizer file of `(piece, score)` entries.
fn write_llama2c_tok(path: &std::path::Path, tokens: &[(&str, f32)]) {
    let mut out = 8i32.to_le_bytes().to_vec();
    for (piece, score) in tokens {
        out.extend_from_slice(&score.to_le_bytes());
        out.extend_from_slice(&(piece.len() as i32).to_le_bytes());
        out.extend_from_slice(piece.as_bytes());
    }
    std::fs::write(path, out).unwrap();
}

/// run.c compares scores with `>` from a best of -1e10: -0.0 ties with 0.0
/// (the leftmost pair wins), and scores at or below -1e10 (or NaN) never merge.
#[test]
fn llama2c_merges_compare_scores_like_run_c() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tok9.bin");
    write_llama2c_tok(
        &path,
        &[
            ("<unk>", 0.0),
            ("\n<s>\n", 0.0),
            ("\n</s>\n", 0.0),
            (" ", 0.0),
            ("a", 0.0),
            ("b", 0.0),
            ("ab", -0.0),
            ("ba", 0.0),
            ("bb", -1e10),
        ],
    );
    let tok = Tokenizer::from_llama2c(&path, 9).unwrap();
    // " aba": "ab" (-0.0) at the left ties with "ba" (0.0): "ab" wins.
    assert_eq!(tok.encode("aba", false).unwrap(), [3, 6, 4]);
    assert_eq!(tok.encode("bab", false).unwrap(), [3, 7, 5]);
    // "bb" scores -1e10, which is not > -1e10.
    assert_eq!(tok.encode("bb", false).unwrap(), [3, 5, 5]);
    assert_eq!(tok.decode(&[1, 3, 6, 4]).unwrap(), "aba");
    // No <0xXX> tokens: unknown characters are an error.
    assert_request_err(tok.encode("c", false), "'c'");
}

/// A `membound quantize` output has no tokenizer beside it: the tokenizer
/// of its source is found (here the llama2.c fixture's tok512.bin).
#[test]
fn quantized_file_finds_its_source_tokenizer() {
    let Some((path, want)) = llama2xs() else {
        return;
    };
    let src = open(&path).unwrap();
    let q = membound::quantize::quantize(src.as_ref(), "affine:bits=4,group=32", &|_, _, _| {})
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q.safetensors");
    membound::quantize::write(&q, &path, &out, false).unwrap();
    let qsrc = open(&out).unwrap();
    let tok = Tokenizer::for_model(&out, qsrc.as_ref()).unwrap();
    let text = "Once upon a time, there was a little girl named Lily.";
    assert_eq!(
        tok.encode(text, true).unwrap(),
        want.encode(text, true).unwrap()
    );
}
