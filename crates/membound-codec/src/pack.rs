//! Packing of integer codes into words and bytes.
//!
//! # Layout (MLX's)
//!
//! Codes of `bits` bits (1 to 8) form one continuous bit stream, least
//! significant bit first: code `i` occupies stream bits
//! `i·bits .. (i+1)·bits`, and stream bit `k` is bit `k % 32` of word
//! `k / 32`. Bytes are the same stream cut into 8-bit pieces, i.e. the
//! little-endian bytes of the words.
//!
//! This is exactly what `mx.quantize` produces for every bit width. MLX
//! builds 2-, 4- and 8-bit words directly and 3-, 5- and 6-bit ones from
//! byte triplets/quintets (8 codes in 3 bytes, 8 codes in 5 bytes, 4 codes
//! in 3 bytes), but read as little-endian `u32`s both are this one stream:
//! a 3-bit code may straddle two words (code 10 holds stream bits 30..33,
//! the top two bits of word 0 and the lowest bit of word 1). This was
//! established against MLX 0.32.4 and is pinned by `tests/affine_mlx.rs`.
//!
//! Each function here packs one run of codes starting at a word (or byte)
//! boundary; codecs pack each matrix row separately, so rows start on a
//! word boundary.
//!
//! The `*_reference` functions move one bit at a time and are the
//! specification; the fast paths handle 32 codes (exactly `bits` words) per
//! step with shifts fixed at compile time, and tests check they agree.

use std::borrow::Cow;

use crate::{Error, Result};

/// The largest code width this module packs.
pub const MAX_BITS: u32 = 8;

fn check_bits(bits: u32) -> Result<()> {
    if (1..=MAX_BITS).contains(&bits) {
        Ok(())
    } else {
        Err(Error::Input {
            codec: "pack".into(),
            problem: format!("bits={bits}; packing supports 1 to {MAX_BITS}"),
        })
    }
}

fn short(what: &str, need: usize, got: usize) -> Error {
    Error::Input {
        codec: "pack".into(),
        problem: format!("{what} holds {got} elements, {need} needed"),
    }
}

/// `u32` words holding `n` codes of `bits` bits (≤ 32): `⌈n·bits / 32⌉`,
/// computed without overflow (32 codes fill `bits` words exactly).
pub const fn words_for(n: usize, bits: u32) -> usize {
    (n / 32) * bits as usize + ((n % 32) * bits as usize).div_ceil(32)
}

/// Bytes holding `n` codes of `bits` bits (≤ 8): `⌈n·bits / 8⌉`, computed
/// without overflow.
pub const fn bytes_for(n: usize, bits: u32) -> usize {
    (n / 8) * bits as usize + ((n % 8) * bits as usize).div_ceil(8)
}

/// Packs `codes` into the first [`words_for`]`(codes.len(), bits)` words of
/// `out`, overwriting them.
///
/// Fails if `bits` is not in 1..=8, a code does not fit in `bits` bits, or
/// `out` is too short.
pub fn pack_words(codes: &[u8], bits: u32, out: &mut [u32]) -> Result<()> {
    check_bits(bits)?;
    let need = words_for(codes.len(), bits);
    if out.len() < need {
        return Err(short("output", need, out.len()));
    }
    let or = codes.iter().fold(0u8, |a, &c| a | c);
    if u32::from(or) >> bits != 0 {
        let (i, c) = codes
            .iter()
            .enumerate()
            .find(|&(_, &c)| u32::from(c) >> bits != 0)
            .unwrap();
        return Err(Error::Input {
            codec: "pack".into(),
            problem: format!("code {c} at index {i} does not fit in {bits} bits"),
        });
    }
    pack_words_unchecked(codes, bits, &mut out[..need]);
    Ok(())
}

/// Unpacks `out.len()` codes of `bits` bits from `words`.
///
/// Fails if `bits` is not in 1..=8 or `words` is too short.
pub fn unpack_words(words: &[u32], bits: u32, out: &mut [u8]) -> Result<()> {
    check_bits(bits)?;
    let need = words_for(out.len(), bits);
    if words.len() < need {
        return Err(short("input", need, words.len()));
    }
    unpack_words_unchecked(&words[..need], bits, out);
    Ok(())
}

/// Packs `codes` into the first [`bytes_for`]`(codes.len(), bits)` bytes of
/// `out`: the little-endian bytes of [`pack_words`]'s words, without the
/// padding of the last word.
pub fn pack_bytes(codes: &[u8], bits: u32, out: &mut [u8]) -> Result<()> {
    check_bits(bits)?;
    let need = bytes_for(codes.len(), bits);
    if out.len() < need {
        return Err(short("output", need, out.len()));
    }
    let mut words = vec![0u32; words_for(codes.len(), bits)];
    pack_words(codes, bits, &mut words)?;
    for (o, b) in out[..need]
        .iter_mut()
        .zip(words.iter().flat_map(|w| w.to_le_bytes()))
    {
        *o = b;
    }
    Ok(())
}

