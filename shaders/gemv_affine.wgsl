// Affine GEMV in MLX's layout: y[row_offset + r] = sum_k (q[r,k]*s[r,g] + b[r,g]) * x[k]
// with g = k / GROUP, for the rows of one block of a matrix.
//
// Layout (prepared by membound-gpu's `AffineGemv` from membound-codec's
// `AffineCodec` encoding): each row is MLX's LSB-first stream of BITS-bit
// codes (code k at stream bits k*BITS.., stream bit i in bit i%32 of word
// i/32; 3-bit codes straddle words), as the codec packed it, padded with
// zero words to whole units. A unit is what a thread takes from one row at
// once: UNIT_WORDS consecutive words (1, 2 or 4; always 3 at 3 bits, 32
// codes), never straddling a group. Scale and bias of a group share one u32
// (two f16 or two bf16, scale in the low half) or take two (f32), per
// SCALE_KIND.
//
// Dequantisation is folded per group: sum_k (q*s + b)*x = s*sum_k q*x + b*sum_k x.
// The codes are turned into floats without an int-to-float conversion
// (a quarter-rate instruction on current GPUs): a code field c at bit
// offset o of a word, ending below bit 23, masked in place and OR-ed into
// the bits of 2^23, is the f32 2^23 + c*2^o exactly; subtracting 2^23
// leaves c*2^o exactly, and x[k] is pre-multiplied by 2^-o (exact: a power
// of two), so the product is the same rounded q*x. Fields reaching bit 23
// or above are shifted down first, one shift for several fields. Each
// thread prepares the scaled x and its sum once per unit for all its rows.
//
// One workgroup computes ROWS (4 or 8) consecutive rows. Its threads stride
// over the rows' units together: consecutive threads take consecutive units,
// so the code words they load are contiguous, and so is the x they need.
// Small units keep each thread's x short (32 bytes for one 4-bit word, as in
// the dense kernel): with 128 bytes of x a thread, an H100 took 22 us for a
// 4096x14336 4-bit GEMV even without any arithmetic.
// The next unit's code words are loaded before the current unit is
// computed, to keep memory busy during the arithmetic. Each thread holds one
// partial sum per row, reduced with subgroupAdd (`*_subgroup` entry point)
// or a tree in workgroup memory. Values of x past `cols` are masked to zero
// in the last (partial) unit, so the padding codes (zero, i.e. weight b)
// contribute nothing.
//
// Fusions, as in gemv_dense.wgsl (see there): NORM (RMSNorm of x with scale
// `norm_w`, the sum of squares taken from the x each unit loads anyway),
// ACCUM (y += W·x) and GLU (rows [0, rows/2) gate, [rows/2, rows) up; a
// workgroup takes ROWS/2 gate rows and their up rows and writes
// silu(gate)·up).

struct Params {
    // Rows in this block (at least 1).
    rows: u32,
    // Logical row length K.
    cols: u32,
    // Row stride in u32 words: units * words per unit.
    stride: u32,
    // Index in y of this block's first row.
    row_offset: u32,
    // Units per row, ceil(cols / codes per unit).
    units: u32,
    // Units holding no column at or past `cols`.
    full_units: u32,
    // Scale/bias entries per row (at least 1); group indices are clamped to it.
    groups: u32,
    // Distance in entries between two rows' first scale/bias: `groups`, or 0
    // when the whole tensor shares one entry.
    group_stride: u32,
}

// Threads per workgroup; a power of two, at least ROWS.
override WG: u32 = 128u;
// Words per unit: 1, 2 or 4 (3 at 3 bits, whatever is given).
override UNIT_WORDS: u32 = 2u;
// Rows per workgroup: 4 or 8 (one accumulator lane each).
override ROWS: u32 = 8u;
// Code width: 2, 3, 4 or 8.
override BITS: u32 = 4u;
// Weights per scale/bias: a multiple of 32 (any such value, e.g. a huge one
// for one group per row).
override GROUP: u32 = 64u;
// Storage of scales and biases: 0 = f16 pair, 1 = bf16 pair, 2 = two f32.
override SCALE_KIND: u32 = 0u;
// The fusions above.
override NORM: bool = false;
override EPS: f32 = 1e-5;
override ACCUM: bool = false;
override GLU: bool = false;

