//! ggml block dequantization.
//!
//! GGUF stores most weights in ggml's block formats: a fixed number of
//! elements packed, with shared scales, into a fixed number of bytes. Each
//! kernel here decodes one block the way ggml's reference `dequantize_row_*`
//! functions (ggml-quants.c) do: the same element order and the same sequence
//! of f32 operations, so the output is bit-for-bit what ggml's scalar code
//! computes. (Rust never fuses `a * b + c` implicitly. In these formats the
//! products of an f16 scale and small integer codes are mostly exact in f32
//! anyway, so each value is typically rounded once whatever the order; keeping
//! ggml's order makes that a non-issue rather than an argument.)
//!
//! Kernels take fixed-size arrays (`&[u8; BYTES]`, `&mut [f32; ELEMS]`), so
//! their constant offsets are in bounds by construction and the compiler can
//! drop the bounds checks; [`dequantize`] checks the buffer lengths once, up
//! front, and never panics.

use half::f16;

use crate::{Error, GgmlType, Result};

/// Elements per block of the original formats (Q4_0 ... Q8_1, IQ4_NL, MXFP4).
const QK: usize = 32;
/// Elements per super-block of the K-quants, IQ4_XS and the ternary formats.
const QK_K: usize = 256;

// Block sizes in bytes, written as the sum of ggml's struct fields. The kernel
// signatures use these, each kernel const-asserts that its field offsets tile
// its block exactly, and a unit test checks them against `GgmlType::type_size`.
const Q4_0_BYTES: usize = 2 + QK / 2;
const Q4_1_BYTES: usize = 2 + 2 + QK / 2;
const Q5_0_BYTES: usize = 2 + 4 + QK / 2;
const Q5_1_BYTES: usize = 2 + 2 + 4 + QK / 2;
const Q8_0_BYTES: usize = 2 + QK;
const Q8_1_BYTES: usize = 2 + 2 + QK;
const Q2_K_BYTES: usize = QK_K / 16 + QK_K / 4 + 2 + 2;
const Q3_K_BYTES: usize = QK_K / 8 + QK_K / 4 + 12 + 2;
const Q4_K_BYTES: usize = 2 + 2 + 12 + QK_K / 2;
const Q5_K_BYTES: usize = 2 + 2 + 12 + QK_K / 8 + QK_K / 2;
const Q6_K_BYTES: usize = QK_K / 2 + QK_K / 4 + QK_K / 16 + 2;
const Q8_K_BYTES: usize = 4 + QK_K + 2 * (QK_K / 16);
const IQ4_NL_BYTES: usize = 2 + QK / 2;
const IQ4_XS_BYTES: usize = 2 + 2 + QK_K / 64 + QK_K / 2;
const TQ1_0_BYTES: usize = (QK_K - 4 * QK_K / 64) / 5 + QK_K / 64 + 2;
const TQ2_0_BYTES: usize = QK_K / 4 + 2;
const MXFP4_BYTES: usize = 1 + QK / 2;

/// The 16 levels of IQ4_NL and IQ4_XS (ggml's `kvalues_iq4nl`).
const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// The 16 E2M1 values of MXFP4, doubled so they are integers (ggml's
/// `kvalues_mxfp4`); the shared scale is halved to compensate.
const KVALUES_MXFP4: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// Whether [`dequantize`] handles `ty`.
pub fn supports_dequantize(ty: GgmlType) -> bool {
    kernel(ty).is_some()
}

