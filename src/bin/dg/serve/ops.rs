//! Health for orchestrators and metrics for Prometheus.
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::state::AppState;

/// The process is alive.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Ready for work: not shutting down, and a worker free or room in the queue; 503 with the
/// reason otherwise.
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let (waiting, running) = state.queue.depth();
    let reason = if state.shutting_down.load(Ordering::Acquire) {
        Some("shutting down".to_string())
    } else if running >= state.queue.workers() && waiting >= state.queue.capacity() {
        Some(format!("the queue is full ({waiting} waiting)"))
    } else {
        None
    };
    let body = json!({
        "status": if reason.is_some() { "unavailable" } else { "ready" },
        "reason": reason,
        "model": state.description.as_ref().map(|d| &d.name),
        "vlm": state.vlm.as_ref().map(|v| &v.name),
        "replicas": state.replicas.len(),
        "workers": state.queue.workers(),
        "queued": waiting,
        "running": running,
    });
    let status = if reason.is_some() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, Json(body)).into_response()
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}
