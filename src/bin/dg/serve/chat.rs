//! OpenAI chat completions over the served VLM (`--vlm`): `POST /v1/chat/completions` with text
//! and `image_url` content parts (`data:` URLs, or http(s) URLs with `--allow-remote-images`),
//! `max_tokens`, sampling fields, stop strings, and `stream: true` as `chat.completion.chunk`
//! Server-Sent Events ending in `data: [DONE]`. Completions wait in the same queue, under the same
//! limits and key, as the image routes.
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use diffgentor::vlm::{
    ChatMessage, Part, SamplingParams, VlmOutput, VlmRequest, MAX_IMAGES, MAX_NEW_TOKENS,
    MAX_STOP_STRINGS,
};
use futures_util::stream;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::error::{ApiError, ApiResult};
use super::images::decode_upload;
use super::openai::{finished, json_fields, unix_now};
use super::queue::{Chat, Job, JobState, Work};
use super::state::AppState;

/// The largest `temperature` OpenAI takes.
const MAX_TEMPERATURE: f64 = 2.0;
/// How long fetching one remote image may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Redirects followed when fetching a remote image.
const FETCH_REDIRECTS: u32 = 3;

pub async fn completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let model = state.chat_model()?.name.clone();
    let fields = json_fields(&headers, body)?;
    let call = parse(fields)?;
    // Decoding (and fetching) images is blocking work: off the server's few async threads.
    let limits = ImageLimits {
        max_side: state.settings.policy.max_side,
        max_bytes: state.settings.max_body,
        allow_remote: state.settings.allow_remote_images,
    };
    let pending = call.messages;
    let messages = tokio::task::spawn_blocking(move || resolve(pending, &limits))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "reading the images failed (a bug: please report it)",
            )
        })??;
    let request = VlmRequest {
        messages,
        max_new_tokens: call.max_new_tokens,
        sampling: call.sampling,
        stop: call.stop,
        cancel: None,
    };
    // Every field was checked above; this is the library's own word on what is left.
    request.validate().map_err(ApiError::from)?;
    let (sender, receiver) = match call.stream {
        true => {
            let (sender, receiver) = mpsc::unbounded_channel();
            (Some(sender), Some(receiver))
        }
        false => (None, None),
    };
    let job = state.submit_work(Work::Chat(Chat::new(request, sender)))?;
    let answer = Answer {
        id: format!("chatcmpl-{}", job.id),
        created: unix_now(),
        model,
        include_usage: call.include_usage,
    };
    match receiver {
        None => {
            let output = wait(&state, job).await?;
            Ok(Json(answer.completion(&output)).into_response())
        }
        Some(tokens) => stream(state, job, tokens, answer).await,
    }
}

/// Held while a client waits on a completion: cancels it if it has not ended, and forgets it
/// (nobody else asks for a completion, and its images need not wait for the job TTL).
struct Waiting {
    state: Arc<AppState>,
    job: Arc<Job>,
}

impl Waiting {
    fn new(state: &Arc<AppState>, job: &Arc<Job>) -> Waiting {
        Waiting {
            state: state.clone(),
            job: job.clone(),
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if !self.job.state().finished() {
            self.state.queue.cancel(&self.job);
        }
        self.state.forget(&self.job.id);
    }
}

/// Waits for a completion, cancelling it when this future is dropped (the client went away).
async fn wait(state: &Arc<AppState>, job: Arc<Job>) -> ApiResult<Arc<VlmOutput>> {
    let _waiting = Waiting::new(state, &job);
    match finished(&job).await {
        JobState::Answered(output) => Ok(output),
        JobState::Failed(e) => Err(e),
        _ => Err(ApiError::cancelled()),
    }
}

/// The answer's identity, shared by the whole completion or every chunk of its stream.
struct Answer {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
}

impl Answer {
    fn completion(&self, output: &VlmOutput) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": output.text, "refusal": null},
                "logprobs": null,
                "finish_reason": output.finish_reason.as_str(),
            }],
            "usage": usage(output),
        })
    }

    /// One `chat.completion.chunk`; `usage` is null in each while the client asked for a final
    /// usage chunk, as OpenAI sends them.
    fn chunk(&self, choices: Value) -> Value {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }

    fn delta(&self, delta: Value, finish_reason: Option<&str>) -> Event {
        let choice = json!({
            "index": 0,
            "delta": delta,
            "logprobs": null,
            "finish_reason": finish_reason,
        });
        data(&self.chunk(json!([choice])))
    }
}

