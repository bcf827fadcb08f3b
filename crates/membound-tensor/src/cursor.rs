//! A bounds-checked little-endian reader over a byte slice.

use std::path::Path;

use crate::{Error, Result};

/// Reads little-endian values from `bytes`, turning every overrun into
/// [`Error::Truncated`] that names the file and the field.
pub(crate) struct Cursor<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(path: &'a Path, bytes: &'a [u8]) -> Self {
        Self {
            path,
            bytes,
            pos: 0,
        }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// The next `n` bytes; `what` names the field for the error.
    pub(crate) fn take(&mut self, n: usize, what: impl FnOnce() -> String) -> Result<&'a [u8]> {
        match self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
        {
            Some(end) => {
                let s = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(Error::Truncated {
                path: self.path.to_path_buf(),
                what: what(),
                start: self.pos as u64,
                end: (self.pos as u64).saturating_add(n as u64),
                len: self.bytes.len() as u64,
            }),
        }
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        what: impl FnOnce() -> String,
    ) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    pub(crate) fn u32(&mut self, what: impl FnOnce() -> String) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    pub(crate) fn i32(&mut self, what: impl FnOnce() -> String) -> Result<i32> {
        self.array(what).map(i32::from_le_bytes)
    }

    pub(crate) fn u64(&mut self, what: impl FnOnce() -> String) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    pub(crate) fn f32(&mut self, what: impl FnOnce() -> String) -> Result<f32> {
        self.array(what).map(f32::from_le_bytes)
    }

    pub(crate) fn path(&self) -> &'a Path {
        self.path
    }
}
