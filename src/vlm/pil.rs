//! Pillow's `Image.resize` for 8-bit RGB images, bit-exact: the preprocessors of transformers resize
//! with PIL, so reproducing its convolution (not just "a bicubic filter") is what makes our
//! `pixel_values` equal to theirs.
//!
//! Pillow (`libImaging/Resample.c`) resamples in two separable passes, usually horizontal then
//! vertical (see `vertical_first` for the exception), skipping a pass whose axis keeps its size. Each output sample is a weighted sum over a window of
//! input samples; when downscaling, the filter is stretched by the scale factor (antialiasing). The
//! weights are computed in double precision, normalised to sum to one, then rounded to fixed point
//! with 22 fractional bits; sums are rounded and clipped to 0..=255 after each pass.
use crate::image::Image;

/// The resampling filters the VLM preprocessors use (PIL codes 2 and 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Triangle filter, support 1 (PIL `Image.BILINEAR`, code 2).
    Bilinear,
    /// Keys cubic convolution with a = -0.5, support 2 (PIL `Image.BICUBIC`, code 3).
    Bicubic,
}

impl Filter {
    /// The filter for a PIL resampling code, as preprocessor configs store it (`"resample": 3`).
    pub fn from_pil_code(code: i64) -> Option<Filter> {
        match code {
            2 => Some(Filter::Bilinear),
            3 => Some(Filter::Bicubic),
            _ => None,
        }
    }

    /// Half-width of the filter's kernel at scale 1.
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            Filter::Bilinear => bilinear(x),
            Filter::Bicubic => bicubic(x),
        }
    }
}

