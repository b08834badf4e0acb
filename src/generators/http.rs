//! The HTTP calls remote generators make: one blocking client (ureq over rustls, no async runtime
//! in the library), requests and responses as plain values, `retry-after` parsing and multipart
//! bodies.
use std::time::{Duration, SystemTime};

use super::remote::cut;

/// Largest response body read (a 4K PNG as base64 JSON is about 40 MB).
const MAX_BODY_BYTES: u64 = 128 * 1024 * 1024;
/// Largest error answer read: error objects are small, and a hostile one must not cost more.
const MAX_ERROR_BODY_BYTES: u64 = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    Get,
    Post,
}

/// A call relative to an endpoint's base URL; the pool adds the base and the credentials.
#[derive(Debug, Clone)]
pub(crate) struct HttpRequest {
    pub method: Method,
    /// Appended to the base URL, e.g. `/images/generations`.
    pub path: String,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

impl HttpRequest {
    pub fn json(path: impl Into<String>, body: &serde_json::Value) -> HttpRequest {
        HttpRequest {
            method: Method::Post,
            path: path.into(),
            content_type: Some("application/json".into()),
            body: body.to_string().into_bytes(),
        }
    }

    pub fn get(path: impl Into<String>) -> HttpRequest {
        HttpRequest {
            method: Method::Get,
            path: path.into(),
            content_type: None,
            body: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct HttpResponse {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The delay the server asks for: `retry-after-ms`, else `retry-after` in seconds or as an
    /// HTTP date (what the official OpenAI client honours).
    pub fn retry_after(&self) -> Option<Duration> {
        if let Some(ms) = self.header("retry-after-ms") {
            if let Ok(ms) = ms.trim().parse::<f64>() {
                if ms.is_finite() && ms >= 0.0 {
                    return Some(seconds(ms / 1000.0));
                }
            }
        }
        let value = self.header("retry-after")?.trim();
        if let Ok(seconds) = value.parse::<f64>() {
            return (seconds.is_finite() && seconds >= 0.0).then(|| self::seconds(seconds));
        }
        let at = httpdate::parse_http_date(value).ok()?;
        Some(
            at.duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
        )
    }

    /// The body as UTF-8 text, lossy, cut for error messages.
    pub fn text_excerpt(&self) -> String {
        cut(String::from_utf8_lossy(&self.body).trim(), 300)
    }

    /// A response as a test needs it.
    #[cfg(test)]
    pub fn fake(status: u16, headers: &[(&str, &str)], body: impl Into<Vec<u8>>) -> HttpResponse {
        HttpResponse {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v.to_string()))
                .collect(),
            body: body.into(),
        }
    }
}

/// Why no response came back.
#[derive(Debug)]
pub(crate) enum TransportError {
    Timeout,
    /// The body is longer than the limit (in bytes) for its kind of answer.
    TooLarge(u64),
    /// Connecting failed, the connection broke, or the answer was not HTTP.
    Failed(String),
}

/// One blocking client shared by all calls of a pool (connections are reused).
pub(crate) fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .user_agent(concat!("diffgentor/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// Sends `request` to `base_url` + its path with the given extra headers, within `timeout`.
pub(crate) fn send(
    agent: &ureq::Agent,
    base_url: &str,
    headers: &[(&str, &str)],
    request: &HttpRequest,
    timeout: Duration,
) -> Result<HttpResponse, TransportError> {
    let url = format!("{}{}", base_url.trim_end_matches('/'), request.path);
    let result = match request.method {
        Method::Get => prepare(agent.get(&url), headers, timeout).call(),
        Method::Post => {
            let mut builder = agent.post(&url);
            if let Some(content_type) = &request.content_type {
                builder = builder.header("content-type", content_type);
            }
            prepare(builder, headers, timeout).send(&request.body[..])
        }
    };
    let mut response = result.map_err(transport_error)?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let limit = if (200..300).contains(&status) {
        MAX_BODY_BYTES
    } else {
        MAX_ERROR_BODY_BYTES
    };
    let body = response
        .body_mut()
        .with_config()
        .limit(limit)
        .read_to_vec()
        .map_err(|e| match e {
            ureq::Error::BodyExceedsLimit(_) => TransportError::TooLarge(limit),
            other => transport_error(other),
        })?;
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn prepare<B>(
    mut builder: ureq::RequestBuilder<B>,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> ureq::RequestBuilder<B> {
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.config().timeout_global(Some(timeout)).build()
}

/// A non-negative number of seconds as a `Duration`; one too large for it (a hostile
/// `retry-after: 1e20`) is `Duration::MAX` rather than a panic.
pub(crate) fn seconds(seconds: f64) -> Duration {
    Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX)
}

fn transport_error(err: ureq::Error) -> TransportError {
    match err {
        ureq::Error::Timeout(_) => TransportError::Timeout,
        ureq::Error::Io(e) if e.kind() == std::io::ErrorKind::TimedOut => TransportError::Timeout,
        other => TransportError::Failed(other.to_string()),
    }
}

/// A `multipart/form-data` body, as the OpenAI edits endpoint takes it.
pub(crate) struct Multipart {
    boundary: String,
    body: Vec<u8>,
}

impl Multipart {
    pub fn new() -> Multipart {
        // Unique enough that no PNG or prompt contains it by chance.
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Multipart {
            boundary: format!("diffgentor-{nanos:x}-{:x}", std::process::id()),
            body: Vec::new(),
        }
    }

    fn part_header(&mut self, name: &str, file: Option<(&str, &str)>) {
        self.body
            .extend_from_slice(format!("--{}\r\n", self.boundary).as_bytes());
        let name = name.replace(['"', '\r', '\n'], "_");
        match file {
            Some((filename, content_type)) => self.body.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\n\
                     Content-Type: {content_type}\r\n\r\n"
                )
                .as_bytes(),
            ),
            None => self.body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
    }

    pub fn text(&mut self, name: &str, value: &str) {
        self.part_header(name, None);
        self.body.extend_from_slice(value.as_bytes());
        self.body.extend_from_slice(b"\r\n");
    }

    pub fn file(&mut self, name: &str, filename: &str, content_type: &str, bytes: &[u8]) {
        self.part_header(name, Some((filename, content_type)));
        self.body.extend_from_slice(bytes);
        self.body.extend_from_slice(b"\r\n");
    }

    /// The finished request for `path`.
    pub fn into_request(mut self, path: impl Into<String>) -> HttpRequest {
        self.body
            .extend_from_slice(format!("--{}--\r\n", self.boundary).as_bytes());
        HttpRequest {
            method: Method::Post,
            path: path.into(),
            content_type: Some(format!("multipart/form-data; boundary={}", self.boundary)),
            body: self.body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(headers: &[(&str, &str)]) -> HttpResponse {
        HttpResponse::fake(429, headers, Vec::new())
    }

    #[test]
    fn retry_after_prefers_milliseconds_then_seconds_then_dates() {
        let r = response(&[("retry-after-ms", "250"), ("retry-after", "3")]);
        assert_eq!(r.retry_after(), Some(Duration::from_millis(250)));
        assert_eq!(
            response(&[("retry-after", "2.5")]).retry_after(),
            Some(Duration::from_millis(2500))
        );
        let soon = SystemTime::now() + Duration::from_secs(30);
        let date = httpdate::fmt_http_date(soon);
        let delay = response(&[("retry-after", &date)]).retry_after().unwrap();
        assert!(delay > Duration::from_secs(28) && delay <= Duration::from_secs(30));
        let past = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(30));
        assert_eq!(
            response(&[("retry-after", &past)]).retry_after(),
            Some(Duration::ZERO)
        );
        // Absurd delays saturate (and the pool refuses to wait that long) instead of panicking.
        for huge in [("retry-after", "1e20"), ("retry-after-ms", "1e300")] {
            assert_eq!(
                response(&[huge]).retry_after(),
                Some(Duration::MAX),
                "{huge:?}"
            );
        }
        for bad in ["soon", "-1", "NaN"] {
            assert_eq!(
                response(&[("retry-after", bad)]).retry_after(),
                None,
                "{bad}"
            );
        }
        assert_eq!(response(&[]).retry_after(), None);
    }

    #[test]
    fn multipart_parts_are_delimited() {
        let mut form = Multipart::new();
        form.text("prompt", "a \"fox\"");
        form.file("image[]", "0.png", "image/png", b"\x89PNG");
        let request = form.into_request("/images/edits");
        let content_type = request.content_type.unwrap();
        let boundary = content_type.split("boundary=").nth(1).unwrap();
        let body = String::from_utf8_lossy(&request.body);
        assert!(body.starts_with(&format!("--{boundary}\r\n")));
        assert!(body.ends_with(&format!("--{boundary}--\r\n")));
        assert!(body.contains("name=\"prompt\"\r\n\r\na \"fox\"\r\n"));
        assert!(body.contains(
            "name=\"image[]\"; filename=\"0.png\"\r\nContent-Type: image/png\r\n\r\n\u{fffd}PNG\r\n"
        ));
    }
}
