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
//! takes the key out of the pool's rotation; 408, 500, 502, 503 and 504 are retried (the statuses
//! google-genai retries); any other status is final, with the service's `status`
//! (`INVALID_ARGUMENT`) as the error type. Keys are scrubbed from every message a service sends.
use std::sync::Mutex;
use std::time::Instant;

use base64::engine::general_purpose::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use serde_json::{json, Map, Value};

use super::http::{HttpRequest, HttpResponse};
use super::pool::{ApiKey, Failure, Pool, Probe, Service, Verdict};
use super::{Description, Generator, GeneratorOptions, Sizes, Task};
use crate::error::{Error, RemoteFailure, Result};
use crate::image::Image;
use crate::request::{Output, Progress, Request};

/// The public Gemini API; it needs a key.
const DEFAULT_URL: &str = "https://generativelanguage.googleapis.com";
const DEFAULT_MODEL: &str = "gemini-2.5-flash-image";
/// google-genai 2.x's default; 3.x moved to v1, and both serve generateContent.
const DEFAULT_API_VERSION: &str = "v1beta";
const OWN_KEYS: &[&str] = &[
    "api_version",
    "aspect_ratio",
    "image_size",
    "response_modalities",
];

/// The ratios the SDK documents, as (width, height) terms; 21:9 is not reduced on purpose, so the
/// text sent is the one the API knows.
const ASPECT_RATIOS: &[(u32, u32)] = &[
    (1, 1),
    (2, 3),
    (3, 2),
    (3, 4),
    (4, 3),
    (9, 16),
    (16, 9),
    (21, 9),
];

/// Finish reasons that mean a safety or policy system withheld the image.
const REFUSAL_REASONS: &[&str] = &[
    "SAFETY",
    "IMAGE_SAFETY",
    "PROHIBITED_CONTENT",
    "IMAGE_PROHIBITED_CONTENT",
    "RECITATION",
    "IMAGE_RECITATION",
    "BLOCKLIST",
    "SPII",
];

/// Decodes base64 with or without padding (the API pads; proxies sometimes strip it).
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

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
        let resolved = options.resolve("gemini", OWN_KEYS, DEFAULT_URL, env)?;
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
        let (ratio, size) = request_image_config(request, &mut ignored)?;
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
                "inlineData": { "mimeType": "image/png", "data": STANDARD.encode(png) }
            }));
        }
        let mut generation_config = json!({ "responseModalities": self.response_modalities });
        let mut image_config = Map::new();
        if let Some(ratio) = &aspect_ratio {
            image_config.insert("aspectRatio".into(), Value::from(ratio.as_str()));
        }
        if let Some(size) = &image_size {
            image_config.insert("imageSize".into(), Value::from(size.as_str()));
        }
        if !image_config.is_empty() {
            generation_config["imageConfig"] = Value::Object(image_config);
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
        let call = Call {
            answer: Mutex::new(None),
        };
        let path = format!("/{}/models/{}", self.api_version, self.model);
        self.pool
            .call(&Probe(&call), &HttpRequest::get(path), &|| false)?;
        let endpoints: Vec<&str> = self
            .pool
            .endpoints()
            .iter()
            .map(|e| e.base_url.as_str())
            .collect();
        Ok(format!(
            "{} answers, accepts the key and serves {}",
            endpoints.join(", "),
            self.model
        ))
    }

    fn describe(&self) -> Description {
        Description {
            name: self.model.clone(),
            kind: "gemini",
            tasks: vec![Task::TextToImage, Task::Edit],
            // Aspect ratios and size tiers, not pixel sizes (see the module notes).
            sizes: Sizes::Any,
            honours_seed: false,
            negative_prompt: false,
        }
    }

    fn generate(
        &self,
        request: &Request,
        progress: &mut dyn FnMut(&Progress) -> bool,
    ) -> Result<Output> {
        let started = Instant::now();
        request.validate()?;
        let prepared = self.prepare(request)?;
        let cancelled = || request.cancel.as_ref().is_some_and(|t| t.is_cancelled());
        let total = request.num_images;
        let mut images = Vec::with_capacity(total);
        let mut texts = Vec::new();
        let mut model_version = None;
        for index in 0..total {
            request.check_cancelled()?;
            let call = Call {
                answer: Mutex::new(None),
            };
            if let Err(mut err) = self.pool.call(&call, &prepared.http, &cancelled) {
                // Which call failed matters when earlier images already succeeded.
                if let (Error::Remote(remote), true) = (&mut err, total > 1) {
                    remote.message = format!("image {} of {total}: {}", index + 1, remote.message);
                }
                return Err(err);
            }
            let answer = call
                .answer
                .into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .ok_or_else(|| Error::internal("gemini", "a successful answer was not kept"))?;
            images.push(answer.image);
            texts.extend(answer.text);
            model_version = answer.model_version.or(model_version);
            let report = Progress {
                step: index + 1,
                total,
                stage: 1,
                stages: 1,
                elapsed: started.elapsed(),
            };
            if !progress(&report) {
                return Err(Error::Cancelled);
            }
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
        if !prepared.ignored.is_empty() {
            metadata.insert("ignored".into(), Value::from(prepared.ignored));
        }
        Ok(Output::from_images(images, metadata, started.elapsed()))
    }
}

