//! Failures come back as `GpuError`s that name what failed, never as panics.

mod common;

use common::{context, context_with};
use membound_gpu::wgpu;
use membound_gpu::{
    Binding, DenseGemv, GpuBuffer, GpuError, GpuFeatures, GpuOptions, GpuVector, PipelineSpec,
    Shader, WeightDType, shaders,
};

#[test]
fn buffer_over_the_device_limit_names_the_buffer() {
    let Some(ctx) = context(GpuFeatures::NONE) else {
        return;
    };
    let limit = ctx.limits().max_buffer_size;
    let size = (limit + 1).next_multiple_of(4);
    let err = GpuBuffer::new(
        &ctx,
        "blk.9.ffn_down.weight",
        size,
        wgpu::BufferUsages::STORAGE,
    )
    .unwrap_err();
    match &err {
        GpuError::BufferTooLarge {
            name,
            size: s,
            limit_name,
            limit: l,
            ..
        } => {
            assert_eq!(name, "blk.9.ffn_down.weight");
            assert_eq!((*s, *l), (size, limit));
            assert_eq!(*limit_name, "max_buffer_size");
        }
        other => panic!("expected BufferTooLarge, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("blk.9.ffn_down.weight") && text.contains(&size.to_string()),
        "{text}"
    );
    // The device is still usable afterwards.
    ctx.check().unwrap();
}

#[test]
fn weight_row_over_the_binding_limit_names_the_tensor() {
    let options = GpuOptions {
        max_storage_buffer_binding_size: Some(4096),
        ..GpuOptions::from_env().unwrap()
    };
    let Some(ctx) = context_with(&options) else {
        return;
    };
    let (rows, cols) = (2, 2000); // one f32 row is 8000 bytes
    let w = vec![0.0; rows * cols];
    let err = DenseGemv::new(&ctx, "output.weight", rows, cols, &w, WeightDType::F32).unwrap_err();
    match &err {
        GpuError::BufferTooLarge {
            name,
            limit_name,
            limit,
            ..
        } => {
            assert!(name.contains("output.weight"), "{name}");
            assert_eq!(*limit_name, "max_storage_buffer_binding_size");
            assert_eq!(*limit, 4096);
        }
        other => panic!("expected BufferTooLarge, got {other:?}"),
    }
}

#[test]
fn wgsl_syntax_error_is_a_shader_error_with_nagas_message() {
    let Some(ctx) = context(GpuFeatures::NONE) else {
        return;
    };
    let broken = Shader::new(
        "broken.wgsl",
        "@compute @workgroup_size(64)\nfn main( {\n}\n",
    );
    let err = ctx
        .pipeline(&PipelineSpec {
            shader: broken,
            entry: "main",
            constants: &[],
            bindings: &[],
        })
        .unwrap_err();
    match &err {
        GpuError::Shader {
            shader, message, ..
        } => {
            assert_eq!(shader, "broken.wgsl");
            assert!(
                message.contains("broken.wgsl:2"),
                "no source location: {message}"
            );
            assert!(message.contains("expected"), "no parser message: {message}");
        }
        other => panic!("expected a shader error, got {other:?}"),
    }
}

#[test]
fn wgsl_type_error_is_a_shader_error() {
    let Some(ctx) = context(GpuFeatures::NONE) else {
        return;
    };
    let wrong = Shader::new(
        "wrong_type.wgsl",
        "@group(0) @binding(0) var<storage, read_write> y: array<u32>;\n\
         @compute @workgroup_size(1)\nfn main() { y[0] = 1.5; }\n",
    );
    let err = ctx
        .pipeline(&PipelineSpec {
            shader: wrong,
            entry: "main",
            constants: &[],
            bindings: &[Binding::StorageReadWrite],
        })
        .unwrap_err();
    assert!(matches!(err, GpuError::Shader { .. }), "{err:?}");
}

#[test]
fn subgroup_entry_point_without_subgroups_is_refused_clearly() {
    let Some(ctx) = context(GpuFeatures::ALL) else {
        return;
    };
    assert!(!ctx.features().subgroups);
    let err = ctx
        .pipeline(&PipelineSpec {
            shader: shaders::GEMV_DENSE,
            entry: "gemv_f16_subgroup",
            constants: &[],
            bindings: &[
                Binding::Uniform,
                Binding::Storage,
                Binding::Storage,
                Binding::StorageReadWrite,
            ],
        })
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("not supported by this device"), "{text}");
    assert!(text.contains("SUBGROUP"), "{text}");
}

