//! Image preprocessing of vision-language models, reimplementing transformers' PIL-backed ("slow")
//! image processors (transformers 5.23 `Qwen2VLImageProcessorPil`, `ViTImageProcessorPil`) with
//! their float arithmetic order, so `pixel_values` match theirs to the last bit or nearly so:
//! resize the uint8 image with PIL's filter, rescale as `f32(f64(u8) * factor)`, normalise as
//! `(x - mean) / std` in f32.
use std::path::Path;

use ndarray::{Array2, Array4};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::image::{Image, MAX_IMAGE_SIDE};
use crate::vlm::pil::{self, Filter};

/// OpenAI CLIP statistics, the Qwen2-VL defaults (transformers `OPENAI_CLIP_MEAN` / `_STD`:
/// mean (0.48145466, 0.4578275, 0.40821073), std (0.26862954, 0.26130258, 0.27577711)), written
/// as the f32 values numpy normalises with.
const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];
/// transformers' `IMAGENET_STANDARD_MEAN` / `_STD`, the ViT defaults.
const HALF: [f32; 3] = [0.5, 0.5, 0.5];
/// transformers' default `rescale_factor` (a Python float, so kept as f64).
const DEFAULT_RESCALE: f64 = 1.0 / 255.0;
/// transformers' Qwen2-VL limits: `smart_resize` refuses more extreme aspect ratios.
const MAX_ASPECT_RATIO: f64 = 200.0;

/// The Qwen2-VL / Qwen2.5-VL image processor (`Qwen2VLImageProcessor`).
#[derive(Debug, Clone, PartialEq)]
pub struct QwenImageProcessor {
    /// Side of one vision patch in pixels (14).
    pub patch_size: usize,
    /// Patches merged per side into one LLM token (2).
    pub merge_size: usize,
    /// Frames per temporal patch; a still image is repeated this many times (2).
    pub temporal_patch_size: usize,
    /// Lower bound on the resized pixel count (`size.shortest_edge` / `min_pixels`).
    pub min_pixels: usize,
    /// Upper bound on the resized pixel count (`size.longest_edge` / `max_pixels`).
    pub max_pixels: usize,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    pub rescale_factor: f64,
    pub do_rescale: bool,
    pub do_normalize: bool,
    /// PIL filter of the resize (`resample`, bicubic by default).
    pub filter: Filter,
}

/// One preprocessed image: the vision graph's `pixel_values` and `image_grid_thw` row.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessedImage {
    /// `[patches, 3 * T * P * P]`, patches in merge-block order.
    pub pixel_values: Array2<f32>,
    /// `[temporal, height, width]` in patches.
    pub grid_thw: [i64; 3],
}

impl ProcessedImage {
    /// The number of `<|image_pad|>` tokens this image takes in the prompt: one per merged block.
    pub fn merged_tokens(&self, merge_size: usize) -> usize {
        let [t, h, w] = self.grid_thw.map(|v| usize::try_from(v).unwrap_or(0));
        t * h * w / (merge_size * merge_size).max(1)
    }
}

impl Default for QwenImageProcessor {
    /// transformers' defaults: patch 14, merge 2, T 2, 56*56 to 28*28*1280 pixels, CLIP statistics.
    fn default() -> Self {
        QwenImageProcessor {
            patch_size: 14,
            merge_size: 2,
            temporal_patch_size: 2,
            min_pixels: 56 * 56,
            max_pixels: 28 * 28 * 1280,
            image_mean: CLIP_MEAN,
            image_std: CLIP_STD,
            rescale_factor: DEFAULT_RESCALE,
            do_rescale: true,
            do_normalize: true,
            filter: Filter::Bicubic,
        }
    }
}

/// Reads the fields of a preprocessor_config.json, naming the file in every error.
struct ConfigReader<'a> {
    path: &'a Path,
    json: &'a Value,
}

