// Activation-sparse GEMV: y = sum over active j of x[j] * W[:, j], reading
// only the weight columns of active inputs. Input j is active iff
// |x[j]| > tau (tau = 0: the exact-zero test).
//
// Layout (prepared by membound-gpu's `SparseGemv`): W is stored column-major
// (Wt row-major), each column padded to 16-byte chunks, `stride` chunks a
// column, so an active column is one contiguous read:
//   - f16: a chunk holds 8 consecutive outputs as packed f16 pairs;
//   - 4-bit affine: a chunk holds 32 consecutive outputs as MLX-packed codes
//     (LSB first), and `scales[j * groups + g]` holds group g's f16 scale (low
//     half) and bias (high half); groups run along the outputs and hold
//     32 << group_shift of them, so a chunk lies in one group.
//
// Grid: workgroup (t, c) owns the outputs of row tile t (TPC chunks of every
// column) and the inputs of K-chunk c (`chunk_len` consecutive inputs):
//   1. mask + compaction: it tests its chunk of x and compacts the active
//      inputs, in increasing order, into workgroup memory as (index, x bits)
//      with an ordered prefix sum (deterministic, no atomics); tile 0 also
//      writes them to `compact` at offset c * chunk_len and their count to
//      counts[4 + c];
//   2. mat-vec: its threads form WG / TPC column lanes of TPC threads; the
//      TPC threads of a lane read consecutive 16-byte chunks of one active
//      column (coalesced, 128-256 contiguous bytes), and the lanes take the
//      compacted list round-robin, four columns in flight per thread;
//   3. the lanes' sums are added in workgroup memory, in a fixed order, and
//      written to `out[c * rows + row]`.
// With one K-chunk, `out` is y itself and `compact` the final list
// (counts[0..3] = count, 1, 1: an indirect-dispatch triple); with several,
// `out` holds per-chunk partial sums that sparse_reduce.wgsl adds up in a
// fixed order, and it also joins the per-chunk lists into one.
//
// The mask compares bit patterns: for finite tau >= 0 and non-NaN x, |x| > tau
// iff (bits(x) & 0x7fffffff) > bits(tau), which needs no float comparison (so
// subnormals are never flushed) and makes NaN inputs inactive explicitly.
//
// Entry points: sparse_f16, sparse_affine4 (portable: the prefix sum is a
// tree in workgroup memory) and sparse_f16_subgroup, sparse_affine4_subgroup
// (SUBGROUP feature: subgroupExclusiveAdd; input slots are numbered by
// subgroup id and lane, so the order holds however the driver lays out
// subgroups, provided WG is a multiple of the subgroup size).

struct Params {
    // Outputs (rows of W).
    rows: u32,
    // Inputs (columns of W).
    cols: u32,
    // 16-byte chunks per column.
    stride: u32,
    // Inputs per K-chunk (a multiple of 4, at most LMAX).
    chunk_len: u32,
    // Number of K-chunks (the grid's y size).
    chunks: u32,
    // 4-bit affine: scale groups per column.
    groups: u32,
    // 4-bit affine: log2(group size / 32).
    group_shift: u32,
    _pad: u32,
}

// Threads per workgroup, a power of two.
override WG: u32 = 256u;
// Threads per column (a power of two dividing WG): the row tile is TPC
// chunks, 8 * TPC outputs in f16 or 32 * TPC in 4-bit.
override TPC: u32 = 16u;
// Capacity of the compacted list: the largest chunk_len.
override LMAX: u32 = 2048u;
// Two vec4 of partial sums per thread.
override RED: u32 = 2u * WG;

@group(0) @binding(0) var<uniform> params: Params;
// x: the magnitude bits of tau.
@group(0) @binding(1) var<uniform> tau: vec4<u32>;
@group(0) @binding(2) var<storage, read> weights: array<vec4<u32>>;
// The f32 input, read as bits; valid up to `cols`, allocated to a multiple of 4.
@group(0) @binding(3) var<storage, read> x: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> compact: array<vec2<u32>>;
@group(0) @binding(6) var<storage, read_write> counts: array<u32>;
@group(0) @binding(7) var<storage, read> scales: array<u32>;

var<workgroup> list: array<vec2<u32>, LMAX>;
var<workgroup> red: array<vec4<f32>, RED>;
var<workgroup> scan: array<u32, WG>;

// Four consecutive inputs: their bits and which are active.
struct Quad {
    bits: vec4<u32>,
    on: vec4<bool>,
}

