//! Vision-language models: captioning, visual question answering and prompt enhancement
//! (`dg_vlm_*`), over [`crate::vlm`].
use std::ffi::{c_char, c_void, CString};
use std::path::Path;
use std::ptr;
use std::sync::OnceLock;

use serde_json::json;

use super::{
    arg_mut, arg_ref, arg_str, boundary, dg_cancel_token_t, dg_error_t, dg_runtime_t, guard,
    opt_str, out_param, write_out, FfiResult,
};
use crate::vlm::enhance::{self, EnhanceStyle};
use crate::vlm::{
    ChatMessage, FinishReason, Part, TokenEvent, Vlm, VlmOutput, VlmRequest,
    DEFAULT_CAPTION_PROMPT, MAX_IMAGES,
};
use crate::{Error, Image};

/// A loaded vision-language model (`dg_vlm_load`). Thread-safe: many threads may call
/// `dg_vlm_generate` on one model at once (weights are shared; each request has its own cache and
/// sampler). Holds its runtime alive. Free it with `dg_vlm_free` once no generate on it is running.
pub struct dg_vlm_t {
    inner: Vlm,
    /// `dg_vlm_info`'s JSON text.
    info: CString,
}

/// Parameters of one VLM request: a builder. Not thread-safe: use one from one thread at a time.
/// `dg_vlm_generate` copies it, so it may be changed, reused or freed once that call returns.
pub struct dg_vlm_params_t {
    /// The conversation (chat params) and the generation settings (both kinds).
    request: VlmRequest,
    /// The "system" key: replaces every system message when the request is made.
    system: Option<String>,
    /// Set by `dg_vlm_params_new_enhance`: the request is made by the style from the instruction
    /// and the one image added.
    enhance: Option<Enhance>,
}

struct Enhance {
    style: EnhanceStyle,
    instruction: String,
    image: Option<Image>,
}

/// The answer of one `dg_vlm_generate`, owned by the caller and freed with `dg_vlm_result_free`.
/// Immutable, so safe to read from any thread.
pub struct dg_vlm_result_t {
    /// The text's UTF-8 bytes followed by a NUL (the text itself may contain NULs).
    text: Vec<u8>,
    token_ids: Vec<i64>,
    prompt_tokens: usize,
    finish_reason: FinishReason,
    timings: CString,
    /// `dg_vlm_result_enhanced_prompt`'s text, made on first use.
    enhanced_prompt: OnceLock<CString>,
}

/// One new token, passed to the token callback. Starts with its size so fields can be appended in
/// later versions: read a field only if `struct_size` covers it.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct dg_vlm_token_t {
    /// `sizeof(dg_vlm_token_t)` as the library was built.
    pub struct_size: u32,
    /// New tokens so far, this one included (1 for the first).
    pub index: u32,
    /// The token's id.
    pub token_id: i64,
    /// The text this token completes: UTF-8, NUL-terminated, valid only during the call. Often
    /// "" (a token in the middle of a UTF-8 character, a special token, or text held back because
    /// it may begin a stop string); the texts of all calls add up to the result's text.
    pub text: *const c_char,
    /// Bytes of `text` before its terminating NUL (the text may itself contain NUL bytes).
    pub text_len: usize,
}

/// Token callback: called on the generating thread after every new token with a `token` valid
/// only during the call and the `user_data` given to `dg_vlm_generate`. Return true to go on,
/// false to cancel the request (`DG_ERROR_CANCELLED`). It is never called after
/// `dg_vlm_generate` returns. It must not unwind or longjmp out of the call.
pub type dg_vlm_token_fn =
    Option<unsafe extern "C" fn(token: *const dg_vlm_token_t, user_data: *mut c_void) -> bool>;

