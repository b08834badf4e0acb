//! What a caller asks for and what it gets back, whoever draws the image (a local pipeline or a
//! remote service): requests with diffusers' defaults and validation, plans, progress,
//! cancellation and outputs. Knows nothing of ONNX Runtime.
mod loras;
mod output;
mod plan;

pub use loras::{check_stack, format_stack, parse_stack, take_prompt_tags, LoraUse, MAX_STACK};
pub use output::{Output, Timings};
pub use plan::{Plan, Resample, Stage, MAX_STAGES};

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ndarray::ArrayD;
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::image::{Image, MAX_IMAGE_SIDE};
use crate::rng::RngMode;

/// Most images one request may ask for; keeps a typo from allocating gigabytes.
pub const MAX_IMAGES_PER_REQUEST: usize = 64;
/// Most denoising steps one request may ask for.
pub const MAX_STEPS: usize = 1000;
/// Largest guidance scale (text or image) by magnitude: 50x what models are used with, and far
/// below where the guided prediction overflows float32 and decodes to a black image.
pub const MAX_GUIDANCE_SCALE: f32 = 1000.0;
/// Longest prompt (and negative prompt) in bytes. Text encoders read at most a few hundred tokens
/// (CLIP 77, T5 256 or 512), about 2 KiB of English, so this leaves room for any real prompt while
/// keeping a runaway one from costing seconds and gigabytes to tokenize.
pub const MAX_PROMPT_BYTES: usize = 64 * 1024;
/// Most T5 tokens an SD3 or FLUX prompt may be encoded to (`max_sequence_length`): what diffusers
/// accepts. The conditioning is allocated at this length, so an unbounded one could exhaust memory.
pub const MAX_SEQUENCE_LENGTH: usize = 512;

/// The keys [`Request::set`] takes (besides `scheduler.<key>`): the one table the C ABI, the
/// server's extra fields and the batch columns read.
pub const KEYS: &[&str] = &[
    "prompt",
    "negative_prompt",
    "steps",
    "guidance_scale",
    "width",
    "height",
    "seed",
    "num_images",
    "scheduler",
    "eta",
    "rng",
    "strength",
    "image_guidance_scale",
    "plan",
    "max_sequence_length",
    "best_effort",
    "aesthetic_score",
    "negative_aesthetic_score",
    "loras",
    "lora_prompt_tags",
];

