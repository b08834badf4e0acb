//! Images going out (encoded as the call asked, with the `parameters` text `dg generate` writes)
//! and coming in (uploads checked by their header before any pixel is allocated), and the
//! short-lived store behind `response_format: url`.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use diffgentor::Image;

use super::error::{ApiError, ApiResult};
use super::params::OutputFormat;

/// Encodes one generated image.
pub fn encode(image: &Image, format: OutputFormat, parameters: &str) -> ApiResult<Vec<u8>> {
    let encoded = match format {
        OutputFormat::Png => image.encode_png(&[("parameters", parameters)]),
        OutputFormat::Jpeg(quality) => image.encode_jpeg(quality),
        OutputFormat::WebP => {
            let mut out = Vec::new();
            image_webp::WebPEncoder::new(&mut out)
                .encode(
                    &image.pixels,
                    image.width,
                    image.height,
                    image_webp::ColorType::Rgb8,
                )
                .map(|()| out)
                .map_err(|e| diffgentor::Error::InvalidArg(format!("WebP encoding: {e}")))
        }
    };
    encoded.map_err(ApiError::from)
}

/// Decodes an uploaded image (PNG, JPEG or WebP), refusing one whose header claims more than
/// `max_side` pixels a side before its pixels are allocated.
pub fn decode_upload(bytes: &[u8], param: &str, max_side: u32) -> ApiResult<Image> {
    check_size(bytes, param, max_side)?;
    decode(bytes, param)
}

/// Decodes an upload whose size was checked.
fn decode(bytes: &[u8], param: &str) -> ApiResult<Image> {
    Image::decode(bytes).map_err(|e| ApiError::invalid(param, format!("`{param}`: {e}")))
}

/// Decodes an uploaded mask. OpenAI masks mark the area to repaint as transparent; a mask with an
/// alpha channel is read that way (alpha below half: repaint), one without as diffusers reads
/// masks (white: repaint).
pub fn decode_mask(bytes: &[u8], max_side: u32) -> ApiResult<Image> {
    check_size(bytes, "mask", max_side)?;
    let Some(alpha) = png_alpha(bytes) else {
        return decode(bytes, "mask");
    };
    let (width, height, alpha) = alpha.map_err(|e| ApiError::invalid("mask", e))?;
    let pixels = alpha
        .iter()
        .flat_map(|&a| [if a < 128 { 255 } else { 0 }; 3])
        .collect();
    Ok(Image {
        width,
        height,
        pixels,
    })
}

/// Reads an upload's size from its header and refuses it when a side is over `max_side`.
fn check_size(bytes: &[u8], param: &str, max_side: u32) -> ApiResult<()> {
    let (width, height) = Image::dimensions(bytes)
        .map_err(|e| ApiError::invalid(param, format!("`{param}`: {e}")))?;
    if width > max_side || height > max_side {
        return Err(ApiError::invalid(
            param,
            format!(
                "`{param}` is {width}x{height}; this server takes images up to {max_side} a side"
            ),
        )
        .code("image_too_large"));
    }
    Ok(())
}

/// An image's width, height and alpha values.
type Alpha = (u32, u32, Vec<u8>);

/// A PNG's alpha channel, when it has one (grey+alpha or RGBA, 8-bit).
fn png_alpha(bytes: &[u8]) -> Option<Result<Alpha, String>> {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().ok()?;
    let info = reader.info();
    let channels = match (info.color_type, info.bit_depth) {
        (png::ColorType::Rgba, png::BitDepth::Eight) => 4,
        (png::ColorType::GrayscaleAlpha, png::BitDepth::Eight) => 2,
        _ => return None,
    };
    let (width, height) = (info.width, info.height);
    let mut buffer = vec![0; reader.output_buffer_size()?];
    let frame = match reader.next_frame(&mut buffer) {
        Ok(frame) => frame,
        Err(e) => return Some(Err(format!("`mask`: not a readable PNG: {e}"))),
    };
    let alpha = buffer[..frame.buffer_size()]
        .chunks_exact(channels)
        .map(|px| px[channels - 1])
        .collect();
    Some(Ok((width, height, alpha)))
}

/// Most bytes of images kept for URLs: past it the oldest go first, whatever their expiry.
const MAX_STORED_BYTES: usize = 512 << 20;

/// Encoded images served under random paths for `response_format: url`, each for a while.
pub struct FileStore {
    files: Mutex<HashMap<String, Stored>>,
    ttl: Duration,
}

struct Stored {
    bytes: Bytes,
    mime: &'static str,
    expires: Instant,
}

impl FileStore {
    pub fn new(ttl: Duration) -> FileStore {
        FileStore {
            files: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    /// Keeps `bytes` and returns the unguessable name they are served under.
    pub fn put(&self, bytes: Vec<u8>, format: OutputFormat) -> ApiResult<String> {
        let name = format!("{}.{}", random_id(16)?, format.name());
        let now = Instant::now();
        let stored = Stored {
            bytes: bytes.into(),
            mime: format.mime(),
            // --job-ttl is bounded (30 days), so this cannot overflow.
            expires: now + self.ttl,
        };
        let mut files = self.lock();
        files.insert(name.clone(), stored);
        let mut total: usize = files.values().map(|s| s.bytes.len()).sum();
        while total > MAX_STORED_BYTES {
            let Some(oldest) = files
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(name, _)| name.clone())
            else {
                break;
            };
            if let Some(gone) = files.remove(&oldest) {
                total -= gone.bytes.len();
            }
        }
        Ok(name)
    }

    pub fn get(&self, name: &str) -> Option<(Bytes, &'static str)> {
        let files = self.lock();
        let stored = files.get(name).filter(|s| s.expires > Instant::now())?;
        Some((stored.bytes.clone(), stored.mime))
    }

    /// Forgets expired files.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.lock().retain(|_, s| s.expires > now);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Stored>> {
        super::queue::lock(&self.files)
    }
}

/// `bytes` random bytes from the OS as hex: job ids, file names, request ids.
pub fn random_id(bytes: usize) -> ApiResult<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("no randomness from the OS: {e}"),
        )
    })?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}
