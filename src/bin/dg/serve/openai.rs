//! The OpenAI Images endpoints: `POST /v1/images/generations` (JSON), `POST /v1/images/edits`
//! (multipart), `GET /v1/models` (the image model and the VLM), and the files
//! `response_format: url` points at.
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::multipart::{Multipart, MultipartRejection};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream};
use serde_json::{json, Map, Value};

use super::error::{ApiError, ApiResult};
use super::images::{decode_mask, decode_upload, encode};
use super::params::{self, Call, ResponseFormat};
use super::queue::{Job, JobState};
use super::state::AppState;
use crate::generate::parameters_text;

/// The sizes the spec's stream events may name.
const SPEC_SIZES: [&str; 3] = ["1024x1024", "1024x1536", "1536x1024"];

/// Most images one edit may upload (the OpenAI API's limit).
const MAX_EDIT_IMAGES: usize = 16;

pub async fn generations(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let description = state.image_model()?;
    let fields = json_fields(&headers, body)?;
    let call = params::parse(&fields, description, &state.settings.policy)?;
    run(state, &headers, call, "image_generation").await
}

pub async fn edits(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult<Response> {
    let description = state.image_model()?.clone();
    state.check_mode(true)?;
    let mut multipart = multipart.map_err(|e| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("edits take a multipart/form-data body: {e}"),
        )
        .code("invalid_content_type")
    })?;
    let mut fields = Map::new();
    let mut images = Vec::new();
    let mut mask = None;
    while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
        let name = field.name().unwrap_or_default().to_string();
        match name.as_str() {
            "image" | "image[]" => images.push(field.bytes().await.map_err(multipart_error)?),
            "mask" => mask = Some(field.bytes().await.map_err(multipart_error)?),
            _ => {
                let text = field.text().await.map_err(multipart_error)?;
                fields.insert(name, Value::String(text));
            }
        }
    }
    let max_side = state.settings.policy.max_side;
    let image = match images.as_slice() {
        [] => return Err(ApiError::invalid("image", "`image` is required")),
        [one] => decode_upload(one, "image", max_side)?,
        more if more.len() > MAX_EDIT_IMAGES => {
            return Err(ApiError::invalid(
                "image",
                format!("at most {MAX_EDIT_IMAGES} images, got {}", more.len()),
            ))
        }
        more => {
            return Err(ApiError::invalid(
                "image",
                format!(
                    "{} edits one image per request; got {} (several reference images need a \
                     model that takes them)",
                    description.name,
                    more.len()
                ),
            )
            .code("unsupported_task"))
        }
    };
    let mut call = params::parse(&fields, &description, &state.settings.policy)?;
    if let (Some(w), Some(h)) = (call.request.width, call.request.height) {
        if (w, h) != (image.width, image.height) {
            return Err(ApiError::invalid(
                "size",
                format!(
                    "`size` {w}x{h} differs from the image's {}x{}; edits keep the image's size \
                     (send auto)",
                    image.width, image.height
                ),
            ));
        }
    }
    if let Some(mask) = mask {
        let mask = decode_mask(&mask, max_side)?;
        if (mask.width, mask.height) != (image.width, image.height) {
            return Err(ApiError::invalid(
                "mask",
                format!(
                    "`mask` is {}x{} but the image is {}x{}",
                    mask.width, mask.height, image.width, image.height
                ),
            ));
        }
        call.request.mask = Some(mask);
    }
    call.request.init_image = Some(image);
    run(state, &headers, call, "image_edit").await
}

/// Runs a call through the queue and answers as JSON, or as an event stream when it asked for
/// one. `event` prefixes the stream's event types (`image_generation`, `image_edit`).
async fn run(
    state: Arc<AppState>,
    headers: &HeaderMap,
    call: Call,
    event: &'static str,
) -> ApiResult<Response> {
    state.check_task(&call.request)?;
    let job = state.submit(call.request.clone())?;
    if call.stream {
        return Ok(stream(state, job, call, event).into_response());
    }
    let base = base_url(headers);
    let finished = Finished::wait(&state, job).await?;
    let data = finished.data(&state, &call, &base)?;
    Ok(Json(json!({
        "created": unix_now(),
        "data": data,
        "output_format": call.output_format.name(),
    }))
    .into_response())
}

/// A job that ended well, with what its images need.
struct Finished {
    job: Arc<Job>,
    output: Arc<diffgentor::Output>,
}

impl Finished {
    /// Waits for a job, cancelling it when this future is dropped (the client went away); the
    /// job is forgotten once answered. The request timeout is the worker's to enforce.
    async fn wait(state: &Arc<AppState>, job: Arc<Job>) -> ApiResult<Finished> {
        let guard = CancelOnDrop::new(state, &job);
        let outcome = finished(&job).await;
        drop(guard);
        state.forget(&job.id);
        match outcome {
            JobState::Done(output) => Ok(Finished { job, output }),
            JobState::Failed(e) => Err(e),
            _ => Err(ApiError::cancelled()),
        }
    }

    /// The answer's `data[]`: each image inline or as a URL on this server.
    fn data(&self, state: &AppState, call: &Call, base: &str) -> ApiResult<Vec<Value>> {
        let parameters = parameters(state, &self.job, &self.output);
        self.output
            .images
            .iter()
            .map(|image| {
                let bytes = encode(image, call.output_format, &parameters)?;
                Ok(match call.response_format {
                    ResponseFormat::B64Json => json!({"b64_json": b64(&bytes)}),
                    ResponseFormat::Url => {
                        let name = state.files.put(bytes, call.output_format)?;
                        json!({"url": format!("{base}/v1/files/{name}")})
                    }
                })
            })
            .collect()
    }
}

