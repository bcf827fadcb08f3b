//! GGUF, versions 2 and 3: header, metadata, tensor infos and alignment.
//!
//! Layout (little-endian): magic `GGUF`, `u32` version, `u64` tensor count,
//! `u64` key/value count, the key/value pairs, the tensor infos, padding to
//! `general.alignment` (default 32), then the tensor data. Each tensor's
//! offset is relative to the start of the data section.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::cursor::Cursor;
use crate::storage::Storage;
use crate::view::{TensorEntry, numel};
use crate::{Error, Format, GgmlType, MetaValue, Result, TensorSource, TensorView};

/// The four magic bytes at the start of every GGUF file.
pub const GGUF_MAGIC: &[u8; 4] = b"GGUF";
/// Alignment of the data section and of tensor offsets when the file does not say.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most this many dimensions.
const MAX_DIMS: u32 = 4;
/// Arrays may nest, but no real file nests deeper than this.
const MAX_ARRAY_DEPTH: usize = 8;
/// The largest alignment we accept (ggml uses 32; 64 KiB leaves room for page alignment).
const MAX_ALIGNMENT: u64 = 1 << 16;

/// A parsed GGUF file.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    storage: Storage,
    version: u32,
    alignment: u64,
    data_offset: usize,
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<TensorEntry>,
    ggml_types: Vec<GgmlType>,
}

impl GgufFile {
    /// Maps and parses `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::from_storage(path, Storage::map(path)?)
    }

    /// Parses a GGUF file held in memory; `path` only names it in errors.
    pub fn from_bytes(path: impl AsRef<Path>, bytes: Vec<u8>) -> Result<Self> {
        Self::from_storage(path.as_ref(), Storage::Owned(bytes))
    }

    pub(crate) fn from_storage(path: &Path, storage: Storage) -> Result<Self> {
        let parsed = parse(path, storage.bytes())?;
        Ok(Self {
            path: path.to_path_buf(),
            storage,
            version: parsed.version,
            alignment: parsed.alignment,
            data_offset: parsed.data_offset,
            metadata: parsed.metadata,
            tensors: parsed.tensors,
            ggml_types: parsed.ggml_types,
        })
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The data alignment in bytes.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Byte offset of the data section in the file.
    pub fn data_offset(&self) -> usize {
        self.data_offset
    }

    /// The metadata value for `key`.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// `general.architecture`, e.g. `llama`.
    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(MetaValue::as_str)
    }

    /// `{architecture}.{suffix}` as an integer, e.g. `arch_u64("block_count")`.
    pub fn arch_u64(&self, suffix: &str) -> Option<u64> {
        let arch = self.architecture()?;
        self.get(&format!("{arch}.{suffix}"))?.as_u64()
    }

    /// The ggml type of each tensor, in file order (parallel to `tensors()`).
    pub fn ggml_types(&self) -> &[GgmlType] {
        &self.ggml_types
    }
}

impl TensorSource for GgufFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn format(&self) -> Format {
        Format::Gguf
    }

    fn tensors(&self) -> Vec<TensorView<'_>> {
        let bytes = self.storage.bytes();
        self.tensors.iter().map(|t| t.view(bytes)).collect()
    }

    fn metadata(&self) -> Vec<(String, MetaValue)> {
        self.metadata.clone()
    }
}

struct Parsed {
    version: u32,
    alignment: u64,
    data_offset: usize,
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<TensorEntry>,
    ggml_types: Vec<GgmlType>,
}

