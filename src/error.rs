//! The crate's error type and the stable error codes the C ABI will expose.
use std::path::PathBuf;

use crate::model::tokenizer::TokenizerError;
use crate::schedulers::SchedulerError;

/// Stable, numbered error classes. Values are part of the public contract: never renumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
#[non_exhaustive]
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
    /// A remote service answered with an error (or could not be reached).
    Remote = 10,
    /// A remote service refused for rate or quota after every retry.
    RateLimited = 11,
    /// A remote call did not finish within its timeout.
    Timeout = 12,
    /// A remote service's safety or moderation system blocked the request or its image.
    Refused = 13,
}

/// Everything that can go wrong between a request and an image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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

    /// A graph returned what its signature did not promise, or a value it computed is unusable
    /// (shapes, missing outputs, non-finite images). Reported with code `Backend`.
    #[error("{component}: {message}")]
    Internal { component: String, message: String },

    /// A remote generator's failure, with what the service said.
    #[error(transparent)]
    Remote(Box<RemoteError>),

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
            Error::Backend { .. } | Error::Internal { .. } => ErrorCode::Backend,
            Error::Remote(remote) => remote.kind.code(),
            Error::Scheduler(
                SchedulerError::UnsupportedConfig { .. } | SchedulerError::Unsupported { .. },
            ) => ErrorCode::Unsupported,
            Error::Scheduler(_) => ErrorCode::InvalidArg,
        }
    }

    /// An I/O failure: what was being done (`cannot write`), to which path, and why.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
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

    pub(crate) fn internal(component: &str, message: impl std::fmt::Display) -> Self {
        Error::Internal {
            component: component.to_string(),
            message: message.to_string(),
        }
    }

    /// The remote service's failure, when this is one.
    pub fn remote(&self) -> Option<&RemoteError> {
        match self {
            Error::Remote(remote) => Some(remote),
            _ => None,
        }
    }
}

/// How a remote call failed; each kind has its own stable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RemoteFailure {
    /// The service answered with an error, its answer was unusable, or it could not be reached.
    Error,
    /// 429 or a quota error, still so after the retries.
    RateLimited,
    /// No answer within the request's timeout.
    Timeout,
    /// The service's safety system blocked the prompt or the image.
    Refused,
}

impl RemoteFailure {
    pub fn code(self) -> ErrorCode {
        match self {
            RemoteFailure::Error => ErrorCode::Remote,
            RemoteFailure::RateLimited => ErrorCode::RateLimited,
            RemoteFailure::Timeout => ErrorCode::Timeout,
            RemoteFailure::Refused => ErrorCode::Refused,
        }
    }
}

/// What a remote service said when a call failed: enough to act on (status, the service's error
/// type, its message), never the API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteError {
    pub kind: RemoteFailure,
    /// The generator kind, e.g. `openai` or `gemini`.
    pub service: String,
    /// The endpoint's base URL (keys are sent in headers, never in URLs).
    pub endpoint: String,
    /// The HTTP status, when the service answered.
    pub status: Option<u16>,
    /// The service's error type or reason (`insufficient_quota`, `RESOURCE_EXHAUSTED`, `SAFETY`).
    pub error_type: Option<String>,
    pub message: String,
    /// Calls made, retries included.
    pub attempts: u32,
}

impl std::fmt::Display for RemoteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at {}: ", self.service, self.endpoint)?;
        if let Some(status) = self.status {
            write!(f, "HTTP {status}: ")?;
        }
        if let Some(kind) = &self.error_type {
            write!(f, "{kind}: ")?;
        }
        write!(f, "{}", self.message)?;
        if self.attempts > 1 {
            write!(f, " (after {} attempts)", self.attempts)?;
        }
        Ok(())
    }
}

impl std::error::Error for RemoteError {}

pub type Result<T, E = Error> = std::result::Result<T, E>;
