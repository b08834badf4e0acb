//! An OpenAI Images request's fields (a JSON body, or the text parts of a multipart edit) turned
//! into a [`Request`] and the answer's shape. Diffusion parameters come as extra fields named by
//! the library's request keys (what the `openai` client's `extra_body` sends); fields neither
//! OpenAI nor diffgentor knows are ignored, as the API does.
use diffgentor::generators::{Description, Sizes};
use diffgentor::Request;
use serde_json::{Map, Value};

use super::error::{ApiError, ApiResult};

/// Most images one call may ask for (the OpenAI API's limit).
pub const MAX_N: u64 = 10;

/// What a call asked for besides the request itself.
#[derive(Debug, Clone)]
pub struct Call {
    pub request: Request,
    pub response_format: ResponseFormat,
    pub output_format: OutputFormat,
    pub stream: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFormat {
    B64Json,
    Url,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Png,
    /// With its quality (`output_compression`, 1..=100).
    Jpeg(u8),
    WebP,
}

impl OutputFormat {
    pub fn name(self) -> &'static str {
        match self {
            OutputFormat::Png => "png",
            OutputFormat::Jpeg(_) => "jpeg",
            OutputFormat::WebP => "webp",
        }
    }

    pub fn mime(self) -> &'static str {
        match self {
            OutputFormat::Png => "image/png",
            OutputFormat::Jpeg(_) => "image/jpeg",
            OutputFormat::WebP => "image/webp",
        }
    }
}

/// What the operator sets for every request: steps and guidance forced on it
/// (`DG_SERVE_NUM_INFERENCE_STEPS`, `DG_SERVE_GUIDANCE_SCALE`, as the ancestor's server reads them)
/// and the largest image side it may ask for or upload (`--max-side`).
#[derive(Debug, Clone)]
pub struct Policy {
    pub steps: Option<usize>,
    pub guidance_scale: Option<f32>,
    pub max_side: u32,
}

impl Policy {
    /// The policy with `max_side` and the overrides the environment sets.
    pub fn from_env(max_side: u32) -> diffgentor::Result<Policy> {
        let read = |name: &str, key: &str, request: &mut Request| -> diffgentor::Result<bool> {
            match std::env::var(name) {
                Ok(value) => request
                    .set(key, &value)
                    .map(|()| true)
                    .map_err(|e| diffgentor::Error::InvalidArg(format!("{name}: {e}"))),
                Err(_) => Ok(false),
            }
        };
        let mut probe = Request::default();
        let steps = read("DG_SERVE_NUM_INFERENCE_STEPS", "steps", &mut probe)?;
        let guidance = read("DG_SERVE_GUIDANCE_SCALE", "guidance_scale", &mut probe)?;
        Ok(Policy {
            steps: steps.then_some(probe.steps),
            guidance_scale: guidance.then_some(probe.guidance_scale),
            max_side,
        })
    }

    /// Forces the overrides on the request and on every stage of its plan, and refuses a plan
    /// stage larger than `max_side` (a plan sets sizes without `size`).
    fn apply(&self, request: &mut Request) -> ApiResult<()> {
        if let Some(steps) = self.steps {
            request.steps = steps;
        }
        if let Some(guidance) = self.guidance_scale {
            request.guidance_scale = guidance;
        }
        for stage in request
            .plan
            .iter_mut()
            .flat_map(|plan| plan.stages.iter_mut())
        {
            if stage.width > self.max_side || stage.height > self.max_side {
                return Err(ApiError::invalid(
                    "plan",
                    format!(
                        "a plan stage of {}x{}: this server makes images up to {} a side",
                        stage.width, stage.height, self.max_side
                    ),
                )
                .code("invalid_size"));
            }
            stage.steps = self.steps.or(stage.steps);
            stage.guidance_scale = self.guidance_scale.or(stage.guidance_scale);
        }
        Ok(())
    }
}

/// Request keys a caller may not set as extra fields: the OpenAI fields above say them.
const RESERVED_KEYS: [&str; 4] = ["prompt", "num_images", "width", "height"];

