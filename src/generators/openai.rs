//! OpenAI Images, and OpenAI-compatible servers (sd-server, `dg serve`), as a
//! [`super::Generator`] (contracts §1 and §5).
//!
//! **Calls.** A prompt alone is `POST {base}/images/generations` with a JSON body; a request with
//! an init image is `POST {base}/images/edits` as multipart: the image as one `image` part (several
//! images would be repeated `image[]` parts, as the official client sends them), the mask as a PNG
//! `mask` part, and every other field as a text part (`n=2`). Fields left unset are not sent.
//! `response_format` is sent only when the option is set (GPT image models always answer base64).
//! `moderation` is a generations field only, so edits leave it out.
//!
//! **Masks.** Ours is white (luma >= 128, the local pipelines' rule) where the image is repainted;
//! OpenAI repaints where the mask's alpha is 0. The mask goes out as an RGBA PNG with alpha 0
//! where ours is white and 255 elsewhere.
//!
//! **Sizes** depend on the model: gpt-image-1, -1-mini, -1.5 (and chatgpt-image-latest) make
//! 1024x1024, 1536x1024 and 1024x1536; dall-e-3 1024x1024, 1792x1024 and 1024x1792; dall-e-2 the
//! 256, 512 and 1024 squares; gpt-image-2 any multiple of 16 with a side ratio up to 3 and at most
//! 3840x2160 (either orientation). Dated snapshots (`gpt-image-1-2025-04-15`) follow their model.
//! Any other model name is an OpenAI-compatible server's: `WxH` goes through unchanged. A size
//! the model does not make is `Unsupported` naming `size` and the accepted sizes; with
//! `best_effort` the nearest size (by aspect ratio, then area) is sent and `size` is listed as
//! ignored. No width and height means `auto` for GPT image models and the service's default
//! (no `size`) for the others, which may not know `auto`.
//!
//! **Fields OpenAI cannot use.** Anything that changes a local pipeline's result and has no
//! OpenAI equivalent is refused up front with `Unsupported` naming every such field: a negative
//! prompt, a seed (OpenAI has no seeds), a scheduler or its overrides, strength, latents, a plan,
//! a token limit, and steps, guidance, eta, rng and the other scales when changed from
//! [`Request::default`] (the defaults are what every caller sends without asking, so they are
//! not a request to honour). More images than the model makes in one call (10, dall-e-3 1) are
//! refused as `num_images`. With `best_effort` all of these are ignored (`num_images` capped)
//! and listed in `metadata["ignored"]`. Init latents are refused even then: without the image
//! there is nothing to edit. The output's seed is 0 and its scheduler empty: neither was used.
//!
//! **Answers** are read while the pool classifies them, so a final failure is not retried and
//! the error carries the right attempt count: a 2xx whose body is not JSON, lacks `created` or
//! `data`, or holds an entry that is not a PNG, JPEG or WebP is a `Remote` error naming the entry
//! and the reason. `data[].url` images are downloaded afterwards (one GET each, the pool's
//! timeout, no API key: the URL may be another host's). `revised_prompt`s are kept in
//! `metadata["revised_prompts"]` (one entry per image, null where absent).
//!
//! **Errors** (`{error:{message,type,param,code}}`, sd-server's `{"error":"..."}`, or any text):
//! 429 `insufficient_quota` takes the key out of the pool's rotation; other 429s, 408, 409 and 5xx
//! are retried after `retry-after-ms`/`retry-after` or the pool's backoff; `x-should-retry`
//! overrides that; a moderation block (`moderation_blocked`, `content_policy_violation`) is
//! `Refused`; anything else is final. The error type is `type/code`, or whichever one is given.
//! Keys are scrubbed from every message a service sends.
use std::borrow::Cow;
use std::fmt;
use std::sync::Mutex;
use std::time::Instant;

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use serde_json::{Map, Value};

use super::http::{self, HttpRequest, HttpResponse, Multipart, TransportError};
use super::pool::{ApiKey, Failure, Pool, Probe, Service, Verdict};
use super::{Description, Generator, GeneratorOptions, Sizes, Task};
use crate::error::{Error, RemoteError, RemoteFailure, Result};
use crate::image::{Image, MAX_IMAGE_SIDE};
use crate::request::{Output, Progress, Request};

/// The public OpenAI API; it needs a key.
const DEFAULT_URL: &str = "https://api.openai.com/v1";
const DEFAULT_MODEL: &str = "gpt-image-1";
const SERVICE: &str = "openai";

/// The backend's own option keys, in the order their fields are sent.
const OWN_KEYS: &[&str] = &[
    "quality",
    "background",
    "output_format",
    "output_compression",
    "moderation",
    "response_format",
    "user",
];

/// The values the spec allows for the enumerated options.
const CHOICES: &[(&str, &[&str])] = &[
    (
        "quality",
        &["standard", "hd", "low", "medium", "high", "auto"],
    ),
    ("background", &["transparent", "opaque", "auto"]),
    ("output_format", &["png", "jpeg", "webp"]),
    ("moderation", &["low", "auto"]),
    ("response_format", &["url", "b64_json"]),
];

const GPT_IMAGE_SIZES: &[(u32, u32)] = &[(1024, 1024), (1536, 1024), (1024, 1536)];
const DALL_E_3_SIZES: &[(u32, u32)] = &[(1024, 1024), (1792, 1024), (1024, 1792)];
const DALL_E_2_SIZES: &[(u32, u32)] = &[(256, 256), (512, 512), (1024, 1024)];

/// gpt-image-2's free sizes: sides a multiple of 16, ratio up to 3:1, at most 3840x2160.
const GPT_IMAGE_2_MULTIPLE: u32 = 16;
const GPT_IMAGE_2_LONG: u32 = 3840;
const GPT_IMAGE_2_SHORT: u32 = 2160;
const GPT_IMAGE_2_RATIO: u32 = 3;

