//! Tokenizers: byte-level BPE from GGUF metadata, `tokenizer.json`, and the
//! llama2.c format; the SmolLM2-Instruct chat template.
//!
//! [`Tokenizer`] hides which of the three it is. GGUF and `tokenizer.json`
//! tokenizers run on the Hugging Face `tokenizers` crate; the llama2.c one
//! follows `run.c` (dummy-prefix space, codepoint lookup with `<0xXX>` byte
//! fallback, greedy highest-score pair merging). [`TextStream`] turns ids
//! into text one token at a time without splitting UTF-8 characters.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::path::{Path, PathBuf};

use membound_tensor::{Format, Llama2cTokenizer, MetaValue, TensorSource};
use tokenizers::models::bpe::{BPE, Merges, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper};

use crate::{Error, Result};

/// GGUF `token_type` of control (special) tokens.
const TOKEN_TYPE_CONTROL: i64 = 3;
/// Pieces that end generation when present in the vocabulary, besides EOS.
const STOP_PIECES: [&str; 3] = ["<|im_end|>", "<|endoftext|>", "</s>"];
/// Pieces taken as BOS in a `tokenizer.json`, first present wins.
const JSON_BOS_PIECES: [&str; 4] = ["<s>", "<|begin_of_text|>", "<|startoftext|>", "[CLS]"];
/// Pieces taken as EOS in a `tokenizer.json`, first present wins.
const JSON_EOS_PIECES: [&str; 6] = [
    "</s>",
    "<|end_of_text|>",
    "<|endoftext|>",
    "<|im_end|>",
    "<|eot_id|>",
    "[SEP]",
];
/// `tokenizer.ggml.pre` values whose pre-tokenizer is GPT-2's regex alone.
const PRE_GPT2: [&str; 2] = ["gpt2", "default"];
/// `tokenizer.ggml.pre` values that split every digit (`\p{N}`) before
/// GPT-2's regex (llama.cpp groups these together).
const PRE_DIGITS_GPT2: [&str; 4] = ["smollm", "starcoder", "refact", "codeshell"];
/// Most `TextStream` tokens held back while the text ends in U+FFFD; longer
/// means the replacement character is really there (invalid bytes).
const MAX_PENDING: usize = 4;

/// A tokenizer of one of the three supported kinds.
#[derive(Clone, Debug)]
pub struct Tokenizer {
    inner: Inner,
    bos: Option<u32>,
    eos: Option<u32>,
}

#[derive(Clone, Debug)]
enum Inner {
    /// Built on the `tokenizers` crate; `kind` is what [`Tokenizer::kind`] says.
    Hf {
        tok: Box<tokenizers::Tokenizer>,
        kind: &'static str,
    },
    Llama2c(Llama2cVocab),
}

/// The llama2.c vocabulary with a reverse lookup.
#[derive(Clone, Debug)]
struct Llama2cVocab {
    pieces: Vec<Vec<u8>>,
    scores: Vec<f32>,
    /// Piece bytes to the lowest id holding them.
    lookup: HashMap<Vec<u8>, u32>,
}

fn model_err(path: impl AsRef<Path>, problem: impl Into<String>) -> Error {
    Error::Model {
        path: path.as_ref().display().to_string(),
        problem: problem.into(),
    }
}

