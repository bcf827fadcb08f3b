// A plain streaming read: the floor under every memory-bound kernel.
//
// No GEMV can read its bytes faster than the device reads the same number
// of bytes with nothing else to do, and below ~100 MiB that is well under
// the datasheet bandwidth (a launch, its ramp-up and its tail cost
// microseconds). `membound bench kernels` times this kernel over each
// case's byte count, in the same run, to say how close each kernel is to
// what this device and API allow.
//
// Workgroup w reads block w: ITERS rounds of WG·PER consecutive vec4<u32>
// (16 bytes each; in a round each thread has PER loads in flight,
// consecutive threads on consecutive vec4s). Each thread XORs what it
// loads into one u32, and a thread whose XOR equals `magic` writes its
// index + 1 to out[w]. The write depends on every loaded word, so no load
// can be optimised away, and a test can check the reads by making one
// thread of each block match; there is no reduction, so the kernel costs
// its loads alone (on an H100 a workgroup-memory XOR tree made it 3-9%
// slower than our dense f16 GEMV of the same bytes; without it, 2-10%
// faster). The grid may be 2-D (more than 65535 blocks):
// w = id.x + id.y · num_workgroups.x.

struct Params {
    // vec4<u32> elements to read.
    n: u32,
    // The XOR that makes a thread write.
    magic: u32,
    _pad0: u32,
    _pad1: u32,
}

// Threads per workgroup.
override WG: u32 = 256u;
// vec4 loads per thread per round.
override PER: u32 = 2u;
// Rounds per workgroup.
override ITERS: u32 = 1u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

@compute @workgroup_size(WG)
fn stream_read(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let w = wid.x + wid.y * nwg.x;
    let base = w * WG * PER * ITERS;
    var acc = vec4<u32>(0u);
    for (var r = 0u; r < ITERS; r++) {
        let round = base + r * WG * PER;
        for (var k = 0u; k < PER; k++) {
            let i = round + k * WG + lid;
            if i < params.n {
                acc ^= src[i];
            }
        }
    }
    if (acc.x ^ acc.y ^ acc.z ^ acc.w) == params.magic && base < params.n {
        out[w] = lid + 1u;
    }
}