/// Base64 with or without padding, as some compatible servers strip it.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// What the model name says about sizes, image counts and edits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    /// gpt-image-1, -1-mini, -1.5, chatgpt-image-latest.
    GptImage,
    GptImage2,
    DallE3,
    DallE2,
    /// An OpenAI-compatible server's model: nothing is assumed.
    Other,
}

impl Family {
    fn of(model: &str) -> Family {
        // The model itself or a dated snapshot of it (`gpt-image-1-2025-04-15`).
        let is = |name: &str| {
            model
                .strip_prefix(name)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
        };
        if is("gpt-image-2") {
            Family::GptImage2
        } else if is("gpt-image-1") || is("gpt-image-1.5") || is("chatgpt-image-latest") {
            Family::GptImage
        } else if is("dall-e-3") {
            Family::DallE3
        } else if is("dall-e-2") {
            Family::DallE2
        } else {
            Family::Other
        }
    }

    fn listed(self) -> Option<&'static [(u32, u32)]> {
        match self {
            Family::GptImage => Some(GPT_IMAGE_SIZES),
            Family::DallE3 => Some(DALL_E_3_SIZES),
            Family::DallE2 => Some(DALL_E_2_SIZES),
            Family::GptImage2 | Family::Other => None,
        }
    }

    fn sizes(self) -> Sizes {
        match (self, self.listed()) {
            (_, Some(list)) => Sizes::Listed(list.to_vec()),
            // Closest of the three kinds; the ratio and the short-side limit are checked on use.
            (Family::GptImage2, None) => Sizes::Multiple {
                multiple: GPT_IMAGE_2_MULTIPLE,
                max: GPT_IMAGE_2_LONG,
                default: None,
            },
            _ => Sizes::Any,
        }
    }

    /// The most images one call makes (`n`), where known.
    fn max_images(self) -> Option<usize> {
        match self {
            Family::DallE3 => Some(1),
            Family::Other => None,
            _ => Some(10),
        }
    }

    fn edits(self) -> bool {
        self != Family::DallE3
    }

    /// GPT image models choose the size themselves on `auto`; dall-e and unknown servers may
    /// not know the word, so they get no `size` at all.
    fn knows_auto(self) -> bool {
        matches!(self, Family::GptImage | Family::GptImage2)
    }

    fn always_base64(self) -> bool {
        matches!(self, Family::GptImage | Family::GptImage2)
    }
}

/// An OpenAI image model (or an OpenAI-compatible server) behind an endpoint pool.
pub struct OpenAi {
    pool: Pool,
    model: String,
    family: Family,
    /// The own options as they are sent, in [`OWN_KEYS`] order.
    fields: Vec<(&'static str, Value)>,
    /// For `data[].url` downloads, which go to whatever host the service names.
    agent: ureq::Agent,
}

impl fmt::Debug for OpenAi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The pool prints its endpoints with keys redacted.
        f.debug_struct("OpenAi")
            .field("model", &self.model)
            .field("family", &self.family)
            .field("fields", &self.fields)
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

impl OpenAi {
    /// Reads `options`, then `DG_OPENAI_*` (API_KEY, BASE_URL, MODEL, TIMEOUT, MAX_RETRIES and the
    /// own keys: QUALITY, BACKGROUND, OUTPUT_FORMAT, OUTPUT_COMPRESSION, MODERATION,
    /// RESPONSE_FORMAT, USER).
    pub fn new(options: &GeneratorOptions) -> Result<OpenAi> {
        OpenAi::with_env(options, &|name| std::env::var(name).ok())
    }

