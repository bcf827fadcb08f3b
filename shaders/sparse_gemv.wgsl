// Activation-sparse GEMV: y = sum over active j of x[j] * W[:, j], reading
// only the weight columns of active inputs. Input j is active iff
// |x[j]| > tau (tau = 0: the exact-zero test).
//
// Layout (prepared by membound-gpu's `SparseGemv`): W is stored column-major
// (Wt row-major), `stride` units a column, so an active column is one
// contiguous read. A unit holds 8 consecutive outputs:
//   - f16: 16 bytes, packed f16 pairs (`weights`), columns padded to whole
//     units;
//   - 4-bit affine: one u32 of MLX-packed codes, LSB first (`codes`): the
//     codec's `weight` part of Wt as it is; `scales[j * groups + g]` holds
//     group g's f16 scale (low half) and bias (high half). Groups run along
//     the outputs, 8 << group_shift of them, so a unit lies in one group.
//
// Grid: workgroup (t, c) owns the outputs of row tile t (TPC units of every
// column, 8 * TPC outputs) and the inputs of K-chunk c (`chunk_len`
// consecutive inputs), which it takes in segments of LMAX = 4 * WG:
//   1. mask + compaction: it tests the segment's inputs (four per thread)
//      and compacts the active ones, in increasing order, into workgroup
//      memory as (index, x bits) with an ordered prefix sum (deterministic,
//      no atomics); tile 0 also writes them to `compact` after the chunk's
//      earlier segments, from offset c * chunk_len, and the chunk's count
//      to counts[4 + c]. The next segment's x is loaded before this one is
//      streamed, so its latency hides under the stream;
//   2. mat-vec: its threads form WG / TPC column lanes of TPC threads; the
//      TPC threads of a lane read consecutive units of one active column
//      (coalesced, TPC contiguous units), and the lanes take the compacted
//      list round-robin, eight columns in flight per thread;
//   3. at the end the lanes' sums of each thread's 8 outputs are added in
//      workgroup memory along a fixed tree and written to
//      `out[c * rows + row]`.
// With one K-chunk, `out` is y itself and `compact` the final list
// (counts[0..3] = count, 1, 1: an indirect-dispatch triple). With several,
// `out` holds per-chunk partial sums and `compact` per-chunk lists, and
// either
//   - LAST_REDUCE: the last workgroup of each row tile to finish adds the
//     tile's partial sums into `y` (one dispatch). Each workgroup stores its
//     sums in atomic slots of `out` (EMPTY between calls) and counts itself
//     in on the tile's arrival counter, counts[4 + chunks + t]; the one
//     that sees chunks − 1 others resets the counter, takes every slot of
//     the tile by atomic exchange with EMPTY (taking again any still EMPTY:
//     its store was issued, as its workgroup has arrived, but is not yet
//     visible), and adds the chunks' sums in chunk order, exactly as
//     sparse_reduce.wgsl does (so the two ways agree bit for bit). No
//     ordering between memory locations is assumed: WGSL's atomics are
//     relaxed, and on the H100's Vulkan driver a storage barrier did not
//     make one workgroup's sums visible to another before its count. Row
//     tile 0's counter also adds up the chunks' active counts, which its
//     last workgroup writes to counts[0..3];
//   - or not: sparse_reduce.wgsl adds them up in a second dispatch and
//     joins the per-chunk lists into one.
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
    // Units from one column to the next.
    stride: u32,
    // Units holding a column's outputs: ceil(rows / 8).
    units: u32,
    // Inputs per K-chunk (a multiple of 4).
    chunk_len: u32,
    // Number of K-chunks (the grid's y size).
    chunks: u32,
    // 4-bit affine: scale groups per column.
    groups: u32,
    // 4-bit affine: log2(group size / 8).
    group_shift: u32,
}

