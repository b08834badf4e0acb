//! Google Gemini native image generation (`gemini-2.5-flash-image` and later image models) as a
//! [`super::Generator`]: `POST {base}/{v1beta|v1}/models/{model}:generateContent` with the key in
//! `x-goog-api-key` (contracts §2).
//!
//! **Sizes.** Gemini takes an aspect ratio and a size tier, not pixels, so [`Description::sizes`] is
//! [`Sizes::Any`]. A request's `width` x `height` becomes `imageConfig.aspectRatio`: the supported
//! ratio (1:1, 2:3, 3:2, 3:4, 4:3, 9:16, 16:9, 21:9) equal to W:H exactly (1024x576 is 16:9), else
//! `Unsupported` naming `size`; with `best_effort` the nearest ratio (by log ratio) is sent and
//! `size` is listed as ignored. The larger side picks `imageConfig.imageSize`: up to 1024 is 1K,
//! up to 2048 2K, beyond that 4K. 1K is every model's default and `gemini-2.5-flash-image` takes
//! no `imageSize` at all, so a derived 1K is not sent. The service picks the pixel dimensions
//! within the ratio; [`Output`] reports the size it returned. The `aspect_ratio` and `image_size`
//! options win over the request's size and are sent as given (newer models accept more values).
//! Width and height go together: one without the other is `Unsupported` (`size`).
//!
//! **Several images.** Gemini returns one image per call, so `num_images = n` makes n calls one
//! after another (what a caller asking for n images expects); progress is reported after each,
//! and cancellation is checked before each.
//!
//! **Fields Gemini cannot use.** Anything that changes a local pipeline's result and has no Gemini
//! equivalent — a negative prompt, a seed, a scheduler (or its overrides), steps, guidance and
//! the other scales changed from [`Request::default`], strength, a mask (Gemini has no mask
//! input), latents, init latents, a plan, a token limit — is refused up front with `Unsupported`
//! naming every such field, before any call; with `best_effort` they are ignored and listed in
//! `metadata["ignored"]`. The output's seed is 0 and its scheduler empty: neither was used.
//!
//! **Answers.** The first non-thought `inlineData` part of the first candidate is the image
//! (`inline_data`/`mime_type` spellings accepted, as the Python SDK sends them); text parts go to
//! `metadata["text"]`. Everything that decides the outcome is read while the pool classifies the
//! answer, so a final failure is never retried and the error carries the right attempt count:
//! - a blocked prompt (no candidates, `promptFeedback.blockReason`) is `Refused`;
//! - a candidate stopped by a safety or policy reason (SAFETY, IMAGE_SAFETY, PROHIBITED_CONTENT,
//!   IMAGE_PROHIBITED_CONTENT, RECITATION, IMAGE_RECITATION, BLOCKLIST, SPII) is `Refused`;
//! - a candidate without an image for any other reason (NO_IMAGE, IMAGE_OTHER, OTHER, MAX_TOKENS,
//!   STOP with text only) is a `Remote` error carrying the finish reason and the model's text: no
//!   safety system said no, so `Refused` would send the caller rewording a harmless prompt;
//! - unparsable JSON, bad base64 or bytes that are not a PNG, JPEG or WebP are `Remote` errors.
//!
//! **Errors** (`{error:{code,message,status,details}}`): 429 is retried after
//! `RetryInfo.retryDelay` (else `retry-after`), except a daily quota (a `QuotaFailure` violation
//! whose quota id or metric says `PerDay`, a quota of 0, or a message saying "per day"), which
//! takes the key out of the pool's rotation, as does a refused key (401, 403, or 400 whose
//! `ErrorInfo` reason is `API_KEY_INVALID`; alone, the service's error is reported); 408, 500,
//! 502, 503 and 504 are retried (the statuses google-genai retries); any other status is final,
//! with the service's `status`
//! (`INVALID_ARGUMENT`) as the error type. Keys are scrubbed from every message a service sends.
use std::time::Instant;