/// Loads the vision-language model package in directory `model_dir` (UTF-8) on `rt`, telling its
/// layout from the files: onnxruntime-genai (Qwen2.5-VL style), transformers.js
/// (`onnx/vision_encoder.onnx`, `embed_tokens.onnx`, `decoder_model_merged.onnx`) or optimum
/// vision-encoder-decoder (`encoder_model.onnx`, `decoder_model_merged.onnx`). A directory that
/// matches none is `DG_ERROR_MODEL` listing the graphs and inputs found. The model goes to `*out`.
///
/// # Safety
/// `rt` is NULL or a live runtime; `model_dir` is NULL or a NUL-terminated string; `out` is NULL
/// or valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn dg_vlm_load(
    rt: *const dg_runtime_t,
    model_dir: *const c_char,
    out: *mut *mut dg_vlm_t,
) -> *mut dg_error_t {
    boundary(|| {
        let rt = arg_ref(rt, "rt")?;
        let model_dir = arg_str(model_dir, "model_dir")?;
        let out = out_param(out, "out")?;
        let inner = Vlm::load(rt.inner.clone(), Path::new(model_dir))?;
        let info = json!({
            "layout": inner.layout(),
            "context_length": inner.context_length(),
            "eos_ids": inner.eos_ids(),
            "chat": inner.is_chat(),
            "caption_prompt": DEFAULT_CAPTION_PROMPT,
        });
        // JSON text escapes NUL, so this cannot fail.
        let info = CString::new(info.to_string()).unwrap_or_default();
        write_out(out, dg_vlm_t { inner, info })
    })
}

/// What the model is, as a JSON object (UTF-8, NUL-terminated, owned by `vlm`): "layout"
/// ("onnxruntime-genai", "transformers.js" or "optimum vision-encoder-decoder"),
/// "context_length" (most tokens, prompt and answer, one sequence may have), "eos_ids" (the
/// end-of-sequence token ids) and "chat" (true when the model reads a conversation through its
/// chat template; false for a captioner, which reads one image and takes text other than the
/// default caption prompt as the beginning of its caption) and "caption_prompt" (the prompt
/// `dg caption` asks for a caption with when given none). "" when `vlm` is NULL.
///
/// # Safety
/// `vlm` is NULL or a live model.
#[no_mangle]
pub unsafe extern "C" fn dg_vlm_info(vlm: *const dg_vlm_t) -> *const c_char {
    guard(c"".as_ptr(), || {
        vlm.as_ref().map_or(c"".as_ptr(), |v| v.info.as_ptr())
    })
}

/// Frees a model. NULL is a no-op. Must not race with a `dg_vlm_generate` on the same model.
///
/// # Safety
/// `vlm` is NULL or came from `dg_vlm_load`, is freed at most once, and no call is using it.
#[no_mangle]
pub unsafe extern "C" fn dg_vlm_free(vlm: *mut dg_vlm_t) {
    super::free_handle(vlm)
}

/// Creates empty parameters in `*out`: no message yet, at most 128 new tokens, greedy decoding
/// (temperature 0), no stop string. Add the conversation's parts in order with
/// `dg_vlm_params_add_text` and the `dg_vlm_params_add_image*` functions.
///
/// # Safety
/// `out` is NULL or valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn dg_vlm_params_new(out: *mut *mut dg_vlm_params_t) -> *mut dg_error_t {
    boundary(|| {
        let out = out_param(out, "out")?;
        let mut request = VlmRequest::new("", Vec::new());
        request.messages.clear();
        write_out(
            out,
            dg_vlm_params_t {
                request,
                system: None,
                enhance: None,
            },
        )
    })
}

/// Creates parameters in `*out` that ask the model to rewrite `instruction` (an edit instruction
/// or a text-to-image prompt, UTF-8) into a better prompt for a generator of `style`:
/// "qwen_image_edit" (one precise edit instruction), "flux2" (a dense scene description),
/// "glm_image" (a structured description, text quoted) or "t2i" (any text-to-image model); each
/// style's system prompt is in docs/vlm.md. Add the image the instruction is about, if any, with
/// one `dg_vlm_params_add_image*` call (role NULL or "user"); `dg_vlm_params_add_text` is refused
/// on these parameters. At most 256 new tokens unless "max_new_tokens" is set; "system" replaces
/// the style's system prompt. Read the rewritten prompt with `dg_vlm_result_enhanced_prompt`.
/// An unknown style is `DG_ERROR_INVALID_ARG` listing the styles; an empty instruction too.
///
/// # Safety
/// `style` and `instruction` are NULL or NUL-terminated strings; `out` is NULL or valid for
/// writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn dg_vlm_params_new_enhance(
    style: *const c_char,
    instruction: *const c_char,
    out: *mut *mut dg_vlm_params_t,
) -> *mut dg_error_t {
    boundary(|| {
        let style = arg_str(style, "style")?.parse::<EnhanceStyle>()?;
        let instruction = arg_str(instruction, "instruction")?;
        let out = out_param(out, "out")?;
        // Checks the instruction and gives the style's defaults (max_new_tokens).
        let request = style.request(instruction, None)?;
        write_out(
            out,
            dg_vlm_params_t {
                request,
                system: None,
                enhance: Some(Enhance {
                    style,
                    instruction: instruction.to_string(),
                    image: None,
                }),
            },
        )
    })
}

