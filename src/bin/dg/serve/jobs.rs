//! The native job API: `POST /v1/jobs` answers at once with an id; the job's state is polled
//! (`GET /v1/jobs/{id}`), streamed as Server-Sent Events (`GET /v1/jobs/{id}/events`) or over a
//! WebSocket (`/v1/ws`), and cancelled (`POST /v1/jobs/{id}/cancel`). Bodies are the generations
//! call's JSON, plus `image` and `mask` as base64 for edits.
use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use futures_util::stream::{self, Stream};
use serde_json::{json, Map, Value};

use super::error::{ApiError, ApiResult};
use super::images::{decode_mask, decode_upload};
use super::openai::json_fields;
use super::params;
use super::queue::{Job, JobState};
use super::state::AppState;

pub async fn create(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let fields = json_fields(&headers, body)?;
    let job = submit(&state, &fields)?;
    Ok((StatusCode::ACCEPTED, Json(view(&state, &job))).into_response())
}

pub async fn get(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let job = state.job(&id)?;
    Ok(Json(view(&state, &job)))
}

pub async fn cancel(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let job = state.job(&id)?;
    job.request_cancel();
    Ok(Json(view(&state, &job)))
}

/// Every change of the job's state as an event named for the state (`queued`, `running`,
/// `done`, `failed`, `cancelled`); the stream ends after the last.
pub async fn events(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let job = state.job(&id)?;
    let changes = job.subscribe();
    // Each event goes out as soon as its state is current; the wait for the next change comes
    // after it (a queued job's `queued` must not wait for the job to start).
    let events = stream::unfold(Some((state, job, changes, true)), |next| async move {
        let (state, job, mut changes, first) = next?;
        if !first && changes.changed().await.is_err() {
            return None;
        }
        let current = changes.borrow_and_update().clone();
        let event = Event::default()
            .event(current.name())
            .data(view(&state, &job).to_string());
        let more = (!current.finished()).then_some((state, job, changes, false));
        Some((Ok(event), more))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// A WebSocket carrying JSON messages: `{"type": "submit", ...call}` queues a job and follows it,
/// `{"type": "subscribe", "id"}` follows an existing one, `{"type": "cancel", "id"}` cancels one.
/// The server answers with the job's state after every change (`{"type": "job", ...}`) and
/// errors as `{"type": "error", "error": {...}}`.
pub async fn websocket(State(state): State<Arc<AppState>>, upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(move |socket| session(state, socket))
}

async fn session(state: Arc<AppState>, mut socket: WebSocket) {
    while let Some(Ok(message)) = socket.recv().await {
        let Message::Text(text) = message else {
            if matches!(message, Message::Close(_)) {
                return;
            }
            continue;
        };
        let answer = match serde_json::from_str::<Value>(text.as_str()) {
            Ok(Value::Object(fields)) => command(&state, &fields),
            _ => Err(ApiError::invalid(
                "type",
                "messages are JSON objects with a `type`",
            )),
        };
        let followed = match answer {
            Ok(job) => follow(&state, &job, &mut socket).await,
            Err(e) => send(&mut socket, &error_message(&e)).await,
        };
        if followed.is_err() {
            return;
        }
    }
}

fn command(state: &AppState, fields: &Map<String, Value>) -> ApiResult<Arc<Job>> {
    let id = || match fields.get("id") {
        Some(Value::String(id)) => state.job(id),
        _ => Err(ApiError::invalid("id", "`id` is required")),
    };
    match fields.get("type").and_then(Value::as_str) {
        Some("submit") => submit(state, fields),
        Some("subscribe") => id(),
        Some("cancel") => {
            let job = id()?;
            job.request_cancel();
            Ok(job)
        }
        _ => Err(ApiError::invalid(
            "type",
            "`type` must be submit, subscribe or cancel",
        )),
    }
}

/// Sends the job's state after every change until it ends.
async fn follow(state: &AppState, job: &Job, socket: &mut WebSocket) -> Result<(), axum::Error> {
    let mut changes = job.subscribe();
    loop {
        let current = changes.borrow_and_update().clone();
        let mut message = view(state, job);
        message["type"] = json!("job");
        send(socket, &message).await?;
        if current.finished() || changes.changed().await.is_err() {
            return Ok(());
        }
    }
}

async fn send(socket: &mut WebSocket, message: &Value) -> Result<(), axum::Error> {
    socket.send(Message::Text(message.to_string().into())).await
}

fn error_message(e: &ApiError) -> Value {
    let mut body = e.body();
    body["type"] = json!("error");
    body
}

/// Queues a job from a generations body, with `image`/`mask` (base64) for edits.
fn submit(state: &AppState, fields: &Map<String, Value>) -> ApiResult<Arc<Job>> {
    let mut call = params::parse(fields, &state.description, &state.settings.policy)?;
    let max_side = state.settings.policy.max_side;
    if let Some(bytes) = base64_field(fields, "image")? {
        call.request.init_image = Some(decode_upload(&bytes, "image", max_side)?);
    }
    if let Some(bytes) = base64_field(fields, "mask")? {
        call.request.mask = Some(decode_mask(&bytes, max_side)?);
    }
    state.check_task(&call.request)?;
    state.submit(call.request)
}

/// A base64 field (a `data:` URL's payload is taken too).
fn base64_field(fields: &Map<String, Value>, key: &str) -> ApiResult<Option<Vec<u8>>> {
    let Some(value) = fields.get(key).filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let text = value
        .as_str()
        .ok_or_else(|| ApiError::invalid(key, format!("`{key}` must be a base64 string")))?;
    let payload = text.split_once(";base64,").map_or(text, |(_, data)| data);
    base64::engine::general_purpose::STANDARD
        .decode(payload.trim())
        .map(Some)
        .map_err(|e| ApiError::invalid(key, format!("`{key}` is not valid base64: {e}")))
}

/// What a client sees of a job: its state, queue position or progress, and when it ended its
/// images (PNG, base64), seed and size, or its error.
fn view(state: &AppState, job: &Job) -> Value {
    let current = job.state();
    let mut view = json!({
        "id": job.id,
        "object": "job",
        "status": current.name(),
        "created": job.created.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
    });
    match &current {
        JobState::Queued => {
            view["position"] = json!(state.queue.position(job));
        }
        JobState::Running {
            step,
            total,
            stage,
            stages,
        } => {
            view["progress"] =
                json!({"step": step, "total": total, "stage": stage, "stages": stages});
        }
        JobState::Done(output) => {
            let replica = &state.replicas[job.replica().unwrap_or(0)];
            let parameters = crate::generate::parameters_text(&job.request, output, replica);
            let images: ApiResult<Vec<Value>> = output
                .images
                .iter()
                .map(|image| {
                    let bytes = image
                        .encode_png(&[("parameters", &parameters)])
                        .map_err(ApiError::from)?;
                    Ok(json!({"b64_json": base64::engine::general_purpose::STANDARD.encode(bytes)}))
                })
                .collect();
            match images {
                Ok(images) => view["images"] = json!(images),
                Err(e) => view["error"] = e.body()["error"].clone(),
            }
            view["seed"] = json!(output.seed);
            view["size"] = json!(format!("{}x{}", output.width, output.height));
        }
        JobState::Failed(e) => view["error"] = e.body()["error"].clone(),
        JobState::Cancelled => {}
    }
    view
}
