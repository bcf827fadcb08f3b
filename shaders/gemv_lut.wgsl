// Lookup-table GEMV for codebook codecs: y[row_offset + r] = sum_k L[r, q[r,k]] * s[r, k / BLOCK] * x[k]
// for the rows of one block of a matrix, where L holds 2^BITS levels per row
// (PER_ROW) or one set for the whole tensor, and s is an optional per-block
// scale (BLOCK > 0; NF4's absmax).
//
// Layout (prepared by membound-gpu's `LutGemv` from membound-codec's
// k-means, NF4 and polynomial-level encodings): each row's codes are MLX's
// LSB-first stream of BITS-bit codes (code k at stream bits k*BITS..,
// stream bit i in bit i%32 of word i/32; 3-bit codes straddle words),
// padded with zero words to whole chunks. A chunk is what a thread loads
// from one row at once: one 16-byte vec4 (64, 32 or 16 codes at 2, 4 or 8
// bits), or three for 3-bit codes (128 codes). Levels are f32. Scales are
// packed two to a u32 (f16 or bf16, even block in the low half) or one
// (f32), per SCALE_KIND.
//
// The workgroup first stages the levels its rows use in workgroup memory;
// then, like the dense and affine kernels, its threads stride over the
// rows' chunks together, look every code up and accumulate level * x, one
// partial sum per row, reduced with subgroupAdd (`*_subgroup`) or a tree in
// workgroup memory. Where BLOCK is a multiple of 32 a block scale multiplies
// the sum of a run of 32 codes; otherwise each level is scaled on its own.
// Values of x past `cols` are masked to zero in the last (partial) chunk, so
// the padding codes contribute nothing.

struct Params {
    // Rows in this block (at least 1).
    rows: u32,
    // Logical row length K.
    cols: u32,
    // Row stride in vec4<u32>: chunks * (3 if BITS == 3 else 1).
    stride: u32,
    // Index in y of this block's first row.
    row_offset: u32,
    // Chunks per row, ceil(cols / codes per chunk).
    chunks: u32,
    // Chunks holding no column at or past `cols`.
    full_chunks: u32,
    // Scales per row (at least 1); block indices are clamped to it.
    blocks: u32,
    // u32 words of scales per row.
    scale_stride: u32,
}

// Threads per workgroup; a power of two.
override WG: u32 = 128u;
// Code width: 2, 3, 4 or 8.
override BITS: u32 = 4u;
// Weights per scale; 0 for no scales.
override BLOCK: u32 = 0u;
// Storage of scales: 0 = f16 pairs, 1 = bf16 pairs, 2 = f32.
override SCALE_KIND: u32 = 0u;
// Levels per row (true) or one set for the whole tensor (false).
override PER_ROW: bool = true;
// Levels staged per workgroup: ROWS << BITS per row, else 1 << BITS.
override LUT_LEN: u32 = 64u;

// Rows per workgroup: one accumulator lane each.
const ROWS: u32 = 4u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> codes: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> levels: array<f32>;
@group(0) @binding(3) var<storage, read> scales: array<u32>;
@group(0) @binding(4) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

var<workgroup> lut: array<f32, LUT_LEN>;
var<workgroup> partial: array<vec4<f32>, WG>;

// Levels per set.
fn levels_per_set() -> u32 {
    return 1u << BITS;
}

// Codes per part: the run of codes whose x a thread holds at once (32, or
// the whole 16-code chunk at 8 bits).
fn part_codes() -> u32 {
    return select(32u, 16u, BITS == 8u);
}

// Parts per chunk.
fn parts() -> u32 {
    switch BITS {
        case 2u: { return 2u; }
        case 3u: { return 4u; }
        default: { return 1u; }
    }
}

// Weights per scale, never zero (the divisor of block indices).
fn block_len() -> u32 {
    return max(BLOCK, 1u);
}

// Whether each level is scaled on its own (blocks not made of whole parts).
fn scale_each() -> bool {
    return BLOCK != 0u && block_len() % part_codes() != 0u;
}