/// Parses and validates a whole GGUF file. Used by [`GgufFile`] and the fuzzer.
fn parse(path: &Path, bytes: &[u8]) -> Result<Parsed> {
    let mut c = Cursor::new(path, bytes);
    let magic = c.array::<4>(|| "GGUF magic".into())?;
    if &magic != GGUF_MAGIC {
        return Err(Error::malformed(
            path,
            "magic",
            format!("expected \"GGUF\", found {magic:02x?}"),
        ));
    }
    let version = c.u32(|| "version".into())?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(Error::malformed(
                path,
                "version",
                "GGUF v1 (32-bit lengths) is not supported; re-export the model with a current llama.cpp",
            ));
        }
        v if (2..=3).contains(&v.swap_bytes()) => {
            return Err(Error::malformed(
                path,
                "version",
                "big-endian GGUF is not supported",
            ));
        }
        v => {
            return Err(Error::malformed(
                path,
                "version",
                format!("unsupported GGUF version {v} (expected 2 or 3)"),
            ));
        }
    }
    let n_tensors = c.u64(|| "tensor count".into())?;
    let n_kv = c.u64(|| "metadata key/value count".into())?;

    // Every key/value pair takes at least 8 (key length) + 4 (type) + 1 bytes,
    // every tensor info at least 8 + 4 + 4 + 8: a count that cannot fit in
    // what is left of the file is a lie, caught before any allocation.
    check_count(&c, n_kv, 13, "metadata key/value count")?;
    let mut metadata = Vec::with_capacity(n_kv as usize);
    let mut keys = HashSet::new();
    for i in 0..n_kv {
        let key = read_string(&mut c, &|| format!("key of metadata entry {i}"))?;
        let ty = c.u32(|| format!("type of metadata key {key:?}"))?;
        let value = read_value(&mut c, ty, &key, 0)?;
        if !keys.insert(key.clone()) {
            return Err(Error::malformed(
                path,
                format!("metadata key {key:?}"),
                "appears twice",
            ));
        }
        metadata.push((key, value));
    }

    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, MetaValue::U32(a))) if a.is_power_of_two() && u64::from(*a) <= MAX_ALIGNMENT => {
            u64::from(*a)
        }
        Some((_, v)) => {
            return Err(Error::malformed(
                path,
                "metadata key \"general.alignment\"",
                format!("must be a u32 power of two up to {MAX_ALIGNMENT}, found {v:?}"),
            ));
        }
    };

    check_count(&c, n_tensors, 24, "tensor count")?;
    let mut infos = Vec::with_capacity(n_tensors as usize);
    let mut names = HashSet::new();
    for i in 0..n_tensors {
        let name = read_string(&mut c, &|| format!("name of tensor {i}"))?;
        let n_dims = c.u32(|| format!("tensor {name:?}: dimension count"))?;
        if n_dims > MAX_DIMS {
            return Err(Error::malformed(
                path,
                format!("tensor {name:?}"),
                format!("{n_dims} dimensions (ggml allows at most {MAX_DIMS})"),
            ));
        }
        let mut ne = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            let v = c.u64(|| format!("tensor {name:?}: dimension {d}"))?;
            let v = usize::try_from(v).map_err(|_| {
                Error::malformed(
                    path,
                    format!("tensor {name:?}"),
                    format!("dimension {d} = {v} does not fit in memory"),
                )
            })?;
            ne.push(v);
        }
        let type_id = c.u32(|| format!("tensor {name:?}: type"))?;
        let ty = GgmlType::from_id(type_id).ok_or_else(|| Error::UnknownDType {
            path: path.to_path_buf(),
            tensor: name.clone(),
            kind: "GGUF tensor type",
            id: type_id.to_string(),
        })?;
        let offset = c.u64(|| format!("tensor {name:?}: data offset"))?;
        if !names.insert(name.clone()) {
            return Err(Error::malformed(
                path,
                format!("tensor {name:?}"),
                "appears twice",
            ));
        }
        infos.push((name, ne, ty, offset));
    }

    let data_offset = (c.pos() as u64).next_multiple_of(alignment);
    if data_offset > bytes.len() as u64 && !infos.is_empty() {
        return Err(Error::Truncated {
            path: path.to_path_buf(),
            what: "data section".into(),
            start: data_offset,
            end: data_offset,
            len: bytes.len() as u64,
        });
    }

    let mut tensors = Vec::with_capacity(infos.len());
    let mut ggml_types = Vec::with_capacity(infos.len());
    for (name, ne, ty, offset) in infos {
        let what = || format!("tensor {name:?}");
        let n = numel(&ne)
            .ok_or_else(|| Error::malformed(path, what(), format!("shape {ne:?} overflows")))?;
        if ne.first().is_some_and(|&row| row % ty.block_size() != 0) {
            return Err(Error::malformed(
                path,
                what(),
                format!(
                    "row length {} is not a multiple of the {} block size {}",
                    ne[0],
                    ty.name(),
                    ty.block_size()
                ),
            ));
        }
        let dtype = ty.to_dtype();
        let size = dtype.storage_bytes(n).ok_or_else(|| {
            Error::malformed(
                path,
                what(),
                if n % ty.block_size() as u64 != 0 {
                    format!(
                        "{n} elements are not a whole number of {}-element {} blocks",
                        ty.block_size(),
                        ty.name()
                    )
                } else {
                    format!("{n} elements of {} overflow the byte size", ty.name())
                },
            )
        })?;
        if offset % alignment != 0 {
            return Err(Error::malformed(
                path,
                what(),
                format!("data offset {offset} is not aligned to {alignment} bytes"),
            ));
        }
        let start = data_offset.checked_add(offset);
        let end = start.and_then(|s| s.checked_add(size));
        let (Some(start), Some(end)) = (start, end) else {
            return Err(Error::malformed(
                path,
                what(),
                format!("data offset {offset} overflows"),
            ));
        };
        if end > bytes.len() as u64 {
            return Err(Error::Truncated {
                path: path.to_path_buf(),
                what: what(),
                start,
                end,
                len: bytes.len() as u64,
            });
        }
        // ggml's ne is innermost first; views are outermost first.
        let shape: Vec<usize> = ne.into_iter().rev().collect();
        tensors.push(TensorEntry {
            name,
            dtype,
            shape,
            range: start as usize..end as usize,
        });
        ggml_types.push(ty);
    }

    let mut by_offset: Vec<&TensorEntry> = tensors.iter().filter(|t| !t.range.is_empty()).collect();
    by_offset.sort_by_key(|t| t.range.start);
    for pair in by_offset.windows(2) {
        if pair[0].range.end > pair[1].range.start {
            return Err(Error::malformed(
                path,
                format!("tensor {:?}", pair[1].name),
                format!(
                    "data {:?} overlaps tensor {:?} at {:?}",
                    pair[1].range, pair[0].name, pair[0].range
                ),
            ));
        }
    }

    Ok(Parsed {
        version,
        alignment,
        data_offset: data_offset as usize,
        metadata,
        tensors,
        ggml_types,
    })
}