// Threads per workgroup, a power of two.
override WG: u32 = 256u;
// Threads per column (a power of two dividing WG): the row tile is TPC
// units, 8 * TPC outputs.
override TPC: u32 = 16u;
// Inputs per segment: one scan round of four inputs per thread. The list
// of a segment's active inputs (8 bytes each) and, at the end, the lanes'
// partial sums (two vec4 per thread) share one workgroup array of this many
// 8-byte slots, which keeps workgroup memory at 9 KB for 256 threads.
override LMAX: u32 = 4u * WG;
// y += W·x, a residual add, instead of y = W·x: done by `store` with one
// K-chunk (out is y), by `finish` under LAST_REDUCE, and otherwise by
// sparse_reduce.wgsl's ACCUM.
override ACCUM: bool = false;
// The input is made from `x` as it is loaded, so no dispatch has to write
// it first:
//   - GLU_IN: x holds [gate (cols values); up (cols values)] and input j is
//     silu(gate_j)·up_j (the down projection reading the gate/up output;
//     cols a multiple of 4);
//   - NORM_IN: input j is x_j·g_j / sqrt(mean(x²) + NORM_EPS), g in
//     `norm_w` (the gate/up projection reading the residual stream); each
//     workgroup first adds up the squares of all of x.
// The threshold applies to the input so made, which is also what the
// compacted list holds.
override GLU_IN: bool = false;
override NORM_IN: bool = false;
override NORM_EPS: f32 = 1e-5;
// With several K-chunks: the last workgroup of each row tile adds the
// partial sums into `y` (see above) instead of a second dispatch.
override LAST_REDUCE: bool = false;

@group(0) @binding(0) var<uniform> params: Params;
// x: the magnitude bits of tau.
@group(0) @binding(1) var<uniform> tau: vec4<u32>;
@group(0) @binding(2) var<storage, read> weights: array<vec4<u32>>;
// The same binding for 4-bit entry points.
@group(0) @binding(2) var<storage, read> codes: array<u32>;
// The f32 input, read as bits; valid up to `cols`, allocated to a multiple of 4.
@group(0) @binding(3) var<storage, read> x: array<vec4<u32>>;
// y, or the per-chunk partial sums, as f32 bits: atomic, so that under
// LAST_REDUCE a sum stored by one workgroup becomes visible to the last
// one (plain accesses may be cached incoherently). Within a dispatch only
// one thread writes an element, so plain stores and loads of atomics do.
@group(0) @binding(4) var<storage, read_write> out: array<atomic<u32>>;
@group(0) @binding(5) var<storage, read_write> compact: array<vec2<u32>>;
// [total, 1, 1, 0, per-chunk counts…, LAST_REDUCE's per-tile arrival counters…]
@group(0) @binding(6) var<storage, read_write> counts: array<atomic<u32>>;
@group(0) @binding(7) var<storage, read> scales: array<u32>;
// NORM_IN's scale g (bound, never read, otherwise).
@group(0) @binding(8) var<storage, read> norm_w: array<vec4<f32>>;
// LAST_REDUCE: the output y, when `out` holds partial sums (bound, never
// read, otherwise).
@group(0) @binding(9) var<storage, read_write> y: array<f32>;

var<workgroup> list: array<vec2<u32>, LMAX>;
var<workgroup> scan: array<u32, WG>;
// LAST_REDUCE: whether this workgroup was its row tile's last to finish.
var<workgroup> last_arrival: u32;

// The reduction's vec4 number i, kept in list slots 2i and 2i + 1.
fn red_store(i: u32, v: vec4<f32>) {
    list[2u * i] = bitcast<vec2<u32>>(v.xy);
    list[2u * i + 1u] = bitcast<vec2<u32>>(v.zw);
}

fn red_load(i: u32) -> vec4<f32> {
    return vec4<f32>(bitcast<vec2<f32>>(list[2u * i]), bitcast<vec2<f32>>(list[2u * i + 1u]));
}

// Four consecutive inputs: their bits and which are active.
struct Quad {
    bits: vec4<u32>,
    on: vec4<bool>,
}

fn load_quad(i: u32, end: u32, inv: f32) -> Quad {
    var bits = vec4<u32>(0u);
    if i < end {
        if GLU_IN {
            let g = bitcast<vec4<f32>>(x[i / 4u]);
            let u = bitcast<vec4<f32>>(x[(params.cols + i) / 4u]);
            bits = bitcast<vec4<u32>>(g / (1.0 + exp(-g)) * u);
        } else if NORM_IN {
            bits = bitcast<vec4<u32>>(bitcast<vec4<f32>>(x[i / 4u]) * norm_w[i / 4u] * inv);
        } else {
            bits = x[i / 4u];
        }
    }
    let index = vec4<u32>(i) + vec4<u32>(0u, 1u, 2u, 3u);
    let mag = bits & vec4<u32>(0x7fffffffu);
    let on = (index < vec4<u32>(end)) & (mag > vec4<u32>(tau.x)) & (mag <= vec4<u32>(0x7f800000u));
    return Quad(bits, on);
}

