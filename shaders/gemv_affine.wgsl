// Affine GEMV in MLX's layout: y[row_offset + r] = sum_k (q[r,k]*s[r,g] + b[r,g]) * x[k]
// with g = k / GROUP, for the rows of one block of a matrix.
//
// Layout (prepared by membound-gpu's `AffineGemv` from membound-codec's
// `AffineCodec` encoding): each row is MLX's LSB-first stream of BITS-bit
// codes (code k at stream bits k*BITS.., stream bit i in bit i%32 of word
// i/32; 3-bit codes straddle words), padded with zero words to a whole
// number of chunks. A chunk is what a thread loads from one row at once:
// one 16-byte vec4 (64, 32 or 16 codes at 2, 4 or 8 bits), or three for
// 3-bit codes (128 codes). Scale and bias of a group share one u32 (two f16
// or two bf16, scale in the low half) or take two (f32), per SCALE_KIND.
//
// Dequantisation is folded per group: sum_k (q*s + b)*x = s*sum_k q*x + b*sum_k x.
// The codes are turned into floats without an int-to-float conversion
// (a quarter-rate instruction on current GPUs): a code field c at bit
// offset o of a word, ending below bit 23, masked in place and OR-ed into
// the bits of 2^23, is the f32 2^23 + c*2^o exactly; subtracting 2^23
// leaves c*2^o exactly, and x[k] is pre-multiplied by 2^-o (exact: a power
// of two), so the product is the same rounded q*x. Fields reaching bit 23
// or above are shifted down first, one shift for several fields. Each thread prepares
// the scaled x and the group sum once per chunk for all the rows it serves.
//
// One workgroup computes ROWS consecutive rows. Its threads stride over the
// row's chunks together (consecutive threads read consecutive chunks, fully
// coalesced). Each thread holds one partial sum per row, reduced with
// subgroupAdd (`*_subgroup` entry point) or a tree in workgroup memory.
// Values of x past `cols` are masked to zero in the last (partial) chunk,
// so the padding codes (zero, i.e. weight b) contribute nothing.

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
    // Scale/bias entries per row (at least 1); group indices are clamped to it.
    groups: u32,
    // Distance in entries between two rows' first scale/bias: `groups`, or 0
    // when the whole tensor shares one entry.
    group_stride: u32,
}

// Threads per workgroup; a power of two.
override WG: u32 = 128u;
// Code width: 2, 3, 4 or 8.
override BITS: u32 = 4u;
// Weights per scale/bias: a multiple of 32 (any such value, e.g. a huge one
// for one group per row).
override GROUP: u32 = 64u;
// Storage of scales and biases: 0 = f16 pair, 1 = bf16 pair, 2 = two f32.
override SCALE_KIND: u32 = 0u;

// Rows per workgroup: one accumulator lane each.
const ROWS: u32 = 4u;
// 2^23 as f32 bits, and as f32.
const MAGIC_BITS: u32 = 0x4B000000u;
const MAGIC: f32 = 8388608.0;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> weights: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> scale_bias: array<u32>;
@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

var<workgroup> partial: array<vec4<f32>, WG>;

// Codes per part: the run of codes whose x a thread holds at once (32, or
// the whole 16-code chunk at 8 bits). A part never straddles a group.
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

// vec4<u32> per chunk.
fn chunk_vec4() -> u32 {
    return select(1u, 3u, BITS == 3u);
}

// The f32 values of code fields masked in place (each below bit 23).
fn fields(v: vec4<u32>) -> vec4<f32> {
    return bitcast<vec4<f32>>(v | vec4<u32>(MAGIC_BITS)) - vec4<f32>(MAGIC);
}

