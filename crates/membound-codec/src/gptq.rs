//! GPTQ: calibrated quantization into the affine (MLX) layout.
//!
//! Frantar, Ashkboos, Hoefler, Alistarh, *GPTQ: Accurate Post-Training
//! Quantization for Generative Pre-trained Transformers* (ICLR 2023,
//! arXiv:2210.17323). For a layer `y = W·x` with calibration inputs `X`
//! (`n × cols`), GPTQ minimises `‖W·Xᵀ − Ŵ·Xᵀ‖²` row by row using the
//! Hessian `H = 2·XᵀX/n`: columns are quantized one at a time and the
//! error of each is spread over the columns not yet quantized,
//!
//! ```text
//! U      = upper Cholesky factor of (H + λI)⁻¹        (H⁻¹ = UᵀU)
//! for column k:  q_k = Q(w_k);  e = (w_k − q_k) / U_kk;  w_j −= e · U_kj  (j > k)
//! ```
//!
//! with the paper's *lazy batch* update: inside a block of [`GptqOptions::block`]
//! columns the update is applied column by column, and the accumulated
//! errors of the block update the columns after it in one pass.
//!
//! What this implementation does, precisely:
//!
//! * **f64** throughout (Hessian, its factor, the working weights); codes,
//!   scales and biases are those of [`AffineCodec`] in f32 as MLX defines
//!   them, so the output is an ordinary affine [`Encoded`]
//!   ([`crate::decode`] and the GPU affine kernels run it unchanged).
//! * **Groups** (`group=32|64|128`): a group's scale and bias are computed
//!   when its first column is reached, from the *current* (error-updated)
//!   weights of the group, with MLX's min/max formula
//!   ([`crate::mlx_scale_bias`]), the extremes rounded to the scale type
//!   first, as [`AffineCodec`] does. The block is widened to a multiple of
//!   the group so a group never straddles a lazy update.
//! * **Codes** are the nearest point of the *stored* (scale-type rounded)
//!   grid, `clamp(round((w − bias)/scale), 0, 2^bits − 1)`, so the error fed
//!   back is the error of exactly what decodes.
//! * **Act-order** ([`GptqOptions::act_order`]): columns are processed in
//!   order of decreasing `diag(H)`. To keep the plain MLX layout (each group
//!   a run of consecutive original columns with one scale and bias), this
//!   uses **static groups**: every group's scale and bias are computed up
//!   front from the original weights, in original column order, and the
//!   permuted pass only chooses codes. `group=row` and `group=tensor` also
//!   use parameters from the original weights.
//! * **Damping**: `λ = damp · mean(diag H)` (the paper's `percdamp`,
//!   default 0.01) is added to the diagonal.
//! * **Dead columns** (`H_ii = 0`: an input that was always zero): the
//!   weight column is set to 0 and `H_ii` to 1 before anything else.
//!
//! [`Hessian`] accumulates `H` from streamed input vectors without storing
//! them.

use faer::{Mat, MatRef, Side, linalg::solvers::DenseSolveCore};
use rayon::prelude::*;

use crate::affine::check_shape;
use crate::{AffineCodec, Codec, Encoded, Error, Group, Matrix, Part, PartDType, Result, pack};

fn input_err(what: &str, problem: String) -> Error {
    Error::Input {
        codec: what.into(),
        problem,
    }
}

/// Streaming accumulator of a layer's input Hessian `H = 2·XᵀX/n`.
///
/// Feed rows of inputs (each `cols` wide) with [`Hessian::add_batch`]; rows
/// are buffered and folded into `XᵀX` (f64) in blocks, so no input is kept
/// beyond the buffer.
#[derive(Clone, Debug)]
pub struct Hessian {
    cols: usize,
    /// `XᵀX` so far, `cols × cols` row-major.
    sum: Vec<f64>,
    /// Rows not yet folded in, f64.
    pending: Vec<f64>,
    samples: u64,
}

/// Rows buffered before a block update of [`Hessian`].
const HESSIAN_BLOCK: usize = 64;

impl Hessian {
    /// An empty accumulator for inputs of width `cols`.
    pub fn new(cols: usize) -> Self {
        Self {
            cols,
            sum: vec![0.0; cols * cols],
            pending: Vec::new(),
            samples: 0,
        }
    }

