//! RGB8 images: conversion from decoded VAE output and PNG files with generation metadata.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ndarray::ArrayView3;

use crate::error::{Error, Result};

/// The largest width or height of an image the library decodes, accepts or generates. Checked
/// against a PNG's header before any pixel memory is allocated, so a tiny file that claims a huge
/// size is refused instead of exhausting memory.
pub const MAX_IMAGE_SIDE: u32 = 16384;

/// The most bytes of one PNG text chunk's value (metadata such as `parameters`); longer values are
/// cut at a character boundary, so a huge prompt cannot bloat every image written.
pub const MAX_PNG_TEXT_BYTES: usize = 8192;

/// An 8-bit RGB image, rows top to bottom, no padding (stride = 3 * width).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

impl Image {
    /// Converts one VAE output [3, H, W] in [-1, 1] as diffusers' VaeImageProcessor does:
    /// (x / 2 + 0.5) clamped to [0, 1], times 255, rounded half to even.
    pub fn from_vae_output(chw: ArrayView3<'_, f32>) -> Image {
        let (_, height, width) = chw.dim();
        let mut pixels = Vec::with_capacity(width * height * 3);
        for y in 0..height {
            for x in 0..width {
                for c in 0..3 {
                    let v = (chw[[c, y, x]] / 2.0 + 0.5).clamp(0.0, 1.0);
                    pixels.push((v * 255.0).round_ties_even() as u8);
                }
            }
        }
        Image {
            width: width as u32,
            height: height as u32,
            pixels,
        }
    }

    /// Copies an 8-bit image from a caller's buffer: `height` rows of `stride` bytes, each row
    /// `width` pixels of `channels` bytes (1 grey, 3 RGB, 4 RGBA; alpha is dropped).
    pub fn from_raw(
        data: &[u8],
        width: u32,
        height: u32,
        channels: u32,
        stride: usize,
    ) -> Result<Image> {
        if !matches!(channels, 1 | 3 | 4) {
            return Err(Error::InvalidArg(format!(
                "channels must be 1, 3 or 4, got {channels}"
            )));
        }
        check_dimensions(width, height)?;
        let (w, h, c) = (width as usize, height as usize, channels as usize);
        let row = w.checked_mul(c).filter(|_| w > 0 && h > 0);
        let needed = row.and_then(|r| stride.checked_mul(h - 1)?.checked_add(r));
        match (row, needed) {
            (Some(row), Some(needed)) if stride >= row && data.len() >= needed => {
                let mut pixels = Vec::with_capacity(w * h * 3);
                for y in 0..h {
                    for p in data[y * stride..y * stride + row].chunks_exact(c) {
                        pixels.extend_from_slice(&if c == 1 {
                            [p[0]; 3]
                        } else {
                            [p[0], p[1], p[2]]
                        });
                    }
                }
                Ok(Image {
                    width,
                    height,
                    pixels,
                })
            }
            _ => Err(Error::InvalidArg(format!(
                "a {width}x{height} image of {channels} channels does not fit a buffer of {} bytes \
                 with stride {stride}",
                data.len()
            ))),
        }
    }

    /// Encodes as PNG with text chunks (key, value), e.g. ("parameters", ...): `tEXt` when the
    /// value is Latin-1, else UTF-8 `iTXt` (as PIL, and so AUTOMATIC1111, writes them); values are
    /// cut to [`MAX_PNG_TEXT_BYTES`].
    pub fn encode_png(&self, text: &[(&str, &str)]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let png_err = |e: png::EncodingError| Error::InvalidArg(format!("PNG encoding: {e}"));
        {
            let mut encoder = png::Encoder::new(&mut out, self.width, self.height);
            encoder.set_color(png::ColorType::Rgb);
            encoder.set_depth(png::BitDepth::Eight);
            for (key, value) in text {
                let value = truncate_utf8(value, MAX_PNG_TEXT_BYTES).to_string();
                if value.chars().all(|c| (c as u32) < 256) {
                    encoder.add_text_chunk((*key).to_string(), value)
                } else {
                    encoder.add_itxt_chunk((*key).to_string(), value)
                }
                .map_err(png_err)?;
            }
            let mut writer = encoder.write_header().map_err(png_err)?;
            writer.write_image_data(&self.pixels).map_err(png_err)?;
            writer.finish().map_err(png_err)?;
        }
        Ok(out)
    }

