// Second stage of the activation-sparse GEMV (sparse_gemv.wgsl) when the
// inputs were split into several K-chunks:
//   - y[r] = sum over chunks c of partials[c * rows + r], added in chunk order
//     (deterministic), eight loads in flight per step;
//   - the chunks' compacted lists (chunk c's `n_c = counts[4 + c]` entries of
//     (index, x bits) at seg[c * chunk_len ..]) are joined, in chunk order,
//     into one list of all active inputs in increasing order, and
//     counts[0..3] = (total, 1, 1), an indirect-dispatch triple.
// Workgroup w adds up outputs w * WG .. (w + 1) * WG and, if w < chunks,
// copies chunk w's list to its place, the sum of the earlier counts (read
// by all threads at once and added in workgroup memory).

struct Params {
    rows: u32,
    chunks: u32,
    chunk_len: u32,
    _pad: u32,
}

override WG: u32 = 256u;
// y[r] += the sum (a residual add) instead of y[r] = the sum.
override ACCUM: bool = false;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> partials: array<f32>;
@group(0) @binding(2) var<storage, read> seg: array<vec2<u32>>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read_write> joined: array<vec2<u32>>;
@group(0) @binding(5) var<storage, read_write> counts: array<u32>;

// (count before chunk w, total count) per thread, then their sums.
var<workgroup> sums: array<vec2<u32>, WG>;

fn add_rows(r: u32) {
    let rows = params.rows;
    let chunks = params.chunks;
    var sum = 0.0;
    var c = 0u;
    for (; c + 8u <= chunks; c += 8u) {
        let v0 = partials[c * rows + r];
        let v1 = partials[(c + 1u) * rows + r];
        let v2 = partials[(c + 2u) * rows + r];
        let v3 = partials[(c + 3u) * rows + r];
        let v4 = partials[(c + 4u) * rows + r];
        let v5 = partials[(c + 5u) * rows + r];
        let v6 = partials[(c + 6u) * rows + r];
        let v7 = partials[(c + 7u) * rows + r];
        sum = (((((((sum + v0) + v1) + v2) + v3) + v4) + v5) + v6) + v7;
    }
    for (; c < chunks; c++) {
        sum += partials[c * rows + r];
    }
    if ACCUM {
        y[r] = y[r] + sum;
    } else {
        y[r] = sum;
    }
}

// Copies chunk w's list after the earlier chunks' (w uniform).
fn join(lid: u32, w: u32) {
    var t = vec2<u32>(0u);
    for (var c = lid; c < params.chunks; c += WG) {
        let n = counts[4u + c];
        t += vec2<u32>(select(0u, n, c < w), n);
    }
    sums[lid] = t;
    workgroupBarrier();
    for (var h = WG / 2u; h > 0u; h >>= 1u) {
        if lid < h {
            sums[lid] += sums[lid + h];
        }
        workgroupBarrier();
    }
    let start = sums[0].x;
    let n = counts[4u + w];
    for (var i = lid; i < n; i += WG) {
        joined[start + i] = seg[w * params.chunk_len + i];
    }
    if w == 0u && lid == 0u {
        counts[0] = sums[0].y;
        counts[1] = 1u;
        counts[2] = 1u;
    }
}

@compute @workgroup_size(WG)
fn sparse_reduce(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let w = wid.x + wid.y * nwg.x;
    let r = w * WG + lid;
    if r < params.rows {
        add_rows(r);
    }
    if w < params.chunks {
        join(lid, w);
    }
}
