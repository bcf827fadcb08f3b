//! Times the quantized GEMV kernels (affine, LUT) on the present adapter
//! against our dense f16 GEMV in the same run, rotating through enough
//! matrices that the working set exceeds the GPU's last-level cache, after
//! warming the GPU up to full clocks.
//!
//! ```sh
//! cargo run --release -p membound-gpu --example quant_bench -- \
//!     [--kinds a4g64,a3g64,a2g64,a8g64,nf4,polymse,kmeans4] \
//!     [--shapes 4096x14336,14336x4096] [--launch 4x64x2,8x128x1] [--working-set-mb 512] \
//!     [--reps 30] [--batch 8] [--warm-up-ms 500] \
//!     [--affine-shader FILE.wgsl,... --variant-kinds a4g64]
//! ```
//!
//! Kinds: `aBgG` is `affine:bits=B,group=G` (f16 scales), `nf4` is
//! `nf4:block=64`, `polymse` is `polymse:degree=3`, `kmeansB` is
//! `kmeans:bits=B,scope=row`. `--launch` times each kernel with these rows ×
//! threads per workgroup × words per unit (where the kernel takes them)
//! instead of the shape the library picks. `--affine-shader` also times
//! variants of `gemv_affine.wgsl` (same bindings, overrides, `Params` and
//! layout) on the `--variant-kinds`, after checking each exactly against the
//! CPU reference on a small problem.

use std::sync::Arc;
use std::time::Duration;

use membound_codec::{AffineCodec, Codec, Encoded, Group, Matrix, ScaleDType, codec_from_spec};
use membound_gpu::{
    AffineGemv, Binding, DenseGemv, Dispatch, GpuBuffer, GpuContext, GpuVector, Launch, LutGemv,
    Pipeline, PipelineSpec, Shader, TimingMethod, WeightDType, Workgroups, dense_gemv_reference,
    wgpu,
};

struct Args {
    kinds: Vec<String>,
    shapes: Vec<(usize, usize)>,
    /// Launch shapes; empty for the library's choice.
    launches: Vec<Launch>,
    working_set: u64,
    reps: usize,
    batch: usize,
    warm_up_ms: u64,
    /// Variant shaders.
    shaders: Vec<Shader>,
    variant_kinds: Vec<String>,
}

fn parse_args() -> Args {
    let mut args = Args {
        kinds: ["a4g64", "a3g64", "a2g64", "a8g64", "nf4", "polymse"]
            .map(String::from)
            .to_vec(),
        shapes: vec![(4096, 14336), (14336, 4096)],
        launches: Vec::new(),
        working_set: 512 << 20,
        reps: 30,
        batch: 8,
        warm_up_ms: 500,
        shaders: Vec::new(),
        variant_kinds: vec!["a4g64".into()],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        let list = || value.split(',').map(str::trim).filter(|s| !s.is_empty());
        match flag.as_str() {
            "--kinds" => args.kinds = list().map(String::from).collect(),
            "--shapes" => {
                args.shapes = list()
                    .map(|s| {
                        let (r, c) = s.split_once('x').expect("ROWSxCOLS");
                        (r.parse().unwrap(), c.parse().unwrap())
                    })
                    .collect();
            }
            "--launch" => {
                args.launches = list()
                    .map(|s| {
                        let v: Vec<&str> = s.split('x').collect();
                        assert_eq!(v.len(), 3, "ROWSxTHREADSxUNIT_WORDS");
                        Launch {
                            rows_per_workgroup: v[0].parse().unwrap(),
                            workgroup_size: v[1].parse().unwrap(),
                            unit_words: v[2].parse().unwrap(),
                        }
                    })
                    .collect();
            }
            "--working-set-mb" => args.working_set = value.parse::<u64>().unwrap() << 20,
            "--reps" => args.reps = value.parse().unwrap(),
            "--batch" => args.batch = value.parse().unwrap(),
            "--warm-up-ms" => args.warm_up_ms = value.parse().unwrap(),
            "--affine-shader" => {
                for file in list() {
                    let text = std::fs::read_to_string(file).unwrap();
                    let name: &'static str = Box::leak(file.to_owned().into_boxed_str());
                    args.shaders
                        .push(Shader::new(name, Box::leak(text.into_boxed_str())));
                }
            }
            "--variant-kinds" => args.variant_kinds = list().map(String::from).collect(),
            _ => panic!("unknown flag {flag}"),
        }
    }
    args
}

