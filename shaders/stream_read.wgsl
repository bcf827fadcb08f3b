// A plain streaming read: the floor under every memory-bound kernel.
//
// No GEMV can read its bytes faster than the device reads the same number
// of bytes with nothing else to do, and below ~100 MiB that is well under
// the datasheet bandwidth (a launch, its ramp-up and its tail cost
// microseconds). `membound bench kernels` times this kernel over each
// case's byte count, in the same run, to say how close each kernel is to
// what this device and API allow.
//
// Workgroup w reads block w: WG·PER consecutive vec4<u32> (16 bytes each,
// PER loads a thread in flight, consecutive threads on consecutive
// vec4s), and writes their XOR to out[w], so nothing can be optimised
// away and a test can check every word was read. The grid may be 2-D
// (more than 65535 blocks): w = id.x + id.y · num_workgroups.x.

struct Params {
    // vec4<u32> elements to read.
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// Threads per workgroup, a power of two.
override WG: u32 = 256u;
// vec4 loads per thread.
override PER: u32 = 4u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

var<workgroup> red: array<u32, WG>;

@compute @workgroup_size(WG)
fn stream_read(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let w = wid.x + wid.y * nwg.x;
    let base = w * WG * PER;
    // Uniform per workgroup: blocks past the end (a 2-D grid's last row)
    // leave before any barrier.
    if base >= params.n {
        return;
    }
    var acc = vec4<u32>(0u);
    for (var k = 0u; k < PER; k++) {
        let i = base + k * WG + lid;
        if i < params.n {
            acc ^= src[i];
        }
    }
    red[lid] = acc.x ^ acc.y ^ acc.z ^ acc.w;
    workgroupBarrier();
    for (var h = WG / 2u; h > 0u; h >>= 1u) {
        if lid < h {
            red[lid] ^= red[lid + h];
        }
        workgroupBarrier();
    }
    if lid == 0u {
        out[w] = red[0];
    }
}
