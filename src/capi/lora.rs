//! LoRA adapters of a local pipeline (`dg_pipeline_lora_*`) and the strings the library hands
//! over to the caller (`dg_string_free`), over [`crate::Pipeline`]'s adapter API (docs/lora.md).
use std::ffi::{c_char, CString};
use std::path::Path;

use serde_json::json;

use super::{arg_ref, arg_str, boundary, dg_error_t, dg_pipeline_t, out_param, FfiResult};
use crate::lora::LoadOptions;
use crate::request::parse_stack;
use crate::{Error, Pipeline};

/// `dg_pipeline_lora_load` flag: skip tensors of the file that match no weight of the model (or
/// are of an unknown kind) instead of refusing the file; `dg_pipeline_lora_list` reports how many
/// were skipped as "unmatched".
pub const DG_LORA_ALLOW_PARTIAL: u32 = 1;

/// Every flag `dg_pipeline_lora_load` knows.
const KNOWN_FLAGS: u32 = DG_LORA_ALLOW_PARTIAL;

/// The local pipeline behind `p`; a remote one is `DG_ERROR_UNSUPPORTED` naming its kind.
fn local(p: &dg_pipeline_t) -> FfiResult<&Pipeline> {
    p.inner.as_pipeline().ok_or_else(|| {
        Error::Unsupported(format!(
            "LoRA adapters need a local pipeline (dg_pipeline_load); this one is a remote `{}` pipeline",
            p.inner.describe().kind
        ))
        .into()
    })
}

/// `strength` as the f64 that prints as the f32 does (0.8, not 0.800000011920929).
fn shortest(strength: f32) -> f64 {
    strength
        .to_string()
        .parse()
        .unwrap_or_else(|_| f64::from(strength))
}

/// Loads the LoRA file at `path` (UTF-8; safetensors in diffusers/PEFT, kohya or LyCORIS naming,
/// docs/lora.md) into the local pipeline `p` as adapter `name` (1 to 128 letters, digits, `_`, `-`
/// or `.`), replacing an adapter of that name. `flags` is 0 or `DG_LORA_ALLOW_PARTIAL`; an unknown
/// bit is `DG_ERROR_INVALID_ARG`. The first adapter touching a weight rebuilds that graph's session
/// once; requests then choose their stack (`dg_params_add_lora`, the "loras" key, or the default
/// stack) without reloading anything, and the output of a request without a stack stays the base
/// model's, bit for bit. A missing file is `DG_ERROR_IO`; a bad name, a file that is not
/// safetensors, or one made for another model (tensors matching no weight, without
/// `DG_LORA_ALLOW_PARTIAL`) is `DG_ERROR_INVALID_ARG`; a layer naming the library does not know,
/// and a remote pipeline, are `DG_ERROR_UNSUPPORTED`. A failed load changes nothing.
/// Thread-safe: may be called while other threads generate on `p`.
///
/// # Safety
/// `p` is NULL or a live pipeline; `name` and `path` are NULL or NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn dg_pipeline_lora_load(
    p: *const dg_pipeline_t,
    name: *const c_char,
    path: *const c_char,
    flags: u32,
) -> *mut dg_error_t {
    boundary(|| {
        let p = arg_ref(p, "p")?;
        let name = arg_str(name, "name")?;
        let path = arg_str(path, "path")?;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(Error::InvalidArg(format!(
                "unknown LoRA load flags {:#x} (known: DG_LORA_ALLOW_PARTIAL = {DG_LORA_ALLOW_PARTIAL})",
                flags & !KNOWN_FLAGS
            ))
            .into());
        }
        let options = LoadOptions {
            allow_partial: flags & DG_LORA_ALLOW_PARTIAL != 0,
        };
        local(p)?.load_lora_with(name, Path::new(path), options)?;
        Ok(())
    })
}

