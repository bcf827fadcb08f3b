//! Asymmetric min/max affine quantization, bit-compatible with MLX.
//!
//! Spec: `affine:bits=B,group=G,scale=S` with `B` in 2, 3, 4, 5, 6, 8;
//! `G` = 32, 64 or 128 consecutive weights of a row, `row` (one group per
//! row) or `tensor` (one group for the whole matrix); `S` = `f16`, `bf16`
//! or `f32`, the storage type of scales and biases. Defaults: `bits=4`,
//! `group=64`, `scale=f16`.
//!
//! # What MLX does (established against MLX 0.32.4, `mx.quantize`)
//!
//! For a group `w` and `n = 2^bits − 1`, everything in f32 arithmetic:
//!
//! ```text
//! s0    = max((max(w) − min(w)) / n, 1e-7)
//! edge  = min(w) if |min(w)| > |max(w)| else max(w)   // larger magnitude; ties → max
//! s     = +s0 if edge is min(w) else −s0              // codes grow away from edge
//! q0    = round(edge / s)
//! scale = edge / q0, bias = edge       if q0 ≠ 0
//! scale = s,         bias = 0          if q0 = 0      // only for near-zero groups
//! code  = clamp(round((w − bias) / scale), 0, n)      // a true division
//! ŵ     = code · scale + bias                         // mul then add, no FMA
//! ```
//!
//! `round` is round-half-to-even everywhere. The trick: the
//! larger-magnitude extreme is stored as the bias, so it is code 0 and
//! decodes exactly, and the scale is nudged from `s0` to `edge / q0` so that
//! zero falls on the grid too (at code `−q0`, up to the rounding of the
//! scale). The price is that weights near the other extreme can round past
//! `n` and be clamped (see the error bound below).
//!
//! Scales, biases and codes come from the f32 formula above whatever the
//! input type. For f16 and bf16 input, MLX computes in f32 on the (exactly
//! widened) input values, computes the codes with the *unrounded* f32 scale
//! and bias, then stores scale and bias rounded to the input's type
//! (`scales.dtype == w.dtype`). `mx.dequantize` then works in the scale's
//! type: for f16, `ŵ = f16(f16(code · scale) + bias)`.
//!
//! Packing is the LSB-first `u32` stream of [`crate::pack`] for every bit
//! width, rows starting on a word boundary.
//!
//! MLX's 1-bit mode uses another formula (`scale = max − min`,
//! `bias = min`), so `bits=1` is not offered here.
//!
//! # What `scale=` means here
//!
//! * `scale=f32`: [`Codec::encode`] equals `mx.quantize(w, G, B)` of the
//!   f32 matrix (codes, scales, biases bit for bit) and [`Codec::decode`]
//!   equals `mx.dequantize` of it.
//! * `scale=f16` (`bf16`): the f32 input is first rounded to f16 (bf16),
//!   nearest-even; then codes, scales and biases equal
//!   `mx.quantize(mx.array(w).astype(mx.float16), G, B)` bit for bit.
//!   [`Codec::decode`] computes in f32 from the stored values, i.e. it
//!   equals `mx.dequantize(wq, scales.astype(mx.float32),
//!   biases.astype(mx.float32), G, B)`, which is what an f32 GPU kernel
//!   computes; [`AffineCodec::decode_mlx`] instead equals `mx.dequantize`
//!   in the scale's own type (widened to f32). Inputs beyond the type's
//!   range (|w| > 65504 for f16) are an [`Error::Input`].
//!
//! # Extensions beyond MLX
//!
//! MLX needs `cols` to be a multiple of the group. Here:
//!
//! * `group=row` and `group=tensor` apply the same formula to a whole row or
//!   the whole matrix;
//! * when `cols` is not a multiple of the group size the last group of each
//!   row is shorter (`cols % G` weights), with its own scale and bias;
//! * each row's codes start on a word boundary: `⌈cols · B / 32⌉` words per
//!   row, the padding bits zero (MLX never needs padding: its `cols` is a
//!   multiple of 32);
//! * groups whose range overflows f32 (`max − min = ∞`, where MLX returns an
//!   infinite scale and NaN weights) or whose decoded extremes would not be
//!   finite are an [`Error::Input`] naming the group.
//!
//! # Parts
//!
//! `weight`: U32 `[rows, ⌈cols·B/32⌉]`; `scales` and `biases`: the scale
//! type, `[rows, ⌈cols/G⌉]` (`[rows, 1]` for `row`, `[1, 1]` for `tensor`;
//! no groups for an empty matrix).
//!
//! # Error bound
//!
//! In exact arithmetic, with `s = |scale|` of the group and
//! `r = max − min`, every weight whose code is not clamped is within `s/2`;
//! a clamped one (near the extreme opposite `edge`) is within `r − n·s`.
//! That is at most one step: with `t = |edge|/s0 ≥ n/2` (as
//! `|edge| ≥ r/2` and `s0 = r/n`) and `|q0| ≤ t + ½`, `s ≥ s0·t/(t + ½)`,
//! so `r − n·s ≤ r/(2t + 1) ≤ s · n/(2t) ≤ s`. `tests/codec_props.rs`
//! checks `max(s/2, r − n·s)` per weight, with f32 and scale-type rounding
//! terms added, and the one-step corollary.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::pack;
use crate::{Codec, Encoded, Error, Matrix, Part, PartDType, Result, Spec};

