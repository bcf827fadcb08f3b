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

// ------------------------------------------------------------ attention --

override N_HEADS: u32 = 8u;
override N_KV_HEADS: u32 = 8u;
override HEAD_DIM: u32 = 8u;
// 1: dimensions (i, i + HEAD_DIM/2) rotate together (Hugging Face);
// 0: dimensions (2i, 2i + 1) do (llama2.c, GGUF).
override ROPE_HALF: u32 = 0u;
// 1: add the q/k/v biases before rotating.
override HAS_BIAS: u32 = 0u;

// Threads per workgroup, positions scored per chunk, and the most query
// values (heads per KV head × HEAD_DIM) a workgroup stages.
const ATT_WG: u32 = 256u;
const ATT_CHUNK: u32 = 256u;
const ATT_MAX_GROUP: u32 = 8u;
const ATT_MAX_Q: u32 = 1024u;

@group(0) @binding(0) var<uniform> att_step: Step;
// q, k, v of this token, concatenated: N_HEADS·HEAD_DIM + 2·N_KV_HEADS·HEAD_DIM.
@group(0) @binding(1) var<storage, read> att_qkv: array<f32>;
// The biases in the same order (a dummy when HAS_BIAS is 0).
@group(0) @binding(2) var<storage, read> att_bias: array<f32>;
// cos and sin of position p and pair i at [2·(p·HEAD_DIM/2 + i)], computed
// on the host in f64.
@group(0) @binding(3) var<storage, read> att_rope: array<f32>;
// Context × KV width, position-major, as vec4 (HEAD_DIM % 4 == 0).
@group(0) @binding(4) var<storage, read_write> att_k_cache: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> att_v_cache: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> att_out: array<f32>;

// The group's rotated queries, pre-scaled by 1/√d.
var<workgroup> att_qs: array<f32, ATT_MAX_Q>;
// Scores, then probabilities, of the chunk: [head][position].
var<workgroup> att_p: array<f32, 2048>;
// Per head: running max, running sum, and this chunk's rescale factor.
var<workgroup> att_m: array<f32, ATT_MAX_GROUP>;
var<workgroup> att_l: array<f32, ATT_MAX_GROUP>;
var<workgroup> att_r: array<f32, ATT_MAX_GROUP>;
var<workgroup> att_red: array<f32, ATT_WG>;

fn att_in(i: u32) -> f32 {
    var v = att_qkv[i];
    if (HAS_BIAS == 1u) {
        v += att_bias[i];
    }
    return v;
}

// Rotates pair `i` of the head starting at `base` of the q/k/v vector;
// returns the rotated pair and its two offsets within the head.
fn att_rotate(base: u32, i: u32, pos: u32) -> vec4<f32> {
    let half = HEAD_DIM / 2u;
    var a = 2u * i;
    var b = a + 1u;
    if (ROPE_HALF == 1u) {
        a = i;
        b = i + half;
    }
    let x0 = att_in(base + a);
    let x1 = att_in(base + b);
    let cs = 2u * (pos * half + i);
    let c = att_rope[cs];
    let s = att_rope[cs + 1u];
    return vec4<f32>(x0 * c - x1 * s, x0 * s + x1 * c, f32(a), f32(b));
}

