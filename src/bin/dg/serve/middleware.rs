//! What every request passes through: an id and a log line (never the key or image bytes),
//! metrics by route, and the API key check.
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::images::random_id;
use super::state::AppState;

/// Paths anyone may read: probes, and the unguessable image URLs handed to clients.
fn open(path: &str) -> bool {
    path == "/healthz" || path == "/readyz" || path.starts_with("/v1/files/")
}

pub async fn observe(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = random_id(8).unwrap_or_default();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let method = request.method().clone();
    let mut response = next.run(request).await;
    let status = response.status();
    state
        .metrics
        .record_request(&route, status.as_u16(), started.elapsed());
    tracing::info!(
        request_id = %id,
        %method,
        route = %route,
        status = status.as_u16(),
        ms = started.elapsed().as_millis() as u64,
        "request"
    );
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

pub async fn authorize(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(key) = &state.settings.api_key else {
        return next.run(request).await;
    };
    if open(request.uri().path()) {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if constant_time_eq(given.as_bytes(), key.as_bytes()) {
        return next.run(request).await;
    }
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "missing or wrong API key (send Authorization: Bearer <key>)",
    )
    .code("invalid_api_key")
    .into_response()
}

/// Compares without an early exit, so timing says nothing of how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let differ = a
        .iter()
        .zip(b.iter().cycle())
        .fold(a.len() ^ b.len(), |acc, (x, y)| acc | usize::from(x ^ y));
    differ == 0 && !b.is_empty()
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn keys_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        for wrong in [&b""[..], b"secre", b"secret!", b"Secret", b"secretsecret"] {
            assert!(!constant_time_eq(wrong, b"secret"), "{wrong:?}");
        }
    }
}
