//! Shader modules and compute pipelines, cached by (shader, entry point,
//! override constants), with explicit bind-group layouts.
//!
//! Each pipeline is built from a module that holds its entry point alone:
//! the WGSL is parsed and validated with naga, the other entry points are
//! dropped and the module compacted. A family file can therefore hold a
//! subgroup entry point beside its portable one, and devices without
//! subgroups never validate the former.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use wgpu::naga;

use crate::buffer::{GpuBuffer, check_binding_size};
use crate::context::{ENV_SHADER_DIR, GpuContext, GpuFeatures};
use crate::error::{GpuError, Result};
use crate::shaders::Shader;

/// How a kernel binds one buffer (bindings are numbered from 0 in group 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Binding {
    /// `var<uniform>`.
    Uniform,
    /// `var<storage, read>`.
    Storage,
    /// `var<storage, read_write>`.
    StorageReadWrite,
}

/// What pipeline to build.
#[derive(Clone, Copy, Debug)]
pub struct PipelineSpec<'a> {
    /// The WGSL source.
    pub shader: Shader,
    /// The compute entry point.
    pub entry: &'a str,
    /// Values of `override` constants, by name.
    pub constants: &'a [(&'a str, f64)],
    /// The bind-group layout, in binding order.
    pub bindings: &'a [Binding],
}

/// A compute pipeline with its explicit bind-group layout.
#[derive(Debug)]
pub struct Pipeline {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
    bindings: Vec<Binding>,
    label: String,
}

impl Pipeline {
    /// The wgpu pipeline.
    pub fn raw(&self) -> &wgpu::ComputePipeline {
        &self.pipeline
    }

    /// The layout of bind group 0.
    pub fn bind_group_layout(&self) -> &wgpu::BindGroupLayout {
        &self.layout
    }

    /// A bind group of whole buffers, in binding order. Checks the count and
    /// the device's binding-size limits, naming the offending buffer.
    pub fn bind(&self, ctx: &GpuContext, buffers: &[&GpuBuffer]) -> Result<wgpu::BindGroup> {
        if buffers.len() != self.bindings.len() {
            return Err(GpuError::invalid(
                format!("binding `{}`", self.label),
                format!(
                    "it takes {} buffers, got {}",
                    self.bindings.len(),
                    buffers.len()
                ),
            ));
        }
        for (buffer, kind) in buffers.iter().zip(&self.bindings) {
            match kind {
                Binding::Uniform => {
                    let limit = ctx.limits().max_uniform_buffer_binding_size;
                    if buffer.size() > limit {
                        return Err(GpuError::BufferTooLarge {
                            name: buffer.name().to_owned(),
                            size: buffer.size(),
                            limit_name: "max_uniform_buffer_binding_size",
                            limit,
                            adapter: ctx.adapter().name.clone(),
                        });
                    }
                }
                Binding::Storage | Binding::StorageReadWrite => {
                    check_binding_size(ctx, buffer.name(), buffer.size())?;
                }
            }
        }
        let entries: Vec<wgpu::BindGroupEntry<'_>> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: b.raw().as_entire_binding(),
            })
            .collect();
        ctx.scoped(
            &self.label,
            0,
            || {
                ctx.device().create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(&self.label),
                    layout: &self.layout,
                    entries: &entries,
                })
            },
            |message| GpuError::Validation {
                operation: format!(
                    "binding {} to `{}`",
                    buffers
                        .iter()
                        .map(|b| format!("`{}`", b.name()))
                        .collect::<Vec<_>>()
                        .join(", "),
                    self.label
                ),
                message,
            },
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PipelineKey {
    shader: &'static str,
    entry: String,
    /// Sorted by name; values as f64 bits so the key can be hashed.
    constants: Vec<(String, u64)>,
    bindings: Vec<Binding>,
}