/// Frees parameters. NULL is a no-op.
///
/// # Safety
/// `p` is NULL or came from `dg_vlm_params_new` or `dg_vlm_params_new_enhance` and is freed at
/// most once.
#[no_mangle]
pub unsafe extern "C" fn dg_vlm_params_free(p: *mut dg_vlm_params_t) {
    super::free_handle(p)
}

impl dg_vlm_params_t {
    /// Appends `part` to the conversation: to the last message when it has `role`, else as the
    /// first part of a new message.
    fn push(&mut self, role: Option<&str>, part: Part) -> FfiResult {
        let role = role.unwrap_or("user");
        if role.trim().is_empty() {
            return Err(Error::InvalidArg(
                "`role` must not be empty (\"user\", \"system\", \"assistant\")".into(),
            )
            .into());
        }
        if let Some(enhance) = &mut self.enhance {
            let Part::Image(image) = part else {
                return Err(Error::InvalidArg(
                    "prompt enhancement parameters take their text from dg_vlm_params_new_enhance; \
                     add only the image"
                        .into(),
                )
                .into());
            };
            if role != "user" {
                return Err(Error::InvalidArg(format!(
                    "prompt enhancement reads a user image, not role `{role}`"
                ))
                .into());
            }
            if enhance.image.is_some() {
                return Err(
                    Error::InvalidArg("prompt enhancement reads at most one image".into()).into(),
                );
            }
            enhance.image = Some(image);
            return Ok(());
        }
        if matches!(part, Part::Image(_)) && self.request.images().count() >= MAX_IMAGES {
            return Err(
                Error::InvalidArg(format!("at most {MAX_IMAGES} images per request")).into(),
            );
        }
        match self.request.messages.last_mut() {
            Some(last) if last.role == role => last.parts.push(part),
            _ => self.request.messages.push(ChatMessage {
                role: role.to_string(),
                parts: vec![part],
            }),
        }
        Ok(())
    }

    /// Sets one key of `dg_vlm_params_set`.
    fn set(&mut self, key: &str, value: &str) -> FfiResult {
        match key {
            "system" => self.system = Some(value.to_string()),
            _ => self.request.set(key, value).map_err(|e| match e {
                // The C surface has one more key than the request table: name it too.
                Error::InvalidArg(m) if m.starts_with("unknown") => {
                    Error::InvalidArg(format!("{}, system)", m.trim_end_matches(')')))
                }
                other => other,
            })?,
        }
        Ok(())
    }

    /// The request to run: a copy of the conversation, or the enhancement style's request with
    /// the settings of these parameters.
    fn to_request(&self) -> crate::Result<VlmRequest> {
        let mut request = match &self.enhance {
            None => self.request.clone(),
            Some(e) => {
                let mut request = e.style.request(&e.instruction, e.image.clone())?;
                request.max_new_tokens = self.request.max_new_tokens;
                request.sampling = self.request.sampling;
                request.stop = self.request.stop.clone();
                request
            }
        };
        if let Some(system) = &self.system {
            request = request.with_system(system.clone());
        }
        Ok(request)
    }
}

/// Appends a text part to the conversation. Parts are read in the order they are added:
/// consecutive parts of one `role` form one message, a part of another role starts the next
/// message. `role` is "user" (NULL means "user"), "system" or "assistant" (any non-empty role
/// the model's chat template knows); `text` is UTF-8.
///
/// # Safety
/// `p` is NULL or live params; `role` and `text` are NULL or NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn dg_vlm_params_add_text(
    p: *mut dg_vlm_params_t,
    role: *const c_char,
    text: *const c_char,
) -> *mut dg_error_t {
    boundary(|| {
        let p = arg_mut(p, "p")?;
        let role = opt_str(role, "role")?;
        let text = arg_str(text, "text")?;
        p.push(role, Part::Text(text.to_string()))
    })
}