/// Reads a call's fields against what the generator can do.
pub fn parse(
    fields: &Map<String, Value>,
    generator: &Description,
    policy: &Policy,
) -> ApiResult<Call> {
    let prompt = match fields.get("prompt") {
        Some(Value::String(p)) if !p.trim().is_empty() => p.clone(),
        Some(Value::String(_)) => return Err(ApiError::invalid("prompt", "`prompt` is empty")),
        Some(_) => return Err(ApiError::invalid("prompt", "`prompt` must be a string")),
        None => return Err(ApiError::invalid("prompt", "`prompt` is required")),
    };
    let mut request = Request::new(prompt);
    if let Some(n) = integer(fields, "n")? {
        if !(1..=MAX_N).contains(&n) {
            return Err(ApiError::invalid(
                "n",
                format!("`n` must be between 1 and {MAX_N}, got {n}"),
            ));
        }
        request.num_images = n as usize;
    }
    if let Some(size) = text(fields, "size")? {
        if let Some((w, h)) = parse_size(&size, &generator.sizes)? {
            if w > policy.max_side || h > policy.max_side {
                return Err(ApiError::invalid(
                    "size",
                    format!(
                        "this server makes images up to {} a side, not {size}",
                        policy.max_side
                    ),
                )
                .code("invalid_size"));
            }
            request.width = Some(w);
            request.height = Some(h);
        }
    }
    for (key, value) in fields {
        // `num_inference_steps` is the diffusers name the ancestor's clients send.
        let key = if key == "num_inference_steps" {
            "steps"
        } else {
            key.as_str()
        };
        if !Request::is_key(key) || RESERVED_KEYS.contains(&key) {
            continue;
        }
        // A list of `{name, strength}` objects, which no scalar holds.
        if key == "loras" {
            request.loras = super::loras::parse_field(value)?;
            continue;
        }
        let Some(value) = scalar(value) else {
            continue;
        };
        request
            .set(key, &value)
            .map_err(|e| ApiError::invalid(key, e.to_string()))?;
    }
    policy.apply(&mut request)?;
    let response_format = match text(fields, "response_format")?.as_deref() {
        None | Some("b64_json") => ResponseFormat::B64Json,
        Some("url") => ResponseFormat::Url,
        Some(other) => {
            return Err(ApiError::invalid(
                "response_format",
                format!("`response_format` must be b64_json or url, got `{other}`"),
            ))
        }
    };
    let compression = match integer(fields, "output_compression")? {
        Some(c) if c > 100 => {
            return Err(ApiError::invalid(
                "output_compression",
                format!("`output_compression` must be between 0 and 100, got {c}"),
            ))
        }
        Some(c) => c as u8,
        None => 100,
    };
    let output_format = match text(fields, "output_format")?.as_deref() {
        None | Some("png") => OutputFormat::Png,
        Some("jpeg") | Some("jpg") => OutputFormat::Jpeg(compression.max(1)),
        Some("webp") => OutputFormat::WebP,
        Some(other) => {
            return Err(ApiError::invalid(
                "output_format",
                format!("`output_format` must be png, jpeg or webp, got `{other}`"),
            ))
        }
    };
    // Accepted and checked; no partial images are sent yet (docs/serve.md).
    let partial_images = integer(fields, "partial_images")?.unwrap_or(0);
    if partial_images > 3 {
        return Err(ApiError::invalid(
            "partial_images",
            format!("`partial_images` must be between 0 and 3, got {partial_images}"),
        ));
    }
    Ok(Call {
        request,
        response_format,
        output_format,
        stream: boolean(fields, "stream")?.unwrap_or(false),
    })
}

/// `WxH`, or `auto` (`None`: the model's default size).
fn parse_size(size: &str, sizes: &Sizes) -> ApiResult<Option<(u32, u32)>> {
    if size == "auto" {
        return Ok(None);
    }
    let bad = |why: String| ApiError::invalid("size", why).code("invalid_size");
    let (w, h) = size
        .split_once('x')
        .and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)))
        .ok_or_else(|| bad(format!("`size` must be WIDTHxHEIGHT or auto, got `{size}`")))?;
    match sizes {
        Sizes::Multiple { multiple, max, .. } => {
            if w == 0 || h == 0 || w % multiple != 0 || h % multiple != 0 || w > *max || h > *max {
                return Err(bad(format!(
                    "this model makes sizes whose sides are multiples of {multiple} up to {max}, \
                     not {size}"
                )));
            }
        }
        Sizes::Listed(listed) => {
            if !listed.contains(&(w, h)) {
                let names: Vec<String> = listed.iter().map(|(w, h)| format!("{w}x{h}")).collect();
                return Err(bad(format!(
                    "this model makes {} (or auto), not {size}",
                    names.join(", ")
                )));
            }
        }
        Sizes::Any => {}
    }
    Ok(Some((w, h)))
}