// 2^23 as f32 bits, and as f32.
const MAGIC_BITS: u32 = 0x4B000000u;
const MAGIC: f32 = 8388608.0;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> weights: array<u32>;
@group(0) @binding(2) var<storage, read> scale_bias: array<u32>;
@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
// NORM's per-input scale g (bound, never read, without NORM).
@group(0) @binding(5) var<storage, read> norm_w: array<vec4<f32>>;

// Partial sums of rows 0-3 and 4-7 of the workgroup.
var<workgroup> partial_lo: array<vec4<f32>, WG>;
var<workgroup> partial_hi: array<vec4<f32>, WG>;
// NORM: the threads' sums of squares of x.
var<workgroup> partial_ss: array<f32, WG>;

// Words per unit.
fn unit_words() -> u32 {
    return select(UNIT_WORDS, 3u, BITS == 3u);
}

// Codes per unit.
fn unit_codes() -> u32 {
    return unit_words() * 32u / BITS;
}

// The f32 values of code fields masked in place (each ending below bit 23).
fn fields(v: vec4<u32>) -> vec4<f32> {
    return bitcast<vec4<f32>>(v | vec4<u32>(MAGIC_BITS)) - vec4<f32>(MAGIC);
}

// x of one unit, each value pre-multiplied by 2^-o for its code's field
// offset o (v4..v7 only for 32-code units), and the plain sum of the unit's x.
struct XUnit {
    v0: vec4<f32>,
    v1: vec4<f32>,
    v2: vec4<f32>,
    v3: vec4<f32>,
    v4: vec4<f32>,
    v5: vec4<f32>,
    v6: vec4<f32>,
    v7: vec4<f32>,
    sum: f32,
    // NORM: the sum of squares of the unit's x (before the scale g).
    ss: f32,
}

// x[4i .. 4i+4]; in the last unit, entries at or past `cols` are zero and
// the read is kept within the vector's data.
fn load_x(i: u32, masked: bool) -> vec4<f32> {
    if masked {
        let index = vec4<u32>(i * 4u) + vec4<u32>(0u, 1u, 2u, 3u);
        let last = (params.cols - 1u) / 4u;
        return select(vec4<f32>(0.0), x[min(i, last)], index < vec4<u32>(params.cols));
    }
    return x[i];
}

// x[4i .. 4i+4] as the rows need it: with NORM, times g, and its squares
// (before g) added to *ss.
fn input(i: u32, masked: bool, ss: ptr<function, f32>) -> vec4<f32> {
    let v = load_x(i, masked);
    if NORM {
        *ss += dot(v, v);
        var j = i;
        if masked {
            j = min(i, (params.cols - 1u) / 4u);
        }
        return v * norm_w[j];
    }
    return v;
}

// Powers of two for the field offsets of each code of a unit, four codes at
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

// Scale factors of the j-th four codes of a unit.
fn prescale(j: u32) -> vec4<f32> {
    switch BITS {
        case 2u: {
            switch j % 4u {
                case 0u: { return P2_0; }
                case 1u: { return P2_1; }
                case 2u: { return P2_2; }
                default: { return P2_3; }
            }
        }
        case 3u: {
            switch j {
                case 0u, 7u: { return P3_0; }
                case 1u: { return P3_1; }
                case 2u: { return P3_2; }
                case 3u: { return P3_3; }
                case 4u: { return P3_4; }
                case 5u: { return P3_5; }
                default: { return P3_6; }
            }
        }
        case 8u: {
            return P8;
        }
        default: {
            return select(P4_0, P4_1, j % 2u == 1u);
        }
    }
}

