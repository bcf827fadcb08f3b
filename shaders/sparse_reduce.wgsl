// Second stage of the activation-sparse GEMV (sparse_gemv.wgsl) when the
// inputs were split into several K-chunks:
//   - y[r] = sum over chunks c of partials[c * rows + r], added in chunk order
//     (deterministic);
//   - the chunks' compacted lists (chunk c's `n_c = counts[4 + c]` entries of
//     (index, x bits) at seg[c * chunk_len ..]) are joined, in chunk order,
//     into one list of all active inputs in increasing order, and
//     counts[0..3] = (total, 1, 1), an indirect-dispatch triple.
// Workgroup w adds up outputs w * WG .. (w + 1) * WG and, if w < chunks,
// copies chunk w's list to its place (the sum of the earlier counts).

struct Params {
    rows: u32,
    chunks: u32,
    chunk_len: u32,
    _pad: u32,
}

override WG: u32 = 256u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> partials: array<f32>;
@group(0) @binding(2) var<storage, read> seg: array<vec2<u32>>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read_write> joined: array<vec2<u32>>;
@group(0) @binding(5) var<storage, read_write> counts: array<u32>;

@compute @workgroup_size(WG)
fn sparse_reduce(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let w = wid.x + wid.y * nwg.x;
    let r = w * WG + lid;
    if r < params.rows {
        var sum = 0.0;
        for (var c = 0u; c < params.chunks; c++) {
            sum += partials[c * params.rows + r];
        }
        y[r] = sum;
    }
    if w < params.chunks {
        var start = 0u;
        for (var c = 0u; c < w; c++) {
            start += counts[4u + c];
        }
        let n = counts[4u + w];
        for (var i = lid; i < n; i += WG) {
            joined[start + i] = seg[w * params.chunk_len + i];
        }
        if w == 0u && lid == 0u {
            var total = 0u;
            for (var c = 0u; c < params.chunks; c++) {
                total += counts[4u + c];
            }
            counts[0] = total;
            counts[1] = 1u;
            counts[2] = 1u;
        }
    }
}