/// Dequantizes whole blocks of `ty` from `src` into `out`, exactly as ggml's
/// `dequantize_row_*` functions define them.
///
/// `out.len()` must be a multiple of `ty.block_size()` and `src` must hold
/// exactly `out.len() / ty.block_size()` blocks of `ty.type_size()` bytes.
/// F32, F16 and BF16 are accepted too (blocks of one element).
///
/// # Errors
///
/// [`Error::UnsupportedConversion`] for a type without a kernel (see
/// [`supports_dequantize`]), [`Error::SizeMismatch`] for buffers that do not
/// match. Both leave `tensor` empty for the caller to fill in.
pub fn dequantize(ty: GgmlType, src: &[u8], out: &mut [f32]) -> Result<()> {
    let Some(kernel) = kernel(ty) else {
        return Err(Error::UnsupportedConversion {
            tensor: String::new(),
            dtype: ty.name().into(),
        });
    };
    let (elems, bytes) = (ty.block_size(), ty.type_size());
    debug_assert_eq!(
        (kernel.elems, kernel.bytes),
        (elems, bytes),
        "{ty:?} kernel geometry"
    );
    // For a partial trailing block, report the bytes that rounding up would need;
    // the element count in the message shows what is wrong.
    let expected = out.len().div_ceil(elems).saturating_mul(bytes);
    if out.len() % elems != 0 || src.len() != expected {
        return Err(Error::SizeMismatch {
            tensor: String::new(),
            dtype: ty.name().into(),
            numel: out.len() as u64,
            expected: expected as u64,
            found: src.len() as u64,
        });
    }
    (kernel.run)(src, out);
    Ok(())
}

/// A block decoder with its geometry, its block type erased so that one table
/// can hold all of them.
struct Kernel {
    elems: usize,
    bytes: usize,
    run: fn(&[u8], &mut [f32]),
}

/// Builds a [`Kernel`] from a function `fn(&[u8; B], &mut [f32; N])`, taking
/// the geometry from the function's own signature so it cannot drift.
macro_rules! kernel {
    ($decode:expr) => {
        Kernel {
            elems: elems_of($decode),
            bytes: bytes_of($decode),
            run: |src, out| for_each_block(src, out, $decode),
        }
    };
}

fn kernel(ty: GgmlType) -> Option<Kernel> {
    Some(match ty {
        GgmlType::F32 => kernel!(f32_le),
        GgmlType::F16 => kernel!(f16_le),
        GgmlType::BF16 => kernel!(bf16_le),
        GgmlType::Q4_0 => kernel!(q4_0),
        GgmlType::Q4_1 => kernel!(q4_1),
        GgmlType::Q5_0 => kernel!(q5_0),
        GgmlType::Q5_1 => kernel!(q5_1),
        GgmlType::Q8_0 => kernel!(q8_0),
        GgmlType::Q8_1 => kernel!(q8_1),
        GgmlType::Q2_K => kernel!(q2_k),
        GgmlType::Q3_K => kernel!(q3_k),
        GgmlType::Q4_K => kernel!(q4_k),
        GgmlType::Q5_K => kernel!(q5_k),
        GgmlType::Q6_K => kernel!(q6_k),
        GgmlType::Q8_K => kernel!(q8_k),
        GgmlType::IQ4_NL => kernel!(iq4_nl),
        GgmlType::IQ4_XS => kernel!(iq4_xs),
        GgmlType::TQ1_0 => kernel!(tq1_0),
        GgmlType::TQ2_0 => kernel!(tq2_0),
        GgmlType::MXFP4 => kernel!(mxfp4),
        _ => return None,
    })
}

const fn elems_of<const B: usize, const N: usize>(_: fn(&[u8; B], &mut [f32; N])) -> usize {
    N
}

const fn bytes_of<const B: usize, const N: usize>(_: fn(&[u8; B], &mut [f32; N])) -> usize {
    B
}

/// Applies `decode` to each block. `src` and `out` hold the same number of
/// blocks (checked by [`dequantize`]); `chunks_exact` yields exactly `B` and
/// `N` items, so the array conversions always succeed.
fn for_each_block<const B: usize, const N: usize>(
    src: &[u8],
    out: &mut [f32],
    decode: impl Fn(&[u8; B], &mut [f32; N]),
) {
    for (block, y) in src.chunks_exact(B).zip(out.chunks_exact_mut(N)) {
        if let (Ok(block), Ok(y)) = (block.try_into(), y.try_into()) {
            decode(block, y);
        }
    }
}

/// The little-endian f16 at `at`, widened (exactly) to f32.
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

fn f32_le(b: &[u8; 4], y: &mut [f32; 1]) {
    y[0] = f32::from_le_bytes(*b);
}