/// One request for every task: text-to-image, img2img (`init_image`), inpainting (`init_image` +
/// `mask`), instruction editing (`init_image` on an InstructPix2Pix package) and progressive plans
/// (`plan`). Fields left `None` take the package's defaults (size from the UNet's `sample_size` x
/// VAE factor or from the init image, the package's scheduler), as diffusers does.
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
    /// Source image for img2img, inpainting and instruction editing; must have the output size.
    pub init_image: Option<Image>,
    /// Source latents [1 or num_images, channels, h/f, w/f] instead of `init_image` (diffusers'
    /// 4-channel `image`): already scaled, used without the VAE encoder.
    pub init_latents: Option<ArrayD<f32>>,
    /// Inpainting mask, same size as `init_image`: white (luma >= 128) is repainted.
    pub mask: Option<Image>,
    /// How much of the init image is re-noised, in (0, 1]; `None` = diffusers' default for the task
    /// (img2img 0.8, inpainting 1.0). float64 so `steps * strength` truncates as Python does.
    pub strength: Option<f64>,
    /// InstructPix2Pix image guidance (used when >= 1 and `guidance_scale` > 1).
    pub image_guidance_scale: f32,
    /// Progressive generation: stages run in order, each over the upscaled latents of the last.
    pub plan: Option<Plan>,
    /// SDXL refiners' aesthetic-score conditioning (diffusers' defaults 6.0 and 2.5).
    pub aesthetic_score: f32,
    pub negative_aesthetic_score: f32,
    /// T5 token count of SD3 and FLUX prompts (`None`: diffusers' 256 for SD3, 512 for FLUX).
    pub max_sequence_length: Option<usize>,
    /// Remote generators: run even when the service cannot honour every field (a negative prompt,
    /// a scheduler, an exact seed or size), listing what was ignored in [`Output::metadata`],
    /// instead of refusing with `Unsupported`.
    pub best_effort: bool,
    /// The LoRA stack (adapters loaded on the pipeline, by name, with strengths); `None` = the
    /// pipeline's default stack, `Some(empty)` = no LoRA.
    pub loras: Option<Vec<LoraUse>>,
    /// Take A1111-style `<lora:name:strength>` tags out of the prompt and append them to the stack.
    pub lora_prompt_tags: bool,
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
            init_image: None,
            init_latents: None,
            mask: None,
            strength: None,
            image_guidance_scale: 1.5,
            plan: None,
            max_sequence_length: None,
            best_effort: false,
            aesthetic_score: 6.0,
            negative_aesthetic_score: 2.5,
            loras: None,
            lora_prompt_tags: false,
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

    /// Sets one field from a string key and value: the long tail of the C ABI's `dg_params_set`
    /// and of config-file style callers.
    ///
    /// Keys: `prompt`, `negative_prompt`, `steps`, `guidance_scale`, `width`, `height`, `seed`,
    /// `num_images`, `scheduler`, `eta`, `rng` (`torch` or `fast`), `strength`,
    /// `image_guidance_scale`, `plan` (plan JSON), `max_sequence_length`, `best_effort` (boolean),
    /// `aesthetic_score`, `negative_aesthetic_score`, `loras` (`name:0.8;other:-0.4`, empty = no
    /// LoRA), `lora_prompt_tags` (boolean), and `scheduler.<key>` for a
    /// diffusers scheduler_config override (value parsed as JSON, else taken as a string). Only the
    /// value's syntax is checked here; ranges are checked when the request runs.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "prompt" => self.prompt = value.to_string(),
            "negative_prompt" => self.negative_prompt = Some(value.to_string()),
            "steps" => self.steps = parse_value(key, value)?,
            "guidance_scale" => self.guidance_scale = parse_value(key, value)?,
            "width" => self.width = Some(parse_value(key, value)?),
            "height" => self.height = Some(parse_value(key, value)?),
            "seed" => self.seed = Some(parse_value(key, value)?),
            "num_images" => self.num_images = parse_value(key, value)?,
            "scheduler" => self.scheduler = Some(value.to_string()),
            "eta" => self.eta = parse_value(key, value)?,
            "rng" => self.rng = parse_value(key, value)?,
            "strength" => self.strength = Some(parse_value(key, value)?),
            "image_guidance_scale" => self.image_guidance_scale = parse_value(key, value)?,
            "plan" => self.plan = Some(Plan::from_json(value)?),
            "max_sequence_length" => self.max_sequence_length = Some(parse_value(key, value)?),
            "best_effort" => self.best_effort = crate::runtime::flag(key, value)?,
            "aesthetic_score" => self.aesthetic_score = parse_value(key, value)?,
            "negative_aesthetic_score" => self.negative_aesthetic_score = parse_value(key, value)?,
            "loras" => self.loras = Some(parse_stack(value)?),
            "lora_prompt_tags" => self.lora_prompt_tags = crate::runtime::flag(key, value)?,
            _ => match key.strip_prefix("scheduler.") {
                Some(name) if !name.is_empty() => {
                    let parsed = serde_json::from_str(value)
                        .unwrap_or_else(|_| Value::String(value.to_string()));
                    self.scheduler_overrides.insert(name.to_string(), parsed);
                }
                _ => {
                    return Err(Error::InvalidArg(format!(
                        "unknown parameter `{key}` (expected {} or \
                         scheduler.<diffusers config key>)",
                        KEYS.join(", ")
                    )))
                }
            },
        }
        Ok(())
    }

    /// The value of `key` as [`Request::set`] takes it back (numbers as JSON numbers, which
    /// round-trip exactly): what a caller forwarding a request to a server that reads request keys
    /// sends. `None` for an unset optional field, an unknown key, and `plan` (forwarded only as
    /// the plan JSON it was set from, which a request does not keep).
    pub fn value(&self, key: &str) -> Option<Value> {
        let number = |v: f32| Some(Value::from(f64::from(v)));
        match key {
            "prompt" => Some(self.prompt.clone().into()),
            "negative_prompt" => self.negative_prompt.clone().map(Value::from),
            "steps" => Some(self.steps.into()),
            "guidance_scale" => number(self.guidance_scale),
            "width" => self.width.map(Value::from),
            "height" => self.height.map(Value::from),
            "seed" => self.seed.map(Value::from),
            "num_images" => Some(self.num_images.into()),
            "scheduler" => self.scheduler.clone().map(Value::from),
            "eta" => number(self.eta),
            "rng" => Some(self.rng.as_str().into()),
            "strength" => self.strength.map(Value::from),
            "image_guidance_scale" => number(self.image_guidance_scale),
            "max_sequence_length" => self.max_sequence_length.map(Value::from),
            "best_effort" => Some(self.best_effort.into()),
            "aesthetic_score" => number(self.aesthetic_score),
            "negative_aesthetic_score" => number(self.negative_aesthetic_score),
            "loras" => self.loras.as_deref().map(|s| format_stack(s).into()),
            "lora_prompt_tags" => Some(self.lora_prompt_tags.into()),
            _ => key
                .strip_prefix("scheduler.")
                .and_then(|name| self.scheduler_overrides.get(name).cloned()),
        }
    }

    /// Whether [`Request::set`] takes `key` (one of [`KEYS`] or `scheduler.<key>`).
    pub fn is_key(key: &str) -> bool {
        KEYS.contains(&key)
            || key
                .strip_prefix("scheduler.")
                .is_some_and(|k| !k.is_empty())
    }

    /// The fields set to something only a diffusion pipeline can honour, by request key: a
    /// negative prompt, a seed, a scheduler and its overrides (`scheduler.<key>`), latents, a plan,
    /// a token limit, and the steps, scales and noise settings changed from [`Request::default`]
    /// (the defaults are what every caller sends without asking). What a remote service refuses
    /// unless [`Request::best_effort`].
    pub fn diffusion_fields(&self) -> Vec<String> {
        let defaults = Request::default();
        let mut fields: Vec<String> = [
            (
                "negative_prompt",
                self.negative_prompt
                    .as_deref()
                    .is_some_and(|p| !p.trim().is_empty()),
            ),
            ("seed", self.seed.is_some()),
            ("scheduler", self.scheduler.is_some()),
            ("steps", self.steps != defaults.steps),
            (
                "guidance_scale",
                self.guidance_scale != defaults.guidance_scale,
            ),
            ("eta", self.eta != defaults.eta),
            ("rng", self.rng != defaults.rng),
            ("strength", self.strength.is_some()),
            (
                "image_guidance_scale",
                self.image_guidance_scale != defaults.image_guidance_scale,
            ),
            ("plan", self.plan.is_some()),
            ("latents", self.latents.is_some()),
            (
                "aesthetic_score",
                self.aesthetic_score != defaults.aesthetic_score,
            ),
            (
                "negative_aesthetic_score",
                self.negative_aesthetic_score != defaults.negative_aesthetic_score,
            ),
            ("max_sequence_length", self.max_sequence_length.is_some()),
            (
                "loras",
                self.loras.as_ref().is_some_and(|s| !s.is_empty()) || self.lora_prompt_tags,
            ),
        ]
        .into_iter()
        .filter(|(_, set)| *set)
        .map(|(name, _)| name.to_string())
        .collect();
        fields.extend(
            self.scheduler_overrides
                .keys()
                .map(|k| format!("scheduler.{k}")),
        );
        fields
    }

    /// Checks everything that does not need the model; size checks happen in the pipeline.
    pub(crate) fn validate(&self) -> Result<()> {
        if let Some(stack) = &self.loras {
            check_stack(stack)?;
        }
        for (name, text) in [
            ("prompt", Some(&self.prompt)),
            ("negative_prompt", self.negative_prompt.as_ref()),
        ] {
            match text {
                Some(text) if text.len() > MAX_PROMPT_BYTES => {
                    return Err(Error::InvalidArg(format!(
                        "{name} is {} bytes, more than the {MAX_PROMPT_BYTES} accepted",
                        text.len()
                    )))
                }
                _ => {}
            }
        }
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
        for (name, scale) in [
            ("guidance_scale", self.guidance_scale),
            ("image_guidance_scale", self.image_guidance_scale),
        ] {
            if scale.is_nan() || scale.abs() > MAX_GUIDANCE_SCALE {
                return Err(Error::InvalidArg(format!(
                    "{name} must be between -{MAX_GUIDANCE_SCALE} and {MAX_GUIDANCE_SCALE}, got {scale}"
                )));
            }
        }
        if !self.eta.is_finite() || self.eta < 0.0 {
            return Err(Error::InvalidArg(format!(
                "eta must be >= 0, got {}",
                self.eta
            )));
        }
        if let Some(strength) = self.strength {
            check_strength(strength)?;
        }
        if let Some(length) = self.max_sequence_length {
            if length == 0 || length > MAX_SEQUENCE_LENGTH {
                return Err(Error::InvalidArg(format!(
                    "max_sequence_length must be between 1 and {MAX_SEQUENCE_LENGTH}, got {length}"
                )));
            }
        }
        for (name, latents) in [
            ("latents", &self.latents),
            ("init_latents", &self.init_latents),
        ] {
            if latents
                .as_ref()
                .is_some_and(|l| l.iter().any(|v| !v.is_finite()))
            {
                return Err(Error::InvalidArg(format!(
                    "{name} hold non-finite values (NaN or infinity)"
                )));
            }
        }
        if self.init_image.is_some() && self.init_latents.is_some() {
            return Err(Error::InvalidArg(
                "give either an init image or init latents, not both".into(),
            ));
        }
        if self.mask.is_some() && self.init_image.is_none() {
            return Err(Error::InvalidArg(
                "a mask needs the image it applies to (init image)".into(),
            ));
        }
        if let Some(plan) = &self.plan {
            plan.validate()?;
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

/// Parses a [`Request::set`] value, naming the key and the value when it does not parse.
fn parse_value<T>(key: &str, value: &str) -> Result<T>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    value.trim().parse().map_err(|e| {
        Error::InvalidArg(format!(
            "invalid value `{value}` for parameter `{key}`: {e}"
        ))
    })
}

/// Strength must be in (0, 1], as diffusers requires.
pub fn check_strength(strength: f64) -> Result<()> {
    if strength > 0.0 && strength <= 1.0 {
        return Ok(());
    }
    Err(Error::InvalidArg(format!(
        "strength must be in (0, 1], got {strength}"
    )))
}

/// Checks an output size against the package's multiple (with the reason it has that multiple),
/// rejecting zero and non-multiples up front rather than failing inside the graph.
pub(crate) fn check_size(width: u32, height: u32, (multiple, why): (u32, String)) -> Result<()> {
    for (name, v) in [("width", width), ("height", height)] {
        if v == 0 || v % multiple != 0 {
            return Err(Error::InvalidArg(format!(
                "{name} {v} must be a positive multiple of {multiple} ({why})"
            )));
        }
        if v > MAX_IMAGE_SIDE {
            return Err(Error::InvalidArg(format!(
                "{name} {v} is larger than {MAX_IMAGE_SIDE}"
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
    /// The plan stage running now (1-based; 1 of 1 without a plan).
    pub stage: usize,
    pub stages: usize,
    pub elapsed: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    #[test]
    fn every_listed_key_is_taken() {
        for key in KEYS {
            assert!(Request::is_key(key));
            if let Err(e) = Request::default().set(key, "1") {
                assert!(!e.to_string().contains("unknown parameter"), "{key}: {e}");
            }
        }
        assert!(Request::is_key("scheduler.timestep_spacing"));
        for key in ["scheduler.", "latents", "Prompt", "n"] {
            assert!(!Request::is_key(key), "{key}");
            let e = Request::default().set(key, "1").unwrap_err();
            assert!(e.to_string().contains("unknown parameter"), "{key}: {e}");
        }
    }

    #[test]
    fn values_set_back_to_the_same_request() {
        let mut r = Request::new("a fox");
        r.negative_prompt = Some("blur".into());
        r.guidance_scale = 0.1;
        r.eta = 1.0 / 3.0;
        r.seed = Some(u64::MAX);
        r.strength = Some(0.35);
        r.rng = RngMode::Fast;
        r.max_sequence_length = Some(77);
        r.scheduler_overrides
            .insert("use_karras_sigmas".into(), Value::Bool(true));
        let mut copy = Request::default();
        for key in KEYS.iter().copied().chain(["scheduler.use_karras_sigmas"]) {
            if let Some(value) = r.value(key) {
                let text = match value {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                copy.set(key, &text)
                    .unwrap_or_else(|e| panic!("{key}: {e}"));
            }
        }
        assert_eq!(format!("{copy:?}"), format!("{r:?}"));
    }

    #[test]
    fn set_parses_every_key() {
        let mut r = Request::default();
        for (key, value) in [
            ("prompt", "a cat"),
            ("negative_prompt", "blurry"),
            ("steps", "3"),
            ("guidance_scale", "1.5"),
            ("width", "64"),
            ("height", " 96 "),
            ("seed", "18446744073709551615"),
            ("num_images", "2"),
            ("scheduler", "euler"),
            ("eta", "0.5"),
            ("rng", "fast"),
            ("scheduler.use_karras_sigmas", "true"),
            ("scheduler.timestep_spacing", "trailing"),
            ("scheduler.steps_offset", "1"),
            ("strength", "0.7"),
            ("image_guidance_scale", "1.25"),
            ("plan", r#"{"stages": [{"width": 64, "height": 64}]}"#),
        ] {
            r.set(key, value)
                .unwrap_or_else(|e| panic!("{key}={value}: {e}"));
        }
        assert_eq!(r.prompt, "a cat");
        assert_eq!(r.negative_prompt.as_deref(), Some("blurry"));
        assert_eq!(r.steps, 3);
        assert_eq!(r.guidance_scale, 1.5);
        assert_eq!((r.width, r.height), (Some(64), Some(96)));
        assert_eq!(r.seed, Some(u64::MAX));
        assert_eq!(r.num_images, 2);
        assert_eq!(r.scheduler.as_deref(), Some("euler"));
        assert_eq!(r.eta, 0.5);
        assert_eq!(r.rng, RngMode::Fast);
        assert_eq!(
            r.scheduler_overrides["use_karras_sigmas"],
            Value::Bool(true)
        );
        assert_eq!(
            r.scheduler_overrides["timestep_spacing"],
            Value::String("trailing".into())
        );
        assert_eq!(r.scheduler_overrides["steps_offset"], Value::from(1));
        assert_eq!(r.strength, Some(0.7));
        assert_eq!(r.image_guidance_scale, 1.25);
        assert_eq!(r.plan.map(|p| p.stages.len()), Some(1));
    }

    #[test]
    fn validate_rejects_bad_edit_inputs() {
        let image = Image {
            width: 8,
            height: 8,
            pixels: vec![0; 192],
        };
        let cases: Vec<(Request, &str)> = vec![
            (
                Request {
                    strength: Some(0.0),
                    ..Request::default()
                },
                "strength must be in (0, 1]",
            ),
            (
                Request {
                    strength: Some(1.5),
                    ..Request::default()
                },
                "strength must be in (0, 1]",
            ),
            (
                Request {
                    strength: Some(f64::NAN),
                    ..Request::default()
                },
                "strength",
            ),
            (
                Request {
                    mask: Some(image.clone()),
                    ..Request::default()
                },
                "a mask needs the image",
            ),
            (
                Request {
                    init_image: Some(image),
                    init_latents: Some(ArrayD::zeros(vec![1, 4, 1, 1])),
                    ..Request::default()
                },
                "not both",
            ),
            (
                Request {
                    plan: Some(Plan { stages: vec![] }),
                    ..Request::default()
                },
                "between 1 and",
            ),
            (
                Request {
                    max_sequence_length: Some(0),
                    ..Request::default()
                },
                "max_sequence_length must be between 1 and 512, got 0",
            ),
            (
                Request {
                    max_sequence_length: Some(513),
                    ..Request::default()
                },
                "max_sequence_length must be between 1 and 512, got 513",
            ),
        ];
        for (request, needle) in cases {
            let err = request.validate().unwrap_err();
            assert_eq!(err.code(), ErrorCode::InvalidArg);
            assert!(err.to_string().contains(needle), "{err}");
        }
    }

    #[test]
    fn set_names_unknown_keys_and_bad_values() {
        let mut r = Request::default();
        for key in ["stepz", "scheduler.", "", "Steps"] {
            let err = r.set(key, "1").expect_err(key);
            assert_eq!(err.code(), ErrorCode::InvalidArg);
            assert!(err.to_string().contains(&format!("`{key}`")), "{err}");
        }
        for (key, value) in [
            ("steps", "many"),
            ("steps", "-1"),
            ("width", "1.5"),
            ("seed", "x"),
            ("guidance_scale", ""),
            ("rng", "cuda"),
        ] {
            let err = r.set(key, value).expect_err(key);
            assert_eq!(err.code(), ErrorCode::InvalidArg);
            let msg = err.to_string();
            assert!(msg.contains(key) && msg.contains(value), "{msg}");
        }
        assert_eq!(
            r.steps,
            Request::default().steps,
            "failed sets change nothing"
        );
    }
}