/// A hash of `k` in [-1, 1): incompressible weights.
fn unit(k: u64) -> f32 {
    let mut z = k.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

/// Times `calls` (rotating, `batch` per pass) after warming up; returns
/// the median and best seconds per call and how they were measured.
fn time_calls(ctx: &GpuContext, args: &Args, calls: &[Dispatch]) -> (f64, f64, TimingMethod) {
    let mut next = 0;
    let mut record = |pass: &mut wgpu::ComputePass<'_>| {
        for _ in 0..args.batch {
            calls[next % calls.len()].record(pass);
            next += 1;
        }
    };
    ctx.warm_up(Duration::from_millis(args.warm_up_ms), &mut record)
        .unwrap();
    let t = ctx.time_repeated(args.reps, &mut record).unwrap();
    let batch = args.batch as f64;
    (
        t.median().as_secs_f64() / batch,
        t.min().as_secs_f64() / batch,
        t.method,
    )
}

/// The codec spec a kind names.
fn spec_of(kind: &str) -> String {
    if let Some(rest) = kind.strip_prefix('a') {
        let (bits, group) = rest.split_once('g').expect("aBgG");
        return format!("affine:bits={bits},group={group},scale=f16");
    }
    if let Some(bits) = kind.strip_prefix("kmeans") {
        return format!("kmeans:bits={bits},scope=row");
    }
    match kind {
        "nf4" => "nf4:block=64,scale=f16".into(),
        "polymse" => "polymse:degree=3".into(),
        other => panic!("unknown kind {other}"),
    }
}

/// A quantized kernel built by the library.
enum Quant {
    Affine(AffineGemv),
    Lut(LutGemv),
}

impl Quant {
    fn new(ctx: &GpuContext, name: &str, e: &Encoded) -> Self {
        if e.spec.starts_with("affine") {
            let codec =
                AffineCodec::from_spec(membound_codec::Spec::parse(&e.spec).unwrap()).unwrap();
            Self::Affine(AffineGemv::new(ctx, name, &codec, e).unwrap())
        } else {
            Self::Lut(LutGemv::new(ctx, name, e).unwrap())
        }
    }

    /// Whether the kernel takes `launch`.
    fn set_launch(&mut self, ctx: &GpuContext, launch: Launch) -> bool {
        match self {
            Self::Affine(g) => g.set_launch(ctx, launch).is_ok(),
            Self::Lut(g) => g.set_launch(ctx, launch).is_ok(),
        }
    }

    fn launch(&self) -> String {
        let l = match self {
            Self::Affine(g) => g.launch(),
            Self::Lut(g) => g.launch(),
        };
        format!(
            "{}x{}x{}",
            l.rows_per_workgroup, l.workgroup_size, l.unit_words
        )
    }

    fn bind(&self, ctx: &GpuContext, x: &GpuVector, y: &GpuVector) -> Dispatch {
        match self {
            Self::Affine(g) => g.bind(ctx, x, y).unwrap(),
            Self::Lut(g) => g.bind(ctx, x, y).unwrap(),
        }
    }

    fn bytes_read(&self) -> u64 {
        match self {
            Self::Affine(g) => g.bytes_read(),
            Self::Lut(g) => g.bytes_read(),
        }
    }
}

const AFFINE_BINDINGS: &[Binding] = &[
    Binding::Uniform,
    Binding::Storage,
    Binding::Storage,
    Binding::Storage,
    Binding::StorageReadWrite,
];

/// An affine matrix in the library's layout for a variant shader: rows of
/// codes padded to 4 words (3-bit: whole 32-code units), one f16 scale/bias
/// pair a u32.
struct RawAffine {
    weights: GpuBuffer,
    scale_bias: GpuBuffer,
    bits: u32,
    rows: usize,
    cols: usize,
    stride: usize,
    groups: usize,
    bytes: u64,
}

impl RawAffine {
    fn new(ctx: &GpuContext, codec: &AffineCodec, e: &Encoded) -> Self {
        let p = codec.parts(e).unwrap();
        let l = p.layout;
        let stride = if codec.bits == 3 {
            l.cols.div_ceil(32) * 3
        } else {
            l.words_per_row.next_multiple_of(4)
        };
        let row_bytes = stride * 4;
        let weights = GpuBuffer::with_contents(
            ctx,
            "variant weights",
            (l.rows * row_bytes) as u64,
            wgpu::BufferUsages::STORAGE,
            |mut view| {
                for r in 0..l.rows {
                    let src = &p.words[r * l.words_per_row..(r + 1) * l.words_per_row];
                    view.slice(r * row_bytes..r * row_bytes + src.len() * 4)
                        .copy_from_slice(bytemuck::cast_slice(src));
                }
            },
        )
        .unwrap();
        let Group::Size(g) = codec.group else {
            panic!("variant: groups of 32, 64 or 128 only")
        };
        assert_eq!(codec.scale, ScaleDType::F16, "variant: f16 scales only");
        let sb: Vec<u32> = p
            .scales
            .iter()
            .zip(&p.biases)
            .map(|(&s, &b)| {
                u32::from(half::f16::from_f32(s).to_bits())
                    | u32::from(half::f16::from_f32(b).to_bits()) << 16
            })
            .collect();
        let scale_bias = GpuBuffer::from_bytes(
            ctx,
            "variant scales",
            bytemuck::cast_slice(&sb),
            wgpu::BufferUsages::STORAGE,
        )
        .unwrap();
        Self {
            bytes: (l.rows * row_bytes + sb.len() * 4 + l.cols * 4) as u64,
            weights,
            scale_bias,
            bits: codec.bits,
            rows: l.rows,
            cols: l.cols,
            stride,
            groups: l.cols.div_ceil(g),
        }
    }