/// One call's view of the service: reads answers and keeps the decoded image of a successful one,
/// so it is decoded once, while the pool classifies it.
struct Call {
    answer: Mutex<Option<Answer>>,
}

/// What a successful answer holds.
#[derive(Debug)]
struct Answer {
    image: Image,
    text: Vec<String>,
    model_version: Option<String>,
}

impl Service for Call {
    fn name(&self) -> &'static str {
        "gemini"
    }

    fn auth_header(&self, key: &ApiKey) -> (&'static str, String) {
        ("x-goog-api-key", key.expose().to_string())
    }

    fn classify(&self, response: &HttpResponse) -> Verdict {
        match read(response) {
            Ok(answer) => {
                *self.answer.lock().unwrap_or_else(|e| e.into_inner()) = Some(answer);
                Verdict::Success
            }
            Err(verdict) => verdict,
        }
    }
}

/// Reads an answer: the image of a successful one, else the pool's verdict.
fn read(response: &HttpResponse) -> Result<Answer, Verdict> {
    if !(200..300).contains(&response.status) {
        return Err(classify_error(response));
    }
    let fail = |kind, error_type: &str, message: String| {
        Verdict::Fail(Failure {
            kind,
            status: Some(response.status),
            error_type: Some(error_type.to_string()),
            message,
        })
    };
    let body: Value = serde_json::from_slice(&response.body).map_err(|e| {
        fail(
            RemoteFailure::Error,
            "invalid_response",
            format!("the answer is not JSON ({e}): {}", excerpt(response)),
        )
    })?;
    let candidate = body
        .get("candidates")
        .and_then(Value::as_array)
        .and_then(|c| c.first());
    let Some(candidate) = candidate else {
        let feedback = field(&body, "promptFeedback", "prompt_feedback");
        let reason = feedback.and_then(|f| text_field(f, "blockReason", "block_reason"));
        return Err(match reason {
            Some(reason) => {
                let detail = feedback
                    .and_then(|f| text_field(f, "blockReasonMessage", "block_reason_message"))
                    .map_or(String::new(), |m| format!(": {m}"));
                fail(
                    RemoteFailure::Refused,
                    reason,
                    format!("the prompt was blocked (blockReason {reason}){detail}"),
                )
            }
            None => fail(
                RemoteFailure::Error,
                "no_candidates",
                format!(
                    "the answer has neither candidates nor a block reason: {}",
                    excerpt(response)
                ),
            ),
        });
    };
    let (image, text) = read_candidate(candidate, &fail)?;
    Ok(Answer {
        image,
        text,
        model_version: text_field(&body, "modelVersion", "model_version").map(str::to_string),
    })
}

