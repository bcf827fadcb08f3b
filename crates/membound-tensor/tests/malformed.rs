//! Hostile-input tests for the GGUF, safetensors and llama2.c readers.
//!
//! Small builders below write valid files byte by byte (and are proven valid
//! by the positive tests); every other test corrupts one thing and checks the
//! reader answers with the right typed error, naming the file and the key or
//! tensor at fault, and never panics. Proptests then throw random byte
//! mutations at all three readers.
//!
//! Each parser bug these tests and cargo-fuzz found has a regression test
//! here (see docs/fuzzing.md).

#![allow(
    missing_docs,
    clippy::unreadable_literal,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;
use std::time::{Duration, Instant};

use membound_tensor::{
    DType, Error, Format, GgmlType, GgufFile, Llama2cConfig, Llama2cFile, Llama2cTokenizer,
    MetaValue, SafetensorsFile, TensorSource,
};
use proptest::prelude::*;

// ---------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------

const GP: &str = "bad/model.gguf";
const SP: &str = "bad/model.safetensors";
const LP: &str = "bad/stories.bin";
const TP: &str = "bad/tokenizer.bin";

/// The error of `r`, which must be one.
#[track_caller]
fn err<T>(r: membound_tensor::Result<T>) -> Error {
    match r {
        Ok(_) => panic!("expected an error, the reader accepted the input"),
        Err(e) => e,
    }
}

/// Asserts the error's message mentions every one of `parts`.
#[track_caller]
fn assert_mentions(e: &Error, parts: &[&str]) {
    let msg = e.to_string();
    for p in parts {
        assert!(
            msg.contains(p),
            "error message {msg:?} does not mention {p:?} ({e:?})"
        );
    }
}

/// Counts the bytes each thread allocates, so tests can check that absurd
/// counts and lengths are refused before anything is reserved for them.
struct CountingAlloc;

thread_local! {
    static ALLOCATED: Cell<u64> = const { Cell::new(0) };
}