fn f16_le(b: &[u8; 2], y: &mut [f32; 1]) {
    y[0] = f16::from_le_bytes(*b).to_f32();
}

/// bf16 is the top half of an f32. Shifting the bits (as ggml does) rather
/// than converting keeps NaN payloads intact.
fn bf16_le(b: &[u8; 2], y: &mut [f32; 1]) {
    y[0] = f32::from_bits(u32::from(u16::from_le_bytes(*b)) << 16);
}

// ---------------------------------------------------------------------------
// Blocks of 32. In all of them byte `j` of `qs` holds element `j` in its low
// nibble and element `j + 16` in its high nibble, so a block decodes as two
// interleaved halves.
// ---------------------------------------------------------------------------

/// `block_q4_0 { d: f16, qs: [u8; 16] }`: `x = (q - 8) * d`.
fn q4_0(b: &[u8; Q4_0_BYTES], y: &mut [f32; QK]) {
    const QS: usize = 2;
    const _: () = assert!(QS + QK / 2 == Q4_0_BYTES);
    let d = f16_at(b, 0);
    let (lo, hi) = y.split_at_mut(QK / 2);
    for ((&q, lo), hi) in b[QS..].iter().zip(lo).zip(hi) {
        *lo = (i32::from(q & 0x0F) - 8) as f32 * d;
        *hi = (i32::from(q >> 4) - 8) as f32 * d;
    }
}

/// `block_q4_1 { d: f16, m: f16, qs: [u8; 16] }`: `x = q * d + m`.
fn q4_1(b: &[u8; Q4_1_BYTES], y: &mut [f32; QK]) {
    const QS: usize = 4;
    const _: () = assert!(QS + QK / 2 == Q4_1_BYTES);
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let (lo, hi) = y.split_at_mut(QK / 2);
    for ((&q, lo), hi) in b[QS..].iter().zip(lo).zip(hi) {
        *lo = f32::from(q & 0x0F) * d + m;
        *hi = f32::from(q >> 4) * d + m;
    }
}

/// The fifth bits of the two elements that share byte `j` of a Q5 block:
/// bit `j` of `qh` for element `j`, bit `j + 16` for element `j + 16`, each
/// moved to bit 4.
fn q5_high_bits(qh: u32, j: usize) -> (u32, u32) {
    (((qh >> j) << 4) & 0x10, (qh >> (j + 12)) & 0x10)
}

/// `block_q5_0 { d: f16, qh: [u8; 4], qs: [u8; 16] }`: `x = (q - 16) * d`.
fn q5_0(b: &[u8; Q5_0_BYTES], y: &mut [f32; QK]) {
    const QH: usize = 2;
    const QS: usize = QH + 4;
    const _: () = assert!(QS + QK / 2 == Q5_0_BYTES);
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[QH], b[QH + 1], b[QH + 2], b[QH + 3]]);
    let (lo, hi) = y.split_at_mut(QK / 2);
    for (j, ((&q, lo), hi)) in b[QS..].iter().zip(lo).zip(hi).enumerate() {
        let (h0, h1) = q5_high_bits(qh, j);
        *lo = ((u32::from(q & 0x0F) | h0) as i32 - 16) as f32 * d;
        *hi = ((u32::from(q >> 4) | h1) as i32 - 16) as f32 * d;
    }
}

/// `block_q5_1 { d: f16, m: f16, qh: [u8; 4], qs: [u8; 16] }`: `x = q * d + m`.
fn q5_1(b: &[u8; Q5_1_BYTES], y: &mut [f32; QK]) {
    const QH: usize = 4;
    const QS: usize = QH + 4;
    const _: () = assert!(QS + QK / 2 == Q5_1_BYTES);
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = u32::from_le_bytes([b[QH], b[QH + 1], b[QH + 2], b[QH + 3]]);
    let (lo, hi) = y.split_at_mut(QK / 2);
    for (j, ((&q, lo), hi)) in b[QS..].iter().zip(lo).zip(hi).enumerate() {
        let (h0, h1) = q5_high_bits(qh, j);
        // Both halves are at most 31, so the conversions are exact.
        *lo = (u32::from(q & 0x0F) | h0) as f32 * d + m;
        *hi = (u32::from(q >> 4) | h1) as f32 * d + m;
    }
}