// The levels of the workgroup's rows into `lut`.
fn stage_levels(block: u32, lid: u32) {
    let n = levels_per_set();
    for (var i = lid; i < LUT_LEN; i += WG) {
        if PER_ROW {
            let row = min(block * ROWS + i / n, params.rows - 1u);
            lut[i] = levels[row * n + i % n];
        } else {
            lut[i] = levels[i];
        }
    }
    workgroupBarrier();
}

// x[4i .. 4i+4]; in the last chunk, entries at or past `cols` are zero and
// the read is kept within the vector's data.
fn load_x(i: u32, masked: bool) -> vec4<f32> {
    if masked {
        let index = vec4<u32>(i * 4u) + vec4<u32>(0u, 1u, 2u, 3u);
        let last = (params.cols - 1u) / 4u;
        return select(vec4<f32>(0.0), x[min(i, last)], index < vec4<u32>(params.cols));
    }
    return x[i];
}

// The x of one part (the last four stay zero for a 16-code part).
struct XPart {
    v0: vec4<f32>,
    v1: vec4<f32>,
    v2: vec4<f32>,
    v3: vec4<f32>,
    v4: vec4<f32>,
    v5: vec4<f32>,
    v6: vec4<f32>,
    v7: vec4<f32>,
}

fn load_part(i0: u32, masked: bool) -> XPart {
    var p: XPart;
    p.v0 = load_x(i0, masked);
    p.v1 = load_x(i0 + 1u, masked);
    p.v2 = load_x(i0 + 2u, masked);
    p.v3 = load_x(i0 + 3u, masked);
    if BITS != 8u {
        p.v4 = load_x(i0 + 4u, masked);
        p.v5 = load_x(i0 + 5u, masked);
        p.v6 = load_x(i0 + 6u, masked);
        p.v7 = load_x(i0 + 7u, masked);
    }
    return p;
}

// Scale of block b of the row whose scales start at word `srow`.
fn block_scale(srow: u32, b: u32) -> f32 {
    let i = min(b, params.blocks - 1u);
    switch SCALE_KIND {
        case 0u: {
            let v = unpack2x16float(scales[srow + i / 2u]);
            return select(v.x, v.y, (i & 1u) == 1u);
        }
        case 1u: {
            let w = scales[srow + i / 2u];
            return bitcast<f32>(select(w << 16u, w & 0xffff0000u, (i & 1u) == 1u));
        }
        default: {
            return bitcast<f32>(scales[srow + i]);
        }
    }
}

// Level * x for four codes, the first of them code k0 of the row; `o` is
// the row's first level in `lut`.
fn term(o: u32, q: vec4<u32>, srow: u32, k0: u32, xv: vec4<f32>) -> f32 {
    var l = vec4<f32>(lut[o + q.x], lut[o + q.y], lut[o + q.z], lut[o + q.w]);
    if scale_each() {
        l *= vec4<f32>(
            block_scale(srow, k0 / block_len()),
            block_scale(srow, (k0 + 1u) / block_len()),
            block_scale(srow, (k0 + 2u) / block_len()),
            block_scale(srow, (k0 + 3u) / block_len()),
        );
    }
    return dot(l, xv);
}

// The BITS-bit codes at bit offsets s of words t.
fn codes_at(t: vec4<u32>, s: vec4<u32>) -> vec4<u32> {
    return (t >> s) & vec4<u32>((1u << BITS) - 1u);
}

// Sum of level * x over the 32 codes of a part of two 2-bit words.
fn part2(o: u32, w0: u32, w1: u32, srow: u32, k: u32, p: XPart) -> f32 {
    let lo = vec4<u32>(0u, 2u, 4u, 6u);
    let v0 = vec4<u32>(w0);
    let v1 = vec4<u32>(w1);
    return ((term(o, codes_at(v0, lo), srow, k, p.v0) + term(o, codes_at(v0, lo + 8u), srow, k + 4u, p.v1))
        + (term(o, codes_at(v0, lo + 16u), srow, k + 8u, p.v2) + term(o, codes_at(v0, lo + 24u), srow, k + 12u, p.v3)))
        + ((term(o, codes_at(v1, lo), srow, k + 16u, p.v4) + term(o, codes_at(v1, lo + 8u), srow, k + 20u, p.v5))
        + (term(o, codes_at(v1, lo + 16u), srow, k + 24u, p.v6) + term(o, codes_at(v1, lo + 24u), srow, k + 28u, p.v7)));
}

