//! Symmetric absmax blocks, ggml Q4_0's convention generalised to any width.
//!
//! Spec: `absmax:bits=B,block=K,scale=S` with `B` in 2..=8 (default 4),
//! `K ≥ 1` consecutive weights of a row per block (default 32; the last
//! block of a row is shorter when `cols` is not a multiple), `S` = `f16`
//! (default), `bf16` or `f32`.
//!
//! # Convention: ggml's Q4_0 (signed maximum)
//!
//! This follows `quantize_row_q4_0_ref` of ggml (`ggml-quants.c`), with
//! `h = 2^(B−1)` in place of Q4_0's 8. For each block, with `m` the weight
//! of largest magnitude (the first one on ties):
//!
//! ```text
//! d  = m / −h                 // f32; stored rounded to the scale type
//! id = 1/d (0 if d = 0)
//! u  = min(2^B − 1, trunc(x·id + (h + 0.5)))   // the code, 0..2^B−1
//! x̂  = (u − h) · d_stored
//! ```
//!
//! `m` itself gets code 0 and decodes to exactly `m` (up to the rounding of
//! `d`), and all `2^B` levels are used: the grid runs from `−h·d` to
//! `(h−1)·d`, one step finer than `absmax / (2^(B−1) − 1)` at the price of
//! weights of the opposite sign beyond `(h − ½)·|d|` being clamped to
//! `(h−1)·|d|`. The codes use the unrounded `d`, as ggml does. With
//! `bits=4,block=32,scale=f16` the decoded values equal ggml's Q4_0
//! dequantization of the same codes and scales (`tests/codec_props.rs`
//! repacks into Q4_0 blocks and checks it against `membound-tensor`'s
//! dequantizer); the packing here is the `u32` stream of [`crate::pack`],
//! not Q4_0's nibble order.
//!
//! Error per weight, in exact arithmetic: `≤ |d|/2` unless clamped, and
//! `≤ |d|` always; rounding `d` to the scale type adds `h·|d − d_stored|`.
//!
//! Parts: `weight` U32 `[rows, ⌈cols·B/32⌉]`, `scales` `[rows, ⌈cols/K⌉]`.

use std::borrow::Cow;

use crate::affine::ScaleDType;
use crate::pack;
use crate::{Codec, Encoded, Error, Matrix, Part, PartDType, Result, Spec};

/// The absmax codec: see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AbsmaxCodec {
    /// Bits per code, 2..=8.
    pub bits: u32,
    /// Weights per block along a row.
    pub block: usize,
    /// Storage type of the per-block scale `d`.
    pub scale: ScaleDType,
}

impl Default for AbsmaxCodec {
    fn default() -> Self {
        Self {
            bits: 4,
            block: 32,
            scale: ScaleDType::F16,
        }
    }
}

impl AbsmaxCodec {
    /// A validated codec.
    pub fn new(bits: u32, block: usize, scale: ScaleDType) -> Result<Self> {
        let c = Self { bits, block, scale };
        c.blocked().validate(&c.spec())?;
        Ok(c)
    }

    fn blocked(&self) -> Blocked {
        Blocked {
            bits: self.bits,
            min_bits: 2,
            block: self.block,
            scale: self.scale,
        }
    }

    /// Decodes into `out` (`rows · cols` values) without allocating it.
    pub fn decode_into(&self, e: &Encoded, out: &mut [f32]) -> Result<()> {
        let b = self.blocked();
        let h = (1i32 << (self.bits - 1)) as f32;
        b.decode_into(&b.view(self, e)?, out, |u, d| (f32::from(u) - h) * d)
    }

    /// Parses `absmax:...` settings out of `spec`.
    pub fn from_spec(mut spec: Spec) -> Result<Self> {
        let d = Self::default();
        let bits = spec.take("bits", d.bits)?;
        let block = spec.take("block", d.block)?;
        let scale = take_scale(&mut spec)?;
        spec.finish(&["bits", "block", "scale"])?;
        Self::new(bits, block, scale).map_err(|e| respec(e, &spec))
    }
}

impl Codec for AbsmaxCodec {
    fn spec(&self) -> String {
        format!(
            "absmax:bits={},block={},scale={}",
            self.bits, self.block, self.scale
        )
    }