#[test]
fn missing_entry_point_lists_the_existing_ones() {
    let Some(ctx) = context(GpuFeatures::NONE) else {
        return;
    };
    let err = ctx
        .pipeline(&PipelineSpec {
            shader: shaders::GEMV_DENSE,
            entry: "no_such_entry",
            constants: &[],
            bindings: &[],
        })
        .unwrap_err();
    assert!(err.to_string().contains("gemv_f32"), "{err}");
}

#[test]
fn mismatched_vectors_are_invalid_arguments() {
    let Some(ctx) = context(GpuFeatures::NONE) else {
        return;
    };
    let gemv = DenseGemv::new(&ctx, "w", 4, 10, &[1.0; 40], WeightDType::F16).unwrap();
    let short_x = GpuVector::zeros(&ctx, "short_x", 9).unwrap();
    let x = GpuVector::zeros(&ctx, "x", 10).unwrap();
    let short_y = GpuVector::zeros(&ctx, "short_y", 3).unwrap();
    let y = GpuVector::zeros(&ctx, "y", 4).unwrap();
    for (a, b, needle) in [(&short_x, &y, "short_x"), (&x, &short_y, "short_y")] {
        let err = gemv.bind(&ctx, a, b).unwrap_err();
        assert!(matches!(err, GpuError::InvalidArgument { .. }), "{err:?}");
        assert!(err.to_string().contains(needle), "{err}");
    }
    let err = DenseGemv::new(&ctx, "w", 4, 10, &[1.0; 39], WeightDType::F32).unwrap_err();
    assert!(matches!(err, GpuError::InvalidArgument { .. }), "{err:?}");
    assert!(x.write(&ctx, &[1.0; 3]).is_err());
}

#[test]
fn unknown_adapter_name_lists_the_adapters() {
    // Only meaningful where some adapter exists.
    if context(GpuFeatures::NONE).is_none() {
        return;
    }
    let options = GpuOptions {
        adapter: Some("no-such-adapter-a1b2c3".to_owned()),
        ..GpuOptions::from_env().unwrap()
    };
    let err = membound_gpu::GpuContext::with_options(&options).unwrap_err();
    match err {
        GpuError::AdapterNotFound { wanted, available } => {
            assert_eq!(wanted, "no-such-adapter-a1b2c3");
            assert!(!available.is_empty());
        }
        other => panic!("expected AdapterNotFound, got {other:?}"),
    }
}

/// A backend with no adapter gives the install hint (Metal exists only on
/// Apple platforms, so elsewhere this is the no-adapter path itself).
#[cfg(not(any(target_os = "macos", target_os = "ios")))]
#[test]
fn no_adapter_error_carries_the_install_hint() {
    let options = GpuOptions {
        backends: Some(wgpu::Backends::METAL),
        ..GpuOptions::default()
    };
    let err = membound_gpu::GpuContext::with_options(&options).unwrap_err();
    assert!(matches!(err, GpuError::NoAdapter { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("mesa-vulkan-drivers"), "{text}");
    assert!(text.contains("MEMBOUND_SKIP_GPU"), "{text}");
}

#[test]
fn bad_environment_words_are_reported() {
    let err = GpuFeatures::parse_list("subgroups,warp-drive").unwrap_err();
    assert!(err.to_string().contains("MEMBOUND_GPU_DISABLE"), "{err}");
    assert_eq!(
        GpuFeatures::parse_list(" f16 , timestamps").unwrap(),
        GpuFeatures {
            shader_f16: true,
            subgroups: false,
            timestamps: true
        }
    );
    assert_eq!(GpuFeatures::parse_list("all").unwrap(), GpuFeatures::ALL);
}
