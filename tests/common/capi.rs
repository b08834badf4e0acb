//! Helpers for tests that call the C ABI the way C does: error objects, out-params, shared handles.
use std::ffi::{CStr, CString};
use std::ptr::{self, NonNull};
use std::sync::OnceLock;

use diffgentor::capi::*;

/// A value no call may write: out-params must stay untouched on error.
pub fn sentinel<T>() -> *mut T {
    NonNull::dangling().as_ptr()
}

/// Takes ownership of an error: its code and message.
pub unsafe fn take(err: *mut dg_error_t) -> (dg_error_code_t, String) {
    assert!(!err.is_null(), "expected an error");
    let code = dg_error_code(err);
    let message = CStr::from_ptr(dg_error_message(err))
        .to_str()
        .expect("messages are UTF-8")
        .to_string();
    dg_error_free(err);
    (code, message)
}

/// Panics with the message if the call failed.
#[track_caller]
pub unsafe fn ok(err: *mut dg_error_t) {
    if !err.is_null() {
        let (code, message) = take(err);
        panic!("{code:?}: {message}");
    }
}

/// Asserts an error with `code` whose message mentions every one of `words`.
#[track_caller]
pub unsafe fn expect_err(err: *mut dg_error_t, code: dg_error_code_t, words: &[&str]) {
    let (got, message) = take(err);
    assert_eq!(got, code, "{message}");
    for word in words {
        assert!(message.contains(word), "`{message}` should mention {word}");
    }
}

pub fn cstr(s: &str) -> CString {
    CString::new(s).expect("no NUL")
}

/// Handles are raw pointers; these tests share them across threads the way C would.
pub struct Shared<T>(pub *mut T);
impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Shared<T> {}
unsafe impl<T> Send for Shared<T> {}
unsafe impl<T> Sync for Shared<T> {}

impl<T> Shared<T> {
    /// Taking `self` makes a closure capture the whole (Send) wrapper, not its pointer field.
    pub fn get(self) -> *mut T {
        self.0
    }
}

/// A CPU runtime made through the C API (one intra-op thread), on the ONNX Runtime the tests use.
pub unsafe fn new_runtime() -> *mut dg_runtime_t {
    let mut opts = ptr::null_mut();
    ok(dg_runtime_options_new(&mut opts));
    if let Some(lib) = super::ort_library() {
        let lib = cstr(lib.to_str().expect("UTF-8 path"));
        ok(dg_runtime_options_set_ort_library(opts, lib.as_ptr()));
    }
    ok(dg_runtime_options_set_execution_provider(
        opts,
        c"cpu".as_ptr(),
    ));
    ok(dg_runtime_options_set_intra_threads(opts, 1));
    let mut rt = sentinel();
    ok(dg_runtime_new(opts, &mut rt));
    dg_runtime_options_free(opts);
    assert_ne!(rt, sentinel());
    rt
}

/// The runtime most tests share (ONNX Runtime loads once per process anyway).
pub fn runtime() -> *mut dg_runtime_t {
    static RUNTIME: OnceLock<Shared<dg_runtime_t>> = OnceLock::new();
    RUNTIME.get_or_init(|| Shared(unsafe { new_runtime() })).0
}