    /// Input width.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Input vectors added so far.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Adds `x`: one or more input vectors of width `cols`, concatenated.
    /// Fails (adding nothing) on an empty batch, a length that is not a
    /// multiple of `cols`, or a NaN or infinity.
    pub fn add_batch(&mut self, x: &[f32]) -> Result<()> {
        let what = "hessian";
        if x.is_empty() || self.cols == 0 {
            return Err(input_err(
                what,
                "empty calibration batch (no input values)".into(),
            ));
        }
        if x.len() % self.cols != 0 {
            return Err(input_err(
                what,
                format!(
                    "calibration batch of {} values is not a whole number of inputs of width {}",
                    x.len(),
                    self.cols
                ),
            ));
        }
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(input_err(
                what,
                format!(
                    "calibration input {} holds {} at position {}",
                    i / self.cols,
                    x[i],
                    i % self.cols
                ),
            ));
        }
        self.pending.extend(x.iter().map(|&v| f64::from(v)));
        self.samples += (x.len() / self.cols) as u64;
        if self.pending.len() >= HESSIAN_BLOCK * self.cols {
            self.flush();
        }
        Ok(())
    }

    fn flush(&mut self) {
        let m = self.pending.len() / self.cols;
        if m == 0 {
            return;
        }
        let p = MatRef::from_row_major_slice(&self.pending, m, self.cols);
        let g: Mat<f64> = p.transpose() * p;
        for j in 0..self.cols {
            // g is symmetric: column j is row j.
            let col = g.col(j);
            let row = &mut self.sum[j * self.cols..(j + 1) * self.cols];
            for (i, s) in row.iter_mut().enumerate() {
                *s += col[i];
            }
        }
        self.pending.clear();
    }

    /// `2·XᵀX/n`, `cols × cols` row-major. Fails when no input was added.
    pub fn finish(mut self) -> Result<Vec<f64>> {
        self.flush();
        if self.samples == 0 {
            return Err(input_err(
                "hessian",
                "no calibration inputs were recorded".into(),
            ));
        }
        let k = 2.0 / self.samples as f64;
        self.sum.iter_mut().for_each(|v| *v *= k);
        Ok(self.sum)
    }
}

/// Settings of [`gptq`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GptqOptions {
    /// Damping as a fraction of `mean(diag H)` (the paper's `percdamp`).
    pub damp: f64,
    /// Quantize columns in order of decreasing `diag(H)` (static groups).
    pub act_order: bool,
    /// Columns per lazy batch update (widened to a multiple of the group).
    pub block: usize,
}

impl Default for GptqOptions {
    fn default() -> Self {
        Self {
            damp: 0.01,
            act_order: false,
            block: 128,
        }
    }
}

/// One group's parameters: as stored (and decoded with).
#[derive(Clone, Copy, Debug, Default)]
struct Params {
    scale: f32,
    bias: f32,
}

/// MLX's parameters for extremes `min ≤ max` (already in the scale type),
/// rounded to the scale type; fails where they cannot decode in f32.
fn params(codec: &AffineCodec, min: f32, max: f32, at: impl Fn() -> String) -> Result<Params> {
    let err = |p: String| input_err(&codec.spec(), format!("{}: {p}", at()));
    if !(min.is_finite() && max.is_finite() && (max - min).is_finite()) {
        return Err(err(format!("range {min}..{max} is not finite in f32")));
    }
    let (s, b) = crate::mlx_scale_bias(min, max, codec.bits);
    let (s, b) = (codec.scale.round(s), codec.scale.round(b));
    let n = ((1u32 << codec.bits) - 1) as f32;
    if !(s.is_finite() && b.is_finite() && (n * s + b).is_finite()) {
        return Err(err(format!("range {min}..{max} cannot be decoded in f32")));
    }
    Ok(Params { scale: s, bias: b })
}

/// Params from the extremes of `vals` (rounded to the scale type).
fn params_of(
    codec: &AffineCodec,
    vals: impl Iterator<Item = f64>,
    at: impl Fn() -> String,
) -> Result<Params> {
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    for v in vals {
        let v = codec.scale.round(v as f32);
        lo = lo.min(v);
        hi = hi.max(v);
    }
    params(codec, lo, hi, at)
}

