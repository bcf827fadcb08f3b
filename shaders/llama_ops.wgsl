// The small kernels of a LLaMA-family decode step, around the GEMVs:
// RMSNorm (with the residual add fused in), bias + RoPE +
// KV-cache write, attention over the cache, SwiGLU, and argmax.
//
// Shapes are override constants, so one pipeline serves every layer of a
// model. The position and token of the step are in a uniform `Step` that the
// host rewrites before each token's submission.

struct Step {
    pos: u32,
    token: u32,
    _pad0: u32,
    _pad1: u32,
}

// Width of the model.
override DIM: u32 = 64u;

// -------------------------------------------------------------- rms_norm --

override NORM_EPS: f32 = 1e-5;
const NORM_WG: u32 = 256u;

var<workgroup> norm_partial: array<f32, NORM_WG>;

// Sum of `v` over the workgroup, returned to every thread.
fn norm_reduce(lid: u32, v: f32) -> f32 {
    norm_partial[lid] = v;
    workgroupBarrier();
    for (var s = NORM_WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            norm_partial[lid] = norm_partial[lid] + norm_partial[lid + s];
        }
        workgroupBarrier();
    }
    let total = norm_partial[0];
    workgroupBarrier();
    return total;
}

@group(0) @binding(0) var<storage, read> norm_x: array<f32>;
@group(0) @binding(1) var<storage, read> norm_weight: array<f32>;
@group(0) @binding(2) var<storage, read_write> norm_out: array<f32>;

// out = x / rms(x) * weight, in one workgroup.
@compute @workgroup_size(256)
fn rms_norm(@builtin(local_invocation_index) lid: u32) {
    var ss = 0.0;
    for (var i = lid; i < DIM; i += NORM_WG) {
        let v = norm_x[i];
        ss += v * v;
    }
    let inv = inverseSqrt(norm_reduce(lid, ss) / f32(DIM) + NORM_EPS);
    for (var i = lid; i < DIM; i += NORM_WG) {
        norm_out[i] = norm_weight[i] * (norm_x[i] * inv);
    }
}

@group(0) @binding(0) var<storage, read_write> add_x: array<f32>;
@group(0) @binding(1) var<storage, read> add_y: array<f32>;
@group(0) @binding(2) var<storage, read> add_weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> add_out: array<f32>;

// x += y (the residual), then out = x / rms(x) * weight, in one workgroup.
@compute @workgroup_size(256)
fn add_rms_norm(@builtin(local_invocation_index) lid: u32) {
    var ss = 0.0;
    for (var i = lid; i < DIM; i += NORM_WG) {
        let v = add_x[i] + add_y[i];
        add_x[i] = v;
        ss += v * v;
    }
    let inv = inverseSqrt(norm_reduce(lid, ss) / f32(DIM) + NORM_EPS);
    for (var i = lid; i < DIM; i += NORM_WG) {
        add_out[i] = add_weight[i] * (add_x[i] * inv);
    }
}

// ------------------------------------------------------------- qkv_rope --

override N_HEADS: u32 = 8u;
override N_KV_HEADS: u32 = 8u;
override HEAD_DIM: u32 = 8u;
// 1: dimensions (i, i + HEAD_DIM/2) rotate together (Hugging Face);
// 0: dimensions (2i, 2i + 1) do (llama2.c, GGUF).
override ROPE_HALF: u32 = 0u;
// 1: add the q/k/v biases before rotating.
override HAS_BIAS: u32 = 0u;

@group(0) @binding(0) var<uniform> rope_step: Step;
// q, k, v of this token, concatenated: N_HEADS·HEAD_DIM + 2·N_KV_HEADS·HEAD_DIM.
@group(0) @binding(1) var<storage, read> rope_qkv: array<f32>;
// The biases in the same order (a dummy when HAS_BIAS is 0).
@group(0) @binding(2) var<storage, read> rope_bias: array<f32>;
// cos and sin of position p and pair i at [2·(p·HEAD_DIM/2 + i)], computed
// on the host in f64.
@group(0) @binding(3) var<storage, read> rope_table: array<f32>;
@group(0) @binding(4) var<storage, read_write> rope_q: array<f32>;
// Context × KV width, position-major.
@group(0) @binding(5) var<storage, read_write> rope_k_cache: array<f32>;
@group(0) @binding(6) var<storage, read_write> rope_v_cache: array<f32>;