/// The image and text of a candidate, or why it has no usable image.
fn read_candidate(
    candidate: &Value,
    fail: &dyn Fn(RemoteFailure, &str, String) -> Verdict,
) -> Result<(Image, Vec<String>), Verdict> {
    let finish = text_field(candidate, "finishReason", "finish_reason").unwrap_or("");
    let mut text = Vec::new();
    let mut inline = None;
    let parts = candidate
        .get("content")
        .and_then(|c| c.get("parts"))
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    // Thinking models send draft images and notes marked `thought`; only the answer counts.
    for part in parts
        .iter()
        .filter(|p| p.get("thought") != Some(&Value::Bool(true)))
    {
        if let Some(t) = part.get("text").and_then(Value::as_str) {
            text.push(t.to_string());
        }
        if inline.is_none() {
            inline = field(part, "inlineData", "inline_data");
        }
    }
    // What the service said besides the reason, for the error message.
    let said = || {
        let mut said = text_field(candidate, "finishMessage", "finish_message")
            .map_or(String::new(), |m| format!(": {m}"));
        let blocked = blocked_categories(candidate);
        if !blocked.is_empty() {
            said.push_str(&format!(" (blocked: {})", blocked.join(", ")));
        }
        let words = text.join(" ");
        if !words.trim().is_empty() {
            said.push_str(&format!("; the model said: {}", cut(words.trim(), 300)));
        }
        said
    };
    if REFUSAL_REASONS.contains(&finish) {
        return Err(fail(
            RemoteFailure::Refused,
            finish,
            format!("the image was withheld (finishReason {finish}){}", said()),
        ));
    }
    let Some(inline) = inline else {
        let (reason, shown) = match finish {
            "" => ("no_image", "missing"),
            finish => (finish, finish),
        };
        return Err(fail(
            RemoteFailure::Error,
            reason,
            format!("the answer has no image (finishReason {shown}){}", said()),
        ));
    };
    let mime = text_field(inline, "mimeType", "mime_type").unwrap_or("no mimeType");
    let data = inline.get("data").and_then(Value::as_str).unwrap_or("");
    let bytes = BASE64.decode(data.trim()).map_err(|e| {
        fail(
            RemoteFailure::Error,
            "invalid_image",
            format!("the inlineData ({mime}) is not valid base64: {e}"),
        )
    })?;
    let image = Image::decode(&bytes).map_err(|e| {
        fail(
            RemoteFailure::Error,
            "invalid_image",
            format!(
                "the inlineData ({mime}, {} bytes) is not a usable image: {e}",
                bytes.len()
            ),
        )
    })?;
    Ok((image, text))
}

/// The verdict on an error status: what is worth retrying, when, and what takes a key out.
fn classify_error(response: &HttpResponse) -> Verdict {
    let status = response.status;
    let body: Option<Value> = serde_json::from_slice(&response.body).ok();
    // Some Google front ends wrap the error object in a one-element array.
    let error = body
        .as_ref()
        .map(|b| b.as_array().and_then(|a| a.first()).unwrap_or(b))
        .and_then(|b| b.get("error"));
    let details = error
        .and_then(|e| e.get("details"))
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let message = error
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .filter(|m| !m.trim().is_empty())
        .map_or_else(|| excerpt(response), |m| cut(m.trim(), 1000));
    let failure = |kind| Failure {
        kind,
        status: Some(status),
        error_type: error
            .and_then(|e| e.get("status"))
            .and_then(Value::as_str)
            .map(str::to_string),
        message: message.clone(),
    };
    match status {
        429 => {
            if let Some(quota) = daily_quota(details, &message) {
                let mut failure = failure(RemoteFailure::RateLimited);
                failure.message =
                    format!("{} (quota {quota} is used up for the day)", failure.message);
                return Verdict::KeyExhausted(failure);
            }
            Verdict::Retry {
                after: retry_delay(details).or_else(|| response.retry_after()),
                failure: failure(RemoteFailure::RateLimited),
            }
        }
        408 | 500 | 502 | 503 | 504 => Verdict::Retry {
            after: retry_delay(details).or_else(|| response.retry_after()),
            failure: failure(if matches!(status, 408 | 504) {
                RemoteFailure::Timeout
            } else {
                RemoteFailure::Error
            }),
        },
        _ => Verdict::Fail(failure(RemoteFailure::Error)),
    }
}

/// The quota a 429 says is gone until tomorrow (or was never granted: a limit of 0), if any.
fn daily_quota(details: &[Value], message: &str) -> Option<String> {
    let violations = details
        .iter()
        .filter(|d| type_is(d, "google.rpc.QuotaFailure"))
        .filter_map(|d| d.get("violations").and_then(Value::as_array))
        .flatten();
    for violation in violations {
        let id = ["quotaId", "quotaMetric"]
            .iter()
            .filter_map(|k| violation.get(*k).and_then(Value::as_str))
            .find(|v| v.to_ascii_lowercase().contains("perday"));
        let zero = violation.get("quotaValue").and_then(Value::as_str) == Some("0");
        if id.is_some() || zero {
            let name = id
                .or_else(|| violation.get("quotaId").and_then(Value::as_str))
                .unwrap_or("with a limit of 0");
            return Some(name.to_string());
        }
    }
    let lower = message.to_ascii_lowercase();
    (lower.contains("per day") || lower.contains("perday")).then(|| "per day".to_string())
}

