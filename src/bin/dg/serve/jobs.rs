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
use tokio::sync::watch;

use super::error::{ApiError, ApiResult};
use super::images::{decode_mask, decode_upload, encode};
use super::openai::{b64, json_fields, parameters, CancelOnDrop};
use super::params;
use super::params::OutputFormat;
use super::queue::{Job, JobState};
use super::state::AppState;

pub async fn create(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    state.image_model()?;
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
    state.queue.cancel(&job);
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
/// `{"type": "subscribe", "id"}` follows an existing one, `{"type": "cancel", "id"}` cancels one
/// (also while another is followed). The server answers with the job's state after every change
/// (`{"type": "job", ...}`) and errors as `{"type": "error", "error": {...}}`. Messages are
/// limited to the request body limit; closing the socket cancels the jobs it submitted.
pub async fn websocket(State(state): State<Arc<AppState>>, upgrade: WebSocketUpgrade) -> Response {
    upgrade
        .max_message_size(state.settings.max_body)
        .max_frame_size(state.settings.max_body)
        .on_upgrade(move |socket| session(state, socket))
}

/// What a message asked for.
enum Command {
    Follow(Arc<Job>),
    /// A job this socket submitted: cancelled if the socket goes away first.
    FollowOwn(Arc<Job>),
    Cancelled(Arc<Job>),
}

async fn session(state: Arc<AppState>, mut socket: WebSocket) {
    // The job followed now, its changes, and the guard that cancels it when it is this socket's.
    let mut followed: Option<(Arc<Job>, watch::Receiver<JobState>, Option<CancelOnDrop>)> = None;
    loop {
        let changed = async {
            match &mut followed {
                Some((_, changes, _)) => changes.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            alive = changed => {
                let Some((job, changes, _)) = &mut followed else { continue };
                let ended = !alive || changes.borrow_and_update().finished();
                if send(&mut socket, &job_message(&state, job)).await.is_err() {
                    return;
                }
                if ended {
                    followed = None;
                }
            }
            message = socket.recv() => {
                let Some(Ok(message)) = message else { return };
                let text = match message {
                    Message::Text(text) => text,
                    Message::Close(_) => return,
                    _ => continue,
                };
                let answer = match serde_json::from_str::<Value>(text.as_str()) {
                    Ok(Value::Object(fields)) => command(&state, &fields, followed.is_some()),
                    _ => Err(ApiError::invalid("type", "messages are JSON objects with a `type`")),
                };
                let reply = match answer {
                    Ok(Command::Cancelled(job)) => job_message(&state, &job),
                    Ok(Command::Follow(job)) => {
                        let reply = job_message(&state, &job);
                        followed = Some((job.clone(), job.subscribe(), None));
                        reply
                    }
                    Ok(Command::FollowOwn(job)) => {
                        let reply = job_message(&state, &job);
                        let guard = CancelOnDrop::new(&state, &job);
                        followed = Some((job.clone(), job.subscribe(), Some(guard)));
                        reply
                    }
                    Err(e) => e.event(),
                };
                if send(&mut socket, &reply).await.is_err() {
                    return;
                }
                if followed.as_ref().is_some_and(|(job, _, _)| job.state().finished()) {
                    followed = None;
                }
            }
        }
    }
}

fn command(state: &AppState, fields: &Map<String, Value>, busy: bool) -> ApiResult<Command> {
    let id = || match fields.get("id") {
        Some(Value::String(id)) => state.job(id),
        _ => Err(ApiError::invalid("id", "`id` is required")),
    };
    let kind = fields.get("type").and_then(Value::as_str);
    if busy && matches!(kind, Some("submit" | "subscribe")) {
        return Err(ApiError::invalid(
            "type",
            "this socket follows a job until it ends; open another socket to follow more",
        ));
    }
    match kind {
        Some("submit") => submit(state, fields).map(Command::FollowOwn),
        Some("subscribe") => id().map(Command::Follow),
        Some("cancel") => {
            let job = id()?;
            state.queue.cancel(&job);
            Ok(Command::Cancelled(job))
        }
        _ => Err(ApiError::invalid(
            "type",
            "`type` must be submit, subscribe or cancel",
        )),
    }
}

fn job_message(state: &AppState, job: &Job) -> Value {
    let mut message = view(state, job);
    message["type"] = json!("job");
    message
}

async fn send(socket: &mut WebSocket, message: &Value) -> Result<(), axum::Error> {
    socket.send(Message::Text(message.to_string().into())).await
}

/// Queues a job from a generations body, with `image`/`mask` (base64) for edits.
fn submit(state: &AppState, fields: &Map<String, Value>) -> ApiResult<Arc<Job>> {
    let mut call = params::parse(fields, state.image_model()?, &state.settings.policy)?;
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

/// A finished job's images as PNGs in base64, each with the `parameters` text `dg generate`
/// writes; an encoding failure (a bug) is reported in place of the list.
fn encode_images(state: &AppState, job: &Job, output: &diffgentor::Output) -> Value {
    let parameters = parameters(state, job, output);
    let images: ApiResult<Vec<Value>> = output
        .images
        .iter()
        .map(|image| {
            let bytes = encode(image, OutputFormat::Png, &parameters)?;
            Ok(json!({"b64_json": b64(&bytes)}))
        })
        .collect();
    match images {
        Ok(images) => Value::Array(images),
        Err(e) => json!({"error": e.body()["error"]}),
    }
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
            view["images"] = job
                .encoded
                .get_or_init(|| encode_images(state, job, output))
                .clone();
            view["seed"] = json!(output.seed);
            view["size"] = json!(format!("{}x{}", output.width, output.height));
        }
        // Chat completions are not shown by the job API; their text, should one be looked at.
        JobState::Answered(output) => view["text"] = json!(output.text),
        JobState::Failed(e) => view["error"] = e.body()["error"].clone(),
        JobState::Cancelled => {}
    }
    view
}