/// The bit widths `affine` accepts.
pub const AFFINE_BITS: &[u32] = &[2, 3, 4, 5, 6, 8];

/// The group sizes MLX accepts, and so `group=` numbers accepted here.
pub const AFFINE_GROUP_SIZES: &[usize] = &[32, 64, 128];

/// MLX's floor on the unadjusted scale, `1e-7` as f32.
pub const MLX_SCALE_EPS: f32 = 1e-7;

/// Which weights share one scale and bias.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Group {
    /// Runs of this many consecutive weights of a row (32, 64 or 128); the
    /// last run of a row is shorter when `cols` is not a multiple.
    Size(usize),
    /// One group per row.
    Row,
    /// One group for the whole matrix.
    Tensor,
}

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Group::Size(g) => write!(f, "{g}"),
            Group::Row => f.write_str("row"),
            Group::Tensor => f.write_str("tensor"),
        }
    }
}

impl FromStr for Group {
    type Err = ();
    fn from_str(s: &str) -> std::result::Result<Self, ()> {
        match s.to_ascii_lowercase().as_str() {
            "row" => Ok(Group::Row),
            "tensor" => Ok(Group::Tensor),
            n => n.parse().map(Group::Size).map_err(|_| ()),
        }
    }
}

/// Storage type of scales (and biases).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScaleDType {
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// IEEE single.
    F32,
}

impl ScaleDType {
    /// The spec name: `f16`, `bf16` or `f32`.
    pub fn name(self) -> &'static str {
        match self {
            ScaleDType::F16 => "f16",
            ScaleDType::BF16 => "bf16",
            ScaleDType::F32 => "f32",
        }
    }

    /// The part type scales are stored as.
    pub fn part_dtype(self) -> PartDType {
        match self {
            ScaleDType::F16 => PartDType::F16,
            ScaleDType::BF16 => PartDType::BF16,
            ScaleDType::F32 => PartDType::F32,
        }
    }

    /// Bits per stored value.
    pub fn bits(self) -> usize {
        self.part_dtype().size() * 8
    }

    /// `x` rounded to this type (nearest, ties to even) and widened back.
    pub fn round(self, x: f32) -> f32 {
        match self {
            ScaleDType::F16 => f16::from_f32(x).to_f32(),
            ScaleDType::BF16 => round_bf16(x),
            ScaleDType::F32 => x,
        }
    }

    /// Rounds `src` into `dst` (equal lengths) as [`Self::round`] does.
    pub(crate) fn round_slice(self, src: &[f32], dst: &mut [f32]) {
        match self {
            ScaleDType::F16 => {
                let mut h = [f16::ZERO; 256];
                for (s, d) in src.chunks(256).zip(dst.chunks_mut(256)) {
                    let h = &mut h[..s.len()];
                    h.convert_from_f32_slice(s);
                    h.convert_to_f32_slice(d);
                }
            }
            ScaleDType::BF16 => {
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d = round_bf16(s);
                }
            }
            ScaleDType::F32 => dst.copy_from_slice(src),
        }
    }

    /// Appends `x` (already representable) as little-endian bytes.
    pub(crate) fn push(self, x: f32, out: &mut Vec<u8>) {
        match self {
            ScaleDType::F16 => out.extend_from_slice(&f16::from_f32(x).to_le_bytes()),
            ScaleDType::BF16 => out.extend_from_slice(&half::bf16::from_f32(x).to_le_bytes()),
            ScaleDType::F32 => out.extend_from_slice(&x.to_le_bytes()),
        }
    }

    /// Reads little-endian values of this type, widened to f32.
    pub fn read(self, bytes: &[u8]) -> Vec<f32> {
        match self {
            ScaleDType::F16 => bytes
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            ScaleDType::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            ScaleDType::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        }
    }
}