    fn bind(
        &self,
        ctx: &GpuContext,
        pipeline: &Arc<Pipeline>,
        launch: Launch,
        x: &GpuVector,
        y: &GpuVector,
    ) -> Dispatch {
        let unit_words = if self.bits == 3 {
            3
        } else {
            launch.unit_words as usize
        };
        let codes = unit_words * 32 / self.bits as usize;
        let params: [u32; 8] = [
            self.rows as u32,
            self.cols as u32,
            self.stride as u32,
            0,
            self.cols.div_ceil(codes) as u32,
            (self.cols / codes) as u32,
            self.groups as u32,
            self.groups as u32,
        ];
        let params = GpuBuffer::from_bytes(
            ctx,
            "variant params",
            bytemuck::bytes_of(&params),
            wgpu::BufferUsages::UNIFORM,
        )
        .unwrap();
        let group = pipeline
            .bind(
                ctx,
                &[
                    &params,
                    &self.weights,
                    &self.scale_bias,
                    x.buffer(),
                    y.buffer(),
                ],
            )
            .unwrap();
        let grid = ctx
            .grid_1d(
                "variant",
                self.rows.div_ceil(launch.rows_per_workgroup) as u32,
            )
            .unwrap();
        let mut d = Dispatch::new();
        d.push(Arc::clone(pipeline), group, Workgroups::Direct(grid));
        d
    }
}

fn variant_pipeline(
    ctx: &GpuContext,
    shader: Shader,
    codec: &AffineCodec,
    launch: Launch,
) -> Option<Arc<Pipeline>> {
    let Group::Size(g) = codec.group else {
        return None;
    };
    let entry = if ctx.features().subgroups {
        "gemv_affine_subgroup"
    } else {
        "gemv_affine"
    };
    match ctx.pipeline(&PipelineSpec {
        shader,
        entry,
        constants: &[
            ("WG", f64::from(launch.workgroup_size)),
            ("ROWS", launch.rows_per_workgroup as f64),
            ("UNIT_WORDS", f64::from(launch.unit_words)),
            ("BITS", f64::from(codec.bits)),
            ("GROUP", g as f64),
            ("SCALE_KIND", 0.0),
        ],
        bindings: AFFINE_BINDINGS,
    }) {
        Ok(p) => Some(p),
        Err(e) => {
            println!("{}: {e}", shader.name);
            None
        }
    }
}

/// Checks a variant exactly on a small problem with integer weights.
fn check_variant(
    ctx: &GpuContext,
    pipeline: &Arc<Pipeline>,
    codec: &AffineCodec,
    launch: Launch,
) -> bool {
    let (rows, cols) = (37, 2000);
    // Weights on an integer grid with each group spanning 0..2^bits-1
    // make MLX's scale 1 and bias an integer: exact in f32.
    let n = ((1u32 << codec.bits) - 1) as f32;
    let w: Vec<f32> = (0..rows * cols)
        .map(|i| {
            let c = i % cols;
            if c % 32 == 0 {
                0.0
            } else if c % 32 == 1 {
                n
            } else {
                ((unit(i as u64) + 1.0) * 0.5 * n).floor()
            }
        })
        .collect();
    let e = codec.encode(Matrix::new(rows, cols, &w).unwrap()).unwrap();
    let decoded = codec.decode(&e).unwrap();
    let xs: Vec<f32> = (0..cols)
        .map(|i| (unit(!(i as u64)) * 2.0).round())
        .collect();
    let raw = RawAffine::new(ctx, codec, &e);
    let x = GpuVector::from_slice(ctx, "x", &xs).unwrap();
    let y = GpuVector::zeros(ctx, "y", rows).unwrap();
    ctx.submit(&[&raw.bind(ctx, pipeline, launch, &x, &y)])
        .unwrap();
    let got = y.read(ctx).unwrap();
    let want = dense_gemv_reference(&decoded, rows, cols, &xs);
    got.iter().zip(&want).all(|(g, w)| f64::from(*g) == *w)
}