/// `block_q8_0 { d: f16, qs: [i8; 32] }`: `x = q * d`.
fn q8_0(b: &[u8; Q8_0_BYTES], y: &mut [f32; QK]) {
    const QS: usize = 2;
    const _: () = assert!(QS + QK == Q8_0_BYTES);
    let d = f16_at(b, 0);
    for (y, &q) in y.iter_mut().zip(&b[QS..]) {
        *y = f32::from(q as i8) * d;
    }
}

/// `block_q8_1 { d: f16, s: f16, qs: [i8; 32] }`: `x = q * d`.
///
/// Q8_1 is ggml's activation format and ggml ships no `dequantize_row_q8_1`;
/// its values are defined exactly as Q8_0's. `s` caches `d * sum(qs)` for dot
/// products and plays no part in the values.
fn q8_1(b: &[u8; Q8_1_BYTES], y: &mut [f32; QK]) {
    const QS: usize = 4;
    const _: () = assert!(QS + QK == Q8_1_BYTES);
    let d = f16_at(b, 0);
    for (y, &q) in y.iter_mut().zip(&b[QS..]) {
        *y = f32::from(q as i8) * d;
    }
}

/// `block_iq4_nl { d: f16, qs: [u8; 16] }`: `x = d * kvalues_iq4nl[q]`.
fn iq4_nl(b: &[u8; IQ4_NL_BYTES], y: &mut [f32; QK]) {
    const QS: usize = 2;
    const _: () = assert!(QS + QK / 2 == IQ4_NL_BYTES);
    let d = f16_at(b, 0);
    let (lo, hi) = y.split_at_mut(QK / 2);
    for ((&q, lo), hi) in b[QS..].iter().zip(lo).zip(hi) {
        *lo = d * f32::from(KVALUES_IQ4NL[usize::from(q & 0x0F)]);
        *hi = d * f32::from(KVALUES_IQ4NL[usize::from(q >> 4)]);
    }
}

/// `block_mxfp4 { e: u8, qs: [u8; 16] }`: `x = kvalues_mxfp4[q] * 2^(e - 128)`.
fn mxfp4(b: &[u8; MXFP4_BYTES], y: &mut [f32; QK]) {
    const QS: usize = 1;
    const _: () = assert!(QS + QK / 2 == MXFP4_BYTES);
    let d = e8m0_to_f32_half(b[0]);
    let (lo, hi) = y.split_at_mut(QK / 2);
    for ((&q, lo), hi) in b[QS..].iter().zip(lo).zip(hi) {
        *lo = f32::from(KVALUES_MXFP4[usize::from(q & 0x0F)]) * d;
        *hi = f32::from(KVALUES_MXFP4[usize::from(q >> 4)]) * d;
    }
}

/// Half of the E8M0 scale `2^(e - 127)`, built from bits so it is exact:
/// exponents 0 and 1 give the f32 subnormals 2^-128 and 2^-127.
fn e8m0_to_f32_half(e: u8) -> f32 {
    if e < 2 {
        f32::from_bits(0x0020_0000 << e)
    } else {
        f32::from_bits(u32::from(e - 1) << 23)
    }
}

// ---------------------------------------------------------------------------
// K-quants: super-blocks of 256 split into sub-blocks of 16 or 32, each with
// its own small integer scale (and min) times the super-block's f16 scale.
// ---------------------------------------------------------------------------

