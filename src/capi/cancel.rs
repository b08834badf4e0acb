//! Cancel tokens: a flag any thread can raise to stop a running `dg_pipeline_generate`.
use super::{boundary, dg_error_t, guard, out_param, write_out};
use crate::request::CancelToken;

/// A cancellation flag. Thread-safe: `dg_cancel_token_cancel` may be called from any thread while
/// another thread generates with the token. A raised token stays raised; use a new token per request.
/// Free it with `dg_cancel_token_free` once no call that took it is running.
pub struct dg_cancel_token_t {
    pub(crate) token: CancelToken,
}

/// Creates an unraised token in `*out`.
///
/// # Safety
/// `out` is NULL or valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn dg_cancel_token_new(out: *mut *mut dg_cancel_token_t) -> *mut dg_error_t {
    boundary(|| {
        let out = out_param(out, "out")?;
        write_out(
            out,
            dg_cancel_token_t {
                token: CancelToken::new(),
            },
        )
    })
}

/// Raises the token: a generate using it stops before its next denoising step (or before decoding)
/// with `DG_ERROR_CANCELLED`. Thread-safe; NULL is a no-op.
///
/// # Safety
/// `token` is NULL or a live token from `dg_cancel_token_new`.
#[no_mangle]
pub unsafe extern "C" fn dg_cancel_token_cancel(token: *const dg_cancel_token_t) {
    guard((), || {
        if let Some(t) = token.as_ref() {
            t.token.cancel();
        }
    })
}

/// Frees a token. NULL is a no-op.
///
/// # Safety
/// `token` is NULL or came from `dg_cancel_token_new`, is freed at most once, and no running call
/// still uses it.
#[no_mangle]
pub unsafe extern "C" fn dg_cancel_token_free(token: *mut dg_cancel_token_t) {
    super::free_handle(token)
}