/// Appends an image part (copied), in order as `dg_vlm_params_add_text` (role NULL means
/// "user"). `pixels` holds `height` rows of `stride` bytes, each `width` pixels of `channels`
/// bytes (1 grey, 3 RGB or 4 RGBA, alpha ignored), as `dg_params_set_init_image` takes them; a
/// generated image's `dg_image_pixels` can be passed as is. At most 64 images per request.
///
/// # Safety
/// `p` is NULL or live params; `role` is NULL or a NUL-terminated string; `pixels` is NULL or
/// valid for reading `stride * (height - 1) + width * channels` bytes.
#[no_mangle]
pub unsafe extern "C" fn dg_vlm_params_add_image(
    p: *mut dg_vlm_params_t,
    role: *const c_char,
    pixels: *const u8,
    width: u32,
    height: u32,
    channels: u32,
    stride: usize,
) -> *mut dg_error_t {
    boundary(|| {
        let p = arg_mut(p, "p")?;
        let role = opt_str(role, "role")?;
        if pixels.is_null() {
            return Err(super::null_arg("pixels"));
        }
        let image = raw_image(pixels, width, height, channels, stride)?;
        p.push(role, Part::Image(image))
    })
}

/// Appends an image part decoded from the `len` bytes at `data`: a PNG, JPEG or WebP file's
/// contents (what an upload or a file holds), as RGB with alpha dropped. Anything else, or a side
/// over 16384 pixels, is `DG_ERROR_INVALID_ARG`. Role as `dg_vlm_params_add_text`.
///
/// # Safety
/// `p` is NULL or live params; `role` is NULL or a NUL-terminated string; `data` is NULL or valid
/// for reading `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn dg_vlm_params_add_image_encoded(
    p: *mut dg_vlm_params_t,
    role: *const c_char,
    data: *const u8,
    len: usize,
) -> *mut dg_error_t {
    boundary(|| {
        let p = arg_mut(p, "p")?;
        let role = opt_str(role, "role")?;
        if data.is_null() {
            return Err(super::null_arg("data"));
        }
        if len > isize::MAX as usize {
            return Err(Error::InvalidArg(format!("image length {len} is absurd")).into());
        }
        // SAFETY: the caller promises `len` readable bytes at `data`; the length fits a slice.
        let bytes = std::slice::from_raw_parts(data, len);
        p.push(role, Part::Image(Image::decode(bytes)?))
    })
}

/// Appends an image part read from the PNG, JPEG or WebP file at `path` (UTF-8). A file that
/// cannot be read is `DG_ERROR_IO`; one that is no such image `DG_ERROR_INVALID_ARG`. Role as
/// `dg_vlm_params_add_text`.
///
/// # Safety
/// `p` is NULL or live params; `role` and `path` are NULL or NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn dg_vlm_params_add_image_file(
    p: *mut dg_vlm_params_t,
    role: *const c_char,
    path: *const c_char,
) -> *mut dg_error_t {
    boundary(|| {
        let p = arg_mut(p, "p")?;
        let role = opt_str(role, "role")?;
        let path = Path::new(arg_str(path, "path")?);
        let bytes = std::fs::read(path).map_err(|e| Error::io("cannot read", path, e))?;
        let image = Image::decode(&bytes)
            .map_err(|e| Error::InvalidArg(format!("{}: {}", path.display(), bare(&e))))?;
        p.push(role, Part::Image(image))
    })
}

/// An error's message without the "invalid argument: " its display starts with.
fn bare(err: &Error) -> String {
    match err {
        Error::InvalidArg(message) => message.clone(),
        other => other.to_string(),
    }
}

/// Copies a caller's pixel buffer, checking its size before any slice is made.
unsafe fn raw_image(
    pixels: *const u8,
    width: u32,
    height: u32,
    channels: u32,
    stride: usize,
) -> FfiResult<Image> {
    // An absurd size must never become a slice length.
    crate::image::check_dimensions(width, height)?;
    let rows = (height as usize).saturating_sub(1);
    let len = stride
        .checked_mul(rows)
        .and_then(|n| n.checked_add((width as usize).checked_mul(channels as usize)?))
        .filter(|&n| n <= isize::MAX as usize)
        .ok_or_else(|| Error::InvalidArg("image buffer size overflows".into()))?;
    // SAFETY: the caller promises `pixels` holds `height` rows of `stride` bytes.
    let data = std::slice::from_raw_parts(pixels, len);
    Ok(Image::from_raw(data, width, height, channels, stride)?)
}