    /// Encodes as baseline JPEG at `quality` 1..=100 (higher is better and larger).
    pub fn encode_jpeg(&self, quality: u8) -> Result<Vec<u8>> {
        if !(1..=100).contains(&quality) {
            return Err(Error::InvalidArg(format!(
                "JPEG quality must be between 1 and 100, got {quality}"
            )));
        }
        let dim = |name: &str, v: u32| {
            u16::try_from(v).map_err(|_| {
                Error::InvalidArg(format!("JPEG {name} {v} is larger than {}", u16::MAX))
            })
        };
        let (width, height) = (dim("width", self.width)?, dim("height", self.height)?);
        let mut out = Vec::new();
        jpeg_encoder::Encoder::new(&mut out, quality)
            .encode(&self.pixels, width, height, jpeg_encoder::ColorType::Rgb)
            .map_err(|e| Error::InvalidArg(format!("JPEG encoding: {e}")))?;
        Ok(out)
    }

    /// Writes a JPEG atomically, like [`Image::save_png`].
    pub fn save_jpeg(&self, path: &Path, quality: u8) -> Result<()> {
        write_atomically(path, &self.encode_jpeg(quality)?)
    }

    /// Reads a PNG file; see [`Image::decode_png`].
    pub fn load_png(path: &Path) -> Result<Image> {
        let file = std::fs::File::open(path).map_err(|e| Error::io("cannot open", path, e))?;
        Image::decode_png(std::io::BufReader::new(file))
            .map_err(|e| Error::InvalidArg(format!("{}: {}", path.display(), bare(e))))
    }

    /// Decodes a PNG of any colour type as RGB8: palettes and low bit depths are expanded, 16-bit
    /// samples stripped to 8, grey replicated to RGB and alpha dropped. Images wider or taller than
    /// [`MAX_IMAGE_SIDE`] are refused from the header alone.
    pub fn decode_png(reader: impl std::io::BufRead + std::io::Seek) -> Result<Image> {
        let bad = |e: png::DecodingError| Error::InvalidArg(format!("not a readable PNG: {e}"));
        let mut decoder = png::Decoder::new(reader);
        decoder.set_transformations(png::Transformations::normalize_to_color8());
        let mut reader = decoder.read_info().map_err(bad)?;
        let header = reader.info();
        check_dimensions(header.width, header.height)?;
        let size = reader
            .output_buffer_size()
            .ok_or_else(|| Error::InvalidArg("image too large".into()))?;
        let mut buf = vec![0; size];
        let info = reader.next_frame(&mut buf).map_err(bad)?;
        let channels = match (info.color_type, info.bit_depth) {
            (png::ColorType::Grayscale, png::BitDepth::Eight) => 1,
            (png::ColorType::GrayscaleAlpha, png::BitDepth::Eight) => 2,
            (png::ColorType::Rgb, png::BitDepth::Eight) => 3,
            (png::ColorType::Rgba, png::BitDepth::Eight) => 4,
            other => return Err(Error::Unsupported(format!("PNG format {other:?}"))),
        };
        let pixels = buf[..info.buffer_size()]
            .chunks_exact(channels)
            .flat_map(|p| match channels {
                1 | 2 => [p[0]; 3],
                _ => [p[0], p[1], p[2]],
            })
            .collect();
        Ok(Image {
            width: info.width,
            height: info.height,
            pixels,
        })
    }

    /// Decodes a PNG, JPEG or WebP (what image services return) by its signature, as RGB8 with
    /// alpha dropped, refusing sides over [`MAX_IMAGE_SIDE`] before allocating pixels.
    pub fn decode(bytes: &[u8]) -> Result<Image> {
        match Format::of(bytes)? {
            Format::Png => Image::decode_png(std::io::Cursor::new(bytes)),
            Format::Jpeg => decode_jpeg(bytes),
            Format::WebP => decode_webp(bytes),
        }
    }

    /// The width and height of a PNG, JPEG or WebP read from its header alone, without
    /// allocating or decoding pixels: what a caller checks before letting [`Image::decode`] spend
    /// the memory. Errors as [`Image::decode`] does for what is not such an image, and refuses
    /// sides over [`MAX_IMAGE_SIDE`].
    pub fn dimensions(bytes: &[u8]) -> Result<(u32, u32)> {
        let (width, height) = match Format::of(bytes)? {
            Format::Png => {
                let reader = png::Decoder::new(std::io::Cursor::new(bytes))
                    .read_info()
                    .map_err(|e| Error::InvalidArg(format!("not a readable PNG: {e}")))?;
                let header = reader.info();
                (header.width, header.height)
            }
            Format::Jpeg => {
                let mut decoder = jpeg_decoder(bytes);
                decoder.decode_headers().map_err(bad_jpeg)?;
                let info = decoder
                    .info()
                    .ok_or_else(|| Error::InvalidArg("not a readable JPEG: no header".into()))?;
                (u32::from(info.width), u32::from(info.height))
            }
            Format::WebP => image_webp::WebPDecoder::new(std::io::Cursor::new(bytes))
                .map_err(bad_webp)?
                .dimensions(),
        };
        check_dimensions(width, height)?;
        Ok((width, height))
    }