fn usage(output: &VlmOutput) -> Value {
    let completion = output.token_ids.len();
    json!({
        "prompt_tokens": output.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": output.prompt_tokens + completion,
    })
}

fn data(value: &Value) -> Event {
    Event::default().data(value.to_string())
}

/// What the stream still has to send.
struct Streaming {
    job: Arc<Job>,
    tokens: mpsc::UnboundedReceiver<String>,
    answer: Answer,
    ready: VecDeque<Event>,
    /// The text sent so far.
    sent: String,
    ended: bool,
    /// Dropped with the stream when the client goes away: the completion stops at its next token.
    _waiting: Waiting,
}

/// The completion as Server-Sent Events: a first chunk with the assistant role, a chunk per
/// token's text, a last chunk with the finish reason (then, when asked, one with the usage) and
/// `data: [DONE]`. The answer starts once the first token is out, so a request that fails before
/// (a prompt past the model's context, an image the model cannot read) gets an HTTP error.
async fn stream(
    state: Arc<AppState>,
    job: Arc<Job>,
    mut tokens: mpsc::UnboundedReceiver<String>,
    answer: Answer,
) -> ApiResult<Response> {
    let waiting = Waiting::new(&state, &job);
    let first = tokens.recv().await;
    if first.is_none() {
        // It ended without a token: the answer (whatever it is) is known whole.
        wait(&state, job.clone()).await?;
    }
    let mut streaming = Streaming {
        job,
        tokens,
        answer,
        ready: VecDeque::new(),
        sent: String::new(),
        ended: false,
        _waiting: waiting,
    };
    let role = streaming
        .answer
        .delta(json!({"role": "assistant", "content": ""}), None);
    streaming.ready.push_back(role);
    streaming.send(&first.unwrap_or_default());
    let events = stream::unfold(streaming, |mut s| async move {
        loop {
            if let Some(event) = s.ready.pop_front() {
                return Some((Ok::<_, Infallible>(event), s));
            }
            if s.ended {
                return None;
            }
            match s.tokens.recv().await {
                Some(text) => s.send(&text),
                None => s.end().await,
            }
        }
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

impl Streaming {
    /// Queues a chunk of new text (none for empty text).
    fn send(&mut self, text: &str) {
        if !text.is_empty() {
            self.ready
                .push_back(self.answer.delta(json!({"content": text}), None));
            self.sent.push_str(text);
        }
    }

    /// Queues the last events once generation has ended: the finish reason and usage, or the
    /// error, then `[DONE]`.
    async fn end(&mut self) {
        match finished(&self.job).await {
            JobState::Answered(output) => {
                // The chunks add up to the whole answer's text: what the token stream held back
                // to the end (a character the last token left unfinished) goes out now.
                if let Some(rest) = output.text.strip_prefix(self.sent.as_str()) {
                    let rest = rest.to_string();
                    self.send(&rest);
                }
                let reason = output.finish_reason.as_str();
                let last = self.answer.delta(json!({}), Some(reason));
                self.ready.push_back(last);
                if self.answer.include_usage {
                    let mut chunk = self.answer.chunk(json!([]));
                    chunk["usage"] = usage(&output);
                    self.ready.push_back(data(&chunk));
                }
            }
            JobState::Failed(e) => self.ready.push_back(data(&e.body())),
            _ => self.ready.push_back(data(&ApiError::cancelled().body())),
        }
        self.ready.push_back(Event::default().data("[DONE]"));
        self.ended = true;
    }
}

/// A call's fields, checked, with its images not yet decoded.
struct Call {
    messages: Vec<Pending>,
    max_new_tokens: usize,
    sampling: SamplingParams,
    stop: Vec<String>,
    stream: bool,
    include_usage: bool,
}

/// A message whose image parts are still URLs.
struct Pending {
    role: String,
    parts: Vec<Source>,
}

enum Source {
    Text(String),
    /// An `image_url` part's URL and the field that named it (for errors).
    Image {
        url: String,
        param: String,
    },
}

/// Reads a chat completion body. Fields neither OpenAI nor this server knows are ignored, as the
/// API does; known ones this server cannot honour are refused, naming them.
fn parse(mut fields: Map<String, Value>) -> ApiResult<Call> {
    let messages = parse_messages(fields.remove("messages"))?;
    let max_new_tokens = max_tokens(&fields)?;
    let sampling = sampling(&fields)?;
    let stop = stop(fields.get("stop"))?;
    refuse_unsupported(&fields)?;
    let stream = boolean(&fields, "stream")?.unwrap_or(false);
    let include_usage = match fields.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(_) if !stream => {
            return Err(ApiError::invalid(
                "stream_options",
                "`stream_options` is only allowed when `stream` is true",
            ))
        }
        Some(Value::Object(options)) => boolean(options, "include_usage")
            .map_err(|_| {
                ApiError::invalid(
                    "stream_options",
                    "`stream_options.include_usage` must be true or false",
                )
            })?
            .unwrap_or(false),
        Some(_) => {
            return Err(ApiError::invalid(
                "stream_options",
                "`stream_options` must be an object",
            ))
        }
    };
    Ok(Call {
        messages,
        max_new_tokens,
        sampling,
        stop,
        stream,
        include_usage,
    })
}

fn parse_messages(messages: Option<Value>) -> ApiResult<Vec<Pending>> {
    let messages = match messages {
        Some(Value::Array(messages)) if !messages.is_empty() => messages,
        Some(Value::Array(_)) => return Err(ApiError::invalid("messages", "`messages` is empty")),
        None | Some(Value::Null) => {
            return Err(ApiError::invalid("messages", "`messages` is required"))
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "messages",
                "`messages` must be a list of messages",
            ))
        }
    };
    let mut parsed = Vec::with_capacity(messages.len());
    let mut images = 0;
    for (i, message) in messages.into_iter().enumerate() {
        let at = format!("messages[{i}]");
        let Value::Object(mut message) = message else {
            return Err(ApiError::invalid(
                &at,
                format!("`{at}` must be an object with a `role` and `content`"),
            ));
        };
        let role = match message.get("role").and_then(Value::as_str) {
            Some("system" | "developer") => "system",
            Some("user") => "user",
            Some("assistant") => "assistant",
            Some(other) => {
                return Err(ApiError::invalid(
                    &format!("{at}.role"),
                    format!(
                        "role `{other}` is not supported (system, developer, user and \
                         assistant are; this server has no tools)"
                    ),
                )
                .code("unsupported_role"))
            }
            None => {
                return Err(ApiError::invalid(
                    &format!("{at}.role"),
                    format!("`{at}.role` is required (a string)"),
                ))
            }
        };
        let parts = parse_content(message.remove("content"), &at, role)?;
        images += parts
            .iter()
            .filter(|p| matches!(p, Source::Image { .. }))
            .count();
        parsed.push(Pending {
            role: role.to_string(),
            parts,
        });
    }
    if images > MAX_IMAGES {
        return Err(ApiError::invalid(
            "messages",
            format!("at most {MAX_IMAGES} images per request, got {images}"),
        )
        .code("too_many_images"));
    }
    Ok(parsed)
}