/// The `parameters` text `dg generate` would write for a finished job's request.
pub fn parameters(state: &AppState, job: &Job, output: &diffgentor::Output) -> String {
    let replica = job.replica().unwrap_or(0);
    // Jobs only run on the replicas, so the index is in range; the first stands in otherwise.
    let backend = state.replicas.get(replica).unwrap_or(&state.replicas[0]);
    match job.image_request() {
        Some(request) => parameters_text(request, output, backend),
        None => String::new(),
    }
}

/// Resolves once the job has ended, with its final state.
pub async fn finished(job: &Job) -> JobState {
    let mut changes = job.subscribe();
    loop {
        let state = changes.borrow_and_update().clone();
        if state.finished() || changes.changed().await.is_err() {
            return job.state();
        }
    }
}

/// Cancels a job unless it has ended: held while a client waits on it.
pub struct CancelOnDrop {
    state: Arc<AppState>,
    job: Arc<Job>,
}

impl CancelOnDrop {
    pub fn new(state: &Arc<AppState>, job: &Arc<Job>) -> CancelOnDrop {
        CancelOnDrop {
            state: state.clone(),
            job: job.clone(),
        }
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.job.state().finished() {
            self.state.queue.cancel(&self.job);
        }
    }
}

/// The call as Server-Sent Events: one `<event>.completed` per image (the final image; this
/// server sends no partial images), or an error event.
fn stream(
    state: Arc<AppState>,
    job: Arc<Job>,
    call: Call,
    event: &'static str,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let events = async move {
        let events: Vec<Value> = match Finished::wait(&state, job).await {
            Ok(finished) => {
                // Stream events always carry the image (the spec has no URL there), and a size
                // only when it is one the spec's enum lists.
                let inline = Call {
                    response_format: ResponseFormat::B64Json,
                    ..call.clone()
                };
                let size = format!("{}x{}", finished.output.width, finished.output.height);
                let size = if SPEC_SIZES.contains(&size.as_str()) {
                    size
                } else {
                    "auto".into()
                };
                match finished.data(&state, &inline, "") {
                    Ok(data) => data
                        .into_iter()
                        .map(|entry| {
                            json!({
                                "type": format!("{event}.completed"),
                                "b64_json": entry["b64_json"],
                                "created_at": unix_now(),
                                "size": size,
                                "quality": "auto",
                                "background": "opaque",
                                "output_format": call.output_format.name(),
                                "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0,
                                          "input_tokens_details": {"text_tokens": 0, "image_tokens": 0}},
                            })
                        })
                        .collect(),
                    Err(e) => vec![e.event()],
                }
            }
            Err(e) => vec![e.event()],
        };
        stream::iter(events.into_iter().map(|data| {
            let kind = data["type"].as_str().unwrap_or("error").to_string();
            Ok(Event::default().event(kind).data(data.to_string()))
        }))
    };
    Sse::new(futures_util::StreamExt::flatten(stream::once(events)))
        .keep_alive(KeepAlive::default())
}

/// The models served: the image model (when there is one), then the VLM (when there is one).
pub async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({"object": "list", "data": model_entries(&state)}))
}

pub async fn model(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    model_entries(&state)
        .into_iter()
        .find(|entry| entry["id"] == id.as_str())
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(StatusCode::NOT_FOUND, format!("no model `{id}`")).code("model_not_found")
        })
}

fn model_entries(state: &AppState) -> Vec<Value> {
    let entry = |id: &str, owner: &str| {
        json!({
            "id": id,
            "object": "model",
            "created": 0,
            "owned_by": format!("diffgentor ({owner})"),
        })
    };
    let images = state.description.as_ref().map(|d| entry(&d.name, d.kind));
    let vlm = state.vlm.as_ref().map(|v| entry(&v.name, "vlm"));
    images.into_iter().chain(vlm).collect()
}

/// An image kept for `response_format: url`.
pub async fn file(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let (bytes, mime) = state.files.get(&name).ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "no such image (image URLs expire)")
            .code("file_not_found")
    })?;
    Ok(([(header::CONTENT_TYPE, mime)], bytes).into_response())
}

/// A JSON body's object, or the error the OpenAI API gives for it.
pub fn json_fields(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Map<String, Value>> {
    let body = body.map_err(|e| body_error(e.status(), e.body_text()))?;
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|m| m.trim() == "application/json")
        });
    if !is_json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be JSON (Content-Type: application/json)",
        )
        .code("invalid_content_type"));
    }
    json_object(&body)
}

/// `body` parsed as a JSON object; anything else is a 400 `invalid_json`.
pub(super) fn json_object(body: &[u8]) -> ApiResult<Map<String, Value>> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(fields)) => Ok(fields),
        Ok(_) => Err(
            ApiError::new(StatusCode::BAD_REQUEST, "the body must be a JSON object")
                .code("invalid_json"),
        ),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the body is not valid JSON: {e}"),
        )
        .code("invalid_json")),
    }
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    body_error(e.status(), e.body_text())
}

/// A body that could not be read: too large (413) or malformed (400).
fn body_error(status: StatusCode, text: String) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(status, format!("the body is too large: {text}")).code("body_too_large")
    } else {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the body could not be read: {text}"),
        )
        .code("invalid_body")
    }
}

/// `http://host:port` as the client reached this server, for image URLs.
fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}")
}

pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