/// `block_q2_K { scales: [u8; 16], qs: [u8; 64], d: f16, dmin: f16 }`.
///
/// Sub-block `r` (elements `16r..16r + 16`) has scale `scales[r] & 15` and min
/// `scales[r] >> 4`; with `r = 8n + 2j + h` its 2-bit codes are bits
/// `2j..2j + 2` of `qs[32n + 16h..][..16]`: each 32 bytes of `qs` hold 128
/// elements as four bit planes.
fn q2_k(b: &[u8; Q2_K_BYTES], y: &mut [f32; QK_K]) {
    const QS: usize = QK_K / 16;
    const D: usize = QS + QK_K / 4;
    const DMIN: usize = D + 2;
    const _: () = assert!(DMIN + 2 == Q2_K_BYTES);
    let (d, min) = (f16_at(b, D), f16_at(b, DMIN));
    for (r, (out, &sc)) in y.chunks_exact_mut(16).zip(&b[..QS]).enumerate() {
        let (n, j, h) = (r / 8, r / 2 % 4, r % 2);
        let dl = d * f32::from(sc & 0x0F);
        let ml = min * f32::from(sc >> 4);
        let q = &b[QS + 32 * n + 16 * h..][..16];
        for (y, &q) in out.iter_mut().zip(q) {
            *y = dl * f32::from((q >> (2 * j)) & 3) - ml;
        }
    }
}

/// `block_q3_K { hmask: [u8; 32], qs: [u8; 64], scales: [u8; 12], d: f16 }`.
///
/// Same sub-block layout as Q2_K, with signed 6-bit scales (see
/// [`q3_k_scales`]) and a third bit per code in `hmask`: bit `4n + j` of
/// `hmask[16h..][..16]`. ggml stores that bit inverted: a clear bit subtracts 4.
fn q3_k(b: &[u8; Q3_K_BYTES], y: &mut [f32; QK_K]) {
    const QS: usize = QK_K / 8;
    const SCALES: usize = QS + QK_K / 4;
    const D: usize = SCALES + 12;
    const _: () = assert!(D + 2 == Q3_K_BYTES);
    let d_all = f16_at(b, D);
    let scales = q3_k_scales(&b[SCALES..D]);
    for (r, (out, &sc)) in y.chunks_exact_mut(16).zip(&scales).enumerate() {
        let (n, j, h) = (r / 8, r / 2 % 4, r % 2);
        let dl = d_all * (i32::from(sc) - 32) as f32;
        let q = &b[QS + 32 * n + 16 * h..][..16];
        let hm = &b[16 * h..][..16];
        let bit = 1u8 << (4 * n + j);
        for ((y, &q), &hm) in out.iter_mut().zip(q).zip(hm) {
            let low = i32::from((q >> (2 * j)) & 3);
            let v = if hm & bit != 0 { low } else { low - 4 };
            *y = dl * v as f32;
        }
    }
}

/// Unpacks Q3_K's sixteen 6-bit scales (unsigned, biased by 32) from 12 bytes:
/// bytes 0..8 hold the low nibbles (scales 0..8 in the low halves, 8..16 in
/// the high halves) and bytes 8..12 the top two bits, four scales per byte.
/// Done on 32-bit words with ggml's masks, as `dequantize_row_q3_K` does.
fn q3_k_scales(packed: &[u8]) -> [u8; 16] {
    const KMASK1: u32 = 0x0303_0303;
    const KMASK2: u32 = 0x0f0f_0f0f;
    let word =
        |i: usize| u32::from_le_bytes([packed[i], packed[i + 1], packed[i + 2], packed[i + 3]]);
    let (a0, a1, tmp) = (word(0), word(4), word(8));
    let words = [
        (a0 & KMASK2) | ((tmp & KMASK1) << 4),
        (a1 & KMASK2) | (((tmp >> 2) & KMASK1) << 4),
        ((a0 >> 4) & KMASK2) | (((tmp >> 4) & KMASK1) << 4),
        ((a1 >> 4) & KMASK2) | (((tmp >> 6) & KMASK1) << 4),
    ];
    let mut scales = [0u8; 16];
    for (out, w) in scales.chunks_exact_mut(4).zip(words) {
        out.copy_from_slice(&w.to_le_bytes());
    }
    scales
}