/// Unloads adapter `name` from `p` and takes it out of the default stack. A name that is not
/// loaded is `DG_ERROR_INVALID_ARG` listing the loaded ones; a remote pipeline is
/// `DG_ERROR_UNSUPPORTED`. Thread-safe: may be called while other threads generate on `p`.
///
/// # Safety
/// `p` is NULL or a live pipeline; `name` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn dg_pipeline_lora_unload(
    p: *const dg_pipeline_t,
    name: *const c_char,
) -> *mut dg_error_t {
    boundary(|| {
        let p = arg_ref(p, "p")?;
        let name = arg_str(name, "name")?;
        Ok(local(p)?.unload_lora(name)?)
    })
}

/// The adapters loaded into `p` and its default stack, as a JSON object (UTF-8, NUL-terminated)
/// in `*out`, owned by the caller: free it with `dg_string_free`. It is a snapshot: later loads
/// do not change it. Keys (more may be added):
///
/// - "adapters": by name, each `{"name", "path", "format" ("diffusers", "kohya", ...), "layers"
///   (weights changed, per component: {"unet": 12, "text_encoder": 4}), "unmatched" (tensors
///   skipped under `DG_LORA_ALLOW_PARTIAL`), "default_strength" (its strength in the default
///   stack, or null when it is not in it)}`;
/// - "default_stack": the default stack in order, `[{"name", "strength"}]`.
///
/// A remote pipeline is `DG_ERROR_UNSUPPORTED`.
///
/// # Safety
/// `p` is NULL or a live pipeline; `out` is NULL or valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn dg_pipeline_lora_list(
    p: *const dg_pipeline_t,
    out: *mut *mut c_char,
) -> *mut dg_error_t {
    boundary(|| {
        let p = arg_ref(p, "p")?;
        let out = out_param(out, "out")?;
        let pipeline = local(p)?;
        let default = pipeline.default_loras();
        let adapters: Vec<_> = pipeline
            .loras()
            .into_iter()
            .map(|info| {
                let strength = default
                    .iter()
                    .find(|u| u.name == info.name)
                    .map(|u| shortest(u.strength));
                json!({
                    "name": info.name,
                    "path": info.path.to_string_lossy(),
                    "format": info.format,
                    "layers": info.layers,
                    "unmatched": info.unmatched,
                    "default_strength": strength,
                })
            })
            .collect();
        let stack: Vec<_> = default
            .iter()
            .map(|u| json!({"name": u.name, "strength": shortest(u.strength)}))
            .collect();
        let text = json!({"adapters": adapters, "default_stack": stack}).to_string();
        // JSON text escapes NUL, so this cannot fail.
        let text = CString::new(text).unwrap_or_default();
        out.write(text.into_raw());
        Ok(())
    })
}

/// Sets the stack of `p`'s requests that name none (their params neither added an adapter nor
/// cleared the stack, and have no "loras" key): `stack` is `name:strength` items separated by `;`
/// (or `,`), e.g. "style:0.8;hero:-0.4" (a bare `name` is strength 1); "" means no default stack.
/// Every adapter must be loaded; at most 10, each once, with finite strengths. A bad stack is
/// `DG_ERROR_INVALID_ARG` and leaves the default stack as it was; a remote pipeline is
/// `DG_ERROR_UNSUPPORTED`. Thread-safe; a request takes the default stack when it starts.
///
/// # Safety
/// `p` is NULL or a live pipeline; `stack` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn dg_pipeline_lora_set_default(
    p: *const dg_pipeline_t,
    stack: *const c_char,
) -> *mut dg_error_t {
    boundary(|| {
        let p = arg_ref(p, "p")?;
        let stack = parse_stack(arg_str(stack, "stack")?)?;
        Ok(local(p)?.set_default_loras(stack)?)
    })
}

/// Frees a string the library handed over (`dg_pipeline_lora_list`'s). NULL is a no-op.
///
/// # Safety
/// `s` is NULL or a string from a function documented to be freed with `dg_string_free`, freed at
/// most once.
#[no_mangle]
pub unsafe extern "C" fn dg_string_free(s: *mut c_char) {
    super::guard((), || {
        if !s.is_null() {
            drop(CString::from_raw(s));
        }
    })
}
