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
// Values of x each thread holds in registers: DIM ≤ NORM_WG · NORM_PER.
const NORM_PER: u32 = 32u;

// out = x / rms(x) * weight, in one workgroup. Each thread loads its
// values once, all loads in flight together.
@compute @workgroup_size(256)
fn rms_norm(@builtin(local_invocation_index) lid: u32) {
    var vals: array<f32, NORM_PER>;
    var ss = 0.0;
    for (var k = 0u; k < NORM_PER; k++) {
        let i = lid + k * NORM_WG;
        var v = 0.0;
        if (i < DIM) {
            v = norm_x[i];
        }
        vals[k] = v;
        ss += v * v;
    }
    let inv = inverseSqrt(norm_reduce(lid, ss) / f32(DIM) + NORM_EPS);
    for (var k = 0u; k < NORM_PER; k++) {
        let i = lid + k * NORM_WG;
        if (i < DIM) {
            norm_out[i] = norm_weight[i] * (vals[k] * inv);
        }
    }
}

@group(0) @binding(0) var<storage, read_write> add_x: array<f32>;
@group(0) @binding(1) var<storage, read> add_y: array<f32>;
@group(0) @binding(2) var<storage, read> add_weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> add_out: array<f32>;

// x += y (the residual), then out = x / rms(x) * weight, in one workgroup.
@compute @workgroup_size(256)
fn add_rms_norm(@builtin(local_invocation_index) lid: u32) {
    var vals: array<f32, NORM_PER>;
    var ss = 0.0;
    for (var k = 0u; k < NORM_PER; k++) {
        let i = lid + k * NORM_WG;
        var v = 0.0;
        if (i < DIM) {
            v = add_x[i] + add_y[i];
            add_x[i] = v;
        }
        vals[k] = v;
        ss += v * v;
    }
    let inv = inverseSqrt(norm_reduce(lid, ss) / f32(DIM) + NORM_EPS);
    for (var k = 0u; k < NORM_PER; k++) {
        let i = lid + k * NORM_WG;
        if (i < DIM) {
            add_out[i] = add_weight[i] * (vals[k] * inv);
        }
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

// Threads per workgroup, and the most query values (heads per KV head ×
// HEAD_DIM) a workgroup stages.
const ATT_WG: u32 = 256u;
const ATT_MAX_GROUP: u32 = 8u;
const ATT_MAX_Q: u32 = 1024u;
// Threads sharing one position's dot products (each takes a quarter of the
// head when HEAD_DIM / 4 is a multiple of 4), and positions per chunk.
const ATT_SLICES: u32 = 4u;
const ATT_CHUNK: u32 = ATT_WG / ATT_SLICES;

@group(0) @binding(0) var<uniform> att_step: Step;
// q, k, v of this token, concatenated: N_HEADS·HEAD_DIM + 2·N_KV_HEADS·HEAD_DIM.
@group(0) @binding(1) var<storage, read> att_qkv: array<f32>;
// The biases in the same order (a dummy when HAS_BIAS is 0).
@group(0) @binding(2) var<storage, read> att_bias: array<f32>;
// cos and sin of position p and pair i at [2·(p·HEAD_DIM/2 + i)], computed
// on the host in f64.
@group(0) @binding(3) var<storage, read> att_rope: array<f32>;
// Bits per cached value: 32 (f32), 16 (f16), 8 or 4 (affine codes, a scale
// and minimum per KV_GROUP values of a head, as an f16 pair).
override KV_BITS: u32 = 32u;
override KV_GROUP: u32 = 8u;

// Context × KV width, position-major: the values' bits packed into u32
// words (one f32, two f16, four 8-bit or eight 4-bit codes a word), read
// as vec4 of words.
@group(0) @binding(4) var<storage, read_write> att_k_cache: array<vec4<u32>>;
@group(0) @binding(5) var<storage, read_write> att_v_cache: array<vec4<u32>>;
@group(0) @binding(6) var<storage, read_write> att_out: array<f32>;
// Per KV_GROUP values: (scale, minimum) as f16 (codes only; else a dummy).
@group(0) @binding(7) var<storage, read_write> att_k_params: array<u32>;
@group(0) @binding(8) var<storage, read_write> att_v_params: array<u32>;
// With ATT_SPLITS > 1, per (KV head, split, head of the group): the
// running max, the sum and the unnormalised output, HEAD_DIM + 2 values,
// for attention_combine (a dummy otherwise).
@group(0) @binding(9) var<storage, read_write> att_partials: array<f32>;

// Workgroups sharing one KV head's positions (flash-decoding style): each
// takes a contiguous range and attention_combine merges them.
override ATT_SPLITS: u32 = 1u;

// The group's rotated queries, pre-scaled by 1/√d.
var<workgroup> att_qs: array<vec4<f32>, ATT_MAX_Q / 4u>;
// Scores, then probabilities, of the chunk: [head][position].
var<workgroup> att_p: array<f32, 512>;
// Partial dot products [head][position][slice]; then the chunk max of head
// g in att_part[g] and its sum of exponentials in att_part[ATT_MAX_GROUP + g]
// (att_reduce_ml), and at the end two of the final reduction's slots.
var<workgroup> att_part: array<f32, 2048>;
// Per head: running max, running sum, and this chunk's rescale factor.
var<workgroup> att_m: array<f32, ATT_MAX_GROUP>;
// This token's rotated k (then v) of the workgroup's KV head, and their
// groups' (scale, minimum), before they are packed into the cache.
var<workgroup> att_new: array<f32, 512>;
// (Kept packed and unpacked where used: with `unpack2x16float(pack…)` in
// one expression NVIDIA's driver quantized with the unrounded f32 scale
// and minimum, so codes disagreed with the stored f16 ones by up to a
// quarter step.)
var<workgroup> att_gp: array<u32, 16>;
var<workgroup> att_l: array<f32, ATT_MAX_GROUP>;
var<workgroup> att_r: array<f32, ATT_MAX_GROUP>;
// One of the final reduction's four slots (att_red_put).
var<workgroup> att_acc: array<vec4<f32>, ATT_WG>;
// Tree reductions over a chunk's positions, ATT_WG / ATT_CHUNK heads at once:
// the running max (att_red) and the sum of exponentials relative to it
// (att_red2).
var<workgroup> att_red: array<f32, ATT_WG>;
var<workgroup> att_red2: array<f32, ATT_WG>;

// Per head g < group, the chunk's max M and Σ exp(s − M) over its scores
// att_p[g][0..len), in one tree of (max, sum) pairs merged as
// (max(m1, m2), l1·e^(m1−M) + l2·e^(m2−M)), ATT_WG / ATT_CHUNK heads a
// round: M is left in att_part[g] and the sum in att_part[ATT_MAX_GROUP +
// g] (call from uniform control flow). One tree instead of a max tree, an
// exponentiation pass and a sum tree: half the barriers.
fn att_reduce_ml(lid: u32, group: u32, len: u32) {
    let heads = ATT_WG / ATT_CHUNK;
    let t = lid % ATT_CHUNK;
    let h = lid / ATT_CHUNK;
    for (var g0 = 0u; g0 < group; g0 += heads) {
        let g = g0 + h;
        var m = -3.0e38;
        var l = 0.0;
        if (g < group && t < len) {
            m = att_p[g * ATT_CHUNK + t];
            l = 1.0;
        }
        att_red[lid] = m;
        att_red2[lid] = l;
        workgroupBarrier();
        for (var s = ATT_CHUNK / 2u; s > 0u; s = s / 2u) {
            if (t < s) {
                let m1 = att_red[lid];
                let m2 = att_red[lid + s];
                let mm = max(m1, m2);
                att_red2[lid] = att_red2[lid] * exp(m1 - mm) + att_red2[lid + s] * exp(m2 - mm);
                att_red[lid] = mm;
            }
            workgroupBarrier();
        }
        if (t == 0u && g < group) {
            att_part[g] = att_red[lid];
            att_part[ATT_MAX_GROUP + g] = att_red2[lid];
        }
        workgroupBarrier();
    }
}

// Four cached values from flat element index e (a multiple of 4) of a
// cache's words `w` (the vec4 of words holding them) and its params.
fn kv_decode(e: u32, words: vec4<u32>, params: u32) -> vec4<f32> {
    let word = e * KV_BITS / 32u;
    switch KV_BITS {
        case 32u: {
            return bitcast<vec4<f32>>(words);
        }
        case 16u: {
            let a = words[word % 4u];
            let b = words[(word + 1u) % 4u];
            return vec4<f32>(unpack2x16float(a), unpack2x16float(b));
        }
        default: {
            let sm = unpack2x16float(params);
            let w = words[word % 4u];
            var q: vec4<f32>;
            if (KV_BITS == 8u) {
                q = unpack4x8unorm(w) * 255.0;
            } else {
                let sh = (e % 8u) * 4u;
                q = vec4<f32>(
                    f32((w >> sh) & 15u),
                    f32((w >> (sh + 4u)) & 15u),
                    f32((w >> (sh + 8u)) & 15u),
                    f32((w >> (sh + 12u)) & 15u),
                );
            }
            return q * sm.x + sm.y;
        }
    }
}

fn k_load4(e: u32) -> vec4<f32> {
    let word = e * KV_BITS / 32u;
    var p = 0u;
    if (KV_BITS < 16u) {
        p = att_k_params[e / KV_GROUP];
    }
    return kv_decode(e, att_k_cache[word / 4u], p);
}

fn v_load4(e: u32) -> vec4<f32> {
    let word = e * KV_BITS / 32u;
    var p = 0u;
    if (KV_BITS < 16u) {
        p = att_v_params[e / KV_GROUP];
    }
    return kv_decode(e, att_v_cache[word / 4u], p);
}

// Packs word `j` (of the 2·HEAD_DIM·KV_BITS/32 words of this token's k then
// v, staged in att_new) for this KV head at `pos`.
fn kv_store_word(j: u32, pos: u32, kvh: u32) {
    let per = 32u / KV_BITS;
    let words_per_head = HEAD_DIM / per;
    let is_v = j >= words_per_head;
    let jj = select(j, j - words_per_head, is_v);
    let first = jj * per;
    let src = select(0u, HEAD_DIM, is_v);
    var w = 0u;
    switch KV_BITS {
        case 32u: {
            w = bitcast<u32>(att_new[src + first]);
        }
        case 16u: {
            w = pack2x16float(vec2<f32>(att_new[src + first], att_new[src + first + 1u]));
        }
        default: {
            let gi = select(0u, HEAD_DIM / KV_GROUP, is_v) + first / KV_GROUP;
            let sm = unpack2x16float(att_gp[gi]);
            let top = f32((1u << (KV_BITS % 32u)) - 1u);
            for (var k = 0u; k < per; k++) {
                var q = 0.0;
                if (sm.x > 0.0) {
                    q = clamp(round((att_new[src + first + k] - sm.y) / sm.x), 0.0, top);
                }
                w |= u32(q) << (k * KV_BITS);
            }
        }
    }
    let kv_dim = N_KV_HEADS * HEAD_DIM;
    let word = (pos * kv_dim + kvh * HEAD_DIM) * KV_BITS / 32u + jj;
    if (is_v) {
        att_v_cache[word / 4u][word % 4u] = w;
    } else {
        att_k_cache[word / 4u][word % 4u] = w;
    }
}

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

// The final reduction's slot k (0-3) of thread i's vec4: arrays the
// attention no longer reads once its last chunk is done (the V pass's
// buffer, the queries, and the two halves of the partial dot products).
fn att_red_put(k: u32, i: u32, v: vec4<f32>) {
    switch k {
        case 0u: {
            att_acc[i] = v;
        }
        case 1u: {
            att_qs[i] = v;
        }
        default: {
            let b = (k - 2u) * 4u * ATT_WG + 4u * i;
            att_part[b] = v.x;
            att_part[b + 1u] = v.y;
            att_part[b + 2u] = v.z;
            att_part[b + 3u] = v.w;
        }
    }
}

fn att_red_get(k: u32, i: u32) -> vec4<f32> {
    switch k {
        case 0u: {
            return att_acc[i];
        }
        case 1u: {
            return att_qs[i];
        }
        default: {
            let b = (k - 2u) * 4u * ATT_WG + 4u * i;
            return vec4<f32>(att_part[b], att_part[b + 1u], att_part[b + 2u], att_part[b + 3u]);
        }
    }
}

// Query head g's weights of the four positions tt (0 where not `live`)
// times their values v0..v3.
fn att_weigh(
    g: u32,
    tt: vec4<u32>,
    live: vec4<bool>,
    v0: vec4<f32>,
    v1: vec4<f32>,
    v2: vec4<f32>,
    v3: vec4<f32>,
) -> vec4<f32> {
    let p = select(vec4<f32>(0.0), vec4<f32>(
        att_p[g * ATT_CHUNK + tt.x],
        att_p[g * ATT_CHUNK + tt.y],
        att_p[g * ATT_CHUNK + tt.z],
        att_p[g * ATT_CHUNK + tt.w],
    ), live);
    return p.x * v0 + p.y * v1 + p.z * v2 + p.w * v3;
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
    let split = wid.y;
    let group = N_HEADS / N_KV_HEADS;
    let half = HEAD_DIM / 2u;
    let q_dim = N_HEADS * HEAD_DIM;
    let kv_dim = N_KV_HEADS * HEAD_DIM;
    let kv4 = kv_dim / 4u;
    let hd4 = HEAD_DIM / 4u;
    let pos = att_step.pos;
    let scale = inverseSqrt(f32(HEAD_DIM));
    // This workgroup's positions r0..r1 (whole chunks, the last split
    // shorter or empty); the one holding `pos` writes the new k and v.
    let n = pos + 1u;
    let span = ((n + ATT_SPLITS - 1u) / ATT_SPLITS + ATT_CHUNK - 1u) / ATT_CHUNK * ATT_CHUNK;
    let r0 = split * span;
    let r1 = min(n, r0 + span);
    let owner = r0 <= pos && pos < r1;

    // Bias + RoPE + cache write for this KV head; the group's queries.
    for (var t = lid; t < (group + 1u) * half; t += ATT_WG) {
        let hh = t / half;
        let i = t % half;
        if (hh < group) {
            let head = kvh * group + hh;
            let r = att_rotate(head * HEAD_DIM, i, pos);
            let ia = hh * HEAD_DIM + u32(r.z);
            let ib = hh * HEAD_DIM + u32(r.w);
            att_qs[ia / 4u][ia % 4u] = r.x * scale;
            att_qs[ib / 4u][ib % 4u] = r.y * scale;
        } else {
            let r = att_rotate(q_dim + kvh * HEAD_DIM, i, pos);
            att_new[u32(r.z)] = r.x;
            att_new[u32(r.w)] = r.y;
        }
    }
    for (var j = lid; j < HEAD_DIM; j += ATT_WG) {
        att_new[HEAD_DIM + j] = att_in(q_dim + kv_dim + kvh * HEAD_DIM + j);
    }
    if (lid < group) {
        att_m[lid] = -3.0e38;
        att_l[lid] = 0.0;
    }
    workgroupBarrier();
    // Quantized caches: each group's scale and minimum (MLX's affine
    // convention), rounded to f16 as stored.
    if (owner && KV_BITS < 16u) {
        let groups = 2u * HEAD_DIM / KV_GROUP;
        if (lid < groups) {
            var lo = 3.0e38;
            var hi = -3.0e38;
            for (var k = 0u; k < KV_GROUP; k++) {
                let v = att_new[lid * KV_GROUP + k];
                lo = min(lo, v);
                hi = max(hi, v);
            }
            let packed = pack2x16float(vec2<f32>((hi - lo) / f32((1u << (KV_BITS % 32u)) - 1u), lo));
            att_gp[lid] = packed;
            let per_head = max(HEAD_DIM / KV_GROUP, 1u);
            let at = (pos * kv_dim + kvh * HEAD_DIM) / KV_GROUP + lid % per_head;
            if (lid < per_head) {
                att_k_params[at] = packed;
            } else {
                att_v_params[at] = packed;
            }
        }
        workgroupBarrier();
    }
    if (owner) {
        for (var j = lid; j < 2u * HEAD_DIM * KV_BITS / 32u; j += ATT_WG) {
            kv_store_word(j, pos, kvh);
        }
    }
    storageBarrier();
    workgroupBarrier();

    // Score pass: position lid / slices, a 1/slices share of the head.
    var slices = 1u;
    if (hd4 % ATT_SLICES == 0u) {
        slices = ATT_SLICES;
    }
    let per = hd4 / slices;
    let st = lid / slices;
    let sl = lid % slices;
    // V pass: four output dimensions d4 of every head, every lanes-th
    // position of the chunk.
    let d4 = lid % hd4;
    let lane = lid / hd4;
    let lanes = ATT_WG / hd4;
    // Per query head of the group, its four dimensions' weighted sum, in
    // eight named registers: as a function-scope array indexed by a loop
    // variable, NVIDIA's driver kept them in local memory, and attention
    // took 23-26 % longer (SmolLM2 and the 8B shape, H100). Heads past
    // `group` (an override, so those branches fold away) stay unused.
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    var acc4 = vec4<f32>(0.0);
    var acc5 = vec4<f32>(0.0);
    var acc6 = vec4<f32>(0.0);
    var acc7 = vec4<f32>(0.0);
    for (var c = r0; c < r1; c += ATT_CHUNK) {
        let len = min(ATT_CHUNK, r1 - c);
        if (st < len) {
            let kb = (c + st) * kv4 + kvh * hd4 + sl * per;
            // One partial dot product per query head, in registers (see acc).
            var d0 = 0.0;
            var d1 = 0.0;
            var d2 = 0.0;
            var d3 = 0.0;
            var d4 = 0.0;
            var d5 = 0.0;
            var d6 = 0.0;
            var d7 = 0.0;
            // Queries as vec4 from workgroup memory: one load per four.
            for (var i = 0u; i < per; i++) {
                let k = k_load4(4u * (kb + i));
                let qo = sl * per + i;
                d0 += dot(k, att_qs[qo]);
                if (group > 1u) {
                    d1 += dot(k, att_qs[1u * hd4 + qo]);
                }
                if (group > 2u) {
                    d2 += dot(k, att_qs[2u * hd4 + qo]);
                }
                if (group > 3u) {
                    d3 += dot(k, att_qs[3u * hd4 + qo]);
                }
                if (group > 4u) {
                    d4 += dot(k, att_qs[4u * hd4 + qo]);
                }
                if (group > 5u) {
                    d5 += dot(k, att_qs[5u * hd4 + qo]);
                }
                if (group > 6u) {
                    d6 += dot(k, att_qs[6u * hd4 + qo]);
                }
                if (group > 7u) {
                    d7 += dot(k, att_qs[7u * hd4 + qo]);
                }
            }
            att_part[st * ATT_SLICES + sl] = d0;
            if (group > 1u) {
                att_part[(1u * ATT_CHUNK + st) * ATT_SLICES + sl] = d1;
            }
            if (group > 2u) {
                att_part[(2u * ATT_CHUNK + st) * ATT_SLICES + sl] = d2;
            }
            if (group > 3u) {
                att_part[(3u * ATT_CHUNK + st) * ATT_SLICES + sl] = d3;
            }
            if (group > 4u) {
                att_part[(4u * ATT_CHUNK + st) * ATT_SLICES + sl] = d4;
            }
            if (group > 5u) {
                att_part[(5u * ATT_CHUNK + st) * ATT_SLICES + sl] = d5;
            }
            if (group > 6u) {
                att_part[(6u * ATT_CHUNK + st) * ATT_SLICES + sl] = d6;
            }
            if (group > 7u) {
                att_part[(7u * ATT_CHUNK + st) * ATT_SLICES + sl] = d7;
            }
        }
        workgroupBarrier();
        if (lid < len) {
            for (var g = 0u; g < group; g++) {
                var sum = 0.0;
                for (var k = 0u; k < slices; k++) {
                    sum += att_part[(g * ATT_CHUNK + lid) * ATT_SLICES + k];
                }
                att_p[g * ATT_CHUNK + lid] = sum;
            }
        }
        workgroupBarrier();
        // Per head: the chunk's max and sum of exponentials (one tree over
        // its positions), the rescale of what came before, the new running
        // max and sum, then each position's weight.
        att_reduce_ml(lid, group, len);
        if (lid < group) {
            let mc = att_part[lid];
            let m_new = max(att_m[lid], mc);
            att_r[lid] = exp(att_m[lid] - m_new);
            att_l[lid] = att_l[lid] * att_r[lid] + att_part[ATT_MAX_GROUP + lid] * exp(mc - m_new);
            att_m[lid] = m_new;
        }
        workgroupBarrier();
        if (lid < len) {
            for (var g = 0u; g < group; g++) {
                att_p[g * ATT_CHUNK + lid] = exp(att_p[g * ATT_CHUNK + lid] - att_m[g]);
            }
        }
        workgroupBarrier();
        acc0 *= att_r[0];
        if (group > 1u) {
            acc1 *= att_r[1];
        }
        if (group > 2u) {
            acc2 *= att_r[2];
        }
        if (group > 3u) {
            acc3 *= att_r[3];
        }
        if (group > 4u) {
            acc4 *= att_r[4];
        }
        if (group > 5u) {
            acc5 *= att_r[5];
        }
        if (group > 6u) {
            acc6 *= att_r[6];
        }
        if (group > 7u) {
            acc7 *= att_r[7];
        }
        // Four positions a step, their loads issued together (positions
        // past len read a valid one and weigh it by 0).
        for (var t = lane; t < len; t += 4u * lanes) {
            var tt = vec4<u32>(t) + vec4<u32>(0u, 1u, 2u, 3u) * lanes;
            let live = tt < vec4<u32>(len);
            tt = min(tt, vec4<u32>(len - 1u));
            let v0 = v_load4(4u * ((c + tt.x) * kv4 + kvh * hd4 + d4));
            let v1 = v_load4(4u * ((c + tt.y) * kv4 + kvh * hd4 + d4));
            let v2 = v_load4(4u * ((c + tt.z) * kv4 + kvh * hd4 + d4));
            let v3 = v_load4(4u * ((c + tt.w) * kv4 + kvh * hd4 + d4));
            acc0 += att_weigh(0u, tt, live, v0, v1, v2, v3);
            if (group > 1u) {
                acc1 += att_weigh(1u, tt, live, v0, v1, v2, v3);
            }
            if (group > 2u) {
                acc2 += att_weigh(2u, tt, live, v0, v1, v2, v3);
            }
            if (group > 3u) {
                acc3 += att_weigh(3u, tt, live, v0, v1, v2, v3);
            }
            if (group > 4u) {
                acc4 += att_weigh(4u, tt, live, v0, v1, v2, v3);
            }
            if (group > 5u) {
                acc5 += att_weigh(5u, tt, live, v0, v1, v2, v3);
            }
            if (group > 6u) {
                acc6 += att_weigh(6u, tt, live, v0, v1, v2, v3);
            }
            if (group > 7u) {
                acc7 += att_weigh(7u, tt, live, v0, v1, v2, v3);
            }
        }
        workgroupBarrier();
    }
    // Add the lanes' partial sums, up to four heads at once: each thread's
    // sums of heads g0..g0+3 go to four workgroup arrays free by now (see
    // att_red_put), then one thread per (head, four dimensions) adds its
    // column of lanes. (One head at a time, this took about 2 µs of a
    // SmolLM2 layer's 14 on an H100.)
    for (var g0 = 0u; g0 < group; g0 += 4u) {
        // (g0 is 0, or 4 with more than four heads.)
        if (g0 == 0u) {
            att_red_put(0u, lid, acc0);
            if (group > 1u) {
                att_red_put(1u, lid, acc1);
            }
            if (group > 2u) {
                att_red_put(2u, lid, acc2);
            }
            if (group > 3u) {
                att_red_put(3u, lid, acc3);
            }
        } else {
            att_red_put(0u, lid, acc4);
            if (group > 5u) {
                att_red_put(1u, lid, acc5);
            }
            if (group > 6u) {
                att_red_put(2u, lid, acc6);
            }
            if (group > 7u) {
                att_red_put(3u, lid, acc7);
            }
        }
        workgroupBarrier();
        if (lid < min(group - g0, 4u) * hd4) {
            let k = lid / hd4;
            let dd = lid % hd4;
            let g = g0 + k;
            var total = vec4<f32>(0.0);
            for (var l = 0u; l < lanes; l++) {
                total += att_red_get(k, l * hd4 + dd);
            }
            if (ATT_SPLITS == 1u) {
                let o = (kvh * group + g) * HEAD_DIM + 4u * dd;
                let inv = 1.0 / att_l[g];
                for (var j = 0u; j < 4u; j++) {
                    att_out[o + j] = total[j] * inv;
                }
            } else {
                let base = ((kvh * ATT_SPLITS + split) * group + g) * (HEAD_DIM + 2u);
                for (var j = 0u; j < 4u; j++) {
                    att_partials[base + 2u + 4u * dd + j] = total[j];
                }
                if (dd == 0u) {
                    att_partials[base] = att_m[g];
                    att_partials[base + 1u] = att_l[g];
                }
            }
        }
        workgroupBarrier();
    }
}

@group(0) @binding(0) var<storage, read> comb_partials: array<f32>;
@group(0) @binding(1) var<storage, read_write> comb_out: array<f32>;

// Merges the splits of one KV head: out = Σ e^(m_s − M)·acc_s / Σ e^(m_s − M)·l_s
// per query head of the group and output dimension.
@compute @workgroup_size(256)
fn attention_combine(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let kvh = wid.x;
    let group = N_HEADS / N_KV_HEADS;
    let stride = HEAD_DIM + 2u;
    for (var t = lid; t < group * HEAD_DIM; t += ATT_WG) {
        let g = t / HEAD_DIM;
        let d = t % HEAD_DIM;
        var big = -3.0e38;
        for (var s = 0u; s < ATT_SPLITS; s++) {
            big = max(big, comb_partials[((kvh * ATT_SPLITS + s) * group + g) * stride]);
        }
        var num = 0.0;
        var den = 0.0;
        for (var s = 0u; s < ATT_SPLITS; s++) {
            let base = ((kvh * ATT_SPLITS + s) * group + g) * stride;
            let w = exp(comb_partials[base] - big);
            den += w * comb_partials[base + 1u];
            num += w * comb_partials[base + 2u + d];
        }
        comb_out[(kvh * group + g) * HEAD_DIM + d] = num / den;
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
// Workgroups of the first stage; the second reduces their winners.
const ARGMAX_GROUPS: u32 = 64u;
const NONE: u32 = 0xffffffffu;

@group(0) @binding(0) var<storage, read> argmax_logits: array<f32>;
// Per first-stage workgroup: the winner's value bits and index.
@group(0) @binding(1) var<storage, read_write> argmax_partial: array<vec2<u32>>;

@group(0) @binding(0) var<storage, read> argmax_partial_in: array<vec2<u32>>;
@group(0) @binding(1) var<storage, read_write> argmax_out: array<u32>;

var<workgroup> argmax_val: array<f32, ARGMAX_WG>;
var<workgroup> argmax_idx: array<u32, ARGMAX_WG>;

// Whether candidate (v, j) beats (best, best_j): larger, or equal with a
// lower index; NaN never wins and NONE marks no candidate.
fn argmax_better(v: f32, j: u32, best: f32, best_j: u32) -> bool {
    if (j == NONE || v != v) {
        return false;
    }
    return best_j == NONE || v > best || (v == best && j < best_j);
}

// Reduces the workgroup's candidates into slot 0.
fn argmax_reduce(lid: u32) {
    workgroupBarrier();
    for (var s = ARGMAX_WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            let v = argmax_val[lid + s];
            let j = argmax_idx[lid + s];
            if (argmax_better(v, j, argmax_val[lid], argmax_idx[lid])) {
                argmax_val[lid] = v;
                argmax_idx[lid] = j;
            }
        }
        workgroupBarrier();
    }
}

// First stage: each workgroup finds the best of its strided share.
@compute @workgroup_size(256)
fn argmax_stage1(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    var best = 0.0;
    var best_i = NONE;
    for (var i = wid.x * ARGMAX_WG + lid; i < VOCAB; i += ARGMAX_GROUPS * ARGMAX_WG) {
        let v = argmax_logits[i];
        if (argmax_better(v, i, best, best_i)) {
            best = v;
            best_i = i;
        }
    }
    argmax_val[lid] = best;
    argmax_idx[lid] = best_i;
    argmax_reduce(lid);
    if (lid == 0u) {
        argmax_partial[wid.x] = vec2<u32>(bitcast<u32>(argmax_val[0]), argmax_idx[0]);
    }
}

// Second stage: the best of the first stage's winners (0 if every logit
// was NaN).
@compute @workgroup_size(256)
fn argmax_stage2(@builtin(local_invocation_index) lid: u32) {
    var best = 0.0;
    var best_i = NONE;
    if (lid < ARGMAX_GROUPS) {
        let e = argmax_partial_in[lid];
        best = bitcast<f32>(e.x);
        best_i = e.y;
    }
    argmax_val[lid] = best;
    argmax_idx[lid] = best_i;
    argmax_reduce(lid);
    if (lid == 0u) {
        argmax_out[0] = select(argmax_idx[0], 0u, argmax_idx[0] == NONE);
    }
}

// ---------------------------------------------------------- embed_gather --

// Embedding table rows and width.
override EMBED_VOCAB: u32 = 512u;
override EMBED_DIM: u32 = 64u;

@group(0) @binding(0) var<storage, read> embed_table: array<f32>;
// The token whose row to take, in its first word (argmax's output).
@group(0) @binding(1) var<storage, read> embed_token: array<u32>;
@group(0) @binding(2) var<storage, read_write> embed_out: array<f32>;

// out = table[token] (row-major [EMBED_VOCAB, EMBED_DIM]); a token past the
// table takes its last row. With the token read on the GPU, a greedy loop
// feeds each step's argmax to the next step without the host.
@compute @workgroup_size(256)
fn embed_gather(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (i >= EMBED_DIM) {
        return;
    }
    let t = min(embed_token[0], EMBED_VOCAB - 1u);
    embed_out[i] = embed_table[t * EMBED_DIM + i];
}
