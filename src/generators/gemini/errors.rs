//! Error answers: what is worth retrying and when (`RetryInfo`, `retry-after`), what takes a key
//! out of the rotation (a daily quota, one of 0, or a key the service refuses), and the service's
//! `status` as the error type.
use std::time::Duration;

use serde_json::Value;

use crate::error::RemoteFailure;
use crate::generators::http::{self, HttpResponse};
use crate::generators::pool::{Failure, Verdict};
use crate::generators::remote::cut;

/// The verdict on an error status: what is worth retrying, when, and what takes a key out.
pub(super) fn classify_error(response: &HttpResponse) -> Verdict {
    let status = response.status;
    let body: Option<Value> = serde_json::from_slice(&response.body).ok();
    // Some Google front ends wrap the error object in a one-element array.
    let error = body
        .as_ref()
        .map(|b| b.as_array().and_then(|a| a.first()).unwrap_or(b))
        .and_then(|b| b.get("error"));
    let details = error
        .and_then(|e| e.get("details"))
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let message = error
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .filter(|m| !m.trim().is_empty())
        .map_or_else(|| excerpt(response), |m| cut(m.trim(), 1000));
    let failure = |kind| Failure {
        kind,
        status: Some(status),
        error_type: error
            .and_then(|e| e.get("status"))
            .and_then(Value::as_str)
            .map(str::to_string),
        message: message.clone(),
    };
    match status {
        // A wrong, expired or unauthorised key: no retry with it helps, another key may serve.
        401 | 403 => Verdict::KeyExhausted(failure(RemoteFailure::Error)),
        400 if refuses_the_key(details) => Verdict::KeyExhausted(failure(RemoteFailure::Error)),
        429 => {
            if let Some(quota) = daily_quota(details, &message) {
                let mut failure = failure(RemoteFailure::RateLimited);
                failure.message =
                    format!("{} (quota {quota} is used up for the day)", failure.message);
                return Verdict::KeyExhausted(failure);
            }
            Verdict::Retry {
                after: retry_delay(details).or_else(|| response.retry_after()),
                failure: failure(RemoteFailure::RateLimited),
            }
        }
        408 | 500 | 502 | 503 | 504 => Verdict::Retry {
            after: retry_delay(details).or_else(|| response.retry_after()),
            failure: failure(if matches!(status, 408 | 504) {
                RemoteFailure::Timeout
            } else {
                RemoteFailure::Error
            }),
        },
        _ => Verdict::Fail(failure(RemoteFailure::Error)),
    }
}

/// Whether a 400's `ErrorInfo` says the key itself is bad (`API_KEY_INVALID`: "API key not
/// valid"), which Gemini answers with 400 rather than 401.
fn refuses_the_key(details: &[Value]) -> bool {
    details
        .iter()
        .filter(|d| type_is(d, "google.rpc.ErrorInfo"))
        .filter_map(|d| d.get("reason").and_then(Value::as_str))
        .any(|reason| reason == "API_KEY_INVALID")
}

/// The quota a 429 says is gone until tomorrow (or was never granted: a limit of 0), if any.
fn daily_quota(details: &[Value], message: &str) -> Option<String> {
    let violations = details
        .iter()
        .filter(|d| type_is(d, "google.rpc.QuotaFailure"))
        .filter_map(|d| d.get("violations").and_then(Value::as_array))
        .flatten();
    for violation in violations {
        let id = ["quotaId", "quotaMetric"]
            .iter()
            .filter_map(|k| violation.get(*k).and_then(Value::as_str))
            .find(|v| v.to_ascii_lowercase().contains("perday"));
        let zero = violation.get("quotaValue").and_then(Value::as_str) == Some("0");
        if id.is_some() || zero {
            let name = id
                .or_else(|| violation.get("quotaId").and_then(Value::as_str))
                .unwrap_or("with a limit of 0");
            return Some(name.to_string());
        }
    }
    let lower = message.to_ascii_lowercase();
    (lower.contains("per day") || lower.contains("perday")).then(|| "per day".to_string())
}