impl fmt::Display for ScaleDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ScaleDType {
    type Err = ();
    fn from_str(s: &str) -> std::result::Result<Self, ()> {
        match s.to_ascii_lowercase().as_str() {
            "f16" => Ok(ScaleDType::F16),
            "bf16" => Ok(ScaleDType::BF16),
            "f32" => Ok(ScaleDType::F32),
            _ => Err(()),
        }
    }
}

/// Nearest-even rounding to bfloat16 (overflow gives ∞, NaN stays NaN).
fn round_bf16(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    let b = x.to_bits();
    f32::from_bits(b.wrapping_add(0x7fff + ((b >> 16) & 1)) & 0xffff_0000)
}

/// MLX's scale and bias for a group whose extremes are `min ≤ max`, with
/// `n = 2^bits − 1` (see the module documentation). Returns `(scale, bias)`
/// in f32, before any rounding to the storage type.
pub fn mlx_scale_bias(min: f32, max: f32, bits: u32) -> (f32, f32) {
    let n = ((1u32 << bits) - 1) as f32;
    let s0 = ((max - min) / n).max(MLX_SCALE_EPS);
    let (edge, s) = if min.abs() > max.abs() {
        (min, s0)
    } else {
        (max, -s0)
    };
    let q0 = (edge / s).round_ties_even();
    if q0 == 0.0 {
        (s, 0.0)
    } else {
        (edge / q0, edge)
    }
}

/// The affine codec: see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffineCodec {
    /// Bits per code: 2, 3, 4, 5, 6 or 8.
    pub bits: u32,
    /// Which weights share a scale and bias.
    pub group: Group,
    /// Storage type of scales and biases (and the type the input is rounded
    /// to first).
    pub scale: ScaleDType,
}

impl Default for AffineCodec {
    fn default() -> Self {
        Self {
            bits: 4,
            group: Group::Size(64),
            scale: ScaleDType::F16,
        }
    }
}

/// The geometry of one encoded matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AffineLayout {
    /// The grouping.
    pub group: Group,
    /// Rows of the matrix.
    pub rows: usize,
    /// Columns of the matrix.
    pub cols: usize,
    /// `u32` words per row of `weight`: `⌈cols · bits / 32⌉`.
    pub words_per_row: usize,
    /// Weights per group (the last group of a row may be shorter); for
    /// `tensor` it is `rows · cols`.
    pub group_len: usize,
    /// Shape of `scales` and `biases`.
    pub scales_shape: [usize; 2],
}

impl AffineLayout {
    /// Index into `scales`/`biases` of the weight at (`r`, `c`).
    pub fn group_index(&self, r: usize, c: usize) -> usize {
        match self.group {
            Group::Tensor => 0,
            _ => r * self.scales_shape[1] + c / self.group_len,
        }
    }

    /// Weights per group within one row: `group_len`, or `cols` for
    /// `tensor`.
    fn row_group_len(&self) -> usize {
        match self.group {
            Group::Tensor => self.cols,
            _ => self.group_len,
        }
    }

    fn groups(&self) -> usize {
        self.scales_shape[0] * self.scales_shape[1]
    }
}