/// A field's value as [`Request::set`] takes it; `None` for null (and the string `null`, which is
/// how multipart forms send it).
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) if s == "null" => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn text(fields: &Map<String, Value>, key: &str) -> ApiResult<Option<String>> {
    match fields.get(key).and_then(scalar) {
        None => Ok(None),
        Some(s) if fields.get(key).is_some_and(Value::is_string) => Ok(Some(s)),
        Some(_) => Err(ApiError::invalid(key, format!("`{key}` must be a string"))),
    }
}

/// An integer field, given as a JSON number or (multipart) a decimal string.
fn integer(fields: &Map<String, Value>, key: &str) -> ApiResult<Option<u64>> {
    let Some(value) = fields.get(key).and_then(scalar) else {
        return Ok(None);
    };
    value.trim().parse::<u64>().map(Some).map_err(|_| {
        ApiError::invalid(
            key,
            format!("`{key}` must be a non-negative integer, got {value}"),
        )
    })
}

fn boolean(fields: &Map<String, Value>, key: &str) -> ApiResult<Option<bool>> {
    match fields.get(key).and_then(scalar).as_deref() {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(other) => Err(ApiError::invalid(
            key,
            format!("`{key}` must be true or false, got {other}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use diffgentor::generators::Task;
    use serde_json::json;

    fn local() -> Description {
        Description {
            name: "tiny".into(),
            kind: "local",
            tasks: vec![Task::TextToImage],
            sizes: Sizes::Multiple {
                multiple: 8,
                max: 1024,
                default: Some((64, 64)),
            },
            honours_seed: true,
            negative_prompt: true,
        }
    }

    fn policy() -> Policy {
        Policy {
            steps: None,
            guidance_scale: None,
            max_side: 2048,
        }
    }

    fn parse_json(body: serde_json::Value) -> ApiResult<Call> {
        let Value::Object(fields) = body else {
            panic!("an object")
        };
        parse(&fields, &local(), &policy())
    }

    #[test]
    fn openai_fields_and_extra_body_make_the_request() {
        let call = parse_json(json!({
            "prompt": "a fox", "n": 2, "size": "64x128", "response_format": "url",
            "output_format": "jpeg", "output_compression": 80, "model": "anything",
            "seed": 7, "steps": 3, "guidance_scale": 2.5, "negative_prompt": "blur",
            "scheduler": "euler", "scheduler.timestep_spacing": "trailing", "future_field": [1],
            "num_images": 9, "width": 8,
        }))
        .unwrap();
        let r = &call.request;
        assert_eq!((r.num_images, r.width, r.height), (2, Some(64), Some(128)));
        assert_eq!((r.seed, r.steps, r.guidance_scale), (Some(7), 3, 2.5));
        assert_eq!(r.negative_prompt.as_deref(), Some("blur"));
        assert_eq!(r.scheduler_overrides["timestep_spacing"], "trailing");
        assert_eq!(call.response_format, ResponseFormat::Url);
        assert_eq!(call.output_format, OutputFormat::Jpeg(80));
    }

    #[test]
    fn a_loras_field_is_the_requests_own_stack() {
        use diffgentor::LoraUse;
        let call =
            parse_json(json!({"prompt": "x", "loras": [{"name": "a", "strength": 0.5}]})).unwrap();
        assert_eq!(call.request.loras, Some(vec![LoraUse::new("a", 0.5)]));
        let call =
            parse_json(json!({"prompt": "x", "loras": "", "lora_prompt_tags": "true"})).unwrap();
        assert_eq!(call.request.loras, Some(vec![]));
        assert!(call.request.lora_prompt_tags);
        let call = parse_json(json!({"prompt": "x", "loras": null})).unwrap();
        assert_eq!(call.request.loras, None, "null: the active stack");
        let e = parse_json(json!({"prompt": "x", "loras": {"a": 1}})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("loras"), "{}", e.message);
    }

    #[test]
    fn multipart_strings_parse_like_json() {
        let call = parse_json(json!({
            "prompt": "a fox", "n": "2", "stream": "true", "seed": "7", "size": "null",
            "num_inference_steps": "4",
        }))
        .unwrap();
        assert_eq!((call.request.num_images, call.request.seed), (2, Some(7)));
        assert_eq!((call.request.steps, call.request.width), (4, None));
        assert!(call.stream);
    }

    #[test]
    fn bad_fields_name_their_param() {
        for (body, param) in [
            (json!({}), "prompt"),
            (json!({"prompt": 3}), "prompt"),
            (json!({"prompt": "x", "n": 0}), "n"),
            (json!({"prompt": "x", "n": 1000}), "n"),
            (json!({"prompt": "x", "n": -1}), "n"),
            (json!({"prompt": "x", "size": "63x64"}), "size"),
            (json!({"prompt": "x", "size": "2048x64"}), "size"),
            (json!({"prompt": "x", "size": "big"}), "size"),
            (json!({"prompt": "x", "steps": "many"}), "steps"),
            (
                json!({"prompt": "x", "response_format": "gif"}),
                "response_format",
            ),
            (
                json!({"prompt": "x", "output_format": "gif"}),
                "output_format",
            ),
            (
                json!({"prompt": "x", "output_compression": 101}),
                "output_compression",
            ),
            (
                json!({"prompt": "x", "partial_images": 4}),
                "partial_images",
            ),
            (json!({"prompt": "x", "stream": "maybe"}), "stream"),
        ] {
            let e = parse_json(body.clone()).unwrap_err();
            assert_eq!(e.status, 400, "{body}");
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
        }
    }

    #[test]
    fn operator_overrides_win() {
        let Value::Object(fields) = json!({"prompt": "x", "steps": 30, "guidance_scale": 9}) else {
            unreachable!()
        };
        let policy = Policy {
            steps: Some(2),
            guidance_scale: Some(1.0),
            ..policy()
        };
        let call = parse(&fields, &local(), &policy).unwrap();
        assert_eq!((call.request.steps, call.request.guidance_scale), (2, 1.0));
    }

    #[test]
    fn plans_keep_to_the_limit_and_the_overrides() {
        let policy = Policy {
            steps: Some(2),
            max_side: 64,
            ..policy()
        };
        let fields = |w: u32| {
            let plan = format!(r#"{{"stages": [{{"width": {w}, "height": 64, "steps": 30}}]}}"#);
            let Value::Object(fields) = json!({"prompt": "x", "plan": plan}) else {
                unreachable!()
            };
            fields
        };
        let call = parse(&fields(64), &local(), &policy).unwrap();
        assert_eq!(call.request.plan.unwrap().stages[0].steps, Some(2));
        let e = parse(&fields(128), &local(), &policy).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("plan"), "{}", e.message);
    }

    #[test]
    fn sizes_over_the_servers_limit_are_refused() {
        let policy = Policy {
            max_side: 64,
            ..policy()
        };
        let fields = |size: &str| {
            let Value::Object(fields) = json!({"prompt": "x", "size": size}) else {
                unreachable!()
            };
            fields
        };
        let call = parse(&fields("64x64"), &local(), &policy).unwrap();
        assert_eq!(
            (call.request.width, call.request.height),
            (Some(64), Some(64))
        );
        for size in ["128x64", "64x1024"] {
            let e = parse(&fields(size), &local(), &policy).unwrap_err();
            assert_eq!(
                (e.status.as_u16(), e.param.as_deref()),
                (400, Some("size")),
                "{size}"
            );
            assert_eq!(e.code.as_deref(), Some("invalid_size"));
        }
    }

    #[test]
    fn listed_sizes_are_the_only_ones() {
        let mut remote = local();
        remote.sizes = Sizes::Listed(vec![(1024, 1024)]);
        let Value::Object(fields) = json!({"prompt": "x", "size": "512x512"}) else {
            unreachable!()
        };
        let e = parse(&fields, &remote, &policy()).unwrap_err();
        assert!(e.message.contains("1024x1024"), "{}", e.message);
    }
}
