//! Lloyd-Max / k-means scalar codebooks, per tensor or per row.
//!
//! `kmeans:bits=B,scope=row|tensor` (B in 1..=8; the study uses 2–4) fits
//! 2^B reconstruction levels by one-dimensional Lloyd iterations (Lloyd 1957,
//! Max 1960) to every row (`scope=row`) or to the whole matrix
//! (`scope=tensor`), and codes each weight to its nearest level.
//!
//! Stored parts:
//! - `codebook`: f16, `[groups, 2^B]`, levels ascending (groups = rows or 1);
//! - `codes`: u32, `[rows, ceil(cols·B/32)]`, each row an LSB-first bit
//!   stream of B-bit codes padded to whole words ([`crate::pack`], MLX's
//!   layout).
//!
//! Bits per weight: `(groups·2^B·16 + rows·ceil(cols·B/32)·32) / (rows·cols)`.
//!
//! The one-dimensional solver works on sorted values with prefix sums: it
//! starts from the optimal partition of at most 4096 equal-count groups of
//! the sorted values (dynamic programming; exact for rows up to 4096 values),
//! then runs Lloyd iterations on all values, each O(k log n). It needs no
//! random numbers and is deterministic (see [`lloyd_1d`]).
//!
//! This module also holds the part helpers that the other codebook,
//! polynomial and factor codecs share.

use half::f16;
use rayon::prelude::*;

use crate::{Codec, Encoded, Error, Matrix, Part, PartDType, Result, Spec};

/// Most Lloyd iterations between two splits of the 1-D solver.
const LLOYD_ITERS: usize = 400;
/// Relative centroid movement (of the data range) below which Lloyd stops.
const LLOYD_TOL: f64 = 1e-9;

/// Whether levels are fitted per row or once for the whole matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scope {
    Row,
    Tensor,
}

/// Scalar k-means (Lloyd-Max) codebook codec.
#[derive(Clone, Debug)]
struct KMeans {
    bits: u32,
    scope: Scope,
}

/// Builds this module's codec from a parsed spec.
pub(crate) fn from_spec(mut spec: Spec) -> Result<Box<dyn Codec>> {
    let bits: u32 = spec.take("bits", 4)?;
    let scope: String = spec.take("scope", "row".to_string())?;
    spec.finish(&["bits", "scope"])?;
    if !(1..=8).contains(&bits) {
        return Err(spec_err(
            &spec,
            format!("bits={bits} is out of range; accepted 1..=8"),
        ));
    }
    let scope = match scope.to_ascii_lowercase().as_str() {
        "row" => Scope::Row,
        "tensor" => Scope::Tensor,
        other => {
            return Err(spec_err(
                &spec,
                format!("scope={other:?}; accepted row, tensor"),
            ));
        }
    };
    Ok(Box::new(KMeans { bits, scope }))
}

impl KMeans {
    fn levels(&self) -> usize {
        1 << self.bits
    }

    fn groups(&self, rows: usize) -> usize {
        match self.scope {
            Scope::Row => rows,
            Scope::Tensor => 1,
        }
    }
}

impl Codec for KMeans {
    fn spec(&self) -> String {
        let scope = match self.scope {
            Scope::Row => "row",
            Scope::Tensor => "tensor",
        };
        format!("kmeans:bits={},scope={scope}", self.bits)
    }

