//! The C ABI (`include/diffgentor.h`): `extern "C"` wrappers over the Rust API and nothing else.
//!
//! Every exported function runs its body through [`boundary`] (fallible functions) or [`guard`]
//! (infallible getters and destructors), which catch panics so that no unwind ever crosses into C.
//! Arguments are checked with the helpers below: a NULL pointer is `DG_ERROR_NULL_ARG` and bad
//! UTF-8 is `DG_ERROR_INVALID_ARG`, both naming the parameter; out-params are written only once
//! the whole call has succeeded ([`write_out`] is the last thing a body does).
#![allow(non_camel_case_types)]

use std::any::Any;
use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;

// Declared in the order the header presents them (cbindgen keeps source order).
pub mod version;

pub mod error;

pub mod runtime;

pub mod params;

pub mod cancel;

pub mod pipeline;

pub mod images;

pub mod vlm;

pub mod lora;

pub use cancel::*;
pub use error::*;
pub use images::*;
pub use lora::*;
pub use params::*;
pub use pipeline::*;
pub use runtime::*;
pub use version::*;
pub use vlm::*;

/// What a body run by [`boundary`] returns: `Err` becomes the `dg_error_t*` handed to C.
pub(crate) type FfiResult<T = ()> = Result<T, dg_error_t>;

/// Runs a fallible body: `Ok` -> NULL, `Err` -> a heap error for C to free, panic -> `DG_ERROR_PANIC`.
pub(crate) fn boundary(body: impl FnOnce() -> FfiResult) -> *mut dg_error_t {
    // The handles a body touches are either immutable or left in a valid state by every
    // statement of the Rust API, so observing them after a caught panic is sound.
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => ptr::null_mut(),
        Ok(Err(err)) => err.into_raw(),
        Err(payload) => dg_error_t::panic(panic_message(payload.as_ref())).into_raw(),
    }
}

/// Runs an infallible body, returning `fallback` if it panics (C cannot receive an error here).
pub(crate) fn guard<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(fallback)
}

/// The text of a panic payload (`panic!("...")` gives `&str` or `String`).
fn panic_message(payload: &(dyn Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    format!("internal panic: {text}")
}

/// `DG_ERROR_NULL_ARG` naming parameter `name`.
fn null_arg(name: &str) -> dg_error_t {
    dg_error_t::new(
        dg_error_code_t::DG_ERROR_NULL_ARG,
        format!("`{name}` must not be NULL"),
    )
}

/// Borrows a required handle.
///
/// # Safety
/// `p` is NULL or points to a live `T` that outlives the returned reference.
pub(crate) unsafe fn arg_ref<'a, T>(p: *const T, name: &str) -> FfiResult<&'a T> {
    p.as_ref().ok_or_else(|| null_arg(name))
}

/// Borrows a required handle mutably.
///
/// # Safety
/// `p` is NULL or points to a live `T` that nothing else uses during the returned borrow.
pub(crate) unsafe fn arg_mut<'a, T>(p: *mut T, name: &str) -> FfiResult<&'a mut T> {
    p.as_mut().ok_or_else(|| null_arg(name))
}

/// Borrows a required NUL-terminated UTF-8 string.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that outlives the returned reference.
pub(crate) unsafe fn arg_str<'a>(p: *const c_char, name: &str) -> FfiResult<&'a str> {
    opt_str(p, name)?.ok_or_else(|| null_arg(name))
}

/// Borrows an optional NUL-terminated UTF-8 string (NULL -> `None`).
///
/// # Safety
/// As [`arg_str`].
pub(crate) unsafe fn opt_str<'a>(p: *const c_char, name: &str) -> FfiResult<Option<&'a str>> {
    if p.is_null() {
        return Ok(None);
    }
    CStr::from_ptr(p).to_str().map(Some).map_err(|e| {
        dg_error_t::new(
            dg_error_code_t::DG_ERROR_INVALID_ARG,
            format!(
                "`{name}` is not valid UTF-8 (invalid byte at offset {})",
                e.valid_up_to()
            ),
        )
    })
}

/// Checks an out-param up front, so a NULL one fails before any work is done.
pub(crate) fn out_param<T>(out: *mut *mut T, name: &str) -> FfiResult<*mut *mut T> {
    if out.is_null() {
        Err(null_arg(name))
    } else {
        Ok(out)
    }
}

/// Publishes `value` through a checked out-param as a new heap handle; the last step of a body.
///
/// # Safety
/// `out` came from [`out_param`] and is valid for a pointer write.
pub(crate) unsafe fn write_out<T>(out: *mut *mut T, value: T) -> FfiResult {
    out.write(Box::into_raw(Box::new(value)));
    Ok(())
}

/// Frees a handle made by [`write_out`]; NULL is a no-op.
///
/// # Safety
/// `p` is NULL or came from [`write_out`] for this `T` and has not been freed.
pub(crate) unsafe fn free_handle<T>(p: *mut T) {
    guard((), || {
        if !p.is_null() {
            drop(Box::from_raw(p));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    unsafe fn take(err: *mut dg_error_t) -> (dg_error_code_t, String) {
        assert!(!err.is_null());
        let code = dg_error_code(err);
        let message = CStr::from_ptr(dg_error_message(err))
            .to_str()
            .unwrap()
            .to_string();
        dg_error_free(err);
        (code, message)
    }

    #[test]
    fn boundary_turns_panics_into_errors() {
        let err = boundary(|| panic!("boom {}", 42));
        let (code, message) = unsafe { take(err) };
        assert_eq!(code, dg_error_code_t::DG_ERROR_PANIC);
        assert!(message.contains("boom 42"), "{message}");

        let err = boundary(|| std::panic::panic_any(7u8));
        assert_eq!(
            unsafe { take(err) }.0,
            dg_error_code_t::DG_ERROR_PANIC,
            "a payload that is not a string"
        );
    }

    #[test]
    fn boundary_passes_results_through() {
        assert!(boundary(|| Ok(())).is_null());
        let err = boundary(|| Err(crate::Error::Cancelled.into()));
        let (code, message) = unsafe { take(err) };
        assert_eq!(code, dg_error_code_t::DG_ERROR_CANCELLED);
        assert_eq!(message, "request cancelled");
    }

    #[test]
    fn guard_returns_the_fallback_on_panic() {
        assert_eq!(guard(0u32, || panic!("getter")), 0);
        assert_eq!(guard(0u32, || 5), 5);
    }

    #[test]
    fn argument_checks_name_the_parameter() {
        let err = unsafe { arg_ref::<u8>(ptr::null(), "handle") }.unwrap_err();
        assert_eq!(err.code(), dg_error_code_t::DG_ERROR_NULL_ARG);
        assert!(err.message().contains("`handle`"));

        let bad = b"ab\xffc\0";
        let err = unsafe { arg_str(bad.as_ptr().cast(), "prompt") }.unwrap_err();
        assert_eq!(err.code(), dg_error_code_t::DG_ERROR_INVALID_ARG);
        assert!(err.message().contains("`prompt`") && err.message().contains("offset 2"));

        assert_eq!(unsafe { opt_str(ptr::null(), "x") }.unwrap(), None);
        assert_eq!(
            unsafe { arg_str(c"hi".as_ptr(), "x") }.unwrap(),
            "hi",
            "valid strings pass"
        );
        let err = out_param::<u8>(ptr::null_mut(), "out").unwrap_err();
        assert!(err.message().contains("`out`"));
    }
}