impl ConfigReader<'_> {
    fn error(&self, message: String) -> Error {
        Error::Model {
            path: self.path.to_path_buf(),
            message,
        }
    }

    /// A key that is absent or null reads as None (transformers treats null as "use the default").
    fn get(&self, key: &str) -> Option<&Value> {
        self.json.get(key).filter(|v| !v.is_null())
    }

    fn count(&self, value: &Value, key: &str) -> Result<usize> {
        value
            .as_u64()
            .or_else(|| {
                value
                    .as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                    .map(|f| f as u64)
            })
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| self.error(format!("{key} must be a non-negative integer, got {value}")))
    }

    fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        self.get(key).map_or(Ok(default), |v| self.count(v, key))
    }

    fn positive_or(&self, key: &str, default: usize) -> Result<usize> {
        let v = self.usize_or(key, default)?;
        if v == 0 {
            return Err(self.error(format!("{key} must be at least 1")));
        }
        Ok(v)
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.error(format!("{key} must be true or false, got {v}"))),
        }
    }

    fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .filter(|f| f.is_finite())
                .ok_or_else(|| self.error(format!("{key} must be a finite number, got {v}"))),
        }
    }

    /// A per-channel statistic: a list of three numbers or one number for all channels.
    fn channels_or(&self, key: &str, default: [f32; 3]) -> Result<[f32; 3]> {
        let Some(v) = self.get(key) else {
            return Ok(default);
        };
        let bad = || {
            self.error(format!(
                "{key} must be a number or a list of 3 numbers, got {v}"
            ))
        };
        let number = |x: &Value| x.as_f64().filter(|f| f.is_finite()).map(|f| f as f32);
        match v {
            Value::Array(items) if items.len() == 3 => {
                let mut out = [0.0; 3];
                for (o, item) in out.iter_mut().zip(items) {
                    *o = number(item).ok_or_else(bad)?;
                }
                Ok(out)
            }
            _ => number(v).map(|x| [x; 3]).ok_or_else(bad),
        }
    }

    /// The `resample` PIL code as a filter (only bilinear and bicubic are implemented).
    fn filter_or(&self, default: Filter) -> Result<Filter> {
        let Some(v) = self.get("resample") else {
            return Ok(default);
        };
        let code = v
            .as_i64()
            .ok_or_else(|| self.error(format!("resample must be a PIL filter code, got {v}")))?;
        Filter::from_pil_code(code).ok_or_else(|| {
            Error::Unsupported(format!(
                "{}: resample {code} (only 2 bilinear and 3 bicubic are implemented)",
                self.path.display()
            ))
        })
    }

    /// The std must not contain zeros: normalising would divide by zero.
    fn std_or(&self, default: [f32; 3]) -> Result<[f32; 3]> {
        let std = self.channels_or("image_std", default)?;
        if std.contains(&0.0) {
            return Err(self.error(format!("image_std must not contain 0, got {std:?}")));
        }
        Ok(std)
    }
}

impl QwenImageProcessor {
    /// Reads preprocessor_config.json as transformers does: `size: {shortest_edge, longest_edge}`
    /// replaces the default bounds as a whole, then `min_pixels` / `max_pixels` override either one;
    /// every other key falls back to transformers' default. `path` only names the file in errors.
    pub fn from_config(path: &Path, json: &Value) -> Result<Self> {
        let cfg = ConfigReader { path, json };
        if !json.is_object() {
            return Err(cfg.error("preprocessor config must be a JSON object".into()));
        }
        if !cfg.bool_or("do_resize", true)? {
            return Err(Error::Unsupported(format!(
                "{}: do_resize false (Qwen2-VL patches need sides divisible by patch_size * merge_size)",
                path.display()
            )));
        }
        let defaults = QwenImageProcessor::default();
        let (min_pixels, max_pixels) = pixel_bounds(&cfg, &defaults)?;
        let processor = QwenImageProcessor {
            patch_size: cfg.positive_or("patch_size", defaults.patch_size)?,
            merge_size: cfg.positive_or("merge_size", defaults.merge_size)?,
            temporal_patch_size: cfg
                .positive_or("temporal_patch_size", defaults.temporal_patch_size)?,
            min_pixels,
            max_pixels,
            image_mean: cfg.channels_or("image_mean", defaults.image_mean)?,
            image_std: cfg.std_or(defaults.image_std)?,
            rescale_factor: cfg.f64_or("rescale_factor", defaults.rescale_factor)?,
            do_rescale: cfg.bool_or("do_rescale", true)?,
            do_normalize: cfg.bool_or("do_normalize", true)?,
            filter: cfg.filter_or(defaults.filter)?,
        };
        if processor.factor() > MAX_IMAGE_SIDE as usize || processor.temporal_patch_size > 64 {
            return Err(cfg.error(format!(
                "patch_size {} * merge_size {} (or temporal_patch_size {}) is out of range",
                processor.patch_size, processor.merge_size, processor.temporal_patch_size
            )));
        }
        if processor.max_pixels == 0 {
            return Err(cfg.error("max_pixels (size.longest_edge) must be at least 1".into()));
        }
        Ok(processor)
    }