// NORM_IN: 1 / sqrt(mean(x²) + NORM_EPS) over all `cols` inputs, summed
// along a fixed tree in workgroup memory (every workgroup gets the same
// value); 1 otherwise. Call from uniform control flow.
fn norm_inv(lid: u32) -> f32 {
    if !NORM_IN {
        return 1.0;
    }
    var ss = 0.0;
    for (var j = lid; 4u * j < params.cols; j += WG) {
        let index = vec4<u32>(4u * j) + vec4<u32>(0u, 1u, 2u, 3u);
        let v = select(vec4<f32>(0.0), bitcast<vec4<f32>>(x[j]), index < vec4<u32>(params.cols));
        ss += dot(v, v);
    }
    scan[lid] = bitcast<u32>(ss);
    workgroupBarrier();
    for (var h = WG / 2u; h > 0u; h >>= 1u) {
        if lid < h {
            scan[lid] = bitcast<u32>(bitcast<f32>(scan[lid]) + bitcast<f32>(scan[lid + h]));
        }
        workgroupBarrier();
    }
    let total = bitcast<f32>(scan[0]);
    workgroupBarrier();
    return inverseSqrt(total / f32(params.cols) + NORM_EPS);
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

// Compacts a segment's active inputs into `list` given this thread's quad
// (slot `lid`, input i); returns their count.
fn compact_tree(lid: u32, i: u32, q: Quad) -> u32 {
    let s = scan_tree(lid, quad_count(q));
    store_quad(s.x, i, q);
    workgroupBarrier();
    return s.y;
}

fn compact_subgroup(i: u32, q: Quad, sg_lane: u32, sg_id: u32, sg_count: u32) -> u32 {
    let s = scan_subgroup(quad_count(q), sg_lane, sg_id, sg_count);
    store_quad(s.x, i, q);
    workgroupBarrier();
    return s.y;
}

// Row tile 0 publishes a segment's n entries at `at` in `compact`.
fn publish(lid: u32, tile: u32, at: u32, n: u32) {
    if tile != 0u {
        return;
    }
    for (var p = lid; p < n; p += WG) {
        compact[at + p] = list[p];
    }
}

// Row tile 0 publishes the chunk's count (and, with one chunk, the total
// and the rest of the indirect-dispatch triple).
fn publish_count(lid: u32, tile: u32, chunk: u32, n: u32) {
    if tile != 0u || lid != 0u {
        return;
    }
    atomicStore(&counts[4u + chunk], n);
    if params.chunks == 1u {
        atomicStore(&counts[0], n);
        atomicStore(&counts[1], 1u);
        atomicStore(&counts[2], 1u);
    }
}

// This thread's unit of the row tile, clamped to the last unit so that
// threads past the end read valid memory (their sums are never written).
fn row_unit(lid: u32, tile: u32) -> u32 {
    return min(tile * TPC + lid % TPC, params.units - 1u);
}

// The list entry at p, or past the end (p >= n > 0) the last one with x = 0:
// a duplicate read served by cache that adds nothing. It lets the loops
// issue all their loads per iteration with no serial remainder.
fn entry(p: u32, n: u32) -> vec2<u32> {
    let e = list[min(p, n - 1u)];
    return select(vec2<u32>(e.x, 0u), e, p < n);
}

struct Acc8 {
    a: vec4<f32>,
    b: vec4<f32>,
}

fn add_f16(acc: Acc8, w: vec4<u32>, e: vec2<u32>) -> Acc8 {
    let v = vec4<f32>(bitcast<f32>(e.y));
    return Acc8(
        fma(vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y)), v, acc.a),
        fma(vec4<f32>(unpack2x16float(w.z), unpack2x16float(w.w)), v, acc.b),
    );
}