/// Typed views of an affine [`Encoded`], for kernels and tests.
#[derive(Clone, Debug, PartialEq)]
pub struct AffineParts {
    /// The geometry.
    pub layout: AffineLayout,
    /// Packed codes, `rows × words_per_row`, row-major.
    pub words: Vec<u32>,
    /// Scales widened to f32 (exact), `scales_shape` row-major.
    pub scales: Vec<f32>,
    /// Biases widened to f32 (exact), same shape.
    pub biases: Vec<f32>,
}

fn spec_err(spec: &str, problem: String) -> Error {
    Error::Spec {
        spec: spec.into(),
        problem,
    }
}

impl AffineCodec {
    /// A validated codec.
    pub fn new(bits: u32, group: Group, scale: ScaleDType) -> Result<Self> {
        let c = Self { bits, group, scale };
        c.validate()?;
        Ok(c)
    }

    fn validate(&self) -> Result<()> {
        if !AFFINE_BITS.contains(&self.bits) {
            return Err(spec_err(
                &self.spec(),
                format!("bits={} is not one of {AFFINE_BITS:?}", self.bits),
            ));
        }
        if let Group::Size(g) = self.group
            && !AFFINE_GROUP_SIZES.contains(&g)
        {
            return Err(spec_err(
                &self.spec(),
                format!("group={g} is not one of 32, 64, 128, row, tensor"),
            ));
        }
        Ok(())
    }

    /// Parses `affine:...` settings out of `spec`.
    pub fn from_spec(mut spec: Spec) -> Result<Self> {
        let bits = spec.take("bits", 4u32)?;
        let group = spec.take("group", Group::Size(64)).map_err(|_| {
            spec_err(
                &spec.text,
                "group must be 32, 64, 128, row or tensor".into(),
            )
        })?;
        let scale = spec
            .take("scale", ScaleDType::F16)
            .map_err(|_| spec_err(&spec.text, "scale must be f16, bf16 or f32".into()))?;
        spec.finish(&["bits", "group", "scale"])?;
        Self::new(bits, group, scale).map_err(|e| match e {
            Error::Spec { problem, .. } => spec_err(&spec.text, problem),
            e => e,
        })
    }

    /// The geometry of a `rows × cols` encoding (checked arithmetic).
    pub fn layout(&self, rows: usize, cols: usize) -> Result<AffineLayout> {
        let too_big = || Error::Input {
            codec: self.spec(),
            problem: format!("{rows}×{cols} is too large"),
        };
        let n = rows.checked_mul(cols).ok_or_else(too_big)?;
        let words_per_row = pack::words_for(cols, self.bits);
        rows.checked_mul(words_per_row)
            .and_then(|w| w.checked_mul(4))
            .ok_or_else(too_big)?;
        let (group_len, scales_shape) = match self.group {
            Group::Size(g) => (g, [rows, cols.div_ceil(g)]),
            Group::Row => (cols, [rows, usize::from(cols > 0)]),
            Group::Tensor => (n, if n > 0 { [1, 1] } else { [0, 0] }),
        };
        Ok(AffineLayout {
            group: self.group,
            rows,
            cols,
            words_per_row,
            group_len,
            scales_shape,
        })
    }

    /// Checks `e` against this codec and returns its typed parts (a copy;
    /// kernels that upload `e`'s bytes as they are can use this for the
    /// checks and the layout alone).
    pub fn parts(&self, e: &Encoded) -> Result<AffineParts> {
        let v = self.view(e)?;
        Ok(AffineParts {
            layout: v.layout,
            words: v.words.into_owned(),
            scales: v.scales,
            biases: v.biases,
        })
    }

