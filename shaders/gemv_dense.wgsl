// Dense GEMV: y[row_offset + r] = sum_k W[r, k] * x[k] for the rows of one
// block of a row-major matrix.
//
// Layout (prepared by membound-gpu's `DenseGemv`): every row starts on a
// 16-byte boundary. Its `stride` 16-byte chunks hold 8 f16 values (as packed
// u32 pairs, read with unpack2x16float) or 4 f32 values (bitcast), zero-padded
// past `cols`. x is f32, readable as vec4 up to the padded length; the values
// past `cols` are masked here, so the caller's padding may hold anything.
//
// One workgroup computes ROWS consecutive rows. Its threads stride over the
// row's chunks together: consecutive threads read consecutive 16-byte chunks
// (fully coalesced), and each x chunk a thread loads serves all ROWS rows.
// Each thread holds one partial sum per row (the lanes of a vec4), and the
// workgroup then reduces them: with subgroupAdd where the device has
// subgroups (`*_subgroup` entry points), else with a tree in workgroup memory.
//
// Fusions (override constants, for decoding with fewer dispatches):
//   - NORM: the input is RMS-normalised first, y = W·(x ⊙ g) / rms(x) with
//     g in `norm_w` and rms(x) = sqrt(mean(x²) + EPS). Each thread sums the
//     squares of the x it loads anyway (every x chunk is loaded once per
//     workgroup), the sums are reduced with the rows', and the row totals
//     are scaled once at the end: no extra pass over x;
//   - ACCUM: y[r] += W·x (a residual add) instead of y[r] = W·x;
//   - GLU: rows [0, rows/2) are gate and [rows/2, rows) up projections; a
//     workgroup takes two gate rows and the two matching up rows and writes
//     y[r] = silu(gate_r) · up_r for its two r (rows/2 outputs in all).
// These live in their own entry points, gemv_{f16,f32}_fused[_subgroup],
// so that the plain ones compile exactly as before (measured: folding them
// into the plain entry points made plain f16 6% slower on an H100).
//
// Entry points: gemv_f32, gemv_f16 (portable) and gemv_f32_subgroup,
// gemv_f16_subgroup (need the SUBGROUP feature; membound-gpu compiles each
// entry point into its own module, so devices without subgroups never see
// them).

struct Params {
    // Rows in this block (at least 1).
    rows: u32,
    // Logical row length K.
    cols: u32,
    // Row stride in 16-byte chunks (ceil(cols / values per chunk)).
    stride: u32,
    // Index in y of this block's first row.
    row_offset: u32,
}

// Threads per workgroup; a power of two.
override WG: u32 = 256u;

// Rows per workgroup: one accumulator lane each, so fixed at vec4's width.
const ROWS: u32 = 4u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> weights: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

// One vec4 of partial sums per thread (tree) or per subgroup (subgroupAdd).
// Consecutive threads touch consecutive 16-byte slots: no bank conflicts.
var<workgroup> partial: array<vec4<f32>, WG>;

// x[4i .. 4i+4] with the entries at or past `cols` zeroed.
fn load_x(i: u32) -> vec4<f32> {
    let index = vec4<u32>(i * 4u) + vec4<u32>(0u, 1u, 2u, 3u);
    return select(vec4<f32>(0.0), x[i], index < vec4<u32>(params.cols));
}

