//! A Deja Vu-style predictor of which MLP rows will be active, run before
//! gate and up (research notes §8.1.4).
//!
//! Per layer, a linear map from the MLP input x (the normed input of gate
//! and up) to the indicator *|SiLU(gate)·up| > τ* of every hidden unit is
//! fitted by ridge least squares on recorded pairs, then truncated to rank
//! R by SVD (membound's `svd` codec, f16 factors), so it costs R·(dim +
//! hidden) weights instead of 3·dim·hidden. τ is the layer's `target`
//! quantile of |SiLU(gate)·up| on the training tokens. A unit is predicted
//! active when its score exceeds a per-layer cut-off chosen on the training
//! tokens to keep `recall` of the truly active units.
//!
//! At evaluation ([`PredictHook`]) the prediction is made from x, and the
//! down input is zeroed wherever the unit was predicted inactive, which is
//! exactly what skipping those rows of gate and up (and columns of down)
//! computes. Recall and precision are counted in situ against the true
//! labels of the same forward pass.

use std::sync::{Arc, Mutex};

use membound_sparse::threshold_for_sparsity;
use rayon::prelude::*;
use serde::Serialize;

use super::{lock, teacher_force};
use crate::codec::{Matrix, codec_from_spec, decode};
use crate::model::{ActivationHook, CpuLlama, LlamaConfig, Site};
use crate::{Error, Result};

/// How the predictor is fitted.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct PredictOptions {
    /// Rank of each layer's map.
    pub rank: usize,
    /// Share of hidden units labelled inactive (defines τ per layer).
    pub target: f64,
    /// Recall of active units the cut-off keeps on the training tokens.
    pub recall: f64,
    /// Ridge strength, relative to the mean diagonal of XᵀX.
    pub ridge: f64,
}

impl Default for PredictOptions {
    fn default() -> Self {
        Self {
            rank: 64,
            target: 0.5,
            recall: 0.95,
            ridge: 1e-2,
        }
    }
}

/// One layer's fitted predictor.
#[derive(Clone, Debug)]
pub struct LayerPredictor {
    /// The rank-R map as a dense `[hidden, dim]` matrix (its exact decoding).
    pub w: Vec<f32>,
    /// `[hidden]`.
    pub bias: Vec<f32>,
    /// Units with score > cut-off are predicted active.
    pub cutoff: f32,
    /// The activity threshold τ of this layer.
    pub tau: f32,
}

/// Every layer's predictor.
#[derive(Clone, Debug)]
pub struct Predictor {
    /// Per layer.
    pub layers: Vec<LayerPredictor>,
    /// The options it was fitted with.
    pub opts: PredictOptions,
    dim: usize,
    hidden: usize,
}

/// Recorded (MLP input, down input) pairs per layer.
struct Pairs {
    x: Vec<Vec<f32>>,
    z: Vec<Vec<f32>>,
}

struct PairHook(Arc<Mutex<Pairs>>);

impl ActivationHook for PairHook {
    fn on_input(&mut self, layer: usize, site: Site, x: &mut [f32]) {
        let mut p = lock(&self.0);
        match site {
            Site::GateUp => p.x[layer].extend_from_slice(x),
            Site::Down => p.z[layer].extend_from_slice(x),
            _ => {}
        }
    }
}

/// Solves `g · b = c` for symmetric positive definite `g` (`n × n`) and
/// `m` right-hand sides (`c` is `n × m`, row-major), by Cholesky in f64.
fn solve_spd(g: &mut [f64], n: usize, c: &[f64], m: usize) -> Result<Vec<f64>> {
    for j in 0..n {
        let mut d = g[j * n + j];
        for k in 0..j {
            d -= g[j * n + k] * g[j * n + k];
        }
        if d <= 0.0 || !d.is_finite() {
            return Err(Error::Request(
                "predictor fit: the normal equations are not positive definite".into(),
            ));
        }
        let d = d.sqrt();
        g[j * n + j] = d;
        for i in j + 1..n {
            let mut s = g[i * n + j];
            for k in 0..j {
                s -= g[i * n + k] * g[j * n + k];
            }
            g[i * n + j] = s / d;
        }
    }
    let l = &*g;
    let cols: Vec<Vec<f64>> = (0..m)
        .into_par_iter()
        .map(|col| {
            let mut y: Vec<f64> = (0..n).map(|i| c[i * m + col]).collect();
            for i in 0..n {
                let mut s = y[i];
                for k in 0..i {
                    s -= l[i * n + k] * y[k];
                }
                y[i] = s / l[i * n + i];
            }
            for i in (0..n).rev() {
                let mut s = y[i];
                for k in i + 1..n {
                    s -= l[k * n + i] * y[k];
                }
                y[i] = s / l[i * n + i];
            }
            y
        })
        .collect();
    let mut b = vec![0.0; n * m];
    for (col, y) in cols.iter().enumerate() {
        for i in 0..n {
            b[i * m + col] = y[i];
        }
    }
    Ok(b)
}

