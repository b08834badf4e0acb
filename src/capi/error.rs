//! Errors: `dg_error_t`, its stable codes and accessors.
use std::ffi::{c_char, CString};

use super::guard;
use crate::{Error, ErrorCode};

/// Stable error classes. Values are part of the ABI and are never renumbered; they equal the Rust
/// API's `diffgentor::ErrorCode`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum dg_error_code_t {
    /// Not an error: only what `dg_error_code(NULL)` returns.
    DG_ERROR_OK = 0,
    /// A required pointer argument (handle, string or out-param) was NULL.
    DG_ERROR_NULL_ARG = 1,
    /// An argument or request value is invalid (bad UTF-8, unknown key, out-of-range value, ...).
    DG_ERROR_INVALID_ARG = 2,
    /// Reading or writing a file failed.
    DG_ERROR_IO = 3,
    /// The model package is missing a file or is malformed.
    DG_ERROR_MODEL = 4,
    /// The package or request uses a feature diffgentor does not implement.
    DG_ERROR_UNSUPPORTED = 5,
    /// The requested execution provider cannot be used with the loaded ONNX Runtime.
    DG_ERROR_EP_UNAVAILABLE = 6,
    /// The request was cancelled by its progress callback or its cancel token.
    DG_ERROR_CANCELLED = 7,
    /// ONNX Runtime failed to load or to run a graph.
    DG_ERROR_BACKEND = 8,
    /// A bug: diffgentor panicked inside the call. The library stays usable.
    DG_ERROR_PANIC = 9,
    /// A remote service answered with an error, sent something unusable, or could not be reached;
    /// the message keeps the service's status, error type and message.
    DG_ERROR_REMOTE = 10,
    /// A remote service still refused for rate or quota after the retries (or the key's quota is
    /// exhausted).
    DG_ERROR_RATE_LIMITED = 11,
    /// A remote call did not finish within its timeout.
    DG_ERROR_TIMEOUT = 12,
    /// A remote service's safety or moderation system blocked the prompt or the image.
    DG_ERROR_REFUSED = 13,
}

impl From<ErrorCode> for dg_error_code_t {
    fn from(code: ErrorCode) -> Self {
        match code {
            ErrorCode::NullArg => dg_error_code_t::DG_ERROR_NULL_ARG,
            ErrorCode::InvalidArg => dg_error_code_t::DG_ERROR_INVALID_ARG,
            ErrorCode::Io => dg_error_code_t::DG_ERROR_IO,
            ErrorCode::Model => dg_error_code_t::DG_ERROR_MODEL,
            ErrorCode::Unsupported => dg_error_code_t::DG_ERROR_UNSUPPORTED,
            ErrorCode::EpUnavailable => dg_error_code_t::DG_ERROR_EP_UNAVAILABLE,
            ErrorCode::Cancelled => dg_error_code_t::DG_ERROR_CANCELLED,
            ErrorCode::Backend => dg_error_code_t::DG_ERROR_BACKEND,
            ErrorCode::Panic => dg_error_code_t::DG_ERROR_PANIC,
            ErrorCode::Remote => dg_error_code_t::DG_ERROR_REMOTE,
            ErrorCode::RateLimited => dg_error_code_t::DG_ERROR_RATE_LIMITED,
            ErrorCode::Timeout => dg_error_code_t::DG_ERROR_TIMEOUT,
            ErrorCode::Refused => dg_error_code_t::DG_ERROR_REFUSED,
        }
    }
}

/// An error returned by a fallible call: a code and a message. Owned by the caller, who frees it
/// with `dg_error_free`. Immutable, so it may be read from any thread.
#[derive(Debug)]
pub struct dg_error_t {
    code: dg_error_code_t,
    message: CString,
}

impl dg_error_t {
    /// An error with `code` and `message` (interior NULs, impossible in practice, become spaces).
    pub(crate) fn new(code: dg_error_code_t, message: impl Into<String>) -> dg_error_t {
        let message = message.into().replace('\0', " ");
        dg_error_t {
            code,
            message: CString::new(message).unwrap_or_default(),
        }
    }

    /// A `DG_ERROR_PANIC` error carrying the panic's message.
    pub(crate) fn panic(message: String) -> dg_error_t {
        dg_error_t::new(dg_error_code_t::DG_ERROR_PANIC, message)
    }

    /// Moves the error to the heap for C.
    pub(crate) fn into_raw(self) -> *mut dg_error_t {
        Box::into_raw(Box::new(self))
    }

    /// The error's code.
    pub fn code(&self) -> dg_error_code_t {
        self.code
    }

    /// The error's message.
    pub fn message(&self) -> &str {
        self.message.to_str().unwrap_or_default()
    }
}

impl From<Error> for dg_error_t {
    fn from(err: Error) -> Self {
        dg_error_t::new(err.code().into(), err.to_string())
    }
}

/// The code of `err`; `DG_ERROR_OK` (0) when `err` is NULL.
///
/// # Safety
/// `err` is NULL or an error returned by this library and not yet freed.
#[no_mangle]
pub unsafe extern "C" fn dg_error_code(err: *const dg_error_t) -> dg_error_code_t {
    guard(dg_error_code_t::DG_ERROR_PANIC, || {
        err.as_ref()
            .map_or(dg_error_code_t::DG_ERROR_OK, dg_error_t::code)
    })
}

/// The message of `err`, NUL-terminated UTF-8 owned by `err`: valid until `dg_error_free(err)`.
/// Returns "" (a static string) when `err` is NULL.
///
/// # Safety
/// `err` is NULL or an error returned by this library and not yet freed.
#[no_mangle]
pub unsafe extern "C" fn dg_error_message(err: *const dg_error_t) -> *const c_char {
    guard(c"".as_ptr(), || {
        err.as_ref().map_or(c"".as_ptr(), |e| e.message.as_ptr())
    })
}

/// Frees an error. NULL is a no-op.
///
/// # Safety
/// `err` is NULL or an error returned by this library, freed at most once.
#[no_mangle]
pub unsafe extern "C" fn dg_error_free(err: *mut dg_error_t) {
    super::free_handle(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_equal_the_rust_api() {
        for code in [
            ErrorCode::NullArg,
            ErrorCode::InvalidArg,
            ErrorCode::Io,
            ErrorCode::Model,
            ErrorCode::Unsupported,
            ErrorCode::EpUnavailable,
            ErrorCode::Cancelled,
            ErrorCode::Backend,
            ErrorCode::Panic,
            ErrorCode::Remote,
            ErrorCode::RateLimited,
            ErrorCode::Timeout,
            ErrorCode::Refused,
        ] {
            assert_eq!(dg_error_code_t::from(code) as u32, code as u32, "{code:?}");
        }
    }
}
