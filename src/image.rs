//! RGB8 images: conversion from decoded VAE output and PNG files with generation metadata.
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use ndarray::ArrayView3;

use crate::error::{Error, Result};

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

    /// Encodes as PNG with `tEXt` chunks (key, value), e.g. ("parameters", ...).
    pub fn encode_png(&self, text: &[(&str, &str)]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let png_err = |e: png::EncodingError| Error::InvalidArg(format!("PNG encoding: {e}"));
        {
            let mut encoder = png::Encoder::new(&mut out, self.width, self.height);
            encoder.set_color(png::ColorType::Rgb);
            encoder.set_depth(png::BitDepth::Eight);
            for (key, value) in text {
                encoder
                    .add_text_chunk((*key).to_string(), latin1_lossy(value))
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

    /// Reads a PNG of any colour type as RGB8: palettes and low bit depths are expanded, 16-bit
    /// samples stripped to 8, grey replicated to RGB and alpha dropped.
    pub fn load_png(path: &Path) -> Result<Image> {
        let file = std::fs::File::open(path).map_err(|e| Error::io("cannot open", path, e))?;
        let bad = |e: png::DecodingError| {
            Error::InvalidArg(format!("{}: not a readable PNG: {e}", path.display()))
        };
        let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
        decoder.set_transformations(png::Transformations::normalize_to_color8());
        let mut reader = decoder.read_info().map_err(bad)?;
        let size = reader
            .output_buffer_size()
            .ok_or_else(|| Error::InvalidArg(format!("{}: image too large", path.display())))?;
        let mut buf = vec![0; size];
        let info = reader.next_frame(&mut buf).map_err(bad)?;
        let channels = match (info.color_type, info.bit_depth) {
            (png::ColorType::Grayscale, png::BitDepth::Eight) => 1,
            (png::ColorType::GrayscaleAlpha, png::BitDepth::Eight) => 2,
            (png::ColorType::Rgb, png::BitDepth::Eight) => 3,
            (png::ColorType::Rgba, png::BitDepth::Eight) => 4,
            other => {
                return Err(Error::Unsupported(format!(
                    "{}: PNG format {other:?}",
                    path.display()
                )));
            }
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

    /// Writes a PNG atomically: parent directories are created, the bytes go to a temporary file
    /// in the same directory, and a rename publishes them, so no reader ever sees half a file.
    pub fn save_png(&self, path: &Path, text: &[(&str, &str)]) -> Result<()> {
        write_atomically(path, &self.encode_png(text)?)
    }
}

/// tEXt is Latin-1 only; characters outside it become '?' rather than failing the whole write.
fn latin1_lossy(s: &str) -> String {
    s.chars()
        .map(|c| if (c as u32) < 256 { c } else { '?' })
        .collect()
}

/// Creates parent directories, writes to a sibling temporary file, then renames it over `path`.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(parent).map_err(|e| Error::io("cannot create directory", parent, e))?;
    let file_name = path.file_name().ok_or_else(|| {
        Error::InvalidArg(format!("output path {} has no file name", path.display()))
    })?;
    // Unique per process and call, so concurrent writers of the same path never share a temp file.
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = parent.join(format!(
        ".{}.{}.{n}.tmp",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let result = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|_| f.sync_all()))
        .and_then(|_| std::fs::rename(&tmp, path));
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io("cannot write", path, e)
    })
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