/// Scale and min of sub-block `j` (0..8) from the 12 packed bytes shared by
/// Q4_K and Q5_K (ggml's `get_scale_min_k4`): sub-blocks 0..4 keep their
/// 6 bits in bytes 0..8; sub-blocks 4..8 keep their low nibbles in bytes
/// 8..12 and their top two bits in the spare top bits of bytes 0..8.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// `block_q4_K { d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128] }`.
///
/// Each 32 bytes of `qs` hold 64 elements: sub-block `2i` in the low
/// nibbles, sub-block `2i + 1` in the high ones. `x = d * sc * q - dmin * m`,
/// with `d * sc` and `dmin * m` rounded first as in ggml.
fn q4_k(b: &[u8; Q4_K_BYTES], y: &mut [f32; QK_K]) {
    const SCALES: usize = 4;
    const QS: usize = SCALES + 12;
    const _: () = assert!(QS + QK_K / 2 == Q4_K_BYTES);
    let (d, min) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[SCALES..QS];
    for (i, (out, q)) in y
        .chunks_exact_mut(64)
        .zip(b[QS..].chunks_exact(32))
        .enumerate()
    {
        let (sc, m) = scale_min_k4(2 * i, scales);
        let (d1, m1) = (d * f32::from(sc), min * f32::from(m));
        let (sc, m) = scale_min_k4(2 * i + 1, scales);
        let (d2, m2) = (d * f32::from(sc), min * f32::from(m));
        let (lo, hi) = out.split_at_mut(32);
        for ((&q, lo), hi) in q.iter().zip(lo).zip(hi) {
            *lo = d1 * f32::from(q & 0x0F) - m1;
            *hi = d2 * f32::from(q >> 4) - m2;
        }
    }
}

/// `block_q5_K { d: f16, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128] }`.
///
/// Q4_K plus a fifth bit per element: for the `i`-th 64 elements, bit `2i`
/// of `qh[l]` belongs to the low-nibble element `l`, bit `2i + 1` to the
/// high-nibble one.
fn q5_k(b: &[u8; Q5_K_BYTES], y: &mut [f32; QK_K]) {
    const SCALES: usize = 4;
    const QH: usize = SCALES + 12;
    const QS: usize = QH + QK_K / 8;
    const _: () = assert!(QS + QK_K / 2 == Q5_K_BYTES);
    let (d, min) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[SCALES..QH];
    let qh = &b[QH..QS];
    for (i, (out, ql)) in y
        .chunks_exact_mut(64)
        .zip(b[QS..].chunks_exact(32))
        .enumerate()
    {
        let (sc, m) = scale_min_k4(2 * i, scales);
        let (d1, m1) = (d * f32::from(sc), min * f32::from(m));
        let (sc, m) = scale_min_k4(2 * i + 1, scales);
        let (d2, m2) = (d * f32::from(sc), min * f32::from(m));
        let (u1, u2) = (1u8 << (2 * i), 2u8 << (2 * i));
        let high = |h: u8, u: u8| if h & u != 0 { 16 } else { 0 };
        let (lo, hi) = out.split_at_mut(32);
        for (((&q, &h), lo), hi) in ql.iter().zip(qh).zip(lo).zip(hi) {
            *lo = d1 * f32::from((q & 0x0F) + high(h, u1)) - m1;
            *hi = d2 * f32::from((q >> 4) + high(h, u2)) - m2;
        }
    }
}

