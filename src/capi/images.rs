//! Generated images, their pixels, PNG/JPEG files and encoded buffers.
use std::ffi::c_char;
use std::path::Path;
use std::ptr;

use std::ffi::CString;

use super::{arg_ref, arg_str, boundary, dg_error_t, guard, out_param, write_out};
use crate::{Image, Output};

/// The images of one request, owned by the library. Immutable, so safe to read from any thread.
/// Free with `dg_images_free`, which also invalidates every `dg_image_t` obtained from it.
pub struct dg_images_t {
    images: Vec<dg_image_t>,
    seed: u64,
    /// The output's metadata as JSON text.
    metadata: CString,
}

impl dg_images_t {
    pub(crate) fn new(output: Output) -> dg_images_t {
        let metadata = serde_json::Value::Object(output.metadata).to_string();
        dg_images_t {
            images: output
                .images
                .into_iter()
                .map(|image| dg_image_t { image })
                .collect(),
            seed: output.seed,
            // JSON text escapes NUL, so this cannot fail; "{}" is the empty metadata anyway.
            metadata: CString::new(metadata).unwrap_or_default(),
        }
    }
}

/// One RGB8 image (3 bytes per pixel, rows top to bottom), borrowed from its `dg_images_t`: valid
/// until that is freed, never freed on its own. Immutable, so safe to read from any thread.
pub struct dg_image_t {
    image: Image,
}

/// Encoded image bytes (PNG or JPEG), owned by the caller and freed with `dg_buffer_free`.
/// Immutable, so safe to read from any thread.
pub struct dg_buffer_t {
    bytes: Vec<u8>,
}

/// Number of images in `imgs`; 0 when `imgs` is NULL.
///
/// # Safety
/// `imgs` is NULL or live images.
#[no_mangle]
pub unsafe extern "C" fn dg_images_count(imgs: *const dg_images_t) -> usize {
    guard(0, || imgs.as_ref().map_or(0, |i| i.images.len()))
}

/// Image `i` of `imgs` (0-based), valid until `dg_images_free(imgs)`; NULL when `imgs` is NULL or
/// `i` is out of range.
///
/// # Safety
/// `imgs` is NULL or live images.
#[no_mangle]
pub unsafe extern "C" fn dg_images_get(imgs: *const dg_images_t, i: usize) -> *const dg_image_t {
    guard(ptr::null(), || {
        imgs.as_ref()
            .and_then(|imgs| imgs.images.get(i))
            .map_or(ptr::null(), ptr::from_ref)
    })
}

/// The seed the request used (the one set, or the one drawn when none was); 0 when `imgs` is NULL.
///
/// # Safety
/// `imgs` is NULL or live images.
#[no_mangle]
pub unsafe extern "C" fn dg_images_seed(imgs: *const dg_images_t) -> u64 {
    guard(0, || imgs.as_ref().map_or(0, |i| i.seed))
}

/// What the generator reported besides the images, as a JSON object (UTF-8, NUL-terminated, owned
/// by `imgs`): a remote service's "model" and "revised_prompts", the request fields it "ignored"
/// (best effort); "{}" for local pipelines. "" when `imgs` is NULL.
///
/// # Safety
/// `imgs` is NULL or live images.
#[no_mangle]
pub unsafe extern "C" fn dg_images_metadata(imgs: *const dg_images_t) -> *const c_char {
    guard(c"".as_ptr(), || {
        imgs.as_ref().map_or(c"".as_ptr(), |i| i.metadata.as_ptr())
    })
}

/// Frees images and every `dg_image_t` borrowed from them. NULL is a no-op.
///
/// # Safety
/// `imgs` is NULL or came from `dg_pipeline_generate` and is freed at most once.
#[no_mangle]
pub unsafe extern "C" fn dg_images_free(imgs: *mut dg_images_t) {
    super::free_handle(imgs)
}

/// Runs an infallible getter on an image; `fallback` when `img` is NULL.
unsafe fn get<T>(img: *const dg_image_t, fallback: T, read: impl FnOnce(&Image) -> T) -> T {
    match img.as_ref() {
        Some(img) => guard(fallback, || read(&img.image)),
        None => fallback,
    }
}

/// Width in pixels; 0 when `img` is NULL.
///
/// # Safety
/// `img` is NULL or an image from `dg_images_get` whose images are not freed.
#[no_mangle]
pub unsafe extern "C" fn dg_image_width(img: *const dg_image_t) -> u32 {
    get(img, 0, |i| i.width)
}