    fn encode(&self, m: Matrix<'_>) -> Result<Encoded> {
        let spec = self.spec();
        m.check_finite(&spec)?;
        let k = self.levels();
        let books: Vec<Vec<f32>> = match self.scope {
            Scope::Tensor => {
                let mut sorted = m.data.to_vec();
                sorted.par_sort_unstable_by(f32::total_cmp);
                vec![lloyd_1d(&sorted, k)]
            }
            Scope::Row => (0..m.rows)
                .into_par_iter()
                .map(|r| {
                    let mut sorted = m.row(r).to_vec();
                    sorted.sort_unstable_by(f32::total_cmp);
                    lloyd_1d(&sorted, k)
                })
                .collect(),
        };
        // Levels are rounded to f16 before coding, so codes are nearest for
        // the stored codebook; rounding is monotone, so it stays sorted.
        let mut codebook = Vec::with_capacity(books.len() * k);
        for b in &books {
            codebook.extend(pad_levels(b, k).iter().map(|&c| f16::from_f32(c).to_f32()));
        }
        let codebook_part = f16_part(&spec, "codebook", vec![books.len(), k], &codebook)?;
        let codes: Vec<u8> = (0..m.rows)
            .into_par_iter()
            .flat_map_iter(|r| {
                let g = if self.scope == Scope::Row { r } else { 0 };
                let levels = &codebook[g * k..(g + 1) * k];
                m.row(r)
                    .iter()
                    .map(move |&w| nearest_sorted(levels, w) as u8)
            })
            .collect();
        let codes_part = pack_codes("codes", &codes, m.rows, m.cols, self.bits)?;
        Ok(Encoded {
            spec,
            rows: m.rows,
            cols: m.cols,
            parts: vec![codebook_part, codes_part],
        })
    }

    fn decode(&self, e: &Encoded) -> Result<Vec<f32>> {
        let n = check_encoded(e, &self.spec())?;
        let k = self.levels();
        let book = expect_part(e, "codebook", PartDType::F16, &[self.groups(e.rows), k])?;
        let book = f16_values(book);
        let codes = unpack_codes(e, "codes", e.rows, e.cols, self.bits)?;
        let mut out = Vec::with_capacity(n);
        for (r, row) in codes.chunks(e.cols.max(1)).enumerate().take(e.rows) {
            let g = if self.scope == Scope::Row { r } else { 0 };
            out.extend(row.iter().map(|&c| book[g * k + c as usize]));
        }
        Ok(out)
    }

    fn bits_per_weight(&self, rows: usize, cols: usize) -> f64 {
        let n = rows * cols;
        if n == 0 {
            return 0.0;
        }
        let book = self.groups(rows) * self.levels() * 16;
        let codes = rows * packed_words(cols, self.bits) * 32;
        (book + codes) as f64 / n as f64
    }
}

/// Pads sorted levels to `k` entries by repeating the last (0 when empty),
/// keeping them sorted so nearest-level search stays a binary search.
fn pad_levels(levels: &[f32], k: usize) -> Vec<f32> {
    let mut out = levels.to_vec();
    let last = out.last().copied().unwrap_or(0.0);
    out.resize(k, last);
    out
}

/// Index of the level nearest to `w` among ascending `levels`; ties go to
/// the lower index.
pub(crate) fn nearest_sorted(levels: &[f32], w: f32) -> usize {
    let i = levels.partition_point(|&l| l < w);
    if i == 0 {
        0
    } else if i == levels.len() {
        levels.len() - 1
    } else if (w - levels[i - 1]) <= (levels[i] - w) {
        i - 1
    } else {
        i
    }
}