use serde_json::{json, Map, Value};

use super::http::HttpRequest;
use super::pool::{ApiKey, Pool, Probe};
use super::remote::{self, Exchange};
use super::{Description, Generator, GeneratorOptions, Sizes, Task};
use crate::error::{Error, Result};
use crate::request::{Output, Progress, Request};

mod answer;
mod errors;
mod sizes;

/// The public Gemini API; it needs a key.
const DEFAULT_URL: &str = "https://generativelanguage.googleapis.com";
const DEFAULT_MODEL: &str = "gemini-2.5-flash-image";
const SERVICE: &str = "gemini";
/// google-genai 2.x's default; 3.x moved to v1, and both serve generateContent.
const DEFAULT_API_VERSION: &str = "v1beta";
const OWN_KEYS: &[&str] = &[
    "api_version",
    "aspect_ratio",
    "image_size",
    "response_modalities",
];

/// A Gemini image model behind an endpoint pool.
#[derive(Debug)]
pub struct Gemini {
    pool: Pool,
    model: String,
    api_version: String,
    /// The `aspect_ratio` and `image_size` options, which win over the request's size.
    aspect_ratio: Option<String>,
    image_size: Option<String>,
    response_modalities: Vec<String>,
}

impl Gemini {
    /// Reads `options`, then `DG_GEMINI_*` (API_KEY, BASE_URL, MODEL, TIMEOUT, MAX_RETRIES and
    /// the own keys: API_VERSION, ASPECT_RATIO, IMAGE_SIZE, RESPONSE_MODALITIES).
    pub fn new(options: &GeneratorOptions) -> Result<Gemini> {
        Gemini::with_env(options, &|name| std::env::var(name).ok())
    }