    /// The resize factor: sides become multiples of one merged block.
    fn factor(&self) -> usize {
        self.patch_size.saturating_mul(self.merge_size)
    }

    /// transformers' `smart_resize`: the (height, width) nearest the image's with both sides
    /// multiples of `patch_size * merge_size` and a pixel count within [min_pixels, max_pixels].
    /// Refuses an aspect ratio over 200 (as transformers does) and, unlike transformers 5.23 (which
    /// would upscale it), an image side smaller than one patch.
    pub fn smart_resize(&self, height: usize, width: usize) -> Result<(usize, usize)> {
        if height < self.patch_size || width < self.patch_size {
            return Err(Error::InvalidArg(format!(
                "image is {width}x{height} pixels; each side must be at least one patch ({} px)",
                self.patch_size
            )));
        }
        let out = smart_resize(
            height,
            width,
            self.factor(),
            self.min_pixels,
            self.max_pixels,
        )?;
        let max_side = MAX_IMAGE_SIDE as usize;
        if out.0 == 0 || out.1 == 0 || out.0 > max_side || out.1 > max_side {
            return Err(Error::InvalidArg(format!(
                "image of {width}x{height} pixels resizes to {}x{} (min_pixels {}, max_pixels {}), \
                 outside 1..={max_side} per side",
                out.1, out.0, self.min_pixels, self.max_pixels
            )));
        }
        Ok(out)
    }

    /// Resizes, rescales, normalises and patchifies one image.
    pub fn process(&self, image: &Image) -> Result<ProcessedImage> {
        check_image(image)?;
        let (height, width) = self.smart_resize(image.height as usize, image.width as usize)?;
        let resized = pil::resize(image, width as u32, height as u32, self.filter);
        let planes = normalized_planes(
            &resized,
            self.do_rescale.then_some(self.rescale_factor),
            self.do_normalize
                .then_some((self.image_mean, self.image_std)),
        );
        let (grid_h, grid_w) = (height / self.patch_size, width / self.patch_size);
        Ok(ProcessedImage {
            pixel_values: self.patchify(&planes, width, grid_h, grid_w),
            grid_thw: [1, grid_h as i64, grid_w as i64],
        })
    }

    /// transformers' `patchify`: [C, gh/m, m, P, gw/m, m, P] transposed to
    /// [gh/m, gw/m, m, m, C, P, P], the frame repeated T times after C, flattened to
    /// one row of C*T*P*P values per patch, the patches of each merged block consecutive.
    fn patchify(&self, planes: &[f32], width: usize, grid_h: usize, grid_w: usize) -> Array2<f32> {
        let (p, m, t) = (self.patch_size, self.merge_size, self.temporal_patch_size);
        let plane = planes.len() / 3;
        let row_len = 3 * t * p * p;
        let mut out = Vec::with_capacity(grid_h * grid_w * row_len);
        for block_y in 0..grid_h / m {
            for block_x in 0..grid_w / m {
                for my in 0..m {
                    for mx in 0..m {
                        let (y0, x0) = ((block_y * m + my) * p, (block_x * m + mx) * p);
                        for c in 0..3 {
                            let channel = &planes[c * plane..(c + 1) * plane];
                            for _ in 0..t {
                                for y in y0..y0 + p {
                                    out.extend_from_slice(&channel[y * width + x0..][..p]);
                                }
                            }
                        }
                    }
                }
            }
        }
        let rows = out.len() / row_len;
        // The length is rows * row_len by construction.
        Array2::from_shape_vec((rows, row_len), out).unwrap_or_else(|_| Array2::zeros((0, row_len)))
    }
}