/// `block_q6_K { ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16 }`.
///
/// Each half (128 elements) uses 64 bytes of `ql`, 32 of `qh` and 8 scales.
/// Within a half, element `l + 32k` (k = 0..4) takes its low four bits from
/// `ql[l]` (k = 0), `ql[l + 32]` (k = 1), or their high nibbles (k = 2, 3),
/// and its top two bits from bits `2k..2k + 2` of `qh[l]`; its scale is
/// `scales[l / 16 + 2k]`. `x = d * scale * (q - 32)`, multiplied left to right.
fn q6_k(b: &[u8; Q6_K_BYTES], y: &mut [f32; QK_K]) {
    const QH: usize = QK_K / 2;
    const SCALES: usize = QH + QK_K / 4;
    const D: usize = SCALES + QK_K / 16;
    const _: () = assert!(D + 2 == Q6_K_BYTES);
    let d = f16_at(b, D);
    for (n, out) in y.chunks_exact_mut(128).enumerate() {
        let ql = &b[64 * n..][..64];
        let qh = &b[QH + 32 * n..][..32];
        let sc = &b[SCALES + 8 * n..][..8];
        for (l, &h) in qh.iter().enumerate() {
            let codes = [
                (ql[l] & 0x0F) | ((h & 3) << 4),
                (ql[l + 32] & 0x0F) | (((h >> 2) & 3) << 4),
                (ql[l] >> 4) | (((h >> 4) & 3) << 4),
                (ql[l + 32] >> 4) | (((h >> 6) & 3) << 4),
            ];
            for (k, code) in codes.into_iter().enumerate() {
                let scale = f32::from(sc[l / 16 + 2 * k] as i8);
                out[l + 32 * k] = d * scale * (i32::from(code) - 32) as f32;
            }
        }
    }
}

/// `block_q8_K { d: f32, qs: [i8; 256], bsums: [i16; 16] }`: `x = d * q`.
/// `bsums` are precomputed sums for dot products.
fn q8_k(b: &[u8; Q8_K_BYTES], y: &mut [f32; QK_K]) {
    const QS: usize = 4;
    const BSUMS: usize = QS + QK_K;
    const _: () = assert!(BSUMS + 2 * (QK_K / 16) == Q8_K_BYTES);
    let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    for (y, &q) in y.iter_mut().zip(&b[QS..BSUMS]) {
        *y = d * f32::from(q as i8);
    }
}

/// `block_iq4_xs { d: f16, scales_h: u16, scales_l: [u8; 4], qs: [u8; 128] }`.
///
/// Eight sub-blocks of 32, laid out like IQ4_NL blocks, each with a 6-bit
/// scale biased by 32: low nibble from `scales_l`, top two bits from
/// `scales_h`.
fn iq4_xs(b: &[u8; IQ4_XS_BYTES], y: &mut [f32; QK_K]) {
    const SCALES_H: usize = 2;
    const SCALES_L: usize = SCALES_H + 2;
    const QS: usize = SCALES_L + QK_K / 64;
    const _: () = assert!(QS + QK_K / 2 == IQ4_XS_BYTES);
    let d = f16_at(b, 0);
    let scales_h = u16::from_le_bytes([b[SCALES_H], b[SCALES_H + 1]]);
    for (ib, (out, qs)) in y
        .chunks_exact_mut(32)
        .zip(b[QS..].chunks_exact(16))
        .enumerate()
    {
        let low = (b[SCALES_L + ib / 2] >> (4 * (ib % 2))) & 0x0F;
        let high = ((scales_h >> (2 * ib)) & 3) as u8;
        let dl = d * (i32::from(low | (high << 4)) - 32) as f32;
        let (lo, hi) = out.split_at_mut(16);
        for ((&q, lo), hi) in qs.iter().zip(lo).zip(hi) {
            *lo = dl * f32::from(KVALUES_IQ4NL[usize::from(q & 0x0F)]);
            *hi = dl * f32::from(KVALUES_IQ4NL[usize::from(q >> 4)]);
        }
    }
}

// ---------------------------------------------------------------------------
// Ternary formats: codes in {-1, 0, 1} times one f16 scale.
// ---------------------------------------------------------------------------

