//! What a caller asks for, with diffusers' defaults and validation.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ndarray::ArrayD;
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::rng::RngMode;

/// Most images one request may ask for; keeps a typo from allocating gigabytes.
pub const MAX_IMAGES_PER_REQUEST: usize = 64;
/// Most denoising steps one request may ask for.
pub const MAX_STEPS: usize = 1000;

/// A text-to-image request. Fields left `None` take the package's defaults (size from the UNet's
/// `sample_size` x VAE factor, the package's scheduler), as diffusers does.
#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    /// Classifier-free guidance scale; <= 1 disables the unconditional pass.
    pub guidance_scale: f32,
    pub steps: usize,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub num_images: usize,
    /// Seed for the request's generator; `None` draws one from the clock (reported in the output).
    pub seed: Option<u64>,
    pub rng: RngMode,
    /// DDIM's eta (ignored by other schedulers, as in diffusers).
    pub eta: f32,
    /// Scheduler name or diffusers class name; `None` = the package's.
    pub scheduler: Option<String>,
    /// diffusers scheduler_config keys that override the package's config for this request.
    pub scheduler_overrides: Map<String, Value>,
    /// Initial latents [num_images, channels, h/f, w/f] instead of drawing them (scaled by the
    /// scheduler's init_noise_sigma, as diffusers does).
    pub latents: Option<ArrayD<f32>>,
    /// Lets another thread cancel the request; checked before every denoising step and the decode.
    pub cancel: Option<CancelToken>,
}

/// A flag another thread can raise to stop a running request (cheap to clone, shared state).
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> CancelToken {
        CancelToken::default()
    }

    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl Default for Request {
    fn default() -> Self {
        Request {
            prompt: String::new(),
            negative_prompt: None,
            guidance_scale: 7.5,
            steps: 50,
            width: None,
            height: None,
            num_images: 1,
            seed: None,
            rng: RngMode::Torch,
            eta: 0.0,
            scheduler: None,
            scheduler_overrides: Map::new(),
            latents: None,
            cancel: None,
        }
    }
}

/// Decodes a prompt given as bytes (C callers, files), rejecting invalid UTF-8 with its position.
pub fn prompt_from_bytes(bytes: &[u8]) -> Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|e| {
        Error::InvalidArg(format!(
            "prompt is not valid UTF-8 (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

impl Request {
    pub fn new(prompt: impl Into<String>) -> Request {
        Request {
            prompt: prompt.into(),
            ..Request::default()
        }
    }

    /// Checks everything that does not need the model; size checks happen in the pipeline.
    pub(crate) fn validate(&self) -> Result<()> {
        if self.steps == 0 || self.steps > MAX_STEPS {
            return Err(Error::InvalidArg(format!(
                "steps must be between 1 and {MAX_STEPS}, got {}",
                self.steps
            )));
        }
        if self.num_images == 0 || self.num_images > MAX_IMAGES_PER_REQUEST {
            return Err(Error::InvalidArg(format!(
                "num_images must be between 1 and {MAX_IMAGES_PER_REQUEST}, got {}",
                self.num_images
            )));
        }
        if !self.guidance_scale.is_finite() {
            return Err(Error::InvalidArg(format!(
                "guidance_scale must be finite, got {}",
                self.guidance_scale
            )));
        }
        if !self.eta.is_finite() || self.eta < 0.0 {
            return Err(Error::InvalidArg(format!(
                "eta must be >= 0, got {}",
                self.eta
            )));
        }
        Ok(())
    }

    /// `Err(Cancelled)` once the request's token has been triggered.
    pub(crate) fn check_cancelled(&self) -> Result<()> {
        match &self.cancel {
            Some(token) if token.is_cancelled() => Err(Error::Cancelled),
            _ => Ok(()),
        }
    }

    /// Classifier-free guidance runs only when the scale is above 1, as in diffusers.
    pub fn uses_guidance(&self) -> bool {
        self.guidance_scale > 1.0
    }
}

/// Resolves the output size against the VAE factor, rejecting zero and non-multiples.
pub(crate) fn check_size(width: u32, height: u32, factor: u32) -> Result<()> {
    for (name, v) in [("width", width), ("height", height)] {
        if v == 0 || v % factor != 0 {
            return Err(Error::InvalidArg(format!(
                "{name} {v} must be a positive multiple of the VAE factor {factor}"
            )));
        }
        if v > 16384 {
            return Err(Error::InvalidArg(format!(
                "{name} {v} is larger than 16384"
            )));
        }
    }
    Ok(())
}

/// Progress of a running request, passed to the caller's callback after every denoising step.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Steps finished so far (1-based once the first step ran).
    pub step: usize,
    pub total: usize,
    pub elapsed: Duration,
}
