//! Errors as the OpenAI API sends them: `{"error": {"message", "type", "param", "code"}}` with
//! the status its clients map to typed exceptions.
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use diffgentor::{Error, ErrorCode};
use serde_json::json;

/// Not in `http`'s list: nginx's "client closed request", which proxies and logs know.
const CANCELLED: StatusCode = match StatusCode::from_u16(499) {
    Ok(status) => status,
    Err(_) => StatusCode::BAD_REQUEST,
};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// The request field at fault, when one is.
    pub param: Option<String>,
    /// A stable, machine-readable reason (`queue_full`, `invalid_size`, diffgentor's code name).
    pub code: Option<String>,
    /// Seconds a client should wait before retrying (429, 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// A 400 naming the field at fault.
    pub fn invalid(param: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message).param(param)
    }

    pub fn param(mut self, param: &str) -> ApiError {
        self.param = Some(param.to_string());
        self
    }

    pub fn code(mut self, code: &str) -> ApiError {
        self.code = Some(code.to_string());
        self
    }

    pub fn retry_after(mut self, seconds: u64) -> ApiError {
        self.retry_after = Some(seconds);
        self
    }

    /// OpenAI's error `type` for a status.
    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            429 => "rate_limit_exceeded",
            400..=499 => "invalid_request_error",
            _ => "server_error",
        }
    }

    /// 499, nginx's "client closed request": the request was cancelled before it finished.
    pub fn cancelled() -> ApiError {
        ApiError::new(CANCELLED, "the request was cancelled").code("cancelled")
    }

    /// The error as a stream message (SSE event data, WebSocket message): the body with a
    /// `type` of `error`, which the OpenAI client raises on.
    pub fn event(&self) -> serde_json::Value {
        let mut body = self.body();
        body["type"] = json!("error");
        body
    }

    pub fn body(&self) -> serde_json::Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind(),
            "param": self.param,
            "code": self.code,
        }})
    }
}

/// A generator's failure: the caller's mistakes are 4xx, a remote service's refusals keep their
/// meaning, and only what is this server's own fault is a 500.
impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        let status = match e.code() {
            ErrorCode::InvalidArg | ErrorCode::NullArg => StatusCode::BAD_REQUEST,
            ErrorCode::Unsupported => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::Cancelled => CANCELLED,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::Refused => StatusCode::BAD_REQUEST,
            ErrorCode::Remote => StatusCode::BAD_GATEWAY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let code = match e.code() {
            ErrorCode::Refused => "content_policy_violation",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::InvalidArg | ErrorCode::NullArg => "invalid_value",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Remote => "upstream_error",
            _ => "generation_failed",
        };
        // A remote backend's failure keeps what the service said, but not where this server's
        // upstream lives (its endpoint is the operator's business, not the client's).
        let message = match e.remote() {
            Some(remote) => {
                let mut text = format!("the {} backend failed", remote.service);
                if let Some(status) = remote.status {
                    text.push_str(&format!(" (HTTP {status})"));
                }
                format!("{text}: {}", remote.message)
            }
            None => e.to_string(),
        };
        let mut error = ApiError::new(status, message).code(code);
        if let Some(kind) = e.remote().and_then(|r| r.error_type.clone()) {
            error.code = Some(kind);
        }
        error
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

pub type ApiResult<T> = std::result::Result<T, ApiError>;