/// The nearest code of the stored grid and its decoded value (f32
/// arithmetic, multiply then add, as [`AffineCodec`] decodes).
#[inline]
fn quantize_one(w: f64, p: Params, n: f32) -> (u8, f32) {
    let q = if p.scale != 0.0 {
        ((w as f32 - p.bias) / p.scale)
            .round_ties_even()
            .clamp(0.0, n)
    } else {
        0.0
    };
    (q as u8, q * p.scale + p.bias)
}

/// `U` with `(H + λI)⁻¹ = UᵀU`, `U` upper triangular, row-major; `h` is
/// modified (damped).
fn inverse_cholesky_upper(h: &mut [f64], n: usize, damp: f64, spec: &str) -> Result<Vec<f64>> {
    let mean = (0..n).map(|i| h[i * n + i]).sum::<f64>() / n as f64;
    let lambda = damp * mean;
    for i in 0..n {
        h[i * n + i] += lambda;
    }
    let not_pd = |step: &str| {
        input_err(
            spec,
            format!(
                "the Hessian is not positive definite ({step}); raise the damping (now {damp})"
            ),
        )
    };
    let hm = MatRef::from_row_major_slice(h, n, n);
    let inv = hm
        .llt(Side::Lower)
        .map_err(|_| not_pd("Cholesky of H"))?
        .inverse();
    let l = inv
        .llt(Side::Lower)
        .map_err(|_| not_pd("Cholesky of H⁻¹"))?;
    let l = l.L();
    let mut u = vec![0.0; n * n];
    for i in 0..n {
        for j in i..n {
            u[i * n + j] = l[(j, i)];
        }
    }
    if u.iter().any(|v| !v.is_finite()) {
        return Err(not_pd("non-finite factor"));
    }
    Ok(u)
}