    /// Validates `e` against this codec: spec, shapes, dtypes, sizes, finite
    /// scales and biases.
    fn view<'e>(&self, e: &'e Encoded) -> Result<View<'e>> {
        let bad = |part: &str, problem: String| Error::Encoded {
            codec: e.spec.clone(),
            part: part.into(),
            problem,
        };
        let mine = Spec::parse(&e.spec).and_then(Self::from_spec);
        if mine.as_ref().ok() != Some(self) {
            return Err(bad(
                "spec",
                format!("made by {:?}, not by {}", e.spec, self.spec()),
            ));
        }
        let layout = self.layout(e.rows, e.cols)?;
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
        let w = check(
            "weight",
            PartDType::U32,
            [layout.rows, layout.words_per_row],
        )?;
        let s = check("scales", self.scale.part_dtype(), layout.scales_shape)?;
        let b = check("biases", self.scale.part_dtype(), layout.scales_shape)?;
        let (scales, biases) = (self.scale.read(&s.data), self.scale.read(&b.data));
        for (name, v) in [("scales", &scales), ("biases", &biases)] {
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(bad(name, format!("value {i} is {}", v[i])));
            }
        }
        Ok(View {
            layout,
            words: pack::le_words(&w.data),
            scales,
            biases,
        })
    }

    /// The error for input that failed the fused finiteness check: the
    /// first NaN or infinity, else the first weight beyond the scale type.
    fn bad_input(&self, m: Matrix<'_>) -> Error {
        if let Err(e) = m.check_finite(&self.spec()) {
            return e;
        }
        let i = m
            .data
            .iter()
            .position(|&v| !self.scale.round(v).is_finite())
            .unwrap_or(0);
        let cols = m.cols.max(1);
        Error::Input {
            codec: self.spec(),
            problem: format!(
                "weight at row {}, column {} is {}, beyond the range of {}",
                i / cols,
                i % cols,
                m.data.get(i).copied().unwrap_or(f32::NAN),
                self.scale
            ),
        }
    }

    /// Scale and bias of one group with (rounded, finite) extremes `min`,
    /// `max`, as computed and as stored; fails where the range or the
    /// decoded extremes overflow f32. `at` names the group for errors.
    fn group_params(&self, min: f32, max: f32, at: impl Fn() -> String) -> Result<GroupParams> {
        let err = |problem: String| Error::Input {
            codec: self.spec(),
            problem: format!("{}: {problem}", at()),
        };
        if !(max - min).is_finite() {
            return Err(err(format!("range {min}..{max} overflows f32")));
        }
        let (scale, bias) = mlx_scale_bias(min, max, self.bits);
        let (ss, bs) = (self.scale.round(scale), self.scale.round(bias));
        let n = ((1u32 << self.bits) - 1) as f32;
        // Decoding is monotone in the code: codes 0 and n bound the rest.
        if !(ss.is_finite() && (n * ss + bs).is_finite()) {
            return Err(err(format!("range {min}..{max} cannot be decoded in f32")));
        }
        Ok(GroupParams {
            scale,
            bias,
            stored_scale: ss,
            stored_bias: bs,
        })
    }

    /// Shared driver of the fast and the reference encoder: `REFERENCE`
    /// picks the quantizer and packer.
    fn encode_with<const REFERENCE: bool>(&self, m: Matrix<'_>) -> Result<Encoded> {
        let quant = if REFERENCE {
            quant_reference
        } else {
            quant_fast
        };
        self.validate()?;
        check_shape(m, &self.spec())?;
        let l = self.layout(m.rows, m.cols)?;
        let sd = self.scale.part_dtype();
        let (mut scales, mut biases) = (
            Vec::with_capacity(l.groups() * sd.size()),
            Vec::with_capacity(l.groups() * sd.size()),
        );
        let wpr = l.words_per_row;
        let mut data = vec![0u8; m.rows * wpr * 4];
        let mut words = vec![0u32; wpr];
        let mut xr = vec![
            0f32;
            if self.scale == ScaleDType::F32 {
                0
            } else {
                m.cols
            }
        ];
        let mut codes = vec![0u8; m.cols];
        let mut push = |p: &GroupParams| {
            self.scale.push(p.stored_scale, &mut scales);
            self.scale.push(p.stored_bias, &mut biases);
        };
        let tensor = match self.group {
            Group::Tensor if l.groups() > 0 => {
                // Rounding is monotone: the extremes of the rounded weights
                // are the rounded extremes.
                let (mn, mx, ok) = min_max(m.data);
                let (mn, mx) = (self.scale.round(mn), self.scale.round(mx));
                if !(ok && mn.is_finite() && mx.is_finite()) {
                    return Err(self.bad_input(m));
                }
                let p = self.group_params(mn, mx, || "the tensor".into())?;
                push(&p);
                Some(p)
            }
            _ => None,
        };
        for r in 0..m.rows {
            let x = match self.scale {
                ScaleDType::F32 => m.row(r),
                _ => {
                    self.scale.round_slice(m.row(r), &mut xr);
                    &xr[..]
                }
            };
            match tensor {
                Some(p) => quant(x, &p, self.bits, &mut codes),
                None => {
                    let glen = l.group_len.max(1);
                    for (gi, (x, c)) in x.chunks(glen).zip(codes.chunks_mut(glen)).enumerate() {
                        let (mn, mx, ok) = min_max(x);
                        if !ok {
                            return Err(self.bad_input(m));
                        }
                        let at = || {
                            let c0 = gi * glen;
                            format!("group at row {r}, columns {c0}..{}", c0 + x.len())
                        };
                        let p = self.group_params(mn, mx, at)?;
                        push(&p);
                        quant(x, &p, self.bits, c);
                    }
                }
            }
            if REFERENCE {
                words.copy_from_slice(&pack::pack_words_reference(&codes, self.bits));
            } else {
                pack::pack_words_unchecked(&codes, self.bits, &mut words);
            }
            pack::put_le_words(&words, &mut data[r * wpr * 4..(r + 1) * wpr * 4]);
        }
        let part = |name: &str, dtype, shape: [usize; 2], data| Part {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
            data,
        };
        Ok(Encoded {
            spec: self.spec(),
            rows: m.rows,
            cols: m.cols,
            parts: vec![
                part("weight", PartDType::U32, [l.rows, wpr], data),
                part("scales", sd, l.scales_shape, scales),
                part("biases", sd, l.scales_shape, biases),
            ],
        })
    }

    /// The plain scalar specification of [`Codec::encode`]: one weight at a
    /// time, `round_ties_even`, bit-by-bit packing. Tests hold the fast path
    /// to it.
    pub fn encode_reference(&self, m: Matrix<'_>) -> Result<Encoded> {
        self.encode_with::<true>(m)
    }

    /// Decodes into `out` (`rows · cols` values) without allocating the
    /// output: [`Codec::decode`] for callers that reuse a buffer.
    pub fn decode_into(&self, e: &Encoded, out: &mut [f32]) -> Result<()> {
        let v = self.view(e)?;
        if out.len() != e.rows * e.cols {
            return Err(Error::Input {
                codec: self.spec(),
                problem: format!(
                    "output holds {} values, {} needed",
                    out.len(),
                    e.rows * e.cols
                ),
            });
        }
        decode_fast(&v, self.bits, out, |q, s, b| q * s + b);
        Ok(())
    }

    /// The plain scalar specification of [`Codec::decode`]: the bit-at-a-time
    /// unpacker and one weight at a time.
    pub fn decode_reference(&self, e: &Encoded) -> Result<Vec<f32>> {
        let v = self.view(e)?;
        let l = &v.layout;
        let mut out = Vec::with_capacity(e.rows * e.cols);
        for r in 0..l.rows {
            let row = &v.words[r * l.words_per_row..(r + 1) * l.words_per_row];
            let codes = pack::unpack_words_reference(row, self.bits, l.cols);
            for (c, &q) in codes.iter().enumerate() {
                let g = l.group_index(r, c);
                out.push(f32::from(q) * v.scales[g] + v.biases[g]);
            }
        }
        Ok(out)
    }

    /// Decodes as `mx.dequantize` does, in the scale type's arithmetic
    /// (`f16(f16(code · scale) + bias)` for f16), widened to f32. For
    /// `scale=f32` this is [`Codec::decode`]. Like MLX, it gives ±∞ where
    /// the f16 arithmetic overflows (`|code · scale| > 65504`).
    pub fn decode_mlx(&self, e: &Encoded) -> Result<Vec<f32>> {
        let v = self.view(e)?;
        let mut out = vec![0f32; e.rows * e.cols];
        let r = |x: f32| self.scale.round(x);
        // code·scale is exact in f32 (≤ 8 + 11 significant bits), and f32
        // has at least 2·11 + 2 bits, so rounding the f32 sum to f16 gives
        // the correctly rounded f16 sum: this is f16 arithmetic exactly
        // (likewise for bf16).
        decode_fast(&v, self.bits, &mut out, |q, s, b| r(r(q * s) + b));
        Ok(out)
    }
}