fn qkv_at(i: u32) -> f32 {
    var v = rope_qkv[i];
    if (HAS_BIAS == 1u) {
        v += rope_bias[i];
    }
    return v;
}

// One thread per rotated pair of q and k, and per value of v.
@compute @workgroup_size(64)
fn qkv_rope(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let t = (wid.x + wid.y * nwg.x) * 64u + lid;
    let half = HEAD_DIM / 2u;
    let q_dim = N_HEADS * HEAD_DIM;
    let kv_dim = N_KV_HEADS * HEAD_DIM;
    let q_pairs = N_HEADS * half;
    let k_pairs = N_KV_HEADS * half;
    let pos = rope_step.pos;
    if (t < q_pairs + k_pairs) {
        let is_k = t >= q_pairs;
        let p = select(t, t - q_pairs, is_k);
        let head = p / half;
        let i = p % half;
        var a = head * HEAD_DIM + 2u * i;
        var b = a + 1u;
        if (ROPE_HALF == 1u) {
            a = head * HEAD_DIM + i;
            b = a + half;
        }
        let off = select(0u, q_dim, is_k);
        let x0 = qkv_at(off + a);
        let x1 = qkv_at(off + b);
        let cs = 2u * (pos * half + i);
        let c = rope_table[cs];
        let s = rope_table[cs + 1u];
        let y0 = x0 * c - x1 * s;
        let y1 = x0 * s + x1 * c;
        if (is_k) {
            rope_k_cache[pos * kv_dim + a] = y0;
            rope_k_cache[pos * kv_dim + b] = y1;
        } else {
            rope_q[a] = y0;
            rope_q[b] = y1;
        }
    } else if (t < q_pairs + k_pairs + kv_dim) {
        let j = t - q_pairs - k_pairs;
        rope_v_cache[pos * kv_dim + j] = qkv_at(q_dim + kv_dim + j);
    }
}

// ------------------------------------------------------------ attention --

// Threads per attention workgroup (one workgroup per query head); HEAD_DIM
// must divide it.
const ATT_WG: u32 = 256u;

@group(0) @binding(0) var<uniform> att_step: Step;
@group(0) @binding(1) var<storage, read> att_q: array<f32>;
@group(0) @binding(2) var<storage, read> att_k_cache: array<f32>;
@group(0) @binding(3) var<storage, read> att_v_cache: array<f32>;
@group(0) @binding(4) var<storage, read_write> att_out: array<f32>;

var<workgroup> att_qs: array<f32, ATT_WG>;
var<workgroup> att_p: array<f32, ATT_WG>;
var<workgroup> att_red: array<f32, ATT_WG>;

fn att_reduce_max(lid: u32, v: f32) -> f32 {
    att_red[lid] = v;
    workgroupBarrier();
    for (var s = ATT_WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            att_red[lid] = max(att_red[lid], att_red[lid + s]);
        }
        workgroupBarrier();
    }
    let r = att_red[0];
    workgroupBarrier();
    return r;
}

fn att_reduce_sum(lid: u32, v: f32) -> f32 {
    att_red[lid] = v;
    workgroupBarrier();
    for (var s = ATT_WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            att_red[lid] = att_red[lid] + att_red[lid + s];
        }
        workgroupBarrier();
    }
    let r = att_red[0];
    workgroupBarrier();
    return r;
}