// One workgroup per KV head: adds the biases, rotates this token's k (and
// the group's q) to its position, writes k and v into the cache, then
// computes softmax(q·Kᵀ/√d)·V over positions 0..=pos for every query head
// sharing this KV head, reading K and V once for the group. Positions go
// in chunks of ATT_CHUNK with a running max per head (online softmax).
@compute @workgroup_size(256)
fn attention(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let kvh = wid.x;
    let group = N_HEADS / N_KV_HEADS;
    let half = HEAD_DIM / 2u;
    let q_dim = N_HEADS * HEAD_DIM;
    let kv_dim = N_KV_HEADS * HEAD_DIM;
    let kv4 = kv_dim / 4u;
    let hd4 = HEAD_DIM / 4u;
    let pos = att_step.pos;
    let scale = inverseSqrt(f32(HEAD_DIM));

    // Bias + RoPE + cache write for this KV head; the group's queries.
    for (var t = lid; t < (group + 1u) * half; t += ATT_WG) {
        let hh = t / half;
        let i = t % half;
        if (hh < group) {
            let head = kvh * group + hh;
            let r = att_rotate(head * HEAD_DIM, i, pos);
            att_qs[hh * HEAD_DIM + u32(r.z)] = r.x * scale;
            att_qs[hh * HEAD_DIM + u32(r.w)] = r.y * scale;
        } else {
            let r = att_rotate(q_dim + kvh * HEAD_DIM, i, pos);
            let a = pos * kv_dim + kvh * HEAD_DIM + u32(r.z);
            let b = pos * kv_dim + kvh * HEAD_DIM + u32(r.w);
            att_k_cache[a / 4u][a % 4u] = r.x;
            att_k_cache[b / 4u][b % 4u] = r.y;
        }
    }
    for (var j = lid; j < HEAD_DIM; j += ATT_WG) {
        let at = pos * kv_dim + kvh * HEAD_DIM + j;
        att_v_cache[at / 4u][at % 4u] = att_in(q_dim + kv_dim + kvh * HEAD_DIM + j);
    }
    if (lid < group) {
        att_m[lid] = -3.0e38;
        att_l[lid] = 0.0;
    }
    storageBarrier();
    workgroupBarrier();

    let n = pos + 1u;
    // Output dimension and position lane of this thread in the V pass.
    let d = lid % HEAD_DIM;
    let lane = lid / HEAD_DIM;
    let lanes = ATT_WG / HEAD_DIM;
    var acc: array<f32, ATT_MAX_GROUP>;
    for (var g = 0u; g < ATT_MAX_GROUP; g++) {
        acc[g] = 0.0;
    }
    for (var c = 0u; c < n; c += ATT_CHUNK) {
        let len = min(ATT_CHUNK, n - c);
        // Scores: a thread per position, K read once for the group.
        if (lid < len) {
            let kb = (c + lid) * kv4 + kvh * hd4;
            var dots: array<f32, ATT_MAX_GROUP>;
            for (var g = 0u; g < ATT_MAX_GROUP; g++) {
                dots[g] = 0.0;
            }
            for (var i = 0u; i < hd4; i++) {
                let k = att_k_cache[kb + i];
                for (var g = 0u; g < group; g++) {
                    let qb = g * HEAD_DIM + 4u * i;
                    dots[g] += dot(k, vec4<f32>(att_qs[qb], att_qs[qb + 1u], att_qs[qb + 2u], att_qs[qb + 3u]));
                }
            }
            for (var g = 0u; g < group; g++) {
                att_p[g * ATT_CHUNK + lid] = dots[g];
            }
        }
        workgroupBarrier();
        // Per head: the chunk's max, the rescale of what came before.
        if (lid < group) {
            var cm = -3.0e38;
            for (var t = 0u; t < len; t++) {
                cm = max(cm, att_p[lid * ATT_CHUNK + t]);
            }
            let m_new = max(att_m[lid], cm);
            att_r[lid] = exp(att_m[lid] - m_new);
            att_m[lid] = m_new;
        }
        workgroupBarrier();
        if (lid < len) {
            for (var g = 0u; g < group; g++) {
                att_p[g * ATT_CHUNK + lid] = exp(att_p[g * ATT_CHUNK + lid] - att_m[g]);
            }
        }
        workgroupBarrier();
        if (lid < group) {
            var sum = 0.0;
            for (var t = 0u; t < len; t++) {
                sum += att_p[lid * ATT_CHUNK + t];
            }
            att_l[lid] = att_l[lid] * att_r[lid] + sum;
        }
        // V: thread (lane, d) adds every lanes-th position of the chunk to
        // output dimension d of every head in the group.
        for (var g = 0u; g < group; g++) {
            acc[g] *= att_r[g];
        }
        for (var t = lane; t < len; t += lanes) {
            let at = (c + t) * kv_dim + kvh * HEAD_DIM + d;
            let v = att_v_cache[at / 4u][at % 4u];
            for (var g = 0u; g < group; g++) {
                acc[g] += att_p[g * ATT_CHUNK + t] * v;
            }
        }
        workgroupBarrier();
    }
    // Add the lanes' partial sums.
    for (var g = 0u; g < group; g++) {
        att_red[lid] = acc[g];
        workgroupBarrier();
        if (lid < HEAD_DIM) {
            var total = 0.0;
            for (var k = 0u; k < lanes; k++) {
                total += att_red[k * HEAD_DIM + lid];
            }
            att_out[(kvh * group + g) * HEAD_DIM + lid] = total / att_l[g];
        }
        workgroupBarrier();
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