    fn with_env(
        options: &GeneratorOptions,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Gemini> {
        let resolved = options.resolve(SERVICE, OWN_KEYS, DEFAULT_URL, env)?;
        if resolved
            .endpoints
            .iter()
            .any(|e| e.key.is_none() && e.base_url == DEFAULT_URL)
        {
            return Err(Error::InvalidArg(format!(
                "gemini: {DEFAULT_URL} needs an API key: set the api_key option or \
                 DG_GEMINI_API_KEY"
            )));
        }
        let api_version = match resolved.extra("api_version").map(str::trim) {
            None => DEFAULT_API_VERSION.to_string(),
            Some(v @ ("v1" | "v1beta")) => v.to_string(),
            Some(other) => {
                return Err(Error::InvalidArg(format!(
                    "gemini option api_version `{other}` is not v1beta or v1"
                )))
            }
        };
        let model = model_name(resolved.model.as_deref().unwrap_or(DEFAULT_MODEL))?;
        let text_option = |key: &str, upper: bool| {
            resolved.extra(key).map(str::trim).map(|v| {
                if upper {
                    v.to_ascii_uppercase()
                } else {
                    v.to_string()
                }
            })
        };
        let response_modalities = match text_option("response_modalities", true) {
            Some(list) => modalities(&list)?,
            None => vec!["TEXT".to_string(), "IMAGE".to_string()],
        };
        Ok(Gemini {
            aspect_ratio: text_option("aspect_ratio", false),
            // The API spells tiers with a capital K; `2k` is an easy typo to forgive.
            image_size: text_option("image_size", true),
            pool: Pool::new(resolved.endpoints, resolved.pool)?,
            model,
            api_version,
            response_modalities,
        })
    }

    /// The body every call of `request` sends, what the request asked that is not sent, and the
    /// image config chosen.
    fn prepare(&self, request: &Request) -> Result<Prepared> {
        let mut ignored = request.diffusion_fields();
        // Gemini has no mask input, and init latents are not an image it could edit.
        for (name, set) in [
            ("mask", request.mask.is_some()),
            ("init_latents", request.init_latents.is_some()),
        ] {
            if set {
                ignored.push(name.to_string());
            }
        }
        if !ignored.is_empty() && !request.best_effort {
            let names: Vec<String> = ignored.iter().map(|n| format!("`{n}`")).collect();
            return Err(Error::Unsupported(format!(
                "gemini cannot use {} (set best_effort to run without {})",
                names.join(", "),
                if names.len() == 1 { "it" } else { "them" }
            )));
        }
        let (ratio, size) = sizes::request_image_config(request, &mut ignored)?;
        let aspect_ratio = self.aspect_ratio.clone().or(ratio);
        let image_size = self.image_size.clone().or(size);

        if request.prompt.trim().is_empty() && request.init_image.is_none() {
            return Err(Error::InvalidArg(
                "gemini needs a prompt (or an init image to edit)".into(),
            ));
        }
        let mut parts = Vec::new();
        if !request.prompt.is_empty() {
            parts.push(json!({ "text": request.prompt }));
        }
        if let Some(image) = &request.init_image {
            let png = image.encode_png(&[])?;
            parts.push(json!({
                "inlineData": { "mimeType": "image/png", "data": remote::encode_base64(&png) }
            }));
        }
        let mut generation_config = json!({ "responseModalities": self.response_modalities });
        if let Some(image_config) =
            sizes::image_config(aspect_ratio.as_deref(), image_size.as_deref())
        {
            generation_config["imageConfig"] = image_config;
        }
        let body = json!({
            "contents": [{ "role": "user", "parts": parts }],
            "generationConfig": generation_config,
        });
        Ok(Prepared {
            http: HttpRequest::json(
                format!(
                    "/{}/models/{}:generateContent",
                    self.api_version, self.model
                ),
                &body,
            ),
            ignored,
            aspect_ratio,
            image_size,
        })
    }

    /// One call's exchange with the service: the key in `x-goog-api-key`, answers read by
    /// [`answer::read`].
    fn exchange(&self) -> Exchange<answer::Answer> {
        Exchange::new(SERVICE, goog_api_key, answer::read)
    }
}

fn goog_api_key(key: &ApiKey) -> (&'static str, String) {
    ("x-goog-api-key", key.expose().to_string())
}

struct Prepared {
    http: HttpRequest,
    ignored: Vec<String>,
    aspect_ratio: Option<String>,
    image_size: Option<String>,
}

impl Generator for Gemini {
    /// Looks the model up (`GET {base}/{version}/models/{model}`): the endpoint answers, takes
    /// the key and knows the model.
    fn check(&self) -> Result<String> {
        let path = format!("/{}/models/{}", self.api_version, self.model);
        self.pool
            .call(&Probe(&self.exchange()), &HttpRequest::get(path), &|| false)?;
        Ok(format!(
            "{} answers, accepts the key and serves {}",
            remote::base_urls(&self.pool),
            self.model
        ))
    }

    fn describe(&self) -> Description {
        let tasks = vec![Task::TextToImage, Task::Edit];
        // Aspect ratios and size tiers, not pixel sizes (see the module notes).
        remote::description(&self.model, SERVICE, tasks, Sizes::Any)
    }