// softmax(q·Kᵀ/√d)·V for one query head over positions 0..=pos, in chunks
// of ATT_WG positions with a running max (online softmax). Thread `lid`
// scores position chunk + lid, then accumulates output dimension
// lid % HEAD_DIM over every (ATT_WG / HEAD_DIM)-th position of the chunk.
@compute @workgroup_size(256)
fn attention(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let h = wid.x;
    let kv_dim = N_KV_HEADS * HEAD_DIM;
    let kvh = h / (N_HEADS / N_KV_HEADS);
    let head_off = kvh * HEAD_DIM;
    let scale = inverseSqrt(f32(HEAD_DIM));
    if (lid < HEAD_DIM) {
        att_qs[lid] = att_q[h * HEAD_DIM + lid] * scale;
    }
    workgroupBarrier();
    let n = att_step.pos + 1u;
    let d = lid % HEAD_DIM;
    let lane = lid / HEAD_DIM;
    let lanes = ATT_WG / HEAD_DIM;
    var m = -3.0e38;
    var l = 0.0;
    var acc = 0.0;
    for (var c = 0u; c < n; c += ATT_WG) {
        let t = c + lid;
        var s = -3.0e38;
        if (t < n) {
            let kb = t * kv_dim + head_off;
            var dot = 0.0;
            for (var i = 0u; i < HEAD_DIM; i++) {
                dot += att_qs[i] * att_k_cache[kb + i];
            }
            s = dot;
        }
        let new_m = max(m, att_reduce_max(lid, s));
        var p = 0.0;
        if (t < n) {
            p = exp(s - new_m);
        }
        att_p[lid] = p;
        let rescale = exp(m - new_m);
        l = l * rescale + att_reduce_sum(lid, p);
        m = new_m;
        acc *= rescale;
        let len = min(ATT_WG, n - c);
        for (var j = lane; j < len; j += lanes) {
            acc += att_p[j] * att_v_cache[(c + j) * kv_dim + head_off + d];
        }
        workgroupBarrier();
    }
    att_red[lid] = acc;
    workgroupBarrier();
    if (lid < HEAD_DIM) {
        var total = 0.0;
        for (var g = 0u; g < lanes; g++) {
            total += att_red[g * HEAD_DIM + lid];
        }
        att_out[h * HEAD_DIM + lid] = total / l;
    }
}

// --------------------------------------------------------------- swiglu --

// SwiGLU hidden width.
override HIDDEN: u32 = 192u;

@group(0) @binding(0) var<storage, read> swiglu_gate_up: array<f32>;
@group(0) @binding(1) var<storage, read_write> swiglu_out: array<f32>;

// out[i] = silu(gate[i]) · up[i], with gate and up concatenated.
@compute @workgroup_size(256)
fn swiglu(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (i >= HIDDEN) {
        return;
    }
    let g = swiglu_gate_up[i];
    swiglu_out[i] = g / (1.0 + exp(-g)) * swiglu_gate_up[HIDDEN + i];
}

// --------------------------------------------------------------- argmax --

// Logits to search.
override VOCAB: u32 = 512u;
const ARGMAX_WG: u32 = 256u;

@group(0) @binding(0) var<storage, read> argmax_logits: array<f32>;
@group(0) @binding(1) var<storage, read_write> argmax_out: array<u32>;

var<workgroup> argmax_val: array<f32, ARGMAX_WG>;
var<workgroup> argmax_idx: array<u32, ARGMAX_WG>;

// Index of the largest logit (the lowest index on ties; NaN never wins), in
// one workgroup.
@compute @workgroup_size(256)
fn argmax(@builtin(local_invocation_index) lid: u32) {
    var best = -3.4e38;
    var best_i = 0xffffffffu;
    for (var i = lid; i < VOCAB; i += ARGMAX_WG) {
        let v = argmax_logits[i];
        if (v > best || (best_i == 0xffffffffu && v == v)) {
            best = v;
            best_i = i;
        }
    }
    argmax_val[lid] = best;
    argmax_idx[lid] = best_i;
    workgroupBarrier();
    for (var s = ARGMAX_WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            let v = argmax_val[lid + s];
            let j = argmax_idx[lid + s];
            let better = v > argmax_val[lid] || (v == argmax_val[lid] && j < argmax_idx[lid]);
            if (j != 0xffffffffu && (argmax_idx[lid] == 0xffffffffu || better)) {
                argmax_val[lid] = v;
                argmax_idx[lid] = j;
            }
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        argmax_out[0] = select(argmax_idx[0], 0u, argmax_idx[0] == 0xffffffffu);
    }
}
