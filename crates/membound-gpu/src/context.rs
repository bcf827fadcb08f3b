//! Adapter choice, device creation and the [`GpuContext`] every GPU function
//! takes.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::{GpuError, Result};
use crate::pipeline::PipelineCache;

/// Selects a backend: `vulkan`, `metal`, `dx12` or `gl`.
pub const ENV_BACKEND: &str = "MEMBOUND_GPU_BACKEND";
/// Selects the adapter whose name contains this (case-insensitive) text.
pub const ENV_ADAPTER: &str = "MEMBOUND_GPU_ADAPTER";
/// Comma-separated optional features to leave off: `f16`, `subgroups`,
/// `timestamps` (or `all`), to run the fallback paths on any adapter.
pub const ENV_DISABLE: &str = "MEMBOUND_GPU_DISABLE";
/// A folder whose WGSL files replace the embedded shaders of the same name
/// when pipelines are built (kernel development without a rebuild; files
/// it lacks keep the embedded text).
pub const ENV_SHADER_DIR: &str = "MEMBOUND_SHADER_DIR";

/// The optional device features this crate uses where the adapter has them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GpuFeatures {
    /// `SHADER_F16`: `f16` arithmetic in WGSL (`enable f16;`).
    pub shader_f16: bool,
    /// `SUBGROUP`: subgroup reductions (`subgroupAdd`).
    pub subgroups: bool,
    /// `TIMESTAMP_QUERY`: GPU-side timing of compute passes.
    pub timestamps: bool,
}

impl GpuFeatures {
    /// No optional feature.
    pub const NONE: Self = Self {
        shader_f16: false,
        subgroups: false,
        timestamps: false,
    };
    /// Every optional feature.
    pub const ALL: Self = Self {
        shader_f16: true,
        subgroups: true,
        timestamps: true,
    };

    fn from_wgpu(features: wgpu::Features) -> Self {
        Self {
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
        }
    }

    fn to_wgpu(self) -> wgpu::Features {
        let mut features = wgpu::Features::empty();
        features.set(wgpu::Features::SHADER_F16, self.shader_f16);
        features.set(wgpu::Features::SUBGROUP, self.subgroups);
        features.set(wgpu::Features::TIMESTAMP_QUERY, self.timestamps);
        features
    }

    /// The features in `self` that are not in `other`.
    #[must_use]
    pub fn without(self, other: Self) -> Self {
        Self {
            shader_f16: self.shader_f16 && !other.shader_f16,
            subgroups: self.subgroups && !other.subgroups,
            timestamps: self.timestamps && !other.timestamps,
        }
    }

    /// The features in either.
    #[must_use]
    pub fn union(self, other: Self) -> Self {
        Self {
            shader_f16: self.shader_f16 || other.shader_f16,
            subgroups: self.subgroups || other.subgroups,
            timestamps: self.timestamps || other.timestamps,
        }
    }

    /// Parses a comma-separated list such as `subgroups,f16` (`all` and the
    /// empty string are accepted too).
    pub fn parse_list(text: &str) -> Result<Self> {
        let mut features = Self::NONE;
        for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match word.to_ascii_lowercase().as_str() {
                "f16" | "shader_f16" | "shader-f16" => features.shader_f16 = true,
                "subgroup" | "subgroups" => features.subgroups = true,
                "timestamp" | "timestamps" | "timestamp_query" => features.timestamps = true,
                "all" => features = Self::ALL,
                _ => {
                    return Err(GpuError::BadEnv {
                        variable: ENV_DISABLE,
                        value: text.to_owned(),
                        expected: "a comma-separated list of f16, subgroups, timestamps or all",
                    });
                }
            }
        }
        Ok(features)
    }
}

impl fmt::Display for GpuFeatures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [
            (self.shader_f16, "f16"),
            (self.subgroups, "subgroups"),
            (self.timestamps, "timestamps"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        if names.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&names.join(" "))
        }
    }
}

/// How to choose and set up the device.
#[derive(Clone, Debug)]
pub struct GpuOptions {
    /// Backends to enumerate; `None` means Vulkan, Metal and DX12 (GL only
    /// when asked for, since its compute support is partial).
    pub backends: Option<wgpu::Backends>,
    /// Use the first adapter whose name contains this (case-insensitive).
    pub adapter: Option<String>,
    /// Ranks the adapters when no name is given.
    pub power_preference: wgpu::PowerPreference,
    /// Features to leave off even where the adapter has them, so that the
    /// fallback paths run (tests use this to cover both paths).
    pub disable_features: GpuFeatures,
    /// Lowers `max_buffer_size` below the adapter's maximum.
    pub max_buffer_size: Option<u64>,
    /// Lowers `max_storage_buffer_binding_size` below the adapter's maximum
    /// (kernels then split large weights into several buffers).
    pub max_storage_buffer_binding_size: Option<u64>,
}

impl Default for GpuOptions {
    fn default() -> Self {
        Self {
            backends: None,
            adapter: None,
            power_preference: wgpu::PowerPreference::HighPerformance,
            disable_features: GpuFeatures::NONE,
            max_buffer_size: None,
            max_storage_buffer_binding_size: None,
        }
    }
}