fn score(w: &[f32], bias: &[f32], x: &[f32], out: &mut [f32]) {
    let d = x.len();
    out.par_iter_mut().enumerate().for_each(|(j, o)| {
        *o = bias[j]
            + w[j * d..(j + 1) * d]
                .iter()
                .zip(x)
                .map(|(a, b)| a * b)
                .sum::<f32>();
    });
}

impl Predictor {
    /// Records (x, SiLU(gate)·up) on `tokens` and fits every layer.
    pub fn fit(
        model: &mut CpuLlama,
        tokens: &[u32],
        window: usize,
        opts: PredictOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        if !(0.0..1.0).contains(&opts.target) || !(0.0..=1.0).contains(&opts.recall) {
            return Err(Error::Request(format!(
                "predictor: target {} must be in [0, 1) and recall {} in [0, 1]",
                opts.target, opts.recall
            )));
        }
        if opts.rank == 0 {
            return Err(Error::Request("predictor rank must be at least 1".into()));
        }
        let cfg: LlamaConfig = model.config().clone();
        let (d, h, nl) = (cfg.dim, cfg.hidden_dim, cfg.n_layers);
        let pairs = Arc::new(Mutex::new(Pairs {
            x: vec![Vec::new(); nl],
            z: vec![Vec::new(); nl],
        }));
        let old = model.set_hook(Some(Box::new(PairHook(Arc::clone(&pairs)))));
        let r = teacher_force(model, tokens, window, &mut |_, _| {}, &mut |i, n| {
            progress(i, n + nl);
        });
        model.set_hook(old);
        r?;
        let p = std::mem::replace(
            &mut *lock(&pairs),
            Pairs {
                x: Vec::new(),
                z: Vec::new(),
            },
        );
        let n = tokens.len();
        let svd = codec_from_spec(&format!("svd:rank={},method=exact", opts.rank))?;
        let mut layers = Vec::with_capacity(nl);
        for l in 0..nl {
            let (x, z) = (&p.x[l], &p.z[l]);
            let tau = threshold_for_sparsity(z, opts.target)
                .map_err(|e| Error::Request(format!("layer {l}: {e}")))?;
            // Normal equations with a bias column: G = XᵀX, C = XᵀY.
            let na = d + 1;
            let xa = |t: usize, i: usize| if i == d { 1.0 } else { f64::from(x[t * d + i]) };
            let mut g: Vec<f64> = (0..na * na)
                .into_par_iter()
                .map(|ij| {
                    let (i, j) = (ij / na, ij % na);
                    (0..n).map(|t| xa(t, i) * xa(t, j)).sum()
                })
                .collect();
            let c: Vec<f64> = (0..na)
                .into_par_iter()
                .flat_map_iter(|i| {
                    let mut row = vec![0.0; h];
                    for t in 0..n {
                        let xi = xa(t, i);
                        for (r, zv) in row.iter_mut().zip(&z[t * h..(t + 1) * h]) {
                            if zv.abs() > tau {
                                *r += xi;
                            }
                        }
                    }
                    row
                })
                .collect();
            let mean_diag = (0..d).map(|i| g[i * na + i]).sum::<f64>() / d as f64;
            for i in 0..d {
                g[i * na + i] += opts.ridge * mean_diag;
            }
            g[d * na + d] += 1e-9 * n as f64;
            let b = solve_spd(&mut g, na, &c, h)?;
            // Weights as [hidden, dim], then rank-R.
            let mut w = vec![0f32; h * d];
            for j in 0..h {
                for i in 0..d {
                    w[j * d + i] = b[i * h + j] as f32;
                }
            }
            let bias: Vec<f32> = (0..h).map(|j| b[d * h + j] as f32).collect();
            let enc = svd.encode(Matrix::new(h, d, &w)?)?;
            let w = decode(&enc)?;
            // Cut-off: keep `recall` of the training positives.
            let mut pos_scores = Vec::new();
            let mut s = vec![0f32; h];
            for t in 0..n {
                score(&w, &bias, &x[t * d..(t + 1) * d], &mut s);
                for (sv, zv) in s.iter().zip(&z[t * h..(t + 1) * h]) {
                    if zv.abs() > tau {
                        pos_scores.push(*sv);
                    }
                }
            }
            pos_scores.sort_by(f32::total_cmp);
            let k = ((1.0 - opts.recall) * pos_scores.len() as f64).floor() as usize;
            // Strictly below the k-th positive score: at least `recall` kept.
            let cutoff = if k == 0 || pos_scores.is_empty() {
                f32::NEG_INFINITY
            } else {
                pos_scores[k - 1]
            };
            layers.push(LayerPredictor {
                w,
                bias,
                cutoff,
                tau,
            });
            progress(n + l + 1, n + nl);
        }
        Ok(Self {
            layers,
            opts,
            dim: d,
            hidden: h,
        })
    }

