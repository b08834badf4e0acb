//! A remote VLM behind an OpenAI-compatible chat-completions endpoint, used as a prompt enhancer
//! (`--enhance-prompt openai:MODEL`): OpenAI itself, or any compatible server (`dg serve --vlm`,
//! vLLM, llama.cpp's server, ...).
//!
//! **Settings** come from `DG_PROMPT_ENHANCER_*`, as the remote generators' come from
//! `DG_<BACKEND>_*`: `API_KEY` (sent as a bearer token; required for api.openai.com only),
//! `BASE_URL` (default `https://api.openai.com/v1`), `MODEL` (the model of `openai:MODEL` wins
//! over it), `TIMEOUT` (seconds per call, default 120), `MAX_RETRIES` (default 2) and the other
//! pool keys of docs/backends.md (`POOL_FILE` for several endpoints and keys).
//!
//! **Calls.** A [`VlmRequest`] becomes one `POST {base}/chat/completions`: its messages in order,
//! a text-only message as a string, otherwise as content parts with every image as a base64 PNG
//! data URL `image_url` part; `max_tokens` (`max_completion_tokens` for OpenAI's reasoning models,
//! o1/o3/o4/gpt-5, which refuse the other) and `temperature` (0 for greedy; not sent to reasoning
//! models, which take only their default); `top_p`, `seed` (when sampling), `stop`, and vLLM's
//! `top_k` and `repetition_penalty` only when set away from their defaults.
//!
//! **Answers.** The text is `choices[0].message.content` (a string, or text parts joined). A
//! `refusal`, or `finish_reason: content_filter`, is `Refused`; a 2xx body that is not JSON or
//! has no content is a `Remote` error; failed answers are read as the OpenAI image backend reads
//! them (retries on 408/409/429/5xx, a wrong key or quota taken out of the rotation, moderation
//! blocks `Refused`), and network failures and timeouts are retried, then reported with the
//! endpoint and the attempts. Keys never appear in messages.
use std::fmt;

use serde_json::{json, Map, Value};

use super::enhance::clean_reply;
#[cfg(doc)]
use super::enhance::EnhanceStyle;
use super::request::{Part, VlmRequest};
use crate::error::{Error, RemoteFailure, Result};
use crate::generators::http::{HttpRequest, HttpResponse};
use crate::generators::openai::answer::error_verdict;
use crate::generators::openai::is_openai_host;
use crate::generators::pool::{ApiKey, Failure, Pool, Verdict};
use crate::generators::remote::{cut, encode_base64, Exchange};
use crate::generators::GeneratorOptions;

/// The environment prefix of the settings: `DG_PROMPT_ENHANCER_*`.
const BACKEND: &str = "prompt_enhancer";
/// The name remote errors carry.
const SERVICE: &str = "prompt enhancer";
/// The public OpenAI API; it needs a key.
const DEFAULT_URL: &str = "https://api.openai.com/v1";
/// The spec prefix that names a remote enhancer: `openai:MODEL`.
pub const SPEC_PREFIX: &str = "openai:";

/// A chat model behind an endpoint pool.
pub struct RemoteVlm {
    pool: Pool,
    model: String,
}

impl fmt::Debug for RemoteVlm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The pool prints its endpoints with keys redacted.
        f.debug_struct("RemoteVlm")
            .field("model", &self.model)
            .field("pool", &self.pool)
            .finish()
    }
}

impl RemoteVlm {
    /// The enhancer `spec` names when it is `openai:MODEL` (`openai:` alone: the model from
    /// `DG_PROMPT_ENHANCER_MODEL`); `None` for anything else (a package directory).
    pub fn from_spec(spec: &str) -> Option<Result<RemoteVlm>> {
        let model = spec.strip_prefix(SPEC_PREFIX)?;
        Some(RemoteVlm::new(Some(model), &GeneratorOptions::new()))
    }

    /// `model` (when given and not empty) over `DG_PROMPT_ENHANCER_MODEL`; `options` (the remote
    /// generators' common keys: `base_url`, `api_key`, `timeout_s`, `max_retries`, ...) over
    /// `DG_PROMPT_ENHANCER_*`.
    pub fn new(model: Option<&str>, options: &GeneratorOptions) -> Result<RemoteVlm> {
        RemoteVlm::with_env(model, options, &|name| std::env::var(name).ok())
    }