fn load_quad(i: u32, end: u32) -> Quad {
    var bits = vec4<u32>(0u);
    if i < end {
        bits = x[i / 4u];
    }
    let index = vec4<u32>(i) + vec4<u32>(0u, 1u, 2u, 3u);
    let mag = bits & vec4<u32>(0x7fffffffu);
    let on = (index < vec4<u32>(end)) & (mag > vec4<u32>(tau.x)) & (mag <= vec4<u32>(0x7f800000u));
    return Quad(bits, on);
}

fn quad_count(q: Quad) -> u32 {
    let c = select(vec4<u32>(0u), vec4<u32>(1u), q.on);
    return c.x + c.y + c.z + c.w;
}

// Appends the active inputs of the quad at input index i to the list from
// position `at`, in order.
fn store_quad(at: u32, i: u32, q: Quad) {
    var p = at;
    for (var k = 0u; k < 4u; k++) {
        if q.on[k] {
            list[p] = vec2<u32>(i + k, q.bits[k]);
            p += 1u;
        }
    }
}

// Exclusive prefix sum of v over the workgroup in `lid` order, and the total:
// a Hillis-Steele scan in workgroup memory.
fn scan_tree(lid: u32, v: u32) -> vec2<u32> {
    scan[lid] = v;
    workgroupBarrier();
    for (var d = 1u; d < WG; d <<= 1u) {
        var t = 0u;
        if lid >= d {
            t = scan[lid - d];
        }
        workgroupBarrier();
        scan[lid] += t;
        workgroupBarrier();
    }
    let inclusive = scan[lid];
    let total = scan[WG - 1u];
    workgroupBarrier();
    return vec2<u32>(inclusive - v, total);
}

// The same in (subgroup id, lane) order, with subgroup operations.
fn scan_subgroup(v: u32, sg_lane: u32, sg_id: u32, sg_count: u32) -> vec2<u32> {
    let within = subgroupExclusiveAdd(v);
    let sum = subgroupAdd(v);
    if sg_lane == 0u {
        scan[sg_id] = sum;
    }
    workgroupBarrier();
    var before = 0u;
    var total = 0u;
    for (var s = 0u; s < sg_count; s++) {
        let t = scan[s];
        before += select(0u, t, s < sg_id);
        total += t;
    }
    workgroupBarrier();
    return vec2<u32>(before + within, total);
}

// Compacts the active inputs of k0..k1 into `list`; returns their count.
fn compact_tree(lid: u32, k0: u32, k1: u32) -> u32 {
    var n = 0u;
    for (var base = k0; base < k1; base += 4u * WG) {
        let i = base + 4u * lid;
        let q = load_quad(i, k1);
        let s = scan_tree(lid, quad_count(q));
        store_quad(n + s.x, i, q);
        n += s.y;
    }
    workgroupBarrier();
    return n;
}

fn compact_subgroup(k0: u32, k1: u32, sg_lane: u32, sg_id: u32, sg_size: u32, sg_count: u32) -> u32 {
    let slot = sg_id * sg_size + sg_lane;
    var n = 0u;
    for (var base = k0; base < k1; base += 4u * WG) {
        let i = base + 4u * slot;
        let q = load_quad(i, k1);
        let s = scan_subgroup(quad_count(q), sg_lane, sg_id, sg_count);
        store_quad(n + s.x, i, q);
        n += s.y;
    }
    workgroupBarrier();
    return n;
}

// Row tile 0 publishes the chunk's list and count.
fn write_compaction(lid: u32, tile: u32, chunk: u32, k0: u32, n: u32) {
    if tile != 0u {
        return;
    }
    for (var p = lid; p < n; p += WG) {
        compact[k0 + p] = list[p];
    }
    if lid == 0u {
        counts[4u + chunk] = n;
        if params.chunks == 1u {
            counts[0] = n;
            counts[1] = 1u;
            counts[2] = 1u;
        }
    }
}

// This thread's chunk of the row tile, clamped to the last chunk so that
// threads past the end read valid memory (their sums are never written).
fn row_chunk(lid: u32, tile: u32) -> u32 {
    return min(tile * TPC + lid % TPC, params.stride - 1u);
}

struct Acc8 {
    a: vec4<f32>,
    b: vec4<f32>,
}

fn add_f16(acc: ptr<function, Acc8>, w: vec4<u32>, e: vec2<u32>) {
    let v = vec4<f32>(bitcast<f32>(e.y));
    (*acc).a = fma(vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y)), v, (*acc).a);
    (*acc).b = fma(vec4<f32>(unpack2x16float(w.z), unpack2x16float(w.w)), v, (*acc).b);
}

