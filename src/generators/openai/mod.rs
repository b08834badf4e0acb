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
//! `data`, holds more entries than the `n` sent, or holds an entry that is not a PNG, JPEG or
//! WebP is a `Remote` error naming the entry (or the counts) and the reason. The answer's images
//! may hold 64 Mpx per image asked for in all (`answer::MAX_PIXELS_PER_IMAGE`), counted from
//! their headers before anything is decoded. `data[].url` images are downloaded afterwards (one
//! GET each, the pool's timeout, no API key: the URL may be another host's), within what is left
//! of that budget. `revised_prompt`s are kept in
//! `metadata["revised_prompts"]` (one entry per image, null where absent).
//!
//! **Errors** (`{error:{message,type,param,code}}`, sd-server's `{"error":"..."}`, or any text):
//! 429 `insufficient_quota` and 401 or 403 (a wrong or unauthorised key) take the key out of the
//! pool's rotation (alone, the service's error is reported); other 429s, 408, 409 and 5xx
//! are retried after `retry-after-ms`/`retry-after` or the pool's backoff; `x-should-retry`
//! overrides that; a moderation block (`moderation_blocked`, `content_policy_violation`) is
//! `Refused`; anything else is final. The error type is `type/code`, or whichever one is given.
//! Keys are scrubbed from every message a service sends.
use std::fmt;
use std::time::Instant;

use serde_json::{Map, Value};

use self::answer::Item;
use self::sizes::{fit_size, requested_size, Family};
use super::http::{self, HttpRequest, Multipart};
use super::pool::{ApiKey, Pool, Probe};
use super::remote;
use super::{Description, Generator, GeneratorOptions, Task};
use crate::error::{Error, Result};
use crate::image::Image;
use crate::request::{Output, Progress, Request};

pub(crate) mod answer;
mod download;
mod sizes;

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

/// Options that change how requests are sent rather than adding a field: `diffusion_fields`
/// (boolean) sends the request's diffusion fields (seed, steps, negative prompt, scheduler ...) by
/// their request keys, for OpenAI-compatible servers that read them, such as `dg serve`.
const SETTINGS: &[&str] = &["diffusion_fields"];

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