/// `RetryInfo.retryDelay`, a protobuf Duration in JSON (`"37s"`, `"1.5s"`).
fn retry_delay(details: &[Value]) -> Option<Duration> {
    details
        .iter()
        .filter(|d| type_is(d, "google.rpc.RetryInfo"))
        .filter_map(|d| d.get("retryDelay").and_then(Value::as_str))
        .find_map(parse_duration)
}

fn parse_duration(text: &str) -> Option<Duration> {
    let seconds: f64 = text.trim().strip_suffix('s')?.trim().parse().ok()?;
    // A hostile "1e30s" saturates (the pool then refuses to wait) rather than panicking.
    (seconds.is_finite() && seconds >= 0.0).then(|| http::seconds(seconds))
}

/// Whether a `details` entry has the given protobuf type (`type.googleapis.com/<name>`).
fn type_is(detail: &Value, name: &str) -> bool {
    detail
        .get("@type")
        .and_then(Value::as_str)
        .is_some_and(|t| t.rsplit('/').next() == Some(name))
}

/// The body for an error message, or a word that it was empty.
pub(super) fn excerpt(response: &HttpResponse) -> String {
    let text = response.text_excerpt();
    if text.is_empty() {
        format!("HTTP {} with an empty body", response.status)
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn response(status: u16, headers: &[(&str, &str)], body: &Value) -> HttpResponse {
        HttpResponse::fake(status, headers, body.to_string())
    }

    fn quota_error(details: Value) -> Value {
        json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
            "message": "Resource has been exhausted", "details": details}})
    }

    #[test]
    fn retry_delays_parse_protobuf_durations() {
        assert_eq!(parse_duration("37s"), Some(Duration::from_secs(37)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration(" 0.200s "), Some(Duration::from_millis(200)));
        assert_eq!(
            parse_duration("1e30s"),
            Some(Duration::MAX),
            "saturates, no panic"
        );
        for bad in ["37", "-1s", "NaNs", "soon", "s", ""] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn rate_limits_wait_for_retry_info_then_the_header() {
        let details = json!([{"@type": "type.googleapis.com/google.rpc.RetryInfo",
            "retryDelay": "12s"}]);
        let verdict = classify_error(&response(
            429,
            &[("retry-after", "3")],
            &quota_error(details),
        ));
        let Verdict::Retry { after, failure } = verdict else {
            panic!("{verdict:?}");
        };
        assert_eq!(after, Some(Duration::from_secs(12)));
        assert_eq!(failure.kind, RemoteFailure::RateLimited);
        assert_eq!(failure.error_type.as_deref(), Some("RESOURCE_EXHAUSTED"));

        let verdict = classify_error(&response(
            429,
            &[("retry-after", "3")],
            &quota_error(json!([])),
        ));
        assert!(
            matches!(verdict, Verdict::Retry { after: Some(d), .. } if d == Duration::from_secs(3)),
            "{verdict:?}"
        );
    }

    #[test]
    fn daily_and_zero_quotas_take_the_key_out() {
        let per_day = json!([{"@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_requests",
                "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "5s"}]);
        let zero = json!([{"@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [{"quotaId": "ImageRequestsPerMinute", "quotaValue": "0"}]}]);
        for details in [per_day, zero] {
            let verdict = classify_error(&response(429, &[], &quota_error(details)));
            let Verdict::KeyExhausted(failure) = verdict else {
                panic!("{verdict:?}");
            };
            assert_eq!(failure.kind, RemoteFailure::RateLimited);
            assert!(
                failure.message.contains("used up for the day"),
                "{failure:?}"
            );
        }
        let said = json!({"error": {"status": "RESOURCE_EXHAUSTED",
            "message": "Quota exceeded for requests per day"}});
        assert!(matches!(
            classify_error(&response(429, &[], &said)),
            Verdict::KeyExhausted(_)
        ));
        let per_minute = json!([{"@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [{"quotaId": "GenerateRequestsPerMinutePerProjectPerModel"}]}]);
        assert!(matches!(
            classify_error(&response(429, &[], &quota_error(per_minute))),
            Verdict::Retry { .. }
        ));
    }

    #[test]
    fn statuses_map_to_retry_or_final_failures() {
        for (status, retried, kind) in [
            (408, true, RemoteFailure::Timeout),
            (500, true, RemoteFailure::Error),
            (502, true, RemoteFailure::Error),
            (503, true, RemoteFailure::Error),
            (504, true, RemoteFailure::Timeout),
            (400, false, RemoteFailure::Error),
            (404, false, RemoteFailure::Error),
            (501, false, RemoteFailure::Error),
        ] {
            let body = json!([{"error": {"code": status, "status": "SOME_STATUS",
                "message": "said the service"}}]);
            let (failure, was_retried) = match classify_error(&response(status, &[], &body)) {
                Verdict::Retry { failure, .. } => (failure, true),
                Verdict::Fail(failure) => (failure, false),
                other => panic!("{status}: {other:?}"),
            };
            assert_eq!(was_retried, retried, "{status}");
            assert_eq!(failure.kind, kind, "{status}");
            assert_eq!(failure.status, Some(status));
            assert_eq!(failure.error_type.as_deref(), Some("SOME_STATUS"));
            assert_eq!(failure.message, "said the service");
        }
        let html = HttpResponse::fake(404, &[], "<html>Not found by proxy</html>");
        let Verdict::Fail(failure) = classify_error(&html) else {
            panic!("404 is final");
        };
        assert_eq!(failure.error_type, None);
        assert!(
            failure.message.contains("Not found by proxy"),
            "{failure:?}"
        );
    }

    #[test]
    fn refused_keys_leave_the_rotation_as_errors() {
        let invalid = json!({"error": {"code": 400, "status": "INVALID_ARGUMENT",
            "message": "API key not valid. Please pass a valid API key.",
            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID", "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"}}]}});
        let denied = json!({"error": {"code": 403, "status": "PERMISSION_DENIED",
            "message": "Method doesn't allow unregistered callers."}});
        let unauthenticated = json!({"error": {"code": 401, "status": "UNAUTHENTICATED",
            "message": "Request had invalid authentication credentials."}});
        for (status, body, error_type) in [
            (400, &invalid, Some("INVALID_ARGUMENT")),
            (403, &denied, Some("PERMISSION_DENIED")),
            (401, &unauthenticated, Some("UNAUTHENTICATED")),
        ] {
            let verdict = classify_error(&response(status, &[], body));
            let Verdict::KeyExhausted(failure) = verdict else {
                panic!("{status}: {verdict:?}");
            };
            assert_eq!(failure.kind, RemoteFailure::Error, "{status}");
            assert_eq!(failure.status, Some(status));
            assert_eq!(failure.error_type.as_deref(), error_type);
            assert_eq!(
                failure.message,
                body["error"]["message"].as_str().unwrap(),
                "{status}"
            );
        }
        // Whatever sent it, a 403 says this key may not do this.
        let html = HttpResponse::fake(403, &[], "<html>Forbidden by proxy</html>");
        let Verdict::KeyExhausted(failure) = classify_error(&html) else {
            panic!("403 takes the key out");
        };
        assert_eq!(
            (failure.kind, failure.error_type.as_deref()),
            (RemoteFailure::Error, None)
        );
        assert!(
            failure.message.contains("Forbidden by proxy"),
            "{failure:?}"
        );
        // Any other 400 is the request's fault, final and not the key's.
        let other = json!({"error": {"code": 400, "status": "INVALID_ARGUMENT",
            "message": "bad field", "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "FIELD_INVALID"}]}});
        assert!(matches!(
            classify_error(&response(400, &[], &other)),
            Verdict::Fail(_)
        ));
    }
}