    fn with_env(
        model: Option<&str>,
        options: &GeneratorOptions,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<RemoteVlm> {
        let resolved = options.resolve(BACKEND, &[], DEFAULT_URL, env)?;
        if let Some(endpoint) = resolved
            .endpoints
            .iter()
            .find(|e| e.key.is_none() && is_openai_host(&e.base_url))
        {
            return Err(Error::InvalidArg(format!(
                "prompt enhancer: {} needs an API key: set DG_PROMPT_ENHANCER_API_KEY (or point \
                 DG_PROMPT_ENHANCER_BASE_URL at an OpenAI-compatible server)",
                endpoint.base_url
            )));
        }
        let model = model
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(str::to_string)
            .or(resolved.model.map(|m| m.trim().to_string()))
            .filter(|m| !m.is_empty())
            .ok_or_else(|| {
                Error::InvalidArg(
                    "prompt enhancer: no model: write `openai:MODEL` or set \
                     DG_PROMPT_ENHANCER_MODEL"
                        .into(),
                )
            })?;
        if model.chars().any(char::is_control) {
            return Err(Error::InvalidArg(format!(
                "prompt enhancer model `{}` is not a model name",
                model.escape_debug()
            )));
        }
        Ok(RemoteVlm {
            pool: Pool::new(resolved.endpoints, resolved.pool)?,
            model,
        })
    }

    /// The model the service is asked for.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The first endpoint's base URL (several with a pool file).
    pub fn base_url(&self) -> &str {
        &self.pool.endpoints()[0].base_url
    }

    /// The reply to `request`: the answer's message content, as the service wrote it.
    pub fn chat(&self, request: &VlmRequest) -> Result<String> {
        request.validate()?;
        let body = self.body(request)?;
        let call = HttpRequest::json("/chat/completions", &body);
        let exchange = Exchange::new(SERVICE, bearer, classify);
        let cancel = request.cancel.clone();
        let cancelled = move || cancel.as_ref().is_some_and(|c| c.is_cancelled());
        self.pool.call(&exchange, &call, &cancelled)?;
        exchange.into_answer()
    }

    /// The prompt an enhancement request (made by [`EnhanceStyle::request`]) asks for: the reply
    /// cleaned of labels and quotes (see [`clean_reply`]); a reply with nothing left is a
    /// `Remote` error.
    pub fn enhance(&self, request: &VlmRequest) -> Result<String> {
        let reply = self.chat(request)?;
        clean_reply(&reply).ok_or_else(|| {
            self.error(format!(
                "the reply holds no prompt: {:?}",
                cut(reply.trim(), 200)
            ))
        })
    }

    fn error(&self, message: String) -> Error {
        Error::Remote(Box::new(crate::error::RemoteError {
            kind: RemoteFailure::Error,
            service: SERVICE.into(),
            endpoint: self.base_url().to_string(),
            status: None,
            error_type: Some("invalid_response".into()),
            message,
            attempts: 1,
        }))
    }

    /// The JSON body of the call for `request`.
    fn body(&self, request: &VlmRequest) -> Result<Value> {
        let mut messages = Vec::with_capacity(request.messages.len());
        for message in &request.messages {
            let content = match message.parts.as_slice() {
                [Part::Text(text)] => Value::from(text.as_str()),
                parts => Value::Array(
                    parts
                        .iter()
                        .map(|part| match part {
                            Part::Text(text) => Ok(json!({"type": "text", "text": text})),
                            Part::Image(image) => Ok(json!({
                                "type": "image_url",
                                "image_url": {"url": format!(
                                    "data:image/png;base64,{}",
                                    encode_base64(&image.encode_png(&[])?)
                                )},
                            })),
                        })
                        .collect::<Result<Vec<_>>>()?,
                ),
            };
            messages.push(json!({"role": message.role, "content": content}));
        }
        let mut body = Map::new();
        body.insert("model".into(), Value::from(self.model.as_str()));
        body.insert("messages".into(), Value::Array(messages));
        let sampling = &request.sampling;
        if is_reasoning_model(&self.model) {
            body.insert(
                "max_completion_tokens".into(),
                Value::from(request.max_new_tokens),
            );
        } else {
            body.insert("max_tokens".into(), Value::from(request.max_new_tokens));
            body.insert("temperature".into(), json!(sampling.temperature));
            if sampling.top_p < 1.0 {
                body.insert("top_p".into(), json!(sampling.top_p));
            }
        }
        if sampling.is_sampling() {
            body.insert("seed".into(), Value::from(sampling.seed));
        }
        if sampling.top_k > 0 {
            body.insert("top_k".into(), Value::from(sampling.top_k));
        }
        if sampling.repetition_penalty != 1.0 {
            body.insert(
                "repetition_penalty".into(),
                json!(sampling.repetition_penalty),
            );
        }
        if !request.stop.is_empty() {
            body.insert("stop".into(), json!(request.stop));
        }
        Ok(Value::Object(body))
    }
}

fn bearer(key: &ApiKey) -> (&'static str, String) {
    ("authorization", format!("Bearer {}", key.expose()))
}

/// OpenAI's reasoning models take `max_completion_tokens` and only the default temperature.
fn is_reasoning_model(model: &str) -> bool {
    let model = model.to_ascii_lowercase();
    ["o1", "o3", "o4", "gpt-5"]
        .iter()
        .any(|p| model == *p || model.starts_with(&format!("{p}-")))
}

/// Reads one answer: the reply text of a successful one, else what the pool should do.
fn classify(response: &HttpResponse) -> Result<String, Verdict> {
    let status = response.status;
    if !(200..300).contains(&status) {
        return Err(error_verdict(response));
    }
    let fail = |kind, error_type: &str, message: String| {
        Verdict::Fail(Failure {
            kind,
            status: Some(status),
            error_type: Some(error_type.into()),
            message,
        })
    };
    let invalid = |message: String| fail(RemoteFailure::Error, "invalid_response", message);
    let body: Value = serde_json::from_slice(&response.body).map_err(|e| {
        invalid(format!(
            "the answer is not JSON ({e}): {}",
            response.text_excerpt()
        ))
    })?;
    let choice = body.pointer("/choices/0").ok_or_else(|| {
        invalid(format!(
            "the answer has no `choices[0]`: {}",
            excerpt(&body)
        ))
    })?;
    let message = choice.get("message").unwrap_or(&Value::Null);
    if let Some(refusal) = message.get("refusal").and_then(Value::as_str) {
        if !refusal.trim().is_empty() {
            return Err(fail(RemoteFailure::Refused, "refusal", cut(refusal, 1000)));
        }
    }
    if choice.get("finish_reason").and_then(Value::as_str) == Some("content_filter") {
        return Err(fail(
            RemoteFailure::Refused,
            "content_filter",
            "the service's content filter withheld the reply".into(),
        ));
    }
    match message.get("content") {
        Some(Value::String(text)) => Ok(text.clone()),
        // Some servers answer with content parts, as requests send them.
        Some(Value::Array(parts)) => {
            let texts: Vec<&str> = parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect();
            if texts.is_empty() {
                Err(invalid(format!(
                    "`choices[0].message.content` has no text part: {}",
                    excerpt(&body)
                )))
            } else {
                Ok(texts.concat())
            }
        }
        _ => Err(invalid(format!(
            "the answer has no `choices[0].message.content` text: {}",
            excerpt(&body)
        ))),
    }
}

fn excerpt(value: &Value) -> String {
    cut(&value.to_string(), 300)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::Image;
    use crate::vlm::enhance::EnhanceStyle;
    use crate::vlm::SamplingParams;

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        }
    }

    fn local(model: Option<&str>) -> Result<RemoteVlm> {
        RemoteVlm::with_env(
            model,
            &GeneratorOptions::new(),
            &env(&[
                ("DG_PROMPT_ENHANCER_BASE_URL", "http://127.0.0.1:9/v1"),
                ("DG_PROMPT_ENHANCER_MODEL", "from-env"),
            ]),
        )
    }

    #[test]
    fn the_spec_model_wins_over_the_environment_and_openai_needs_a_key() {
        assert_eq!(local(Some("qwen")).unwrap().model(), "qwen");
        assert_eq!(local(Some("")).unwrap().model(), "from-env");
        assert_eq!(local(None).unwrap().base_url(), "http://127.0.0.1:9/v1");
        let no_model = RemoteVlm::with_env(
            None,
            &GeneratorOptions::new(),
            &env(&[("DG_PROMPT_ENHANCER_BASE_URL", "http://127.0.0.1:9")]),
        )
        .unwrap_err();
        assert!(
            no_model.to_string().contains("DG_PROMPT_ENHANCER_MODEL"),
            "{no_model}"
        );
        let no_key =
            RemoteVlm::with_env(Some("gpt-4o"), &GeneratorOptions::new(), &env(&[])).unwrap_err();
        assert!(
            no_key.to_string().contains("DG_PROMPT_ENHANCER_API_KEY"),
            "{no_key}"
        );
        let keyed = RemoteVlm::with_env(
            Some("gpt-4o"),
            &GeneratorOptions::new(),
            &env(&[("DG_PROMPT_ENHANCER_API_KEY", "sk-x")]),
        )
        .unwrap();
        assert_eq!(keyed.base_url(), DEFAULT_URL);
        assert!(!format!("{keyed:?}").contains("sk-x"));
    }

    #[test]
    fn requests_become_chat_messages_with_data_url_images() {
        let remote = local(Some("qwen")).unwrap();
        let image = Image {
            width: 2,
            height: 1,
            pixels: vec![255, 0, 0, 0, 0, 255],
        };
        let request = EnhanceStyle::QwenImageEdit
            .request("make it blue", Some(image.clone()))
            .unwrap();
        let body = remote.body(&request).unwrap();
        assert_eq!(body["model"], "qwen");
        assert_eq!(body["max_tokens"], 256);
        assert_eq!(body["temperature"], 0.0);
        assert!(body.get("seed").is_none() && body.get("top_p").is_none());
        let messages = body["messages"].as_array().unwrap();
        assert_eq!(messages[0]["role"], "system");
        assert_eq!(
            messages[0]["content"],
            EnhanceStyle::QwenImageEdit.system_prompt()
        );
        let parts = messages[1]["content"].as_array().unwrap();
        assert_eq!(parts[0]["type"], "image_url");
        let url = parts[0]["image_url"]["url"].as_str().unwrap();
        let png = crate::generators::remote::decode_base64(
            url.strip_prefix("data:image/png;base64,").unwrap(),
        )
        .unwrap();
        assert_eq!(Image::decode(&png).unwrap(), image);
        assert_eq!(
            parts[1],
            json!({"type": "text", "text": "Instruction: make it blue"})
        );

        let mut sampled = VlmRequest::new("hi", vec![]);
        sampled.sampling = SamplingParams {
            temperature: 0.7,
            top_k: 40,
            top_p: 0.9,
            repetition_penalty: 1.1,
            seed: 5,
        };
        sampled.stop = vec!["\n".into()];
        let body = remote.body(&sampled).unwrap();
        assert_eq!(body["messages"][0]["content"], "hi");
        assert_eq!(body["seed"], 5);
        assert_eq!(body["top_k"], 40);
        assert_eq!(body["stop"], json!(["\n"]));
        assert!((body["top_p"].as_f64().unwrap() - 0.9).abs() < 1e-6);

        let reasoning = local(Some("gpt-5-mini")).unwrap().body(&sampled).unwrap();
        assert_eq!(reasoning["max_completion_tokens"], 128);
        assert!(reasoning.get("max_tokens").is_none() && reasoning.get("temperature").is_none());
        assert!(
            !is_reasoning_model("gpt-4o")
                && is_reasoning_model("o3")
                && is_reasoning_model("o4-mini")
        );
    }

    fn answer(status: u16, body: &str) -> Result<String, Verdict> {
        classify(&HttpResponse::fake(status, &[], body))
    }

    fn failure(verdict: Verdict) -> Failure {
        match verdict {
            Verdict::Fail(f) | Verdict::KeyExhausted(f) | Verdict::Retry { failure: f, .. } => f,
            Verdict::Success => panic!("not a failure"),
        }
    }

    #[test]
    fn answers_are_read_and_bad_ones_named() {
        let ok = r#"{"choices":[{"message":{"role":"assistant","content":"a red fox"}}]}"#;
        assert_eq!(answer(200, ok).unwrap(), "a red fox");
        let parts = r#"{"choices":[{"message":{"content":[{"type":"text","text":"a "},{"type":"text","text":"fox"}]}}]}"#;
        assert_eq!(answer(200, parts).unwrap(), "a fox");

        let f = failure(answer(200, "<html>").unwrap_err());
        assert_eq!(f.kind, RemoteFailure::Error);
        assert!(f.message.contains("not JSON"), "{}", f.message);
        let f = failure(answer(200, r#"{"choices":[]}"#).unwrap_err());
        assert!(f.message.contains("choices[0]"), "{}", f.message);
        let f = failure(answer(200, r#"{"choices":[{"message":{"content":null}}]}"#).unwrap_err());
        assert!(f.message.contains("content"), "{}", f.message);

        let refused =
            r#"{"choices":[{"message":{"content":null,"refusal":"I can't help with that."}}]}"#;
        let f = failure(answer(200, refused).unwrap_err());
        assert_eq!(f.kind, RemoteFailure::Refused);
        assert_eq!(f.message, "I can't help with that.");
        let filtered =
            r#"{"choices":[{"finish_reason":"content_filter","message":{"content":""}}]}"#;
        assert_eq!(
            failure(answer(200, filtered).unwrap_err()).kind,
            RemoteFailure::Refused
        );

        assert!(matches!(
            answer(500, "boom").unwrap_err(),
            Verdict::Retry { .. }
        ));
        let bad = r#"{"error":{"message":"bad model","type":"invalid_request_error"}}"#;
        let f = failure(answer(400, bad).unwrap_err());
        assert_eq!((f.status, f.message.as_str()), (Some(400), "bad model"));
    }
}