/// A message's content: a string, or a list of `text` and `image_url` parts (images in user
/// messages only, as OpenAI takes them).
fn parse_content(content: Option<Value>, at: &str, role: &str) -> ApiResult<Vec<Source>> {
    let parts = match content {
        Some(Value::String(text)) => return Ok(vec![Source::Text(text)]),
        Some(Value::Array(parts)) => parts,
        _ => {
            return Err(ApiError::invalid(
                &format!("{at}.content"),
                format!("`{at}.content` must be a string or a list of content parts"),
            ))
        }
    };
    parts
        .into_iter()
        .enumerate()
        .map(|(j, part)| {
            let at = format!("{at}.content[{j}]");
            let Value::Object(mut part) = part else {
                return Err(ApiError::invalid(
                    &at,
                    format!("`{at}` must be an object with a `type`"),
                ));
            };
            let kind = part.get("type").and_then(Value::as_str).unwrap_or_default();
            match kind {
                "text" => match part.remove("text") {
                    Some(Value::String(text)) => Ok(Source::Text(text)),
                    _ => Err(ApiError::invalid(
                        &format!("{at}.text"),
                        format!("`{at}.text` must be a string"),
                    )),
                },
                "image_url" if role == "user" => {
                    let param = format!("{at}.image_url");
                    let url = match part.remove("image_url") {
                        Some(Value::Object(mut image)) => match image.remove("url") {
                            Some(Value::String(url)) => url,
                            _ => {
                                return Err(ApiError::invalid(
                                    &format!("{param}.url"),
                                    format!("`{param}.url` must be a string"),
                                ))
                            }
                        },
                        // Some clients send the URL itself.
                        Some(Value::String(url)) => url,
                        _ => {
                            return Err(ApiError::invalid(
                                &param,
                                format!("`{param}` must be an object with a `url`"),
                            ))
                        }
                    };
                    Ok(Source::Image { url, param })
                }
                "image_url" => Err(ApiError::invalid(
                    &format!("{at}.type"),
                    format!("images are taken in user messages only, not in a {role} message"),
                )
                .code("unsupported_content_part")),
                "" => Err(ApiError::invalid(
                    &format!("{at}.type"),
                    format!("`{at}.type` is required: text or image_url"),
                )),
                other => Err(ApiError::invalid(
                    &format!("{at}.type"),
                    format!(
                        "content part type `{other}` is not supported (text and image_url are)"
                    ),
                )
                .code("unsupported_content_part")),
            }
        })
        .collect()
}

