//! NF4: 16 normal quantiles with absmax blocks.
//!
//! Spec: `nf4:block=K,scale=S`, default `block=64,scale=f16`.
//!
//! NF4 is the 4-bit NormalFloat type of QLoRA (Dettmers et al., 2023,
//! arXiv:2305.14314): 16 levels in `[−1, 1]` at quantiles of N(0, 1),
//! asymmetric so that 0 is a level and ±1 are the ends. [`NF4_LEVELS`] are
//! the published values (QLoRA, appendix; the same table ships with
//! bitsandbytes); they agree with the paper's construction from
//! `Φ⁻¹(linspace(0.9677083, 0.5, ·))`, normalised, to 1e-7.
//!
//! Per block of `K` consecutive weights of a row: `a = max |x|` is stored
//! rounded to the scale type as `a_s`; each weight gets the level nearest
//! to `x / a_s` (ties to the lower level; `0` if `a_s = 0`), and decodes to
//! `level · a_s`. Normalising by the stored `a_s` rather than `a` makes the
//! choice of level optimal for the stored scale.
//!
//! Error per weight: `≤ a_s · g/2` with `g` the widest gap between adjacent
//! levels (`1 − 0.696… = 0.304`), plus `|a − a_s|` for the end levels, plus
//! f32 rounding.
//!
//! Parts: `weight` U32 `[rows, ⌈cols/8⌉]` (4-bit codes, the [`crate::pack`]
//! stream), `scales` `[rows, ⌈cols/K⌉]`.

use crate::absmax::{Blocked, respec, take_scale};
use crate::affine::ScaleDType;
use crate::{Codec, Encoded, Matrix, Result, Spec};

/// The 16 NF4 levels of QLoRA, ascending; code `i` decodes to
/// `NF4_LEVELS[i] · scale`.
pub const NF4_LEVELS: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// Decision thresholds: midpoints of adjacent levels.
fn thresholds() -> [f32; 15] {
    std::array::from_fn(|i| (NF4_LEVELS[i] + NF4_LEVELS[i + 1]) * 0.5)
}

/// The NF4 codec: see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Nf4Codec {
    /// Weights per block along a row.
    pub block: usize,
    /// Storage type of the per-block absmax.
    pub scale: ScaleDType,
}

impl Default for Nf4Codec {
    fn default() -> Self {
        Self {
            block: 64,
            scale: ScaleDType::F16,
        }
    }
}

impl Nf4Codec {
    /// A validated codec.
    pub fn new(block: usize, scale: ScaleDType) -> Result<Self> {
        let c = Self { block, scale };
        c.blocked().validate(&c.spec())?;
        Ok(c)
    }

    fn blocked(&self) -> Blocked {
        Blocked {
            bits: 4,
            min_bits: 4,
            block: self.block,
            scale: self.scale,
        }
    }

    /// Decodes into `out` (`rows · cols` values) without allocating it.
    pub fn decode_into(&self, e: &Encoded, out: &mut [f32]) -> Result<()> {
        let b = self.blocked();
        b.decode_into(&b.view(self, e)?, out, |c, a| {
            NF4_LEVELS[usize::from(c & 15)] * a
        })
    }

    /// Parses `nf4:...` settings out of `spec`.
    pub fn from_spec(mut spec: Spec) -> Result<Self> {
        let block = spec.take("block", Self::default().block)?;
        let scale = take_scale(&mut spec)?;
        spec.finish(&["block", "scale"])?;
        Self::new(block, scale).map_err(|e| respec(e, &spec))
    }
}

impl Codec for Nf4Codec {
    fn spec(&self) -> String {
        format!("nf4:block={},scale={}", self.block, self.scale)
    }

    fn encode(&self, m: Matrix<'_>) -> Result<Encoded> {
        let t = thresholds();
        let scale = self.scale;
        self.blocked().encode(&self.spec(), m, |x, codes| {
            let a = x.iter().fold(0f32, |a, &v| a.max(v.abs()));
            let a_s = scale.round(a);
            // a_s = 0 only if every |x| rounds to 0: all map to level 0.
            let d = if a_s > 0.0 { a_s } else { f32::INFINITY };
            for (c, &v) in codes.iter_mut().zip(x) {
                let y = v / d;
                // Branch-free: the code is the number of thresholds below y.
                *c = t.iter().map(|&t| u8::from(y > t)).sum();
            }
            a
        })
    }

    fn decode(&self, e: &Encoded) -> Result<Vec<f32>> {
        self.blocked()
            .decode(self, e, |c, a| NF4_LEVELS[usize::from(c & 15)] * a)
    }

    fn bits_per_weight(&self, rows: usize, cols: usize) -> f64 {
        self.blocked().bits_per_weight(rows, cols)
    }
}

/// Builds this module's codec from a parsed spec.
pub(crate) fn from_spec(spec: Spec) -> Result<Box<dyn Codec>> {
    Ok(Box::new(Nf4Codec::from_spec(spec)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_sorted_with_zero_and_ends() {
        assert!(NF4_LEVELS.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(
            (NF4_LEVELS[0], NF4_LEVELS[7], NF4_LEVELS[15]),
            (-1.0, 0.0, 1.0)
        );
    }

    #[test]
    fn each_level_decodes_to_itself() {
        // A block holding 1.0 (so a = 1) and every level: exact round trip.
        let c = Nf4Codec::new(16, ScaleDType::F32).unwrap();
        let m = Matrix::new(1, 16, &NF4_LEVELS).unwrap();
        assert_eq!(c.decode(&c.encode(m).unwrap()).unwrap(), NF4_LEVELS);
    }
}