fn bilinear(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

fn bicubic(x: f64) -> f64 {
    // Written in Pillow's operation order so the doubles (and so the rounded weights) agree.
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Fixed-point fraction bits of the weights for 8-bit images (32 - 8 - 2 in Pillow: 8 bits for the
/// sample, 2 bits of headroom for sums of negative lobes and overshoot).
const PRECISION_BITS: u32 = 22;

/// The input window and fixed-point weights of every output sample along one axis.
struct Coefficients {
    /// First input index and length of each output sample's window.
    windows: Vec<(usize, usize)>,
    /// Weights, `kernel` per output sample (a window uses the first `len`).
    weights: Vec<i32>,
    /// Weights stored per output sample (the longest window).
    kernel: usize,
}

impl Coefficients {
    fn window(&self, out: usize) -> (usize, &[i32]) {
        let (first, len) = self.windows[out];
        (
            first,
            &self.weights[out * self.kernel..out * self.kernel + len],
        )
    }
}

/// Windows and weights for resampling `in_size` samples to `out_size` (Pillow's
/// `precompute_coeffs` with the whole image as the box, then `normalize_coeffs_8bpc`).
fn coefficients(in_size: usize, out_size: usize, filter: Filter) -> Coefficients {
    let scale = in_size as f64 / out_size as f64;
    // Stretch the kernel only when shrinking: that is the antialiasing.
    let filter_scale = scale.max(1.0);
    let support = filter.support() * filter_scale;
    let kernel = support.ceil() as usize * 2 + 1;
    let inverse = 1.0 / filter_scale;
    let mut windows = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * kernel];
    let mut window = vec![0.0f64; kernel];
    for out in 0..out_size {
        let center = (out as f64 + 0.5) * scale;
        // Pillow rounds with a cast (truncation toward zero) after adding 0.5, then clamps.
        let first = ((center - support + 0.5) as i64).max(0) as usize;
        let end = ((center + support + 0.5) as i64).min(in_size as i64).max(0) as usize;
        let len = end.saturating_sub(first).min(kernel);
        let mut total = 0.0;
        for (i, w) in window.iter_mut().enumerate().take(len) {
            *w = filter.weight(((first + i) as f64 - center + 0.5) * inverse);
            total += *w;
        }
        let row = &mut weights[out * kernel..out * kernel + len];
        for (fixed, &w) in row.iter_mut().zip(&window) {
            let w = if total != 0.0 { w / total } else { w };
            *fixed = to_fixed(w);
        }
        windows.push((first, len));
    }
    Coefficients {
        windows,
        weights,
        kernel,
    }
}

/// A normalised weight in fixed point, rounded half away from zero as Pillow's cast does.
fn to_fixed(w: f64) -> i32 {
    let scaled = w * f64::from(1u32 << PRECISION_BITS);
    if w < 0.0 {
        (scaled - 0.5) as i32
    } else {
        (scaled + 0.5) as i32
    }
}

/// Rounds a fixed-point sum (already offset by one half) to a byte, clipping as Pillow's table does.
fn clip8(sum: i64) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One weighted sum over `weights.len()` samples of one channel, `step` bytes apart.
fn convolve(samples: &[u8], start: usize, step: usize, weights: &[i32]) -> u8 {
    let mut sum: i64 = 1 << (PRECISION_BITS - 1);
    for (i, &w) in weights.iter().enumerate() {
        // Windows lie inside the image by construction; `get` keeps a bad index from panicking.
        let s = samples.get(start + i * step).copied().unwrap_or(0);
        sum += i64::from(s) * i64::from(w);
    }
    clip8(sum)
}

/// Resamples every row of `rows` (RGB, `in_width` wide) to `out_width` columns.
fn resample_rows(rows: &[u8], in_width: usize, out_width: usize, filter: Filter) -> Vec<u8> {
    let coeffs = coefficients(in_width, out_width, filter);
    let height = rows.len() / (3 * in_width).max(1);
    let mut out = Vec::with_capacity(height * out_width * 3);
    for row in rows.chunks_exact(3 * in_width) {
        for x in 0..out_width {
            let (first, weights) = coeffs.window(x);
            for c in 0..3 {
                out.push(convolve(row, first * 3 + c, 3, weights));
            }
        }
    }
    out
}

/// Resamples the columns of an RGB image `width` wide from `in_height` to `out_height` rows.
fn resample_columns(pixels: &[u8], width: usize, out_height: usize, filter: Filter) -> Vec<u8> {
    let stride = 3 * width;
    let in_height = pixels.len() / stride.max(1);
    let coeffs = coefficients(in_height, out_height, filter);
    let mut out = Vec::with_capacity(out_height * stride);
    for y in 0..out_height {
        let (first, weights) = coeffs.window(y);
        for i in 0..stride {
            out.push(convolve(pixels, first * stride + i, stride, weights));
        }
    }
    out
}

/// Pillow 13 (python-pillow/Pillow#9549) runs the vertical pass first when the height shrinks by
/// more than twice as many pixels as the width does (or the width grows); earlier releases always
/// went horizontal first. The order changes the result because each pass rounds to bytes.
fn vertical_first(in_w: usize, in_h: usize, out_w: usize, out_h: usize) -> bool {
    let width_loss = in_w as i64 - out_w as i64;
    let height_loss = in_h as i64 - out_h as i64;
    height_loss > 0 && 2 * width_loss < height_loss
}

/// Resizes an RGB8 image exactly as Pillow's `Image.resize((width, height), filter)` does (no box,
/// no `reducing_gap`). A zero target side gives an empty image.
pub fn resize(image: &Image, width: u32, height: u32, filter: Filter) -> Image {
    let (in_w, in_h) = (image.width as usize, image.height as usize);
    let (out_w, out_h) = (width as usize, height as usize);
    if out_w == 0 || out_h == 0 || in_w == 0 || in_h == 0 {
        return Image {
            width,
            height,
            pixels: vec![0; out_w * out_h * 3],
        };
    }
    let pixels = match (out_w != in_w, out_h != in_h) {
        (false, false) => image.pixels.clone(),
        (true, false) => resample_rows(&image.pixels, in_w, out_w, filter),
        (false, true) => resample_columns(&image.pixels, in_w, out_h, filter),
        (true, true) if vertical_first(in_w, in_h, out_w, out_h) => {
            let columns = resample_columns(&image.pixels, in_w, out_h, filter);
            resample_rows(&columns, in_w, out_w, filter)
        }
        (true, true) => {
            let rows = resample_rows(&image.pixels, in_w, out_w, filter);
            resample_columns(&rows, out_w, out_h, filter)
        }
    };
    Image {
        width,
        height,
        pixels,
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn golden(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("models/vlm-processor-goldens")
            .join(name)
    }

    fn load(name: &str) -> Image {
        Image::load_png(&golden(name)).unwrap()
    }

    /// Every case of resize.json (up, down, one axis, mixed, 1x1; both filters) byte for byte.
    #[test]
    fn resize_matches_pillow_exactly() {
        let text = std::fs::read_to_string(golden("resize.json")).unwrap();
        let cases: serde_json::Value = serde_json::from_str(&text).unwrap();
        let cases = cases.as_array().unwrap();
        assert_eq!(cases.len(), 30);
        for case in cases {
            let filter = match case["filter"].as_str().unwrap() {
                "bilinear" => Filter::Bilinear,
                _ => Filter::Bicubic,
            };
            let (w, h) = (
                case["width"].as_u64().unwrap() as u32,
                case["height"].as_u64().unwrap() as u32,
            );
            let ours = resize(&load(case["src"].as_str().unwrap()), w, h, filter);
            let theirs = load(case["out"].as_str().unwrap());
            assert_eq!((ours.width, ours.height), (theirs.width, theirs.height));
            let diff = ours
                .pixels
                .iter()
                .zip(&theirs.pixels)
                .filter(|(a, b)| a != b)
                .count();
            assert_eq!(diff, 0, "{case}: {diff} bytes differ");
        }
    }

    #[test]
    fn same_size_is_a_copy_and_zero_size_is_empty() {
        let src = load("src_a.png");
        assert_eq!(resize(&src, src.width, src.height, Filter::Bicubic), src);
        let empty = resize(&src, 0, 5, Filter::Bilinear);
        assert_eq!((empty.width, empty.height, empty.pixels.len()), (0, 5, 0));
    }

    #[test]
    fn pil_codes() {
        assert_eq!(Filter::from_pil_code(2), Some(Filter::Bilinear));
        assert_eq!(Filter::from_pil_code(3), Some(Filter::Bicubic));
        assert_eq!(Filter::from_pil_code(1), None);
    }

    /// Weights are normalised before rounding, so a flat image stays flat at any scale.
    #[test]
    fn flat_image_stays_flat() {
        let src = Image {
            width: 9,
            height: 7,
            pixels: vec![200; 9 * 7 * 3],
        };
        for (w, h) in [(3, 2), (30, 25), (9, 1)] {
            for filter in [Filter::Bilinear, Filter::Bicubic] {
                assert!(resize(&src, w, h, filter).pixels.iter().all(|&v| v == 200));
            }
        }
    }
}