impl GpuOptions {
    /// The defaults, overridden by `MEMBOUND_GPU_BACKEND`,
    /// `MEMBOUND_GPU_ADAPTER` and `MEMBOUND_GPU_DISABLE`.
    pub fn from_env() -> Result<Self> {
        let mut options = Self::default();
        if let Some(value) = env_value(ENV_BACKEND) {
            options.backends = Some(parse_backend(&value)?);
        }
        options.adapter = env_value(ENV_ADAPTER);
        if let Some(value) = env_value(ENV_DISABLE) {
            options.disable_features = GpuFeatures::parse_list(&value)?;
        }
        Ok(options)
    }
}

fn env_value(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn parse_backend(value: &str) -> Result<wgpu::Backends> {
    match value.trim().to_ascii_lowercase().as_str() {
        "vulkan" | "vk" => Ok(wgpu::Backends::VULKAN),
        "metal" | "mtl" => Ok(wgpu::Backends::METAL),
        "dx12" | "d3d12" => Ok(wgpu::Backends::DX12),
        "gl" | "gles" | "opengl" => Ok(wgpu::Backends::GL),
        _ => Err(GpuError::BadEnv {
            variable: ENV_BACKEND,
            value: value.to_owned(),
            expected: "vulkan, metal, dx12 or gl",
        }),
    }
}

/// What the chosen adapter says about itself.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    /// The adapter's name, e.g. `NVIDIA H100 80GB HBM3` or `llvmpipe (LLVM 19.1.7, 256 bits)`.
    pub name: String,
    /// The backend it runs through.
    pub backend: wgpu::Backend,
    /// Discrete, integrated, virtual, CPU or other.
    pub device_type: wgpu::DeviceType,
    /// The driver's name.
    pub driver: String,
    /// The driver's version text.
    pub driver_info: String,
    /// PCI vendor id (backend-specific).
    pub vendor: u32,
    /// PCI device id (backend-specific).
    pub device: u32,
    /// Smallest subgroup size the adapter may use.
    pub subgroup_min_size: u32,
    /// Largest subgroup size the adapter may use.
    pub subgroup_max_size: u32,
}

impl AdapterSummary {
    fn new(info: &wgpu::AdapterInfo) -> Self {
        Self {
            name: info.name.clone(),
            backend: info.backend,
            device_type: info.device_type,
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
            vendor: info.vendor,
            device: info.device,
            subgroup_min_size: info.subgroup_min_size,
            subgroup_max_size: info.subgroup_max_size,
        }
    }
}

impl fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({:?}, {:?}, driver {} {})",
            self.name, self.backend, self.device_type, self.driver, self.driver_info
        )
    }
}

/// A device and queue with what this crate learned about them: the adapter,
/// the features in use, the limits, the pipeline cache, and the errors wgpu
/// reported asynchronously.
///
/// Every GPU function takes the context it runs on, so callers (and tests)
/// choose the adapter and options.
pub struct GpuContext {
    device: wgpu::Device,
    queue: wgpu::Queue,
    adapter: AdapterSummary,
    available: GpuFeatures,
    enabled: GpuFeatures,
    limits: wgpu::Limits,
    pub(crate) pipelines: PipelineCache,
    errors: Arc<Mutex<Vec<String>>>,
    lost: Arc<Mutex<Option<String>>>,
    pub(crate) staging: Mutex<Option<wgpu::Buffer>>,
}

impl fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GpuContext")
            .field("adapter", &self.adapter)
            .field("features", &self.enabled)
            .finish_non_exhaustive()
    }
}

impl GpuContext {
    /// A context on the adapter chosen by [`GpuOptions::from_env`].
    pub fn new() -> Result<Self> {
        Self::with_options(&GpuOptions::from_env()?)
    }

    /// A context on the adapter chosen by `options`.
    pub fn with_options(options: &GpuOptions) -> Result<Self> {
        let backends = options.backends.unwrap_or(wgpu::Backends::PRIMARY);
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = backends;
        let instance = wgpu::Instance::new(desc);
        let adapters = pollster::block_on(instance.enumerate_adapters(backends));
        let adapter = choose_adapter(adapters, options, backends)?;
        let info = adapter.get_info();
        let summary = AdapterSummary::new(&info);

        let available = GpuFeatures::from_wgpu(adapter.features());
        let enabled = available.without(options.disable_features);
        let limits = raised_limits(&adapter.limits(), options);

        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("membound"),
            required_features: enabled.to_wgpu(),
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| GpuError::RequestDevice {
            adapter: summary.name.clone(),
            message: e.to_string(),
        })?;