    fn with_env(
        options: &GeneratorOptions,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<OpenAi> {
        let resolved = options.resolve(SERVICE, OWN_KEYS, DEFAULT_URL, env)?;
        if let Some(endpoint) = resolved
            .endpoints
            .iter()
            .find(|e| e.key.is_none() && is_openai_host(&e.base_url))
        {
            return Err(Error::InvalidArg(format!(
                "openai: {} needs an API key: set DG_OPENAI_API_KEY or the api_key option \
                 (only an OpenAI-compatible server's base_url may go without one)",
                endpoint.base_url
            )));
        }
        let model = resolved
            .model
            .as_deref()
            .map(str::trim)
            .unwrap_or(DEFAULT_MODEL)
            .to_string();
        if model.is_empty() || model.chars().any(char::is_control) {
            return Err(Error::InvalidArg(format!(
                "openai model `{}` is not a model name",
                model.escape_debug()
            )));
        }
        let family = Family::of(&model);
        let mut fields = Vec::new();
        for &key in OWN_KEYS {
            let Some(value) = resolved.extra(key).map(str::trim) else {
                continue;
            };
            fields.push((key, option_value(key, value)?));
        }
        if family.always_base64() && resolved.extra("response_format").is_some() {
            return Err(Error::InvalidArg(format!(
                "openai option response_format: {model} always answers in base64 and refuses \
                 the field; leave it unset (it is for dall-e models and compatible servers)"
            )));
        }
        Ok(OpenAi {
            pool: Pool::new(resolved.endpoints, resolved.pool)?,
            model,
            family,
            fields,
            agent: http::agent(),
        })
    }

    /// The HTTP call for `request`, and what it asked that is not sent.
    fn prepare(&self, request: &Request) -> Result<Prepared> {
        if request.prompt.trim().is_empty() {
            return Err(Error::InvalidArg("openai needs a prompt".into()));
        }
        if request.init_latents.is_some() {
            return Err(Error::Unsupported(
                "openai cannot use `init_latents`: it edits images; give the init image instead"
                    .into(),
            ));
        }
        if let Some(image) = &request.init_image {
            if !self.family.edits() {
                return Err(Error::Unsupported(format!(
                    "{} cannot edit images (`init_image`); use gpt-image-1 or dall-e-2",
                    self.model
                )));
            }
            if let Some(mask) = &request.mask {
                if (mask.width, mask.height) != (image.width, image.height) {
                    return Err(Error::InvalidArg(format!(
                        "the mask is {}x{} but the init image is {}x{}; they must match",
                        mask.width, mask.height, image.width, image.height
                    )));
                }
            }
        }

        let mut ignored = request.diffusion_fields();
        let mut refused: Vec<String> = ignored.iter().map(|n| format!("`{n}`")).collect();
        let n = match self.family.max_images() {
            Some(max) if request.num_images > max => {
                refused.push(format!(
                    "`num_images` {} ({} makes at most {max} per call)",
                    request.num_images, self.model
                ));
                ignored.push("num_images".into());
                max
            }
            _ => request.num_images,
        };
        let size = match requested_size(request)? {
            None => self.family.knows_auto().then(|| "auto".to_string()),
            Some(asked) => match fit_size(self.family, asked) {
                Ok((w, h)) => Some(format!("{w}x{h}")),
                Err(fit) => {
                    refused.push(format!(
                        "`size` {}x{} ({} makes {})",
                        asked.0, asked.1, self.model, fit.accepted
                    ));
                    ignored.push("size".into());
                    Some(format!("{}x{}", fit.nearest.0, fit.nearest.1))
                }
            },
        };
        if !refused.is_empty() && !request.best_effort {
            return Err(Error::Unsupported(format!(
                "openai ({}) cannot use {}; set best_effort to run without {}",
                self.model,
                refused.join(", "),
                if refused.len() == 1 { "it" } else { "them" },
            )));
        }

        let http = match &request.init_image {
            None => self.generation(request, n, size.as_deref()),
            Some(image) => self.edit(request, image, n, size.as_deref())?,
        };
        Ok(Prepared {
            http,
            ignored,
            size,
        })
    }

    fn generation(&self, request: &Request, n: usize, size: Option<&str>) -> HttpRequest {
        let mut body = Map::new();
        body.insert("model".into(), Value::from(self.model.as_str()));
        body.insert("prompt".into(), Value::from(request.prompt.as_str()));
        body.insert("n".into(), Value::from(n));
        if let Some(size) = size {
            body.insert("size".into(), Value::from(size));
        }
        for (key, value) in &self.fields {
            body.insert((*key).into(), value.clone());
        }
        HttpRequest::json("/images/generations", &Value::Object(body))
    }

    fn edit(
        &self,
        request: &Request,
        image: &Image,
        n: usize,
        size: Option<&str>,
    ) -> Result<HttpRequest> {
        let mut form = Multipart::new();
        let images = [image];
        let part = image_part_name(images.len());
        for (i, image) in images.iter().enumerate() {
            form.file(
                part,
                &format!("image-{i}.png"),
                "image/png",
                &image.encode_png(&[])?,
            );
        }
        if let Some(mask) = &request.mask {
            form.file("mask", "mask.png", "image/png", &mask_png(mask)?);
        }
        form.text("prompt", &request.prompt);
        form.text("model", &self.model);
        form.text("n", &n.to_string());
        if let Some(size) = size {
            form.text("size", size);
        }
        for (key, value) in self.fields.iter().filter(|(k, _)| *k != "moderation") {
            // Multipart scalars are text, as the official client sends them.
            match value {
                Value::String(text) => form.text(key, text),
                other => form.text(key, &other.to_string()),
            }
        }
        Ok(form.into_request("/images/edits"))
    }

    /// Fetches a `data[index].url` image. No key goes with it: the URL may name any host.
    fn download(&self, index: usize, url: &str) -> Result<Image> {
        let shown = shown_url(url);
        let failure = |kind, status, message: String| {
            Error::Remote(Box::new(RemoteError {
                kind,
                service: SERVICE.to_string(),
                endpoint: origin(url).to_string(),
                status,
                error_type: None,
                message: format!("downloading data[{index}].url {shown}: {message}"),
                attempts: 1,
            }))
        };
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(failure(
                RemoteFailure::Error,
                None,
                "not an http(s) URL".into(),
            ));
        }
        let timeout = self.pool.config().timeout;
        let response = match http::send(&self.agent, url, &[], &HttpRequest::get(""), timeout) {
            Ok(response) => response,
            Err(TransportError::Timeout) => {
                return Err(failure(
                    RemoteFailure::Timeout,
                    None,
                    format!("no answer within {:.1} s", timeout.as_secs_f64()),
                ))
            }
            Err(TransportError::Failed(reason)) => {
                return Err(failure(RemoteFailure::Error, None, reason))
            }
        };
        if !(200..300).contains(&response.status) {
            return Err(failure(
                RemoteFailure::Error,
                Some(response.status),
                format!("HTTP {}: {}", response.status, response.text_excerpt()),
            ));
        }
        Image::decode(&response.body).map_err(|e| {
            failure(
                RemoteFailure::Error,
                Some(response.status),
                format!("not an image: {}", plain_message(&e)),
            )
        })
    }
}

/// A request turned into its HTTP call.
struct Prepared {
    http: HttpRequest,
    /// Request fields not honoured (best effort).
    ignored: Vec<String>,
    /// The `size` sent, if any.
    size: Option<String>,
}

impl Generator for OpenAi {
    /// Lists the models (`GET {base}/models`): the endpoint answers and takes the key.
    fn check(&self) -> Result<String> {
        let exchange = Exchange {
            answer: Mutex::new(None),
        };
        let response = self
            .pool
            .call(&Probe(&exchange), &HttpRequest::get("/models"), &|| false)?;
        let listed = serde_json::from_slice::<Value>(&response.body)
            .ok()
            .and_then(|v| Some(v.get("data")?.as_array()?.len()));
        let endpoints: Vec<&str> = self
            .pool
            .endpoints()
            .iter()
            .map(|e| e.base_url.as_str())
            .collect();
        Ok(match listed {
            Some(n) => format!(
                "{} answers and accepts the key ({n} models listed)",
                endpoints.join(", ")
            ),
            None => format!("{} answers and accepts the key", endpoints.join(", ")),
        })
    }