fn count(bytes: usize) {
    // `try_with`: allocations during thread teardown are not counted.
    let _ = ALLOCATED.try_with(|c| c.set(c.get().saturating_add(bytes as u64)));
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// At most this many bytes may be allocated while refusing a hostile input
/// (building the small input inside the closure included).
const ALLOC_BUDGET: u64 = 4 << 20;

/// Runs `f` and asserts it was quick (a few seconds is generous for debug
/// builds on a slow machine; the real cost is microseconds) and allocated
/// less than [`ALLOC_BUDGET`] bytes in all.
#[track_caller]
fn fast<T>(f: impl FnOnce() -> T) -> T {
    let before = ALLOCATED.with(Cell::get);
    let t = Instant::now();
    let out = f();
    let elapsed = t.elapsed();
    let allocated = ALLOCATED.with(Cell::get) - before;
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    assert!(allocated < ALLOC_BUDGET, "allocated {allocated} bytes");
    out
}

/// Converts every tensor to f32; errors are fine, panics are not.
fn touch(src: &dyn TensorSource) {
    for t in src.tensors() {
        let _ = t.to_f32();
    }
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Little-endian byte writer, chained.
#[derive(Clone, Default)]
struct W(Vec<u8>);

impl W {
    fn new() -> Self {
        Self::default()
    }
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn i32(mut self, v: i32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn f32(mut self, v: f32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    /// A GGUF string: `u64` length, then the bytes.
    fn gstr(self, s: &str) -> Self {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }
    fn done(self) -> Vec<u8> {
        self.0
    }
}

// ---------------------------------------------------------------------------
// GGUF builder
// ---------------------------------------------------------------------------

const T_U8: u32 = 0;
const T_U32: u32 = 4;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
const T_U64: u32 = 10;

const GGML_F32: u32 = 0;
const GGML_Q8_0: u32 = 8;

/// A GGUF metadata value to write.
#[derive(Clone, Debug)]
enum V {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    /// Element type, elements (each must be of that type).
    Arr(u32, Vec<V>),
    U64(u64),
    I64(i64),
    F64(f64),
    /// Any type id followed by any payload bytes.
    Raw(u32, Vec<u8>),
}

impl V {
    fn ty(&self) -> u32 {
        match self {
            V::U8(_) => 0,
            V::I8(_) => 1,
            V::U16(_) => 2,
            V::I16(_) => 3,
            V::U32(_) => 4,
            V::I32(_) => 5,
            V::F32(_) => 6,
            V::Bool(_) => 7,
            V::Str(_) => 8,
            V::Arr(..) => 9,
            V::U64(_) => 10,
            V::I64(_) => 11,
            V::F64(_) => 12,
            V::Raw(t, _) => *t,
        }
    }

    /// The payload (without the type id).
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            V::U8(v) => out.push(*v),
            V::I8(v) => out.push(*v as u8),
            V::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
            V::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
            V::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
            V::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
            V::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
            V::Bool(v) => out.push(u8::from(*v)),
            V::Str(s) => {
                out.extend_from_slice(&(s.len() as u64).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            V::Arr(elem, items) => {
                out.extend_from_slice(&elem.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for it in items {
                    assert_eq!(
                        it.ty(),
                        *elem,
                        "builder misuse: array element of the wrong type"
                    );
                    it.encode(out);
                }
            }
            V::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
            V::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
            V::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
            V::Raw(_, b) => out.extend_from_slice(b),
        }
    }

    /// What the reader should return for it.
    fn expected(&self) -> MetaValue {
        match self {
            V::U8(v) => MetaValue::U8(*v),
            V::I8(v) => MetaValue::I8(*v),
            V::U16(v) => MetaValue::U16(*v),
            V::I16(v) => MetaValue::I16(*v),
            V::U32(v) => MetaValue::U32(*v),
            V::I32(v) => MetaValue::I32(*v),
            V::F32(v) => MetaValue::F32(*v),
            V::Bool(v) => MetaValue::Bool(*v),
            V::Str(s) => MetaValue::String(s.clone()),
            V::Arr(_, items) => MetaValue::Array(items.iter().map(V::expected).collect()),
            V::U64(v) => MetaValue::U64(*v),
            V::I64(v) => MetaValue::I64(*v),
            V::F64(v) => MetaValue::F64(*v),
            V::Raw(..) => unreachable!("raw values have no expected reading"),
        }
    }
}

fn s(v: &str) -> V {
    V::Str(v.into())
}

#[derive(Clone, Debug)]
struct GTensor {
    name: String,
    ne: Vec<u64>,
    ty: u32,
    data: Vec<u8>,
    /// Written instead of the computed offset.
    offset: Option<u64>,
}

/// A GGUF file to write. Tensor data is laid out in order, each tensor at
/// the next multiple of `align` in the data section, and the file ends right
/// after the last tensor (so every strict prefix is truncated).
#[derive(Clone, Debug)]
struct Gguf {
    magic: [u8; 4],
    version: u32,
    n_tensors: Option<u64>,
    n_kv: Option<u64>,
    kvs: Vec<(String, V)>,
    tensors: Vec<GTensor>,
    align: u64,
}

impl Gguf {
    fn new() -> Self {
        Self {
            magic: *b"GGUF",
            version: 3,
            n_tensors: None,
            n_kv: None,
            kvs: Vec::new(),
            tensors: Vec::new(),
            align: 32,
        }
    }
    fn version(mut self, v: u32) -> Self {
        self.version = v;
        self
    }
    fn kv(mut self, k: &str, v: V) -> Self {
        self.kvs.push((k.into(), v));
        self
    }
    /// Sets `general.alignment` and lays the data out with it.
    fn alignment(mut self, a: u32) -> Self {
        self.align = a.into();
        self.kv("general.alignment", V::U32(a))
    }
    fn tensor(mut self, name: &str, ne: &[u64], ty: u32, data: Vec<u8>) -> Self {
        self.tensors.push(GTensor {
            name: name.into(),
            ne: ne.to_vec(),
            ty,
            data,
            offset: None,
        });
        self
    }
    /// Writes `offset` as the last tensor's data offset (its bytes stay where the layout put them).
    fn at(mut self, offset: u64) -> Self {
        self.tensors.last_mut().expect("a tensor first").offset = Some(offset);
        self
    }
    fn f32_tensor(self, name: &str, ne: &[u64]) -> Self {
        let n: u64 = ne.iter().product();
        let vals: Vec<f32> = (0..n).map(|i| i as f32).collect();
        self.tensor(name, ne, GGML_F32, f32s(&vals))
    }

    fn build(&self) -> Vec<u8> {
        self.build_parts().0
    }

    /// The file, and the length of everything before the data section's padding.
    fn build_parts(&self) -> (Vec<u8>, usize) {
        let mut out = W::new()
            .bytes(&self.magic)
            .u32(self.version)
            .u64(self.n_tensors.unwrap_or(self.tensors.len() as u64))
            .u64(self.n_kv.unwrap_or(self.kvs.len() as u64))
            .done();
        for (k, v) in &self.kvs {
            out.extend_from_slice(&(k.len() as u64).to_le_bytes());
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(&v.ty().to_le_bytes());
            v.encode(&mut out);
        }
        let mut cursor = 0u64;
        let mut placed = Vec::new();
        for t in &self.tensors {
            let off = cursor.next_multiple_of(self.align);
            cursor = off + t.data.len() as u64;
            placed.push(off);
            out.extend_from_slice(&(t.name.len() as u64).to_le_bytes());
            out.extend_from_slice(t.name.as_bytes());
            out.extend_from_slice(&(t.ne.len() as u32).to_le_bytes());
            for d in &t.ne {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ty.to_le_bytes());
            out.extend_from_slice(&t.offset.unwrap_or(off).to_le_bytes());
        }
        let head_len = out.len();
        if !self.tensors.is_empty() {
            let data_start = (out.len() as u64).next_multiple_of(self.align) as usize;
            out.resize(data_start, 0);
            for (t, off) in self.tensors.iter().zip(placed) {
                out.resize(data_start + off as usize, 0);
                out.extend_from_slice(&t.data);
            }
        }
        (out, head_len)
    }
}

/// Two Q8_0 blocks (ne = [32, 2]): scale 0.5, codes -16..16 then 15..-17.
fn q8_0_data() -> (Vec<u8>, Vec<f32>) {
    let mut bytes = Vec::new();
    let mut vals = Vec::new();
    for block in 0..2 {
        bytes.extend_from_slice(&0x3800u16.to_le_bytes()); // f16 0.5
        for i in 0..32i32 {
            let q = if block == 0 { i - 16 } else { 15 - i };
            bytes.push(q as i8 as u8);
            vals.push(0.5 * q as f32);
        }
    }
    (bytes, vals)
}

/// Every GGUF value type, including a nested array and an empty one.
fn all_value_kvs() -> Vec<(&'static str, V)> {
    vec![
        ("general.architecture", s("llama")),
        ("general.name", s("tiny ✓")),
        ("llama.block_count", V::U32(2)),
        ("test.u8", V::U8(200)),
        ("test.i8", V::I8(-100)),
        ("test.u16", V::U16(60000)),
        ("test.i16", V::I16(-30000)),
        ("test.u32", V::U32(4_000_000_000)),
        ("test.i32", V::I32(-2_000_000_000)),
        ("test.f32", V::F32(1.5)),
        ("test.bool", V::Bool(true)),
        ("test.u64", V::U64(u64::MAX)),
        ("test.i64", V::I64(i64::MIN)),
        ("test.f64", V::F64(-0.125)),
        (
            "test.array_u32",
            V::Arr(T_U32, vec![V::U32(1), V::U32(2), V::U32(3)]),
        ),
        ("test.array_empty", V::Arr(T_U8, vec![])),
        (
            "test.nested",
            V::Arr(
                T_ARRAY,
                vec![
                    V::Arr(T_STRING, vec![s("a"), s("bc")]),
                    V::Arr(T_STRING, vec![s("")]),
                ],
            ),
        ),
        ("test.bools", V::Arr(7, vec![V::Bool(false), V::Bool(true)])),
    ]
}

/// The reference file: metadata of every type, an F32 and a Q8_0 tensor.
fn valid_gguf() -> Gguf {
    let mut g = Gguf::new();
    for (k, v) in all_value_kvs() {
        g = g.kv(k, v);
    }
    let (q, _) = q8_0_data();
    g.f32_tensor("token_embd.weight", &[3, 2])
        .tensor("blk.0.attn_q.weight", &[32, 2], GGML_Q8_0, q)
}

/// A small GGUF with little metadata, for exhaustive corruption.
fn small_gguf() -> Gguf {
    let (q, _) = q8_0_data();
    Gguf::new()
        .kv("general.architecture", s("llama"))
        .kv("tokens", V::Arr(T_STRING, vec![s("a"), s("b")]))
        .f32_tensor("a", &[4])
        .tensor("q", &[32, 2], GGML_Q8_0, q)
}

#[track_caller]
fn gguf_err(bytes: Vec<u8>) -> Error {
    let e = err(GgufFile::from_bytes(GP, bytes));
    assert_mentions(&e, &[GP]);
    e
}

/// Header up to and including the key/value count.
fn gguf_header(n_tensors: u64, n_kv: u64) -> W {
    W::new().bytes(b"GGUF").u32(3).u64(n_tensors).u64(n_kv)
}

// ---------------------------------------------------------------------------
// GGUF: valid files (the builder is right)
// ---------------------------------------------------------------------------

#[test]
fn gguf_valid_round_trip() {
    let bytes = valid_gguf().build();
    let f = GgufFile::from_bytes(GP, bytes).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 32);
    assert_eq!(f.data_offset() % 32, 0);
    assert_eq!(f.format(), Format::Gguf);
    assert_eq!(f.path(), Path::new(GP));

    // Metadata: every value type, in file order, and get(key).
    let meta = f.metadata();
    let kvs = all_value_kvs();
    assert_eq!(meta.len(), kvs.len());
    for ((k, v), (mk, mv)) in kvs.iter().zip(&meta) {
        assert_eq!(k, mk);
        assert_eq!(&v.expected(), mv, "{k}");
        assert_eq!(f.get(k), Some(&v.expected()), "{k}");
    }
    assert_eq!(f.get("no.such.key"), None);
    assert_eq!(f.architecture(), Some("llama"));
    assert_eq!(f.arch_u64("block_count"), Some(2));
    assert_eq!(
        f.get("general.name").and_then(MetaValue::as_str),
        Some("tiny ✓")
    );
    let nested = f.get("test.nested").and_then(MetaValue::as_array).unwrap();
    assert_eq!(
        nested[0].as_array().unwrap()[1],
        MetaValue::String("bc".into())
    );
    assert_eq!(
        f.get("test.u64").and_then(MetaValue::as_u64),
        Some(u64::MAX)
    );
    assert_eq!(
        f.get("test.i64").and_then(MetaValue::as_i64),
        Some(i64::MIN)
    );

    // Tensors: shape outermost first (reversed ne), dtype, values.
    assert_eq!(f.ggml_types(), &[GgmlType::F32, GgmlType::Q8_0]);
    let ts = f.tensors();
    assert_eq!(ts.len(), 2);
    assert_eq!(ts[0].name(), "token_embd.weight");
    assert_eq!(ts[0].shape(), &[2, 3]);
    assert_eq!(ts[0].dtype(), DType::F32);
    assert_eq!(ts[0].to_f32().unwrap(), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    assert_eq!(ts[1].name(), "blk.0.attn_q.weight");
    assert_eq!(ts[1].shape(), &[2, 32]);
    assert_eq!(ts[1].dtype(), DType::Ggml(GgmlType::Q8_0));
    assert_eq!(ts[1].data().len(), 68);
    assert_eq!(ts[1].to_f32().unwrap(), q8_0_data().1);
    assert_eq!(f.tensor("blk.0.attn_q.weight").unwrap().numel(), 64);
    let e = err(f.tensor("missing"));
    assert!(
        matches!(e, Error::TensorNotFound { ref name, .. } if name == "missing"),
        "{e:?}"
    );
    assert_mentions(&e, &[GP, "missing"]);
}

#[test]
fn gguf_valid_v2_custom_alignment_and_edge_cases() {
    let g = Gguf::new()
        .version(2)
        .alignment(64)
        .f32_tensor("a", &[5])
        .f32_tensor("b", &[3, 1, 1, 2]);
    let f = GgufFile::from_bytes(GP, g.build()).unwrap();
    assert_eq!(f.version(), 2);
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.data_offset() % 64, 0);
    assert_eq!(f.tensors()[1].shape(), &[2, 1, 1, 3]);
    assert_eq!(
        f.tensors()[1].to_f32().unwrap(),
        (0..6).map(|i| i as f32).collect::<Vec<_>>()
    );

    // Metadata only, no tensors: the file may end right after the header.
    let f = GgufFile::from_bytes(GP, Gguf::new().kv("k", V::U8(1)).build()).unwrap();
    assert!(f.tensors().is_empty());

    // Zero-element tensors take no bytes and may share an offset.
    let g = Gguf::new()
        .tensor("e1", &[0, 4], GGML_F32, vec![])
        .tensor("e2", &[32, 0], GGML_Q8_0, vec![])
        .at(0);
    let f = GgufFile::from_bytes(GP, g.build()).unwrap();
    assert_eq!(f.tensors()[0].shape(), &[4, 0]);
    assert!(f.tensors()[1].to_f32().unwrap().is_empty());

    // A scalar (no dimensions) is one element.
    let f = GgufFile::from_bytes(
        GP,
        Gguf::new().tensor("s", &[], GGML_F32, f32s(&[7.0])).build(),
    )
    .unwrap();
    assert_eq!(f.tensors()[0].shape(), &[] as &[usize]);
    assert_eq!(f.tensors()[0].to_f32().unwrap(), vec![7.0]);
}

// ---------------------------------------------------------------------------
// GGUF: truncation and random corruption
// ---------------------------------------------------------------------------

#[test]
fn gguf_every_prefix_is_an_error() {
    for g in [small_gguf(), valid_gguf()] {
        let full = g.build();
        assert!(GgufFile::from_bytes(GP, full.clone()).is_ok());
        for len in 0..full.len() {
            let e = gguf_err(full[..len].to_vec());
            assert!(
                matches!(e, Error::Truncated { .. } | Error::Malformed { .. }),
                "prefix {len}: {e:?}"
            );
        }
    }
}

#[test]
fn gguf_prefix_errors_name_what_is_cut() {
    let full = small_gguf().build();
    let e = gguf_err(full[..3].to_vec());
    assert!(
        matches!(e, Error::Truncated { ref what, start: 0, end: 4, len: 3, .. } if what.contains("magic")),
        "{e:?}"
    );
    let e = gguf_err(full[..6].to_vec());
    assert!(
        matches!(e, Error::Truncated { ref what, .. } if what.contains("version")),
        "{e:?}"
    );
    let e = gguf_err(full[..full.len() - 1].to_vec());
    assert!(
        matches!(e, Error::Truncated { ref what, .. } if what.contains("\"q\"")),
        "{e:?}"
    );
    assert_mentions(&e, &["\"q\"", "truncated"]);
}

#[test]
fn gguf_every_single_byte_corruption_is_handled() {
    let full = small_gguf().build();
    for pos in 0..full.len() {
        for b in [
            0x00,
            0xff,
            0x80,
            0x7f,
            0x01,
            full[pos] ^ 0x01,
            full[pos].wrapping_add(1),
        ] {
            let mut bytes = full.clone();
            bytes[pos] = b;
            if let Ok(f) = GgufFile::from_bytes(GP, bytes.clone()) {
                touch(&f);
            }
            membound_tensor::gguf::fuzz_parse(&bytes);
        }
    }
}

// ---------------------------------------------------------------------------
// GGUF: header
// ---------------------------------------------------------------------------

#[test]
fn gguf_bad_magic() {
    for magic in [*b"GGUX", *b"FUGG", *b"gguf", [0; 4]] {
        let mut g = small_gguf();
        g.magic = magic;
        let e = gguf_err(g.build());
        assert!(
            matches!(e, Error::Malformed { ref what, .. } if what == "magic"),
            "{e:?}"
        );
        assert_mentions(&e, &["GGUF"]);
    }
    let e = gguf_err(Vec::new());
    assert!(matches!(e, Error::Truncated { len: 0, .. }), "{e:?}");
}

#[test]
fn gguf_unsupported_versions() {
    let version_err = |v: u32| {
        let e = gguf_err(small_gguf().version(v).build());
        assert!(
            matches!(e, Error::Malformed { ref what, .. } if what == "version"),
            "version {v:#x}: {e:?}"
        );
        e
    };
    assert_mentions(&version_err(1), &["v1"]);
    assert_mentions(&version_err(99), &["99"]);
    assert_mentions(&version_err(4), &["unsupported GGUF version 4"]);
    assert_mentions(&version_err(u32::MAX), &["unsupported"]);
    // A big-endian file: version 3 or 2 stored big-endian.
    assert_mentions(&version_err(3u32.swap_bytes()), &["big-endian"]);
    assert_mentions(&version_err(2u32.swap_bytes()), &["big-endian"]);
}

#[test]
fn gguf_version_zero_is_not_called_big_endian() {
    let e = gguf_err(small_gguf().version(0).build());
    assert!(
        matches!(e, Error::Malformed { ref what, .. } if what == "version"),
        "{e:?}"
    );
    assert_mentions(&e, &["unsupported GGUF version 0"]);
}

#[test]
fn gguf_absurd_counts_fail_fast() {
    for n in [u64::MAX, 1 << 40, 1 << 32, u64::MAX / 13 + 1] {
        // Tensor count, with and without padding bytes after the header.
        for pad in [0usize, 100] {
            let bytes = gguf_header(n, 0).bytes(&vec![0; pad]).done();
            let e = fast(|| gguf_err(bytes));
            assert!(
                matches!(e, Error::Malformed { ref what, .. } if what == "tensor count"),
                "{e:?}"
            );
            assert_mentions(&e, &[&n.to_string()]);

            let bytes = gguf_header(0, n).bytes(&vec![0; pad]).done();
            let e = fast(|| gguf_err(bytes));
            assert!(
                matches!(e, Error::Malformed { ref what, .. } if what.contains("key/value count")),
                "{e:?}"
            );
        }
    }
    // A lying tensor count after valid metadata.
    let mut g = small_gguf();
    g.n_tensors = Some(1 << 40);
    let e = fast(|| gguf_err(g.build()));
    assert!(
        matches!(e, Error::Malformed { ref what, .. } if what == "tensor count"),
        "{e:?}"
    );
    // A count one larger than what is there runs out of bytes.
    let mut g = small_gguf();
    g.n_kv = Some(3);
    let e = fast(|| gguf_err(g.build()));
    assert!(
        matches!(e, Error::Truncated { .. } | Error::Malformed { .. }),
        "{e:?}"
    );
}

// ---------------------------------------------------------------------------
// GGUF: strings and arrays
// ---------------------------------------------------------------------------

#[test]
fn gguf_key_length_beyond_file() {
    for len in [u64::MAX, 1 << 40, 1000] {
        let bytes = gguf_header(0, 1)
            .u64(len)
            .bytes(b"general.x")
            .u32(T_U8)
            .u8(1)
            .done();
        let e = fast(|| gguf_err(bytes));
        assert!(
            matches!(e, Error::Truncated { ref what, .. } if what.contains("key of metadata entry 0")),
            "{e:?}"
        );
    }
}

#[test]
fn gguf_string_value_beyond_file() {
    for len in [u64::MAX, 1 << 40, 10] {
        let bytes = gguf_header(0, 1)
            .gstr("general.name")
            .u32(T_STRING)
            .u64(len)
            .bytes(b"abc")
            .done();
        let e = fast(|| gguf_err(bytes));
        assert!(
            matches!(e, Error::Truncated { ref what, .. } if what.contains("general.name")),
            "{e:?}"
        );
        assert_mentions(&e, &["general.name"]);
    }
}

#[test]
fn gguf_array_length_beyond_file() {
    for (elem, len) in [
        (T_U8, u64::MAX),
        (T_U64, 1 << 40),
        (T_STRING, u64::MAX / 8),
        (T_ARRAY, 1 << 61),
        (T_U32, 5),
    ] {
        let bytes = gguf_header(0, 1)
            .gstr("tokenizer.ggml.tokens")
            .u32(T_ARRAY)
            .u32(elem)
            .u64(len)
            .bytes(&[0; 16])
            .done();
        let e = fast(|| gguf_err(bytes));
        assert!(
            matches!(e, Error::Malformed { ref what, .. } | Error::Truncated { ref what, .. } if what.contains("tokenizer.ggml.tokens")),
            "elem {elem}, len {len}: {e:?}"
        );
    }
}

#[test]
fn gguf_nested_array_lengths_beyond_file() {
    // An array of one array whose length is absurd.
    let bytes = gguf_header(0, 1)
        .gstr("nested")
        .u32(T_ARRAY)
        .u32(T_ARRAY)
        .u64(1)
        .u32(T_U8)
        .u64(u64::MAX)
        .bytes(&[1, 2, 3])
        .done();
    let e = fast(|| gguf_err(bytes));
    assert!(
        matches!(e, Error::Malformed { ref what, .. } if what.contains("nested")),
        "{e:?}"
    );

    // An array of arrays of strings whose string runs off the end.
    let bytes = gguf_header(0, 1)
        .gstr("nested")
        .u32(T_ARRAY)
        .u32(T_ARRAY)
        .u64(1)
        .u32(T_STRING)
        .u64(1)
        .u64(1 << 40)
        .bytes(b"xy")
        .done();
    let e = fast(|| gguf_err(bytes));
    assert!(
        matches!(e, Error::Truncated { ref what, .. } if what.contains("nested")),
        "{e:?}"
    );
}

/// `depth` arrays, each holding the next, the innermost an empty u8 array.
fn nested_arrays(depth: usize) -> V {
    let mut payload = Vec::new();
    for _ in 1..depth {
        payload.extend_from_slice(&T_ARRAY.to_le_bytes());
        payload.extend_from_slice(&1u64.to_le_bytes());
    }
    payload.extend_from_slice(&T_U8.to_le_bytes());
    payload.extend_from_slice(&0u64.to_le_bytes());
    V::Raw(T_ARRAY, payload)
}

#[test]
fn gguf_array_nesting_is_bounded() {
    let f = GgufFile::from_bytes(GP, Gguf::new().kv("deep", nested_arrays(8)).build()).unwrap();
    let mut v = f.get("deep").unwrap();
    for _ in 1..8 {
        v = &v.as_array().unwrap()[0];
    }
    assert_eq!(v, &MetaValue::Array(vec![]));

    for depth in [9, 10_000] {
        let e = fast(|| gguf_err(Gguf::new().kv("deep", nested_arrays(depth)).build()));
        assert!(
            matches!(e, Error::Malformed { ref what, ref problem, .. } if what.contains("deep") && problem.contains("nested")),
            "{e:?}"
        );
    }
}

#[test]
fn gguf_bad_value_types() {
    let e = gguf_err(Gguf::new().kv("k.type", V::Raw(13, vec![0; 8])).build());
    assert!(
        matches!(e, Error::Malformed { ref what, ref problem, .. } if what.contains("k.type") && problem.contains("13")),
        "{e:?}"
    );

    let e = gguf_err(
        Gguf::new()
            .kv("k.elem", V::Raw(T_ARRAY, W::new().u32(13).u64(0).done()))
            .build(),
    );
    assert!(
        matches!(e, Error::Malformed { ref what, .. } if what.contains("k.elem")),
        "{e:?}"
    );

    let e = gguf_err(Gguf::new().kv("k.bool", V::Raw(7, vec![2])).build());
    assert!(
        matches!(e, Error::Malformed { ref what, .. } if what.contains("k.bool")),
        "{e:?}"
    );

    let e = gguf_err(
        Gguf::new()
            .kv(
                "k.bools",
                V::Raw(T_ARRAY, W::new().u32(7).u64(2).u8(1).u8(9).done()),
            )
            .build(),
    );
    assert!(
        matches!(e, Error::Malformed { ref what, .. } if what.contains("k.bools")),
        "{e:?}"
    );

    let e = gguf_err(Gguf::new().kv("dup", V::U8(1)).kv("dup", V::U8(2)).build());
    assert!(
        matches!(e, Error::Malformed { ref what, ref problem, .. } if what.contains("dup") && problem.contains("twice")),
        "{e:?}"
    );

    // Every fixed-size value type cut short names its key.
    for ty in [0u32, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12] {
        let bytes = gguf_header(0, 1).gstr("cut").u32(ty).done();
        let e = gguf_err(bytes);
        assert!(
            matches!(e, Error::Truncated { ref what, .. } if what.contains("cut")),
            "type {ty}: {e:?}"
        );
    }
}

#[test]
fn gguf_non_utf8_strings_are_replaced_not_rejected() {
    let bytes = gguf_header(0, 1)
        .u64(2)
        .bytes(&[0xff, b'k'])
        .u32(T_STRING)
        .u64(1)
        .u8(0xc3)
        .done();
    let f = GgufFile::from_bytes(GP, bytes).unwrap();
    assert_eq!(
        f.metadata()[0],
        (
            "\u{fffd}k".to_string(),
            MetaValue::String("\u{fffd}".into())
        )
    );
}

// ---------------------------------------------------------------------------
// GGUF: tensor infos
// ---------------------------------------------------------------------------

#[test]
fn gguf_unknown_tensor_type() {
    for id in [4u32, 5, 31, 36, 40, 200, u32::MAX] {
        let e = gguf_err(
            Gguf::new()
                .tensor("blk.0.ffn_up.weight", &[32], id, vec![0; 64])
                .build(),
        );
        assert!(
            matches!(e, Error::UnknownDType { ref tensor, kind: "GGUF tensor type", id: ref i, .. } if tensor == "blk.0.ffn_up.weight" && *i == id.to_string()),
            "{id}: {e:?}"
        );
        assert_mentions(&e, &["blk.0.ffn_up.weight", &id.to_string()]);
    }
}

#[test]
fn gguf_shape_overflow() {
    for ne in [
        vec![1u64 << 32, 1 << 32, 1 << 32],
        vec![u64::MAX, 2],
        vec![1 << 62, 1],
        vec![u64::MAX],
        vec![1 << 63, 1 << 1],
    ] {
        let e = fast(|| {
            gguf_err(
                Gguf::new()
                    .tensor("big", &ne, GGML_F32, vec![0; 32])
                    .build(),
            )
        });
        assert!(
            matches!(e, Error::Malformed { ref what, .. } if what.contains("\"big\"")),
            "{ne:?}: {e:?}"
        );
        assert_mentions(&e, &["overflow"]);
    }
    // Whole Q8_0 blocks, but (2^64 - 32) / 32 blocks of 34 bytes overflow u64.
    let e = gguf_err(
        Gguf::new()
            .tensor("bigq", &[u64::MAX - 31], GGML_Q8_0, vec![0; 34])
            .build(),
    );
    assert!(
        matches!(e, Error::Malformed { ref what, .. } if what.contains("\"bigq\"")),
        "{e:?}"
    );
}

#[test]
fn gguf_zero_sized_tensor_with_huge_outer_dimensions() {
    // ne = [2^32, 2^32, 0] has no element; any order of multiplication must agree.
    let f = GgufFile::from_bytes(
        GP,
        Gguf::new()
            .tensor("z", &[1 << 32, 1 << 32, 0], GGML_F32, vec![])
            .build(),
    );
    match f {
        Ok(f) => {
            let t = f.tensor("z").unwrap();
            assert_eq!(t.numel(), 0);
            assert!(t.to_f32().unwrap().is_empty());
        }
        Err(e) => assert!(matches!(e, Error::Malformed { .. }), "{e:?}"),
    }
}

#[test]
fn gguf_zero_innermost_dimension_with_huge_outer_dimensions() {
    for ne in [
        &[0u64, 1 << 32, 1 << 32][..],
        &[0, u64::MAX, 2],
        &[0, 1 << 63, 4, 1],
    ] {
        let f = GgufFile::from_bytes(GP, Gguf::new().tensor("z", ne, GGML_F32, vec![]).build());
        match f {
            Ok(f) => {
                let t = f.tensor("z").unwrap();
                assert_eq!(t.numel(), 0);
                assert!(t.to_f32().unwrap().is_empty());
            }
            Err(e) => assert!(matches!(e, Error::Malformed { .. }), "{e:?}"),
        }
    }
}

#[test]
fn gguf_huge_shape_that_does_not_overflow_is_truncated() {
    let e = fast(|| {
        gguf_err(
            Gguf::new()
                .tensor("huge", &[1 << 20, 1 << 20], GGML_F32, vec![0; 32])
                .build(),
        )
    });
    assert!(
        matches!(e, Error::Truncated { ref what, end, .. } if what.contains("\"huge\"") && end >= 4 << 40),
        "{e:?}"
    );
}

#[test]
fn gguf_bad_dimensions() {
    let e = gguf_err(
        Gguf::new()
            .tensor("five", &[1, 1, 1, 1, 1], GGML_F32, vec![0; 4])
            .build(),
    );
    assert!(
        matches!(e, Error::Malformed { ref what, ref problem, .. } if what.contains("five") && problem.contains("5 dimensions")),
        "{e:?}"
    );

    let bytes = gguf_header(1, 0)
        .gstr("t")
        .u32(u32::MAX)
        .bytes(&[0; 64])
        .done();
    let e = fast(|| gguf_err(bytes));
    assert!(
        matches!(e, Error::Malformed { ref what, .. } if what.contains("\"t\"")),
        "{e:?}"
    );

    // A row that is not a whole number of blocks.
    let e = gguf_err(
        Gguf::new()
            .tensor("q", &[16, 2], GGML_Q8_0, vec![0; 34])
            .build(),
    );
    assert!(
        matches!(e, Error::Malformed { ref what, ref problem, .. } if what.contains("\"q\"") && problem.contains("block size")),
        "{e:?}"
    );

    // A block type with no dimensions (one element) cannot fill a block.
    let e = gguf_err(
        Gguf::new()
            .tensor("q0", &[], GGML_Q8_0, vec![0; 34])
            .build(),
    );
    assert!(
        matches!(e, Error::Malformed { ref what, .. } if what.contains("\"q0\"")),
        "{e:?}"
    );

    // Tensor name length beyond the file.
    let bytes = gguf_header(1, 0).u64(u64::MAX).bytes(&[0; 40]).done();
    let e = fast(|| gguf_err(bytes));
    assert!(
        matches!(e, Error::Truncated { ref what, .. } if what.contains("name of tensor 0")),
        "{e:?}"
    );

    // Duplicate tensor names.
    let e = gguf_err(
        Gguf::new()
            .f32_tensor("dup", &[8])
            .f32_tensor("dup", &[8])
            .build(),
    );
    assert!(
        matches!(e, Error::Malformed { ref what, ref problem, .. } if what.contains("dup") && problem.contains("twice")),
        "{e:?}"
    );
}

#[test]
fn gguf_tensor_data_beyond_file() {
    let e = gguf_err(Gguf::new().f32_tensor("far", &[8]).at(1 << 20).build());
    assert!(
        matches!(e, Error::Truncated { ref what, .. } if what.contains("\"far\"")),
        "{e:?}"
    );

    // Offset + data offset overflows u64.
    let off = u64::MAX - 31;
    let e = gguf_err(Gguf::new().f32_tensor("wrap", &[8]).at(off).build());
    assert!(
        matches!(e, Error::Malformed { ref what, ref problem, .. } if what.contains("\"wrap\"") && problem.contains("overflow")),
        "{e:?}"
    );

    // Infos promise data but the file ends right after them.
    let (mut bytes, head_len) = small_gguf().build_parts();
    assert_ne!(head_len % 32, 0, "the test needs padding before the data");
    bytes.truncate(head_len);
    let e = gguf_err(bytes);
    assert!(
        matches!(e, Error::Truncated { ref what, .. } if what.contains("data section")),
        "{e:?}"
    );
}

#[test]
fn gguf_overlapping_tensor_data() {
    // b sits in the middle of a.
    let e = gguf_err(
        Gguf::new()
            .f32_tensor("a", &[16])
            .f32_tensor("b", &[8])
            .at(32)
            .build(),
    );
    assert!(
        matches!(e, Error::Malformed { ref problem, .. } if problem.contains("overlaps")),
        "{e:?}"
    );
    assert_mentions(&e, &["\"a\"", "\"b\""]);

    // Same offset.
    let e = gguf_err(
        Gguf::new()
            .f32_tensor("a", &[8])
            .f32_tensor("b", &[8])
            .at(0)
            .build(),
    );
    assert!(
        matches!(e, Error::Malformed { ref problem, .. } if problem.contains("overlaps")),
        "{e:?}"
    );

    // Declared in the opposite order of their offsets, partly overlapping.
    let g = Gguf::new()
        .f32_tensor("x", &[16])
        .at(64)
        .f32_tensor("y", &[24])
        .at(0)
        .f32_tensor("pad", &[16]);
    let e = gguf_err(g.build());
    assert!(
        matches!(e, Error::Malformed { ref problem, .. } if problem.contains("overlaps")),
        "{e:?}"
    );
    assert_mentions(&e, &["\"x\"", "\"y\""]);

    // A zero-size tensor inside another is not an overlap.
    let g = Gguf::new()
        .f32_tensor("a", &[16])
        .tensor("z", &[0], GGML_F32, vec![])
        .at(32);
    assert!(GgufFile::from_bytes(GP, g.build()).is_ok());
}

#[test]
fn gguf_misaligned_tensor_data() {
    for off in [4u64, 1, 16, 33] {
        let e = gguf_err(
            Gguf::new()
                .f32_tensor("a", &[8])
                .f32_tensor("m", &[8])
                .at(off)
                .build(),
        );
        assert!(
            matches!(e, Error::Malformed { ref what, ref problem, .. } if what.contains("\"m\"") && problem.contains("not aligned to 32")),
            "{off}: {e:?}"
        );
    }
    // With general.alignment = 8, offset 8 is fine and 4 is not.
    let g = Gguf::new()
        .alignment(8)
        .f32_tensor("a", &[2])
        .f32_tensor("b", &[2]);
    let f = GgufFile::from_bytes(GP, g.build()).unwrap();
    assert_eq!(f.alignment(), 8);
    assert_eq!(f.tensors()[1].to_f32().unwrap(), vec![0.0, 1.0]);
    let e = gguf_err(
        Gguf::new()
            .alignment(8)
            .f32_tensor("a", &[1])
            .f32_tensor("m", &[1])
            .at(4)
            .build(),
    );
    assert!(
        matches!(e, Error::Malformed { ref problem, .. } if problem.contains("not aligned to 8")),
        "{e:?}"
    );
}

#[test]
fn gguf_bad_alignment_values() {
    let bad = [
        V::U32(0),
        V::U32(3),
        V::U32(48),
        V::U32(1 << 17),
        V::U32(u32::MAX),
        V::U64(32),
        V::I32(32),
        s("32"),
    ];
    for v in bad {
        let e = gguf_err(
            Gguf::new()
                .kv("general.alignment", v.clone())
                .f32_tensor("a", &[8])
                .build(),
        );
        assert!(
            matches!(e, Error::Malformed { ref what, .. } if what.contains("general.alignment")),
            "{v:?}: {e:?}"
        );
        // Also without any tensor.
        let e = gguf_err(Gguf::new().kv("general.alignment", v.clone()).build());
        assert!(
            matches!(e, Error::Malformed { ref what, .. } if what.contains("general.alignment")),
            "{v:?}: {e:?}"
        );
    }
    for a in [1u32, 2, 4, 8, 16, 64, 1 << 16] {
        let f = GgufFile::from_bytes(
            GP,
            Gguf::new()
                .alignment(a)
                .f32_tensor("a", &[8])
                .f32_tensor("b", &[3])
                .build(),
        );
        let f = f.unwrap_or_else(|e| panic!("alignment {a}: {e}"));
        assert_eq!(f.data_offset() as u64 % u64::from(a), 0);
        assert_eq!(f.tensors()[1].to_f32().unwrap(), vec![0.0, 1.0, 2.0]);
    }
}

// ---------------------------------------------------------------------------
// safetensors builder
// ---------------------------------------------------------------------------

/// A safetensors file from a raw JSON header and data bytes.
fn st_raw(header: &str, data: &[u8]) -> Vec<u8> {
    W::new()
        .u64(header.len() as u64)
        .bytes(header.as_bytes())
        .bytes(data)
        .done()
}

/// One header entry: name, dtype, shape, data offsets.
type StEntry<'a> = (&'a str, &'a str, &'a [usize], (usize, usize));

fn st_header(entries: &[StEntry<'_>], metadata: &[(&str, &str)]) -> String {
    let mut parts = Vec::new();
    if !metadata.is_empty() {
        let m: Vec<String> = metadata
            .iter()
            .map(|(k, v)| format!("\"{k}\":\"{v}\""))
            .collect();
        parts.push(format!("\"__metadata__\":{{{}}}", m.join(",")));
    }
    for (name, dtype, shape, (a, b)) in entries {
        let shape: Vec<String> = shape.iter().map(ToString::to_string).collect();
        parts.push(format!(
            "\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":[{}],\"data_offsets\":[{a},{b}]}}",
            shape.join(",")
        ));
    }
    format!("{{{}}}", parts.join(","))
}

fn st(entries: &[StEntry<'_>], data: &[u8]) -> Vec<u8> {
    st_raw(&st_header(entries, &[]), data)
}

/// a: F32 [2, 2] = 0..4; b: F16 [3] = 1, 2, -0.5; c: U8 [2].
fn valid_st() -> Vec<u8> {
    let mut data = f32s(&[0.0, 1.0, 2.0, 3.0]);
    for h in [0x3c00u16, 0x4000, 0xb800] {
        data.extend_from_slice(&h.to_le_bytes());
    }
    data.extend_from_slice(&[7, 255]);
    let header = st_header(
        &[
            ("a", "F32", &[2, 2], (0, 16)),
            ("b", "F16", &[3], (16, 22)),
            ("c", "U8", &[2], (22, 24)),
        ],
        &[("format", "pt"), ("author", "me")],
    );
    st_raw(&header, &data)
}

#[track_caller]
fn st_err(bytes: Vec<u8>) -> Error {
    let e = err(SafetensorsFile::from_bytes(SP, bytes));
    assert_mentions(&e, &[SP]);
    e
}

// ---------------------------------------------------------------------------
// safetensors tests
// ---------------------------------------------------------------------------

#[test]
fn safetensors_valid_round_trip() {
    let f = SafetensorsFile::from_bytes(SP, valid_st()).unwrap();
    assert_eq!(f.format(), Format::Safetensors);
    let ts = f.tensors();
    let names: Vec<&str> = ts.iter().map(|t| t.name()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert_eq!(ts[0].shape(), &[2, 2]);
    assert_eq!(ts[0].to_f32().unwrap(), vec![0.0, 1.0, 2.0, 3.0]);
    assert_eq!(ts[1].dtype(), DType::F16);
    assert_eq!(ts[1].to_f32().unwrap(), vec![1.0, 2.0, -0.5]);
    assert_eq!(ts[2].to_f32().unwrap(), vec![7.0, 255.0]);
    assert_eq!(
        f.string_metadata(),
        &[
            ("author".to_string(), "me".to_string()),
            ("format".to_string(), "pt".to_string())
        ]
    );
    // Entries in any order in the header; an empty file of tensors.
    let data = f32s(&[1.0, 2.0]);
    let f = SafetensorsFile::from_bytes(
        SP,
        st(
            &[("y", "F32", &[1], (4, 8)), ("x", "F32", &[1], (0, 4))],
            &data,
        ),
    )
    .unwrap();
    assert_eq!(f.tensors()[0].name(), "x");
    assert!(
        SafetensorsFile::from_bytes(SP, st_raw("{}", &[]))
            .unwrap()
            .tensors()
            .is_empty()
    );
}

#[test]
fn safetensors_every_prefix_is_an_error() {
    let full = valid_st();
    for len in 0..full.len() {
        let e = st_err(full[..len].to_vec());
        assert!(
            matches!(e, Error::Truncated { .. } | Error::Malformed { .. }),
            "prefix {len}: {e:?}"
        );
    }
    let e = st_err(full[..5].to_vec());
    assert!(
        matches!(
            e,
            Error::Truncated {
                start: 0,
                end: 8,
                len: 5,
                ..
            }
        ),
        "{e:?}"
    );
    // Cut in the data: the declared offsets no longer end at the end of the file.
    let e = st_err(full[..full.len() - 1].to_vec());
    assert!(
        matches!(e, Error::Malformed { ref problem, .. } if problem.contains("end")),
        "{e:?}"
    );
    // Trailing bytes are caught the same way.
    let mut long = full;
    long.push(0);
    let e = st_err(long);
    assert!(
        matches!(e, Error::Malformed { ref problem, .. } if problem.contains("trailing")),
        "{e:?}"
    );
}

#[test]
fn safetensors_every_single_byte_corruption_is_handled() {
    let full = valid_st();
    for pos in 0..full.len() {
        for b in [0x00, 0xff, 0x80, b'"', b'}', b'9', full[pos] ^ 0x01] {
            let mut bytes = full.clone();
            bytes[pos] = b;
            if let Ok(f) = SafetensorsFile::from_bytes(SP, bytes.clone()) {
                touch(&f);
            }
            membound_tensor::safetensors::fuzz_parse(&bytes);
        }
    }
}

#[test]
fn safetensors_header_length_beyond_file() {
    for n in [1000u64, 99_999_999, 100_000_000] {
        let bytes = W::new().u64(n).bytes(b"{}").done();
        let e = fast(|| st_err(bytes));
        assert!(
            matches!(e, Error::Truncated { ref what, start: 8, end, len: 10, .. } if what.contains("JSON header") && end == n + 8),
            "{n}: {e:?}"
        );
    }
}

#[test]
fn safetensors_oversized_header_is_capped() {
    for n in [100_000_001u64, 1 << 40, u64::MAX - 7, u64::MAX] {
        let bytes = W::new().u64(n).bytes(b"{}").done();
        let e = fast(|| st_err(bytes));
        assert!(
            matches!(e, Error::Malformed { ref problem, .. } if problem.contains("100 MB")),
            "{n}: {e:?}"
        );
    }
}

#[test]
fn safetensors_offsets_not_contiguous() {
    // A gap between a and b.
    let e = st_err(st(
        &[("a", "F32", &[4], (0, 16)), ("b", "F16", &[3], (20, 26))],
        &[0; 26],
    ));
    assert!(
        matches!(e, Error::Malformed { ref what, .. } if what == "tensor \"b\""),
        "{e:?}"
    );
    // Data not starting at 0.
    let e = st_err(st(&[("a", "F32", &[4], (4, 20))], &[0; 20]));
    assert!(
        matches!(e, Error::Malformed { ref what, .. } if what == "tensor \"a\""),
        "{e:?}"
    );
    // End before start.
    let e = st_err(st(
        &[("a", "F32", &[4], (0, 16)), ("b", "F32", &[0], (16, 8))],
        &[0; 16],
    ));
    assert!(
        matches!(e, Error::Malformed { ref what, .. } if what == "tensor \"b\""),
        "{e:?}"
    );
}

#[test]
fn safetensors_offsets_overlap() {
    let e = st_err(st(
        &[("a", "F32", &[4], (0, 16)), ("b", "F16", &[3], (8, 14))],
        &[0; 16],
    ));
    assert!(
        matches!(e, Error::Malformed { ref what, ref problem, .. } if what == "tensor \"b\"" && problem.contains("overlap")),
        "{e:?}"
    );
    // Same range twice.
    let e = st_err(st(
        &[("a", "F32", &[4], (0, 16)), ("b", "F32", &[4], (0, 16))],
        &[0; 16],
    ));
    assert!(
        matches!(e, Error::Malformed { ref what, .. } if what.contains("\"a\"") || what.contains("\"b\"")),
        "{e:?}"
    );
}

#[test]
fn safetensors_offsets_disagree_with_shape() {
    let e = st_err(st(&[("a", "F32", &[2, 2], (0, 12))], &[0; 12]));
    assert!(
        matches!(e, Error::Malformed { ref problem, .. } if problem.contains("disagree")),
        "{e:?}"
    );
    // Sub-byte dtype with an odd number of elements.
    let e = st_err(st(&[("f4", "F4", &[3], (0, 2))], &[0; 2]));
    assert!(matches!(e, Error::Malformed { .. }), "{e:?}");
}

#[test]
fn safetensors_shape_overflow() {
    for shape in [&[1usize << 62, 1 << 62][..], &[usize::MAX, 2], &[1 << 62]] {
        let e = fast(|| st_err(st(&[("big", "F32", shape, (0, 16))], &[0; 16])));
        assert!(
            matches!(e, Error::Malformed { ref problem, .. } if problem.contains("overflow")),
            "{shape:?}: {e:?}"
        );
    }
    // A dimension beyond u64 is a JSON error, not a panic.
    let header =
        "{\"big\":{\"dtype\":\"F32\",\"shape\":[18446744073709551616],\"data_offsets\":[0,4]}}";
    let e = st_err(st_raw(header, &[0; 4]));
    assert!(matches!(e, Error::Malformed { .. }), "{e:?}");
}

#[test]
fn safetensors_shape_errors_name_the_tensor() {
    let e = st_err(st(
        &[("big", "F32", &[1 << 62, 1 << 62], (0, 16))],
        &[0; 16],
    ));
    assert_mentions(&e, &["big"]);
    let e = st_err(st(&[("short", "F32", &[2, 2], (0, 12))], &[0; 12]));
    assert_mentions(&e, &["short"]);
}

#[test]
fn safetensors_unknown_dtype() {
    for dtype in ["Q9", "f32", "Q4_0", ""] {
        let e = st_err(st(&[("w", dtype, &[4], (0, 16))], &[0; 16]));
        assert!(
            matches!(e, Error::UnknownDType { kind: "safetensors dtype", ref id, .. } if id.contains(dtype)),
            "{dtype}: {e:?}"
        );
    }
}

#[test]
fn safetensors_unknown_dtype_names_the_tensor() {
    let e = st_err(st(&[("model.layers.0.w", "Q9", &[4], (0, 16))], &[0; 16]));
    assert!(
        matches!(e, Error::UnknownDType { ref tensor, .. } if tensor == "model.layers.0.w"),
        "{e:?}"
    );
}

#[test]
fn safetensors_bad_json() {
    for header in [
        "",
        "{",
        "[]",
        "{\"a\":1}",
        "{\"a\":{\"dtype\":\"F32\"}}",
        "{\"__metadata__\":{\"k\":1}}",
        "null",
    ] {
        let e = st_err(st_raw(header, &[]));
        assert!(
            matches!(e, Error::Malformed { ref what, .. } if what == "header"),
            "{header:?}: {e:?}"
        );
    }
    // Not UTF-8.
    let mut bytes = st_raw("{\"\u{e9}\":1}", &[]);
    bytes[10] = 0xff;
    let e = st_err(bytes);
    assert!(
        matches!(e, Error::Malformed { ref problem, .. } if problem.contains("UTF-8")),
        "{e:?}"
    );
}

// ---------------------------------------------------------------------------
// llama2.c builder
// ---------------------------------------------------------------------------

/// dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size (negative:
/// separate classifier), seq_len.
type Cfg = [i32; 7];

/// dim 8, hidden 16, 2 layers, 2 heads, 1 kv head, vocab 10, seq 4.
const TINY: Cfg = [8, 16, 2, 2, 1, 10, 4];

/// Number of f32 weights a header implies.
fn l2c_floats(c: Cfg) -> usize {
    let [d, h, l, heads, kv, v, seq] = c.map(|x| x.unsigned_abs() as usize);
    let hs = d / heads;
    let kvd = hs * kv;
    let per_layer = d + d * d + 2 * kvd * d + d * d + d + 3 * h * d;
    let classifier = if c[5] < 0 { v * d } else { 0 };
    v * d + l * per_layer + d + seq * hs + classifier
}

fn l2c_header(c: Cfg) -> Vec<u8> {
    c.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A checkpoint whose i-th weight is `i as f32`.
fn l2c(c: Cfg) -> Vec<u8> {
    let mut out = l2c_header(c);
    out.extend((0..l2c_floats(c)).flat_map(|i| (i as f32).to_le_bytes()));
    out
}

#[track_caller]
fn l2c_err(bytes: Vec<u8>) -> Error {
    let e = err(Llama2cFile::from_bytes(LP, bytes));
    assert_mentions(&e, &[LP]);
    e
}

// ---------------------------------------------------------------------------
// llama2.c checkpoint tests
// ---------------------------------------------------------------------------

#[test]
fn llama2c_valid_round_trip() {
    for cfg in [TINY, [8, 16, 2, 2, 1, -10, 4], [4, 4, 1, 1, 1, 3, 2]] {
        let f = Llama2cFile::from_bytes(LP, l2c(cfg)).unwrap();
        let c = *f.config();
        assert_eq!(
            c,
            Llama2cConfig {
                dim: cfg[0] as usize,
                hidden_dim: cfg[1] as usize,
                n_layers: cfg[2] as usize,
                n_heads: cfg[3] as usize,
                n_kv_heads: cfg[4] as usize,
                vocab_size: cfg[5].unsigned_abs() as usize,
                seq_len: cfg[6] as usize,
                shared_classifier: cfg[5] > 0,
            }
        );
        let ts = f.tensors();
        let separate = cfg[5] < 0;
        assert_eq!(ts.len(), 1 + 9 * c.n_layers + 1 + usize::from(separate));
        let (d, h, v, kv) = (c.dim, c.hidden_dim, c.vocab_size, c.kv_dim());
        assert_eq!(ts[0].name(), "model.embed_tokens.weight");
        assert_eq!(ts[0].shape(), &[v, d]);
        // Weights are consecutive integers: each tensor starts where the last ended.
        let mut next = 0.0f32;
        for t in &ts {
            let vals = t.to_f32().unwrap();
            if t.name() == "lm_head.weight" {
                // The RoPE tables sit between the final norm and the classifier.
                next += (c.seq_len * c.head_size()) as f32;
            }
            assert_eq!(vals.first().copied(), Some(next), "{}", t.name());
            next += vals.len() as f32;
        }
        let shape = |name: &str| f.tensor(name).unwrap().shape().to_vec();
        assert_eq!(shape("model.layers.0.self_attn.k_proj.weight"), [kv, d]);
        assert_eq!(shape("model.layers.0.mlp.down_proj.weight"), [d, h]);
        assert_eq!(shape("model.norm.weight"), [d]);
        let meta = f.metadata();
        let classifier = meta.iter().find(|(k, _)| k == "classifier").unwrap();
        assert_eq!(
            classifier.1.as_str(),
            Some(if separate { "separate" } else { "shared" })
        );
    }
}

#[test]
fn llama2c_every_prefix_is_an_error() {
    let full = l2c(TINY);
    for len in 0..full.len() {
        let e = l2c_err(full[..len].to_vec());
        assert!(matches!(e, Error::Truncated { .. }), "prefix {len}: {e:?}");
    }
    let e = l2c_err(full[..18].to_vec());
    assert!(
        matches!(e, Error::Truncated { ref what, .. } if what.contains("n_kv_heads")),
        "{e:?}"
    );
    let e = l2c_err(full[..full.len() - 4].to_vec());
    assert!(
        matches!(e, Error::Truncated { ref what, .. } if what.contains("RoPE")),
        "{e:?}"
    );
    let e = l2c_err(full[..100].to_vec());
    assert!(
        matches!(e, Error::Truncated { ref what, .. } if what.contains("model.embed_tokens.weight")),
        "{e:?}"
    );
}

#[test]
fn llama2c_every_single_byte_corruption_is_handled() {
    let full = l2c(TINY);
    for pos in 0..full.len() {
        for b in [0x00, 0xff, 0x80, 0x7f, 0x01, full[pos] ^ 0x01] {
            let mut bytes = full.clone();
            bytes[pos] = b;
            if let Ok(f) = Llama2cFile::from_bytes(LP, bytes.clone()) {
                touch(&f);
            }
            membound_tensor::llama2c::fuzz_parse(&bytes);
        }
    }
}

#[test]
fn llama2c_zero_negative_and_huge_fields() {
    let names = [
        "dim",
        "hidden_dim",
        "n_layers",
        "n_heads",
        "n_kv_heads",
        "vocab_size",
        "seq_len",
    ];
    for (i, name) in names.iter().enumerate() {
        let mut bad = vec![0, i32::MIN, (1 << 24) + 1, i32::MAX];
        if i != 5 {
            bad.push(-1); // a negative vocab_size is legal (separate classifier)
        }
        for v in bad {
            let mut c = TINY;
            c[i] = v;
            let mut bytes = l2c_header(c);
            bytes.extend_from_slice(&[0; 64]);
            let e = fast(|| l2c_err(bytes));
            assert!(
                matches!(e, Error::Malformed { ref what, .. } if what == &format!("header field {name}")),
                "{name} = {v}: {e:?}"
            );
        }
    }
}

#[test]
fn llama2c_inconsistent_heads() {
    for (c, needle) in [
        ([8, 16, 2, 3, 1, 10, 4], "not a multiple of n_heads"),
        ([8, 16, 2, 2, 4, 10, 4], "n_kv_heads"),
        ([12, 16, 2, 4, 3, 10, 4], "n_kv_heads"),
        ([6, 16, 2, 2, 1, 10, 4], "odd"),
    ] {
        let e = l2c_err(l2c_header(c));
        assert!(
            matches!(e, Error::Malformed { ref what, ref problem, .. } if what == "header" && problem.contains(needle)),
            "{c:?}: {e:?}"
        );
    }
}

#[test]
fn llama2c_size_does_not_match_header() {
    let mut long = l2c(TINY);
    long.extend_from_slice(&[0; 4]);
    let e = l2c_err(long);
    assert!(
        matches!(e, Error::Malformed { ref what, .. } if what == "file size"),
        "{e:?}"
    );
    assert_mentions(&e, &["header implies"]);

    let mut odd = l2c(TINY);
    odd.push(0);
    assert!(matches!(l2c_err(odd), Error::Malformed { .. }));

    // A shared-classifier file read with a header that says separate: too short.
    let mut bytes = l2c(TINY);
    bytes[20..24].copy_from_slice(&(-10i32).to_le_bytes());
    let e = l2c_err(bytes);
    assert!(
        matches!(e, Error::Truncated { ref what, .. } if what.contains("lm_head")),
        "{e:?}"
    );

    // Biggest legal fields, tiny file: sizes are computed without overflow.
    let c = [1 << 24, 1 << 24, 1, 1 << 20, 1 << 20, 1 << 24, 1 << 24];
    let mut bytes = l2c_header(c);
    bytes.extend_from_slice(&[0; 1024]);
    let e = fast(|| l2c_err(bytes));
    assert!(
        matches!(e, Error::Truncated { .. } | Error::Malformed { .. }),
        "{e:?}"
    );
}

#[test]
fn llama2c_huge_layer_count_fails_fast() {
    // 2^16 layers already show it (tens of MB for a 28-byte file) without
    // risking the machine; 2^24, the largest accepted, needs many GB.
    for layers in [1 << 16, 1 << 20] {
        let c = [8, 8, layers, 2, 2, 8, 8];
        let e = fast(|| l2c_err(l2c_header(c)));
        assert!(
            matches!(e, Error::Truncated { .. } | Error::Malformed { .. }),
            "{e:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// llama2.c tokenizer
// ---------------------------------------------------------------------------

/// max_token_length, then (score, declared length, bytes) per token.
fn tok_raw(max_len: i32, tokens: &[(f32, i32, &[u8])]) -> Vec<u8> {
    let mut w = W::new().i32(max_len);
    for (score, len, b) in tokens {
        w = w.f32(*score).i32(*len).bytes(b);
    }
    w.done()
}

fn tok(tokens: &[&str]) -> Vec<u8> {
    let max = tokens.iter().map(|t| t.len()).max().unwrap_or(0) as i32;
    let t: Vec<(f32, i32, &[u8])> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (-(i as f32), t.len() as i32, t.as_bytes()))
        .collect();
    tok_raw(max, &t)
}

#[track_caller]
fn tok_err(bytes: &[u8], vocab: Option<usize>) -> Error {
    let e = err(Llama2cTokenizer::parse(Path::new(TP), bytes, vocab));
    assert_mentions(&e, &[TP]);
    e
}

#[test]
fn tokenizer_valid() {
    let bytes = tok(&["<unk>", "", " the", "\u{e9}"]);
    for vocab in [None, Some(4)] {
        let t = Llama2cTokenizer::parse(Path::new(TP), &bytes, vocab).unwrap();
        assert_eq!(t.max_token_length, 5);
        assert_eq!(t.tokens.len(), 4);
        assert_eq!(t.tokens[2], (b" the".to_vec(), -2.0));
        assert_eq!(t.tokens[1].0, b"");
    }
    let t = Llama2cTokenizer::parse(Path::new(TP), &tok_raw(0, &[]), None).unwrap();
    assert!(t.tokens.is_empty());
}

#[test]
fn tokenizer_every_prefix_is_an_error() {
    let full = tok(&["a", "bb", "ccc"]);
    for len in 0..full.len() {
        let e = tok_err(&full[..len], Some(3));
        assert!(matches!(e, Error::Truncated { .. }), "prefix {len}: {e:?}");
        // Without a vocabulary size only a cut inside a token is caught; a
        // cut between tokens is a smaller, valid file.
        let _ = Llama2cTokenizer::parse(Path::new(TP), &full[..len], None);
    }
}

#[test]
fn tokenizer_negative_lengths() {
    let e = tok_err(&tok_raw(-1, &[]), None);
    assert!(
        matches!(e, Error::Malformed { ref what, .. } if what == "max_token_length"),
        "{e:?}"
    );
    for len in [-1, i32::MIN] {
        let e = tok_err(&tok_raw(8, &[(0.0, 1, b"a"), (0.0, len, b"bb")]), None);
        assert!(
            matches!(e, Error::Malformed { ref what, ref problem, .. } if what == "token 1" && problem.contains("negative")),
            "{e:?}"
        );
    }
}

#[test]
fn tokenizer_lengths_beyond_file() {
    // Declared length beyond the file (but within max_token_length).
    let e = tok_err(&tok_raw(i32::MAX, &[(0.0, 1 << 30, b"abc")]), None);
    assert!(
        matches!(e, Error::Truncated { ref what, .. } if what.contains("token 0")),
        "{e:?}"
    );
    // Longer than max_token_length.
    let e = tok_err(&tok_raw(2, &[(0.0, 3, b"abc")]), None);
    assert!(
        matches!(e, Error::Malformed { ref what, ref problem, .. } if what == "token 0" && problem.contains("max_token_length")),
        "{e:?}"
    );
    // More tokens asked for than the file can hold: caught before reading.
    let bytes = tok(&["a", "b"]);
    for n in [3usize, 1 << 20, 1 << 40] {
        let e = fast(|| tok_err(&bytes, Some(n)));
        assert!(matches!(e, Error::Truncated { .. }), "{n}: {e:?}");
    }
    // Fewer tokens than the file holds.
    let e = tok_err(&bytes, Some(1));
    assert!(
        matches!(e, Error::Malformed { ref what, .. } if what == "file size"),
        "{e:?}"
    );
    // A partial token record at the end.
    let mut bytes = tok(&["a"]);
    bytes.extend_from_slice(&[0, 0]);
    let e = tok_err(&bytes, None);
    assert!(
        matches!(e, Error::Truncated { ref what, .. } if what.contains("token 1")),
        "{e:?}"
    );
}

#[test]
fn tokenizer_absurd_vocab_size_does_not_overflow() {
    let bytes = tok(&["a", "b"]);
    for n in [usize::MAX, 1 << 61, (1 << 61) + 1] {
        let e = tok_err(&bytes, Some(n));
        assert!(matches!(e, Error::Truncated { .. }), "{n}: {e:?}");
    }
}

// ---------------------------------------------------------------------------
// open(): sniffing real files
// ---------------------------------------------------------------------------

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[track_caller]
fn open_err(path: &Path) -> Error {
    let e = err(membound_tensor::open(path));
    assert_mentions(&e, &[&path.display().to_string()]);
    e
}

#[test]
fn open_valid_files_of_each_format() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes, format) in [
        ("m.gguf", valid_gguf().build(), Format::Gguf),
        ("m.safetensors", valid_st(), Format::Safetensors),
        ("m.bin", l2c(TINY), Format::Llama2c),
        ("m.ckpt", l2c(TINY), Format::Llama2c),
    ] {
        let p = write(dir.path(), name, &bytes);
        let f = membound_tensor::open(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(f.format(), format, "{name}");
        assert_eq!(f.path(), p);
        touch(f.as_ref());
    }
}

#[test]
fn open_malformed_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let full = valid_gguf().build();
    let p = write(d, "cut.gguf", &full[..full.len() / 2]);
    assert!(matches!(open_err(&p), Error::Truncated { .. }));

    let mut g = small_gguf();
    g.magic = *b"GGML";
    let p = write(d, "magic.gguf", &g.build());
    assert!(
        matches!(open_err(&p), Error::UnknownFormat { .. }),
        "bad magic is just not GGUF"
    );

    let p = write(d, "v1.gguf", &small_gguf().version(1).build());
    assert!(matches!(open_err(&p), Error::Malformed { ref what, .. } if what == "version"));

    let p = write(
        d,
        "overlap.safetensors",
        &st(
            &[("a", "F32", &[4], (0, 16)), ("b", "F16", &[3], (8, 14))],
            &[0; 16],
        ),
    );
    assert!(matches!(open_err(&p), Error::Malformed { ref what, .. } if what.contains("\"b\"")));

    let p = write(
        d,
        "huge.safetensors",
        &W::new().u64(1 << 40).bytes(b"{}").done(),
    );
    assert!(matches!(open_err(&p), Error::Malformed { .. }));

    let mut long = l2c(TINY);
    long.extend_from_slice(&[0; 8]);
    let p = write(d, "size.bin", &long);
    let e = open_err(&p);
    assert!(
        matches!(e, Error::Malformed { ref what, .. } if what == "file size"),
        "{e:?}"
    );
    // The same bytes without a .bin extension: not recognised, with the reason.
    let p = write(d, "size.dat", &long);
    let e = open_err(&p);
    assert!(
        matches!(e, Error::UnknownFormat { ref reason, .. } if reason.contains("header implies")),
        "{e:?}"
    );

    for (name, bytes) in [
        ("empty.bin", &[][..]),
        ("empty.gguf", &[]),
        ("short", b"GG"),
        ("text.txt", b"hello, world\n"),
    ] {
        let p = write(d, name, bytes);
        let e = open_err(&p);
        assert!(
            matches!(
                e,
                Error::UnknownFormat { .. } | Error::Truncated { .. } | Error::Malformed { .. }
            ),
            "{name}: {e:?}"
        );
    }

    let e = open_err(d);
    assert!(
        matches!(e, Error::Io { ref source, .. } if source.kind() == std::io::ErrorKind::IsADirectory),
        "{e:?}"
    );
    let missing = d.join("missing.gguf");
    let e = open_err(&missing);
    assert!(
        matches!(e, Error::Io { ref source, .. } if source.kind() == std::io::ErrorKind::NotFound),
        "{e:?}"
    );
}

#[test]
fn open_llama2c_with_123_layers() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "deep.bin", &l2c([2, 1, 123, 1, 1, 1, 1]));
    assert!(Llama2cFile::open(&p).is_ok());
    let f = membound_tensor::open(&p).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(f.format(), Format::Llama2c);
}

// ---------------------------------------------------------------------------
// Random mutations
// ---------------------------------------------------------------------------

/// Values that are often lengths, counts or offsets in disguise.
const INTERESTING: [u64; 10] = [
    0,
    1,
    3,
    0x7f,
    0xff,
    1 << 31,
    u32::MAX as u64,
    1 << 40,
    u64::MAX / 2,
    u64::MAX,
];

#[derive(Clone, Debug)]
enum Mutation {
    Flip {
        at: usize,
        xor: u8,
    },
    Set {
        at: usize,
        byte: u8,
    },
    /// Overwrites 8 (or 4) bytes with an interesting little-endian value.
    Word {
        at: usize,
        value: usize,
        wide: bool,
    },
    Truncate {
        at: usize,
    },
    /// Replaces `del` bytes at `at` with `insert`.
    Splice {
        at: usize,
        del: usize,
        insert: Vec<u8>,
    },
    /// Copies `len` bytes from `from` over `to` (duplicated structure).
    Copy {
        from: usize,
        to: usize,
        len: usize,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<usize>(), 1..=255u8).prop_map(|(at, xor)| Mutation::Flip { at, xor }),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        2 => (any::<usize>(), 0..INTERESTING.len(), any::<bool>()).prop_map(|(at, value, wide)| Mutation::Word { at, value, wide }),
        1 => any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        1 => (any::<usize>(), 0..16usize, prop::collection::vec(any::<u8>(), 0..16)).prop_map(|(at, del, insert)| Mutation::Splice { at, del, insert }),
        1 => (any::<usize>(), any::<usize>(), 1..32usize).prop_map(|(from, to, len)| Mutation::Copy { from, to, len }),
    ]
}

fn apply(base: &[u8], muts: &[Mutation]) -> Vec<u8> {
    let mut b = base.to_vec();
    for m in muts {
        let n = b.len().max(1);
        match m {
            Mutation::Flip { at, xor } => {
                if let Some(x) = b.get_mut(at % n) {
                    *x ^= xor;
                }
            }
            Mutation::Set { at, byte } => {
                if let Some(x) = b.get_mut(at % n) {
                    *x = *byte;
                }
            }
            Mutation::Word { at, value, wide } => {
                let v = INTERESTING[*value].to_le_bytes();
                let w = if *wide { 8 } else { 4 };
                let at = at % n;
                let end = (at + w).min(b.len());
                let k = end - at.min(end);
                if k > 0 {
                    b[at..end].copy_from_slice(&v[..k]);
                }
            }
            Mutation::Truncate { at } => b.truncate(at % n),
            Mutation::Splice { at, del, insert } => {
                let at = (at % n).min(b.len());
                let end = (at + del).min(b.len());
                b.splice(at..end, insert.iter().copied());
            }
            Mutation::Copy { from, to, len } => {
                let (from, to) = (from % n, to % n);
                let len = (*len)
                    .min(b.len().saturating_sub(from))
                    .min(b.len().saturating_sub(to));
                b.copy_within(from..from + len, to);
            }
        }
    }
    b
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 1..6)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn gguf_mutations_never_panic(muts in mutations()) {
        let bytes = apply(&small_gguf().build(), &muts);
        if let Ok(f) = GgufFile::from_bytes(GP, bytes.clone()) {
            touch(&f);
            let _ = f.metadata();
        }
        membound_tensor::gguf::fuzz_parse(&bytes);
    }

    #[test]
    fn gguf_full_mutations_never_panic(muts in mutations()) {
        let bytes = apply(&valid_gguf().build(), &muts);
        if let Ok(f) = GgufFile::from_bytes(GP, bytes) {
            touch(&f);
        }
    }

    #[test]
    fn safetensors_mutations_never_panic(muts in mutations()) {
        let bytes = apply(&valid_st(), &muts);
        if let Ok(f) = SafetensorsFile::from_bytes(SP, bytes.clone()) {
            touch(&f);
            let _ = f.metadata();
        }
        membound_tensor::safetensors::fuzz_parse(&bytes);
    }

    #[test]
    fn llama2c_mutations_never_panic(muts in mutations()) {
        let bytes = apply(&l2c([4, 8, 1, 2, 1, -3, 2]), &muts);
        if let Ok(f) = Llama2cFile::from_bytes(LP, bytes.clone()) {
            touch(&f);
        }
        let _ = Llama2cConfig::parse(Path::new(LP), &bytes);
        membound_tensor::llama2c::fuzz_parse(&bytes);
    }

    #[test]
    fn tokenizer_mutations_never_panic(muts in mutations(), vocab in prop::option::of(0..8usize)) {
        let bytes = apply(&tok(&["<unk>", "a", "bc", " the"]), &muts);
        let _ = Llama2cTokenizer::parse(Path::new(TP), &bytes, vocab);
        let _ = Llama2cTokenizer::parse(Path::new(TP), &bytes, None);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The same through files on disk and the format sniffer.
    #[test]
    fn open_mutations_never_panic(which in 0..3usize, muts in mutations()) {
        let base = match which {
            0 => small_gguf().build(),
            1 => valid_st(),
            _ => l2c(TINY),
        };
        let bytes = apply(&base, &muts);
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "m.bin", &bytes);
        match membound_tensor::open(&p) {
            Ok(f) => touch(f.as_ref()),
            Err(e) => prop_assert!(e.to_string().contains(&p.display().to_string()), "{e}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Fuzzing seeds
// ---------------------------------------------------------------------------

/// With `MEMBOUND_FUZZ_SEEDS=DIR`, writes the valid files built here as seeds
/// for the cargo-fuzz targets (`DIR/gguf`, `DIR/safetensors`, `DIR/llama2c`);
/// otherwise does nothing. See docs/fuzzing.md.
#[test]
fn write_fuzz_seeds() {
    let Some(dir) = std::env::var_os("MEMBOUND_FUZZ_SEEDS") else {
        return;
    };
    let dir = Path::new(&dir);
    let (q, _) = q8_0_data();
    let seeds: Vec<(&str, &str, Vec<u8>)> = vec![
        ("gguf", "full", valid_gguf().build()),
        ("gguf", "small", small_gguf().build()),
        (
            "gguf",
            "v2-align64",
            Gguf::new()
                .version(2)
                .alignment(64)
                .f32_tensor("a", &[5])
                .tensor("q", &[32], GGML_Q8_0, q[..34].to_vec())
                .build(),
        ),
        (
            "gguf",
            "metadata-only",
            Gguf::new()
                .kv("deep", nested_arrays(3))
                .kv("n", V::U64(7))
                .build(),
        ),
        ("safetensors", "valid", valid_st()),
        ("safetensors", "empty", st_raw("{}", &[])),
        ("llama2c", "shared", l2c(TINY)),
        ("llama2c", "separate", l2c([4, 8, 1, 2, 1, -3, 2])),
        ("llama2c", "tokenizer", tok(&["<unk>", "a", "bc", " the"])),
    ];
    for (target, name, bytes) in seeds {
        let d = dir.join(target);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), bytes).unwrap();
    }
}