/// `RetryInfo.retryDelay`, a protobuf Duration in JSON (`"37s"`, `"1.5s"`).
fn retry_delay(details: &[Value]) -> Option<std::time::Duration> {
    details
        .iter()
        .filter(|d| type_is(d, "google.rpc.RetryInfo"))
        .filter_map(|d| d.get("retryDelay").and_then(Value::as_str))
        .find_map(parse_duration)
}

fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let seconds: f64 = text.trim().strip_suffix('s')?.trim().parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| std::time::Duration::from_secs_f64(seconds))
}

/// Whether a `details` entry has the given protobuf type (`type.googleapis.com/<name>`).
fn type_is(detail: &Value, name: &str) -> bool {
    detail
        .get("@type")
        .and_then(Value::as_str)
        .is_some_and(|t| t.rsplit('/').next() == Some(name))
}

/// The safety categories a candidate reports as blocked.
fn blocked_categories(candidate: &Value) -> Vec<&str> {
    field(candidate, "safetyRatings", "safety_ratings")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .filter(|r| r.get("blocked") == Some(&Value::Bool(true)))
        .filter_map(|r| r.get("category").and_then(Value::as_str))
        .collect()
}

/// A field by its JSON (camelCase) name or the Python SDK's snake_case one.
fn field<'v>(value: &'v Value, camel: &str, snake: &str) -> Option<&'v Value> {
    value.get(camel).or_else(|| value.get(snake))
}

fn text_field<'v>(value: &'v Value, camel: &str, snake: &str) -> Option<&'v str> {
    field(value, camel, snake)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn excerpt(response: &HttpResponse) -> String {
    let text = response.text_excerpt();
    if text.is_empty() {
        format!("HTTP {} with an empty body", response.status)
    } else {
        text
    }
}

/// `text` cut to `max` characters, marked when cut.
fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