    /// Weights the predictor reads per token: R·(dim + hidden) per layer.
    pub fn weights_per_token(&self) -> usize {
        self.layers.len() * self.opts.rank.min(self.dim).min(self.hidden) * (self.dim + self.hidden)
    }
}

/// Confusion counts of one layer.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Confusion {
    /// Active and predicted active.
    pub tp: u64,
    /// Inactive but predicted active.
    pub fp: u64,
    /// Active but predicted inactive (skipped: the error).
    pub fn_: u64,
    /// Inactive and predicted inactive.
    pub tn: u64,
}

impl Confusion {
    /// tp / (tp + fn).
    pub fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }
    /// tp / (tp + fp).
    pub fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }
    /// Share predicted inactive (rows of gate/up skipped).
    pub fn skipped(&self) -> f64 {
        ratio(self.fn_ + self.tn, self.tp + self.fp + self.fn_ + self.tn)
    }
    /// Adds another's counts.
    pub fn add(&mut self, o: &Confusion) {
        self.tp += o.tp;
        self.fp += o.fp;
        self.fn_ += o.fn_;
        self.tn += o.tn;
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// Predicts from each layer's MLP input which units are active and zeroes
/// the down input of the others; counts [`Confusion`] per layer.
pub struct PredictHook {
    p: Arc<Predictor>,
    mask: Vec<bool>,
    scores: Vec<f32>,
    counts: Arc<Mutex<Vec<Confusion>>>,
}

impl PredictHook {
    /// A hook running `p`.
    pub fn new(p: Arc<Predictor>) -> Self {
        let (h, nl) = (p.hidden, p.layers.len());
        Self {
            p,
            mask: vec![true; h],
            scores: vec![0.0; h],
            counts: Arc::new(Mutex::new(vec![Confusion::default(); nl])),
        }
    }

    /// The shared per-layer counts.
    pub fn counts(&self) -> Arc<Mutex<Vec<Confusion>>> {
        Arc::clone(&self.counts)
    }
}

impl ActivationHook for PredictHook {
    fn on_input(&mut self, layer: usize, site: Site, x: &mut [f32]) {
        let Some(lp) = self.p.layers.get(layer) else {
            return;
        };
        match site {
            Site::GateUp if x.len() == self.p.dim => {
                score(&lp.w, &lp.bias, x, &mut self.scores);
                for (m, s) in self.mask.iter_mut().zip(&self.scores) {
                    *m = *s > lp.cutoff;
                }
            }
            Site::Down if x.len() == self.p.hidden => {
                let mut c = Confusion::default();
                for (v, &m) in x.iter_mut().zip(&self.mask) {
                    let active = v.abs() > lp.tau;
                    match (active, m) {
                        (true, true) => c.tp += 1,
                        (false, true) => c.fp += 1,
                        (true, false) => c.fn_ += 1,
                        (false, false) => c.tn += 1,
                    }
                    if !m {
                        *v = 0.0;
                    }
                }
                if let Some(t) = lock(&self.counts).get_mut(layer) {
                    t.add(&c);
                }
            }
            _ => {}
        }
    }
}