// x of one part, each value pre-multiplied by 2^-o for its code's field
// offset o, and the plain sum of the part's x.
struct XPart {
    v0: vec4<f32>,
    v1: vec4<f32>,
    v2: vec4<f32>,
    v3: vec4<f32>,
    v4: vec4<f32>,
    v5: vec4<f32>,
    v6: vec4<f32>,
    v7: vec4<f32>,
    sum: f32,
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

// Powers of two for the field offsets of each code of a part, four codes at
// a time (see the `dot*` functions for the offsets).
const P2_0 = vec4<f32>(1.0, 0.25, 0.0625, 0.015625);
const P2_1 = vec4<f32>(0.00390625, 0.0009765625, 0.000244140625, 0.00006103515625);
const P2_2 = vec4<f32>(0.0000152587890625, 0.000003814697265625, 0.00000095367431640625, 1.0);
const P2_3 = vec4<f32>(0.25, 0.0625, 0.015625, 0.00390625);
const P3_0 = vec4<f32>(1.0, 0.125, 0.015625, 0.001953125);
const P3_1 = vec4<f32>(0.000244140625, 0.000030517578125, 0.000003814697265625, 1.0);
const P3_2 = vec4<f32>(0.125, 0.015625, 0.001953125, 0.000244140625);
const P3_3 = vec4<f32>(0.000030517578125, 0.000003814697265625, 1.0, 0.125);
const P3_4 = vec4<f32>(0.015625, 0.001953125, 0.000244140625, 0.000030517578125);
const P3_5 = vec4<f32>(0.000003814697265625, 1.0, 0.125, 0.015625);
const P3_6 = vec4<f32>(0.001953125, 0.000244140625, 0.000030517578125, 0.000003814697265625);
const P4_0 = vec4<f32>(1.0, 0.0625, 0.00390625, 0.000244140625);
const P4_1 = vec4<f32>(0.0000152587890625, 1.0, 0.0625, 0.00390625);
const P8 = vec4<f32>(1.0, 0.00390625, 1.0, 0.00390625);

// The part of x starting at vec4 index i0.
fn load_part(i0: u32, masked: bool) -> XPart {
    var p: XPart;
    let a0 = load_x(i0, masked);
    let a1 = load_x(i0 + 1u, masked);
    let a2 = load_x(i0 + 2u, masked);
    let a3 = load_x(i0 + 3u, masked);
    if BITS == 8u {
        p.sum = dot((a0 + a1) + (a2 + a3), vec4<f32>(1.0));
        p.v0 = a0 * P8;
        p.v1 = a1 * P8;
        p.v2 = a2 * P8;
        p.v3 = a3 * P8;
        return p;
    }
    let a4 = load_x(i0 + 4u, masked);
    let a5 = load_x(i0 + 5u, masked);
    let a6 = load_x(i0 + 6u, masked);
    let a7 = load_x(i0 + 7u, masked);
    p.sum = dot(((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)), vec4<f32>(1.0));
    switch BITS {
        case 2u: {
            p.v0 = a0 * P2_0;
            p.v1 = a1 * P2_1;
            p.v2 = a2 * P2_2;
            p.v3 = a3 * P2_3;
            p.v4 = a4 * P2_0;
            p.v5 = a5 * P2_1;
            p.v6 = a6 * P2_2;
            p.v7 = a7 * P2_3;
        }
        case 3u: {
            p.v0 = a0 * P3_0;
            p.v1 = a1 * P3_1;
            p.v2 = a2 * P3_2;
            p.v3 = a3 * P3_3;
            p.v4 = a4 * P3_4;
            p.v5 = a5 * P3_5;
            p.v6 = a6 * P3_6;
            p.v7 = a7 * P3_0;
        }
        default: {
            p.v0 = a0 * P4_0;
            p.v1 = a1 * P4_1;
            p.v2 = a2 * P4_0;
            p.v3 = a3 * P4_1;
            p.v4 = a4 * P4_0;
            p.v5 = a5 * P4_1;
            p.v6 = a6 * P4_0;
            p.v7 = a7 * P4_1;
        }
    }
    return p;
}

// Sum of code * x over the 16 2-bit codes of word w (code j at bit 2j;
// codes 11.. taken from w >> 22).
fn dot2(w: u32, xa: vec4<f32>, xb: vec4<f32>, xc: vec4<f32>, xd: vec4<f32>) -> f32 {
    let h = w >> 22u;
    let a = fields(vec4<u32>(w) & vec4<u32>(0x3u, 0xcu, 0x30u, 0xc0u));
    let b = fields(vec4<u32>(w) & vec4<u32>(0x300u, 0xc00u, 0x3000u, 0xc000u));
    let c = fields(vec4<u32>(w, w, w, h) & vec4<u32>(0x30000u, 0xc0000u, 0x300000u, 0x3u));
    let d = fields(vec4<u32>(h) & vec4<u32>(0xcu, 0x30u, 0xc0u, 0x300u));
    return (dot(a, xa) + dot(b, xb)) + (dot(c, xc) + dot(d, xd));
}

// Sum of code * x over the 32 3-bit codes of three words (a 96-bit stream:
// code j at stream bit 3j), regrouped into five words whose fields all lie
// below bit 21: codes 0-6, 7-13, 14-20, 21-27 and 28-31.
fn dot3(w0: u32, w1: u32, w2: u32, p: XPart) -> f32 {
    let t0 = w0;
    let t1 = (w0 >> 21u) | (w1 << 11u);
    let t2 = w1 >> 10u;
    let t3 = (w1 >> 31u) | (w2 << 1u);
    let t4 = w2 >> 20u;
    let m0 = vec4<u32>(0x7u, 0x38u, 0x1c0u, 0xe00u);
    let m1 = vec4<u32>(0x7000u, 0x38000u, 0x1c0000u, 0x7u);
    let c0 = fields(vec4<u32>(t0) & m0);
    let c1 = fields(vec4<u32>(t0, t0, t0, t1) & m1);
    let c2 = fields(vec4<u32>(t1) & vec4<u32>(0x38u, 0x1c0u, 0xe00u, 0x7000u));
    let c3 = fields(vec4<u32>(t1, t1, t2, t2) & vec4<u32>(0x38000u, 0x1c0000u, 0x7u, 0x38u));
    let c4 = fields(vec4<u32>(t2) & vec4<u32>(0x1c0u, 0xe00u, 0x7000u, 0x38000u));
    let c5 = fields(vec4<u32>(t2, t3, t3, t3) & vec4<u32>(0x1c0000u, 0x7u, 0x38u, 0x1c0u));
    let c6 = fields(vec4<u32>(t3) & vec4<u32>(0xe00u, 0x7000u, 0x38000u, 0x1c0000u));
    let c7 = fields(vec4<u32>(t4) & m0);
    return ((dot(c0, p.v0) + dot(c1, p.v1)) + (dot(c2, p.v2) + dot(c3, p.v3)))
        + ((dot(c4, p.v4) + dot(c5, p.v5)) + (dot(c6, p.v6) + dot(c7, p.v7)));
}

// Sum of code * x over the 8 4-bit codes of word w (code j at bit 4j;
// codes 5.. taken from w >> 20).
fn dot4(w: u32, xa: vec4<f32>, xb: vec4<f32>) -> f32 {
    let h = w >> 20u;
    let a = fields(vec4<u32>(w) & vec4<u32>(0xfu, 0xf0u, 0xf00u, 0xf000u));
    let b = fields(vec4<u32>(w, h, h, h) & vec4<u32>(0xf0000u, 0xfu, 0xf0u, 0xf00u));
    return dot(a, xa) + dot(b, xb);
}

// Sum of code * x over the 4 8-bit codes of word w (codes 2, 3 taken from
// w >> 16: code 2's top bit would otherwise land on bit 23).
fn dot8(w: u32, xa: vec4<f32>) -> f32 {
    let h = w >> 16u;
    let a = fields(vec4<u32>(w, w, h, h) & vec4<u32>(0xffu, 0xff00u, 0xffu, 0xff00u));
    return dot(a, xa);
}

// Sum of code * x over part `part` of chunk `c` of the row starting at
// vec4 index `row`.
fn part_dot(row: u32, c: u32, part: u32, p: XPart) -> f32 {
    switch BITS {
        case 2u: {
            let w = weights[row + c];
            let u = select(w.xy, w.zw, part == 1u);
            return dot2(u.x, p.v0, p.v1, p.v2, p.v3) + dot2(u.y, p.v4, p.v5, p.v6, p.v7);
        }
        case 3u: {
            // Part j holds words 3j .. 3j+2 of the chunk's twelve.
            let base = row + 3u * c;
            switch part {
                case 0u: {
                    let a = weights[base];
                    return dot3(a.x, a.y, a.z, p);
                }
                case 1u: {
                    let a = weights[base];
                    let b = weights[base + 1u];
                    return dot3(a.w, b.x, b.y, p);
                }
                case 2u: {
                    let b = weights[base + 1u];
                    let d = weights[base + 2u];
                    return dot3(b.z, b.w, d.x, p);
                }
                default: {
                    let d = weights[base + 2u];
                    return dot3(d.y, d.z, d.w, p);
                }
            }
        }
        case 8u: {
            let w = weights[row + c];
            return (dot8(w.x, p.v0) + dot8(w.y, p.v1)) + (dot8(w.z, p.v2) + dot8(w.w, p.v3));
        }
        default: {
            let w = weights[row + c];
            return (dot4(w.x, p.v0, p.v1) + dot4(w.y, p.v2, p.v3))
                + (dot4(w.z, p.v4, p.v5) + dot4(w.w, p.v6, p.v7));
        }
    }
}

// Scale and bias of entry i.
fn load_scale_bias(i: u32) -> vec2<f32> {
    switch SCALE_KIND {
        case 0u: {
            return unpack2x16float(scale_bias[i]);
        }
        case 1u: {
            let w = scale_bias[i];
            return vec2<f32>(bitcast<f32>(w << 16u), bitcast<f32>(w & 0xffff0000u));
        }
        default: {
            return vec2<f32>(bitcast<f32>(scale_bias[2u * i]), bitcast<f32>(scale_bias[2u * i + 1u]));
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
    let sbase = rows * params.group_stride;
    let codes = part_codes() * parts();
    for (var part = 0u; part < parts(); part++) {
        let first = c * codes + part * part_codes();
        let p = load_part(first / 4u, masked);
        let g = min(first / GROUP, params.groups - 1u);
        let s0 = load_scale_bias(sbase.x + g);
        let s1 = load_scale_bias(sbase.y + g);
        let s2 = load_scale_bias(sbase.z + g);
        let s3 = load_scale_bias(sbase.w + g);
        let d = vec4<f32>(
            part_dot(base.x, c, part, p),
            part_dot(base.y, c, part, p),
            part_dot(base.z, c, part, p),
            part_dot(base.w, c, part, p),
        );
        acc += vec4<f32>(s0.x, s1.x, s2.x, s3.x) * d + vec4<f32>(s0.y, s1.y, s2.y, s3.y) * p.sum;
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
fn gemv_affine(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let block = block_index(wid, nwg);
    store(block, lid, reduce_tree(lid, partial_sums(block, lid)));
}

@compute @workgroup_size(WG)
fn gemv_affine_subgroup(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(num_subgroups) sg_count: u32,
) {
    let block = block_index(wid, nwg);
    let acc = partial_sums(block, lid);
    store(block, lid, reduce_subgroup(lid, acc, sg_lane, sg_id, sg_count));
}