/// `max_completion_tokens` (or the older `max_tokens`): 1 to the library's limit; absent, the
/// model's context is the limit.
fn max_tokens(fields: &Map<String, Value>) -> ApiResult<usize> {
    let completion = integer(fields, "max_completion_tokens")?;
    let legacy = integer(fields, "max_tokens")?;
    let (key, value) = match (completion, legacy) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError::invalid(
                "max_tokens",
                format!(
                    "`max_tokens` ({b}) and `max_completion_tokens` ({a}) differ; send one of them"
                ),
            ))
        }
        (Some(n), _) => ("max_completion_tokens", n),
        (None, Some(n)) => ("max_tokens", n),
        (None, None) => return Ok(MAX_NEW_TOKENS),
    };
    if value < 1 || value > MAX_NEW_TOKENS as i64 {
        return Err(ApiError::invalid(
            key,
            format!("`{key}` must be between 1 and {MAX_NEW_TOKENS}, got {value}"),
        ));
    }
    Ok(value as usize)
}

/// Greedy unless `temperature` is above 0, so a request without it gets the reproducible answer
/// (`dg caption`'s); a sampled request without a `seed` gets a random one.
fn sampling(fields: &Map<String, Value>) -> ApiResult<SamplingParams> {
    let mut sampling = SamplingParams::default();
    if let Some(t) = number(fields, "temperature")? {
        if !(0.0..=MAX_TEMPERATURE).contains(&t) {
            return Err(ApiError::invalid(
                "temperature",
                format!("`temperature` must be between 0 and {MAX_TEMPERATURE}, got {t}"),
            ));
        }
        sampling.temperature = t as f32;
    }
    if let Some(p) = number(fields, "top_p")? {
        if !(p > 0.0 && p <= 1.0) {
            return Err(ApiError::invalid(
                "top_p",
                format!("`top_p` must be greater than 0 and at most 1, got {p}"),
            ));
        }
        sampling.top_p = p as f32;
    }
    if let Some(k) = integer(fields, "top_k")? {
        // vLLM's -1 (and 0) mean no top-k.
        if k < -1 {
            return Err(ApiError::invalid(
                "top_k",
                format!("`top_k` must be -1 or 0 (off) or a positive integer, got {k}"),
            ));
        }
        sampling.top_k = k.max(0) as usize;
    }
    if let Some(r) = number(fields, "repetition_penalty")? {
        sampling.repetition_penalty = r as f32;
        // Temperature and top_p passed stricter checks above: only the penalty can fail here.
        sampling
            .validate()
            .map_err(|e| ApiError::invalid("repetition_penalty", e.to_string()))?;
    }
    sampling.seed = match fields.get("seed") {
        None | Some(Value::Null) => random_seed()?,
        // OpenAI's seed is any 64-bit integer; a negative one keeps its bits.
        Some(Value::Number(n)) if n.is_i64() => n.as_i64().unwrap_or_default() as u64,
        Some(Value::Number(n)) if n.is_u64() => n.as_u64().unwrap_or_default(),
        Some(other) => {
            return Err(ApiError::invalid(
                "seed",
                format!("`seed` must be an integer, got {other}"),
            ))
        }
    };
    for key in ["frequency_penalty", "presence_penalty"] {
        if number(fields, key)?.is_some_and(|v| v != 0.0) {
            return Err(ApiError::invalid(
                key,
                format!(
                    "`{key}` is not supported (send 0 or leave it out; `repetition_penalty` is)"
                ),
            )
            .code("unsupported_parameter"));
        }
    }
    Ok(sampling)
}

