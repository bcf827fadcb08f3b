//! The crate's one error enum.

/// What can go wrong on the GPU side. Every variant names the adapter,
/// buffer, tensor or shader involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GpuError {
    /// No adapter at all on the enabled backends.
    #[error(
        "no GPU adapter found (backends tried: {backends}). membound needs a Vulkan, Metal or \
         DX12 driver; on Linux without a GPU install a software Vulkan driver, e.g. \
         `apt-get install mesa-vulkan-drivers` (Debian/Ubuntu) or `dnf install \
         mesa-vulkan-drivers` (Fedora); membound's GPU tests skip instead of failing with \
         MEMBOUND_SKIP_GPU=1"
    )]
    NoAdapter {
        /// The backends that were enumerated.
        backends: String,
    },

    /// `MEMBOUND_GPU_ADAPTER` (or the option) matched no adapter.
    #[error("no GPU adapter name contains {wanted:?}; adapters found: {available}")]
    AdapterNotFound {
        /// The requested substring.
        wanted: String,
        /// The adapters that exist, with their backends.
        available: String,
    },

    /// `MEMBOUND_GPU_BACKEND` (or `MEMBOUND_GPU_DISABLE`) holds an unknown word.
    #[error("{variable}={value:?} is not understood; expected {expected}")]
    BadEnv {
        /// The environment variable.
        variable: &'static str,
        /// Its value.
        value: String,
        /// What it may hold.
        expected: &'static str,
    },

    /// The adapter refused to create a device.
    #[error("creating a device on {adapter}: {message}")]
    RequestDevice {
        /// The adapter's name.
        adapter: String,
        /// wgpu's reason.
        message: String,
    },

    /// A buffer (a tensor, an activation, a staging buffer) is larger than a
    /// device limit allows.
    #[error(
        "buffer `{name}` needs {size} bytes, over the device's {limit_name} of {limit} bytes \
         ({adapter})"
    )]
    BufferTooLarge {
        /// The buffer or tensor.
        name: String,
        /// Its size in bytes.
        size: u64,
        /// The limit's wgpu name, e.g. `max_buffer_size`.
        limit_name: &'static str,
        /// The limit's value.
        limit: u64,
        /// The adapter's name.
        adapter: String,
    },

    /// A shader failed to parse, validate or compile into a pipeline.
    #[error("shader `{shader}` (entry point {entry:?}): {message}")]
    Shader {
        /// The shader's name in the shader table (or the caller's name for it).
        shader: String,
        /// The entry point being built.
        entry: String,
        /// naga's or wgpu's message, with the source location.
        message: String,
    },

    /// The device was lost (driver reset, GPU removed, out of memory…).
    #[error("GPU device lost on {adapter}: {reason}")]
    DeviceLost {
        /// The adapter's name.
        adapter: String,
        /// wgpu's reason and message.
        reason: String,
    },

    /// The device ran out of memory creating a resource.
    #[error("GPU out of memory creating `{name}` ({size} bytes) on {adapter}")]
    OutOfMemory {
        /// The resource.
        name: String,
        /// Its size in bytes.
        size: u64,
        /// The adapter's name.
        adapter: String,
    },

    /// wgpu reported a validation error (a bug in this crate or its caller).
    #[error("GPU validation error during {operation}: {message}")]
    Validation {
        /// What was being done.
        operation: String,
        /// wgpu's message.
        message: String,
    },

    /// A kernel was given arguments that do not fit it.
    #[error("{what}: {problem}")]
    InvalidArgument {
        /// The kernel, tensor or buffer.
        what: String,
        /// What is wrong, with expected and found values.
        problem: String,
    },

    /// Waiting for the GPU or mapping a buffer failed.
    #[error("waiting for the GPU ({operation}): {message}")]
    Wait {
        /// What was being waited for.
        operation: String,
        /// wgpu's message.
        message: String,
    },
}

/// This crate's result type.
pub type Result<T, E = GpuError> = std::result::Result<T, E>;

impl GpuError {
    pub(crate) fn invalid(what: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::InvalidArgument {
            what: what.into(),
            problem: problem.into(),
        }
    }
}