impl Tokenizer {
    /// Byte-level BPE (GPT-2 style, as SmolLM2 uses) built from GGUF metadata:
    /// `tokenizer.ggml.model` (must be `"gpt2"`), `tokenizer.ggml.tokens`,
    /// `tokenizer.ggml.merges`, `tokenizer.ggml.token_type` (type 3, control,
    /// become special added tokens), the BOS/EOS ids, and
    /// `tokenizer.ggml.pre` (`gpt2`/`default`, or the digit-splitting
    /// `smollm`/`starcoder`/`refact`/`codeshell`; absent means `gpt2`).
    ///
    /// When `tokenizer.ggml.add_bos_token` is `false` (SmolLM2, whose id 1 is
    /// `<|im_start|>`), the tokenizer has no BOS: [`Tokenizer::bos`] is
    /// `None`, `encode` adds none and `decode` keeps id 1 as text.
    pub fn from_gguf(src: &dyn TensorSource) -> Result<Self> {
        let path = src.path();
        let meta: HashMap<String, MetaValue> = src
            .metadata()
            .into_iter()
            .filter(|(k, _)| k.starts_with("tokenizer.ggml."))
            .collect();
        let get = |key: &str| meta.get(&format!("tokenizer.ggml.{key}"));
        let model = get("model").ok_or_else(|| {
            model_err(
                path,
                "no tokenizer metadata (tokenizer.ggml.model is missing)",
            )
        })?;
        match model.as_str() {
            Some("gpt2") => {}
            Some(other) => {
                return Err(model_err(
                    path,
                    format!(
                        "tokenizer.ggml.model is {other:?}; only byte-level BPE (\"gpt2\") is supported"
                    ),
                ));
            }
            None => return Err(model_err(path, "tokenizer.ggml.model is not a string")),
        }
        let strings = |key: &str| -> Result<Vec<&str>> {
            let arr = get(key)
                .ok_or_else(|| model_err(path, format!("tokenizer.ggml.{key} is missing")))?
                .as_array()
                .ok_or_else(|| model_err(path, format!("tokenizer.ggml.{key} is not an array")))?;
            arr.iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_str().ok_or_else(|| {
                        model_err(path, format!("tokenizer.ggml.{key}[{i}] is not a string"))
                    })
                })
                .collect()
        };
        let tokens = strings("tokens")?;
        if tokens.is_empty() {
            return Err(model_err(path, "tokenizer.ggml.tokens is empty"));
        }
        let n = u32::try_from(tokens.len())
            .map_err(|_| model_err(path, "tokenizer.ggml.tokens has too many entries"))?;
        let mut vocab = Vocab::default();
        for (id, t) in (0..n).zip(&tokens) {
            if let Some(prev) = vocab.insert((*t).to_string(), id) {
                return Err(model_err(
                    path,
                    format!("tokenizer.ggml.tokens: {t:?} is both token {prev} and token {id}"),
                ));
            }
        }
        let merges: Merges = strings("merges")?
            .iter()
            .enumerate()
            .map(|(i, m)| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| {
                        model_err(
                            path,
                            format!("tokenizer.ggml.merges[{i}] {m:?} is not two pieces"),
                        )
                    })
            })
            .collect::<Result<_>>()?;

        let types: Vec<i64> = match get("token_type") {
            None => Vec::new(),
            Some(v) => {
                let arr = v
                    .as_array()
                    .ok_or_else(|| model_err(path, "tokenizer.ggml.token_type is not an array"))?;
                if arr.len() != tokens.len() {
                    return Err(model_err(
                        path,
                        format!(
                            "tokenizer.ggml.token_type has {} entries for {} tokens",
                            arr.len(),
                            tokens.len()
                        ),
                    ));
                }
                arr.iter()
                    .enumerate()
                    .map(|(i, v)| {
                        v.as_i64().ok_or_else(|| {
                            model_err(
                                path,
                                format!("tokenizer.ggml.token_type[{i}] is not an integer"),
                            )
                        })
                    })
                    .collect::<Result<_>>()?
            }
        };
        let id_of = |key: &str| -> Result<Option<u32>> {
            let Some(v) = get(key) else { return Ok(None) };
            match v.as_u64().and_then(|x| u32::try_from(x).ok()) {
                Some(id) if id < n => Ok(Some(id)),
                _ => Err(model_err(
                    path,
                    format!("tokenizer.ggml.{key} is {v}, not a token id below {n}"),
                )),
            }
        };
        let mut bos = id_of("bos_token_id")?;
        let eos = id_of("eos_token_id")?;
        id_of("padding_token_id")?;
        match get("add_bos_token") {
            None => {}
            Some(MetaValue::Bool(false)) => bos = None,
            Some(MetaValue::Bool(true)) => {}
            Some(v) => {
                return Err(model_err(
                    path,
                    format!("tokenizer.ggml.add_bos_token is {v}, not a bool"),
                ));
            }
        }
        let add_prefix_space = matches!(get("add_space_prefix"), Some(MetaValue::Bool(true)));
        let byte_level = ByteLevel::new(add_prefix_space, true, true);
        let pre: PreTokenizerWrapper = match get("pre").map(|v| v.as_str()) {
            None => byte_level.into(),
            Some(Some(p)) if PRE_GPT2.contains(&p) => byte_level.into(),
            Some(Some(p)) if PRE_DIGITS_GPT2.contains(&p) => {
                Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
            }
            Some(Some(p)) => {
                return Err(model_err(
                    path,
                    format!(
                        "tokenizer.ggml.pre {p:?} is not supported (known: {})",
                        PRE_GPT2
                            .iter()
                            .chain(&PRE_DIGITS_GPT2)
                            .copied()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            Some(None) => return Err(model_err(path, "tokenizer.ggml.pre is not a string")),
        };

        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| model_err(path, format!("building the BPE model: {e}")))?;
        let mut tok = tokenizers::Tokenizer::new(bpe);
        tok.with_pre_tokenizer(Some(pre));
        tok.with_decoder(Some(ByteLevel::default()));
        let special: Vec<(u32, AddedToken)> = (0..n)
            .zip(types.iter().zip(&tokens))
            .filter(|(_, (t, _))| **t == TOKEN_TYPE_CONTROL)
            .map(|(id, (_, s))| (id, AddedToken::from(*s, true)))
            .collect();
        let added: Vec<AddedToken> = special.iter().map(|(_, a)| a.clone()).collect();
        tok.add_special_tokens(&added);
        // Added tokens already in the vocabulary keep their ids; check it.
        for (id, a) in &special {
            if tok.token_to_id(&a.content) != Some(*id) {
                return Err(model_err(
                    path,
                    format!("special token {:?} did not keep its id {id}", a.content),
                ));
            }
        }
        if tok.get_vocab_size(true) != tokens.len() {
            return Err(model_err(
                path,
                format!(
                    "the tokenizer has {} ids for {} tokens",
                    tok.get_vocab_size(true),
                    tokens.len()
                ),
            ));
        }
        Ok(Self {
            inner: Inner::Hf {
                tok: Box::new(tok),
                kind: "bpe (gguf)",
            },
            bos,
            eos,
        })
    }

    /// A Hugging Face `tokenizer.json`. BOS is the first of `<s>`,
    /// `<|begin_of_text|>`, `<|startoftext|>`, `[CLS]` in the vocabulary;
    /// EOS the first of `</s>`, `<|end_of_text|>`, `<|endoftext|>`,
    /// `<|im_end|>`, `<|eot_id|>`, `[SEP]`. `encode(text, true)` applies the
    /// file's post-processor (BERT's `[CLS] … [SEP]`, LLaMA's `<s>`). The
    /// file's padding and truncation are turned off: `encode` returns the
    /// real tokens of the whole text.
    pub fn from_json(path: &Path) -> Result<Self> {
        let mut tok = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| model_err(path, format!("not a readable tokenizer.json: {e}")))?;
        // Ids only: padding would add tokens without a mask, truncation
        // would drop text silently.
        tok.with_padding(None);
        tok.with_truncation(None)
            .map_err(|e| model_err(path, format!("turning truncation off: {e}")))?;
        let first = |pieces: &[&str]| pieces.iter().find_map(|p| tok.token_to_id(p));
        let bos = first(&JSON_BOS_PIECES);
        let eos = first(&JSON_EOS_PIECES);
        Ok(Self {
            inner: Inner::Hf {
                tok: Box::new(tok),
                kind: "tokenizer.json",
            },
            bos,
            eos,
        })
    }

    /// The llama2.c tokenizer format (`tokNNN.bin`) with exactly
    /// `vocab_size` tokens. BOS is id 1 and EOS id 2, as in llama2.c.
    ///
    /// Encoding follows `run.c`: optional BOS, a dummy-prefix `" "` token when
    /// the text is non-empty, one token per UTF-8 codepoint (else one
    /// `<0xXX>` token per byte), then repeated merging of the leftmost
    /// adjacent pair whose concatenation is the highest-scoring token.
    /// Decoding drops BOS, strips the leading space of the token after it,
    /// and turns `<0xXX>` pieces into raw bytes.
    pub fn from_llama2c(path: &Path, vocab_size: usize) -> Result<Self> {
        let file = Llama2cTokenizer::open(path, Some(vocab_size))?;
        if file.tokens.len() < 3 {
            return Err(model_err(
                path,
                format!(
                    "{} tokens; llama2.c needs at least <unk>, BOS and EOS",
                    file.tokens.len()
                ),
            ));
        }
        if u32::try_from(file.tokens.len()).is_err() {
            return Err(model_err(path, "too many tokens"));
        }
        let mut lookup = HashMap::with_capacity(file.tokens.len());
        let (mut pieces, mut scores) = (Vec::new(), Vec::new());
        for (id, (piece, score)) in (0u32..).zip(file.tokens) {
            lookup.entry(piece.clone()).or_insert(id);
            pieces.push(piece);
            scores.push(score);
        }
        Ok(Self {
            inner: Inner::Llama2c(Llama2cVocab {
                pieces,
                scores,
                lookup,
            }),
            bos: Some(1),
            eos: Some(2),
        })
    }

    /// Finds the tokenizer for a model file: GGUF uses its metadata; a
    /// llama2.c `.bin` takes the `tok*.bin` in the same folder whose vocabulary
    /// size matches the checkpoint's (`tok{N}.bin` tried first); a
    /// safetensors file, or a Hugging Face directory, takes the
    /// `tokenizer.json` beside it (inside it).
    pub fn for_model(model_path: &Path, src: &dyn TensorSource) -> Result<Self> {
        let dir = if model_path.is_dir() {
            model_path.to_path_buf()
        } else {
            match model_path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            }
        };
        match src.format() {
            Format::Gguf => Self::from_gguf(src),
            Format::Llama2c => {
                let vocab = src
                    .metadata()
                    .into_iter()
                    .find(|(k, _)| k == "vocab_size")
                    .and_then(|(_, v)| v.as_u64())
                    .and_then(|v| usize::try_from(v).ok())
                    .ok_or_else(|| model_err(model_path, "no vocab_size in the metadata"))?;
                let preferred = format!("tok{vocab}.bin");
                let mut candidates: Vec<PathBuf> = std::fs::read_dir(&dir)
                    .map_err(|e| model_err(&dir, format!("listing the folder: {e}")))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.is_file()
                            && p.file_name()
                                .and_then(|n| n.to_str())
                                .is_some_and(|n| n.starts_with("tok") && n.ends_with(".bin"))
                    })
                    .collect();
                candidates.sort_by_key(|p| {
                    (
                        p.file_name().and_then(|n| n.to_str()) != Some(preferred.as_str()),
                        p.clone(),
                    )
                });
                for c in &candidates {
                    if let Ok(t) = Self::from_llama2c(c, vocab) {
                        return Ok(t);
                    }
                }
                let tried: Vec<String> = candidates
                    .iter()
                    .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .collect();
                Err(model_err(
                    model_path,
                    format!(
                        "no llama2.c tokenizer (tok*.bin) with {vocab} tokens in {}; tried: [{}]",
                        dir.display(),
                        tried.join(", ")
                    ),
                ))
            }
            Format::Safetensors => {
                let json = dir.join("tokenizer.json");
                if !json.is_file() {
                    if let Some(t) = Self::of_quantize_source(&dir, src) {
                        return Ok(t);
                    }
                    return Err(model_err(
                        model_path,
                        format!(
                            "no tokenizer.json beside the model (looked for {})",
                            json.display()
                        ),
                    ));
                }
                Self::from_json(&json)
            }
        }
    }

    /// For a `membound quantize` output (safetensors whose metadata names
    /// its source file): the tokenizer of that source, found beside the
    /// file or among the registry's models (SmolLM2, the llama2.c
    /// fixtures, matched by file name or vocabulary size).
    fn of_quantize_source(dir: &Path, src: &dyn TensorSource) -> Option<Self> {
        use membound_tensor::registry;
        let meta = src.metadata();
        let get = |k: &str| {
            meta.iter()
                .find(|(key, _)| key == k)
                .and_then(|(_, v)| v.as_str().map(str::to_owned))
        };
        let name = get("membound.source_file")?;
        let format = get("membound.source_format").unwrap_or_default();
        let mut sources = vec![dir.join(&name)];
        if let Some(p) = registry::SMOLLM2.locate() {
            if p.file_name().is_some_and(|n| n.to_string_lossy() == name) {
                sources.push(p);
            }
        }
        for (fixture, _, _) in registry::FIXTURES {
            if let Some((model, _)) = registry::fixture(fixture) {
                sources.push(model);
            }
        }
        let vocab = get("vocab_size").and_then(|v| v.trim().parse::<usize>().ok());
        for path in sources.into_iter().filter(|p| p.is_file()) {
            let Ok(source) = membound_tensor::open(&path) else {
                continue;
            };
            if source.format().to_string() != format {
                continue;
            }
            if let Ok(t) = Self::for_model(&path, source.as_ref()) {
                if vocab.is_none_or(|v| v == t.vocab_size()) {
                    return Some(t);
                }
            }
        }
        None
    }

    /// Token ids of `text`; with `add_bos`, BOS first if the tokenizer has
    /// one (for `tokenizer.json`, the post-processor's special tokens).
    /// Special tokens written in the text (`<|im_start|>`) are recognised
    /// for GGUF and `tokenizer.json` tokenizers.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let post = add_bos && self.kind() == "tokenizer.json";
        let mut ids = match &self.inner {
            Inner::Hf { tok, .. } => tok
                .encode_fast(text, post)
                .map_err(|e| Error::Request(format!("tokenizing failed: {e}")))?
                .get_ids()
                .to_vec(),
            Inner::Llama2c(v) => v.encode(text)?,
        };
        if let Some(b) = self.bos.filter(|_| add_bos) {
            // A post-processor may have added it already.
            if !(post && ids.first() == Some(&b)) {
                ids.insert(0, b);
            }
        }
        Ok(ids)
    }

    /// The text of `ids`. Special tokens are kept as text, except BOS, which
    /// is dropped. An id outside the vocabulary is an error.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        for &id in ids {
            self.check_id(id)?;
        }
        match &self.inner {
            Inner::Hf { tok, .. } => {
                let kept: Vec<u32> = ids
                    .iter()
                    .copied()
                    .filter(|&id| Some(id) != self.bos)
                    .collect();
                tok.decode(&kept, false)
                    .map_err(|e| Error::Request(format!("decoding failed: {e}")))
            }
            Inner::Llama2c(v) => Ok(v.decode(ids, self.bos)),
        }
    }

    fn check_id(&self, id: u32) -> Result<()> {
        let known = match &self.inner {
            Inner::Hf { tok, .. } => tok.id_to_token(id).is_some(),
            Inner::Llama2c(v) => (id as usize) < v.pieces.len(),
        };
        if known {
            Ok(())
        } else {
            Err(Error::Request(format!(
                "token id {id} is not in the vocabulary of {} ids",
                self.vocab_size()
            )))
        }
    }

    /// Number of token ids, special tokens included.
    pub fn vocab_size(&self) -> usize {
        match &self.inner {
            Inner::Hf { tok, .. } => tok.get_vocab_size(true),
            Inner::Llama2c(v) => v.pieces.len(),
        }
    }

    /// The beginning-of-sequence id `encode` adds, if the tokenizer has one.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// The end-of-sequence id, if known.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// Ids that end generation: EOS plus, when present in the vocabulary,
    /// `<|im_end|>`, `<|endoftext|>` and `</s>`; no duplicates.
    pub fn stop_ids(&self) -> Vec<u32> {
        let mut out: Vec<u32> = self.eos.into_iter().collect();
        for id in STOP_PIECES.iter().filter_map(|p| self.token_to_id(p)) {
            if !out.contains(&id) {
                out.push(id);
            }
        }
        out
    }

    /// The id of the token whose text is exactly `piece`.
    pub fn token_to_id(&self, piece: &str) -> Option<u32> {
        match &self.inner {
            Inner::Hf { tok, .. } => tok.token_to_id(piece),
            Inner::Llama2c(v) => v.lookup.get(piece.as_bytes()).copied(),
        }
    }

    /// Which kind this is: `"bpe (gguf)"`, `"tokenizer.json"` or `"llama2.c"`.
    pub fn kind(&self) -> &'static str {
        match &self.inner {
            Inner::Hf { kind, .. } => kind,
            Inner::Llama2c(_) => "llama2.c",
        }
    }
}