fn random_seed() -> ApiResult<u64> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("no randomness from the OS: {e}"),
        )
    })?;
    Ok(u64::from_le_bytes(bytes))
}

/// `stop`: a string or a list of them, each non-empty.
fn stop(value: Option<&Value>) -> ApiResult<Vec<String>> {
    let bad = |why: String| ApiError::invalid("stop", why);
    let stop: Vec<String> = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad(format!("`stop` must list strings, got {item}")))
            })
            .collect::<ApiResult<_>>()?,
        Some(other) => {
            return Err(bad(format!(
                "`stop` must be a string or a list of strings, got {other}"
            )))
        }
    };
    if stop.len() > MAX_STOP_STRINGS {
        return Err(bad(format!(
            "at most {MAX_STOP_STRINGS} stop strings, got {}",
            stop.len()
        )));
    }
    if stop.iter().any(String::is_empty) {
        return Err(bad("stop strings must not be empty".into()));
    }
    Ok(stop)
}

/// Refuses fields OpenAI defines that this server cannot honour, rather than answering as if
/// it had.
fn refuse_unsupported(fields: &Map<String, Value>) -> ApiResult<()> {
    let unsupported = |key: &str, why: &str| {
        Err(ApiError::invalid(key, format!("`{key}` {why}")).code("unsupported_parameter"))
    };
    if let Some(n) = integer(fields, "n")? {
        if n != 1 {
            return unsupported("n", &format!("must be 1 (one choice per request), got {n}"));
        }
    }
    if boolean(fields, "logprobs")? == Some(true) {
        return unsupported("logprobs", "is not supported");
    }
    if fields.get("top_logprobs").is_some_and(|v| !v.is_null()) {
        return unsupported("top_logprobs", "is not supported");
    }
    for key in ["tools", "functions"] {
        let given = match fields.get(key) {
            None | Some(Value::Null) => false,
            Some(Value::Array(items)) => !items.is_empty(),
            Some(_) => true,
        };
        if given {
            return unsupported(key, "is not supported: this server has no tool calls");
        }
    }
    match fields.get("response_format") {
        None | Some(Value::Null) => {}
        Some(format) if format.get("type").and_then(Value::as_str) == Some("text") => {}
        Some(_) => {
            return unsupported(
                "response_format",
                "is not supported beyond {\"type\": \"text\"}",
            )
        }
    }
    if fields.get("audio").is_some_and(|v| !v.is_null()) {
        return unsupported("audio", "is not supported: this server answers in text");
    }
    Ok(())
}