/// MSE-optimal (Lloyd-Max) levels for ascending finite `sorted` values:
/// at most `k` strictly increasing centroids, fewer only when the data has
/// fewer distinct values (then those values, exactly).
///
/// Lloyd iterations alone stall in poor local optima on short rows (576
/// Gaussian values, 16 levels: 19.7 dB from a quantile start, 21.1 dB at the
/// optimum), so they start from the optimal contiguous partition of the data
/// cut into at most [`DP_POINTS`] equal-count groups, found by dynamic
/// programming (see [`optimal_partition`]). Up to that many values (every
/// matrix row of the study) the start is the exact global optimum and Lloyd
/// only confirms it; beyond, Lloyd refines it on all values. When clusters
/// collapse (heavy duplicates), the cluster with the largest squared error is
/// split at its mean and Lloyd runs again, so all `k` levels get used.
pub(crate) fn lloyd_1d(sorted: &[f32], k: usize) -> Vec<f32> {
    let n = sorted.len();
    if n == 0 || k == 0 {
        return Vec::new();
    }
    let mut distinct: Vec<f32> = Vec::with_capacity(k + 1);
    for &v in sorted {
        if distinct.last() != Some(&v) {
            distinct.push(v);
            if distinct.len() > k {
                break;
            }
        }
    }
    if distinct.len() <= k {
        return distinct;
    }
    // Prefix sums of the values less their mean, which keeps the squared
    // error differences below free of cancellation.
    let shift = sorted.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
    let (mut s1, mut s2) = (Vec::with_capacity(n + 1), Vec::with_capacity(n + 1));
    let (mut a, mut b) = (0f64, 0f64);
    s1.push(0.0);
    s2.push(0.0);
    for &v in sorted {
        let v = f64::from(v) - shift;
        a += v;
        b += v * v;
        s1.push(a);
        s2.push(b);
    }
    let sums = Sums { s1: &s1, s2: &s2 };
    let range = f64::from(sorted[n - 1]) - f64::from(sorted[0]);
    let tol = range * LLOYD_TOL;

    let cuts: Vec<usize> = if n <= DP_POINTS {
        (0..=n).collect()
    } else {
        (0..=DP_POINTS).map(|g| g * n / DP_POINTS).collect()
    };
    let bounds = optimal_partition(&sums, &cuts, k);
    let mut c: Vec<f64> = bounds.windows(2).map(|w| sums.mean(w[0], w[1])).collect();
    c.dedup();
    // Boundaries: cluster i holds sorted[bounds[i]..bounds[i + 1]].
    let bounds_of = |c: &[f64]| -> Vec<usize> {
        let mut b = Vec::with_capacity(c.len() + 1);
        b.push(0);
        for w in c.windows(2) {
            let mid = 0.5 * (w[0] + w[1]) + shift;
            b.push(sorted.partition_point(|&v| f64::from(v) < mid));
        }
        b.push(n);
        b
    };
    for _split in 0..=k {
        for _ in 0..LLOYD_ITERS {
            let b = bounds_of(&c);
            let mut next = Vec::with_capacity(c.len());
            let mut moved = 0f64;
            for i in 0..c.len() {
                if b[i + 1] > b[i] {
                    let m = sums.mean(b[i], b[i + 1]);
                    moved = moved.max((m - c[i]).abs());
                    next.push(m);
                } else {
                    moved = f64::INFINITY;
                }
            }
            c = next;
            if moved <= tol {
                break;
            }
        }
        if c.len() >= k {
            break;
        }
        // Split the worst cluster that still holds two distinct values.
        let b = bounds_of(&c);
        let worst = (0..c.len())
            .filter(|&i| b[i + 1] > b[i] && sorted[b[i]] != sorted[b[i + 1] - 1])
            .max_by(|&i, &j| {
                sums.sse(b[i], b[i + 1])
                    .total_cmp(&sums.sse(b[j], b[j + 1]))
            });
        let Some(i) = worst else { break };
        let (lo, hi) = (b[i], b[i + 1]);
        let m = sums.mean(lo, hi) + shift;
        let cut = lo
            + sorted[lo..hi]
                .partition_point(|&v| f64::from(v) < m)
                .clamp(1, hi - lo - 1);
        c.splice(i..=i, [sums.mean(lo, cut), sums.mean(cut, hi)]);
    }
    c.into_iter().map(|v| (v + shift) as f32).collect()
}

/// Most points the dynamic program partitions exactly.
pub(crate) const DP_POINTS: usize = 4096;

/// Prefix sums of (shifted) sorted values and of their squares.
struct Sums<'a> {
    s1: &'a [f64],
    s2: &'a [f64],
}

impl Sums<'_> {
    /// Mean of values `lo..hi` (non-empty).
    fn mean(&self, lo: usize, hi: usize) -> f64 {
        (self.s1[hi] - self.s1[lo]) / (hi - lo) as f64
    }

    /// Squared error of values `lo..hi` about their mean (0 when empty).
    fn sse(&self, lo: usize, hi: usize) -> f64 {
        if hi <= lo {
            return 0.0;
        }
        let s = self.s1[hi] - self.s1[lo];
        ((self.s2[hi] - self.s2[lo]) - s * s / (hi - lo) as f64).max(0.0)
    }
}

