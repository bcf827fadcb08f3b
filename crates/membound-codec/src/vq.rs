//! Vector codebooks: k-means over groups of d consecutive weights.
//!
//! `vq:d=D,k=K` (D in {2, 4, 8}, K in 2..=65536) cuts every row into
//! ceil(cols/D) vectors of D consecutive weights (the last one zero-padded
//! when D does not divide cols), learns one codebook of K vectors for the
//! whole matrix by k-means, and stores each vector's nearest entry.
//!
//! Stored parts:
//! - `codebook`: f16 `[K, D]`;
//! - `indices`: u8 (K ≤ 256) or u16 `[rows, ceil(cols/D)]`.
//!
//! Bits per weight: `(K·D·16 + rows·ceil(cols/D)·(8 or 16)) / (rows·cols)`.
//! Indices are whole bytes, as specified, so K that is not 2^8 or 2^16
//! is charged for the unused index bits.
//!
//! Training: k-means++ seeding (D² sampling, seeded ChaCha8) on a seeded
//! sample of at most max(32768, 16·K) vectors, then Lloyd iterations until no
//! assignment changes, at most [`MAX_ITERS`] and fewer when K·sample is
//! large (a budget of about 4·10⁹ distance evaluations), then every vector is
//! assigned to its nearest entry of the f16-rounded codebook. Padding
//! dimensions take part in training as zeros but not in the final
//! assignment. Large K (beyond a few thousand) is slow: nearest-entry search
//! is brute force.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::kmeans::{
    check_encoded, expect_part, f16_part, f16_values, spec_err, u16_part, u16_values,
};
use crate::{Codec, Encoded, Error, Matrix, Part, PartDType, Result, Spec};

/// Most Lloyd iterations.
const MAX_ITERS: usize = 25;
/// Training-sample size floor.
const SAMPLE_MIN: usize = 32_768;
/// Distance evaluations the Lloyd iterations may spend (sample · K · iters).
const ITER_BUDGET: usize = 4_000_000_000;
/// Above this sample · K, seeding draws sample vectors uniformly instead of
/// k-means++.
const PLUSPLUS_BUDGET: usize = 1 << 31;
/// Vectors per parallel work item (fixed, so sums are deterministic).
const CHUNK: usize = 4096;
/// Seed of the sample and the k-means++ draws.
const SEED: u64 = 0x7671_5f63_6f64_6563;

/// Vector-quantization codec.
#[derive(Clone, Debug)]
struct Vq {
    d: usize,
    k: usize,
}

/// Builds this module's codec from a parsed spec.
pub(crate) fn from_spec(mut spec: Spec) -> Result<Box<dyn Codec>> {
    let d: usize = spec.take("d", 4)?;
    let k: usize = spec.take("k", 256)?;
    spec.finish(&["d", "k"])?;
    if ![2, 4, 8].contains(&d) {
        return Err(spec_err(&spec, format!("d={d}; accepted 2, 4, 8")));
    }
    if !(2..=65536).contains(&k) {
        return Err(spec_err(
            &spec,
            format!("k={k} is out of range; accepted 2..=65536"),
        ));
    }
    Ok(Box::new(Vq { d, k }))
}

impl Vq {
    fn index_dtype(&self) -> PartDType {
        if self.k <= 256 {
            PartDType::U8
        } else {
            PartDType::U16
        }
    }
}

impl Codec for Vq {
    fn spec(&self) -> String {
        format!("vq:d={},k={}", self.d, self.k)
    }

    fn encode(&self, m: Matrix<'_>) -> Result<Encoded> {
        let spec = self.spec();
        m.check_finite(&spec)?;
        let (d, k) = (self.d, self.k);
        let per_row = m.cols.div_ceil(d);
        // Every vector, zero-padded to d.
        let mut vectors = vec![0f32; m.rows * per_row * d];
        for r in 0..m.rows {
            let dst = &mut vectors[r * per_row * d..][..m.cols];
            dst.copy_from_slice(m.row(r));
        }
        let codebook = match d {
            2 => train::<2>(&vectors, k),
            4 => train::<4>(&vectors, k),
            _ => train::<8>(&vectors, k),
        };
        let codebook: Vec<f32> = codebook
            .iter()
            .map(|&c| half::f16::from_f32(c).to_f32())
            .collect();
        let book_part = f16_part(&spec, "codebook", vec![k, d], &codebook)?;
        // The last vector of each row has only `tail` real dimensions.
        let tail = m.cols - (per_row.saturating_sub(1)) * d;
        let indices: Vec<usize> = match d {
            2 => assign_rows::<2>(&vectors, &codebook, per_row, tail),
            4 => assign_rows::<4>(&vectors, &codebook, per_row, tail),
            _ => assign_rows::<8>(&vectors, &codebook, per_row, tail),
        };
        let shape = vec![m.rows, per_row];
        let index_part = if self.index_dtype() == PartDType::U8 {
            Part {
                name: "indices".into(),
                dtype: PartDType::U8,
                shape,
                data: indices.iter().map(|&i| i as u8).collect(),
            }
        } else {
            u16_part(
                "indices",
                shape,
                &indices.iter().map(|&i| i as u16).collect::<Vec<_>>(),
            )
        };
        Ok(Encoded {
            spec,
            rows: m.rows,
            cols: m.cols,
            parts: vec![book_part, index_part],
        })
    }