/// Quantizes `m` (`rows × cols`, row-major) with GPTQ against the input
/// Hessian `h` (`cols × cols`, row-major, e.g. from [`Hessian::finish`]),
/// into `codec`'s affine layout. See the module documentation.
///
/// Errors: shapes that do not match, non-finite weights or Hessian entries,
/// a negative diagonal entry, damping that is negative or not finite, and a
/// Hessian that is not positive definite after damping.
pub fn gptq(codec: &AffineCodec, m: Matrix<'_>, h: &[f64], opts: &GptqOptions) -> Result<Encoded> {
    let spec = codec.spec();
    check_shape(m, &spec)?;
    m.check_finite(&spec)?;
    let (rows, cols) = (m.rows, m.cols);
    if h.len() != cols * cols {
        return Err(input_err(
            &spec,
            format!(
                "Hessian has {} values; a {cols}-column weight needs {cols}×{cols}",
                h.len()
            ),
        ));
    }
    if let Some(i) = h.iter().position(|v| !v.is_finite()) {
        return Err(input_err(
            &spec,
            format!("Hessian entry ({}, {}) is {}", i / cols, i % cols, h[i]),
        ));
    }
    if !(opts.damp.is_finite() && opts.damp >= 0.0) {
        return Err(input_err(
            &spec,
            format!("damping {} must be finite and ≥ 0", opts.damp),
        ));
    }
    if rows == 0 || cols == 0 {
        return codec.encode(m);
    }
    let n = cols;
    let mut h = h.to_vec();
    // Dead inputs: H_ii = 0 means the input was always 0.
    let mut dead = vec![false; n];
    for i in 0..n {
        let d = h[i * n + i];
        if d < 0.0 {
            return Err(input_err(
                &spec,
                format!("Hessian diagonal entry {i} is negative ({d})"),
            ));
        }
        if d == 0.0 {
            dead[i] = true;
            h[i * n + i] = 1.0;
        }
    }
    // Working weights in f64, the input rounded to the scale type first (as
    // AffineCodec does), dead columns zeroed.
    let w: Vec<f64> = m
        .data
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            if dead[i % n] {
                0.0
            } else {
                f64::from(codec.scale.round(v))
            }
        })
        .collect();
    if let Some(i) = w.iter().position(|v| !v.is_finite()) {
        return Err(input_err(
            &spec,
            format!(
                "weight at row {}, column {} is beyond the range of {}",
                i / n,
                i % n,
                codec.scale
            ),
        ));
    }
    let layout = codec.layout(rows, cols)?;
    let perm: Vec<usize> = if opts.act_order {
        let mut p: Vec<usize> = (0..n).collect();
        p.sort_by(|&a, &b| h[b * n + b].total_cmp(&h[a * n + a]));
        p
    } else {
        (0..n).collect()
    };
    let mut hp = vec![0.0; n * n];
    for (i, &pi) in perm.iter().enumerate() {
        for (j, &pj) in perm.iter().enumerate() {
            hp[i * n + j] = h[pi * n + pj];
        }
    }
    let u = inverse_cholesky_upper(&mut hp, n, opts.damp, &spec)?;

    let glen = match codec.group {
        Group::Size(g) => g,
        Group::Row => n,
        Group::Tensor => n,
    };
    let groups_per_row = n.div_ceil(glen);
    let dynamic = matches!(codec.group, Group::Size(_)) && !opts.act_order;
    // Static parameters (act-order, row, tensor), from the original weights.
    let static_params: Vec<Params> = if dynamic {
        Vec::new()
    } else if codec.group == Group::Tensor {
        let p = params_of(codec, w.iter().copied(), || "the tensor".into())?;
        vec![p; rows * groups_per_row]
    } else {
        let mut v = Vec::with_capacity(rows * groups_per_row);
        for r in 0..rows {
            for g in 0..groups_per_row {
                let c0 = g * glen;
                let c1 = (c0 + glen).min(n);
                v.push(params_of(
                    codec,
                    w[r * n + c0..r * n + c1].iter().copied(),
                    || format!("group at row {r}, columns {c0}..{c1}"),
                )?);
            }
        }
        v
    };
    let block = if dynamic {
        opts.block.max(1).div_ceil(glen) * glen
    } else {
        opts.block.max(1)
    };
    let qmax = ((1u32 << codec.bits) - 1) as f32;

    // Rows are independent given H: chunks of rows in parallel.
    let threads = rayon::current_num_threads().max(1);
    let chunk = rows.div_ceil(threads * 2).clamp(16, 512);
    let results: Vec<(Vec<u8>, Vec<Params>)> = (0..rows)
        .step_by(chunk)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|r0| {
            let rr = chunk.min(rows - r0);
            // Transposed, permuted working copy: wt[k*rr + r] = W[r0+r][perm[k]].
            let mut wt = vec![0.0f64; n * rr];
            for r in 0..rr {
                for (k, &pk) in perm.iter().enumerate() {
                    wt[k * rr + r] = w[(r0 + r) * n + pk];
                }
            }
            let mut codes = vec![0u8; rr * n];
            let mut pars = if dynamic {
                vec![Params::default(); rr * groups_per_row]
            } else {
                static_params[r0 * groups_per_row..(r0 + rr) * groups_per_row].to_vec()
            };
            let mut err = vec![0.0f64; block * rr];
            let mut b0 = 0;
            while b0 < n {
                let b1 = (b0 + block).min(n);
                for k in b0..b1 {
                    let col = perm[k];
                    let g = col / glen;
                    if dynamic && col % glen == 0 {
                        let c1 = (col + glen).min(n);
                        for r in 0..rr {
                            pars[r * groups_per_row + g] =
                                params_of(codec, (col..c1).map(|c| wt[c * rr + r]), || {
                                    format!("group at row {}, columns {col}..{c1}", r0 + r)
                                })?;
                        }
                    }
                    let d = u[k * n + k];
                    let (head, tail) = wt.split_at_mut((k + 1) * rr);
                    let wk = &head[k * rr..];
                    let e = &mut err[(k - b0) * rr..(k - b0 + 1) * rr];
                    for r in 0..rr {
                        let (q, deq) = quantize_one(wk[r], pars[r * groups_per_row + g], qmax);
                        codes[r * n + col] = q;
                        e[r] = (wk[r] - f64::from(deq)) / d;
                    }
                    // In-block update of the columns after k.
                    for j in k + 1..b1 {
                        let ukj = u[k * n + j];
                        if ukj == 0.0 {
                            continue;
                        }
                        let wj = &mut tail[(j - k - 1) * rr..(j - k) * rr];
                        for (x, &ei) in wj.iter_mut().zip(e.iter()) {
                            *x -= ei * ukj;
                        }
                    }
                }
                // Lazy batch update of every column after the block.
                for j in b1..n {
                    let wj = &mut wt[j * rr..(j + 1) * rr];
                    for k in b0..b1 {
                        let ukj = u[k * n + j];
                        if ukj == 0.0 {
                            continue;
                        }
                        let e = &err[(k - b0) * rr..(k - b0 + 1) * rr];
                        for (x, &ei) in wj.iter_mut().zip(e) {
                            *x -= ei * ukj;
                        }
                    }
                }
                b0 = b1;
            }
            Ok((codes, pars))
        })
        .collect::<Result<_>>()?;

    // Pack into the affine layout.
    let wpr = layout.words_per_row;
    let mut data = vec![0u8; rows * wpr * 4];
    let mut words = vec![0u32; wpr];
    let (mut scales, mut biases) = (Vec::new(), Vec::new());
    let mut r = 0;
    for (codes, pars) in &results {
        for (row_codes, row_pars) in codes.chunks(n).zip(pars.chunks(groups_per_row)) {
            pack::pack_words(row_codes, codec.bits, &mut words)?;
            for (o, wd) in data[r * wpr * 4..(r + 1) * wpr * 4]
                .chunks_exact_mut(4)
                .zip(&words)
            {
                o.copy_from_slice(&wd.to_le_bytes());
            }
            match codec.group {
                Group::Tensor => {
                    if r == 0 {
                        codec.scale.push(row_pars[0].scale, &mut scales);
                        codec.scale.push(row_pars[0].bias, &mut biases);
                    }
                }
                _ => {
                    for p in row_pars {
                        codec.scale.push(p.scale, &mut scales);
                        codec.scale.push(p.bias, &mut biases);
                    }
                }
            }
            r += 1;
        }
    }
    let sd = codec.scale.part_dtype();
    let part = |name: &str, dtype: PartDType, shape: [usize; 2], data: Vec<u8>| Part {
        name: name.into(),
        dtype,
        shape: shape.to_vec(),
        data,
    };
    Ok(Encoded {
        spec,
        rows,
        cols,
        parts: vec![
            part("weight", PartDType::U32, [rows, wpr], data),
            part("scales", sd, layout.scales_shape, scales),
            part("biases", sd, layout.scales_shape, biases),
        ],
    })
}

