//! GPU-free: every WGSL file in `shaders/` parses, validates, is embedded,
//! and translates to SPIR-V, MSL and HLSL for every entry point.

use std::path::PathBuf;

use membound_gpu::SHADERS;
use naga::back::{hlsl, msl, spv};
use naga::valid::{Capabilities, ValidationFlags, Validator};

fn shader_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shaders")
}

/// (file name, text) of every `.wgsl` file in `shaders/`.
fn shader_files() -> Vec<(String, String)> {
    let dir = shader_dir();
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wgsl"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&p).unwrap();
            (name, text)
        })
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no .wgsl file found in {}",
        dir.display()
    );
    files
}

#[test]
fn embedded_table_matches_the_folder() {
    let files = shader_files();
    let mut table: Vec<&str> = SHADERS.iter().map(|s| s.name).collect();
    table.sort_unstable();
    let on_disk: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(table, on_disk, "shaders.rs's table and shaders/ differ");
    for (name, text) in &files {
        let embedded = SHADERS.iter().find(|s| s.name == name).unwrap();
        assert_eq!(embedded.source, text, "{name}: embedded text is stale");
    }
}

/// Override values beside the defaults, so that override-sized arrays and
/// workgroup sizes are exercised with more than one value.
const OVERRIDE_SETS: &[&[(&str, f64)]] = &[&[], &[("WG", 64.0)]];

#[test]
fn every_shader_validates_and_translates() {
    for (name, text) in shader_files() {
        let module = naga::front::wgsl::parse_str(&text)
            .unwrap_or_else(|e| panic!("{}", e.emit_to_string_with_path(&text, &name)));
        let info = Validator::new(ValidationFlags::all(), Capabilities::all())
            .validate(&module)
            .unwrap_or_else(|e| panic!("{}", e.emit_to_string_with_path(&text, &name)));
        assert!(!module.entry_points.is_empty(), "{name} has no entry point");

        for ep in &module.entry_points {
            for overrides in OVERRIDE_SETS {
                let mut constants = naga::back::PipelineConstants::default();
                for (k, v) in overrides.iter() {
                    if module
                        .overrides
                        .iter()
                        .any(|(_, o)| o.name.as_deref() == Some(k))
                    {
                        constants.insert((*k).to_owned(), *v);
                    }
                }
                let what = format!("{name}:{} with {overrides:?}", ep.name);
                let (resolved, resolved_info) = naga::back::pipeline_constants::process_overrides(
                    &module,
                    &info,
                    Some((ep.stage, &ep.name)),
                    &constants,
                )
                .unwrap_or_else(|e| panic!("{what}: overrides: {e:?}"));
                translate(&what, &resolved, &resolved_info, ep);
            }
        }
    }
}

fn translate(
    what: &str,
    module: &naga::Module,
    info: &naga::valid::ModuleInfo,
    ep: &naga::EntryPoint,
) {
    // SPIR-V 1.3 for subgroup operations (GroupNonUniform).
    let spv_options = spv::Options {
        lang_version: (1, 3),
        ..spv::Options::default()
    };
    let words = spv::write_vec(
        module,
        info,
        &spv_options,
        Some(&spv::PipelineOptions {
            shader_stage: ep.stage,
            entry_point: ep.name.clone(),
        }),
    )
    .unwrap_or_else(|e| panic!("{what}: SPIR-V: {e}"));
    assert_eq!(words.first(), Some(&0x0723_0203), "{what}: SPIR-V magic");

    // MSL 2.4: simdgroup reductions need 2.1+, Apple Silicon runs 2.4+.
    let msl_options = msl::Options {
        lang_version: (2, 4),
        ..msl::Options::default()
    };
    let (source, _) = msl::write_string(
        module,
        info,
        &msl_options,
        &msl::PipelineOptions {
            entry_point: Some((ep.stage, ep.name.clone())),
            ..msl::PipelineOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("{what}: MSL: {e}"));
    assert!(source.contains("kernel"), "{what}: MSL has no kernel");

    // Shader model 6.2 for wave operations and 16-bit types.
    let hlsl_options = hlsl::Options {
        shader_model: hlsl::ShaderModel::V6_2,
        ..hlsl::Options::default()
    };
    let mut source = String::new();
    hlsl::Writer::new(
        &mut source,
        &hlsl_options,
        &hlsl::PipelineOptions {
            entry_point: Some((ep.stage, ep.name.clone())),
        },
    )
    .write(module, info, None)
    .unwrap_or_else(|e| panic!("{what}: HLSL: {e}"));
    assert!(
        source.contains("numthreads"),
        "{what}: HLSL has no [numthreads]"
    );
}