/// Fails unless `m.data` holds `rows · cols` values (the fields are public,
/// so a `Matrix` need not come from [`Matrix::new`]).
pub(crate) fn check_shape(m: Matrix<'_>, spec: &str) -> Result<()> {
    match Matrix::new(m.rows, m.cols, m.data) {
        Ok(_) => Ok(()),
        Err(Error::Input { problem, .. }) => Err(Error::Input {
            codec: spec.into(),
            problem,
        }),
        Err(e) => Err(e),
    }
}

/// A validated encoding: geometry, borrowed (or copied) words, scales and
/// biases widened to f32.
struct View<'e> {
    layout: AffineLayout,
    words: Cow<'e, [u32]>,
    scales: Vec<f32>,
    biases: Vec<f32>,
}

/// One group's scale and bias as computed (codes use these) and as stored.
#[derive(Clone, Copy, Debug)]
struct GroupParams {
    scale: f32,
    bias: f32,
    stored_scale: f32,
    stored_bias: f32,
}

/// The extremes of a non-empty slice, and whether every value is finite:
/// one pass, in lanes so it vectorises.
fn min_max(x: &[f32]) -> (f32, f32, bool) {
    let mut lo = [f32::INFINITY; 8];
    let mut hi = [f32::NEG_INFINITY; 8];
    // v · 0 is ±0 for finite v and NaN for NaN and ±∞; NaN sticks.
    let mut nan = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            lo[i] = lo[i].min(c[i]);
            hi[i] = hi[i].max(c[i]);
            nan[i] += c[i] * 0.0;
        }
    }
    for (i, &v) in rest.iter().enumerate() {
        lo[i] = lo[i].min(v);
        hi[i] = hi[i].max(v);
        nan[i] += v * 0.0;
    }
    let lo = lo.iter().fold(f32::INFINITY, |a, &b| a.min(b));
    let hi = hi.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    (lo, hi, nan.iter().sum::<f32>() == 0.0)
}