/// The layer-output error `Σ_rows (w − ŵ)ᵀ H (w − ŵ)` of a reconstruction
/// `w_hat` of `w` (both `rows × cols`) under the Hessian `h` (`cols × cols`),
/// which is `2/n · ‖(W − Ŵ)·Xᵀ‖²` for `H = 2·XᵀX/n`. Fails on mismatched
/// lengths.
pub fn hessian_error(w: &[f32], w_hat: &[f32], h: &[f64], cols: usize) -> Result<f64> {
    if w.len() != w_hat.len() || cols == 0 || w.len() % cols != 0 || h.len() != cols * cols {
        return Err(input_err(
            "hessian_error",
            format!(
                "lengths {} and {} with a {}-value Hessian do not fit {cols} columns",
                w.len(),
                w_hat.len(),
                h.len()
            ),
        ));
    }
    let hm = MatRef::from_row_major_slice(h, cols, cols);
    let rows = w.len() / cols;
    let d: Vec<f64> = w
        .iter()
        .zip(w_hat)
        .map(|(a, b)| f64::from(*a) - f64::from(*b))
        .collect();
    let dm = MatRef::from_row_major_slice(&d, rows, cols);
    let dh: Mat<f64> = dm * hm;
    let mut s = 0.0;
    for r in 0..rows {
        for c in 0..cols {
            s += dh[(r, c)] * d[r * cols + c];
        }
    }
    Ok(s)
}