/// The aspect ratio and size tier a request's width and height ask for (see the module notes);
/// `size` is pushed to `ignored` where best effort had to bend them.
fn request_image_config(
    request: &Request,
    ignored: &mut Vec<String>,
) -> Result<(Option<String>, Option<String>)> {
    let supported = || {
        ASPECT_RATIOS
            .iter()
            .map(|(a, b)| format!("{a}:{b}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match (request.width, request.height) {
        (None, None) => Ok((None, None)),
        (Some(0), _) | (_, Some(0)) => Err(Error::InvalidArg(
            "width and height must be positive".into(),
        )),
        (Some(w), Some(h)) => {
            let exact = ASPECT_RATIOS
                .iter()
                .find(|(a, b)| u64::from(w) * u64::from(*b) == u64::from(h) * u64::from(*a));
            let (a, b) = match exact {
                Some(ratio) => *ratio,
                None if request.best_effort => {
                    ignored.push("size".into());
                    nearest_ratio(w, h)
                }
                None => {
                    let (a, b) = nearest_ratio(w, h);
                    return Err(Error::Unsupported(format!(
                        "`size` {w}x{h}: gemini takes an aspect ratio ({}), and {w}:{h} is none \
                         of them (the nearest is {a}:{b}; set best_effort to use it)",
                        supported()
                    )));
                }
            };
            Ok((Some(format!("{a}:{b}")), size_tier(w.max(h))))
        }
        (Some(side), None) | (None, Some(side)) => {
            if !request.best_effort {
                return Err(Error::Unsupported(
                    "`size`: gemini takes an aspect ratio, so give both width and height, or \
                     neither"
                        .into(),
                ));
            }
            ignored.push("size".into());
            Ok((None, size_tier(side)))
        }
    }
}

/// The supported ratio closest to w:h on a log scale (so 2:1 and 1:2 are equally far from 1:1).
fn nearest_ratio(w: u32, h: u32) -> (u32, u32) {
    let target = (f64::from(w) / f64::from(h)).ln();
    let distance = |(a, b): &(u32, u32)| (target - (f64::from(*a) / f64::from(*b)).ln()).abs();
    ASPECT_RATIOS
        .iter()
        .copied()
        .min_by(|x, y| distance(x).total_cmp(&distance(y)))
        .unwrap_or((1, 1))
}

/// The `imageSize` tier for the larger side; 1K is not sent (see the module notes).
fn size_tier(side: u32) -> Option<String> {
    match side {
        0..=1024 => None,
        1025..=2048 => Some("2K".into()),
        _ => Some("4K".into()),
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
    use std::time::Duration;

    use super::*;
    use crate::ErrorCode;

    fn response(status: u16, headers: &[(&str, &str)], body: &Value) -> HttpResponse {
        HttpResponse {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: body.to_string().into_bytes(),
        }
    }

    fn quota_error(details: Value) -> Value {
        json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
            "message": "Resource has been exhausted", "details": details}})
    }

    #[test]
    fn retry_delays_parse_protobuf_durations() {
        assert_eq!(parse_duration("37s"), Some(Duration::from_secs(37)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration(" 0.200s "), Some(Duration::from_millis(200)));
        for bad in ["37", "-1s", "NaNs", "soon", "s", ""] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn rate_limits_wait_for_retry_info_then_the_header() {
        let details = json!([{"@type": "type.googleapis.com/google.rpc.RetryInfo",
            "retryDelay": "12s"}]);
        let verdict = classify_error(&response(
            429,
            &[("retry-after", "3")],
            &quota_error(details),
        ));
        let Verdict::Retry { after, failure } = verdict else {
            panic!("{verdict:?}");
        };
        assert_eq!(after, Some(Duration::from_secs(12)));
        assert_eq!(failure.kind, RemoteFailure::RateLimited);
        assert_eq!(failure.error_type.as_deref(), Some("RESOURCE_EXHAUSTED"));

        let verdict = classify_error(&response(
            429,
            &[("retry-after", "3")],
            &quota_error(json!([])),
        ));
        assert!(
            matches!(verdict, Verdict::Retry { after: Some(d), .. } if d == Duration::from_secs(3)),
            "{verdict:?}"
        );
    }

    #[test]
    fn daily_and_zero_quotas_take_the_key_out() {
        let per_day = json!([{"@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_requests",
                "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "5s"}]);
        let zero = json!([{"@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [{"quotaId": "ImageRequestsPerMinute", "quotaValue": "0"}]}]);
        for details in [per_day, zero] {
            let verdict = classify_error(&response(429, &[], &quota_error(details)));
            let Verdict::KeyExhausted(failure) = verdict else {
                panic!("{verdict:?}");
            };
            assert_eq!(failure.kind, RemoteFailure::RateLimited);
            assert!(
                failure.message.contains("used up for the day"),
                "{failure:?}"
            );
        }
        let said = json!({"error": {"status": "RESOURCE_EXHAUSTED",
            "message": "Quota exceeded for requests per day"}});
        assert!(matches!(
            classify_error(&response(429, &[], &said)),
            Verdict::KeyExhausted(_)
        ));
        let per_minute = json!([{"@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [{"quotaId": "GenerateRequestsPerMinutePerProjectPerModel"}]}]);
        assert!(matches!(
            classify_error(&response(429, &[], &quota_error(per_minute))),
            Verdict::Retry { .. }
        ));
    }

    #[test]
    fn statuses_map_to_retry_or_final_failures() {
        for (status, retried, kind) in [
            (408, true, RemoteFailure::Timeout),
            (500, true, RemoteFailure::Error),
            (502, true, RemoteFailure::Error),
            (503, true, RemoteFailure::Error),
            (504, true, RemoteFailure::Timeout),
            (400, false, RemoteFailure::Error),
            (403, false, RemoteFailure::Error),
            (404, false, RemoteFailure::Error),
            (501, false, RemoteFailure::Error),
        ] {
            let body = json!([{"error": {"code": status, "status": "SOME_STATUS",
                "message": "said the service"}}]);
            let (failure, was_retried) = match classify_error(&response(status, &[], &body)) {
                Verdict::Retry { failure, .. } => (failure, true),
                Verdict::Fail(failure) => (failure, false),
                other => panic!("{status}: {other:?}"),
            };
            assert_eq!(was_retried, retried, "{status}");
            assert_eq!(failure.kind, kind, "{status}");
            assert_eq!(failure.status, Some(status));
            assert_eq!(failure.error_type.as_deref(), Some("SOME_STATUS"));
            assert_eq!(failure.message, "said the service");
        }
        let html = HttpResponse {
            status: 403,
            headers: Vec::new(),
            body: b"<html>Forbidden by proxy</html>".to_vec(),
        };
        let Verdict::Fail(failure) = classify_error(&html) else {
            panic!("403 is final");
        };
        assert_eq!(failure.error_type, None);
        assert!(
            failure.message.contains("Forbidden by proxy"),
            "{failure:?}"
        );
    }

    #[test]
    fn thought_parts_are_skipped_and_snake_case_accepted() {
        let png = Image {
            width: 2,
            height: 1,
            pixels: vec![255, 0, 0, 0, 0, 255],
        }
        .encode_png(&[])
        .unwrap();
        let draft = Image {
            width: 1,
            height: 1,
            pixels: vec![0, 0, 0],
        }
        .encode_png(&[])
        .unwrap();
        let body = json!({"candidates": [{"finish_reason": "STOP", "content": {"parts": [
            {"text": "thinking...", "thought": true},
            {"inline_data": {"mime_type": "image/png", "data": STANDARD.encode(&draft)},
             "thought": true},
            {"text": "Here it is"},
            {"inline_data": {"mime_type": "image/png", "data": STANDARD.encode(&png)}},
            // A second image is not asked for: the first answer image is the one.
            {"inlineData": {"mimeType": "image/png", "data": STANDARD.encode(&draft)}}
        ]}}], "modelVersion": "gemini-x"});
        let answer = read(&response(200, &[], &body)).unwrap();
        assert_eq!((answer.image.width, answer.image.height), (2, 1));
        assert_eq!(answer.text, vec!["Here it is".to_string()]);
        assert_eq!(answer.model_version.as_deref(), Some("gemini-x"));
    }

    #[test]
    fn answers_without_an_image_name_the_reason() {
        for (finish, kind) in [
            ("IMAGE_SAFETY", RemoteFailure::Refused),
            ("PROHIBITED_CONTENT", RemoteFailure::Refused),
            ("NO_IMAGE", RemoteFailure::Error),
            ("OTHER", RemoteFailure::Error),
            ("STOP", RemoteFailure::Error),
        ] {
            let body = json!({"candidates": [{"finishReason": finish,
                "content": {"parts": [{"text": "I cannot draw that"}]}}]});
            let Err(Verdict::Fail(failure)) = read(&response(200, &[], &body)) else {
                panic!("{finish} must fail");
            };
            assert_eq!(failure.kind, kind, "{finish}");
            assert_eq!(failure.error_type.as_deref(), Some(finish));
            assert!(failure.message.contains(finish), "{failure:?}");
            assert!(
                failure.message.contains("I cannot draw that"),
                "{failure:?}"
            );
        }
        let Err(Verdict::Fail(failure)) = read(&response(200, &[], &json!({}))) else {
            panic!("an empty answer must fail");
        };
        assert_eq!(failure.kind, RemoteFailure::Error);
        assert_eq!(failure.error_type.as_deref(), Some("no_candidates"));
    }

    #[test]
    fn sizes_map_to_exact_ratios_and_tiers() {
        for (w, h, ratio, tier) in [
            (1024, 1024, "1:1", None),
            (1024, 576, "16:9", None),
            (576, 1024, "9:16", None),
            (1008, 432, "21:9", None),
            (512, 768, "2:3", None),
            (2048, 1536, "4:3", Some("2K")),
            (4096, 3072, "4:3", Some("4K")),
        ] {
            let request = Request {
                width: Some(w),
                height: Some(h),
                ..Request::default()
            };
            let mut ignored = Vec::new();
            let (r, t) = request_image_config(&request, &mut ignored).unwrap();
            assert_eq!(r.as_deref(), Some(ratio), "{w}x{h}");
            assert_eq!(t.as_deref(), tier, "{w}x{h}");
            assert!(ignored.is_empty());
        }
        let mut request = Request {
            width: Some(1000),
            height: Some(700),
            ..Request::default()
        };
        let err = request_image_config(&request, &mut Vec::new()).unwrap_err();
        assert_eq!(err.code(), ErrorCode::Unsupported);
        assert!(err.to_string().contains("`size` 1000x700"), "{err}");
        assert!(err.to_string().contains("nearest is 3:2"), "{err}");
        request.best_effort = true;
        let mut ignored = Vec::new();
        let (r, _) = request_image_config(&request, &mut ignored).unwrap();
        assert_eq!(r.as_deref(), Some("3:2"));
        assert_eq!(ignored, vec!["size".to_string()]);
    }

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