/// `2^23`: adding it to `x ∈ [0, 2^22)` leaves `round_ties_even(x)` in the
/// low mantissa bits (the FPU rounds to nearest even), without a branch or a
/// call.
const MAGIC: f32 = 8_388_608.0;

fn quant_fast(x: &[f32], p: &GroupParams, bits: u32, codes: &mut [u8]) {
    let n = ((1u32 << bits) - 1) as f32;
    let (s, b) = (p.scale, p.bias);
    for (c, &v) in codes.iter_mut().zip(x) {
        // Clamp before rounding: equal to clamp after, as the bounds are
        // integers, and it keeps the magic-number rounding in range.
        let t = ((v - b) / s).clamp(0.0, n) + MAGIC;
        *c = t.to_bits() as u8;
    }
}

fn quant_reference(x: &[f32], p: &GroupParams, bits: u32, codes: &mut [u8]) {
    let n = ((1u32 << bits) - 1) as f32;
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = ((v - p.bias) / p.scale).round_ties_even().clamp(0.0, n) as u8;
    }
}

/// Decodes a validated view into `out` with `f(code, scale, bias)`.
fn decode_fast(v: &View<'_>, bits: u32, out: &mut [f32], f: impl Fn(f32, f32, f32) -> f32 + Copy) {
    match bits {
        2 => decode_rows::<2>(v, out, f),
        3 => decode_rows::<3>(v, out, f),
        4 => decode_rows::<4>(v, out, f),
        5 => decode_rows::<5>(v, out, f),
        6 => decode_rows::<6>(v, out, f),
        _ => decode_rows::<8>(v, out, f),
    }
}