fn main() {
    let args = parse_args();
    let ctx = GpuContext::new().unwrap_or_else(|e| panic!("{e}"));
    println!(
        "adapter: {}\nfeatures in use: {}",
        ctx.adapter(),
        ctx.features()
    );
    for &(rows, cols) in &args.shapes {
        let w: Vec<f32> = (0..rows * cols).map(|k| unit(k as u64)).collect();
        let x = GpuVector::from_slice(&ctx, "x", &vec![1.0; cols]).unwrap();
        let y = GpuVector::zeros(&ctx, "y", rows).unwrap();

        // The dense f16 reference, same run.
        let dense_time = {
            let first = DenseGemv::new(&ctx, "f16 0", rows, cols, &w, WeightDType::F16).unwrap();
            let n = args.working_set.div_ceil(first.weight_bytes()).max(2) as usize;
            let mut mats = vec![first];
            for i in 1..n {
                mats.push(
                    DenseGemv::new(&ctx, &format!("f16 {i}"), rows, cols, &w, WeightDType::F16)
                        .unwrap(),
                );
            }
            let calls: Vec<Dispatch> = mats.iter().map(|m| m.bind(&ctx, &x, &y).unwrap()).collect();
            let (per, best, method) = time_calls(&ctx, &args, &calls);
            println!(
                "{rows:>6}x{cols:<6} dense f16     4x{:<4} {:8.2} us (best {:8.2}) {:7.1} GB/s  {n} matrices, {method:?}",
                mats[0].workgroup_size(),
                per * 1e6,
                best * 1e6,
                mats[0].bytes_read() as f64 / per / 1e9,
            );
            per
        };

        for kind in &args.kinds {
            let spec = spec_of(kind);
            let codec = codec_from_spec(&spec).unwrap();
            let e = codec.encode(Matrix::new(rows, cols, &w).unwrap()).unwrap();
            let first = Quant::new(&ctx, "q 0", &e);
            let n = args.working_set.div_ceil(first.bytes_read()).max(2) as usize;
            let mut mats = vec![first];
            for i in 1..n {
                mats.push(Quant::new(&ctx, &format!("q {i}"), &e));
            }
            let launches: Vec<Option<Launch>> = if args.launches.is_empty() {
                vec![None]
            } else {
                args.launches.iter().copied().map(Some).collect()
            };
            for launch in launches {
                if let Some(launch) = launch
                    && !mats.iter_mut().all(|m| m.set_launch(&ctx, launch))
                {
                    continue;
                }
                let calls: Vec<Dispatch> = mats.iter().map(|m| m.bind(&ctx, &x, &y)).collect();
                let (per, best, method) = time_calls(&ctx, &args, &calls);
                println!(
                    "{rows:>6}x{cols:<6} {kind:9} {:>9} {:8.2} us (best {:8.2}) {:7.1} GB/s  {:5.2}x dense f16  {n} matrices, {method:?}",
                    mats[0].launch(),
                    per * 1e6,
                    best * 1e6,
                    mats[0].bytes_read() as f64 / per / 1e9,
                    dense_time / per,
                );
            }
            drop(mats);

            // The variant shaders.
            if !args.shaders.is_empty() && args.variant_kinds.contains(kind) {
                let acodec =
                    AffineCodec::from_spec(membound_codec::Spec::parse(&spec).unwrap()).unwrap();
                let raw: Vec<RawAffine> =
                    (0..n).map(|_| RawAffine::new(&ctx, &acodec, &e)).collect();
                let launches = if args.launches.is_empty() {
                    vec![Launch {
                        rows_per_workgroup: 8,
                        workgroup_size: 128,
                        unit_words: 2,
                    }]
                } else {
                    args.launches.clone()
                };
                for &shader in &args.shaders {
                    for &launch in &launches {
                        let valid = match acodec.bits {
                            2 => matches!(launch.unit_words, 1 | 2),
                            3 => launch.unit_words == 3,
                            _ => matches!(launch.unit_words, 1 | 2 | 4),
                        };
                        if !valid {
                            continue;
                        }
                        let Some(p) = variant_pipeline(&ctx, shader, &acodec, launch) else {
                            continue;
                        };
                        let rows_per_wg = launch.rows_per_workgroup;
                        let wg = launch.workgroup_size;
                        let unit = launch.unit_words;
                        let ok = check_variant(&ctx, &p, &acodec, launch);
                        let calls: Vec<Dispatch> = raw
                            .iter()
                            .map(|m| m.bind(&ctx, &p, launch, &x, &y))
                            .collect();
                        let (per, best, _) = time_calls(&ctx, &args, &calls);
                        println!(
                            "{rows:>6}x{cols:<6} {kind:9} {rows_per_wg:>3}x{wg}x{unit:<3} {:8.2} us (best {:8.2}) {:7.1} GB/s  {:5.2}x dense f16  variant {}{}",
                            per * 1e6,
                            best * 1e6,
                            raw[0].bytes as f64 / per / 1e9,
                            dense_time / per,
                            shader.name,
                            if ok { "" } else { "  WRONG RESULTS" }
                        );
                    }
                }
            }
        }
    }
}