// Sum of level * x over the 32 codes of a part of three 3-bit words (a
// 96-bit stream, code j at stream bit 3j). Codes 10 and 21 straddle words:
// t1 and t2 realign the stream from them on (codes 10-19 and 21-30), and
// codes 20 and 31, whose last bit t1 and t2 lose, come from w1 and w2.
fn part3(o: u32, w0: u32, w1: u32, w2: u32, srow: u32, k: u32, p: XPart) -> f32 {
    let t1 = (w0 >> 30u) | (w1 << 2u);
    let t2 = (w1 >> 31u) | (w2 << 1u);
    let c0 = codes_at(vec4<u32>(w0), vec4<u32>(0u, 3u, 6u, 9u));
    let c1 = codes_at(vec4<u32>(w0), vec4<u32>(12u, 15u, 18u, 21u));
    let c2 = codes_at(vec4<u32>(w0, w0, t1, t1), vec4<u32>(24u, 27u, 0u, 3u));
    let c3 = codes_at(vec4<u32>(t1), vec4<u32>(6u, 9u, 12u, 15u));
    let c4 = codes_at(vec4<u32>(t1), vec4<u32>(18u, 21u, 24u, 27u));
    let c5 = codes_at(vec4<u32>(w1, t2, t2, t2), vec4<u32>(28u, 0u, 3u, 6u));
    let c6 = codes_at(vec4<u32>(t2), vec4<u32>(9u, 12u, 15u, 18u));
    let c7 = codes_at(vec4<u32>(t2, t2, t2, w2), vec4<u32>(21u, 24u, 27u, 29u));
    return ((term(o, c0, srow, k, p.v0) + term(o, c1, srow, k + 4u, p.v1))
        + (term(o, c2, srow, k + 8u, p.v2) + term(o, c3, srow, k + 12u, p.v3)))
        + ((term(o, c4, srow, k + 16u, p.v4) + term(o, c5, srow, k + 20u, p.v5))
        + (term(o, c6, srow, k + 24u, p.v6) + term(o, c7, srow, k + 28u, p.v7)));
}

// Sum of level * x over the 32 codes of a part of four 4-bit words.
fn part4(o: u32, w: vec4<u32>, srow: u32, k: u32, p: XPart) -> f32 {
    let lo = vec4<u32>(0u, 4u, 8u, 12u);
    let hi = vec4<u32>(16u, 20u, 24u, 28u);
    return ((term(o, codes_at(vec4<u32>(w.x), lo), srow, k, p.v0) + term(o, codes_at(vec4<u32>(w.x), hi), srow, k + 4u, p.v1))
        + (term(o, codes_at(vec4<u32>(w.y), lo), srow, k + 8u, p.v2) + term(o, codes_at(vec4<u32>(w.y), hi), srow, k + 12u, p.v3)))
        + ((term(o, codes_at(vec4<u32>(w.z), lo), srow, k + 16u, p.v4) + term(o, codes_at(vec4<u32>(w.z), hi), srow, k + 20u, p.v5))
        + (term(o, codes_at(vec4<u32>(w.w), lo), srow, k + 24u, p.v6) + term(o, codes_at(vec4<u32>(w.w), hi), srow, k + 28u, p.v7)));
}

// Sum of level * x over the 16 codes of a part of four 8-bit words.
fn part8(o: u32, w: vec4<u32>, srow: u32, k: u32, p: XPart) -> f32 {
    let s = vec4<u32>(0u, 8u, 16u, 24u);
    return (term(o, codes_at(vec4<u32>(w.x), s), srow, k, p.v0) + term(o, codes_at(vec4<u32>(w.y), s), srow, k + 4u, p.v1))
        + (term(o, codes_at(vec4<u32>(w.z), s), srow, k + 8u, p.v2) + term(o, codes_at(vec4<u32>(w.w), s), srow, k + 12u, p.v3));
}

