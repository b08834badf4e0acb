//! Runtime options by string key and value: the one parser the C ABI's `dg_runtime_options_set`,
//! the CLI and a server share.
use std::path::PathBuf;

use super::{ExecutionProvider, OptimizationLevel, RuntimeOptions, TensorRtOptions};
use crate::error::{Error, Result};

/// [`RuntimeOptions`] built up one setting at a time. TensorRT settings are kept apart and applied
/// when the provider is TensorRT, so they may be set before or after the provider.
#[derive(Debug, Clone, Default)]
pub struct RuntimeConfig {
    pub options: RuntimeOptions,
    pub tensorrt: TensorRtOptions,
}

impl RuntimeConfig {
    /// The keys [`RuntimeConfig::set`] takes, in the order the documentation lists them.
    pub const KEYS: &'static str = "ort_library, execution_provider, allow_cpu_fallback, \
                                    intra_threads, optimization, no_spinning, sessions_per_graph, \
                                    optimized_graph_cache, tensorrt_fp16, tensorrt_engine_cache";

    /// The options, with the TensorRT settings applied to a TensorRT provider.
    pub fn resolve(&self) -> RuntimeOptions {
        let mut options = self.options.clone();
        if let ExecutionProvider::TensorRt { options: trt, .. } = &mut options.execution_provider {
            *trt = self.tensorrt.clone();
        }
        options
    }

    /// Sets one option from its key and textual value. Paths: "" clears them; booleans: true/false,
    /// 1/0, yes/no, on/off; `intra_threads` 0 means ONNX Runtime's choice. Ranges are checked by
    /// [`RuntimeOptions::validate`] when the runtime is made. A rejected value changes nothing.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let o = &mut self.options;
        match key {
            "ort_library" => o.ort_library = path(value),
            "execution_provider" => o.execution_provider = value.parse()?,
            "allow_cpu_fallback" => o.allow_cpu_fallback = flag(key, value)?,
            "intra_threads" => {
                let threads: usize = number(key, value)?;
                o.intra_threads = (threads > 0).then_some(threads);
            }
            "optimization" => o.optimization = value.parse::<OptimizationLevel>()?,
            "no_spinning" => o.no_spinning = flag(key, value)?,
            "sessions_per_graph" => match number(key, value)? {
                0 => {
                    return Err(Error::InvalidArg(
                        "sessions_per_graph must be at least 1, got `0`".into(),
                    ))
                }
                n => o.sessions_per_graph = n,
            },
            "optimized_graph_cache" => o.optimized_graph_cache = path(value),
            "tensorrt_fp16" => self.tensorrt.fp16 = flag(key, value)?,
            "tensorrt_engine_cache" => self.tensorrt.engine_cache_dir = path(value),
            _ => {
                return Err(Error::InvalidArg(format!(
                    "unknown runtime option `{key}` (expected {})",
                    Self::KEYS
                )))
            }
        }
        Ok(())
    }
}

/// An empty value clears a path option.
fn path(value: &str) -> Option<PathBuf> {
    (!value.is_empty()).then(|| PathBuf::from(value))
}

/// A boolean option value, as environment variables and query strings spell them.
pub fn flag(key: &str, value: &str) -> Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(Error::InvalidArg(format!(
            "option `{key}`: `{value}` is not a boolean (true/false, 1/0, yes/no, on/off)"
        ))),
    }
}

fn number(key: &str, value: &str) -> Result<usize> {
    value.trim().parse().map_err(|_| {
        Error::InvalidArg(format!(
            "runtime option `{key}`: `{value}` is not a non-negative integer"
        ))
    })
}
