// Fills a buffer with reproducible pseudo-random words from a seed, so that
// synthetic models of real sizes need no file and no host upload.

struct FillParams {
    // Seed of the stream.
    seed: u32,
    // Words to write.
    words: u32,
    // 0: random u32 (packed codes); 1: two f16 uniform in [-a, a];
    // 2: one f32 uniform in [-a, a]; 3: the f16 pair (a, b), constant.
    mode: u32,
    _pad: u32,
    a: f32,
    b: f32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: FillParams;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;

// A 32-bit integer hash (an xorshift-multiply finalizer).
fn mix(v: u32) -> u32 {
    var x = v;
    x ^= x >> 16u;
    x *= 0x7feb352du;
    x ^= x >> 15u;
    x *= 0x846ca68bu;
    x ^= x >> 16u;
    return x;
}

// Uniform in [-1, 1) from the top 24 bits of `h`.
fn unit(h: u32) -> f32 {
    return f32(h >> 8u) * (2.0 / 16777216.0) - 1.0;
}

@compute @workgroup_size(256)
fn fill_random(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let threads = nwg.x * nwg.y * 256u;
    let first = (wid.x + wid.y * nwg.x) * 256u + lid;
    let key = mix(params.seed ^ 0x9e3779b9u);
    for (var i = first; i < params.words; i += threads) {
        let h = mix(i ^ key);
        switch params.mode {
            case 0u: {
                out[i] = mix(h ^ 0x85ebca6bu);
            }
            case 1u: {
                let h2 = mix(h ^ 0xc2b2ae35u);
                out[i] = pack2x16float(vec2<f32>(unit(h), unit(h2)) * params.a);
            }
            case 2u: {
                out[i] = bitcast<u32>(unit(h) * params.a);
            }
            default: {
                out[i] = pack2x16float(vec2<f32>(params.a, params.b));
            }
        }
    }
}