/// Resized bounds from `size` and the legacy `min_pixels` / `max_pixels` keys, as transformers'
/// `Qwen2VLImageProcessor.__init__` combines them.
fn pixel_bounds(cfg: &ConfigReader<'_>, defaults: &QwenImageProcessor) -> Result<(usize, usize)> {
    let (mut lo, mut hi) = match cfg.get("size") {
        None => (Some(defaults.min_pixels), Some(defaults.max_pixels)),
        Some(Value::Object(size)) => {
            let read = |key: &str| {
                let v = size.get(key).filter(|v| !v.is_null());
                v.map(|v| cfg.count(v, &format!("size.{key}"))).transpose()
            };
            (read("shortest_edge")?, read("longest_edge")?)
        }
        Some(v) => {
            return Err(cfg.error(format!(
                "size must be {{\"shortest_edge\": N, \"longest_edge\": N}}, got {v}"
            )))
        }
    };
    if let Some(v) = cfg.get("min_pixels") {
        lo = Some(cfg.count(v, "min_pixels")?);
    }
    if let Some(v) = cfg.get("max_pixels") {
        hi = Some(cfg.count(v, "max_pixels")?);
    }
    match (lo, hi) {
        (Some(lo), Some(hi)) => Ok((lo, hi)),
        _ => Err(cfg.error(
            "size must contain shortest_edge and longest_edge (or give min_pixels and max_pixels)"
                .into(),
        )),
    }
}

/// Refuses an empty image or one whose buffer does not hold width * height RGB pixels.
fn check_image(image: &Image) -> Result<()> {
    let (w, h) = (image.width as usize, image.height as usize);
    if w == 0 || h == 0 {
        return Err(Error::InvalidArg(format!(
            "image is {w}x{h} pixels: it has no pixels"
        )));
    }
    if image.pixels.len() != w * h * 3 {
        return Err(Error::InvalidArg(format!(
            "image claims {w}x{h} RGB pixels but holds {} bytes",
            image.pixels.len()
        )));
    }
    Ok(())
}

/// transformers' `smart_resize` with Python's float semantics (`round` is half-to-even).
fn smart_resize(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: usize,
    max_pixels: usize,
) -> Result<(usize, usize)> {
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    let ratio = h.max(w) / h.min(w);
    if ratio > MAX_ASPECT_RATIO {
        return Err(Error::InvalidArg(format!(
            "image of {width}x{height} pixels: absolute aspect ratio must be smaller than 200, got {ratio}"
        )));
    }
    // Saturating products: a config with absurd sizes must fail with an error, not overflow.
    let times = |x: f64| (x as usize).saturating_mul(factor);
    let mut h_bar = times((h / f).round_ties_even());
    let mut w_bar = times((w / f).round_ties_even());
    let pixels = h_bar.saturating_mul(w_bar);
    if pixels > max_pixels {
        let beta = ((h * w) / max_pixels as f64).sqrt();
        h_bar = factor.max(times((h / beta / f).floor()));
        w_bar = factor.max(times((w / beta / f).floor()));
    } else if pixels < min_pixels {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        h_bar = times((h * beta / f).ceil());
        w_bar = times((w * beta / f).ceil());
    }
    Ok((h_bar, w_bar))
}

/// The image as three f32 planes (C, H, W) after transformers' `rescale` (f64 product, cast to
/// f32) and `normalize` (f32 subtraction and division), each when enabled.
fn normalized_planes(
    image: &Image,
    rescale: Option<f64>,
    normalize: Option<([f32; 3], [f32; 3])>,
) -> Vec<f32> {
    let plane = image.width as usize * image.height as usize;
    let mut out = vec![0.0f32; 3 * plane];
    for (i, px) in image.pixels.chunks_exact(3).enumerate() {
        for (c, &v) in px.iter().enumerate() {
            let mut x = match rescale {
                Some(factor) => (f64::from(v) * factor) as f32,
                None => f32::from(v),
            };
            if let Some((mean, std)) = normalize {
                x = (x - mean[c]) / std[c];
            }
            out[c * plane + i] = x;
        }
    }
    out
}

/// transformers' `ViTImageProcessor`: resize to a fixed size, rescale, normalise, `[1, 3, H, W]`.
#[derive(Debug, Clone, PartialEq)]
pub struct VitImageProcessor {
    /// Target (height, width); None when `do_resize` is false.
    pub size: Option<(usize, usize)>,
    pub filter: Filter,
    pub rescale_factor: Option<f64>,
    pub normalize: Option<([f32; 3], [f32; 3])>,
}

impl Default for VitImageProcessor {
    /// transformers' defaults: 224x224 bilinear, 1/255, mean and std 0.5.
    fn default() -> Self {
        VitImageProcessor {
            size: Some((224, 224)),
            filter: Filter::Bilinear,
            rescale_factor: Some(DEFAULT_RESCALE),
            normalize: Some((HALF, HALF)),
        }
    }
}