    fn describe(&self) -> Description {
        let tasks = if self.family.edits() {
            vec![Task::TextToImage, Task::Edit, Task::Inpaint]
        } else {
            vec![Task::TextToImage]
        };
        Description {
            name: self.model.clone(),
            kind: SERVICE,
            tasks,
            sizes: self.family.sizes(),
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
        request.check_cancelled()?;
        let exchange = Exchange {
            answer: Mutex::new(None),
        };
        let cancelled = || request.cancel.as_ref().is_some_and(|t| t.is_cancelled());
        self.pool.call(&exchange, &prepared.http, &cancelled)?;
        let answer = exchange
            .answer
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .ok_or_else(|| Error::internal(SERVICE, "a successful answer was not kept"))?;

        let mut images = Vec::with_capacity(answer.items.len());
        for (index, item) in answer.items.into_iter().enumerate() {
            images.push(match item {
                Item::Image(image) => image,
                Item::Url(url) => {
                    request.check_cancelled()?;
                    self.download(index, &url)?
                }
            });
        }

        let mut metadata = Map::new();
        metadata.insert("model".into(), Value::from(self.model.as_str()));
        metadata.insert("created".into(), Value::from(answer.created));
        if let Some(size) = prepared.size {
            metadata.insert("size".into(), Value::from(size));
        }
        if answer.revised_prompts.iter().any(Option::is_some) {
            metadata.insert(
                "revised_prompts".into(),
                Value::from(answer.revised_prompts),
            );
        }
        if let Some(usage) = answer.usage {
            metadata.insert("usage".into(), usage);
        }
        if !prepared.ignored.is_empty() {
            metadata.insert("ignored".into(), Value::from(prepared.ignored));
        }
        let report = Progress {
            step: 1,
            total: 1,
            stage: 1,
            stages: 1,
            elapsed: started.elapsed(),
        };
        if !progress(&report) {
            return Err(Error::Cancelled);
        }
        Ok(Output::from_images(images, metadata, started.elapsed()))
    }
}

/// One call's view of the service: reads answers and keeps a successful one, decoded once while
/// the pool classifies it.
struct Exchange {
    answer: Mutex<Option<Answer>>,
}

/// A successful answer.
#[derive(Debug)]
struct Answer {
    created: i64,
    items: Vec<Item>,
    revised_prompts: Vec<Option<String>>,
    usage: Option<Value>,
}

#[derive(Debug)]
enum Item {
    Image(Image),
    Url(String),
}

impl Service for Exchange {
    fn name(&self) -> &'static str {
        SERVICE
    }

    fn auth_header(&self, key: &ApiKey) -> (&'static str, String) {
        ("authorization", format!("Bearer {}", key.expose()))
    }

    fn classify(&self, response: &HttpResponse) -> Verdict {
        match classify(response) {
            Ok(answer) => {
                *self.answer.lock().unwrap_or_else(|e| e.into_inner()) = Some(answer);
                Verdict::Success
            }
            Err(verdict) => verdict,
        }
    }
}

/// Reads one answer: a successful one decoded, else what the pool should do.
fn classify(response: &HttpResponse) -> Result<Answer, Verdict> {
    let status = response.status;
    if (200..300).contains(&status) {
        return read_answer(response).map_err(|message| {
            Verdict::Fail(Failure {
                kind: RemoteFailure::Error,
                status: Some(status),
                error_type: Some("invalid_response".into()),
                message,
            })
        });
    }
    let said = ServiceError::read(response);
    let failure = |kind| Failure {
        kind,
        status: Some(status),
        error_type: said.error_type(),
        message: said.message(),
    };
    if status == 429 && said.is("insufficient_quota") {
        // Retrying cannot help this key; the pool moves to another one.
        return Err(Verdict::KeyExhausted(failure(RemoteFailure::RateLimited)));
    }
    if (400..500).contains(&status)
        && (said.is("moderation_blocked") || said.is("content_policy_violation"))
    {
        return Err(Verdict::Fail(failure(RemoteFailure::Refused)));
    }
    let kind = if status == 429 {
        RemoteFailure::RateLimited
    } else {
        RemoteFailure::Error
    };
    let retry = match response.header("x-should-retry").map(str::trim) {
        Some(v) if v.eq_ignore_ascii_case("true") => true,
        Some(v) if v.eq_ignore_ascii_case("false") => false,
        _ => matches!(status, 408 | 409 | 429) || status >= 500,
    };
    Err(if retry {
        Verdict::Retry {
            after: response.retry_after(),
            failure: failure(kind),
        }
    } else {
        Verdict::Fail(failure(kind))
    })
}

/// Checks and decodes a 2xx body; the error says what is wrong with it.
fn read_answer(response: &HttpResponse) -> Result<Answer, String> {
    let body: Value = serde_json::from_slice(&response.body)
        .map_err(|e| format!("the answer is not JSON ({e}): {}", response.text_excerpt()))?;
    let Some(body) = body.as_object() else {
        return Err(format!(
            "the answer is not a JSON object: {}",
            response.text_excerpt()
        ));
    };
    let Some(data) = body.get("data") else {
        // Some compatible servers answer 200 with an error inside.
        if let Some(error) = body.get("error") {
            let said = ServiceError::from_value(error);
            return Err(format!(
                "the answer has no `data` but an error: {}",
                said.message()
            ));
        }
        return Err("the answer has no `data`".into());
    };
    let created = body
        .get("created")
        .and_then(|c| c.as_i64().or_else(|| c.as_f64().map(|f| f as i64)))
        .ok_or("the answer has no `created` timestamp")?;
    let data = data
        .as_array()
        .ok_or("the answer's `data` is not an array")?;
    if data.is_empty() {
        return Err("the answer's `data` holds no images".into());
    }
    let mut items = Vec::with_capacity(data.len());
    let mut revised_prompts = Vec::with_capacity(data.len());
    for (index, entry) in data.iter().enumerate() {
        let text = |key: &str| {
            entry
                .get(key)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        };
        let item = if let Some(b64) = text("b64_json") {
            let bytes = decode_base64(b64)
                .map_err(|e| format!("data[{index}].b64_json is not valid base64: {e}"))?;
            let image = Image::decode(&bytes).map_err(|e| {
                format!(
                    "data[{index}].b64_json is not an image: {}",
                    plain_message(&e)
                )
            })?;
            Item::Image(image)
        } else if let Some(url) = text("url") {
            Item::Url(url.to_string())
        } else {
            return Err(format!(
                "data[{index}] has neither `b64_json` nor `url` (keys: {})",
                entry
                    .as_object()
                    .map(|o| o.keys().cloned().collect::<Vec<_>>().join(", "))
                    .unwrap_or_else(|| "not an object".into())
            ));
        };
        items.push(item);
        revised_prompts.push(text("revised_prompt").map(str::to_string));
    }
    Ok(Answer {
        created,
        items,
        revised_prompts,
        usage: body.get("usage").filter(|u| u.is_object()).cloned(),
    })
}

fn decode_base64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    // Line-wrapped base64 is rare; copy only then.
    let text: Cow<'_, str> = if text.bytes().any(|b| b.is_ascii_whitespace()) {
        Cow::Owned(text.chars().filter(|c| !c.is_ascii_whitespace()).collect())
    } else {
        Cow::Borrowed(text)
    };
    BASE64.decode(text.as_bytes())
}