// Sum of (scaled) level * x over part `part` (first code k) of chunk c of
// the row starting at vec4 index `row`.
fn part_dot(row: u32, o: u32, srow: u32, c: u32, part: u32, k: u32, p: XPart) -> f32 {
    switch BITS {
        case 2u: {
            let w = codes[row + c];
            let u = select(w.xy, w.zw, part == 1u);
            return part2(o, u.x, u.y, srow, k, p);
        }
        case 3u: {
            // Part j holds words 3j .. 3j+2 of the chunk's twelve.
            let base = row + 3u * c;
            switch part {
                case 0u: {
                    let a = codes[base];
                    return part3(o, a.x, a.y, a.z, srow, k, p);
                }
                case 1u: {
                    let a = codes[base];
                    let b = codes[base + 1u];
                    return part3(o, a.w, b.x, b.y, srow, k, p);
                }
                case 2u: {
                    let b = codes[base + 1u];
                    let d = codes[base + 2u];
                    return part3(o, b.z, b.w, d.x, srow, k, p);
                }
                default: {
                    let d = codes[base + 2u];
                    return part3(o, d.y, d.z, d.w, srow, k, p);
                }
            }
        }
        case 8u: {
            return part8(o, codes[row + c], srow, k, p);
        }
        default: {
            return part4(o, codes[row + c], srow, k, p);
        }
    }
}

// The rows of a workgroup: rows past the end of the block repeat the last
// one (their sums are never written), which keeps the loop free of branches.
fn block_rows(block: u32) -> vec4<u32> {
    let row0 = block * ROWS;
    return min(vec4<u32>(row0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(params.rows - 1u));
}

// The four rows' contributions of chunk c.
fn chunk(rows: vec4<u32>, base: vec4<u32>, c: u32, masked: bool) -> vec4<f32> {
    var acc = vec4<f32>(0.0);
    let srow = rows * params.scale_stride;
    // Each row's first level in `lut`.
    let o = select(vec4<u32>(0u), vec4<u32>(0u, 1u, 2u, 3u) * levels_per_set(), PER_ROW);
    let n = part_codes() * parts();
    for (var part = 0u; part < parts(); part++) {
        let k = c * n + part * part_codes();
        let p = load_part(k / 4u, masked);
        // A loop rather than four calls: a quarter of the code to compile
        // (drivers unroll it), which llvmpipe takes seconds over.
        for (var r = 0u; r < ROWS; r++) {
            var d = part_dot(base[r], o[r], srow[r], c, part, k, p);
            if BLOCK != 0u && !scale_each() {
                d *= block_scale(srow[r], k / block_len());
            }
            acc[r] += d;
        }
    }
    return acc;
}

// This thread's partial sums of the four rows.
fn partial_sums(block: u32, lid: u32) -> vec4<f32> {
    let rows = block_rows(block);
    let base = rows * params.stride;
    var acc = vec4<f32>(0.0);
    var c = lid;
    for (; c < params.full_chunks; c += WG) {
        acc += chunk(rows, base, c, false);
    }
    if c < params.chunks {
        acc += chunk(rows, base, c, true);
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
// workgroup memory (any subgroup size, partial subgroups included).
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
fn gemv_lut(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let block = block_index(wid, nwg);
    stage_levels(block, lid);
    store(block, lid, reduce_tree(lid, partial_sums(block, lid)));
}

@compute @workgroup_size(WG)
fn gemv_lut_subgroup(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(num_subgroups) sg_count: u32,
) {
    let block = block_index(wid, nwg);
    stage_levels(block, lid);
    let acc = partial_sums(block, lid);
    store(block, lid, reduce_subgroup(lid, acc, sg_lane, sg_id, sg_count));
}