impl VitImageProcessor {
    /// Reads preprocessor_config.json (`size` as `{height, width}` or one number for a square).
    pub fn from_config(path: &Path, json: &Value) -> Result<Self> {
        let cfg = ConfigReader { path, json };
        if !json.is_object() {
            return Err(cfg.error("preprocessor config must be a JSON object".into()));
        }
        if cfg.bool_or("do_center_crop", false)? || cfg.bool_or("do_pad", false)? {
            return Err(Error::Unsupported(format!(
                "{}: do_center_crop / do_pad in a ViT image processor",
                path.display()
            )));
        }
        let size = match cfg.bool_or("do_resize", true)? {
            true => Some(vit_size(&cfg)?),
            false => None,
        };
        let rescale = cfg.f64_or("rescale_factor", DEFAULT_RESCALE)?;
        let stats = (cfg.channels_or("image_mean", HALF)?, cfg.std_or(HALF)?);
        Ok(VitImageProcessor {
            size,
            filter: cfg.filter_or(Filter::Bilinear)?,
            rescale_factor: cfg.bool_or("do_rescale", true)?.then_some(rescale),
            normalize: cfg.bool_or("do_normalize", true)?.then_some(stats),
        })
    }

    /// `pixel_values` `[1, 3, H, W]` for one image.
    pub fn process(&self, image: &Image) -> Result<Array4<f32>> {
        check_image(image)?;
        let resized;
        let image = match self.size {
            Some((h, w)) if (h, w) != (image.height as usize, image.width as usize) => {
                resized = pil::resize(image, w as u32, h as u32, self.filter);
                &resized
            }
            _ => image,
        };
        let (h, w) = (image.height as usize, image.width as usize);
        let planes = normalized_planes(image, self.rescale_factor, self.normalize);
        Array4::from_shape_vec((1, 3, h, w), planes)
            .map_err(|e| Error::InvalidArg(format!("image buffer does not match {w}x{h}: {e}")))
    }
}