/// Unpacks `out.len()` codes of `bits` bits from bytes laid out as by
/// [`pack_bytes`].
pub fn unpack_bytes(bytes: &[u8], bits: u32, out: &mut [u8]) -> Result<()> {
    check_bits(bits)?;
    let need = bytes_for(out.len(), bits);
    if bytes.len() < need {
        return Err(short("input", need, bytes.len()));
    }
    let words: Vec<u32> = bytes[..need]
        .chunks(4)
        .map(|c| {
            let mut w = [0u8; 4];
            w[..c.len()].copy_from_slice(c);
            u32::from_le_bytes(w)
        })
        .collect();
    unpack_words_unchecked(&words, bits, out);
    Ok(())
}

/// Little-endian bytes as `u32` words: borrowed where the bytes are aligned
/// on a little-endian host, copied otherwise.
pub fn le_words(bytes: &[u8]) -> Cow<'_, [u32]> {
    #[cfg(target_endian = "little")]
    if let Ok(w) = bytemuck::try_cast_slice::<u8, u32>(bytes) {
        return Cow::Borrowed(w);
    }
    Cow::Owned(
        bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

/// Writes `words` as little-endian bytes into `out` (`4 × words.len()`).
pub(crate) fn put_le_words(words: &[u32], out: &mut [u8]) {
    for (o, w) in out.chunks_exact_mut(4).zip(words) {
        o.copy_from_slice(&w.to_le_bytes());
    }
}

/// The specification of [`pack_words`]: one bit at a time.
pub fn pack_words_reference(codes: &[u8], bits: u32) -> Vec<u32> {
    let mut out = vec![0u32; words_for(codes.len(), bits)];
    for (i, &c) in codes.iter().enumerate() {
        for j in 0..bits as usize {
            if (c >> j) & 1 == 1 {
                let k = i * bits as usize + j;
                out[k / 32] |= 1 << (k % 32);
            }
        }
    }
    out
}

/// The specification of [`unpack_words`]: `n` codes, one bit at a time.
pub fn unpack_words_reference(words: &[u32], bits: u32, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| {
            (0..bits as usize).fold(0u8, |c, j| {
                let k = i * bits as usize + j;
                c | ((((words[k / 32] >> (k % 32)) & 1) as u8) << j)
            })
        })
        .collect()
}

/// Packs without checks: `out.len() == words_for(codes.len(), bits)`, codes
/// fit, `bits` in 1..=8.
pub(crate) fn pack_words_unchecked(codes: &[u8], bits: u32, out: &mut [u32]) {
    match bits {
        1 => pack_fast::<1>(codes, out),
        2 => pack_fast::<2>(codes, out),
        3 => pack_fast::<3>(codes, out),
        4 => pack_fast::<4>(codes, out),
        5 => pack_fast::<5>(codes, out),
        6 => pack_fast::<6>(codes, out),
        7 => pack_fast::<7>(codes, out),
        _ => pack_fast::<8>(codes, out),
    }
}

/// Unpacks without checks: `words.len() >= words_for(out.len(), bits)`,
/// `bits` in 1..=8.
pub(crate) fn unpack_words_unchecked(words: &[u32], bits: u32, out: &mut [u8]) {
    match bits {
        1 => unpack_fast::<1>(words, out),
        2 => unpack_fast::<2>(words, out),
        3 => unpack_fast::<3>(words, out),
        4 => unpack_fast::<4>(words, out),
        5 => unpack_fast::<5>(words, out),
        6 => unpack_fast::<6>(words, out),
        7 => unpack_fast::<7>(words, out),
        _ => unpack_fast::<8>(words, out),
    }
}

/// 32 codes of `B` bits fill exactly `B` words, so whole chunks pack with
/// shifts known at compile time.
#[inline(always)]
pub(crate) fn pack32<const B: usize>(c: &[u8; 32], w: &mut [u32; B]) {
    *w = [0; B];
    for (i, &c) in c.iter().enumerate() {
        let (k, off) = ((i * B) / 32, (i * B) % 32);
        w[k] |= u32::from(c) << off;
        if off + B > 32 {
            w[k + 1] |= u32::from(c) >> (32 - off);
        }
    }
}

/// The inverse of [`pack32`].
#[inline(always)]
pub(crate) fn unpack32<const B: usize>(w: &[u32; B], c: &mut [u8; 32]) {
    let mask = (1u32 << B) - 1;
    for (i, c) in c.iter_mut().enumerate() {
        let (k, off) = ((i * B) / 32, (i * B) % 32);
        let mut v = w[k] >> off;
        if off + B > 32 {
            v |= w[k + 1] << (32 - off);
        }
        *c = (v & mask) as u8;
    }
}