/// What a failed answer says, in any of the shapes servers use.
#[derive(Debug, Default)]
struct ServiceError {
    error_type: Option<String>,
    code: Option<String>,
    param: Option<String>,
    message: String,
}

/// Longest service message kept in an error.
const MAX_MESSAGE_CHARS: usize = 1000;

impl ServiceError {
    fn read(response: &HttpResponse) -> ServiceError {
        let parsed: Option<Value> = serde_json::from_slice(&response.body).ok();
        match parsed.as_ref().and_then(|v| v.get("error")) {
            Some(error) => ServiceError::from_value(error),
            None => {
                // FastAPI-style `{"detail": ...}` or `{"message": ...}`, else the raw text.
                let message = parsed
                    .as_ref()
                    .and_then(|v| v.get("message").or_else(|| v.get("detail")))
                    .map(|m| m.as_str().map_or_else(|| m.to_string(), str::to_string))
                    .unwrap_or_else(|| response.text_excerpt());
                ServiceError {
                    message,
                    ..ServiceError::default()
                }
            }
        }
    }

    /// `{message,type,param,code}` (OpenAI) or a plain string (sd-server).
    fn from_value(error: &Value) -> ServiceError {
        let text = |key: &str| {
            error.get(key).and_then(|v| match v {
                Value::String(s) if !s.is_empty() => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
        };
        match error {
            Value::String(message) => ServiceError {
                message: message.clone(),
                ..ServiceError::default()
            },
            Value::Object(_) => ServiceError {
                error_type: text("type"),
                code: text("code"),
                param: text("param"),
                message: text("message").unwrap_or_default(),
            },
            other => ServiceError {
                message: other.to_string(),
                ..ServiceError::default()
            },
        }
    }

    fn is(&self, name: &str) -> bool {
        self.code.as_deref() == Some(name) || self.error_type.as_deref() == Some(name)
    }

    fn error_type(&self) -> Option<String> {
        match (&self.error_type, &self.code) {
            (Some(t), Some(c)) if t != c => Some(format!("{t}/{c}")),
            (t, c) => c.clone().or_else(|| t.clone()),
        }
    }

    fn message(&self) -> String {
        let mut message = match self.message.trim() {
            "" => "(no message)".to_string(),
            m => cut(m, MAX_MESSAGE_CHARS),
        };
        if let Some(param) = &self.param {
            message.push_str(&format!(" (param `{param}`)"));
        }
        message
    }
}

fn cut(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

/// An error's text without the code's prefix (`invalid argument: `), for nesting in another.
fn plain_message(err: &Error) -> String {
    match err {
        Error::InvalidArg(message) => message.clone(),
        other => other.to_string(),
    }
}

/// The size a request asks for, `None` when it leaves it to the service.
fn requested_size(request: &Request) -> Result<Option<(u32, u32)>> {
    match (request.width, request.height) {
        (None, None) => Ok(None),
        (Some(w), Some(h)) => {
            for (name, v) in [("width", w), ("height", h)] {
                if v == 0 || v > MAX_IMAGE_SIDE {
                    return Err(Error::InvalidArg(format!(
                        "{name} {v} must be between 1 and {MAX_IMAGE_SIDE}"
                    )));
                }
            }
            Ok(Some((w, h)))
        }
        _ => Err(Error::InvalidArg(
            "width and height go together: set both, or neither for the service's default size"
                .into(),
        )),
    }
}

/// Why a size does not fit a model: what it makes, and the nearest size it does make.
#[derive(Debug, PartialEq)]
struct Misfit {
    accepted: String,
    nearest: (u32, u32),
}

/// The size to send for `asked`, or why it does not fit the model.
fn fit_size(family: Family, asked: (u32, u32)) -> Result<(u32, u32), Misfit> {
    if let Some(list) = family.listed() {
        if list.contains(&asked) {
            return Ok(asked);
        }
        let names: Vec<String> = list.iter().map(|(w, h)| format!("{w}x{h}")).collect();
        return Err(Misfit {
            accepted: format!("only {}", names.join(", ")),
            nearest: nearest_listed(list, asked),
        });
    }
    if family != Family::GptImage2 {
        return Ok(asked);
    }
    let (w, h) = asked;
    let (long, short) = (w.max(h), w.min(h));
    let fits = w % GPT_IMAGE_2_MULTIPLE == 0
        && h % GPT_IMAGE_2_MULTIPLE == 0
        && long <= GPT_IMAGE_2_RATIO * short
        && long <= GPT_IMAGE_2_LONG
        && short <= GPT_IMAGE_2_SHORT;
    if fits {
        return Ok(asked);
    }
    Err(Misfit {
        accepted: format!(
            "sides that are multiples of {GPT_IMAGE_2_MULTIPLE}, at most \
             {GPT_IMAGE_2_RATIO}:1, up to {GPT_IMAGE_2_LONG}x{GPT_IMAGE_2_SHORT}"
        ),
        nearest: nearest_free(asked),
    })
}

/// The listed size closest in aspect ratio (log scale, so 2:1 and 1:2 are equally far from 1:1),
/// then in area.
fn nearest_listed(list: &[(u32, u32)], (w, h): (u32, u32)) -> (u32, u32) {
    let ratio = (f64::from(w) / f64::from(h)).ln();
    let area = f64::from(w) * f64::from(h);
    let distance = |&(lw, lh): &(u32, u32)| {
        let r = ((f64::from(lw) / f64::from(lh)).ln() - ratio).abs();
        let a = (f64::from(lw) * f64::from(lh) - area).abs();
        (r, a)
    };
    list.iter()
        .copied()
        .min_by(|a, b| {
            distance(a)
                .partial_cmp(&distance(b))
                .unwrap_or(std::cmp::Ordering::Equal)
        })
        .unwrap_or((1024, 1024))
}

/// gpt-image-2: the ratio clamped to 3:1, scaled down into 3840x2160, sides rounded down to 16.
fn nearest_free((w, h): (u32, u32)) -> (u32, u32) {
    let m = GPT_IMAGE_2_MULTIPLE;
    let (long, short) = (f64::from(w.max(h)), f64::from(w.min(h)));
    let long = long.min(short * f64::from(GPT_IMAGE_2_RATIO));
    let scale = 1f64
        .min(f64::from(GPT_IMAGE_2_LONG) / long)
        .min(f64::from(GPT_IMAGE_2_SHORT) / short);
    let round = |v: f64| ((v / f64::from(m)).floor() as u32).max(1) * m;
    let short = round(short * scale);
    // Rounding the short side down may break the ratio; the long side follows it.
    let long = round(long * scale).min(short * GPT_IMAGE_2_RATIO);
    if w >= h {
        (long, short)
    } else {
        (short, long)
    }
}

/// The multipart name of the input images: `image` for one, repeated `image[]` for several (what
/// the official client sends; sd-server and OpenAI take both).
fn image_part_name(count: usize) -> &'static str {
    if count == 1 {
        "image"
    } else {
        "image[]"
    }
}

/// Our mask (white = repaint, PIL's luma at 128) as OpenAI's: an RGBA PNG, alpha 0 = repaint.
fn mask_png(mask: &Image) -> Result<Vec<u8>> {
    let mut rgba = Vec::with_capacity(mask.pixels.len() / 3 * 4);
    for p in mask.pixels.chunks_exact(3) {
        let luma =
            (u32::from(p[0]) * 19595 + u32::from(p[1]) * 38470 + u32::from(p[2]) * 7471 + 0x8000)
                >> 16;
        let alpha = if luma >= 128 { 0 } else { 255 };
        rgba.extend_from_slice(&[p[0], p[1], p[2], alpha]);
    }
    let png_err = |e: png::EncodingError| Error::InvalidArg(format!("mask PNG encoding: {e}"));
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, mask.width, mask.height);
        encoder.set_color(png::ColorType::Rgba);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(png_err)?;
        writer.write_image_data(&rgba).map_err(png_err)?;
        writer.finish().map_err(png_err)?;
    }
    Ok(out)
}

