//! The crate's error type and the stable error codes the C ABI will expose.
use std::path::PathBuf;

use crate::model::tokenizer::TokenizerError;
use crate::schedulers::SchedulerError;

/// Stable, numbered error classes. Values are part of the public contract: never renumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ErrorCode {
    NullArg = 1,
    InvalidArg = 2,
    Io = 3,
    Model = 4,
    Unsupported = 5,
    EpUnavailable = 6,
    Cancelled = 7,
    Backend = 8,
    Panic = 9,
}

/// Everything that can go wrong between a request and an image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid argument: {0}")]
    InvalidArg(String),

    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("model package {}: {message}", path.display())]
    Model { path: PathBuf, message: String },

    #[error("unsupported: {0}")]
    Unsupported(String),

    #[error("execution provider {ep} is unavailable: {reason}")]
    EpUnavailable { ep: String, reason: String },

    #[error("ONNX Runtime library: {0}")]
    OrtLibrary(String),

    #[error("request cancelled")]
    Cancelled,

    #[error("ONNX Runtime failed in {component}: {message}")]
    Backend { component: String, message: String },

    #[error("scheduler: {0}")]
    Scheduler(#[from] SchedulerError),

    #[error("tokenizer: {0}")]
    Tokenizer(#[from] TokenizerError),
}

impl Error {
    /// The stable code a C caller (or a test) branches on.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::InvalidArg(_) => ErrorCode::InvalidArg,
            Error::Io { .. } => ErrorCode::Io,
            Error::Model { .. } | Error::Tokenizer(_) => ErrorCode::Model,
            Error::Unsupported(_) => ErrorCode::Unsupported,
            Error::EpUnavailable { .. } => ErrorCode::EpUnavailable,
            Error::OrtLibrary(_) => ErrorCode::Backend,
            Error::Cancelled => ErrorCode::Cancelled,
            Error::Backend { .. } => ErrorCode::Backend,
            Error::Scheduler(
                SchedulerError::UnsupportedConfig { .. } | SchedulerError::Unsupported { .. },
            ) => ErrorCode::Unsupported,
            Error::Scheduler(_) => ErrorCode::InvalidArg,
        }
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn model(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Model {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn backend(component: &str, err: impl std::fmt::Display) -> Self {
        Error::Backend {
            component: component.to_string(),
            message: err.to_string(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