fn decode_rows<const B: usize>(
    v: &View<'_>,
    out: &mut [f32],
    f: impl Fn(f32, f32, f32) -> f32 + Copy,
) {
    let l = &v.layout;
    if l.cols == 0 {
        return;
    }
    let glen = l.row_group_len();
    // Whole 32-code chunks (`B` words) never straddle a group (a short last
    // group is whole chunks too): unpack and scale them straight from the
    // words.
    let chunked = l.cols % 32 == 0 && glen % 32 == 0;
    let mut codes = vec![0u8; if chunked { 0 } else { l.cols }];
    for (r, o) in out.chunks_exact_mut(l.cols).enumerate() {
        let w = &v.words[r * l.words_per_row..(r + 1) * l.words_per_row];
        let g0 = l.group_index(r, 0);
        if chunked {
            for (gi, (o, w)) in o.chunks_mut(glen).zip(w.chunks(glen / 32 * B)).enumerate() {
                let (s, b) = (v.scales[g0 + gi], v.biases[g0 + gi]);
                for (o, w) in o.chunks_exact_mut(32).zip(w.chunks_exact(B)) {
                    let mut c = [0u8; 32];
                    pack::unpack32::<B>(w.try_into().unwrap(), &mut c);
                    for (o, &c) in o.iter_mut().zip(&c) {
                        *o = f(f32::from(c), s, b);
                    }
                }
            }
        } else {
            pack::unpack_words_unchecked(w, B as u32, &mut codes);
            for (gi, (o, c)) in o.chunks_mut(glen).zip(codes.chunks(glen)).enumerate() {
                let (s, b) = (v.scales[g0 + gi], v.biases[g0 + gi]);
                for (o, &c) in o.iter_mut().zip(c) {
                    *o = f(f32::from(c), s, b);
                }
            }
        }
    }
}

impl Codec for AffineCodec {
    fn spec(&self) -> String {
        format!(
            "affine:bits={},group={},scale={}",
            self.bits, self.group, self.scale
        )
    }

    fn encode(&self, m: Matrix<'_>) -> Result<Encoded> {
        self.encode_with::<false>(m)
    }

    /// Multiply then add, each rounded, as MLX does (no FMA).
    fn decode(&self, e: &Encoded) -> Result<Vec<f32>> {
        // Validate before allocating what `e` merely claims.
        let v = self.view(e)?;
        let mut out = vec![0f32; e.rows * e.cols];
        decode_fast(&v, self.bits, &mut out, |q, s, b| q * s + b);
        Ok(out)
    }

    fn bits_per_weight(&self, rows: usize, cols: usize) -> f64 {
        let Ok(l) = self.layout(rows, cols) else {
            return f64::NAN;
        };
        let n = rows as f64 * cols as f64;
        if n == 0.0 {
            return 0.0;
        }
        let bits = (l.rows * l.words_per_row) as f64 * 32.0
            + 2.0 * l.groups() as f64 * self.scale.bits() as f64;
        bits / n
    }
}

/// Builds this module's codec from a parsed spec.
pub(crate) fn from_spec(spec: Spec) -> Result<Box<dyn Codec>> {
    Ok(Box::new(AffineCodec::from_spec(spec)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_matches_half() {
        // A sweep of bit patterns across every exponent, signs, NaN and ∞.
        let xs: Vec<f32> = (0..=u32::MAX).step_by(40_009).map(f32::from_bits).collect();
        for dt in [ScaleDType::F16, ScaleDType::BF16, ScaleDType::F32] {
            let mut slice = vec![0f32; xs.len()];
            dt.round_slice(&xs, &mut slice);
            for (&x, &r) in xs.iter().zip(&slice) {
                let want = match dt {
                    ScaleDType::F16 => f16::from_f32(x).to_f32(),
                    ScaleDType::BF16 => half::bf16::from_f32(x).to_f32(),
                    ScaleDType::F32 => x,
                };
                let same = |a: f32| a.to_bits() == want.to_bits() || (a.is_nan() && want.is_nan());
                assert!(
                    same(dt.round(x)) && same(r),
                    "{dt} {x:e}: {} / {r} vs {want}",
                    dt.round(x)
                );
            }
        }
    }

    #[test]
    fn magic_rounding_is_ties_to_even() {
        // Every half-integer in the clamped range [0, 255].
        for i in 0..=510 {
            let x = i as f32 * 0.5;
            let got = (x + MAGIC).to_bits() as u8;
            assert_eq!(f32::from(got), x.round_ties_even(), "{x}");
        }
    }
}