/// Whether `base_url` is OpenAI's public API (which always needs a key).
fn is_openai_host(base_url: &str) -> bool {
    let host = origin(base_url)
        .split("://")
        .nth(1)
        .unwrap_or_default()
        .split(':')
        .next()
        .unwrap_or_default();
    host.eq_ignore_ascii_case("api.openai.com")
}

/// `scheme://host[:port]` of a URL, for errors that must not show a signed URL's query.
fn origin(url: &str) -> &str {
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    &url[..end]
}

/// A URL without its query and fragment (signed download URLs carry their signature there).
fn shown_url(url: &str) -> String {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    if end < url.len() {
        format!("{}?...", &url[..end])
    } else {
        url.to_string()
    }
}

/// Checks one own option's value and gives it the JSON type the spec wants.
fn option_value(key: &str, value: &str) -> Result<Value> {
    if let Some((_, choices)) = CHOICES.iter().find(|(k, _)| *k == key) {
        if !choices.contains(&value) {
            return Err(Error::InvalidArg(format!(
                "openai option {key} `{value}` is not one of {}",
                choices.join(", ")
            )));
        }
        return Ok(Value::from(value));
    }
    if key == "output_compression" {
        return match value.parse::<u8>() {
            Ok(v) if v <= 100 => Ok(Value::from(v)),
            _ => Err(Error::InvalidArg(format!(
                "openai option output_compression `{value}` is not an integer from 0 to 100"
            ))),
        };
    }
    Ok(Value::from(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, body: &str, headers: &[(&str, &str)]) -> HttpResponse {
        HttpResponse {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: body.as_bytes().to_vec(),
        }
    }

    fn error_body(kind: &str, code: &str) -> String {
        serde_json::json!({"error": {"message": "m", "type": kind, "param": null, "code": code}})
            .to_string()
    }

    fn verdict(status: u16, body: &str, headers: &[(&str, &str)]) -> Verdict {
        match classify(&response(status, body, headers)) {
            Ok(_) => Verdict::Success,
            Err(v) => v,
        }
    }

    fn kind_of(v: &Verdict) -> (&'static str, RemoteFailure) {
        match v {
            Verdict::Success => ("success", RemoteFailure::Error),
            Verdict::Retry { failure, .. } => ("retry", failure.kind),
            Verdict::KeyExhausted(failure) => ("exhausted", failure.kind),
            Verdict::Fail(failure) => ("fail", failure.kind),
        }
    }

    #[test]
    fn statuses_map_to_verdicts() {
        use RemoteFailure::*;
        let quota = error_body("insufficient_quota", "insufficient_quota");
        let blocked = error_body("image_generation_user_error", "moderation_blocked");
        let policy = error_body("invalid_request_error", "content_policy_violation");
        let bad = error_body("invalid_request_error", "invalid_size");
        for (status, body, headers, want) in [
            (429, quota.as_str(), &[][..], ("exhausted", RateLimited)),
            (429, "{}", &[][..], ("retry", RateLimited)),
            (408, "", &[][..], ("retry", Error)),
            (409, "", &[][..], ("retry", Error)),
            (500, "oops", &[][..], ("retry", Error)),
            (503, "", &[][..], ("retry", Error)),
            (400, blocked.as_str(), &[][..], ("fail", Refused)),
            (400, policy.as_str(), &[][..], ("fail", Refused)),
            (400, bad.as_str(), &[][..], ("fail", Error)),
            (401, "", &[][..], ("fail", Error)),
            (404, "", &[][..], ("fail", Error)),
            (422, "", &[][..], ("fail", Error)),
            (500, "", &[("x-should-retry", "false")][..], ("fail", Error)),
            (400, "", &[("x-should-retry", "true")][..], ("retry", Error)),
            (
                429,
                "",
                &[("x-should-retry", "false")][..],
                ("fail", RateLimited),
            ),
            (200, "not json", &[][..], ("fail", Error)),
            (200, r#"{"created": 1}"#, &[][..], ("fail", Error)),
        ] {
            let v = verdict(status, body, headers);
            assert_eq!(kind_of(&v), want, "{status} {body} {headers:?}");
        }
        let Verdict::Retry { after, .. } = verdict(429, "", &[("retry-after-ms", "250")]) else {
            panic!("429 is retried");
        };
        assert_eq!(after, Some(std::time::Duration::from_millis(250)));
    }

    #[test]
    fn error_bodies_of_every_shape_are_read() {
        let openai = r#"{"error":{"message":"Invalid size","type":"invalid_request_error","param":"size","code":"invalid_size"}}"#;
        let Verdict::Fail(f) = verdict(400, openai, &[]) else {
            panic!("final");
        };
        assert_eq!(
            f.error_type.as_deref(),
            Some("invalid_request_error/invalid_size")
        );
        assert_eq!(f.message, "Invalid size (param `size`)");
        let Verdict::Fail(f) = verdict(400, r#"{"error":"bad prompt"}"#, &[]) else {
            panic!("final");
        };
        assert_eq!((f.error_type, f.message.as_str()), (None, "bad prompt"));
        let Verdict::Fail(f) = verdict(404, "<html>Not Found</html>", &[]) else {
            panic!("final");
        };
        assert_eq!(f.message, "<html>Not Found</html>");
        assert_eq!(f.status, Some(404));
        let Verdict::Fail(f) = verdict(200, r#"{"error":{"message":"queue full"}}"#, &[]) else {
            panic!("final");
        };
        assert!(
            f.message.contains("no `data` but an error: queue full"),
            "{}",
            f.message
        );
    }

    #[test]
    fn answers_are_checked_entry_by_entry() {
        let png = Image::from_raw(&[9, 8, 7], 1, 1, 3, 3)
            .unwrap()
            .encode_png(&[])
            .unwrap();
        let b64 = BASE64.encode(&png);
        let ok = format!(
            r#"{{"created":1,"data":[{{"b64_json":"{b64}","revised_prompt":"r"}},{{"url":"http://x/1.png"}}]}}"#
        );
        let answer = classify(&response(200, &ok, &[])).unwrap();
        assert_eq!(answer.created, 1);
        assert!(matches!(&answer.items[0], Item::Image(i) if i.pixels == [9, 8, 7]));
        assert!(matches!(&answer.items[1], Item::Url(u) if u == "http://x/1.png"));
        assert_eq!(answer.revised_prompts, vec![Some("r".to_string()), None]);
        // Unpadded and line-wrapped base64 still decodes.
        let wrapped = format!("{}\n{}", &b64[..10], b64[10..].trim_end_matches('='));
        let body = serde_json::json!({"created": 1, "data": [{"b64_json": wrapped}]}).to_string();
        assert!(classify(&response(200, &body, &[])).is_ok());

        for (body, needle) in [
            (r#"{"data":[]}"#.to_string(), "no `created`"),
            (r#"{"created":1,"data":[]}"#.to_string(), "holds no images"),
            (r#"{"created":1,"data":{}}"#.to_string(), "not an array"),
            (r#"{"created":1}"#.to_string(), "no `data`"),
            (r#"[1]"#.to_string(), "not a JSON object"),
            (
                r#"{"created":1,"data":[{"revised_prompt":"x"}]}"#.to_string(),
                "data[0] has neither `b64_json` nor `url` (keys: revised_prompt)",
            ),
            (
                format!(r#"{{"created":1,"data":[{{"b64_json":"{b64}"}},{{"b64_json":"!!"}}]}}"#),
                "data[1].b64_json is not valid base64",
            ),
            (
                r#"{"created":1,"data":[{"b64_json":"aGVsbG8="}]}"#.to_string(),
                "data[0].b64_json is not an image: not a PNG, JPEG or WebP image",
            ),
        ] {
            let Err(Verdict::Fail(f)) = classify(&response(200, &body, &[])) else {
                panic!("{body} is refused");
            };
            assert!(f.message.contains(needle), "{body}: {}", f.message);
            assert_eq!(f.error_type.as_deref(), Some("invalid_response"));
        }
    }

    #[test]
    fn models_say_which_sizes_they_make() {
        assert_eq!(Family::of("gpt-image-1"), Family::GptImage);
        assert_eq!(Family::of("gpt-image-1-mini"), Family::GptImage);
        assert_eq!(Family::of("gpt-image-1.5"), Family::GptImage);
        assert_eq!(Family::of("gpt-image-1-2025-04-15"), Family::GptImage);
        assert_eq!(Family::of("gpt-image-2-2026-04-21"), Family::GptImage2);
        assert_eq!(Family::of("gpt-image-10"), Family::Other);
        assert_eq!(Family::of("dall-e-3"), Family::DallE3);
        assert_eq!(Family::of("sd-turbo"), Family::Other);

        let gpt = Family::GptImage;
        assert_eq!(fit_size(gpt, (1536, 1024)), Ok((1536, 1024)));
        let misfit = fit_size(gpt, (512, 512)).unwrap_err();
        assert_eq!(misfit.nearest, (1024, 1024));
        assert!(misfit.accepted.contains("1024x1536"), "{}", misfit.accepted);
        assert_eq!(
            fit_size(gpt, (1920, 1080)).unwrap_err().nearest,
            (1536, 1024)
        );
        assert_eq!(
            fit_size(gpt, (600, 1000)).unwrap_err().nearest,
            (1024, 1536)
        );
        assert_eq!(
            fit_size(Family::DallE3, (1000, 2000)).unwrap_err().nearest,
            (1024, 1792)
        );
        assert_eq!(
            fit_size(Family::DallE2, (300, 300)).unwrap_err().nearest,
            (256, 256)
        );
        assert_eq!(fit_size(Family::Other, (77, 33)), Ok((77, 33)));

        let free = Family::GptImage2;
        assert_eq!(fit_size(free, (1536, 864)), Ok((1536, 864)));
        assert_eq!(fit_size(free, (2160, 3840)), Ok((2160, 3840)));
        for (asked, nearest) in [
            ((1000, 1000), (992, 992)),
            ((4000, 1000), (2976, 992)),
            ((3840, 3840), (2160, 2160)),
            ((100, 7000), (96, 288)),
        ] {
            let misfit = fit_size(free, asked).unwrap_err();
            assert_eq!(misfit.nearest, nearest, "{asked:?}");
            assert_eq!(
                fit_size(free, nearest),
                Ok(nearest),
                "{asked:?} -> {nearest:?}"
            );
        }
    }

    #[test]
    fn masks_become_transparent_where_ours_is_white() {
        // White, luma 127 grey (kept), pure green (luma 150: repainted), black.
        let mask = Image::from_raw(
            &[255, 255, 255, 127, 127, 127, 0, 255, 0, 0, 0, 0],
            4,
            1,
            3,
            12,
        )
        .unwrap();
        let png = mask_png(&mask).unwrap();
        let mut decoder = png::Decoder::new(std::io::Cursor::new(png))
            .read_info()
            .unwrap();
        let mut buf = vec![0; decoder.output_buffer_size().unwrap()];
        let info = decoder.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgba);
        let alpha: Vec<u8> = buf.chunks_exact(4).map(|p| p[3]).collect();
        assert_eq!(alpha, [0, 255, 0, 255]);
        assert_eq!(
            (image_part_name(1), image_part_name(3)),
            ("image", "image[]")
        );
    }

    #[test]
    fn the_public_api_needs_a_key_and_local_servers_do_not() {
        let no_env = |_: &str| None;
        let err = OpenAi::with_env(&GeneratorOptions::new(), &no_env).unwrap_err();
        assert_eq!(err.code(), crate::ErrorCode::InvalidArg);
        assert!(err.to_string().contains("DG_OPENAI_API_KEY"), "{err}");
        let env = |name: &str| {
            (name == "DG_OPENAI_BASE_URL").then(|| "http://127.0.0.1:9/v1".to_string())
        };
        let local = OpenAi::with_env(&GeneratorOptions::new(), &env).unwrap();
        assert_eq!(local.describe().name, "gpt-image-1");

        let mut options = GeneratorOptions::new();
        options.set("base_url", "http://127.0.0.1:9/v1");
        for (key, value, needle) in [
            ("quality", "ultra", "quality `ultra` is not one of"),
            ("output_compression", "101", "output_compression `101`"),
            ("response_format", "url", "always answers in base64"),
            ("model", " ", "not a model name"),
        ] {
            let mut options = options.clone();
            options.set(key, value);
            let err = OpenAi::with_env(&options, &no_env).unwrap_err();
            assert_eq!(err.code(), crate::ErrorCode::InvalidArg, "{key}");
            assert!(err.to_string().contains(needle), "{key}: {err}");
        }
    }

    #[test]
    fn urls_are_shown_without_their_signature() {
        let url = "https://files.example.com/img/1.png?sig=SECRET&se=1";
        assert_eq!(origin(url), "https://files.example.com");
        assert_eq!(shown_url(url), "https://files.example.com/img/1.png?...");
        assert!(is_openai_host("https://API.openai.com:443/v1"));
        assert!(!is_openai_host("https://api.openai.com.evil.example/v1"));
    }
}