    fn encode(&self, m: Matrix<'_>) -> Result<Encoded> {
        let h = (1u32 << (self.bits - 1)) as f32;
        let top = ((1u32 << self.bits) - 1) as f32;
        self.blocked().encode(&self.spec(), m, |x, codes| {
            // The first weight of largest magnitude, as ggml picks it.
            let amax = x.iter().fold(0f32, |a, &v| a.max(v.abs()));
            let m = x.iter().copied().find(|v| v.abs() == amax).unwrap_or(0.0);
            let d = m / -h;
            let id = if d == 0.0 { 0.0 } else { 1.0 / d };
            // x·id ∈ [−h, h] up to rounding, so the sum is positive and the
            // float-to-int cast truncates like ggml's (int8_t).
            if id.is_finite() {
                for (c, &v) in codes.iter_mut().zip(x) {
                    *c = (v * id + (h + 0.5)).min(top) as u8;
                }
            } else {
                // |d| below ~2.9e-39: 1/d overflows (where ggml would produce
                // garbage); dividing gives the same grid.
                for (c, &v) in codes.iter_mut().zip(x) {
                    *c = (v / d + (h + 0.5)).min(top) as u8;
                }
            }
            d
        })
    }

    fn decode(&self, e: &Encoded) -> Result<Vec<f32>> {
        let h = (1i32 << (self.bits - 1)) as f32;
        self.blocked()
            .decode(self, e, |u, d| (f32::from(u) - h) * d)
    }

    fn bits_per_weight(&self, rows: usize, cols: usize) -> f64 {
        self.blocked().bits_per_weight(rows, cols)
    }
}

/// Reads `scale=` (default f16).
pub(crate) fn take_scale(spec: &mut Spec) -> Result<ScaleDType> {
    spec.take("scale", ScaleDType::F16)
        .map_err(|_| Error::Spec {
            spec: spec.text.clone(),
            problem: "scale must be f16, bf16 or f32".into(),
        })
}

/// Reports a validation error against the spec text as given.
pub(crate) fn respec(e: Error, spec: &Spec) -> Error {
    match e {
        Error::Spec { problem, .. } => Error::Spec {
            spec: spec.text.clone(),
            problem,
        },
        e => e,
    }
}

/// The machinery shared by blockwise codecs with one scale per block of a
/// row and packed codes: `absmax` and `nf4`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Blocked {
    pub bits: u32,
    pub min_bits: u32,
    pub block: usize,
    pub scale: ScaleDType,
}

impl Blocked {
    pub fn validate(&self, spec: &str) -> Result<()> {
        let err = |problem: String| Error::Spec {
            spec: spec.into(),
            problem,
        };
        if !(self.min_bits..=pack::MAX_BITS).contains(&self.bits) {
            return Err(err(format!(
                "bits={} is not in {}..={}",
                self.bits,
                self.min_bits,
                pack::MAX_BITS
            )));
        }
        if self.block == 0 {
            return Err(err("block must be at least 1".into()));
        }
        Ok(())
    }

    /// `(words per row, blocks per row)`, or an error if the sizes overflow.
    fn layout(&self, spec: &str, rows: usize, cols: usize) -> Result<(usize, usize)> {
        let wpr = pack::words_for(cols, self.bits);
        rows.checked_mul(cols)
            .and_then(|_| rows.checked_mul(wpr))
            .and_then(|w| w.checked_mul(4))
            .ok_or_else(|| Error::Input {
                codec: spec.into(),
                problem: format!("{rows}×{cols} is too large"),
            })?;
        Ok((wpr, cols.div_ceil(self.block)))
    }

    pub fn bits_per_weight(&self, rows: usize, cols: usize) -> f64 {
        let Ok((wpr, bpr)) = self.layout("", rows, cols) else {
            return f64::NAN;
        };
        if rows == 0 || cols == 0 {
            return 0.0;
        }
        let bits = rows as f64 * (wpr as f64 * 32.0 + bpr as f64 * self.scale.bits() as f64);
        bits / (rows as f64 * cols as f64)
    }

    /// Encodes with `block_fn(values, codes) -> scale` per block; the scale
    /// is stored rounded to the scale type and must stay finite.
    pub fn encode(
        &self,
        spec: &str,
        m: Matrix<'_>,
        mut block_fn: impl FnMut(&[f32], &mut [u8]) -> f32,
    ) -> Result<Encoded> {
        self.validate(spec)?;
        crate::affine::check_shape(m, spec)?;
        m.check_finite(spec)?;
        let (wpr, bpr) = self.layout(spec, m.rows, m.cols)?;
        let mut data = vec![0u8; m.rows * wpr * 4];
        let mut words = vec![0u32; wpr];
        let mut scales = Vec::with_capacity(m.rows * bpr * self.scale.part_dtype().size());
        let mut codes = vec![0u8; m.cols];
        for r in 0..m.rows {
            for (bi, (x, c)) in m
                .row(r)
                .chunks(self.block)
                .zip(codes.chunks_mut(self.block))
                .enumerate()
            {
                let d = block_fn(x, c);
                let ds = self.scale.round(d);
                if !ds.is_finite() {
                    let c0 = bi * self.block;
                    return Err(Error::Input {
                        codec: spec.into(),
                        problem: format!(
                            "block at row {r}, columns {c0}..{}: scale {d} overflows {}",
                            c0 + x.len(),
                            self.scale
                        ),
                    });
                }
                self.scale.push(ds, &mut scales);
            }
            pack::pack_words_unchecked(&codes, self.bits, &mut words);
            pack::put_le_words(&words, &mut data[r * wpr * 4..(r + 1) * wpr * 4]);
        }
        Ok(Encoded {
            spec: spec.into(),
            rows: m.rows,
            cols: m.cols,
            parts: vec![
                Part {
                    name: "weight".into(),
                    dtype: PartDType::U32,
                    shape: vec![m.rows, wpr],
                    data,
                },
                Part {
                    name: "scales".into(),
                    dtype: self.scale.part_dtype(),
                    shape: vec![m.rows, bpr],
                    data: scales,
                },
            ],
        })
    }