// The first chunk of each of this workgroup's rows. Rows past the end of the
// block re-read the last row (their sums are never written), which keeps the
// loop free of branches.
fn row_bases(block: u32) -> vec4<u32> {
    let row0 = block * ROWS;
    let last = params.rows - 1u;
    let rows = min(vec4<u32>(row0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(last));
    return rows * params.stride;
}

// Dot product of one chunk of 8 f16 weights with 8 x values.
fn dot_f16(w: vec4<u32>, xa: vec4<f32>, xb: vec4<f32>) -> f32 {
    let lo = vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
    let hi = vec4<f32>(unpack2x16float(w.z), unpack2x16float(w.w));
    return dot(lo, xa) + dot(hi, xb);
}

// This thread's partial sums of the four rows over the chunks it visits.
// Two chunks per iteration put eight independent 16-byte loads in flight
// before any arithmetic (measured 3-5% faster than one chunk on an H100).
fn partial_f16(block: u32, lid: u32) -> vec4<f32> {
    let base = row_bases(block);
    var acc = vec4<f32>(0.0);
    var c = lid;
    for (; c + WG < params.stride; c += 2u * WG) {
        let d = c + WG;
        let w0 = weights[base.x + c];
        let w1 = weights[base.y + c];
        let w2 = weights[base.z + c];
        let w3 = weights[base.w + c];
        let v0 = weights[base.x + d];
        let v1 = weights[base.y + d];
        let v2 = weights[base.z + d];
        let v3 = weights[base.w + d];
        let xa = load_x(2u * c);
        let xb = load_x(2u * c + 1u);
        let ya = load_x(2u * d);
        let yb = load_x(2u * d + 1u);
        acc += vec4<f32>(
            dot_f16(w0, xa, xb) + dot_f16(v0, ya, yb),
            dot_f16(w1, xa, xb) + dot_f16(v1, ya, yb),
            dot_f16(w2, xa, xb) + dot_f16(v2, ya, yb),
            dot_f16(w3, xa, xb) + dot_f16(v3, ya, yb),
        );
    }
    if c < params.stride {
        let xa = load_x(2u * c);
        let xb = load_x(2u * c + 1u);
        acc += vec4<f32>(
            dot_f16(weights[base.x + c], xa, xb),
            dot_f16(weights[base.y + c], xa, xb),
            dot_f16(weights[base.z + c], xa, xb),
            dot_f16(weights[base.w + c], xa, xb),
        );
    }
    return acc;
}

fn partial_f32(block: u32, lid: u32) -> vec4<f32> {
    let base = row_bases(block);
    var acc = vec4<f32>(0.0);
    for (var c = lid; c < params.stride; c += WG) {
        let xc = load_x(c);
        acc += vec4<f32>(
            dot(bitcast<vec4<f32>>(weights[base.x + c]), xc),
            dot(bitcast<vec4<f32>>(weights[base.y + c]), xc),
            dot(bitcast<vec4<f32>>(weights[base.z + c]), xc),
            dot(bitcast<vec4<f32>>(weights[base.w + c]), xc),
        );
    }
    return acc;
}

// Thread `lid` < ROWS writes row `lid` of the workgroup from `total`.
fn store(block: u32, lid: u32, total: vec4<f32>) {
    let row = block * ROWS + lid;
    if lid < ROWS && row < params.rows {
        y[params.row_offset + row] = total[lid];
    }
}

// Workgroups beyond 65535 spill into the y dimension of the dispatch.
fn block_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

// Portable reduction: a binary tree in workgroup memory.
fn reduce_tree(lid: u32, acc: vec4<f32>) -> vec4<f32> {
    partial[lid] = acc;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            partial[lid] += partial[lid + s];
        }
        workgroupBarrier();
    }
    return partial[0];
}

// Subgroup reduction: subgroupAdd, then the subgroups' sums through
// workgroup memory. Works for any subgroup size, including partial
// subgroups, because it relies on subgroup_id and num_subgroups only.
fn reduce_subgroup(lid: u32, acc: vec4<f32>, sg_lane: u32, sg_id: u32, sg_count: u32) -> vec4<f32> {
    let s = subgroupAdd(acc);
    if sg_lane == 0u {
        partial[sg_id] = s;
    }
    workgroupBarrier();
    var total = vec4<f32>(0.0);
    if lid < ROWS {
        for (var i = 0u; i < sg_count; i++) {
            total += partial[i];
        }
    }
    return total;
}

@compute @workgroup_size(WG)
fn gemv_f16(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let block = block_index(wid, nwg);
    store(block, lid, reduce_tree(lid, partial_f16(block, lid)));
}

@compute @workgroup_size(WG)
fn gemv_f32(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let block = block_index(wid, nwg);
    store(block, lid, reduce_tree(lid, partial_f32(block, lid)));
}

@compute @workgroup_size(WG)
fn gemv_f16_subgroup(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(num_subgroups) sg_count: u32,
) {
    let block = block_index(wid, nwg);
    let acc = partial_f16(block, lid);
    store(block, lid, reduce_subgroup(lid, acc, sg_lane, sg_id, sg_count));
}