/// The partition of the sorted values into at most `k` contiguous clusters
/// with least total squared error, among those whose boundaries lie on
/// `cuts` (ascending, from 0 to n). Returns the chosen boundaries, 0 first
/// and n last.
///
/// Dynamic programming over clusters, `best[l][j]` = least error of the
/// values before `cuts[j]` in l clusters. For squared error on sorted data
/// the best last boundary is non-decreasing in j (the cost is Monge), so each
/// layer is filled by divide and conquer in O(m log m) for m cuts, O(k·m log m)
/// in all.
fn optimal_partition(sums: &Sums<'_>, cuts: &[usize], k: usize) -> Vec<usize> {
    let m = cuts.len() - 1;
    let k = k.min(m).max(1);
    // Prefix sums gathered at the cuts, so the inner loop reads contiguous
    // slices and vectorises.
    let c1: Vec<f64> = cuts.iter().map(|&c| sums.s1[c]).collect();
    let c2: Vec<f64> = cuts.iter().map(|&c| sums.s2[c]).collect();
    let cn: Vec<f64> = cuts.iter().map(|&c| c as f64).collect();
    let mut prev: Vec<f64> = (0..=m).map(|j| sums.sse(0, cuts[j])).collect();
    let mut choice: Vec<Vec<usize>> = Vec::with_capacity(k);
    choice.push(vec![0; m + 1]);
    for l in 1..k {
        let mut cur = vec![f64::INFINITY; m + 1];
        let mut arg = vec![0usize; m + 1];
        // Work list of (j range, allowed split range), filled by bisection.
        let mut stack = vec![(l + 1, m, l, m - 1)];
        while let Some((jlo, jhi, ilo, ihi)) = stack.pop() {
            if jlo > jhi {
                continue;
            }
            let j = (jlo + jhi) / 2;
            let hi = ihi.min(j - 1);
            let (a1, a2, an) = (c1[j], c2[j], cn[j]);
            let (mut best, mut at) = (f64::INFINITY, ilo);
            for i in ilo..=hi {
                let d = a1 - c1[i];
                let v = prev[i] + ((a2 - c2[i]) - d * d / (an - cn[i]));
                if v < best {
                    best = v;
                    at = i;
                }
            }
            cur[j] = best;
            arg[j] = at;
            if j > jlo {
                stack.push((jlo, j - 1, ilo, at));
            }
            stack.push((j + 1, jhi, at, ihi));
        }
        prev = cur;
        choice.push(arg);
    }
    let mut bounds = vec![cuts[m]];
    let mut j = m;
    for l in (1..k).rev() {
        j = choice[l][j];
        bounds.push(cuts[j]);
    }
    bounds.push(0);
    bounds.reverse();
    bounds
}

// ---------------------------------------------------------------------------
// Part helpers shared by this crate's codebook, polynomial and factor codecs.
// ---------------------------------------------------------------------------

/// A spec error for `spec` with `problem`.
pub(crate) fn spec_err(spec: &Spec, problem: String) -> Error {
    Error::Spec {
        spec: spec.text.clone(),
        problem,
    }
}

/// An f16 part; fails if a value overflows f16 (|v| > 65504 after rounding).
pub(crate) fn f16_part(codec: &str, name: &str, shape: Vec<usize>, values: &[f32]) -> Result<Part> {
    let mut data = Vec::with_capacity(values.len() * 2);
    for (i, &v) in values.iter().enumerate() {
        let h = f16::from_f32(v);
        if !h.is_finite() {
            return Err(Error::Input {
                codec: codec.into(),
                problem: format!("{name}[{i}] = {v} does not fit in f16; rescale the weights"),
            });
        }
        data.extend_from_slice(&h.to_le_bytes());
    }
    Ok(Part {
        name: name.into(),
        dtype: PartDType::F16,
        shape,
        data,
    })
}

/// An f32 part.
pub(crate) fn f32_part(name: &str, shape: Vec<usize>, values: &[f32]) -> Part {
    let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    Part {
        name: name.into(),
        dtype: PartDType::F32,
        shape,
        data,
    }
}