    /// Writes a PNG atomically: parent directories are created, the bytes go to a temporary file
    /// in the same directory, and a rename publishes them, so no reader ever sees half a file.
    pub fn save_png(&self, path: &Path, text: &[(&str, &str)]) -> Result<()> {
        write_atomically(path, &self.encode_png(text)?)
    }
}

/// The message of an `InvalidArg`, to be prefixed with where it came from.
fn bare(err: Error) -> String {
    match err {
        Error::InvalidArg(message) => message,
        other => other.to_string(),
    }
}

/// The image formats services return, told apart by their signatures.
enum Format {
    Png,
    Jpeg,
    WebP,
}

impl Format {
    fn of(bytes: &[u8]) -> Result<Format> {
        if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            Ok(Format::Png)
        } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Ok(Format::Jpeg)
        } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
            Ok(Format::WebP)
        } else {
            Err(Error::InvalidArg(format!(
                "not a PNG, JPEG or WebP image ({} bytes starting {:02x?})",
                bytes.len(),
                &bytes[..bytes.len().min(8)]
            )))
        }
    }
}

/// A JPEG decoder to RGB that refuses sides over [`MAX_IMAGE_SIDE`].
fn jpeg_decoder(bytes: &[u8]) -> zune_jpeg::JpegDecoder<std::io::Cursor<&[u8]>> {
    use zune_jpeg::zune_core::colorspace::ColorSpace;
    use zune_jpeg::zune_core::options::DecoderOptions;
    let side = MAX_IMAGE_SIDE as usize;
    let options = DecoderOptions::default()
        .set_max_width(side)
        .set_max_height(side)
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    zune_jpeg::JpegDecoder::new_with_options(std::io::Cursor::new(bytes), options)
}

fn bad_jpeg(e: zune_jpeg::errors::DecodeErrors) -> Error {
    Error::InvalidArg(format!("not a readable JPEG: {e}"))
}

fn bad_webp(e: image_webp::DecodingError) -> Error {
    Error::InvalidArg(format!("not a readable WebP: {e}"))
}

fn decode_jpeg(bytes: &[u8]) -> Result<Image> {
    let mut decoder = jpeg_decoder(bytes);
    decoder.decode_headers().map_err(bad_jpeg)?;
    let info = decoder
        .info()
        .ok_or_else(|| Error::InvalidArg("not a readable JPEG: no header".into()))?;
    let pixels = decoder.decode().map_err(bad_jpeg)?;
    let (width, height) = (u32::from(info.width), u32::from(info.height));
    if pixels.len() != width as usize * height as usize * 3 {
        return Err(Error::InvalidArg(format!(
            "JPEG decoded to {} bytes, not {width}x{height} RGB",
            pixels.len()
        )));
    }
    Ok(Image {
        width,
        height,
        pixels,
    })
}

fn decode_webp(bytes: &[u8]) -> Result<Image> {
    let mut decoder =
        image_webp::WebPDecoder::new(std::io::Cursor::new(bytes)).map_err(bad_webp)?;
    let (width, height) = decoder.dimensions();
    check_dimensions(width, height)?;
    let size = decoder
        .output_buffer_size()
        .ok_or_else(|| Error::InvalidArg("WebP too large".into()))?;
    let mut buf = vec![0; size];
    decoder.read_image(&mut buf).map_err(bad_webp)?;
    let channels = if decoder.has_alpha() { 4 } else { 3 };
    let pixels = buf
        .chunks_exact(channels)
        .flat_map(|p| [p[0], p[1], p[2]])
        .collect();
    Ok(Image {
        width,
        height,
        pixels,
    })
}

/// Refuses a width or height of 0 or above [`MAX_IMAGE_SIDE`], naming the limit.
pub(crate) fn check_dimensions(width: u32, height: u32) -> Result<()> {
    check_side("width", width)?;
    check_side("height", height)
}