@compute @workgroup_size(WG)
fn gemv_f32_subgroup(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(num_subgroups) sg_count: u32,
) {
    let block = block_index(wid, nwg);
    let acc = partial_f32(block, lid);
    store(block, lid, reduce_subgroup(lid, acc, sg_lane, sg_id, sg_count));
}

// ------------------------------------------------------------ fused --

// The fusions above.
override NORM: bool = false;
override EPS: f32 = 1e-5;
override ACCUM: bool = false;
override GLU: bool = false;

// NORM's per-input scale g, readable as vec4 up to x's padded length.
@group(0) @binding(4) var<storage, read> norm_w: array<vec4<f32>>;

// One vec4 of partial sums per thread (tree) or per subgroup (subgroupAdd).
// Consecutive threads touch consecutive 16-byte slots: no bank conflicts.
// NORM: the same for the sums of squares of x.
var<workgroup> partial_ss: array<f32, WG>;

// A thread's partial row sums, and (NORM) the sum of squares of its x.
struct Part {
    acc: vec4<f32>,
    ss: f32,
}

// x[4i .. 4i+4] with the entries at or past `cols` zeroed.
// NORM: x chunk i times g (the callers add its squares to their sum first).
fn scaled(v: vec4<f32>, i: u32) -> vec4<f32> {
    return v * norm_w[i];
}

// With GLU, the rows are gate rows 2b, 2b+1 and the matching up rows.
fn row_bases_fused(block: u32) -> vec4<u32> {
    if GLU {
        let half = params.rows / 2u;
        let g = min(vec4<u32>(2u * block) + vec4<u32>(0u, 1u, 0u, 1u), vec4<u32>(half - 1u));
        return (g + vec4<u32>(0u, 0u, half, half)) * params.stride;
    }
    let row0 = block * ROWS;
    let last = params.rows - 1u;
    let rows = min(vec4<u32>(row0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(last));
    return rows * params.stride;
}

// This thread's partial sums of the four rows over the chunks it visits.
// Two chunks per iteration put eight independent 16-byte loads in flight
// before any arithmetic (measured 3-5% faster than one chunk on an H100).
fn partial_f16_fused(block: u32, lid: u32) -> Part {
    let base = row_bases_fused(block);
    var acc = vec4<f32>(0.0);
    var ss = 0.0;
    var c = lid;
    for (; c + WG < params.stride; c += 2u * WG) {
        let d = c + WG;
        let w0 = weights[base.x + c];
        let w1 = weights[base.y + c];
        let w2 = weights[base.z + c];
        let w3 = weights[base.w + c];
        let v0 = weights[base.x + d];
        let v1 = weights[base.y + d];
        let v2 = weights[base.z + d];
        let v3 = weights[base.w + d];
        var xa = load_x(2u * c);
        var xb = load_x(2u * c + 1u);
        var ya = load_x(2u * d);
        var yb = load_x(2u * d + 1u);
        if NORM {
            ss += (dot(xa, xa) + dot(xb, xb)) + (dot(ya, ya) + dot(yb, yb));
            xa = scaled(xa, 2u * c);
            xb = scaled(xb, 2u * c + 1u);
            ya = scaled(ya, 2u * d);
            yb = scaled(yb, 2u * d + 1u);
        }
        acc += vec4<f32>(
            dot_f16(w0, xa, xb) + dot_f16(v0, ya, yb),
            dot_f16(w1, xa, xb) + dot_f16(v1, ya, yb),
            dot_f16(w2, xa, xb) + dot_f16(v2, ya, yb),
            dot_f16(w3, xa, xb) + dot_f16(v3, ya, yb),
        );
    }
    if c < params.stride {
        var xa = load_x(2u * c);
        var xb = load_x(2u * c + 1u);
        if NORM {
            ss += dot(xa, xa) + dot(xb, xb);
            xa = scaled(xa, 2u * c);
            xb = scaled(xb, 2u * c + 1u);
        }
        acc += vec4<f32>(
            dot_f16(weights[base.x + c], xa, xb),
            dot_f16(weights[base.y + c], xa, xb),
            dot_f16(weights[base.z + c], xa, xb),
            dot_f16(weights[base.w + c], xa, xb),
        );
    }
    return Part(acc, ss);
}

fn partial_f32_fused(block: u32, lid: u32) -> Part {
    let base = row_bases_fused(block);
    var acc = vec4<f32>(0.0);
    var ss = 0.0;
    for (var c = lid; c < params.stride; c += WG) {
        var xc = load_x(c);
        if NORM {
            ss += dot(xc, xc);
            xc = scaled(xc, c);
        }
        acc += vec4<f32>(
            dot(bitcast<vec4<f32>>(weights[base.x + c]), xc),
            dot(bitcast<vec4<f32>>(weights[base.y + c]), xc),
            dot(bitcast<vec4<f32>>(weights[base.z + c]), xc),
            dot(bitcast<vec4<f32>>(weights[base.w + c]), xc),
        );
    }
    return Part(acc, ss);
}

// Thread `lid` < ROWS writes row `lid` of the workgroup from `total` (with
// GLU, threads 0 and 1 write the workgroup's two SwiGLU outputs).
fn store_fused(block: u32, lid: u32, total: Part) {
    var t = total.acc;
    if NORM {
        t *= inverseSqrt(total.ss / f32(params.cols) + EPS);
    }
    if GLU {
        let r = 2u * block + lid;
        if lid < 2u && r < params.rows / 2u {
            let g = t[lid];
            y[params.row_offset + r] = g / (1.0 + exp(-g)) * t[lid + 2u];
        }
        return;
    }
    let row = block * ROWS + lid;
    if lid < ROWS && row < params.rows {
        let i = params.row_offset + row;
        if ACCUM {
            y[i] = y[i] + t[lid];
        } else {
            y[i] = t[lid];
        }
    }
}

// Portable reduction (fused kernels): a binary tree in workgroup memory.
fn reduce_tree_fused(lid: u32, p: Part) -> Part {
    partial[lid] = p.acc;
    partial_ss[lid] = p.ss;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            partial[lid] += partial[lid + s];
            if NORM {
                partial_ss[lid] += partial_ss[lid + s];
            }
        }
        workgroupBarrier();
    }
    return Part(partial[0], partial_ss[0]);
}

