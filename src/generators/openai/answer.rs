//! Reading the service's answers while the pool classifies them: a successful one checked entry
//! by entry and decoded, a failed one turned into the pool's verdict (retry, take the key out,
//! refused or final) with what the service said, in any of the shapes servers use.
use serde_json::Value;

use crate::error::{Error, RemoteFailure, Result};
use crate::generators::http::HttpResponse;
use crate::generators::pool::{Failure, Verdict};
use crate::generators::remote::{cut, decode_base64};
use crate::image::Image;

/// A successful answer.
#[derive(Debug)]
pub(super) struct Answer {
    pub created: i64,
    pub items: Vec<Item>,
    pub revised_prompts: Vec<Option<String>>,
    pub usage: Option<Value>,
}

/// One `data[]` entry: an image sent inline, or a URL to fetch it from.
#[derive(Debug)]
pub(super) enum Item {
    Image(Image),
    Url(String),
}

/// Reads one answer: a successful one decoded, else what the pool should do.
pub(super) fn classify(response: &HttpResponse) -> Result<Answer, Verdict> {
    let status = response.status;
    if (200..300).contains(&status) {
        return read_answer(response).map_err(|message| {
            Verdict::Fail(Failure {
                kind: RemoteFailure::Error,
                status: Some(status),
                error_type: Some("invalid_response".into()),
                message,
            })
        });
    }
    let said = ServiceError::read(response);
    let failure = |kind| Failure {
        kind,
        status: Some(status),
        error_type: said.error_type(),
        message: said.message(),
    };
    if status == 429 && said.is("insufficient_quota") {
        // Retrying cannot help this key; the pool moves to another one.
        return Err(Verdict::KeyExhausted(failure(RemoteFailure::RateLimited)));
    }
    if (400..500).contains(&status)
        && (said.is("moderation_blocked") || said.is("content_policy_violation"))
    {
        return Err(Verdict::Fail(failure(RemoteFailure::Refused)));
    }
    let kind = if status == 429 {
        RemoteFailure::RateLimited
    } else {
        RemoteFailure::Error
    };
    let retry = match response.header("x-should-retry").map(str::trim) {
        Some(v) if v.eq_ignore_ascii_case("true") => true,
        Some(v) if v.eq_ignore_ascii_case("false") => false,
        _ => matches!(status, 408 | 409 | 429) || status >= 500,
    };
    Err(if retry {
        Verdict::Retry {
            after: response.retry_after(),
            failure: failure(kind),
        }
    } else {
        Verdict::Fail(failure(kind))
    })
}

/// Checks and decodes a 2xx body; the error says what is wrong with it.
fn read_answer(response: &HttpResponse) -> Result<Answer, String> {
    let body: Value = serde_json::from_slice(&response.body)
        .map_err(|e| format!("the answer is not JSON ({e}): {}", response.text_excerpt()))?;
    let Some(body) = body.as_object() else {
        return Err(format!(
            "the answer is not a JSON object: {}",
            response.text_excerpt()
        ));
    };
    let Some(data) = body.get("data") else {
        // Some compatible servers answer 200 with an error inside.
        if let Some(error) = body.get("error") {
            let said = ServiceError::from_value(error);
            return Err(format!(
                "the answer has no `data` but an error: {}",
                said.message()
            ));
        }
        return Err("the answer has no `data`".into());
    };
    let created = body
        .get("created")
        .and_then(|c| c.as_i64().or_else(|| c.as_f64().map(|f| f as i64)))
        .ok_or("the answer has no `created` timestamp")?;
    let data = data
        .as_array()
        .ok_or("the answer's `data` is not an array")?;
    if data.is_empty() {
        return Err("the answer's `data` holds no images".into());
    }
    let mut items = Vec::with_capacity(data.len());
    let mut revised_prompts = Vec::with_capacity(data.len());
    for (index, entry) in data.iter().enumerate() {
        let text = |key: &str| {
            entry
                .get(key)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        };
        let item = if let Some(b64) = text("b64_json") {
            let bytes = decode_base64(b64)
                .map_err(|e| format!("data[{index}].b64_json is not valid base64: {e}"))?;
            let image = Image::decode(&bytes).map_err(|e| {
                format!(
                    "data[{index}].b64_json is not an image: {}",
                    plain_message(&e)
                )
            })?;
            Item::Image(image)
        } else if let Some(url) = text("url") {
            Item::Url(url.to_string())
        } else {
            return Err(format!(
                "data[{index}] has neither `b64_json` nor `url` (keys: {})",
                entry
                    .as_object()
                    .map(|o| o.keys().cloned().collect::<Vec<_>>().join(", "))
                    .unwrap_or_else(|| "not an object".into())
            ));
        };
        items.push(item);
        revised_prompts.push(text("revised_prompt").map(str::to_string));
    }
    Ok(Answer {
        created,
        items,
        revised_prompts,
        usage: body.get("usage").filter(|u| u.is_object()).cloned(),
    })
}

