//! Kernel wrappers: each uploads its weights once and hands out
//! [`Dispatch`](crate::Dispatch)es bound to activation vectors.

pub mod affine;
pub mod dense;
pub mod fill;
pub mod llama;
pub mod lut;
pub mod sparse;
pub mod stream;

use crate::buffer::GpuVector;
use crate::error::{GpuError, Result};

/// Work a GEMV does around `W·x`, so that a decode step needs fewer
/// dispatches (dense and affine kernels; see `shaders/gemv_dense.wgsl`).
///
/// The default fuses nothing: `y = W·x`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Fusion {
    /// RMS-normalise the input first, `y = W·(x ⊙ g) / sqrt(mean(x²) + ε)`,
    /// with this ε and the scale `g` given to `bind_fused`.
    pub rms_norm_eps: Option<f32>,
    /// Add to the output, `y += …` (a residual add).
    pub accumulate: bool,
    /// SwiGLU of the output's halves: rows `[0, n/2)` are gate projections
    /// and `[n/2, n)` the matching up projections, and `y[r] =
    /// silu(gate_r)·up_r` for `r < n/2`. Needs the matrix in one block.
    pub swiglu: bool,
}

impl Fusion {
    /// The kernels' override constants for this fusion.
    pub(crate) fn constants(&self) -> [(&'static str, f64); 4] {
        [
            ("NORM", f64::from(u8::from(self.rms_norm_eps.is_some()))),
            ("EPS", f64::from(self.rms_norm_eps.unwrap_or(1e-5))),
            ("ACCUM", f64::from(u8::from(self.accumulate))),
            ("GLU", f64::from(u8::from(self.swiglu))),
        ]
    }

    /// Checks the norm scale against the fusion and `cols`, and the
    /// output length; returns the buffer to bind as the scale (`x` when
    /// there is no norm: bound, never read).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn check<'a>(
        &self,
        what: &str,
        rows: usize,
        cols: usize,
        blocks: usize,
        x: &'a GpuVector,
        norm_w: Option<&'a GpuVector>,
        y: &GpuVector,
    ) -> Result<&'a GpuVector> {
        let out = if self.swiglu { rows / 2 } else { rows };
        if self.swiglu && (rows % 2 != 0 || blocks != 1) {
            return Err(GpuError::invalid(
                what.to_owned(),
                format!(
                    "SwiGLU fusion needs an even row count in one block ({rows} rows, {blocks} \
                     blocks)"
                ),
            ));
        }
        if y.len() < out {
            return Err(GpuError::invalid(
                what.to_owned(),
                format!(
                    "output `{}` has {} values, needs {out}",
                    y.buffer().name(),
                    y.len()
                ),
            ));
        }
        if x.buffer().raw() == y.buffer().raw() {
            return Err(GpuError::invalid(
                what.to_owned(),
                format!(
                    "input and output are the same buffer `{}`",
                    x.buffer().name()
                ),
            ));
        }
        match (self.rms_norm_eps, norm_w) {
            (None, None) => Ok(x),
            (Some(eps), Some(g)) => {
                if !(eps.is_finite() && eps >= 0.0) {
                    return Err(GpuError::invalid(
                        what.to_owned(),
                        format!("RMSNorm ε {eps} is not a finite value ≥ 0"),
                    ));
                }
                if g.len() < cols {
                    return Err(GpuError::invalid(
                        what.to_owned(),
                        format!(
                            "norm scale `{}` has {} values, needs {cols}",
                            g.buffer().name(),
                            g.len()
                        ),
                    ));
                }
                Ok(g)
            }
            (Some(_), None) => Err(GpuError::invalid(
                what.to_owned(),
                "RMSNorm fusion without a norm scale".to_owned(),
            )),
            (None, Some(_)) => Err(GpuError::invalid(
                what.to_owned(),
                "a norm scale without RMSNorm fusion".to_owned(),
            )),
        }
    }
}
