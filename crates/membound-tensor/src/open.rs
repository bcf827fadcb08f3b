//! Opening a model file of any supported format.

use std::path::Path;

use crate::storage::Storage;
use crate::{Error, GgufFile, Llama2cFile, Result, SafetensorsFile, TensorSource};

/// Opens `path` as whichever format its bytes say it is.
///
/// GGUF is recognised by its magic, safetensors by its header (a `u64`
/// length followed by `{`), and llama2.c by a header whose implied size is
/// exactly the file's size (checked first: it is the stricter test).
pub fn open(path: impl AsRef<Path>) -> Result<Box<dyn TensorSource>> {
    let path = path.as_ref();
    if path.is_dir() {
        return Err(Error::Io {
            path: path.into(),
            source: std::io::Error::new(
                std::io::ErrorKind::IsADirectory,
                "is a directory; name a model file inside it",
            ),
        });
    }
    let storage = Storage::map(path)?;
    let bytes = storage.bytes();
    if bytes.starts_with(crate::gguf::GGUF_MAGIC) {
        return Ok(Box::new(GgufFile::from_storage(path, storage)?));
    }
    // A llama2.c header is only trusted when it implies exactly this file's
    // size, so it is checked before the weaker safetensors test (byte 8 of a
    // checkpoint is n_layers' low byte, which may well be b'{').
    let llama2c_fits = crate::Llama2cConfig::parse(path, bytes)
        .ok()
        .and_then(|c| c.file_size())
        .is_some_and(|size| size == bytes.len() as u64);
    if !llama2c_fits && bytes.len() >= 9 && bytes[8] == b'{' {
        return Ok(Box::new(SafetensorsFile::from_storage(path, storage)?));
    }
    match Llama2cFile::from_storage(path, storage) {
        Ok(f) => Ok(Box::new(f)),
        Err(e) => {
            // A file with a .bin extension is most likely a broken checkpoint:
            // report why. Anything else is simply unrecognised.
            if path.extension().is_some_and(|x| x == "bin") {
                Err(e)
            } else {
                Err(Error::UnknownFormat {
                    path: path.into(),
                    reason: format!(
                        "no GGUF magic, no safetensors JSON header, and as llama2.c: {e}"
                    ),
                })
            }
        }
    }
}
