//! The runtime itself: feature negotiation, the pipeline cache, timing,
//! read-back.

mod common;

use std::sync::Arc;

use common::{FEATURE_SETS, context};
use membound_gpu::{
    DenseGemv, GpuFeatures, GpuVector, PipelineSpec, TimingMethod, WeightDType, shaders,
};

#[test]
fn forced_fallbacks_turn_the_features_off() {
    let Some(all) = context(GpuFeatures::NONE) else {
        return;
    };
    let Some(none) = context(GpuFeatures::ALL) else {
        return;
    };
    println!(
        "adapter: {}\navailable: {}\nin use: {}\nmax_buffer_size {} max_storage_buffer_binding_size {} subgroups {}..{}",
        all.adapter(),
        all.available_features(),
        all.features(),
        all.limits().max_buffer_size,
        all.limits().max_storage_buffer_binding_size,
        all.adapter().subgroup_min_size,
        all.adapter().subgroup_max_size,
    );
    assert_eq!(none.features(), GpuFeatures::NONE);
    assert_eq!(none.available_features(), all.available_features());
}

#[test]
fn pipelines_are_cached_by_entry_and_constants() {
    let Some(ctx) = context(GpuFeatures::NONE) else {
        return;
    };
    let spec = |entry, wg: f64| {
        let constants: &'static [(&'static str, f64)] = if wg == 64.0 {
            &[("WG", 64.0)]
        } else {
            &[("WG", 128.0)]
        };
        PipelineSpec {
            shader: shaders::GEMV_DENSE,
            entry,
            constants,
            bindings: &[
                membound_gpu::Binding::Uniform,
                membound_gpu::Binding::Storage,
                membound_gpu::Binding::Storage,
                membound_gpu::Binding::StorageReadWrite,
            ],
        }
    };
    let a = ctx.pipeline(&spec("gemv_f32", 64.0)).unwrap();
    let b = ctx.pipeline(&spec("gemv_f32", 64.0)).unwrap();
    let c = ctx.pipeline(&spec("gemv_f32", 128.0)).unwrap();
    let d = ctx.pipeline(&spec("gemv_f16", 64.0)).unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    assert!(!Arc::ptr_eq(&a, &c));
    assert!(!Arc::ptr_eq(&a, &d));
}

#[test]
fn timing_gives_one_duration_per_repetition() {
    for &(set, disable) in FEATURE_SETS {
        let Some(ctx) = context(disable) else { return };
        let (rows, cols) = (256, 1024);
        let gemv = DenseGemv::new(
            &ctx,
            "w",
            rows,
            cols,
            &vec![0.25; rows * cols],
            WeightDType::F16,
        )
        .unwrap();
        let x = GpuVector::from_slice(&ctx, "x", &vec![1.0; cols]).unwrap();
        let y = GpuVector::zeros(&ctx, "y", rows).unwrap();
        let call = gemv.bind(&ctx, &x, &y).unwrap();
        ctx.warm_up(std::time::Duration::from_millis(20), |pass| {
            call.record(pass)
        })
        .unwrap();
        let timings = ctx.time_repeated(5, |pass| call.record(pass)).unwrap();
        let want = if ctx.features().timestamps {
            TimingMethod::GpuTimestamps
        } else {
            TimingMethod::WallClock
        };
        assert_eq!(timings.method, want, "{set}");
        assert_eq!(timings.samples.len(), 5, "{set}");
        assert!(
            timings.median() > std::time::Duration::ZERO,
            "{set}: {timings:?}"
        );
        assert!(timings.min() <= timings.median());
        println!(
            "{set}: {:?} median {:?} for {} bytes",
            timings.method,
            timings.median(),
            gemv.bytes_read()
        );
        // The timed work ran: y holds the product.
        assert_eq!(y.read(&ctx).unwrap(), vec![256.0; rows], "{set}");
        // time_dispatches runs the given calls (y cleared first, so the
        // product shows they ran) and reports a positive figure a call.
        y.write(&ctx, &vec![0.0; rows]).unwrap();
        let per = ctx
            .time_dispatches(&[call], std::time::Duration::ZERO, 3)
            .unwrap();
        assert!(per > 0.0 && per.is_finite(), "{set}: {per}");
        assert_eq!(y.read(&ctx).unwrap(), vec![256.0; rows], "{set}");
    }
}

#[test]
fn vectors_round_trip_and_are_padded() {
    let Some(ctx) = context(GpuFeatures::NONE) else {
        return;
    };
    let values: Vec<f32> = (0..13).map(|i| i as f32 * 0.5 - 3.0).collect();
    let v = GpuVector::from_slice(&ctx, "v", &values).unwrap();
    assert_eq!(v.len(), 13);
    assert_eq!(v.capacity(), 16);
    assert_eq!(v.read(&ctx).unwrap(), values);
    let doubled: Vec<f32> = values.iter().map(|x| x * 2.0).collect();
    v.write(&ctx, &doubled).unwrap();
    assert_eq!(v.read(&ctx).unwrap(), doubled);
    let empty = GpuVector::zeros(&ctx, "empty", 0).unwrap();
    assert!(empty.is_empty());
    assert_eq!(empty.read(&ctx).unwrap(), Vec::<f32>::new());
}

/// The runtime serves kernels of later stages too: a caller's own WGSL with
/// an override constant, an explicit layout, and an indirect grid.
#[test]
fn custom_kernel_with_override_and_indirect_grid() {
    use membound_gpu::{Binding, Dispatch, GpuBuffer, Shader, Workgroups, wgpu};

    let Some(ctx) = context(GpuFeatures::NONE) else {
        return;
    };
    let fill = Shader::new(
        "test_fill.wgsl",
        "override VALUE: f32 = 1.0;\n\
         @group(0) @binding(0) var<storage, read_write> out: array<f32>;\n\
         @compute @workgroup_size(64)\n\
         fn main(@builtin(global_invocation_id) g: vec3<u32>) {\n\
             if g.x < arrayLength(&out) { out[g.x] = VALUE + f32(g.x); }\n\
         }\n",
    );
    let pipeline = ctx
        .pipeline(&PipelineSpec {
            shader: fill,
            entry: "main",
            constants: &[("VALUE", 3.0)],
            bindings: &[Binding::StorageReadWrite],
        })
        .unwrap();
    let out = GpuVector::zeros(&ctx, "out", 200).unwrap();
    let grid = GpuBuffer::from_bytes(
        &ctx,
        "grid",
        bytemuck::cast_slice(&[2u32, 1, 1]),
        wgpu::BufferUsages::INDIRECT,
    )
    .unwrap();
    let mut call = Dispatch::new();
    call.push(
        pipeline.clone(),
        pipeline.bind(&ctx, &[out.buffer()]).unwrap(),
        Workgroups::Indirect {
            buffer: grid.raw().clone(),
            offset: 0,
        },
    );
    ctx.submit(&[&call]).unwrap();
    let got = out.read(&ctx).unwrap();
    for (i, v) in got.iter().enumerate() {
        let want = if i < 128 { 3.0 + i as f32 } else { 0.0 };
        assert_eq!(*v, want, "index {i}");
    }
}