/// What a failed answer says, in any of the shapes servers use.
#[derive(Debug, Default)]
struct ServiceError {
    error_type: Option<String>,
    code: Option<String>,
    param: Option<String>,
    message: String,
}

/// Longest service message kept in an error.
const MAX_MESSAGE_CHARS: usize = 1000;

impl ServiceError {
    fn read(response: &HttpResponse) -> ServiceError {
        let parsed: Option<Value> = serde_json::from_slice(&response.body).ok();
        match parsed.as_ref().and_then(|v| v.get("error")) {
            Some(error) => ServiceError::from_value(error),
            None => {
                // FastAPI-style `{"detail": ...}` or `{"message": ...}`, else the raw text.
                let message = parsed
                    .as_ref()
                    .and_then(|v| v.get("message").or_else(|| v.get("detail")))
                    .map(|m| m.as_str().map_or_else(|| m.to_string(), str::to_string))
                    .unwrap_or_else(|| response.text_excerpt());
                ServiceError {
                    message,
                    ..ServiceError::default()
                }
            }
        }
    }

    /// `{message,type,param,code}` (OpenAI) or a plain string (sd-server).
    fn from_value(error: &Value) -> ServiceError {
        let text = |key: &str| {
            error.get(key).and_then(|v| match v {
                Value::String(s) if !s.is_empty() => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
        };
        match error {
            Value::String(message) => ServiceError {
                message: message.clone(),
                ..ServiceError::default()
            },
            Value::Object(_) => ServiceError {
                error_type: text("type"),
                code: text("code"),
                param: text("param"),
                message: text("message").unwrap_or_default(),
            },
            other => ServiceError {
                message: other.to_string(),
                ..ServiceError::default()
            },
        }
    }

    fn is(&self, name: &str) -> bool {
        self.code.as_deref() == Some(name) || self.error_type.as_deref() == Some(name)
    }

    fn error_type(&self) -> Option<String> {
        match (&self.error_type, &self.code) {
            (Some(t), Some(c)) if t != c => Some(format!("{t}/{c}")),
            (t, c) => c.clone().or_else(|| t.clone()),
        }
    }

    fn message(&self) -> String {
        let mut message = match self.message.trim() {
            "" => "(no message)".to_string(),
            m => cut(m, MAX_MESSAGE_CHARS),
        };
        if let Some(param) = &self.param {
            message.push_str(&format!(" (param `{param}`)"));
        }
        message
    }
}

/// An error's text without the code's prefix (`invalid argument: `), for nesting in another.
pub(super) fn plain_message(err: &Error) -> String {
    match err {
        Error::InvalidArg(message) => message.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generators::remote::encode_base64;

    fn response(status: u16, body: &str, headers: &[(&str, &str)]) -> HttpResponse {
        HttpResponse::fake(status, headers, body)
    }

    fn error_body(kind: &str, code: &str) -> String {
        serde_json::json!({"error": {"message": "m", "type": kind, "param": null, "code": code}})
            .to_string()
    }

    fn verdict(status: u16, body: &str, headers: &[(&str, &str)]) -> Verdict {
        match classify(&response(status, body, headers)) {
            Ok(_) => Verdict::Success,
            Err(v) => v,
        }
    }

    fn kind_of(v: &Verdict) -> (&'static str, RemoteFailure) {
        match v {
            Verdict::Success => ("success", RemoteFailure::Error),
            Verdict::Retry { failure, .. } => ("retry", failure.kind),
            Verdict::KeyExhausted(failure) => ("exhausted", failure.kind),
            Verdict::Fail(failure) => ("fail", failure.kind),
        }
    }

    #[test]
    fn statuses_map_to_verdicts() {
        use RemoteFailure::*;
        let quota = error_body("insufficient_quota", "insufficient_quota");
        let blocked = error_body("image_generation_user_error", "moderation_blocked");
        let policy = error_body("invalid_request_error", "content_policy_violation");
        let bad = error_body("invalid_request_error", "invalid_size");
        for (status, body, headers, want) in [
            (429, quota.as_str(), &[][..], ("exhausted", RateLimited)),
            (429, "{}", &[][..], ("retry", RateLimited)),
            (408, "", &[][..], ("retry", Error)),
            (409, "", &[][..], ("retry", Error)),
            (500, "oops", &[][..], ("retry", Error)),
            (503, "", &[][..], ("retry", Error)),
            (400, blocked.as_str(), &[][..], ("fail", Refused)),
            (400, policy.as_str(), &[][..], ("fail", Refused)),
            (400, bad.as_str(), &[][..], ("fail", Error)),
            (401, "", &[][..], ("fail", Error)),
            (404, "", &[][..], ("fail", Error)),
            (422, "", &[][..], ("fail", Error)),
            (500, "", &[("x-should-retry", "false")][..], ("fail", Error)),
            (400, "", &[("x-should-retry", "true")][..], ("retry", Error)),
            (
                429,
                "",
                &[("x-should-retry", "false")][..],
                ("fail", RateLimited),
            ),
            (200, "not json", &[][..], ("fail", Error)),
            (200, r#"{"created": 1}"#, &[][..], ("fail", Error)),
        ] {
            let v = verdict(status, body, headers);
            assert_eq!(kind_of(&v), want, "{status} {body} {headers:?}");
        }
        let Verdict::Retry { after, .. } = verdict(429, "", &[("retry-after-ms", "250")]) else {
            panic!("429 is retried");
        };
        assert_eq!(after, Some(std::time::Duration::from_millis(250)));
    }

    #[test]
    fn error_bodies_of_every_shape_are_read() {
        let openai = r#"{"error":{"message":"Invalid size","type":"invalid_request_error","param":"size","code":"invalid_size"}}"#;
        let Verdict::Fail(f) = verdict(400, openai, &[]) else {
            panic!("final");
        };
        assert_eq!(
            f.error_type.as_deref(),
            Some("invalid_request_error/invalid_size")
        );
        assert_eq!(f.message, "Invalid size (param `size`)");
        let Verdict::Fail(f) = verdict(400, r#"{"error":"bad prompt"}"#, &[]) else {
            panic!("final");
        };
        assert_eq!((f.error_type, f.message.as_str()), (None, "bad prompt"));
        let Verdict::Fail(f) = verdict(404, "<html>Not Found</html>", &[]) else {
            panic!("final");
        };
        assert_eq!(f.message, "<html>Not Found</html>");
        assert_eq!(f.status, Some(404));
        let Verdict::Fail(f) = verdict(200, r#"{"error":{"message":"queue full"}}"#, &[]) else {
            panic!("final");
        };
        assert!(
            f.message.contains("no `data` but an error: queue full"),
            "{}",
            f.message
        );
    }

    #[test]
    fn answers_are_checked_entry_by_entry() {
        let png = Image::from_raw(&[9, 8, 7], 1, 1, 3, 3)
            .unwrap()
            .encode_png(&[])
            .unwrap();
        let b64 = encode_base64(&png);
        let ok = format!(
            r#"{{"created":1,"data":[{{"b64_json":"{b64}","revised_prompt":"r"}},{{"url":"http://x/1.png"}}]}}"#
        );
        let answer = classify(&response(200, &ok, &[])).unwrap();
        assert_eq!(answer.created, 1);
        assert!(matches!(&answer.items[0], Item::Image(i) if i.pixels == [9, 8, 7]));
        assert!(matches!(&answer.items[1], Item::Url(u) if u == "http://x/1.png"));
        assert_eq!(answer.revised_prompts, vec![Some("r".to_string()), None]);
        // Unpadded and line-wrapped base64 still decodes.
        let wrapped = format!("{}\n{}", &b64[..10], b64[10..].trim_end_matches('='));
        let body = serde_json::json!({"created": 1, "data": [{"b64_json": wrapped}]}).to_string();
        assert!(classify(&response(200, &body, &[])).is_ok());

        for (body, needle) in [
            (r#"{"data":[]}"#.to_string(), "no `created`"),
            (r#"{"created":1,"data":[]}"#.to_string(), "holds no images"),
            (r#"{"created":1,"data":{}}"#.to_string(), "not an array"),
            (r#"{"created":1}"#.to_string(), "no `data`"),
            (r#"[1]"#.to_string(), "not a JSON object"),
            (
                r#"{"created":1,"data":[{"revised_prompt":"x"}]}"#.to_string(),
                "data[0] has neither `b64_json` nor `url` (keys: revised_prompt)",
            ),
            (
                format!(r#"{{"created":1,"data":[{{"b64_json":"{b64}"}},{{"b64_json":"!!"}}]}}"#),
                "data[1].b64_json is not valid base64",
            ),
            (
                r#"{"created":1,"data":[{"b64_json":"aGVsbG8="}]}"#.to_string(),
                "data[0].b64_json is not an image: not a PNG, JPEG or WebP image",
            ),
        ] {
            let Err(Verdict::Fail(f)) = classify(&response(200, &body, &[])) else {
                panic!("{body} is refused");
            };
            assert!(f.message.contains(needle), "{body}: {}", f.message);
            assert_eq!(f.error_type.as_deref(), Some("invalid_response"));
        }
    }
}