/// Sets a generation setting by string key and value, e.g.
/// `dg_vlm_params_set(p, "max_new_tokens", "64")`.
///
/// Keys: "max_new_tokens" (1..=32768; default 128, 256 for enhancement), "temperature" (0..=100;
/// 0, the default, is greedy decoding), "top_k" (0 = off), "top_p" (in (0, 1]; 1 = off),
/// "repetition_penalty" (in (0, 100]; 1 = off), "seed" (u64; the draw of sampled decoding),
/// "system" (a system message put first, replacing any other) and "stop" (adds a stop string:
/// generation ends when the text contains it, and the text stops before it; at most 16; ""
/// removes them all). An unknown key is `DG_ERROR_INVALID_ARG` listing the keys; an unparsable or
/// out-of-range value is `DG_ERROR_INVALID_ARG` naming key and value, and changes nothing.
///
/// # Safety
/// `p` is NULL or live params; `key` and `value` are NULL or NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn dg_vlm_params_set(
    p: *mut dg_vlm_params_t,
    key: *const c_char,
    value: *const c_char,
) -> *mut dg_error_t {
    boundary(|| {
        let p = arg_mut(p, "p")?;
        let key = arg_str(key, "key")?;
        let value = arg_str(value, "value")?;
        p.set(key, value)
    })
}

/// Runs one request: `params` is copied at the start, so the caller may reuse it afterwards.
/// `on_token` (nullable) is called with every new token and `user_data`; returning false cancels.
/// `cancel` (nullable) may be raised from any thread: the request stops before its next token.
/// A cancelled request returns `DG_ERROR_CANCELLED`. A request the model cannot take (no message,
/// an image smaller than one patch, a prompt longer than the context, two images for a captioner)
/// is `DG_ERROR_INVALID_ARG`. The answer goes to `*out`; free it with `dg_vlm_result_free`.
/// Thread-safe: many threads may generate on one model at once.
///
/// # Safety
/// `vlm`, `params` and `cancel` are NULL or live handles; `on_token` is NULL or a function that
/// can be called with `user_data` from this thread; `out` is NULL or valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn dg_vlm_generate(
    vlm: *const dg_vlm_t,
    params: *const dg_vlm_params_t,
    on_token: dg_vlm_token_fn,
    user_data: *mut c_void,
    cancel: *const dg_cancel_token_t,
    out: *mut *mut dg_vlm_result_t,
) -> *mut dg_error_t {
    boundary(|| {
        let vlm = arg_ref(vlm, "vlm")?;
        let mut request = arg_ref(params, "params")?.to_request()?;
        let out = out_param(out, "out")?;
        request.cancel = cancel.as_ref().map(|c| c.token.clone());
        // The token's text with a NUL after it, reused for every call. The closure borrows
        // nothing that outlives this call, so the callback cannot run later.
        let mut text = Vec::new();
        let mut stream = |event: TokenEvent<'_>| match on_token {
            Some(callback) => {
                text.clear();
                text.extend_from_slice(event.text.as_bytes());
                text.push(0);
                let token = dg_vlm_token_t {
                    struct_size: size_of::<dg_vlm_token_t>() as u32,
                    index: u32::try_from(event.index).unwrap_or(u32::MAX),
                    token_id: event.token_id,
                    text: text.as_ptr().cast(),
                    text_len: event.text.len(),
                };
                callback(&token, user_data)
            }
            None => true,
        };
        let output = vlm.inner.generate_streaming(&request, &mut stream)?;
        write_out(out, dg_vlm_result_t::new(output))
    })
}

impl dg_vlm_result_t {
    fn new(output: VlmOutput) -> dg_vlm_result_t {
        let t = &output.timings;
        let timings = json!({
            "preprocess_s": t.preprocess.as_secs_f64(),
            "vision_s": t.vision.as_secs_f64(),
            "first_token_s": t.first_token.as_secs_f64(),
            "decode_s": t.decode.as_secs_f64(),
            "total_s": t.total.as_secs_f64(),
            "tokens_per_second": t.tokens_per_second(output.token_ids.len()),
        });
        let mut text = output.text.into_bytes();
        text.push(0);
        dg_vlm_result_t {
            text,
            token_ids: output.token_ids,
            prompt_tokens: output.prompt_tokens,
            finish_reason: output.finish_reason,
            // JSON text escapes NUL, so this cannot fail.
            timings: CString::new(timings.to_string()).unwrap_or_default(),
            enhanced_prompt: OnceLock::new(),
        }
    }
}