/// A u16 part.
pub(crate) fn u16_part(name: &str, shape: Vec<usize>, values: &[u16]) -> Part {
    let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    Part {
        name: name.into(),
        dtype: PartDType::U16,
        shape,
        data,
    }
}

/// Values of an f16 part (already validated by [`expect_part`]).
pub(crate) fn f16_values(p: &Part) -> Vec<f32> {
    p.data
        .chunks_exact(2)
        .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect()
}

/// Values of an f32 part (already validated by [`expect_part`]).
pub(crate) fn f32_values(p: &Part) -> Vec<f32> {
    p.data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Values of a u16 part (already validated by [`expect_part`]).
pub(crate) fn u16_values(p: &Part) -> Vec<u16> {
    p.data
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// Decoders refuse to allocate more values than this from claimed shapes.
const MAX_DECODED: usize = 1 << 32;

/// Checks that `e` was made by the codec whose canonical spec is `spec`
/// (any spelling of the same spec is accepted) and returns `rows * cols`.
pub(crate) fn check_encoded(e: &Encoded, spec: &str) -> Result<usize> {
    let bad = |part: &str, problem: String| Error::Encoded {
        codec: e.spec.clone(),
        part: part.into(),
        problem,
    };
    let canonical = crate::codec_from_spec(&e.spec)
        .map(|c| c.spec())
        .unwrap_or_else(|_| e.spec.clone());
    if canonical != spec {
        return Err(bad(
            "spec",
            format!("made by {canonical:?}, decoded with {spec:?}"),
        ));
    }
    match e.rows.checked_mul(e.cols) {
        Some(n) if n <= MAX_DECODED => Ok(n),
        _ => Err(bad(
            "shape",
            format!("{}×{} is too large to decode", e.rows, e.cols),
        )),
    }
}

/// The part `name` of `e`, checked to have `dtype`, `shape` and the matching
/// number of bytes.
pub(crate) fn expect_part<'a>(
    e: &'a Encoded,
    name: &str,
    dtype: PartDType,
    shape: &[usize],
) -> Result<&'a Part> {
    let p = e.part(name)?;
    let bad = |problem: String| Error::Encoded {
        codec: e.spec.clone(),
        part: name.into(),
        problem,
    };
    if p.dtype != dtype {
        return Err(bad(format!("dtype {:?}, expected {dtype:?}", p.dtype)));
    }
    if p.shape != shape {
        return Err(bad(format!("shape {:?}, expected {shape:?}", p.shape)));
    }
    let bytes = shape
        .iter()
        .try_fold(dtype.size(), |a, &d| a.checked_mul(d));
    if bytes != Some(p.data.len()) {
        return Err(bad(format!(
            "{} bytes do not match shape {shape:?} of {dtype:?}",
            p.data.len()
        )));
    }
    Ok(p)
}

/// u32 words that hold one row of `cols` codes of `bits` bits.
pub(crate) fn packed_words(cols: usize, bits: u32) -> usize {
    crate::pack::words_for(cols, bits)
}

/// Packs `rows × cols` codes (each < 2^bits) with [`crate::pack`], each row
/// starting on a word boundary (MLX's layout), into a u32 part of shape
/// `[rows, packed_words(cols, bits)]`.
pub(crate) fn pack_codes(
    name: &str,
    codes: &[u8],
    rows: usize,
    cols: usize,
    bits: u32,
) -> Result<Part> {
    let words = packed_words(cols, bits);
    let mut out = vec![0u32; rows * words];
    if words > 0 {
        for (row, dst) in codes.chunks(cols).zip(out.chunks_mut(words)) {
            crate::pack::pack_words(row, bits, dst)?;
        }
    }
    let data = out.iter().flat_map(|w| w.to_le_bytes()).collect();
    Ok(Part {
        name: name.into(),
        dtype: PartDType::U32,
        shape: vec![rows, words],
        data,
    })
}