// The x of the unit starting at vec4 index i0 (unit_codes() / 4 vectors).
fn load_unit_x(i0: u32, masked: bool) -> XUnit {
    var p: XUnit;
    let n = unit_codes() / 4u;
    var ss = 0.0;
    let a0 = input(i0, masked, &ss);
    var s = a0;
    p.v0 = a0 * prescale(0u);
    if n > 1u {
        let a1 = input(i0 + 1u, masked, &ss);
        s += a1;
        p.v1 = a1 * prescale(1u);
    }
    if n > 2u {
        let a2 = input(i0 + 2u, masked, &ss);
        let a3 = input(i0 + 3u, masked, &ss);
        s += a2 + a3;
        p.v2 = a2 * prescale(2u);
        p.v3 = a3 * prescale(3u);
    }
    if n > 4u {
        let a4 = input(i0 + 4u, masked, &ss);
        let a5 = input(i0 + 5u, masked, &ss);
        let a6 = input(i0 + 6u, masked, &ss);
        let a7 = input(i0 + 7u, masked, &ss);
        s += (a4 + a5) + (a6 + a7);
        p.v4 = a4 * prescale(4u);
        p.v5 = a5 * prescale(5u);
        p.v6 = a6 * prescale(6u);
        p.v7 = a7 * prescale(7u);
    }
    p.sum = dot(s, vec4<f32>(1.0));
    p.ss = ss;
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
fn dot3(w0: u32, w1: u32, w2: u32, p: XUnit) -> f32 {
    let t0 = w0;
    let t1 = (w0 >> 21u) | (w1 << 11u);
    let t2 = w1 >> 10u;
    let t3 = (w1 >> 31u) | (w2 << 1u);
    let t4 = w2 >> 20u;
    let m0 = vec4<u32>(0x7u, 0x38u, 0x1c0u, 0xe00u);
    let c0 = fields(vec4<u32>(t0) & m0);
    let c1 = fields(vec4<u32>(t0, t0, t0, t1) & vec4<u32>(0x7000u, 0x38000u, 0x1c0000u, 0x7u));
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

// The words of one unit of one row (the first unit_words() components).
fn load_words(i: u32) -> vec4<u32> {
    var w = vec4<u32>(weights[i], 0u, 0u, 0u);
    if unit_words() > 1u {
        w.y = weights[i + 1u];
    }
    if unit_words() > 2u {
        w.z = weights[i + 2u];
    }
    if unit_words() > 3u {
        w.w = weights[i + 3u];
    }
    return w;
}

// Sum of code * x over one unit of one row.
fn unit_dot(w: vec4<u32>, p: XUnit) -> f32 {
    let n = unit_words();
    switch BITS {
        case 2u: {
            var d = dot2(w.x, p.v0, p.v1, p.v2, p.v3);
            if n > 1u {
                d += dot2(w.y, p.v4, p.v5, p.v6, p.v7);
            }
            return d;
        }
        case 3u: {
            return dot3(w.x, w.y, w.z, p);
        }
        case 8u: {
            var d = dot8(w.x, p.v0);
            if n > 1u {
                d += dot8(w.y, p.v1);
            }
            if n > 2u {
                d += dot8(w.z, p.v2) + dot8(w.w, p.v3);
            }
            return d;
        }
        default: {
            var d = dot4(w.x, p.v0, p.v1);
            if n > 1u {
                d += dot4(w.y, p.v2, p.v3);
            }
            if n > 2u {
                d += dot4(w.z, p.v4, p.v5) + dot4(w.w, p.v6, p.v7);
            }
            return d;
        }
    }
}

// One unit's words for each of the workgroup's rows (r4..r7 only if ROWS is 8).
struct Words {
    r0: vec4<u32>,
    r1: vec4<u32>,
    r2: vec4<u32>,
    r3: vec4<u32>,
    r4: vec4<u32>,
    r5: vec4<u32>,
    r6: vec4<u32>,
    r7: vec4<u32>,
}

// The workgroup's rows: first word of each row, and first scale/bias entry.
// Rows past the end of the block repeat the last one (their sums are never
// written), which keeps the loop free of branches.
struct Rows {
    base_lo: vec4<u32>,
    base_hi: vec4<u32>,
    sb_lo: vec4<u32>,
    sb_hi: vec4<u32>,
}

// With GLU, the first ROWS/2 are gate rows and the rest the matching up
// rows.
fn row_index(block: u32, k: u32) -> u32 {
    if GLU {
        let h = ROWS / 2u;
        let half = params.rows / 2u;
        let g = min(block * h + k % h, half - 1u);
        return select(g, half + g, k >= h);
    }
    return min(block * ROWS + k, params.rows - 1u);
}

fn block_rows(block: u32) -> Rows {
    let lo = vec4<u32>(row_index(block, 0u), row_index(block, 1u), row_index(block, 2u), row_index(block, 3u));
    let hi = vec4<u32>(row_index(block, 4u), row_index(block, 5u), row_index(block, 6u), row_index(block, 7u));
    return Rows(lo * params.stride, hi * params.stride, lo * params.group_stride, hi * params.group_stride);
}

fn unit_words_of(r: Rows, u: u32) -> Words {
    var w: Words;
    let o = u * unit_words();
    w.r0 = load_words(r.base_lo.x + o);
    w.r1 = load_words(r.base_lo.y + o);
    w.r2 = load_words(r.base_lo.z + o);
    w.r3 = load_words(r.base_lo.w + o);
    if ROWS == 8u {
        w.r4 = load_words(r.base_hi.x + o);
        w.r5 = load_words(r.base_hi.y + o);
        w.r6 = load_words(r.base_hi.z + o);
        w.r7 = load_words(r.base_hi.w + o);
    }
    return w;
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

// s * d + b * sum for four rows whose scale/bias entries start at `sb`.
fn fold(sb: vec4<u32>, g: u32, d: vec4<f32>, sum: f32) -> vec4<f32> {
    let s0 = load_scale_bias(sb.x + g);
    let s1 = load_scale_bias(sb.y + g);
    let s2 = load_scale_bias(sb.z + g);
    let s3 = load_scale_bias(sb.w + g);
    return vec4<f32>(s0.x, s1.x, s2.x, s3.x) * d + vec4<f32>(s0.y, s1.y, s2.y, s3.y) * sum;
}

// Partial sums of rows 0-3 and 4-7.
struct Acc {
    lo: vec4<f32>,
    hi: vec4<f32>,
    // NORM: sum of squares of x.
    ss: f32,
}

// The rows' contributions of unit u, whose words are w.
fn unit_sums(r: Rows, w: Words, u: u32, masked: bool) -> Acc {
    var acc: Acc;
    let first = u * unit_codes();
    let p = load_unit_x(first / 4u, masked);
    let g = min(first / GROUP, params.groups - 1u);
    let dlo = vec4<f32>(unit_dot(w.r0, p), unit_dot(w.r1, p), unit_dot(w.r2, p), unit_dot(w.r3, p));
    acc.lo = fold(r.sb_lo, g, dlo, p.sum);
    if ROWS == 8u {
        let dhi = vec4<f32>(unit_dot(w.r4, p), unit_dot(w.r5, p), unit_dot(w.r6, p), unit_dot(w.r7, p));
        acc.hi = fold(r.sb_hi, g, dhi, p.sum);
    }
    acc.ss = p.ss;
    return acc;
}

// This thread's partial sums of the workgroup's rows.
fn partial_sums(block: u32, lid: u32) -> Acc {
    let r = block_rows(block);
    var acc: Acc;
    var u = lid;
    if u < params.full_units {
        var w = unit_words_of(r, u);
        loop {
            // The next unit's words (or this one's again, past the end)
            // are requested before this unit's arithmetic.
            let next = u + WG;
            let more = next < params.full_units;
            let n = unit_words_of(r, select(u, next, more));
            let a = unit_sums(r, w, u, false);
            acc.lo += a.lo;
            acc.hi += a.hi;
            acc.ss += a.ss;
            u = next;
            if !more {
                break;
            }
            w = n;
        }
    }
    if u < params.units {
        let a = unit_sums(r, unit_words_of(r, u), u, true);
        acc.lo += a.lo;
        acc.hi += a.hi;
        acc.ss += a.ss;
    }
    return acc;
}

// Row k of the workgroup's totals.
fn lane(total: Acc, k: u32) -> f32 {
    let t = select(total.lo, total.hi, k >= 4u);
    return t[k & 3u];
}

// Thread `lid` < ROWS writes row `lid` of the workgroup (with GLU, threads
// below ROWS/2 write the workgroup's SwiGLU outputs).
fn store(block: u32, lid: u32, total: Acc) {
    var scale = 1.0;
    if NORM {
        scale = inverseSqrt(total.ss / f32(params.cols) + EPS);
    }
    if GLU {
        let h = ROWS / 2u;
        let r = block * h + lid;
        if lid < h && r < params.rows / 2u {
            let g = lane(total, lid) * scale;
            y[params.row_offset + r] = g / (1.0 + exp(-g)) * (lane(total, lid + h) * scale);
        }
        return;
    }
    let row = block * ROWS + lid;
    if lid < ROWS && row < params.rows {
        let i = params.row_offset + row;
        let t = lane(total, lid) * scale;
        if ACCUM {
            y[i] = y[i] + t;
        } else {
            y[i] = t;
        }
    }
}

// Workgroups beyond 65535 spill into the y dimension of the dispatch.
fn block_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

// Portable reduction: a binary tree in workgroup memory.
fn reduce_tree(lid: u32, acc: Acc) -> Acc {
    partial_lo[lid] = acc.lo;
    partial_hi[lid] = acc.hi;
    partial_ss[lid] = acc.ss;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            partial_lo[lid] += partial_lo[lid + s];
            if ROWS == 8u {
                partial_hi[lid] += partial_hi[lid + s];
            }
            if NORM {
                partial_ss[lid] += partial_ss[lid + s];
            }
        }
        workgroupBarrier();
    }
    return Acc(partial_lo[0], partial_hi[0], partial_ss[0]);
}

// Subgroup reduction: subgroupAdd, then the subgroups' sums through
// workgroup memory (any subgroup size, partial subgroups included).
fn reduce_subgroup(lid: u32, acc: Acc, sg_lane: u32, sg_id: u32, sg_count: u32) -> Acc {
    let lo = subgroupAdd(acc.lo);
    var hi = vec4<f32>(0.0);
    if ROWS == 8u {
        hi = subgroupAdd(acc.hi);
    }
    var ss = 0.0;
    if NORM {
        ss = subgroupAdd(acc.ss);
    }
    if sg_lane == 0u {
        partial_lo[sg_id] = lo;
        partial_hi[sg_id] = hi;
        partial_ss[sg_id] = ss;
    }
    workgroupBarrier();
    var total: Acc;
    if lid < ROWS {
        for (var i = 0u; i < sg_count; i++) {
            total.lo += partial_lo[i];
            total.hi += partial_hi[i];
            total.ss += partial_ss[i];
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

// ------------------------------------------------- 4-bit × 8-bit activations --
//
// gemv_affine4_q8[_subgroup]: the 4-bit kernel with the input quantized to
// 8 bits per block of 32 (llama.cpp's q8_1 idea on MLX's layout), so that
// four code × input products are one integer dot product (dot4I8Packed)
// instead of four float operations each. Needs BITS = 4, GROUP a multiple
// of 32, `cols` a multiple of 32 and at most Q8_MAXK, and rows whose word
// stride is a multiple of 4 (checked on the host).
//
// Each workgroup first quantizes x into workgroup memory: per block b of
// 32 inputs (times g, with NORM), sx_b = max|x| / 127 and
// xq_k = round(x_k / sx_b), and the exact f32 sum of the block. The int8
// values are stored permuted to match the nibbles: for each 8 codes of a
// word, one u32 holds the inputs of codes 0, 2, 4, 6 and the next those of
// codes 1, 3, 5, 7, so `w & 0x0f0f0f0f` and `(w >> 4) & 0x0f0f0f0f` meet
// their inputs byte for byte. Then each thread takes whole blocks (four
// code words, one 16-byte load a row) for the workgroup's rows:
//
//   y_r = Σ_b ( s_rg · sx_b · Σ_k q_rk · xq_k  +  b_rg · Σ_k x_k )
//
// The only approximation is x ≈ sx·xq, at most sx_b / 2 = max|x_b| / 254
// per input; the integer sums are exact.

// Most inputs the kernel stages (a multiple of 32).
override Q8_MAXK: u32 = 4096u;
// Row blocks (of ROWS rows) a workgroup takes one after the other, sharing
// one staging of x.
override Q8_BLOCKS: u32 = 1u;

@group(0) @binding(1) var<storage, read> weights4: array<vec4<u32>>;

// Quantized x, 8 words (32 inputs) a block, permuted as above.
var<workgroup> q8_x: array<vec4<u32>, Q8_MAXK / 16u>;
// Per block: (sx, exact sum of the block's x).
var<workgroup> q8_s: array<vec2<f32>, Q8_MAXK / 32u>;

// Quantizes the blocks this thread owns into workgroup memory; returns the
// sum of squares of its (unscaled) inputs for NORM.
fn q8_stage(lid: u32) -> f32 {
    var ss = 0.0;
    let nb = params.cols / 32u;
    for (var b = lid; b < nb; b += WG) {
        var v: array<vec4<f32>, 8>;
        var amax = vec4<f32>(0.0);
        var sum = vec4<f32>(0.0);
        for (var i = 0u; i < 8u; i++) {
            var a = x[b * 8u + i];
            if NORM {
                ss += dot(a, a);
                a *= norm_w[b * 8u + i];
            }
            v[i] = a;
            amax = max(amax, abs(a));
            sum += a;
        }
        let m = max(max(amax.x, amax.y), max(amax.z, amax.w));
        let sx = m / 127.0;
        let inv = select(0.0, 127.0 / m, m > 0.0);
        // Codes 8c .. 8c+7 sit in v[2c] (0-3) and v[2c+1] (4-7).
        var w: array<u32, 8>;
        for (var c = 0u; c < 4u; c++) {
            let a = round(v[2u * c] * inv);
            let z = round(v[2u * c + 1u] * inv);
            w[2u * c] = pack4xI8(vec4<i32>(i32(a.x), i32(a.z), i32(z.x), i32(z.z)));
            w[2u * c + 1u] = pack4xI8(vec4<i32>(i32(a.y), i32(a.w), i32(z.y), i32(z.w)));
        }
        q8_x[2u * b] = vec4<u32>(w[0], w[1], w[2], w[3]);
        q8_x[2u * b + 1u] = vec4<u32>(w[4], w[5], w[6], w[7]);
        q8_s[b] = vec2<f32>(sx, dot(sum, vec4<f32>(1.0)));
    }
    return ss;
}

// Σ q·xq over the 32 codes of one row's block (four words).
fn q8_dot(w: vec4<u32>, xa: vec4<u32>, xb: vec4<u32>) -> i32 {
    let m = 0x0f0f0f0fu;
    let lo = w & vec4<u32>(m);
    let hi = (w >> vec4<u32>(4u)) & vec4<u32>(m);
    return (dot4I8Packed(lo.x, xa.x) + dot4I8Packed(hi.x, xa.y))
        + (dot4I8Packed(lo.y, xa.z) + dot4I8Packed(hi.y, xa.w))
        + (dot4I8Packed(lo.z, xb.x) + dot4I8Packed(hi.z, xb.y))
        + (dot4I8Packed(lo.w, xb.z) + dot4I8Packed(hi.w, xb.w));
}

// The rows' contributions of block b given their words.
fn q8_fold(sb: vec4<u32>, g: u32, d: vec4<i32>, s: vec2<f32>) -> vec4<f32> {
    let s0 = load_scale_bias(sb.x + g);
    let s1 = load_scale_bias(sb.y + g);
    let s2 = load_scale_bias(sb.z + g);
    let s3 = load_scale_bias(sb.w + g);
    let scale = vec4<f32>(s0.x, s1.x, s2.x, s3.x) * s.x;
    return scale * vec4<f32>(d) + vec4<f32>(s0.y, s1.y, s2.y, s3.y) * s.y;
}

// This thread's partial sums of row block `block`, x staged.
fn q8_partial(block: u32, lid: u32) -> Acc {
    let r = block_rows(block);
    let lo = r.base_lo / 4u;
    let hi = r.base_hi / 4u;
    let nb = params.cols / 32u;
    var acc: Acc;
    for (var b = lid; b < nb; b += WG) {
        let w0 = weights4[lo.x + b];
        let w1 = weights4[lo.y + b];
        let w2 = weights4[lo.z + b];
        let w3 = weights4[lo.w + b];
        var w4 = vec4<u32>(0u);
        var w5 = vec4<u32>(0u);
        var w6 = vec4<u32>(0u);
        var w7 = vec4<u32>(0u);
        if ROWS == 8u {
            w4 = weights4[hi.x + b];
            w5 = weights4[hi.y + b];
            w6 = weights4[hi.z + b];
            w7 = weights4[hi.w + b];
        }
        let xa = q8_x[2u * b];
        let xb = q8_x[2u * b + 1u];
        let s = q8_s[b];
        let g = min(b * 32u / GROUP, params.groups - 1u);
        let dlo = vec4<i32>(q8_dot(w0, xa, xb), q8_dot(w1, xa, xb), q8_dot(w2, xa, xb), q8_dot(w3, xa, xb));
        acc.lo += q8_fold(r.sb_lo, g, dlo, s);
        if ROWS == 8u {
            let dhi = vec4<i32>(q8_dot(w4, xa, xb), q8_dot(w5, xa, xb), q8_dot(w6, xa, xb), q8_dot(w7, xa, xb));
            acc.hi += q8_fold(r.sb_hi, g, dhi, s);
        }
    }
    return acc;
}

@compute @workgroup_size(WG)
fn gemv_affine4_q8(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let first = block_index(wid, nwg) * Q8_BLOCKS;
    let ss = q8_stage(lid);
    workgroupBarrier();
    for (var i = 0u; i < Q8_BLOCKS; i++) {
        var acc = q8_partial(first + i, lid);
        acc.ss = ss;
        store(first + i, lid, reduce_tree(lid, acc));
        workgroupBarrier();
    }
}

@compute @workgroup_size(WG)
fn gemv_affine4_q8_subgroup(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(num_subgroups) sg_count: u32,
) {
    let first = block_index(wid, nwg) * Q8_BLOCKS;
    let ss = q8_stage(lid);
    workgroupBarrier();
    for (var i = 0u; i < Q8_BLOCKS; i++) {
        var acc = q8_partial(first + i, lid);
        acc.ss = ss;
        store(first + i, lid, reduce_subgroup(lid, acc, sg_lane, sg_id, sg_count));
        workgroupBarrier();
    }
}