/// An OpenAI image model (or an OpenAI-compatible server) behind an endpoint pool.
pub struct OpenAi {
    pool: Pool,
    model: String,
    family: Family,
    /// The own options as they are sent, in [`OWN_KEYS`] order.
    fields: Vec<(&'static str, Value)>,
    /// For `data[].url` downloads, which go to whatever host the service names.
    agent: ureq::Agent,
    /// Send diffusion fields instead of refusing them (the `diffusion_fields` option).
    diffusion_fields: bool,
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
        let keys: Vec<&str> = OWN_KEYS.iter().chain(SETTINGS).copied().collect();
        let resolved = options.resolve(SERVICE, &keys, DEFAULT_URL, env)?;
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
        let diffusion_fields = match resolved.extra("diffusion_fields") {
            Some(value) => crate::runtime::flag("diffusion_fields", value)?,
            None => false,
        };
        if diffusion_fields && family != Family::Other {
            return Err(Error::InvalidArg(format!(
                "openai option diffusion_fields: {model} refuses fields it does not define; the \
                 option is for OpenAI-compatible servers (such as dg serve) that read them"
            )));
        }
        Ok(OpenAi {
            pool: Pool::new(resolved.endpoints, resolved.pool)?,
            model,
            family,
            fields,
            agent: http::agent(),
            diffusion_fields,
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

        let (sent, mut ignored) = self.diffusion_values(request);
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
            None => self.generation(request, n, size.as_deref(), &sent),
            Some(image) => self.edit(request, image, n, size.as_deref(), &sent)?,
        };
        Ok(Prepared {
            http,
            ignored,
            size,
            n,
        })
    }

    /// The request's diffusion fields split into those sent by their request keys (with the
    /// `diffusion_fields` option) and those the service cannot take.
    fn diffusion_values(&self, request: &Request) -> (Vec<(String, Value)>, Vec<String>) {
        let mut sent = Vec::new();
        let mut ignored = Vec::new();
        for name in request.diffusion_fields() {
            match request.value(&name).filter(|_| self.diffusion_fields) {
                Some(value) => sent.push((name, value)),
                None => ignored.push(name),
            }
        }
        (sent, ignored)
    }

    fn generation(
        &self,
        request: &Request,
        n: usize,
        size: Option<&str>,
        diffusion: &[(String, Value)],
    ) -> HttpRequest {
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
        for (key, value) in diffusion {
            body.insert(key.clone(), value.clone());
        }
        HttpRequest::json("/images/generations", &Value::Object(body))
    }

    fn edit(
        &self,
        request: &Request,
        image: &Image,
        n: usize,
        size: Option<&str>,
        diffusion: &[(String, Value)],
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
        let fields = self.fields.iter().filter(|(k, _)| *k != "moderation");
        for (key, value) in fields
            .map(|(k, v)| (*k, v))
            .chain(diffusion.iter().map(|(k, v)| (k.as_str(), v)))
        {
            // Multipart scalars are text, as the official client sends them.
            match value {
                Value::String(text) => form.text(key, text),
                other => form.text(key, &other.to_string()),
            }
        }
        Ok(form.into_request("/images/edits"))
    }
}

fn bearer(key: &ApiKey) -> (&'static str, String) {
    ("authorization", format!("Bearer {}", key.expose()))
}

/// A request turned into its HTTP call.
struct Prepared {
    http: HttpRequest,
    /// Request fields not honoured (best effort).
    ignored: Vec<String>,
    /// The `size` sent, if any.
    size: Option<String>,
    /// The `n` sent: the most images the answer may hold.
    n: usize,
}

impl Generator for OpenAi {
    /// Lists the models (`GET {base}/models`): the endpoint answers and takes the key.
    fn check(&self) -> Result<String> {
        let response = self.pool.call(
            &Probe(&answer::exchange(1)),
            &HttpRequest::get("/models"),
            &|| false,
        )?;
        let listed = serde_json::from_slice::<Value>(&response.body)
            .ok()
            .and_then(|v| Some(v.get("data")?.as_array()?.len()));
        let endpoints = remote::base_urls(&self.pool);
        Ok(match listed {
            Some(n) => format!("{endpoints} answers and accepts the key ({n} models listed)"),
            None => format!("{endpoints} answers and accepts the key"),
        })
    }

    fn describe(&self) -> Description {
        let tasks = if self.family.edits() {
            vec![Task::TextToImage, Task::Edit, Task::Inpaint]
        } else {
            vec![Task::TextToImage]
        };
        let mut description = remote::description(&self.model, SERVICE, tasks, self.family.sizes());
        // A server that reads the diffusion fields runs a diffusion model that honours them.
        description.honours_seed = self.diffusion_fields;
        description.negative_prompt = self.diffusion_fields;
        description
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
        let call = answer::exchange(prepared.n);
        let cancelled = || request.check_cancelled().is_err();
        self.pool.call(&call, &prepared.http, &cancelled)?;
        let mut answer = call.into_answer()?;

        let mut images = Vec::with_capacity(answer.items.len());
        for (index, item) in answer.items.into_iter().enumerate() {
            images.push(match item {
                Item::Image(image) => image,
                Item::Url(url) => {
                    request.check_cancelled()?;
                    self.download(index, &url, &mut answer.budget)?
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
        remote::report(progress, 1, 1, started)?;
        Ok(remote::output(images, metadata, prepared.ignored, started))
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
pub(crate) fn is_openai_host(base_url: &str) -> bool {
    let host = download::origin(base_url)
        .split("://")
        .nth(1)
        .unwrap_or_default()
        .split(':')
        .next()
        .unwrap_or_default();
    host.eq_ignore_ascii_case("api.openai.com")
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
    fn the_public_api_is_known_by_its_host() {
        assert!(is_openai_host("https://API.openai.com:443/v1"));
        assert!(!is_openai_host("https://api.openai.com.evil.example/v1"));
    }
}