/// Refuses an image side of 0 or above [`MAX_IMAGE_SIDE`], naming the limit.
fn check_side(name: &str, side: u32) -> Result<()> {
    if side == 0 || side > MAX_IMAGE_SIDE {
        return Err(Error::InvalidArg(format!(
            "image {name} {side} is outside 1..={MAX_IMAGE_SIDE}, the largest image side diffgentor accepts"
        )));
    }
    Ok(())
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub(crate) fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let end = (0..=max)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0);
    &s[..end]
}

/// Most bytes of the output's name kept in its temporary file's name.
const TEMP_NAME_BYTES: usize = 100;

/// How the temporary files of [`write_atomically`] for an output named `file_name` begin: `.NAME.`,
/// NAME cut to 100 bytes; `PID.N.tmp` follows. Callers that clean up after a killed writer match
/// on it.
pub fn temp_name_prefix(file_name: &std::ffi::OsStr) -> String {
    format!(
        ".{}.",
        truncate_utf8(&file_name.to_string_lossy(), TEMP_NAME_BYTES)
    )
}

/// Creates parent directories, writes to a sibling temporary file, then renames it over `path`.
/// Only a regular file (or nothing) is ever replaced: a directory, FIFO, socket or device at
/// `path` is refused. A symlink is followed, and the file it points to is replaced atomically, so
/// the link stays a link (as `cp` and editors that save in place treat it).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let target = resolve_output(path)?;
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(parent).map_err(|e| Error::io("cannot create directory", parent, e))?;
    let file_name = target.file_name().ok_or_else(|| {
        Error::InvalidArg(format!("output path {} has no file name", path.display()))
    })?;
    // Unique per process and call, so concurrent writers of the same path never share a temp file.
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // The name is cut so the temporary name stays within NAME_MAX (255 bytes) for any valid
    // output name: the dot, pid, counter and suffix add at most 47 bytes.
    let tmp = parent.join(format!(
        "{}{}.{n}.tmp",
        temp_name_prefix(file_name),
        std::process::id()
    ));
    let result = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|_| f.sync_all()))
        .and_then(|_| std::fs::rename(&tmp, &target));
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io("cannot write", path, e)
    })?;
    // The rename is durable once the directory is synced too (a power cut could otherwise lose
    // it). Some filesystems refuse to sync a directory; the file itself is already synced then.
    let _ = std::fs::File::open(parent).and_then(|dir| dir.sync_all());
    Ok(())
}

/// The path an output is renamed onto: `path` itself, or for a symlink the file it finally points
/// to (which may not exist yet). Anything there that is not a regular file is an error.
fn resolve_output(path: &Path) -> Result<PathBuf> {
    let mut target = path.to_path_buf();
    // A bounded walk, like the kernel's own limit on nested links, so a link loop is an error.
    for _ in 0..40 {
        let meta = match std::fs::symlink_metadata(&target) {
            Ok(meta) => meta,
            // Nothing there (or a parent that is no directory, which creating it will report).
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok(target)
            }
            Err(e) => return Err(Error::io("cannot inspect", path, e)),
        };
        let kind = meta.file_type();
        if kind.is_file() {
            return Ok(target);
        }
        if !kind.is_symlink() {
            return Err(Error::InvalidArg(format!(
                "output path {} is {}, not a regular file: refusing to replace it",
                path.display(),
                describe_file_type(kind)
            )));
        }
        let link =
            std::fs::read_link(&target).map_err(|e| Error::io("cannot read link", path, e))?;
        target = match target.parent() {
            Some(dir) if link.is_relative() => dir.join(link),
            _ => link,
        };
    }
    Err(Error::InvalidArg(format!(
        "output path {} is a symlink that resolves through too many links",
        path.display()
    )))
}

fn describe_file_type(kind: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else {
        "a special file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient() -> Image {
        let (width, height) = (16u32, 8u32);
        let pixels = (0..width * height * 3).map(|i| (i % 251) as u8).collect();
        Image {
            width,
            height,
            pixels,
        }
    }

    #[test]
    fn encodes_jpeg() {
        let jpeg = gradient().encode_jpeg(90).unwrap();
        assert_eq!(&jpeg[..3], &[0xFF, 0xD8, 0xFF]);
        assert_eq!(&jpeg[jpeg.len() - 2..], &[0xFF, 0xD9]);
    }

    #[test]
    fn rejects_jpeg_quality_out_of_range() {
        for quality in [0, 101, 255] {
            let err = gradient().encode_jpeg(quality).expect_err("quality");
            assert_eq!(err.code(), crate::ErrorCode::InvalidArg);
            assert!(err.to_string().contains(&quality.to_string()), "{err}");
        }
    }
}