/// Ordering key of a merge candidate: higher score first, then leftmost.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    score: f32,
    left: usize,
    right: usize,
    versions: (u32, u32),
    merged: u32,
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Candidate {}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        // `+ 0.0` turns -0.0 into 0.0, so equal scores tie as `>` sees them.
        (self.score + 0.0)
            .total_cmp(&(other.score + 0.0))
            .then_with(|| Reverse(self.left).cmp(&Reverse(other.left)))
    }
}

/// One symbol of the text being merged: a doubly linked list over a `Vec`.
struct Node {
    id: u32,
    prev: Option<usize>,
    next: Option<usize>,
    alive: bool,
    version: u32,
}

impl Llama2cVocab {
    fn byte_id(&self, b: u8) -> Option<u32> {
        self.lookup.get(format!("<0x{b:02X}>").as_bytes()).copied()
    }

    /// `run.c`'s encode, without BOS/EOS.
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        if text.is_empty() {
            return Ok(Vec::new());
        }
        let mut ids = Vec::with_capacity(text.len() + 1);
        let mut buf = [0u8; 4];
        for c in std::iter::once(' ').chain(text.chars()) {
            let s = c.encode_utf8(&mut buf);
            if let Some(&id) = self.lookup.get(s.as_bytes()) {
                ids.push(id);
                continue;
            }
            for &b in s.as_bytes() {
                ids.push(self.byte_id(b).ok_or_else(|| {
                    Error::Request(format!(
                        "{c:?} is not in the llama2.c vocabulary, which has no <0x{b:02X}> byte token"
                    ))
                })?);
            }
        }
        Ok(self.merge(&ids))
    }

    /// The merged token for two adjacent ones, if `run.c` would consider it
    /// (its best score starts at -1e10, so lower scores never merge).
    fn candidate(&self, nodes: &[Node], left: usize, right: usize) -> Option<Candidate> {
        let (l, r) = (&nodes[left], &nodes[right]);
        let mut joined = self.pieces[l.id as usize].clone();
        joined.extend_from_slice(&self.pieces[r.id as usize]);
        let merged = *self.lookup.get(&joined)?;
        let score = self.scores[merged as usize];
        (score > -1e10).then_some(Candidate {
            score,
            left,
            right,
            versions: (l.version, r.version),
            merged,
        })
    }

    /// Greedy merging: the highest-scoring pair, leftmost on ties, until none
    /// is left. A heap with lazy invalidation gives `run.c`'s result in
    /// O(n log n) instead of its O(n²) rescans.
    fn merge(&self, ids: &[u32]) -> Vec<u32> {
        let mut nodes: Vec<Node> = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| Node {
                id,
                prev: i.checked_sub(1),
                next: (i + 1 < ids.len()).then_some(i + 1),
                alive: true,
                version: 0,
            })
            .collect();
        let mut heap: BinaryHeap<Candidate> = (1..nodes.len())
            .filter_map(|i| self.candidate(&nodes, i - 1, i))
            .collect();
        while let Some(c) = heap.pop() {
            let (l, r) = (&nodes[c.left], &nodes[c.right]);
            let current = l.alive
                && r.alive
                && l.next == Some(c.right)
                && (l.version, r.version) == c.versions;
            if !current {
                continue;
            }
            let after = r.next;
            nodes[c.right].alive = false;
            let left = &mut nodes[c.left];
            left.id = c.merged;
            left.version = left.version.wrapping_add(1);
            left.next = after;
            let before = left.prev;
            if let Some(a) = after {
                nodes[a].prev = Some(c.left);
                heap.extend(self.candidate(&nodes, c.left, a));
            }
            if let Some(b) = before {
                heap.extend(self.candidate(&nodes, b, c.left));
            }
        }
        nodes.iter().filter(|n| n.alive).map(|n| n.id).collect()
    }

    /// `run.c`'s decode over a sequence; ids are already checked.
    fn decode(&self, ids: &[u32], bos: Option<u32>) -> String {
        let mut out = Vec::new();
        let mut prev = None;
        for &id in ids {
            let Some(piece) = self.pieces.get(id as usize) else {
                continue;
            };
            if Some(id) == bos {
                prev = Some(id);
                continue;
            }
            let mut p = piece.as_slice();
            if prev.is_some() && prev == bos {
                p = p.strip_prefix(b" ").unwrap_or(p);
            }
            match byte_piece(p) {
                Some(b) => out.push(b),
                None => out.extend_from_slice(p),
            }
            prev = Some(id);
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// The byte of a `<0xXX>` piece.
fn byte_piece(p: &[u8]) -> Option<u8> {
    let hex = p.strip_prefix(b"<0x")?.strip_suffix(b">")?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

/// Streams text token by token. Bytes are held back until they form
/// complete UTF-8, so a character split over tokens comes out whole; the
/// concatenated output equals [`Tokenizer::decode`] of all ids pushed.
///
/// Each push decodes only the tokens since the previous output (plus one
/// for context), so streaming is O(new tokens) amortized.
#[derive(Debug)]
pub struct TextStream<'a> {
    tok: &'a Tokenizer,
    /// Ids from the start of the context window.
    ids: Vec<u32>,
    /// How many of `ids` have been turned into text already.
    read: usize,
    strip_space: bool,
}

impl<'a> TextStream<'a> {
    /// A stream over `tok`. With `skip_leading_space`, one space at the very
    /// start of the text is dropped (llama2.c tokens after BOS start with
    /// one when the BOS itself is not pushed).
    pub fn new(tok: &'a Tokenizer, skip_leading_space: bool) -> Self {
        Self {
            tok,
            ids: Vec::new(),
            read: 0,
            strip_space: skip_leading_space,
        }
    }

    /// Adds one token and returns the text it completes (possibly empty).
    /// An id outside the vocabulary is an error and leaves the stream as it was.
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.tok.check_id(id)?;
        self.ids.push(id);
        // Both decodes start at the same token, so decoders that treat the
        // first token specially (BOS, leading-space stripping) agree.
        let before = self.tok.decode(&self.ids[..self.read])?;
        let now = self.tok.decode(&self.ids)?;
        if now.ends_with('\u{FFFD}') && self.ids.len() - self.read < MAX_PENDING {
            return Ok(String::new());
        }
        let mut text = match now.strip_prefix(before.as_str()) {
            Some(t) => t.to_string(),
            None => {
                // Not a prefix (an unusual decoder): emit past the common part.
                let common = before
                    .char_indices()
                    .zip(now.chars())
                    .find(|((_, a), b)| a != b)
                    .map_or(before.len().min(now.len()), |((i, _), _)| i);
                now.get(common..).unwrap_or_default().to_string()
            }
        };
        // The window now starts at the first token not yet emitted before
        // this push; keep it as context for the next one.
        self.ids.drain(..self.read);
        self.read = self.ids.len();
        if self.strip_space && !text.is_empty() {
            self.strip_space = false;
            if let Some(t) = text.strip_prefix(' ') {
                text = t.to_string();
            }
        }
        Ok(text)
    }
}

/// One chat turn.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ChatMessage {
    /// `"system"`, `"user"` or `"assistant"`.
    pub role: String,
    /// The text of the turn.
    pub content: String,
}

impl ChatMessage {
    /// A message with this role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// The system message SmolLM2-Instruct's template adds when the first
/// message is not a system message.
pub const SMOLLM2_DEFAULT_SYSTEM: &str =
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

/// SmolLM2-Instruct's chat template (ChatML), as its GGUF's
/// `tokenizer.chat_template` writes it: when the first message is not a
/// system message, the default system turn ([`SMOLLM2_DEFAULT_SYSTEM`])
/// first; then `<|im_start|>{role}\n{content}<|im_end|>\n` per message; then,
/// with `add_generation_prompt`, `<|im_start|>assistant\n`.
pub fn chat_prompt(messages: &[ChatMessage], add_generation_prompt: bool) -> String {
    let mut out = String::new();
    if messages.first().is_some_and(|m| m.role != "system") {
        out.push_str("<|im_start|>system\n");
        out.push_str(SMOLLM2_DEFAULT_SYSTEM);
        out.push_str("<|im_end|>\n");
    }
    for m in messages {
        out.push_str("<|im_start|>");
        out.push_str(&m.role);
        out.push('\n');
        out.push_str(&m.content);
        out.push_str("<|im_end|>\n");
    }
    if add_generation_prompt {
        out.push_str("<|im_start|>assistant\n");
    }
    out
}