    fn decode(&self, e: &Encoded) -> Result<Vec<f32>> {
        let n = check_encoded(e, &self.spec())?;
        let (d, k) = (self.d, self.k);
        let per_row = e.cols.div_ceil(d);
        let book = f16_values(expect_part(e, "codebook", PartDType::F16, &[k, d])?);
        let part = expect_part(e, "indices", self.index_dtype(), &[e.rows, per_row])?;
        let indices: Vec<usize> = match part.dtype {
            PartDType::U8 => part.data.iter().map(|&i| usize::from(i)).collect(),
            _ => u16_values(part).into_iter().map(usize::from).collect(),
        };
        if let Some(p) = indices.iter().position(|&i| i >= k) {
            return Err(Error::Encoded {
                codec: e.spec.clone(),
                part: "indices".into(),
                problem: format!("index {} at {p} is not below k={k}", indices[p]),
            });
        }
        let mut out = Vec::with_capacity(n);
        for row in indices.chunks(per_row.max(1)).take(e.rows) {
            let start = out.len();
            for &i in row {
                out.extend_from_slice(&book[i * d..(i + 1) * d]);
            }
            out.truncate(start + e.cols);
        }
        Ok(out)
    }

    fn bits_per_weight(&self, rows: usize, cols: usize) -> f64 {
        let n = rows * cols;
        if n == 0 {
            return 0.0;
        }
        let index_bits = self.index_dtype().size() * 8;
        (self.k * self.d * 16 + rows * cols.div_ceil(self.d) * index_bits) as f64 / n as f64
    }
}