/// Unpacks the u32 part `name` of `e` made by [`pack_codes`] into
/// `rows * cols` codes, validating its shape.
pub(crate) fn unpack_codes(
    e: &Encoded,
    name: &str,
    rows: usize,
    cols: usize,
    bits: u32,
) -> Result<Vec<u8>> {
    let words = packed_words(cols, bits);
    let p = expect_part(e, name, PartDType::U32, &[rows, words])?;
    let w: Vec<u32> = p
        .data
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let mut out = vec![0u8; rows * cols];
    if words > 0 {
        for (src, dst) in w.chunks(words).zip(out.chunks_mut(cols)) {
            crate::pack::unpack_words(src, bits, dst)?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_round_trips_every_width() {
        for bits in 1..=8u32 {
            let (rows, cols) = (3, 37);
            let codes: Vec<u8> = (0..rows * cols)
                .map(|i| ((i * 7 + 3) % (1 << bits)) as u8)
                .collect();
            let p = pack_codes("codes", &codes, rows, cols, bits).unwrap();
            let e = Encoded {
                spec: "x".into(),
                rows,
                cols,
                parts: vec![p],
            };
            assert_eq!(
                unpack_codes(&e, "codes", rows, cols, bits).unwrap(),
                codes,
                "bits={bits}"
            );
        }
    }

    #[test]
    fn lloyd_handles_duplicates_and_few_values() {
        assert_eq!(lloyd_1d(&[], 4), Vec::<f32>::new());
        assert_eq!(lloyd_1d(&[1.0, 1.0, 2.0], 4), vec![1.0, 2.0]);
        // 90 % zeros: all four levels still get used.
        let mut v: Vec<f32> = (0..100)
            .map(|i| if i < 90 { 0.0 } else { i as f32 })
            .collect();
        v.sort_by(f32::total_cmp);
        let c = lloyd_1d(&v, 4);
        assert_eq!(c.len(), 4);
        assert!(c.windows(2).all(|w| w[0] < w[1]), "{c:?}");
    }

    /// Squared error of coding `sorted` to its nearest of `levels`.
    fn sse_of(sorted: &[f32], levels: &[f32]) -> f64 {
        sorted
            .iter()
            .map(|&v| f64::from(v - levels[nearest_sorted(levels, v)]).powi(2))
            .sum()
    }

    /// Least squared error over every partition into `k` contiguous runs,
    /// by exhaustive search: the specification of the dynamic program.
    fn brute_force(sorted: &[f32], k: usize) -> f64 {
        fn go(v: &[f32], k: usize) -> f64 {
            let sse = |s: &[f32]| {
                let m = s.iter().map(|&x| f64::from(x)).sum::<f64>() / s.len() as f64;
                s.iter().map(|&x| (f64::from(x) - m).powi(2)).sum::<f64>()
            };
            if k == 1 {
                return sse(v);
            }
            (1..=v.len() - (k - 1))
                .map(|cut| sse(&v[..cut]) + go(&v[cut..], k - 1))
                .fold(f64::INFINITY, f64::min)
        }
        go(sorted, k)
    }

    #[test]
    fn solver_reaches_the_exhaustive_optimum() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for case in 0..200 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = 5 + (x % 9) as usize;
            let k = 2 + (x / 16 % 3) as usize;
            let mut v: Vec<f32> = (0..n)
                .map(|i| {
                    let h = x.wrapping_mul(i as u64 * 2 + 1).rotate_left(29);
                    ((h >> 40) as f32 / 16_777_216.0).powi(1 + (case % 3))
                })
                .collect();
            v.sort_by(f32::total_cmp);
            let got = sse_of(&v, &lloyd_1d(&v, k));
            let want = brute_force(&v, k);
            // Levels are returned in f32, hence the relative slack.
            assert!(
                got <= want * (1.0 + 1e-6) + 1e-12,
                "case {case} {v:?} k={k}: {got} vs optimum {want}"
            );
        }
    }

    #[test]
    fn nearest_breaks_ties_low() {
        let l = [0.0, 1.0, 1.0, 3.0];
        assert_eq!(nearest_sorted(&l, -5.0), 0);
        assert_eq!(nearest_sorted(&l, 0.5), 0);
        assert_eq!(nearest_sorted(&l, 0.9), 1);
        assert_eq!(nearest_sorted(&l, 2.5), 3);
        assert_eq!(nearest_sorted(&l, 9.0), 3);
    }
}
