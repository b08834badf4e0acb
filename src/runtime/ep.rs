//! Execution providers: parsing the user's choice and registering it on a session.
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use ort::ep::{self, ExecutionProvider as _};
use ort::session::builder::SessionBuilder;

use crate::error::{Error, Result};

/// TensorRT-specific knobs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TensorRtOptions {
    /// Let TensorRT build fp16 engines where the graph allows.
    pub fp16: bool,
    /// Directory for serialized engines (and the timing cache), so later loads skip the build.
    pub engine_cache_dir: Option<PathBuf>,
}

/// Where the graphs run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ExecutionProvider {
    #[default]
    Cpu,
    Cuda {
        device_id: i32,
    },
    TensorRt {
        device_id: i32,
        options: TensorRtOptions,
    },
}

impl ExecutionProvider {
    /// ONNX Runtime's own name for the provider, as `GetAvailableProviders` lists it.
    pub fn ort_name(&self) -> &'static str {
        match self {
            ExecutionProvider::Cpu => "CPUExecutionProvider",
            ExecutionProvider::Cuda { .. } => "CUDAExecutionProvider",
            ExecutionProvider::TensorRt { .. } => "TensorrtExecutionProvider",
        }
    }

    /// Registers this provider on a session builder, failing loudly instead of falling back to CPU.
    pub(crate) fn register(&self, builder: &mut SessionBuilder) -> Result<()> {
        let unavailable = |reason: String| Error::EpUnavailable {
            ep: self.to_string(),
            reason,
        };
        match self {
            ExecutionProvider::Cpu => Ok(()),
            ExecutionProvider::Cuda { device_id } => {
                self.check_compiled_in()?;
                ep::CUDA::default()
                    .with_device_id(*device_id)
                    .register(builder)
                    .map_err(|e| unavailable(e.to_string()))
            }
            ExecutionProvider::TensorRt { device_id, options } => {
                self.check_compiled_in()?;
                let mut trt = ep::TensorRT::default()
                    .with_device_id(*device_id)
                    .with_fp16(options.fp16);
                if let Some(dir) = &options.engine_cache_dir {
                    let dir = dir.to_string_lossy();
                    trt = trt
                        .with_engine_cache(true)
                        .with_engine_cache_path(&dir)
                        .with_timing_cache(true)
                        .with_timing_cache_path(&dir);
                }
                trt.register(builder)
                    .map_err(|e| unavailable(e.to_string()))
            }
        }
    }

    /// ORT's CPU wheel does not contain the GPU providers at all; say so plainly before trying.
    pub(crate) fn check_compiled_in(&self) -> Result<()> {
        let available = super::library::available_providers()?;
        if available.iter().any(|name| name == self.ort_name()) {
            return Ok(());
        }
        let library = super::library::loaded()
            .map(|l| format!("{} (version {})", l.path.display(), l.version))
            .unwrap_or_else(|| "the loaded ONNX Runtime".into());
        Err(Error::EpUnavailable {
            ep: self.to_string(),
            reason: format!(
                "{library} was built without {}; it offers only [{}]. Install onnxruntime-gpu==1.31.1 \
                 (with matching CUDA/cuDNN{}) and point DG_ORT_DYLIB_PATH at its libonnxruntime.so",
                self.ort_name(),
                available.join(", "),
                if matches!(self, ExecutionProvider::TensorRt { .. }) { " and TensorRT" } else { "" }
            ),
        })
    }
}

impl fmt::Display for ExecutionProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExecutionProvider::Cpu => f.write_str("cpu"),
            ExecutionProvider::Cuda { device_id } => write!(f, "cuda:{device_id}"),
            ExecutionProvider::TensorRt { device_id, .. } => write!(f, "tensorrt:{device_id}"),
        }
    }
}

impl FromStr for ExecutionProvider {
    type Err = Error;

    /// Parses `cpu`, `cuda`, `cuda:ID`, `tensorrt`, `tensorrt:ID` (case-insensitive).
    fn from_str(s: &str) -> Result<Self> {
        let lower = s.trim().to_ascii_lowercase();
        let (name, id) = match lower.split_once(':') {
            Some((name, id)) => {
                let id = id.parse::<u16>().map_err(|_| {
                    Error::InvalidArg(format!(
                        "execution provider `{s}`: device id `{id}` is not a number"
                    ))
                })?;
                (name, Some(i32::from(id)))
            }
            None => (lower.as_str(), None),
        };
        match (name, id) {
            ("cpu", None) => Ok(ExecutionProvider::Cpu),
            ("cuda", id) => Ok(ExecutionProvider::Cuda {
                device_id: id.unwrap_or(0),
            }),
            ("tensorrt" | "trt", id) => Ok(ExecutionProvider::TensorRt {
                device_id: id.unwrap_or(0),
                options: TensorRtOptions::default(),
            }),
            _ => Err(Error::InvalidArg(format!(
                "unknown execution provider `{s}` (expected cpu, cuda[:ID] or tensorrt[:ID])"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_provider_names() {
        assert_eq!(
            "cpu".parse::<ExecutionProvider>().ok(),
            Some(ExecutionProvider::Cpu)
        );
        assert_eq!(
            "CUDA:1".parse::<ExecutionProvider>().ok(),
            Some(ExecutionProvider::Cuda { device_id: 1 })
        );
        assert_eq!(
            "tensorrt".parse::<ExecutionProvider>().ok(),
            Some(ExecutionProvider::TensorRt {
                device_id: 0,
                options: TensorRtOptions::default()
            })
        );
        for bad in ["gpu", "cuda:x", "cpu:1", "cuda:-1", ""] {
            let err = bad.parse::<ExecutionProvider>().expect_err(bad);
            assert_eq!(err.code(), crate::ErrorCode::InvalidArg, "{bad}");
        }
    }
}