/// `block_tq1_0 { qs: [u8; 48], qh: [u8; 4], d: f16 }`.
///
/// Each byte packs five (`qs`) or four (`qh`) base-3 digits as a fixed-point
/// fraction; multiplying by 3^n (wrapping in u8) brings digit `n` to the top,
/// and `(q * 3) >> 8` reads it. Digit-major order: all first digits of a run
/// of bytes, then all second digits, and so on, over runs of 32 bytes
/// (`qs[..32]`), 16 bytes (`qs[32..]`) and 4 bytes (`qh`).
fn tq1_0(b: &[u8; TQ1_0_BYTES], y: &mut [f32; QK_K]) {
    const QH: usize = (QK_K - 4 * QK_K / 64) / 5;
    const D: usize = QH + QK_K / 64;
    const _: () = assert!(D + 2 == TQ1_0_BYTES);
    const POW3: [u8; 5] = [1, 3, 9, 27, 81];
    let d = f16_at(b, D);
    let runs: [(&[u8], usize); 3] = [(&b[..32], 5), (&b[32..QH], 5), (&b[QH..D], 4)];
    let mut out = y.iter_mut();
    for (bytes, digits) in runs {
        for &pow in &POW3[..digits] {
            // `bytes` goes first so the zip stops without taking an extra output.
            for (&byte, y) in bytes.iter().zip(out.by_ref()) {
                let q = byte.wrapping_mul(pow);
                let trit = ((u16::from(q) * 3) >> 8) as i16;
                *y = f32::from(trit - 1) * d;
            }
        }
    }
}

/// `block_tq2_0 { qs: [u8; 64], d: f16 }`: 2-bit codes `q`, `x = (q - 1) * d`.
/// Each 32 bytes hold 128 elements as four bit planes, lowest bits first.
fn tq2_0(b: &[u8; TQ2_0_BYTES], y: &mut [f32; QK_K]) {
    const D: usize = QK_K / 4;
    const _: () = assert!(D + 2 == TQ2_0_BYTES);
    let d = f16_at(b, D);
    for (out, qs) in y.chunks_exact_mut(128).zip(b[..D].chunks_exact(32)) {
        for (plane, out) in out.chunks_exact_mut(32).enumerate() {
            for (y, &q) in out.iter_mut().zip(qs) {
                *y = (i32::from((q >> (2 * plane)) & 3) - 1) as f32 * d;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_geometry_matches_the_type_table() {
        let mut supported = 0;
        for &ty in GgmlType::ALL {
            if let Some(k) = kernel(ty) {
                supported += 1;
                assert_eq!(
                    (k.elems, k.bytes),
                    (ty.block_size(), ty.type_size()),
                    "{ty:?}"
                );
            }
        }
        assert_eq!(supported, 20);
    }

    #[test]
    fn empty_input_is_fine_for_every_supported_type() {
        for &ty in GgmlType::ALL {
            assert_eq!(
                dequantize(ty, &[], &mut []).is_ok(),
                supports_dequantize(ty),
                "{ty:?}"
            );
        }
    }

    #[test]
    fn q4_0_element_order() {
        // d = 1.0; byte j = (hi << 4) | lo with lo = j, hi = 15 - j.
        let mut block = vec![0x00, 0x3C];
        block.extend((0..16u8).map(|j| ((15 - j) << 4) | j));
        let mut out = [0.0; 32];
        dequantize(GgmlType::Q4_0, &block, &mut out).unwrap();
        for j in 0..16 {
            assert_eq!(out[j], j as f32 - 8.0);
            assert_eq!(out[j + 16], (15 - j) as f32 - 8.0);
        }
    }

    #[test]
    fn e8m0_half_scale() {
        assert_eq!(e8m0_to_f32_half(127), 0.5);
        assert_eq!(e8m0_to_f32_half(128), 1.0);
        assert_eq!(e8m0_to_f32_half(1), 2f32.powi(-127));
        assert_eq!(e8m0_to_f32_half(0), 2f32.powi(-128));
    }

    #[test]
    fn bad_sizes_are_errors() {
        let mut out = [0.0; 32];
        assert!(matches!(
            dequantize(GgmlType::Q8_0, &[0; 33], &mut out),
            Err(Error::SizeMismatch {
                expected: 34,
                found: 33,
                numel: 32,
                ..
            })
        ));
        let mut out = [0.0; 31];
        assert!(matches!(
            dequantize(GgmlType::Q8_0, &[0; 34], &mut out),
            Err(Error::SizeMismatch { .. })
        ));
        assert!(matches!(
            dequantize(GgmlType::IQ2_XXS, &[0; 66], &mut [0.0; 256]),
            Err(Error::UnsupportedConversion { .. })
        ));
    }
}