    /// Checks `e` against `codec` (spec, shapes, dtypes, sizes, finite
    /// scales).
    pub fn view<'e>(&self, codec: &dyn Codec, e: &'e Encoded) -> Result<BlockedView<'e>> {
        let spec = codec.spec();
        let bad = |part: &str, problem: String| Error::Encoded {
            codec: e.spec.clone(),
            part: part.into(),
            problem,
        };
        let same = crate::codec_from_spec(&e.spec)
            .map(|c| c.spec() == spec)
            .unwrap_or(false);
        if !same {
            return Err(bad("spec", format!("made by {:?}, not by {spec}", e.spec)));
        }
        let (wpr, bpr) = self.layout(&spec, e.rows, e.cols)?;
        let check = |name: &str, dtype: PartDType, shape: [usize; 2]| -> Result<&'e Part> {
            let p = e.part(name)?;
            let bytes = shape[0] * shape[1] * dtype.size();
            if p.dtype != dtype || p.shape != shape || p.data.len() != bytes {
                return Err(bad(
                    name,
                    format!(
                        "is {:?} {:?} with {} bytes, expected {dtype:?} {shape:?} with {bytes}",
                        p.dtype,
                        p.shape,
                        p.data.len()
                    ),
                ));
            }
            Ok(p)
        };
        let w = check("weight", PartDType::U32, [e.rows, wpr])?;
        let s = check("scales", self.scale.part_dtype(), [e.rows, bpr])?;
        let scales = self.scale.read(&s.data);
        if let Some(i) = scales.iter().position(|x| !x.is_finite()) {
            return Err(bad("scales", format!("value {i} is {}", scales[i])));
        }
        Ok(BlockedView {
            rows: e.rows,
            cols: e.cols,
            wpr,
            bpr,
            words: pack::le_words(&w.data),
            scales,
        })
    }

    /// Decodes a checked view into `out` (`rows · cols` values) with
    /// `f(code, scale)`.
    pub fn decode_into(
        &self,
        v: &BlockedView<'_>,
        out: &mut [f32],
        f: impl Fn(u8, f32) -> f32,
    ) -> Result<()> {
        if out.len() != v.rows * v.cols {
            return Err(Error::Input {
                codec: "decode".into(),
                problem: format!(
                    "output holds {} values, {} needed",
                    out.len(),
                    v.rows * v.cols
                ),
            });
        }
        if v.cols == 0 {
            return Ok(());
        }
        let mut codes = vec![0u8; v.cols];
        for (r, o) in out.chunks_exact_mut(v.cols).enumerate() {
            pack::unpack_words_unchecked(
                &v.words[r * v.wpr..(r + 1) * v.wpr],
                self.bits,
                &mut codes,
            );
            let blocks = o.chunks_mut(self.block).zip(codes.chunks(self.block));
            for ((o, c), &d) in blocks.zip(&v.scales[r * v.bpr..]) {
                for (o, &c) in o.iter_mut().zip(c) {
                    *o = f(c, d);
                }
            }
        }
        Ok(())
    }

    /// Checks `e`, then decodes it into a new vector.
    pub fn decode(
        &self,
        codec: &dyn Codec,
        e: &Encoded,
        f: impl Fn(u8, f32) -> f32,
    ) -> Result<Vec<f32>> {
        let v = self.view(codec, e)?;
        let mut out = vec![0f32; e.rows * e.cols];
        self.decode_into(&v, &mut out, f)?;
        Ok(out)
    }
}

/// A checked blockwise encoding.
pub(crate) struct BlockedView<'e> {
    rows: usize,
    cols: usize,
    wpr: usize,
    bpr: usize,
    words: Cow<'e, [u32]>,
    scales: Vec<f32>,
}

/// Builds this module's codec from a parsed spec.
pub(crate) fn from_spec(spec: Spec) -> Result<Box<dyn Codec>> {
    Ok(Box::new(AbsmaxCodec::from_spec(spec)?))
}