/// The answer's text (UTF-8, NUL-terminated, owned by `result`): special tokens skipped, cut
/// before a stop string. Its length in bytes goes to `*len` when `len` is not NULL (the text may
/// contain NUL bytes, which a model can generate). "" (and 0) when `result` is NULL.
///
/// # Safety
/// `result` is NULL or a live result; `len` is NULL or valid for writing a `size_t`.
#[no_mangle]
pub unsafe extern "C" fn dg_vlm_result_text(
    result: *const dg_vlm_result_t,
    len: *mut usize,
) -> *const c_char {
    guard(c"".as_ptr(), || {
        let (text, n) = result.as_ref().map_or((c"".as_ptr(), 0), |r| {
            (r.text.as_ptr().cast(), r.text.len() - 1)
        });
        if !len.is_null() {
            len.write(n);
        }
        text
    })
}

/// The new token ids (an end-of-sequence token that ended generation included), owned by
/// `result`; their count goes to `*len` when `len` is not NULL. NULL (and 0) when `result` is
/// NULL.
///
/// # Safety
/// `result` is NULL or a live result; `len` is NULL or valid for writing a `size_t`.
#[no_mangle]
pub unsafe extern "C" fn dg_vlm_result_token_ids(
    result: *const dg_vlm_result_t,
    len: *mut usize,
) -> *const i64 {
    guard(ptr::null(), || {
        let (ids, n) = result.as_ref().map_or((ptr::null(), 0), |r| {
            (r.token_ids.as_ptr(), r.token_ids.len())
        });
        if !len.is_null() {
            len.write(n);
        }
        ids
    })
}

/// Tokens in the prompt, image tokens included; 0 when `result` is NULL.
///
/// # Safety
/// `result` is NULL or a live result.
#[no_mangle]
pub unsafe extern "C" fn dg_vlm_result_prompt_tokens(result: *const dg_vlm_result_t) -> usize {
    guard(0, || result.as_ref().map_or(0, |r| r.prompt_tokens))
}

/// Why generation ended, a static string: "stop" (an end-of-sequence token or a stop string) or
/// "length" (max_new_tokens or the model's context); "" when `result` is NULL.
///
/// # Safety
/// `result` is NULL or a live result.
#[no_mangle]
pub unsafe extern "C" fn dg_vlm_result_finish_reason(
    result: *const dg_vlm_result_t,
) -> *const c_char {
    guard(c"".as_ptr(), || {
        match result.as_ref().map(|r| r.finish_reason) {
            Some(FinishReason::Stop) => c"stop".as_ptr(),
            Some(FinishReason::Length) => c"length".as_ptr(),
            None => c"".as_ptr(),
        }
    })
}

/// Where the time went, as a JSON object (UTF-8, NUL-terminated, owned by `result`) of seconds:
/// "preprocess_s" (chat template, tokenizer, image preprocessing), "vision_s" (vision encoder),
/// "first_token_s" (time to first token), "decode_s" (first token to last), "total_s", and
/// "tokens_per_second" (decoding speed after the first token; 0 for fewer than two tokens).
/// "" when `result` is NULL.
///
/// # Safety
/// `result` is NULL or a live result.
#[no_mangle]
pub unsafe extern "C" fn dg_vlm_result_timings(result: *const dg_vlm_result_t) -> *const c_char {
    guard(c"".as_ptr(), || {
        result.as_ref().map_or(c"".as_ptr(), |r| r.timings.as_ptr())
    })
}

/// The answer read as a prompt for a generator (what prompt enhancement wants): surrounding
/// whitespace, a code fence, a "Prompt:"-style label and wrapping quotes removed (UTF-8,
/// NUL-terminated, owned by `result`). "" when nothing is left or `result` is NULL.
///
/// # Safety
/// `result` is NULL or a live result.
#[no_mangle]
pub unsafe extern "C" fn dg_vlm_result_enhanced_prompt(
    result: *const dg_vlm_result_t,
) -> *const c_char {
    guard(c"".as_ptr(), || {
        result.as_ref().map_or(c"".as_ptr(), |r| {
            r.enhanced_prompt
                .get_or_init(|| {
                    let text = std::str::from_utf8(&r.text[..r.text.len() - 1]).unwrap_or("");
                    // A prompt for a generator is a C string: NULs (never useful there) become
                    // spaces.
                    let prompt = enhance::clean_reply(text).unwrap_or_default();
                    CString::new(prompt.replace('\0', " ")).unwrap_or_default()
                })
                .as_ptr()
        })
    })
}

/// Frees a result. NULL is a no-op.
///
/// # Safety
/// `result` is NULL or came from `dg_vlm_generate` and is freed at most once.
#[no_mangle]
pub unsafe extern "C" fn dg_vlm_result_free(result: *mut dg_vlm_result_t) {
    super::free_handle(result)
}