fn pack_fast<const B: usize>(codes: &[u8], out: &mut [u32]) {
    let whole = codes.len() / 32;
    let (head, tail) = codes.split_at(whole * 32);
    let (out_head, out_tail) = out.split_at_mut(whole * B);
    for (c, w) in head.chunks_exact(32).zip(out_head.chunks_exact_mut(B)) {
        pack32::<B>(c.try_into().unwrap(), w.try_into().unwrap());
    }
    // The last partial chunk goes through a zero-padded full one.
    if !tail.is_empty() {
        let mut c = [0u8; 32];
        c[..tail.len()].copy_from_slice(tail);
        let mut w = [0u32; B];
        pack32::<B>(&c, &mut w);
        out_tail.copy_from_slice(&w[..out_tail.len()]);
    }
}

fn unpack_fast<const B: usize>(words: &[u32], out: &mut [u8]) {
    let whole = out.len() / 32;
    let (head, tail) = out.split_at_mut(whole * 32);
    for (c, w) in head.chunks_exact_mut(32).zip(words.chunks_exact(B)) {
        unpack32::<B>(w.try_into().unwrap(), c.try_into().unwrap());
    }
    if !tail.is_empty() {
        let rest = &words[whole * B..words_for(whole * 32 + tail.len(), B as u32)];
        let mut w = [0u32; B];
        w[..rest.len()].copy_from_slice(rest);
        let mut c = [0u8; 32];
        unpack32::<B>(&w, &mut c);
        tail.copy_from_slice(&c[..tail.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(n: usize, bits: u32, seed: u32) -> Vec<u8> {
        let mut s = seed.wrapping_mul(0x9e37_79b9) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s & ((1 << bits) - 1)) as u8
            })
            .collect()
    }

    #[test]
    fn fast_matches_reference_for_every_width_and_length() {
        for bits in 1..=8 {
            for n in (0..100).chain([255, 256, 257, 1000]) {
                let c = codes(n, bits, n as u32 + bits);
                let want = pack_words_reference(&c, bits);
                let mut got = vec![0xdead_beef; want.len()];
                pack_words(&c, bits, &mut got).unwrap();
                assert_eq!(got, want, "bits={bits} n={n}");
                assert_eq!(unpack_words_reference(&want, bits, n), c);
                let mut back = vec![0xff; n];
                unpack_words(&got, bits, &mut back).unwrap();
                assert_eq!(back, c, "bits={bits} n={n}");

                let mut bytes = vec![0xaa; bytes_for(n, bits)];
                pack_bytes(&c, bits, &mut bytes).unwrap();
                let le: Vec<u8> = want.iter().flat_map(|w| w.to_le_bytes()).collect();
                assert_eq!(bytes, le[..bytes.len()]);
                let mut back = vec![0; n];
                unpack_bytes(&bytes, bits, &mut back).unwrap();
                assert_eq!(back, c);
            }
        }
    }

    #[test]
    fn layout_is_lsb_first_stream() {
        // 4-bit: code i in bits 4i..4i+4 of word 0.
        let mut w = [0u32; 1];
        pack_words(&[1, 2, 3, 4, 5, 6, 7, 8], 4, &mut w).unwrap();
        assert_eq!(w[0], 0x8765_4321);
        // 3-bit: code 10 straddles words 0 and 1 (stream bits 30, 31 | 32).
        let mut c = [0u8; 32];
        c[10] = 0b101;
        let mut w = [0u32; 3];
        pack_words(&c, 3, &mut w).unwrap();
        assert_eq!(w, [0b01 << 30, 0b1, 0]);
        // 6-bit: 16 codes = 3 words; code 5 is bits 30..36.
        let mut c = [0u8; 16];
        c[5] = 0b11_1111;
        let mut w = [0u32; 3];
        pack_words(&c, 6, &mut w).unwrap();
        assert_eq!(w, [0b11 << 30, 0b1111, 0]);
        // Bytes: 2 codes of 5 bits = 10 bits = 2 bytes.
        let mut b = [0u8; 2];
        pack_bytes(&[0b10101, 0b11011], 5, &mut b).unwrap();
        assert_eq!(b, [0b0111_0101, 0b11]);
    }

    #[test]
    fn rejects_bad_arguments() {
        let mut w = [0u32; 4];
        assert!(pack_words(&[0; 4], 0, &mut w).is_err());
        assert!(pack_words(&[0; 4], 9, &mut w).is_err());
        let e = pack_words(&[1, 16, 2], 4, &mut w).unwrap_err().to_string();
        assert!(e.contains("index 1"), "{e}");
        assert!(pack_words(&[0; 33], 4, &mut w[..4]).is_err()); // needs 5 words
        let mut out = [0u8; 9];
        assert!(unpack_words(&[0], 4, &mut out).is_err());
        assert!(unpack_bytes(&[0; 4], 4, &mut out).is_err());
        let mut b = [0u8; 1];
        assert!(pack_bytes(&[1, 1, 1], 3, &mut b).is_err());
    }
}