/// ViT's `size`: `{height, width}` or an int (a square, as `get_size_dict` reads it).
fn vit_size(cfg: &ConfigReader<'_>) -> Result<(usize, usize)> {
    let size = match cfg.get("size") {
        None => return Ok((224, 224)),
        Some(v) => v,
    };
    let (h, w) = match size {
        Value::Object(map) => match (map.get("height"), map.get("width")) {
            (Some(h), Some(w)) => (cfg.count(h, "size.height")?, cfg.count(w, "size.width")?),
            _ => {
                return Err(Error::Unsupported(format!(
                    "{}: ViT size {size} (only {{height, width}} is implemented)",
                    cfg.path.display()
                )))
            }
        },
        v => {
            let s = cfg.count(v, "size")?;
            (s, s)
        }
    };
    if h == 0 || w == 0 || h > MAX_IMAGE_SIDE as usize || w > MAX_IMAGE_SIDE as usize {
        return Err(cfg.error(format!("size {h}x{w} is out of range")));
    }
    Ok((h, w))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use serde_json::json;

    use super::*;
    use crate::error::ErrorCode;

    fn golden(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("models/vlm-processor-goldens")
            .join(name)
    }

    fn golden_json(name: &str) -> Value {
        serde_json::from_str(&std::fs::read_to_string(golden(name)).unwrap()).unwrap()
    }

    fn max_abs_diff(ours: &[f32], theirs: &[f32]) -> f32 {
        assert_eq!(ours.len(), theirs.len());
        ours.iter()
            .zip(theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
    }

    fn cfg_path() -> &'static Path {
        Path::new("preprocessor_config.json")
    }

    /// pixel_values and grid_thw of Qwen2VLImageProcessorPil for 3 images under 2 configs, bit for
    /// bit (the arithmetic is the same IEEE operations in the same order).
    #[test]
    fn qwen_matches_transformers() {
        let cases = golden_json("qwen.json");
        assert_eq!(cases.as_array().unwrap().len(), 6);
        for case in cases.as_array().unwrap() {
            let processor = QwenImageProcessor::from_config(cfg_path(), &case["config"]).unwrap();
            let image = Image::load_png(&golden(case["image"].as_str().unwrap())).unwrap();
            let out = processor.process(&image).unwrap();
            let grid: Vec<i64> = serde_json::from_value(case["grid_thw"].clone()).unwrap();
            assert_eq!(out.grid_thw.to_vec(), grid, "{case}");
            let theirs =
                crate::npy::read_f32(&golden(case["pixel_values"].as_str().unwrap())).unwrap();
            assert_eq!(out.pixel_values.shape(), theirs.shape(), "{case}");
            let ours = out.pixel_values.as_slice().unwrap();
            let diff = max_abs_diff(ours, theirs.as_slice().unwrap());
            assert!(diff == 0.0, "{}: max diff {diff}", case["pixel_values"]);
            assert_eq!(
                out.merged_tokens(processor.merge_size),
                grid.iter().product::<i64>() as usize / 4
            );
        }
    }

    #[test]
    fn smart_resize_matches_transformers() {
        let rows = golden_json("smart_resize.json");
        for row in rows.as_array().unwrap() {
            let n = |k: &str| row[k].as_u64().unwrap() as usize;
            let got = smart_resize(
                n("height"),
                n("width"),
                n("factor"),
                n("min_pixels"),
                n("max_pixels"),
            );
            match row.get("out") {
                Some(out) => {
                    let want: (usize, usize) = serde_json::from_value(out.clone()).unwrap();
                    assert_eq!(got.unwrap(), want, "{row}");
                }
                None => {
                    let err = got.unwrap_err();
                    assert_eq!(err.code(), ErrorCode::InvalidArg);
                    let python = row["error"].as_str().unwrap();
                    assert!(err.to_string().contains(python), "{err} vs {python}");
                }
            }
        }
    }

    #[test]
    fn vit_matches_transformers() {
        let cases = golden_json("vit.json");
        for case in cases.as_array().unwrap() {
            let processor = VitImageProcessor::from_config(cfg_path(), &case["config"]).unwrap();
            let image = Image::load_png(&golden(case["image"].as_str().unwrap())).unwrap();
            let ours = processor.process(&image).unwrap();
            let theirs =
                crate::npy::read_f32(&golden(case["pixel_values"].as_str().unwrap())).unwrap();
            assert_eq!(ours.shape(), theirs.shape());
            let diff = max_abs_diff(ours.as_slice().unwrap(), theirs.as_slice().unwrap());
            assert!(diff == 0.0, "{case}: max diff {diff}");
        }
    }

    #[test]
    fn side_smaller_than_a_patch_is_invalid_arg() {
        let processor = QwenImageProcessor::default();
        let err = processor.smart_resize(13, 400).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidArg);
        let msg = err.to_string();
        assert!(msg.contains("400x13") && msg.contains("14 px"), "{msg}");
        let tiny = Image {
            width: 10,
            height: 30,
            pixels: vec![0; 10 * 30 * 3],
        };
        assert_eq!(
            processor.process(&tiny).unwrap_err().code(),
            ErrorCode::InvalidArg
        );
        // Exactly one patch is fine: upscaled to the minimum.
        assert_eq!(processor.smart_resize(14, 14).unwrap(), (56, 56));
    }

    #[test]
    fn broken_image_buffer_is_invalid_arg() {
        let bad = Image {
            width: 20,
            height: 20,
            pixels: vec![0; 17],
        };
        let err = QwenImageProcessor::default().process(&bad).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidArg);
        assert_eq!(
            VitImageProcessor::default()
                .process(&bad)
                .unwrap_err()
                .code(),
            ErrorCode::InvalidArg
        );
    }

    #[test]
    fn config_defaults_and_precedence() {
        let p = QwenImageProcessor::from_config(cfg_path(), &json!({})).unwrap();
        assert_eq!(p, QwenImageProcessor::default());
        // The released Qwen2.5-VL file: legacy keys.
        let released = json!({
            "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2,
            "merge_size": 2, "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711], "image_processor_type": "Qwen2VLImageProcessor",
            "processor_class": "Qwen2_5_VLProcessor", "resample": 3, "rescale_factor": 0.00392156862745098,
        });
        let p = QwenImageProcessor::from_config(cfg_path(), &released).unwrap();
        assert_eq!((p.min_pixels, p.max_pixels), (3136, 12845056));
        assert_eq!(p.image_mean, CLIP_MEAN);
        // min_pixels / max_pixels override size; size replaces the defaults as a whole.
        let both = json!({"size": {"shortest_edge": 100, "longest_edge": 200}, "max_pixels": 300});
        let p = QwenImageProcessor::from_config(cfg_path(), &both).unwrap();
        assert_eq!((p.min_pixels, p.max_pixels), (100, 300));
        let partial = json!({"size": {"shortest_edge": 100}});
        let err = QwenImageProcessor::from_config(cfg_path(), &partial).unwrap_err();
        assert_eq!(err.code(), ErrorCode::Model);
        assert!(err.to_string().contains("preprocessor_config.json"));
        let fixed = json!({"size": {"shortest_edge": 100}, "max_pixels": 5000});
        assert!(QwenImageProcessor::from_config(cfg_path(), &fixed).is_ok());
        let scalar_mean = json!({"image_mean": 0.5});
        let p = QwenImageProcessor::from_config(cfg_path(), &scalar_mean).unwrap();
        assert_eq!(p.image_mean, [0.5; 3]);
    }

    #[test]
    fn bad_configs() {
        let model = |v: Value| {
            QwenImageProcessor::from_config(cfg_path(), &v)
                .unwrap_err()
                .code()
        };
        assert_eq!(model(json!({"patch_size": 0})), ErrorCode::Model);
        assert_eq!(model(json!({"patch_size": -3})), ErrorCode::Model);
        assert_eq!(
            model(json!({"patch_size": 100000, "merge_size": 100000})),
            ErrorCode::Model
        );
        assert_eq!(model(json!({"image_std": [1, 0, 1]})), ErrorCode::Model);
        assert_eq!(model(json!({"image_mean": [1, 2]})), ErrorCode::Model);
        assert_eq!(model(json!({"max_pixels": 0})), ErrorCode::Model);
        assert_eq!(model(json!({"do_rescale": "yes"})), ErrorCode::Model);
        assert_eq!(model(json!([1, 2])), ErrorCode::Model);
        assert_eq!(model(json!({"resample": 1})), ErrorCode::Unsupported);
        assert_eq!(model(json!({"do_resize": false})), ErrorCode::Unsupported);
        let vit = |v: Value| {
            VitImageProcessor::from_config(cfg_path(), &v)
                .unwrap_err()
                .code()
        };
        assert_eq!(
            vit(json!({"size": {"shortest_edge": 224}})),
            ErrorCode::Unsupported
        );
        assert_eq!(vit(json!({"do_center_crop": true})), ErrorCode::Unsupported);
        assert_eq!(
            vit(json!({"size": {"height": 0, "width": 3}})),
            ErrorCode::Model
        );
        let square = VitImageProcessor::from_config(cfg_path(), &json!({"size": 32})).unwrap();
        assert_eq!(square.size, Some((32, 32)));
    }

    /// A huge min_pixels would upscale past any sane size: refused, not allocated.
    #[test]
    fn absurd_bounds_are_refused() {
        let p = QwenImageProcessor {
            min_pixels: 1 << 40,
            ..QwenImageProcessor::default()
        };
        assert_eq!(
            p.smart_resize(100, 100).unwrap_err().code(),
            ErrorCode::InvalidArg
        );
    }

    /// The patch layout on a tiny hand-made case: rows are patches in merge-block order, each row
    /// is channel, then T copies, then the patch's pixels row-major.
    #[test]
    fn patch_order() {
        let p = QwenImageProcessor {
            patch_size: 1,
            merge_size: 2,
            temporal_patch_size: 2,
            ..QwenImageProcessor::default()
        };
        // 4x2 image (w=4, h=2): values planes[c][y][x] = 100c + 10y + x.
        let (w, h) = (4, 2);
        let mut planes = vec![0.0; 3 * w * h];
        for c in 0..3 {
            for y in 0..h {
                for x in 0..w {
                    planes[c * w * h + y * w + x] = (100 * c + 10 * y + x) as f32;
                }
            }
        }
        let rows = p.patchify(&planes, w, h, w);
        assert_eq!(rows.dim(), (8, 6));
        // First block covers x 0..2, y 0..2, patches (0,0) (0,1) (1,0) (1,1).
        let firsts: Vec<f32> = rows.column(0).to_vec();
        assert_eq!(firsts, vec![0.0, 1.0, 10.0, 11.0, 2.0, 3.0, 12.0, 13.0]);
        assert_eq!(
            rows.row(5).to_vec(),
            vec![3.0, 3.0, 103.0, 103.0, 203.0, 203.0]
        );
    }
}