/// Height in pixels; 0 when `img` is NULL.
///
/// # Safety
/// As `dg_image_width`.
#[no_mangle]
pub unsafe extern "C" fn dg_image_height(img: *const dg_image_t) -> u32 {
    get(img, 0, |i| i.height)
}

/// Bytes per pixel: 3 (RGB8); 0 when `img` is NULL.
///
/// # Safety
/// As `dg_image_width`.
#[no_mangle]
pub unsafe extern "C" fn dg_image_channels(img: *const dg_image_t) -> u32 {
    get(img, 0, |_| 3)
}

/// Bytes per row (3 * width: rows are not padded); 0 when `img` is NULL.
///
/// # Safety
/// As `dg_image_width`.
#[no_mangle]
pub unsafe extern "C" fn dg_image_stride(img: *const dg_image_t) -> usize {
    get(img, 0, |i| 3 * i.width as usize)
}

/// The pixels: height rows of stride bytes, RGB order, top row first. Owned by the image (valid
/// until its `dg_images_t` is freed); NULL when `img` is NULL.
///
/// # Safety
/// As `dg_image_width`.
#[no_mangle]
pub unsafe extern "C" fn dg_image_pixels(img: *const dg_image_t) -> *const u8 {
    get(img, ptr::null(), |i| i.pixels.as_ptr())
}

/// Writes the image as a PNG file at `path` (UTF-8), atomically: parent directories are created
/// and readers never see a partial file.
///
/// # Safety
/// `img` is NULL or a live image; `path` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn dg_image_write_png(
    img: *const dg_image_t,
    path: *const c_char,
) -> *mut dg_error_t {
    boundary(|| {
        let img = arg_ref(img, "img")?;
        let path = arg_str(path, "path")?;
        Ok(img.image.save_png(Path::new(path), &[])?)
    })
}

/// Writes the image as a JPEG file at `path` (UTF-8), atomically like `dg_image_write_png`.
/// `quality` is 1..100 (anything else is `DG_ERROR_INVALID_ARG`).
///
/// # Safety
/// `img` is NULL or a live image; `path` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn dg_image_write_jpeg(
    img: *const dg_image_t,
    path: *const c_char,
    quality: u8,
) -> *mut dg_error_t {
    boundary(|| {
        let img = arg_ref(img, "img")?;
        let path = arg_str(path, "path")?;
        Ok(img.image.save_jpeg(Path::new(path), quality)?)
    })
}

/// Encodes the image as PNG into a new buffer in `*out`.
///
/// # Safety
/// `img` is NULL or a live image; `out` is NULL or valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn dg_image_encode_png(
    img: *const dg_image_t,
    out: *mut *mut dg_buffer_t,
) -> *mut dg_error_t {
    boundary(|| {
        let img = arg_ref(img, "img")?;
        let out = out_param(out, "out")?;
        let bytes = img.image.encode_png(&[])?;
        write_out(out, dg_buffer_t { bytes })
    })
}

/// Encodes the image as JPEG at `quality` 1..100 into a new buffer in `*out`.
///
/// # Safety
/// `img` is NULL or a live image; `out` is NULL or valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn dg_image_encode_jpeg(
    img: *const dg_image_t,
    quality: u8,
    out: *mut *mut dg_buffer_t,
) -> *mut dg_error_t {
    boundary(|| {
        let img = arg_ref(img, "img")?;
        let out = out_param(out, "out")?;
        let bytes = img.image.encode_jpeg(quality)?;
        write_out(out, dg_buffer_t { bytes })
    })
}

/// The buffer's bytes, owned by it (valid until `dg_buffer_free`); NULL when `buf` is NULL.
///
/// # Safety
/// `buf` is NULL or a live buffer.
#[no_mangle]
pub unsafe extern "C" fn dg_buffer_data(buf: *const dg_buffer_t) -> *const u8 {
    guard(ptr::null(), || {
        buf.as_ref().map_or(ptr::null(), |b| b.bytes.as_ptr())
    })
}

/// Length of the buffer in bytes; 0 when `buf` is NULL.
///
/// # Safety
/// `buf` is NULL or a live buffer.
#[no_mangle]
pub unsafe extern "C" fn dg_buffer_len(buf: *const dg_buffer_t) -> usize {
    guard(0, || buf.as_ref().map_or(0, |b| b.bytes.len()))
}

/// Frees a buffer. NULL is a no-op.
///
/// # Safety
/// `buf` is NULL or came from `dg_image_encode_png`/`dg_image_encode_jpeg`, freed at most once.
#[no_mangle]
pub unsafe extern "C" fn dg_buffer_free(buf: *mut dg_buffer_t) {
    super::free_handle(buf)
}