/// A k × D codebook (row-major) learned from `vectors` (n × D, row-major).
fn train<const D: usize>(vectors: &[f32], k: usize) -> Vec<f32> {
    let n = vectors.len() / D;
    let mut book = vec![0f32; k * D];
    if n == 0 {
        return book;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    let sample_len = n.min(SAMPLE_MIN.max(16 * k));
    let sample: Vec<f32> = if sample_len == n {
        vectors.to_vec()
    } else {
        // Partial Fisher–Yates: the first sample_len of a seeded shuffle,
        // taken in index order so the sample is reproducible.
        let mut idx: Vec<u32> = (0..n as u32).collect();
        for i in 0..sample_len {
            let j = rng.random_range(i..n);
            idx.swap(i, j);
        }
        let mut picked = idx[..sample_len].to_vec();
        picked.sort_unstable();
        picked
            .iter()
            .flat_map(|&i| vectors[i as usize * D..][..D].iter().copied())
            .collect()
    };
    let s = sample.len() / D;
    seed::<D>(&sample, k, &mut rng, &mut book);
    let iters = (ITER_BUDGET / (s * k).max(1)).clamp(1, MAX_ITERS);
    let mut assign = vec![usize::MAX; s];
    for _ in 0..iters {
        let next = assign_all::<D>(&sample, &book);
        if next == assign {
            break;
        }
        assign = next;
        // Centroid sums in fixed chunks, reduced in order: deterministic.
        let partial: Vec<(Vec<f64>, Vec<usize>)> = sample
            .par_chunks(CHUNK * D)
            .zip(assign.par_chunks(CHUNK))
            .map(|(v, a)| {
                let (mut sum, mut count) = (vec![0f64; k * D], vec![0usize; k]);
                for (x, &c) in v.chunks_exact(D).zip(a) {
                    count[c] += 1;
                    for t in 0..D {
                        sum[c * D + t] += f64::from(x[t]);
                    }
                }
                (sum, count)
            })
            .collect();
        let (mut sum, mut count) = (vec![0f64; k * D], vec![0usize; k]);
        for (ps, pc) in partial {
            sum.iter_mut().zip(ps).for_each(|(a, b)| *a += b);
            count.iter_mut().zip(pc).for_each(|(a, b)| *a += b);
        }
        // An empty cluster keeps its centroid.
        for c in 0..k {
            if count[c] > 0 {
                for t in 0..D {
                    book[c * D + t] = (sum[c * D + t] / count[c] as f64) as f32;
                }
            }
        }
    }
    book
}

/// Fills `book` with k seeds from `sample`: k-means++ (D² sampling) when
/// affordable, else uniformly drawn sample vectors. With fewer distinct vectors than
/// k, the extra entries repeat the first seed.
fn seed<const D: usize>(sample: &[f32], k: usize, rng: &mut ChaCha8Rng, book: &mut [f32]) {
    let s = sample.len() / D;
    let at = |i: usize| &sample[i * D..(i + 1) * D];
    let first = rng.random_range(0..s);
    book[..D].copy_from_slice(at(first));
    if s.saturating_mul(k) > PLUSPLUS_BUDGET {
        for c in 1..k {
            let i = rng.random_range(0..s);
            book[c * D..(c + 1) * D].copy_from_slice(at(i));
        }
        return;
    }
    let mut dist: Vec<f64> = (0..s)
        .map(|i| f64::from(dist2::<D>(at(i), &book[..D])))
        .collect();
    for c in 1..k {
        let total: f64 = dist.iter().sum();
        let pick = if total > 0.0 {
            let mut target = rng.random::<f64>() * total;
            let mut pick = s - 1;
            for (i, &w) in dist.iter().enumerate() {
                if target < w {
                    pick = i;
                    break;
                }
                target -= w;
            }
            pick
        } else {
            first
        };
        let centre: [f32; D] = at(pick).try_into().unwrap_or([0.0; D]);
        book[c * D..(c + 1) * D].copy_from_slice(&centre);
        dist.par_iter_mut().enumerate().for_each(|(i, dd)| {
            *dd = dd.min(f64::from(dist2::<D>(at(i), &centre)));
        });
    }
}

fn dist2<const D: usize>(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .take(D)
        .map(|(x, y)| (x - y) * (x - y))
        .sum()
}

/// Codebook split by dimension, with squared norms, for a fast scan.
struct Soa<const D: usize> {
    dims: Vec<Vec<f32>>,
    norms: Vec<f32>,
}

impl<const D: usize> Soa<D> {
    fn new(book: &[f32]) -> Self {
        let k = book.len() / D;
        let dims = (0..D)
            .map(|t| (0..k).map(|c| book[c * D + t]).collect())
            .collect();
        let norms = (0..k)
            .map(|c| book[c * D..(c + 1) * D].iter().map(|v| v * v).sum())
            .collect();
        Self { dims, norms }
    }

    /// Nearest entry to `x` by ‖c‖² − 2x·c (the ranking of ‖x − c‖²); ties
    /// go to the lower index. `scores` is scratch of length k.
    fn nearest(&self, x: &[f32], scores: &mut [f32]) -> usize {
        scores.copy_from_slice(&self.norms);
        for (t, dim) in self.dims.iter().enumerate() {
            let m = -2.0 * x[t];
            for (s, &c) in scores.iter_mut().zip(dim) {
                *s += m * c;
            }
        }
        first_min(scores)
    }
}

/// Index of the first smallest value. Lane-wise minima over blocks of
/// `LANES` (16) vectorise, unlike a running (value, index) pair; the second
/// pass only looks for the first position holding the minimum.
fn first_min(scores: &[f32]) -> usize {
    const LANES: usize = 16;
    let mut acc = [f32::INFINITY; LANES];
    let blocks = scores.chunks_exact(LANES);
    let rest = blocks.remainder();
    for block in blocks {
        for (a, &s) in acc.iter_mut().zip(block) {
            *a = if s < *a { s } else { *a };
        }
    }
    let min = acc
        .iter()
        .chain(rest)
        .fold(f32::INFINITY, |a, &s| if s < a { s } else { a });
    scores.iter().position(|&s| s == min).unwrap_or(0)
}

/// Nearest codebook entry of every vector.
fn assign_all<const D: usize>(vectors: &[f32], book: &[f32]) -> Vec<usize> {
    let soa = Soa::<D>::new(book);
    let k = book.len() / D;
    vectors
        .par_chunks(CHUNK * D)
        .flat_map_iter(|chunk| {
            let mut scores = vec![0f32; k];
            chunk
                .chunks_exact(D)
                .map(|x| soa.nearest(x, &mut scores))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Nearest entries of all vectors, measuring each row's last vector only on
/// its `tail` real dimensions.
fn assign_rows<const D: usize>(
    vectors: &[f32],
    book: &[f32],
    per_row: usize,
    tail: usize,
) -> Vec<usize> {
    let mut out = assign_all::<D>(vectors, book);
    if tail < D && per_row > 0 {
        let k = book.len() / D;
        for (r, idx) in out.chunks_mut(per_row).enumerate() {
            let x = &vectors[(r * per_row + per_row - 1) * D..][..tail];
            let best = (0..k)
                .map(|c| dist2::<D>(x, &book[c * D..c * D + tail]))
                .enumerate()
                .fold(
                    (f32::INFINITY, 0),
                    |b, (i, v)| if v < b.0 { (v, i) } else { b },
                );
            idx[per_row - 1] = best.1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_min_matches_a_scan() {
        for len in [1usize, 5, 16, 17, 100, 256] {
            let v: Vec<f32> = (0..len)
                .map(|i| ((i * 7919) % 97) as f32 - ((i % 3) as f32) * 0.5)
                .collect();
            let mut want = 0;
            for (i, &s) in v.iter().enumerate() {
                if s < v[want] {
                    want = i;
                }
            }
            assert_eq!(first_min(&v), want, "len {len}");
        }
    }
}
