//! Shared test setup: the runtime (ONNX Runtime from `make ort`) and paths into the repository.
#![allow(dead_code)]

pub mod capi;
pub mod http;
pub mod peers;
pub mod png;
pub mod remote;
pub mod serve;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use diffgentor::{Pipeline, Runtime, RuntimeOptions};

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn model_dir(name: &str) -> PathBuf {
    repo().join("models").join(name)
}

/// `make test` exports DG_ORT_DYLIB_PATH; a bare `cargo test` after `make ort` finds .ort/lib.
pub fn ort_library() -> Option<PathBuf> {
    if std::env::var_os("DG_ORT_DYLIB_PATH").is_some() {
        return None;
    }
    let bundled = repo().join(".ort/lib/libonnxruntime.so.1.31.1");
    bundled.is_file().then_some(bundled)
}

/// Runs the `dg` binary with `args`, pointing it at the bundled ONNX Runtime.
pub fn dg(args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_dg"));
    cmd.args(args);
    if let Some(lib) = ort_library() {
        cmd.env("DG_ORT_DYLIB_PATH", lib);
    }
    cmd.output().expect("dg runs")
}

pub fn runtime() -> Arc<Runtime> {
    static RUNTIME: OnceLock<Arc<Runtime>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            Runtime::new(RuntimeOptions {
                ort_library: ort_library(),
                ..RuntimeOptions::default()
            })
            .unwrap_or_else(|e| panic!("ONNX Runtime must load (run `make ort`): {e}"))
        })
        .clone()
}

pub fn pipeline(name: &str) -> Pipeline {
    Pipeline::load(runtime(), &model_dir(name)).unwrap_or_else(|e| panic!("loading {name}: {e}"))
}

/// Copies a model package into a temp dir so a test can damage one file of it.
pub fn copy_model(name: &str, into: &Path) -> PathBuf {
    let dst = into.join(name);
    copy_dir(&model_dir(name), &dst);
    dst
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let target = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The parity bar with diffusers: final latents within 1e-3 max abs, pixels within 2 levels
/// (mean under 0.5).
pub const LATENT_TOLERANCE: f32 = 1e-3;
pub const PIXEL_MAX_DIFF: u8 = 2;
pub const PIXEL_MEAN_DIFF: f64 = 0.5;

/// How far an output is from a diffusers golden; `None` images are not compared.
pub struct Parity {
    pub latent_max: f32,
    pub pixel_max: u8,
    pub pixel_mean: f64,
}

impl Parity {
    /// Compares latents (shapes must match) and every image with its golden PNG.
    pub fn of(
        latents: &ndarray::ArrayD<f32>,
        expected: &ndarray::ArrayD<f32>,
        images: &[diffgentor::Image],
        pngs: &[PathBuf],
    ) -> Parity {
        assert_eq!(latents.shape(), expected.shape(), "latent shape");
        assert_eq!(images.len(), pngs.len(), "image count");
        let latent_max = latents
            .iter()
            .zip(expected.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        let (mut pixel_max, mut sum, mut count) = (0u8, 0u64, 0u64);
        for (image, png) in images.iter().zip(pngs) {
            let golden = diffgentor::Image::load_png(png).unwrap();
            assert_eq!((image.width, image.height), (golden.width, golden.height));
            for (a, b) in image.pixels.iter().zip(&golden.pixels) {
                let d = a.abs_diff(*b);
                pixel_max = pixel_max.max(d);
                sum += u64::from(d);
                count += 1;
            }
        }
        Parity {
            latent_max,
            pixel_max,
            pixel_mean: if count == 0 {
                0.0
            } else {
                sum as f64 / count as f64
            },
        }
    }

    pub fn passes(&self) -> bool {
        self.latent_max <= LATENT_TOLERANCE
            && self.pixel_max <= PIXEL_MAX_DIFF
            && self.pixel_mean < PIXEL_MEAN_DIFF
    }
}

impl std::fmt::Display for Parity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "latents max abs {:.2e}, pixels max {} mean {:.4}",
            self.latent_max, self.pixel_max, self.pixel_mean
        )
    }
}

/// The cases of a golden manifest.json (tests/golden/*/manifest.json).
pub fn manifest_cases(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).expect("manifest.json");
    let manifest: serde_json::Value = serde_json::from_str(&text).expect("manifest is JSON");
    manifest["cases"].as_array().expect("cases").clone()
}

/// The request fields every golden case records, as diffusers was called with them.
pub fn golden_request(case: &serde_json::Value) -> diffgentor::Request {
    let mut request = diffgentor::Request::new(case["prompt"].as_str().unwrap_or_default());
    request.negative_prompt = case["negative_prompt"].as_str().map(str::to_string);
    request.steps = case["steps"].as_u64().unwrap() as usize;
    request.guidance_scale = case["guidance_scale"].as_f64().unwrap() as f32;
    request.seed = Some(case["seed"].as_u64().unwrap());
    request.width = case["width"].as_u64().map(|v| v as u32);
    request.height = case["height"].as_u64().map(|v| v as u32);
    request.num_images = case["num_images"].as_u64().unwrap_or(1) as usize;
    request.eta = case["eta"].as_f64().unwrap_or(0.0) as f32;
    request.scheduler = case["scheduler"].as_str().map(str::to_string);
    if let Some(overrides) = case["scheduler_overrides"].as_object() {
        request.scheduler_overrides = overrides.clone();
    }
    request
}