// The list entry at p, or past the end (p >= n > 0) the last one with x = 0:
// a duplicate read served by cache that adds nothing. It lets the loops
// issue four loads per iteration with no serial remainder.
fn entry(p: u32, n: u32) -> vec2<u32> {
    let e = list[min(p, n - 1u)];
    return select(vec2<u32>(e.x, 0u), e, p < n);
}

// Sums of this thread's 8 outputs over its lane's share of the list.
fn stream_f16(lid: u32, tile: u32, n: u32) -> Acc8 {
    let lanes = WG / TPC;
    let rc = row_chunk(lid, tile);
    let stride = params.stride;
    var acc = Acc8(vec4<f32>(0.0), vec4<f32>(0.0));
    for (var p = lid / TPC; p < n; p += 4u * lanes) {
        let e0 = entry(p, n);
        let e1 = entry(p + lanes, n);
        let e2 = entry(p + 2u * lanes, n);
        let e3 = entry(p + 3u * lanes, n);
        let w0 = weights[e0.x * stride + rc];
        let w1 = weights[e1.x * stride + rc];
        let w2 = weights[e2.x * stride + rc];
        let w3 = weights[e3.x * stride + rc];
        add_f16(&acc, w0, e0);
        add_f16(&acc, w1, e1);
        add_f16(&acc, w2, e2);
        add_f16(&acc, w3, e3);
    }
    return acc;
}

struct Acc32 {
    a0: vec4<f32>,
    a1: vec4<f32>,
    a2: vec4<f32>,
    a3: vec4<f32>,
    a4: vec4<f32>,
    a5: vec4<f32>,
    a6: vec4<f32>,
    a7: vec4<f32>,
}

// The four codes in the low 16 bits of `bits`, each times its place value
// 16^k, exactly: masked in place into the mantissa of 2^23 (all below 2^16),
// and 2^23 subtracted. No shifts: the place value is folded into the scale.
// (The masks are literals: module-scope vector constants trip naga 30's
// override processing once the module is compacted to one entry point.)
fn nibbles(bits: u32) -> vec4<f32> {
    let m = (vec4<u32>(bits) & vec4<u32>(0xfu, 0xf0u, 0xf00u, 0xf000u)) | vec4<u32>(0x4b000000u);
    return bitcast<vec4<f32>>(m) - vec4<f32>(8388608.0);
}

// code · 16^k times scale · 16^-k is code · scale, exact (4 bits times an
// f16's 11; scaling by a power of two is exact), so the fma rounds once,
// exactly like the CPU decode `code * scale + bias`: the weights equal
// membound-codec's decoded ones bit for bit.
fn add_affine4(acc: ptr<function, Acc32>, w: vec4<u32>, sb: u32, e: vec2<u32>) {
    let f = unpack2x16float(sb);
    // scale · 16^-k, k = 0..3.
    let s = vec4<f32>(f.x) * vec4<f32>(1.0, 0.0625, 0.00390625, 0.000244140625);
    let b = vec4<f32>(f.y);
    let v = vec4<f32>(bitcast<f32>(e.y));
    (*acc).a0 = fma(fma(nibbles(w.x), s, b), v, (*acc).a0);
    (*acc).a1 = fma(fma(nibbles(w.x >> 16u), s, b), v, (*acc).a1);
    (*acc).a2 = fma(fma(nibbles(w.y), s, b), v, (*acc).a2);
    (*acc).a3 = fma(fma(nibbles(w.y >> 16u), s, b), v, (*acc).a3);
    (*acc).a4 = fma(fma(nibbles(w.z), s, b), v, (*acc).a4);
    (*acc).a5 = fma(fma(nibbles(w.z >> 16u), s, b), v, (*acc).a5);
    (*acc).a6 = fma(fma(nibbles(w.w), s, b), v, (*acc).a6);
    (*acc).a7 = fma(fma(nibbles(w.w >> 16u), s, b), v, (*acc).a7);
}