fn check_count(c: &Cursor<'_>, count: u64, min_size: u64, what: &str) -> Result<()> {
    let room = c.remaining() as u64 / min_size;
    if count > room {
        return Err(Error::malformed(
            c.path(),
            what,
            format!(
                "{count} entries cannot fit in the {} bytes left in the file",
                c.remaining()
            ),
        ));
    }
    Ok(())
}

fn read_string(c: &mut Cursor<'_>, what: &dyn Fn() -> String) -> Result<String> {
    let len = c.u64(|| format!("{}: string length", what()))?;
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    let raw = c.take(len, || format!("{}: string of {len} bytes", what()))?;
    Ok(String::from_utf8_lossy(raw).into_owned())
}

/// Smallest encoded size of a value of GGUF type `ty`, for sanity-checking array lengths.
fn min_size(ty: u32) -> u64 {
    match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => 1,
    }
}

fn read_value(c: &mut Cursor<'_>, ty: u32, key: &str, depth: usize) -> Result<MetaValue> {
    let what = || format!("metadata key {key:?}");
    Ok(match ty {
        0 => MetaValue::U8(c.array::<1>(what)?[0]),
        1 => MetaValue::I8(c.array::<1>(what)?[0] as i8),
        2 => MetaValue::U16(u16::from_le_bytes(c.array(what)?)),
        3 => MetaValue::I16(i16::from_le_bytes(c.array(what)?)),
        4 => MetaValue::U32(c.u32(what)?),
        5 => MetaValue::I32(c.i32(what)?),
        6 => MetaValue::F32(c.f32(what)?),
        7 => match c.array::<1>(what)?[0] {
            0 => MetaValue::Bool(false),
            1 => MetaValue::Bool(true),
            b => {
                return Err(Error::malformed(
                    c.path(),
                    what(),
                    format!("bool byte {b} is neither 0 nor 1"),
                ));
            }
        },
        8 => MetaValue::String(read_string(c, &what)?),
        9 => {
            if depth >= MAX_ARRAY_DEPTH {
                return Err(Error::malformed(
                    c.path(),
                    what(),
                    format!("arrays nested deeper than {MAX_ARRAY_DEPTH}"),
                ));
            }
            let elem = c.u32(|| format!("metadata key {key:?}: array element type"))?;
            if elem > 12 {
                return Err(Error::malformed(
                    c.path(),
                    what(),
                    format!("unknown array element type {elem}"),
                ));
            }
            let n = c.u64(|| format!("metadata key {key:?}: array length"))?;
            check_count(c, n, min_size(elem), &what())?;
            let mut items = Vec::with_capacity(n as usize);
            for _ in 0..n {
                items.push(read_value(c, elem, key, depth + 1)?);
            }
            MetaValue::Array(items)
        }
        10 => MetaValue::U64(c.u64(what)?),
        11 => MetaValue::I64(i64::from_le_bytes(c.array(what)?)),
        12 => MetaValue::F64(f64::from_le_bytes(c.array(what)?)),
        t => {
            return Err(Error::malformed(
                c.path(),
                what(),
                format!("unknown value type {t}"),
            ));
        }
    })
}

/// Parses `bytes` as GGUF and touches every tensor, for the fuzzer.
#[doc(hidden)]
pub fn fuzz_parse(bytes: &[u8]) {
    if let Ok(p) = parse(Path::new("<fuzz>"), bytes) {
        for t in &p.tensors {
            let _ = t.view(bytes).to_f32();
        }
    }
}