// Subgroup reduction: subgroupAdd, then the subgroups' sums through
// workgroup memory. Works for any subgroup size, including partial
// subgroups, because it relies on subgroup_id and num_subgroups only.
fn reduce_subgroup_fused(lid: u32, p: Part, sg_lane: u32, sg_id: u32, sg_count: u32) -> Part {
    let s = subgroupAdd(p.acc);
    var q = 0.0;
    if NORM {
        q = subgroupAdd(p.ss);
    }
    if sg_lane == 0u {
        partial[sg_id] = s;
        partial_ss[sg_id] = q;
    }
    workgroupBarrier();
    var total = Part(vec4<f32>(0.0), 0.0);
    if lid < ROWS {
        for (var i = 0u; i < sg_count; i++) {
            total.acc += partial[i];
            total.ss += partial_ss[i];
        }
    }
    return total;
}

@compute @workgroup_size(WG)
fn gemv_f16_fused(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let block = block_index(wid, nwg);
    store_fused(block, lid, reduce_tree_fused(lid, partial_f16_fused(block, lid)));
}

@compute @workgroup_size(WG)
fn gemv_f32_fused(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let block = block_index(wid, nwg);
    store_fused(block, lid, reduce_tree_fused(lid, partial_f32_fused(block, lid)));
}

@compute @workgroup_size(WG)
fn gemv_f16_fused_subgroup(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(num_subgroups) sg_count: u32,
) {
    let block = block_index(wid, nwg);
    let p = partial_f16_fused(block, lid);
    store_fused(block, lid, reduce_subgroup_fused(lid, p, sg_lane, sg_id, sg_count));
}

@compute @workgroup_size(WG)
fn gemv_f32_fused_subgroup(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(num_subgroups) sg_count: u32,
) {
    let block = block_index(wid, nwg);
    let p = partial_f32_fused(block, lid);
    store_fused(block, lid, reduce_subgroup_fused(lid, p, sg_lane, sg_id, sg_count));
}