// Sums of this thread's 32 outputs over its lane's share of the list.
fn stream_affine4(lid: u32, tile: u32, n: u32) -> Acc32 {
    let lanes = WG / TPC;
    let rc = row_chunk(lid, tile);
    let stride = params.stride;
    let groups = params.groups;
    let g = rc >> params.group_shift;
    let z = vec4<f32>(0.0);
    var acc = Acc32(z, z, z, z, z, z, z, z);
    for (var p = lid / TPC; p < n; p += 4u * lanes) {
        let e0 = entry(p, n);
        let e1 = entry(p + lanes, n);
        let e2 = entry(p + 2u * lanes, n);
        let e3 = entry(p + 3u * lanes, n);
        let w0 = weights[e0.x * stride + rc];
        let w1 = weights[e1.x * stride + rc];
        let w2 = weights[e2.x * stride + rc];
        let w3 = weights[e3.x * stride + rc];
        let s0 = scales[e0.x * groups + g];
        let s1 = scales[e1.x * groups + g];
        let s2 = scales[e2.x * groups + g];
        let s3 = scales[e3.x * groups + g];
        add_affine4(&acc, w0, s0, e0);
        add_affine4(&acc, w1, s1, e1);
        add_affine4(&acc, w2, s2, e2);
        add_affine4(&acc, w3, s3, e3);
    }
    return acc;
}

// Adds the lanes' sums of 8 outputs per thread (outputs `offset` .. offset + 8
// of each thread's chunk, `per_chunk` outputs a chunk) in lane order and
// writes them to out[chunk * rows + row]. Call from uniform control flow.
fn reduce_store(lid: u32, tile: u32, chunk: u32, per_chunk: u32, offset: u32, a: vec4<f32>, b: vec4<f32>) {
    let lanes = WG / TPC;
    red[2u * lid] = a;
    red[2u * lid + 1u] = b;
    workgroupBarrier();
    if lid < 2u * TPC {
        var sum = vec4<f32>(0.0);
        for (var l = 0u; l < lanes; l++) {
            sum += red[l * 2u * TPC + lid];
        }
        let row = (tile * TPC + lid / 2u) * per_chunk + offset + 4u * (lid % 2u);
        let base = chunk * params.rows;
        for (var k = 0u; k < 4u; k++) {
            if row + k < params.rows {
                out[base + row + k] = sum[k];
            }
        }
    }
    workgroupBarrier();
}

fn finish_f16(lid: u32, wid: vec3<u32>, k0: u32, n: u32) {
    write_compaction(lid, wid.x, wid.y, k0, n);
    let acc = stream_f16(lid, wid.x, n);
    reduce_store(lid, wid.x, wid.y, 8u, 0u, acc.a, acc.b);
}

fn finish_affine4(lid: u32, wid: vec3<u32>, k0: u32, n: u32) {
    write_compaction(lid, wid.x, wid.y, k0, n);
    let acc = stream_affine4(lid, wid.x, n);
    reduce_store(lid, wid.x, wid.y, 32u, 0u, acc.a0, acc.a1);
    reduce_store(lid, wid.x, wid.y, 32u, 8u, acc.a2, acc.a3);
    reduce_store(lid, wid.x, wid.y, 32u, 16u, acc.a4, acc.a5);
    reduce_store(lid, wid.x, wid.y, 32u, 24u, acc.a6, acc.a7);
}

fn chunk_start(wid: vec3<u32>) -> u32 {
    return wid.y * params.chunk_len;
}

fn chunk_end(wid: vec3<u32>) -> u32 {
    return min(chunk_start(wid) + params.chunk_len, params.cols);
}

@compute @workgroup_size(WG)
fn sparse_f16(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let k0 = chunk_start(wid);
    finish_f16(lid, wid, k0, compact_tree(lid, k0, chunk_end(wid)));
}

@compute @workgroup_size(WG)
fn sparse_affine4(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let k0 = chunk_start(wid);
    finish_affine4(lid, wid, k0, compact_tree(lid, k0, chunk_end(wid)));
}

@compute @workgroup_size(WG)
fn sparse_f16_subgroup(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(subgroup_size) sg_size: u32,
    @builtin(num_subgroups) sg_count: u32,
) {
    let k0 = chunk_start(wid);
    let n = compact_subgroup(k0, chunk_end(wid), sg_lane, sg_id, sg_size, sg_count);
    finish_f16(lid, wid, k0, n);
}

@compute @workgroup_size(WG)
fn sparse_affine4_subgroup(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(subgroup_size) sg_size: u32,
    @builtin(num_subgroups) sg_count: u32,
) {
    let k0 = chunk_start(wid);
    let n = compact_subgroup(k0, chunk_end(wid), sg_lane, sg_id, sg_size, sg_count);
    finish_affine4(lid, wid, k0, n);
}