// Adds this thread's 8 outputs times the first n list entries of its lane,
// eight 16-byte loads in flight per thread (as the dense kernel).
fn stream_f16(acc_in: Acc8, lid: u32, tile: u32, n: u32) -> Acc8 {
    let lanes = WG / TPC;
    let rc = row_unit(lid, tile);
    let stride = params.stride;
    var acc = acc_in;
    for (var p = lid / TPC; p < n; p += 8u * lanes) {
        let e0 = entry(p, n);
        let e1 = entry(p + lanes, n);
        let e2 = entry(p + 2u * lanes, n);
        let e3 = entry(p + 3u * lanes, n);
        let e4 = entry(p + 4u * lanes, n);
        let e5 = entry(p + 5u * lanes, n);
        let e6 = entry(p + 6u * lanes, n);
        let e7 = entry(p + 7u * lanes, n);
        let w0 = weights[e0.x * stride + rc];
        let w1 = weights[e1.x * stride + rc];
        let w2 = weights[e2.x * stride + rc];
        let w3 = weights[e3.x * stride + rc];
        let w4 = weights[e4.x * stride + rc];
        let w5 = weights[e5.x * stride + rc];
        let w6 = weights[e6.x * stride + rc];
        let w7 = weights[e7.x * stride + rc];
        acc = add_f16(acc, w0, e0);
        acc = add_f16(acc, w1, e1);
        acc = add_f16(acc, w2, e2);
        acc = add_f16(acc, w3, e3);
        acc = add_f16(acc, w4, e4);
        acc = add_f16(acc, w5, e5);
        acc = add_f16(acc, w6, e6);
        acc = add_f16(acc, w7, e7);
    }
    return acc;
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
fn add_affine4(acc: Acc8, word: u32, sb: u32, e: vec2<u32>) -> Acc8 {
    let f = unpack2x16float(sb);
    // scale · 16^-k, k = 0..3.
    let s = vec4<f32>(f.x) * vec4<f32>(1.0, 0.0625, 0.00390625, 0.000244140625);
    let b = vec4<f32>(f.y);
    let v = vec4<f32>(bitcast<f32>(e.y));
    return Acc8(
        fma(fma(nibbles(word), s, b), v, acc.a),
        fma(fma(nibbles(word >> 16u), s, b), v, acc.b),
    );
}

// Adds this thread's 8 outputs times the first n list entries of its lane,
// eight code words and their scales in flight per thread.
fn stream_affine4(acc_in: Acc8, lid: u32, tile: u32, n: u32) -> Acc8 {
    let lanes = WG / TPC;
    let rc = row_unit(lid, tile);
    let stride = params.stride;
    let groups = params.groups;
    let g = rc >> params.group_shift;
    var acc = acc_in;
    for (var p = lid / TPC; p < n; p += 8u * lanes) {
        let e0 = entry(p, n);
        let e1 = entry(p + lanes, n);
        let e2 = entry(p + 2u * lanes, n);
        let e3 = entry(p + 3u * lanes, n);
        let e4 = entry(p + 4u * lanes, n);
        let e5 = entry(p + 5u * lanes, n);
        let e6 = entry(p + 6u * lanes, n);
        let e7 = entry(p + 7u * lanes, n);
        let w0 = codes[e0.x * stride + rc];
        let w1 = codes[e1.x * stride + rc];
        let w2 = codes[e2.x * stride + rc];
        let w3 = codes[e3.x * stride + rc];
        let w4 = codes[e4.x * stride + rc];
        let w5 = codes[e5.x * stride + rc];
        let w6 = codes[e6.x * stride + rc];
        let w7 = codes[e7.x * stride + rc];
        let s0 = scales[e0.x * groups + g];
        let s1 = scales[e1.x * groups + g];
        let s2 = scales[e2.x * groups + g];
        let s3 = scales[e3.x * groups + g];
        let s4 = scales[e4.x * groups + g];
        let s5 = scales[e5.x * groups + g];
        let s6 = scales[e6.x * groups + g];
        let s7 = scales[e7.x * groups + g];
        acc = add_affine4(acc, w0, s0, e0);
        acc = add_affine4(acc, w1, s1, e1);
        acc = add_affine4(acc, w2, s2, e2);
        acc = add_affine4(acc, w3, s3, e3);
        acc = add_affine4(acc, w4, s4, e4);
        acc = add_affine4(acc, w5, s5, e5);
        acc = add_affine4(acc, w6, s6, e6);
        acc = add_affine4(acc, w7, s7, e7);
    }
    return acc;
}

// out[i] = v, or out[i] += v if `add`.
// (A sum whose bits are EMPTY, a NaN no arithmetic here produces, is
// stored as another NaN.)
fn put(i: u32, v: f32, add: bool) {
    var w = v;
    if add {
        w += bitcast<f32>(atomicLoad(&out[i]));
    }
    let b = bitcast<u32>(w);
    atomicStore(&out[i], select(b, 0x7fc00000u, b == EMPTY));
}

// Adds up the lanes' sums of each thread's 8 outputs along a fixed tree,
// every thread taking part, and writes them to out[chunk * rows + row].
// Call from uniform control flow, once the list is no longer read (the sums
// reuse its memory).
fn store(lid: u32, wid: vec3<u32>, acc: Acc8) {
    let lane = lid / TPC;
    red_store(2u * lid, acc.a);
    red_store(2u * lid + 1u, acc.b);
    workgroupBarrier();
    for (var h = WG / TPC / 2u; h > 0u; h >>= 1u) {
        if lane < h {
            let o = 2u * (lid + h * TPC);
            red_store(2u * lid, red_load(2u * lid) + red_load(o));
            red_store(2u * lid + 1u, red_load(2u * lid + 1u) + red_load(o + 1u));
        }
        workgroupBarrier();
    }
    if lid < TPC {
        let sa = red_load(2u * lid);
        let sb = red_load(2u * lid + 1u);
        let row = (wid.x * TPC + lid) * 8u;
        let base = wid.y * params.rows;
        let add = ACCUM && params.chunks == 1u;
        for (var k = 0u; k < 4u; k++) {
            if row + k < params.rows {
                let i = base + row + k;
                put(i, sa[k], add);
            }
            if row + 4u + k < params.rows {
                let i = base + row + 4u + k;
                put(i, sb[k], add);
            }
        }
    }
}

// LAST_REDUCE: an empty partial-sum slot. Slots hold it between calls;
// `store` never writes it (it writes another NaN instead).
const EMPTY: u32 = 0xffffffffu;
// LAST_REDUCE: low bits of an arrival counter count the workgroups that
// have arrived; above them, row tile 0's counter adds up the chunks'
// active counts (the plan keeps chunks below 2^10 and cols below 2^22).
const ARRIVAL_BITS: u32 = 10u;

// A partial sum from slot i once it has arrived, given the value a first
// exchange took from it: each exchange empties the slot for the next call
// and returns what it held, repeated until that is a sum.
fn take(i: u32, first: u32) -> f32 {
    var b = first;
    loop {
        if b != EMPTY {
            break;
        }
        b = atomicExchange(&out[i], EMPTY);
    }
    return bitcast<f32>(b);
}

// LAST_REDUCE with several chunks: the row tile's last workgroup to finish
// adds up the tile's partial sums into y (see the top of the file); `n` is
// this workgroup's count of active inputs. Call from uniform control flow
// after `store`.
//
// Nothing here relies on memory ordering between different locations
// (WGSL's atomics are relaxed, and a storage barrier did not order them on
// the H100's driver): the arrival counter only elects the last workgroup,
// which then waits on each slot it reads until that slot's value has
// arrived. Every other workgroup of the tile has arrived, so each slot's
// store has been issued and the wait ends.
fn finish(lid: u32, wid: vec3<u32>, n: u32) {
    let chunks = params.chunks;
    if !LAST_REDUCE || chunks == 1u {
        return;
    }
    let arrivals = 4u + chunks + wid.x;
    let mask = (1u << ARRIVAL_BITS) - 1u;
    workgroupBarrier();
    if lid == 0u {
        let word = 1u | select(0u, n << ARRIVAL_BITS, wid.x == 0u);
        let before = atomicAdd(&counts[arrivals], word);
        let last = (before & mask) == chunks - 1u;
        last_arrival = u32(last);
        if last {
            atomicStore(&counts[arrivals], 0u);
            if wid.x == 0u {
                atomicStore(&counts[0], (before >> ARRIVAL_BITS) + n);
                atomicStore(&counts[1], 1u);
                atomicStore(&counts[2], 1u);
            }
        }
    }
    if workgroupUniformLoad(&last_arrival) == 0u {
        return;
    }
    let rows = params.rows;
    let first = wid.x * TPC * 8u;
    let end = min(first + TPC * 8u, rows);
    for (var r = first + lid; r < end; r += WG) {
        var sum = 0.0;
        var c = 0u;
        for (; c + 8u <= chunks; c += 8u) {
            let i = c * rows + r;
            let b0 = atomicExchange(&out[i], EMPTY);
            let b1 = atomicExchange(&out[i + rows], EMPTY);
            let b2 = atomicExchange(&out[i + 2u * rows], EMPTY);
            let b3 = atomicExchange(&out[i + 3u * rows], EMPTY);
            let b4 = atomicExchange(&out[i + 4u * rows], EMPTY);
            let b5 = atomicExchange(&out[i + 5u * rows], EMPTY);
            let b6 = atomicExchange(&out[i + 6u * rows], EMPTY);
            let b7 = atomicExchange(&out[i + 7u * rows], EMPTY);
            sum = sum + take(i, b0);
            sum = sum + take(i + rows, b1);
            sum = sum + take(i + 2u * rows, b2);
            sum = sum + take(i + 3u * rows, b3);
            sum = sum + take(i + 4u * rows, b4);
            sum = sum + take(i + 5u * rows, b5);
            sum = sum + take(i + 6u * rows, b6);
            sum = sum + take(i + 7u * rows, b7);
        }
        for (; c < chunks; c++) {
            let i = c * rows + r;
            sum += take(i, atomicExchange(&out[i], EMPTY));
        }
        if ACCUM {
            y[r] += sum;
        } else {
            y[r] = sum;
        }
    }
}

// The entry points differ only in the scan and the stream.

fn chunk_start(wid: vec3<u32>) -> u32 {
    return wid.y * params.chunk_len;
}

fn chunk_end(wid: vec3<u32>) -> u32 {
    return min(chunk_start(wid) + params.chunk_len, params.cols);
}

fn zero8() -> Acc8 {
    return Acc8(vec4<f32>(0.0), vec4<f32>(0.0));
}

@compute @workgroup_size(WG)
fn sparse_f16(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let k0 = chunk_start(wid);
    let k1 = chunk_end(wid);
    var acc = zero8();
    var total = 0u;
    let inv = norm_inv(lid);
    var q = load_quad(k0 + 4u * lid, k1, inv);
    for (var s = k0; s < k1; s += LMAX) {
        let n = compact_tree(lid, s + 4u * lid, q);
        q = load_quad(s + LMAX + 4u * lid, k1, inv);
        publish(lid, wid.x, k0 + total, n);
        acc = stream_f16(acc, lid, wid.x, n);
        total += n;
        workgroupBarrier();
    }
    publish_count(lid, wid.x, wid.y, total);
    store(lid, wid, acc);
    finish(lid, wid, total);
}

@compute @workgroup_size(WG)
fn sparse_affine4(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let k0 = chunk_start(wid);
    let k1 = chunk_end(wid);
    var acc = zero8();
    var total = 0u;
    let inv = norm_inv(lid);
    var q = load_quad(k0 + 4u * lid, k1, inv);
    for (var s = k0; s < k1; s += LMAX) {
        let n = compact_tree(lid, s + 4u * lid, q);
        q = load_quad(s + LMAX + 4u * lid, k1, inv);
        publish(lid, wid.x, k0 + total, n);
        acc = stream_affine4(acc, lid, wid.x, n);
        total += n;
        workgroupBarrier();
    }
    publish_count(lid, wid.x, wid.y, total);
    store(lid, wid, acc);
    finish(lid, wid, total);
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
    let slot = sg_id * sg_size + sg_lane;
    let k0 = chunk_start(wid);
    let k1 = chunk_end(wid);
    var acc = zero8();
    var total = 0u;
    let inv = norm_inv(lid);
    var q = load_quad(k0 + 4u * slot, k1, inv);
    for (var s = k0; s < k1; s += LMAX) {
        let n = compact_subgroup(s + 4u * slot, q, sg_lane, sg_id, sg_count);
        q = load_quad(s + LMAX + 4u * slot, k1, inv);
        publish(lid, wid.x, k0 + total, n);
        acc = stream_f16(acc, lid, wid.x, n);
        total += n;
        workgroupBarrier();
    }
    publish_count(lid, wid.x, wid.y, total);
    store(lid, wid, acc);
    finish(lid, wid, total);
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
    let slot = sg_id * sg_size + sg_lane;
    let k0 = chunk_start(wid);
    let k1 = chunk_end(wid);
    var acc = zero8();
    var total = 0u;
    let inv = norm_inv(lid);
    var q = load_quad(k0 + 4u * slot, k1, inv);
    for (var s = k0; s < k1; s += LMAX) {
        let n = compact_subgroup(s + 4u * slot, q, sg_lane, sg_id, sg_count);
        q = load_quad(s + LMAX + 4u * slot, k1, inv);
        publish(lid, wid.x, k0 + total, n);
        acc = stream_affine4(acc, lid, wid.x, n);
        total += n;
        workgroupBarrier();
    }
    publish_count(lid, wid.x, wid.y, total);
    store(lid, wid, acc);
    finish(lid, wid, total);
}