    fn generate(
        &self,
        request: &Request,
        progress: &mut dyn FnMut(&Progress) -> bool,
    ) -> Result<Output> {
        let started = Instant::now();
        request.validate()?;
        let prepared = self.prepare(request)?;
        let cancelled = || request.check_cancelled().is_err();
        let total = request.num_images;
        let mut images = Vec::with_capacity(total);
        let mut texts = Vec::new();
        let mut model_version = None;
        for index in 0..total {
            request.check_cancelled()?;
            let exchange = self.exchange();
            if let Err(mut err) = self.pool.call(&exchange, &prepared.http, &cancelled) {
                // Which call failed matters when earlier images already succeeded.
                if let (Error::Remote(remote), true) = (&mut err, total > 1) {
                    remote.message = format!("image {} of {total}: {}", index + 1, remote.message);
                }
                return Err(err);
            }
            let answer = exchange.into_answer()?;
            images.push(answer.image);
            texts.extend(answer.text);
            model_version = answer.model_version.or(model_version);
            remote::report(progress, index + 1, total, started)?;
        }

        let mut metadata = Map::new();
        metadata.insert("model".into(), Value::from(self.model.as_str()));
        if let Some(version) = model_version {
            metadata.insert("model_version".into(), Value::from(version));
        }
        if let Some(ratio) = prepared.aspect_ratio {
            metadata.insert("aspect_ratio".into(), Value::from(ratio));
        }
        if let Some(size) = prepared.image_size {
            metadata.insert("image_size".into(), Value::from(size));
        }
        if !texts.is_empty() {
            metadata.insert("text".into(), Value::from(texts));
        }
        Ok(remote::output(images, metadata, prepared.ignored, started))
    }
}

/// A model id as it goes in the URL path: `models/` prefix optional, nothing that would change
/// the path.
fn model_name(model: &str) -> Result<String> {
    let name = model.trim();
    let name = name.strip_prefix("models/").unwrap_or(name);
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    {
        return Err(Error::InvalidArg(format!(
            "gemini model `{model}` is not a model id (letters, digits, '-', '.', '_')"
        )));
    }
    Ok(name.to_string())
}

/// `response_modalities`: a comma-separated list of TEXT and IMAGE that includes IMAGE.
fn modalities(list: &str) -> Result<Vec<String>> {
    let items: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if let Some(bad) = items
        .iter()
        .find(|m| !matches!(m.as_str(), "TEXT" | "IMAGE"))
    {
        return Err(Error::InvalidArg(format!(
            "gemini response_modalities: `{bad}` is not TEXT or IMAGE"
        )));
    }
    if !items.iter().any(|m| m == "IMAGE") {
        return Err(Error::InvalidArg(format!(
            "gemini response_modalities `{list}` must include IMAGE, or no image comes back"
        )));
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    #[test]
    fn the_public_api_needs_a_key_and_options_are_checked() {
        let env = |_: &str| None;
        let err = Gemini::with_env(&GeneratorOptions::new(), &env).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidArg);
        assert!(err.to_string().contains("DG_GEMINI_API_KEY"), "{err}");

        let env_key = |name: &str| (name == "DG_GEMINI_API_KEY").then(|| "g-env".to_string());
        let gemini = Gemini::with_env(&GeneratorOptions::new(), &env_key).unwrap();
        assert_eq!(gemini.api_version, "v1beta");
        assert_eq!(gemini.model, DEFAULT_MODEL);
        assert_eq!(gemini.response_modalities, vec!["TEXT", "IMAGE"]);
        assert!(!format!("{gemini:?}").contains("g-env"));

        for (key, value, needle) in [
            ("api_version", "v2", "api_version `v2`"),
            ("model", "a/../b", "model `a/../b`"),
            ("response_modalities", "TEXT", "must include IMAGE"),
            ("response_modalities", "IMAGE,AUDIO", "`AUDIO`"),
            ("style", "vivid", "unknown gemini option `style`"),
        ] {
            let mut options = GeneratorOptions::new();
            options.set(key, value);
            let err = Gemini::with_env(&options, &env_key).unwrap_err();
            assert_eq!(err.code(), ErrorCode::InvalidArg, "{key}");
            assert!(err.to_string().contains(needle), "{key}: {err}");
        }
        let mut options = GeneratorOptions::new();
        options
            .set("model", "models/gemini-3-pro-image-preview")
            .set("response_modalities", "image")
            .set("image_size", "2k");
        let gemini = Gemini::with_env(&options, &env_key).unwrap();
        assert_eq!(gemini.model, "gemini-3-pro-image-preview");
        assert_eq!(gemini.response_modalities, vec!["IMAGE"]);
        assert_eq!(gemini.image_size.as_deref(), Some("2K"));
    }
}