fn integer(fields: &Map<String, Value>, key: &str) -> ApiResult<Option<i64>> {
    match fields.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.is_i64() => Ok(n.as_i64()),
        // Past i64: only ever out of range.
        Some(Value::Number(n)) if n.is_u64() => Ok(Some(i64::MAX)),
        Some(other) => Err(ApiError::invalid(
            key,
            format!("`{key}` must be an integer, got {other}"),
        )),
    }
}

fn number(fields: &Map<String, Value>, key: &str) -> ApiResult<Option<f64>> {
    match fields.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(other) => Err(ApiError::invalid(
            key,
            format!("`{key}` must be a number, got {other}"),
        )),
    }
}

fn boolean(fields: &Map<String, Value>, key: &str) -> ApiResult<Option<bool>> {
    match fields.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(ApiError::invalid(
            key,
            format!("`{key}` must be true or false, got {other}"),
        )),
    }
}

/// What an image may be: its largest side (read from the header first), the most bytes a remote
/// one may have, and whether remote ones are fetched at all.
struct ImageLimits {
    max_side: u32,
    max_bytes: usize,
    allow_remote: bool,
}

/// Decodes every image part (fetching remote ones when allowed), in order.
fn resolve(messages: Vec<Pending>, limits: &ImageLimits) -> ApiResult<Vec<ChatMessage>> {
    messages
        .into_iter()
        .map(|message| {
            let parts = message
                .parts
                .into_iter()
                .map(|part| match part {
                    Source::Text(text) => Ok(Part::Text(text)),
                    Source::Image { url, param } => {
                        let bytes = image_bytes(&url, &param, limits)?;
                        decode_upload(&bytes, &param, limits.max_side).map(Part::Image)
                    }
                })
                .collect::<ApiResult<_>>()?;
            Ok(ChatMessage {
                role: message.role,
                parts,
            })
        })
        .collect()
}

/// An image URL's bytes: a base64 `data:` URL of an image type, or (when allowed) what an
/// http(s) URL answers.
fn image_bytes(url: &str, param: &str, limits: &ImageLimits) -> ApiResult<Vec<u8>> {
    let bad = |why: String| ApiError::invalid(param, why).code("invalid_image_url");
    let scheme = url.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("data") => data_url(url, param),
        Some("http" | "https") if limits.allow_remote => fetch(url, param, limits.max_bytes),
        Some("http" | "https") => Err(ApiError::invalid(
            param,
            format!(
                "`{param}`: this server does not fetch remote images (start it with \
                 --allow-remote-images); send the image as a data URL \
                 (data:image/png;base64,...)"
            ),
        )
        .code("remote_images_disabled")),
        _ => Err(bad(format!(
            "`{param}` must be a data: URL (data:image/png;base64,...){}",
            if limits.allow_remote {
                " or an http(s) URL"
            } else {
                ""
            }
        ))),
    }
}

/// The bytes of `data:image/<type>[;params];base64,<payload>`.
fn data_url(url: &str, param: &str) -> ApiResult<Vec<u8>> {
    let bad = |why: String| ApiError::invalid(param, why).code("invalid_image_url");
    let Some((meta, payload)) = url["data:".len()..].split_once(',') else {
        return Err(bad(format!(
            "`{param}` is not a data URL: no `,` before the data"
        )));
    };
    let meta = meta.to_ascii_lowercase();
    let mut meta = meta.split(';');
    let mime = meta.next().unwrap_or_default().trim().to_string();
    if !mime.starts_with("image/") {
        return Err(bad(format!(
            "`{param}` is a data URL of `{mime}`, not of an image (data:image/png;base64,...)"
        )));
    }
    if !meta.any(|p| p.trim() == "base64") {
        return Err(bad(format!(
            "`{param}` must be base64-encoded (data:{mime};base64,...)"
        )));
    }
    let payload: String = payload
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    LENIENT_BASE64
        .decode(payload)
        .map_err(|e| bad(format!("`{param}`: the data URL is not valid base64: {e}")))
}

