//! The f32 CPU reference decoder: plain, parallel over output rows, and the
//! yardstick every faster path is measured against.

use rayon::prelude::*;

use super::{LlamaConfig, LlamaWeights, RopeLayout};
use crate::{Error, Result};

/// The input of which projections a hook sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Site {
    /// The normed input of q, k and v.
    Qkv,
    /// The attention output, input of o.
    O,
    /// The normed input of gate and up.
    GateUp,
    /// SiLU(gate)·up, input of down.
    Down,
}

impl Site {
    /// Every site, in decode order.
    pub const ALL: [Site; 4] = [Site::Qkv, Site::O, Site::GateUp, Site::Down];

    /// Short name: `qkv`, `o`, `gate_up`, `down`.
    pub fn name(self) -> &'static str {
        match self {
            Site::Qkv => "qkv",
            Site::O => "o",
            Site::GateUp => "gate_up",
            Site::Down => "down",
        }
    }
}

/// Sees (and may change) the input vector of each projection before it
/// runs: for recording activation statistics, calibration data, or
/// thresholding small activations to zero.
pub trait ActivationHook: Send {
    /// `x` is the input of the projections at `site` of block `layer`.
    fn on_input(&mut self, layer: usize, site: Site, x: &mut [f32]);
}

/// A LLaMA-family decoder on the CPU in f32, with its KV cache.
pub struct CpuLlama {
    cfg: LlamaConfig,
    w: LlamaWeights,
    hook: Option<Box<dyn ActivationHook>>,
    /// Per layer, `max_seq_len × kv_dim` keys and values.
    k_cache: Vec<Vec<f32>>,
    v_cache: Vec<Vec<f32>>,
}

/// y = W·x for row-major W `[rows, x.len()]`, rows in parallel.
fn matvec(w: &[f32], x: &[f32], y: &mut [f32]) {
    let cols = x.len();
    y.par_iter_mut()
        .enumerate()
        .with_min_len(16)
        .for_each(|(r, out)| {
            *out = w[r * cols..(r + 1) * cols]
                .iter()
                .zip(x)
                .map(|(a, b)| a * b)
                .sum();
        });
}

fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (ms + eps).sqrt();
    for ((o, v), g) in out.iter_mut().zip(x).zip(weight) {
        *o = g * (v * inv);
    }
}

/// Rotates each head of `x` (width `head_dim`) to position `pos`.
fn rope(x: &mut [f32], head_dim: usize, pos: usize, theta: f32, layout: RopeLayout) {
    let half = head_dim / 2;
    for head in x.chunks_exact_mut(head_dim) {
        for i in 0..half {
            let freq = theta.powf(-((2 * i) as f32) / head_dim as f32);
            let (sin, cos) = (pos as f32 * freq).sin_cos();
            let (a, b) = match layout {
                RopeLayout::Interleaved => (2 * i, 2 * i + 1),
                RopeLayout::HalfSplit => (i, i + half),
            };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0 * cos - x1 * sin;
            head[b] = x0 * sin + x1 * cos;
        }
    }
}

impl std::fmt::Debug for CpuLlama {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuLlama")
            .field("cfg", &self.cfg)
            .field("hook", &self.hook.is_some())
            .finish_non_exhaustive()
    }
}

impl super::Decoder for CpuLlama {
    fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    fn forward(&mut self, token: u32, pos: usize) -> Result<Vec<f32>> {
        CpuLlama::forward(self, token, pos)
    }
}

impl CpuLlama {
    /// A decoder over `w`, with an empty KV cache of `cfg.max_seq_len` positions.
    pub fn new(cfg: LlamaConfig, w: LlamaWeights) -> Self {
        let cache = vec![vec![0.0; cfg.max_seq_len * cfg.kv_dim()]; cfg.n_layers];
        Self {
            k_cache: cache.clone(),
            v_cache: cache,
            cfg,
            w,
            hook: None,
        }
    }

    /// Installs `hook` (or removes it with `None`) and returns the previous
    /// one. Without a hook, decoding pays nothing for the feature.
    pub fn set_hook(
        &mut self,
        hook: Option<Box<dyn ActivationHook>>,
    ) -> Option<Box<dyn ActivationHook>> {
        std::mem::replace(&mut self.hook, hook)
    }

    /// The weights this decoder runs.
    pub fn weights(&self) -> &LlamaWeights {
        &self.w
    }