        // wgpu's default handler panics on any error nobody captured; record
        // them instead and report them from the next `check`.
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&errors);
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            sink.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(error_text(&e));
        }));
        let lost = Arc::new(Mutex::new(None));
        let lost_sink = Arc::clone(&lost);
        device.set_device_lost_callback(move |reason, message| {
            *lost_sink.lock().unwrap_or_else(PoisonError::into_inner) =
                Some(format!("{reason:?}: {message}"));
        });

        Ok(Self {
            limits: device.limits(),
            device,
            queue,
            adapter: summary,
            available,
            enabled,
            pipelines: PipelineCache::default(),
            errors,
            lost,
            staging: Mutex::new(None),
        })
    }

    /// The wgpu device.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The device's queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// The adapter the device was created on.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.adapter
    }

    /// The optional features in use (the adapter's, less those disabled).
    pub fn features(&self) -> GpuFeatures {
        self.enabled
    }

    /// The optional features the adapter offers.
    pub fn available_features(&self) -> GpuFeatures {
        self.available
    }

    /// The device's limits (the adapter's maxima, less any caps in the options).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// Blocks until all submitted work is done, then reports any error wgpu
    /// raised meanwhile.
    pub fn wait(&self) -> Result<()> {
        self.poll_wait("waiting for submitted work")?;
        self.check()
    }

    pub(crate) fn poll_wait(&self, operation: &str) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| GpuError::Wait {
                operation: operation.to_owned(),
                message: e.to_string(),
            })?;
        self.check_lost()
    }

    /// Reports (and clears) errors wgpu raised asynchronously, and whether
    /// the device was lost.
    pub fn check(&self) -> Result<()> {
        self.check_lost()?;
        let mut errors = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
        if errors.is_empty() {
            return Ok(());
        }
        let message = errors.join("; ");
        errors.clear();
        Err(GpuError::Validation {
            operation: "earlier GPU work".to_owned(),
            message,
        })
    }

    fn check_lost(&self) -> Result<()> {
        let lost = self.lost.lock().unwrap_or_else(PoisonError::into_inner);
        match &*lost {
            Some(reason) => Err(GpuError::DeviceLost {
                adapter: self.adapter.name.clone(),
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Runs `make` inside an error scope and turns a captured error into a
    /// [`GpuError`] built by `on_error` (validation) or an out-of-memory error.
    pub(crate) fn scoped<T>(
        &self,
        name: &str,
        size: u64,
        make: impl FnOnce() -> T,
        on_error: impl FnOnce(String) -> GpuError,
    ) -> Result<T> {
        self.check_lost()?;
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let value = make();
        let oom_error = pollster::block_on(oom.pop());
        let validation_error = pollster::block_on(scope.pop());
        if oom_error.is_some() {
            return Err(GpuError::OutOfMemory {
                name: name.to_owned(),
                size,
                adapter: self.adapter.name.clone(),
            });
        }
        if let Some(e) = validation_error {
            return Err(on_error(error_text(&e)));
        }
        Ok(value)
    }
}

/// wgpu's error with its chain of sources (where the details usually are).
fn error_text(error: &wgpu::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

fn choose_adapter(
    adapters: Vec<wgpu::Adapter>,
    options: &GpuOptions,
    backends: wgpu::Backends,
) -> Result<wgpu::Adapter> {
    if adapters.is_empty() {
        return Err(GpuError::NoAdapter {
            backends: format!("{backends:?}"),
        });
    }
    if let Some(wanted) = &options.adapter {
        let needle = wanted.to_lowercase();
        let available = adapters
            .iter()
            .map(|a| {
                let info = a.get_info();
                format!("{} ({:?})", info.name, info.backend)
            })
            .collect::<Vec<_>>()
            .join(", ");
        return adapters
            .into_iter()
            .find(|a| a.get_info().name.to_lowercase().contains(&needle))
            .ok_or_else(|| GpuError::AdapterNotFound {
                wanted: wanted.clone(),
                available,
            });
    }
    let rank = |t: wgpu::DeviceType| -> u8 {
        use wgpu::DeviceType as D;
        match (options.power_preference, t) {
            (wgpu::PowerPreference::LowPower, D::IntegratedGpu) => 0,
            (wgpu::PowerPreference::LowPower, D::DiscreteGpu) => 1,
            (_, D::DiscreteGpu) => 0,
            (_, D::IntegratedGpu) => 1,
            (_, D::VirtualGpu) => 2,
            (_, D::Other) => 3,
            (_, D::Cpu) => 4,
        }
    };
    // `min_by_key` keeps the first of equals: the enumeration order breaks ties.
    adapters
        .into_iter()
        .min_by_key(|a| rank(a.get_info().device_type))
        .ok_or_else(|| GpuError::NoAdapter {
            backends: format!("{backends:?}"),
        })
}

/// The adapter's maxima, so that large weights fit, less the caps in `options`.
fn raised_limits(adapter: &wgpu::Limits, options: &GpuOptions) -> wgpu::Limits {
    let mut limits = adapter.clone();
    if let Some(cap) = options.max_buffer_size {
        limits.max_buffer_size = limits.max_buffer_size.min(cap);
    }
    if let Some(cap) = options.max_storage_buffer_binding_size {
        limits.max_storage_buffer_binding_size = limits.max_storage_buffer_binding_size.min(cap);
    }
    limits.max_storage_buffer_binding_size = limits
        .max_storage_buffer_binding_size
        .min(limits.max_buffer_size);
    limits
}