/// Standard base64, padded or not.
const LENIENT_BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// Fetches a remote image: within [`FETCH_TIMEOUT`], [`FETCH_REDIRECTS`] redirects and
/// `max_bytes`; an answer other than 2xx is the caller's error.
fn fetch(url: &str, param: &str, max_bytes: usize) -> ApiResult<Vec<u8>> {
    let bad = |why: String| ApiError::invalid(param, why).code("image_fetch_failed");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(FETCH_REDIRECTS)
        .timeout_global(Some(FETCH_TIMEOUT))
        .user_agent(concat!("diffgentor/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let mut response = agent
        .get(url)
        .call()
        .map_err(|e| bad(format!("`{param}`: could not fetch the image: {e}")))?;
    let status = response.status();
    if !status.is_success() {
        return Err(bad(format!(
            "`{param}`: fetching the image answered HTTP {}",
            status.as_u16()
        )));
    }
    response
        .body_mut()
        .with_config()
        .limit(max_bytes as u64)
        .read_to_vec()
        .map_err(|e| match e {
            ureq::Error::BodyExceedsLimit(_) => bad(format!(
                "`{param}`: the image is larger than this server takes ({} MiB)",
                max_bytes >> 20
            ))
            .code("image_too_large"),
            other => bad(format!("`{param}`: could not read the image: {other}")),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(body: Value) -> ApiResult<Call> {
        let Value::Object(fields) = body else {
            panic!("an object")
        };
        parse(fields)
    }

    fn param(result: ApiResult<Call>) -> Option<String> {
        match result {
            Ok(_) => panic!("accepted"),
            Err(e) => {
                assert_eq!(e.status, StatusCode::BAD_REQUEST, "{}", e.message);
                e.param
            }
        }
    }

    fn user(content: Value) -> Value {
        json!([{"role": "user", "content": content}])
    }

    #[test]
    fn openai_fields_make_the_request() {
        let call = call(json!({
            "model": "anything",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
                    {"type": "text", "text": "What is it?"},
                ]},
            ],
            "max_tokens": 7, "temperature": 0.5, "top_p": 0.9, "seed": -1, "stop": "\n",
            "stream": true, "stream_options": {"include_usage": true}, "n": 1,
            "frequency_penalty": 0, "user": "ignored",
        }))
        .unwrap();
        assert_eq!(call.max_new_tokens, 7);
        assert_eq!(call.sampling.temperature, 0.5);
        assert_eq!(call.sampling.top_p, 0.9);
        assert_eq!(call.sampling.seed, u64::MAX);
        assert_eq!(call.stop, vec!["\n".to_string()]);
        assert!(call.stream && call.include_usage);
        assert_eq!(call.messages[0].role, "system");
        assert!(matches!(&call.messages[1].parts[..],
            [Source::Image { param, .. }, Source::Text(t)]
                if param == "messages[1].content[0].image_url" && t == "What is it?"));
    }

    #[test]
    fn greedy_and_the_context_are_the_defaults() {
        let call = call(json!({"messages": user(json!("hi"))})).unwrap();
        assert_eq!(call.sampling.temperature, 0.0);
        assert_eq!(call.max_new_tokens, MAX_NEW_TOKENS);
        assert!(!call.stream && !call.include_usage && call.stop.is_empty());
    }

    #[test]
    fn bad_fields_are_refused_by_name() {
        let messages = user(json!("hi"));
        for (extra, expected) in [
            (json!({"max_tokens": 0}), "max_tokens"),
            (
                json!({"max_completion_tokens": MAX_NEW_TOKENS + 1}),
                "max_completion_tokens",
            ),
            (
                json!({"max_tokens": 5, "max_completion_tokens": 6}),
                "max_tokens",
            ),
            (json!({"max_tokens": "5"}), "max_tokens"),
            (json!({"temperature": 2.5}), "temperature"),
            (json!({"top_p": 0}), "top_p"),
            (json!({"top_k": -2}), "top_k"),
            (json!({"repetition_penalty": 0}), "repetition_penalty"),
            (json!({"seed": 1.5}), "seed"),
            (json!({"stop": ""}), "stop"),
            (json!({"stop": [1]}), "stop"),
            (json!({"stop": vec!["x"; MAX_STOP_STRINGS + 1]}), "stop"),
            (json!({"n": 2}), "n"),
            (json!({"logprobs": true}), "logprobs"),
            (json!({"tools": [{"type": "function"}]}), "tools"),
            (
                json!({"response_format": {"type": "json_object"}}),
                "response_format",
            ),
            (json!({"presence_penalty": 1}), "presence_penalty"),
            (
                json!({"stream_options": {"include_usage": true}}),
                "stream_options",
            ),
            (json!({"stream": "yes"}), "stream"),
        ] {
            let mut body = extra.clone();
            body["messages"] = messages.clone();
            assert_eq!(param(call(body)).as_deref(), Some(expected), "{extra}");
        }
    }

    #[test]
    fn bad_messages_are_refused_by_name() {
        for (messages, expected) in [
            (json!(null), "messages"),
            (json!([]), "messages"),
            (json!(["hi"]), "messages[0]"),
            (
                json!([{"role": "tool", "content": "x"}]),
                "messages[0].role",
            ),
            (json!([{"content": "x"}]), "messages[0].role"),
            (json!([{"role": "user"}]), "messages[0].content"),
            (
                user(json!([{"type": "input_audio", "input_audio": {}}])),
                "messages[0].content[0].type",
            ),
            (
                user(json!([{"text": "no type"}])),
                "messages[0].content[0].type",
            ),
            (
                user(json!([{"type": "text", "text": 3}])),
                "messages[0].content[0].text",
            ),
            (
                user(json!([{"type": "image_url", "image_url": {}}])),
                "messages[0].content[0].image_url.url",
            ),
            (
                json!([{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]),
                "messages[0].content[0].type",
            ),
            (
                user(json!(vec![
                    json!({"type": "image_url", "image_url": {"url": "data:,"}});
                    MAX_IMAGES + 1
                ])),
                "messages",
            ),
        ] {
            let body = json!({"messages": messages});
            assert_eq!(param(call(body)).as_deref(), Some(expected), "{messages}");
        }
    }

    #[test]
    fn image_urls_are_data_urls_unless_remote_ones_are_allowed() {
        let limits = ImageLimits {
            max_side: 64,
            max_bytes: 1 << 20,
            allow_remote: false,
        };
        let code = |url: &str| match image_bytes(url, "p", &limits) {
            Ok(bytes) => format!("ok {}", bytes.len()),
            Err(e) => e.code.unwrap_or_default(),
        };
        assert_eq!(code("data:image/png;base64,aGVsbG8="), "ok 5");
        assert_eq!(code("DATA:Image/PNG;base64,aGVsbG8"), "ok 5");
        assert_eq!(code("data:image/png;base64,aGV sbG8=\n"), "ok 5");
        assert_eq!(code("data:text/plain;base64,aGVsbG8="), "invalid_image_url");
        assert_eq!(code("data:image/png,hello"), "invalid_image_url");
        assert_eq!(
            code("data:image/png;base64,not*base64"),
            "invalid_image_url"
        );
        assert_eq!(code("data:image/png;base64"), "invalid_image_url");
        assert_eq!(code("https://example.com/a.png"), "remote_images_disabled");
        assert_eq!(code("file:///etc/passwd"), "invalid_image_url");
        assert_eq!(code("/a.png"), "invalid_image_url");
    }
}