    /// The configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// Runs `token` at position `pos` (all earlier positions must have run)
    /// and returns the logits of the next token.
    pub fn forward(&mut self, token: u32, pos: usize) -> Result<Vec<f32>> {
        let c = &self.cfg;
        let (d, hd, kvd) = (c.dim, c.head_dim(), c.kv_dim());
        if token as usize >= c.vocab_size {
            return Err(Error::Request(format!(
                "token id {token} is outside the vocabulary of {}",
                c.vocab_size
            )));
        }
        if pos >= c.max_seq_len {
            return Err(Error::Request(format!(
                "position {pos} is past the context of {} tokens",
                c.max_seq_len
            )));
        }
        let mut x = self.w.embed[token as usize * d..(token as usize + 1) * d].to_vec();
        let mut xb = vec![0.0; d];
        let (mut q, mut k, mut v) = (vec![0.0; d], vec![0.0; kvd], vec![0.0; kvd]);
        let mut att_out = vec![0.0; d];
        let mut proj = vec![0.0; d];
        let (mut gate, mut up) = (vec![0.0; c.hidden_dim], vec![0.0; c.hidden_dim]);
        let group = c.n_heads / c.n_kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        for (l, lw) in self.w.layers.iter().enumerate() {
            rms_norm(&x, &lw.attn_norm, c.rms_eps, &mut xb);
            if let Some(h) = self.hook.as_mut() {
                h.on_input(l, Site::Qkv, &mut xb);
            }
            matvec(&lw.wq, &xb, &mut q);
            matvec(&lw.wk, &xb, &mut k);
            matvec(&lw.wv, &xb, &mut v);
            for (out, bias) in [(&mut q, &lw.bq), (&mut k, &lw.bk), (&mut v, &lw.bv)] {
                if let Some(b) = bias {
                    out.iter_mut().zip(b).for_each(|(o, b)| *o += b);
                }
            }
            rope(&mut q, hd, pos, c.rope_theta, c.rope);
            rope(&mut k, hd, pos, c.rope_theta, c.rope);
            self.k_cache[l][pos * kvd..(pos + 1) * kvd].copy_from_slice(&k);
            self.v_cache[l][pos * kvd..(pos + 1) * kvd].copy_from_slice(&v);
            let (kc, vc) = (&self.k_cache[l], &self.v_cache[l]);
            att_out.par_chunks_mut(hd).enumerate().for_each(|(h, out)| {
                let qh = &q[h * hd..(h + 1) * hd];
                let kvh = h / group;
                let mut scores: Vec<f32> = (0..=pos)
                    .map(|t| {
                        let kt = &kc[t * kvd + kvh * hd..t * kvd + (kvh + 1) * hd];
                        qh.iter().zip(kt).map(|(a, b)| a * b).sum::<f32>() * scale
                    })
                    .collect();
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0;
                for s in &mut scores {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                out.fill(0.0);
                for (t, s) in scores.iter().enumerate() {
                    let vt = &vc[t * kvd + kvh * hd..t * kvd + (kvh + 1) * hd];
                    for (o, vv) in out.iter_mut().zip(vt) {
                        *o += s / sum * vv;
                    }
                }
            });
            if let Some(h) = self.hook.as_mut() {
                h.on_input(l, Site::O, &mut att_out);
            }
            matvec(&lw.wo, &att_out, &mut proj);
            for (a, b) in x.iter_mut().zip(&proj) {
                *a += b;
            }
            rms_norm(&x, &lw.ffn_norm, c.rms_eps, &mut xb);
            if let Some(h) = self.hook.as_mut() {
                h.on_input(l, Site::GateUp, &mut xb);
            }
            matvec(&lw.w_gate, &xb, &mut gate);
            matvec(&lw.w_up, &xb, &mut up);
            for (g, u) in gate.iter_mut().zip(&up) {
                *g = *g / (1.0 + (-*g).exp()) * u;
            }
            if let Some(h) = self.hook.as_mut() {
                h.on_input(l, Site::Down, &mut gate);
            }
            matvec(&lw.w_down, &gate, &mut proj);
            for (a, b) in x.iter_mut().zip(&proj) {
                *a += b;
            }
        }
        rms_norm(&x.clone(), &self.w.norm, c.rms_eps, &mut x);
        let mut logits = vec![0.0; c.vocab_size];
        matvec(
            self.w.classifier.as_ref().unwrap_or(&self.w.embed),
            &x,
            &mut logits,
        );
        Ok(logits)
    }
}