#[derive(Default)]
struct CacheState {
    modules: HashMap<(&'static str, String), wgpu::ShaderModule>,
    layouts: HashMap<Vec<Binding>, wgpu::BindGroupLayout>,
    pipelines: HashMap<PipelineKey, Arc<Pipeline>>,
}

/// The context's pipeline cache.
#[derive(Default)]
pub(crate) struct PipelineCache {
    state: Mutex<CacheState>,
}

impl GpuContext {
    /// The pipeline for `spec`, built on first use and cached by (shader,
    /// entry point, override constants, bindings).
    pub fn pipeline(&self, spec: &PipelineSpec<'_>) -> Result<Arc<Pipeline>> {
        let mut constants: Vec<(String, u64)> = spec
            .constants
            .iter()
            .map(|(name, value)| ((*name).to_owned(), value.to_bits()))
            .collect();
        // wgpu takes the last value given for a name; keep that one.
        constants.reverse();
        constants.sort_by(|a, b| a.0.cmp(&b.0));
        constants.dedup_by(|a, b| a.0 == b.0);
        let key = PipelineKey {
            shader: spec.shader.name,
            entry: spec.entry.to_owned(),
            constants,
            bindings: spec.bindings.to_vec(),
        };

        let mut state = self
            .pipelines
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(p) = state.pipelines.get(&key) {
            return Ok(Arc::clone(p));
        }

        let module_key = (spec.shader.name, spec.entry.to_owned());
        if !state.modules.contains_key(&module_key) {
            let module = self.shader_module(spec.shader, spec.entry)?;
            state.modules.insert(module_key.clone(), module);
        }
        if !state.layouts.contains_key(spec.bindings) {
            let layout = self.bind_group_layout(spec.bindings);
            state.layouts.insert(spec.bindings.to_vec(), layout);
        }
        let module = &state.modules[&module_key];
        let layout = &state.layouts[spec.bindings];

        let label = format!("{}:{}", spec.shader.name, spec.entry);
        let pipeline_layout =
            self.device()
                .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                    label: Some(&label),
                    bind_group_layouts: &[Some(layout)],
                    immediate_size: 0,
                });
        let pipeline = self.scoped(
            &label,
            0,
            || {
                self.device()
                    .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                        label: Some(&label),
                        layout: Some(&pipeline_layout),
                        module,
                        entry_point: Some(spec.entry),
                        compilation_options: wgpu::PipelineCompilationOptions {
                            constants: spec.constants,
                            // Kernels here write workgroup memory before reading it.
                            zero_initialize_workgroup_memory: false,
                        },
                        cache: None,
                    })
            },
            |message| GpuError::Shader {
                shader: spec.shader.name.to_owned(),
                entry: spec.entry.to_owned(),
                message,
            },
        )?;
        let pipeline = Arc::new(Pipeline {
            pipeline,
            layout: layout.clone(),
            bindings: spec.bindings.to_vec(),
            label,
        });
        state.pipelines.insert(key, Arc::clone(&pipeline));
        Ok(pipeline)
    }

    fn bind_group_layout(&self, bindings: &[Binding]) -> wgpu::BindGroupLayout {
        let entries: Vec<wgpu::BindGroupLayoutEntry> = bindings
            .iter()
            .enumerate()
            .map(|(i, kind)| wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: match kind {
                        Binding::Uniform => wgpu::BufferBindingType::Uniform,
                        Binding::Storage => wgpu::BufferBindingType::Storage { read_only: true },
                        Binding::StorageReadWrite => {
                            wgpu::BufferBindingType::Storage { read_only: false }
                        }
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            })
            .collect();
        self.device()
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: None,
                entries: &entries,
            })
    }

    /// A shader module holding `entry` alone, validated by naga first so
    /// that errors carry naga's message and source location.
    fn shader_module(&self, shader: Shader, entry: &str) -> Result<wgpu::ShaderModule> {
        let module = entry_point_module(shader, entry, self.features())?;
        self.scoped(
            shader.name,
            0,
            || {
                self.device()
                    .create_shader_module(wgpu::ShaderModuleDescriptor {
                        label: Some(shader.name),
                        source: wgpu::ShaderSource::Naga(std::borrow::Cow::Owned(module)),
                    })
            },
            |message| GpuError::Shader {
                shader: shader.name.to_owned(),
                entry: entry.to_owned(),
                message,
            },
        )
    }
}

/// naga's capabilities for a device with `features`: everything except the
/// optional features this crate negotiates, which follow the device (wgpu
/// validates the rest again against the device itself).
fn capabilities(features: GpuFeatures) -> naga::valid::Capabilities {
    use naga::valid::Capabilities as C;
    let mut caps = C::all();
    caps.remove(C::SUBGROUP | C::SUBGROUP_BARRIER | C::SUBGROUP_VERTEX_STAGE | C::SHADER_FLOAT16);
    if features.subgroups {
        caps |= C::SUBGROUP;
    }
    if features.shader_f16 {
        caps |= C::SHADER_FLOAT16;
    }
    caps
}

/// The text of `shader`: the embedded source, or the file of the same name
/// in `$MEMBOUND_SHADER_DIR` where that is set and holds one.
fn shader_text(shader: Shader) -> std::result::Result<std::borrow::Cow<'static, str>, String> {
    let Some(dir) = std::env::var_os(ENV_SHADER_DIR) else {
        return Ok(std::borrow::Cow::Borrowed(shader.source));
    };
    let path = std::path::Path::new(&dir).join(shader.name);
    if !path.exists() {
        return Ok(std::borrow::Cow::Borrowed(shader.source));
    }
    std::fs::read_to_string(&path)
        .map(std::borrow::Cow::Owned)
        .map_err(|e| format!("{ENV_SHADER_DIR}: cannot read {}: {e}", path.display()))
}

/// Parses and validates `shader`, then keeps `entry` alone and what it uses.
pub(crate) fn entry_point_module(
    shader: Shader,
    entry: &str,
    features: GpuFeatures,
) -> Result<naga::Module> {
    let error = |message: String| GpuError::Shader {
        shader: shader.name.to_owned(),
        entry: entry.to_owned(),
        message,
    };
    let text = shader_text(shader).map_err(error)?;
    let source = text.as_ref();
    let mut module = naga::front::wgsl::parse_str(source)
        .map_err(|e| error(e.emit_to_string_with_path(source, shader.name)))?;
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .validate(&module)
    .map_err(|e| error(e.emit_to_string_with_path(source, shader.name)))?;

    if !module.entry_points.iter().any(|ep| ep.name == entry) {
        let names: Vec<&str> = module
            .entry_points
            .iter()
            .map(|ep| ep.name.as_str())
            .collect();
        return Err(error(format!(
            "no such entry point; the shader has {}",
            names.join(", ")
        )));
    }
    module.entry_points.retain(|ep| ep.name == entry);
    naga::compact::compact(&mut module, naga::compact::KeepUnused::No);

    naga::valid::Validator::new(naga::valid::ValidationFlags::all(), capabilities(features))
        .validate(&module)
        .map_err(|e| {
            error(format!(
                "not supported by this device (features in use: {features}): {}",
                e.emit_to_string_with_path(source, shader.name)
            ))
        })?;
    Ok(module)
}
