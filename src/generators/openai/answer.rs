//! Reading the service's answers while the pool classifies them: a successful one checked entry
//! by entry and decoded, a failed one turned into the pool's verdict (retry, take the key out,
//! refused or final) with what the service said, in any of the shapes servers use.

use serde_json::Value;

use super::{bearer, SERVICE};
use crate::error::{Error, RemoteFailure, Result};
use crate::generators::http::HttpResponse;
use crate::generators::pool::{Failure, Verdict};
use crate::generators::remote::{cut, decode_base64, Exchange};
use crate::image::Image;

/// Most pixels an answer may bring per image asked for (64 Mpx, 8192x8192: eight times the
/// largest image any OpenAI model makes). Each image's size is read from its header and counted
/// before it is decoded, so a hostile server cannot make the client decode gigapixels.
pub(super) const MAX_PIXELS_PER_IMAGE: u64 = 8192 * 8192;

/// A successful answer.
#[derive(Debug)]
pub(super) struct Answer {
    pub created: i64,
    pub items: Vec<Item>,
    pub revised_prompts: Vec<Option<String>>,
    pub usage: Option<Value>,
    /// What is left of the answer's pixel budget, for the `data[].url` images still to fetch.
    pub budget: PixelBudget,
}

/// The pixels an answer's images may hold in all: [`MAX_PIXELS_PER_IMAGE`] per image asked for.
#[derive(Debug)]
pub(super) struct PixelBudget {
    asked: usize,
    left: u64,
}

impl PixelBudget {
    pub fn new(asked: usize) -> PixelBudget {
        PixelBudget {
            asked,
            left: MAX_PIXELS_PER_IMAGE.saturating_mul(asked as u64),
        }
    }

    /// Counts a `width` x `height` image (read from its header) against what is left; the
    /// error, to follow the image's name, says why it is refused.
    pub fn take(&mut self, width: u32, height: u32) -> Result<(), String> {
        let pixels = u64::from(width) * u64::from(height);
        match self.left.checked_sub(pixels) {
            Some(left) => {
                self.left = left;
                Ok(())
            }
            None => Err(format!(
                "is {width}x{height}: the answer's images would hold more than {} pixels \
                 ({MAX_PIXELS_PER_IMAGE} for each of the {} asked for); not decoded",
                MAX_PIXELS_PER_IMAGE.saturating_mul(self.asked as u64),
                self.asked
            )),
        }
    }
}

/// One call's exchange with the service: the key as a bearer token, answers read by [`classify`]
/// against the `asked` images (the `n` sent).
pub(super) fn exchange(asked: usize) -> Exchange<Answer> {
    Exchange::new(SERVICE, bearer, move |response| classify(response, asked))
}

/// One `data[]` entry: an image sent inline, or a URL to fetch it from.
#[derive(Debug)]
pub(super) enum Item {
    Image(Image),
    Url(String),
}

/// Reads one answer to a call that asked for `asked` images: a successful one decoded, else
/// what the pool should do.
pub(super) fn classify(response: &HttpResponse, asked: usize) -> Result<Answer, Verdict> {
    let status = response.status;
    if (200..300).contains(&status) {
        return read_answer(response, asked).map_err(|message| {
            Verdict::Fail(Failure {
                kind: RemoteFailure::Error,
                status: Some(status),
                error_type: Some("invalid_response".into()),
                message,
            })
        });
    }
    Err(error_verdict(response))
}

/// What the pool should do with a failed (non-2xx) answer of an OpenAI-compatible service, read
/// in any of the shapes servers use; shared with the prompt enhancer's chat completions.
pub(crate) fn error_verdict(response: &HttpResponse) -> Verdict {
    let status = response.status;
    let said = ServiceError::read(response);
    let failure = |kind| Failure {
        kind,
        status: Some(status),
        error_type: said.error_type(),
        message: said.message(),
    };
    if status == 429 && said.is("insufficient_quota") {
        // Retrying cannot help this key; the pool moves to another one.
        return Verdict::KeyExhausted(failure(RemoteFailure::RateLimited));
    }
    if (400..500).contains(&status)
        && (said.is("moderation_blocked") || said.is("content_policy_violation"))
    {
        return Verdict::Fail(failure(RemoteFailure::Refused));
    }
    if matches!(status, 401 | 403) {
        // A wrong, revoked or unauthorised key (`invalid_api_key`, a region or organisation it
        // may not use): no retry with it helps, but another key in the pool may serve the call.
        return Verdict::KeyExhausted(failure(RemoteFailure::Error));
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
    if retry {
        Verdict::Retry {
            after: response.retry_after(),
            failure: failure(kind),
        }
    } else {
        Verdict::Fail(failure(kind))
    }
}

/// Checks and decodes a 2xx body to a call that asked for `asked` images; the error says what is
/// wrong with it.
fn read_answer(response: &HttpResponse, asked: usize) -> Result<Answer, String> {
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
    if data.len() > asked {
        // Nothing is decoded: a hostile server could otherwise make the client decode far more
        // than it asked for.
        return Err(format!(
            "the answer's `data` holds {} images but {asked} {} asked for",
            data.len(),
            if asked == 1 { "was" } else { "were" }
        ));
    }
    // First every entry is read and its image's size taken from its header, so an answer over
    // the pixel budget is refused before any image is decoded.
    let mut budget = PixelBudget::new(asked);
    let mut sources = Vec::with_capacity(data.len());
    let mut revised_prompts = Vec::with_capacity(data.len());
    for (index, entry) in data.iter().enumerate() {
        let text = |key: &str| {
            entry
                .get(key)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        };
        let source = if let Some(b64) = text("b64_json") {
            let bytes = decode_base64(b64)
                .map_err(|e| format!("data[{index}].b64_json is not valid base64: {e}"))?;
            let (width, height) = Image::dimensions(&bytes).map_err(|e| {
                format!(
                    "data[{index}].b64_json is not an image: {}",
                    plain_message(&e)
                )
            })?;
            budget
                .take(width, height)
                .map_err(|e| format!("data[{index}].b64_json {e}"))?;
            Ok(bytes)
        } else if let Some(url) = text("url") {
            Err(url.to_string())
        } else {
            return Err(format!(
                "data[{index}] has neither `b64_json` nor `url` (keys: {})",
                entry
                    .as_object()
                    .map(|o| o.keys().cloned().collect::<Vec<_>>().join(", "))
                    .unwrap_or_else(|| "not an object".into())
            ));
        };
        sources.push(source);
        revised_prompts.push(text("revised_prompt").map(str::to_string));
    }
    let mut items = Vec::with_capacity(sources.len());
    for (index, source) in sources.into_iter().enumerate() {
        items.push(match source {
            Ok(bytes) => Item::Image(Image::decode(&bytes).map_err(|e| {
                format!(
                    "data[{index}].b64_json is not an image: {}",
                    plain_message(&e)
                )
            })?),
            Err(url) => Item::Url(url),
        });
    }
    Ok(Answer {
        created,
        items,
        revised_prompts,
        usage: body.get("usage").filter(|u| u.is_object()).cloned(),
        budget,
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
        match classify(&response(status, body, headers), 1) {
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
        let invalid_key = error_body("invalid_request_error", "invalid_api_key");
        let region = error_body(
            "invalid_request_error",
            "unsupported_country_region_territory",
        );
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
            (401, "", &[][..], ("exhausted", Error)),
            (401, invalid_key.as_str(), &[][..], ("exhausted", Error)),
            (403, region.as_str(), &[][..], ("exhausted", Error)),
            (
                401,
                "",
                &[("x-should-retry", "true")][..],
                ("exhausted", Error),
            ),
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

    /// An 8x8 JPEG whose frame header claims `width` x `height` (JPEG headers carry no checksum).
    fn lying_jpeg(width: u16, height: u16) -> Vec<u8> {
        let mut jpeg = Image::from_raw(&[100; 8 * 8 * 3], 8, 8, 3, 24)
            .unwrap()
            .encode_jpeg(90)
            .unwrap();
        let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        jpeg[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
        jpeg[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
        jpeg
    }

    fn refusal(body: &Value, asked: usize) -> String {
        match classify(&response(200, &body.to_string(), &[]), asked) {
            Err(Verdict::Fail(f)) => {
                assert_eq!(f.error_type.as_deref(), Some("invalid_response"));
                f.message
            }
            other => panic!("asked {asked}: {other:?}"),
        }
    }

    #[test]
    fn answers_hold_no_more_images_or_pixels_than_asked_for() {
        let png = Image::from_raw(&[1, 2, 3], 1, 1, 3, 3)
            .unwrap()
            .encode_png(&[])
            .unwrap();
        let entry = serde_json::json!({"b64_json": encode_base64(&png)});
        let three = serde_json::json!({"created": 1, "data": [entry, entry, entry]});
        assert_eq!(
            refusal(&three, 1),
            "the answer's `data` holds 3 images but 1 was asked for"
        );
        assert_eq!(
            refusal(&three, 2),
            "the answer's `data` holds 3 images but 2 were asked for"
        );
        // Counted before anything is decoded: entries that are not even images say nothing.
        let junk = serde_json::json!({"created": 1, "data": [{"b64_json": "!!"}, {"x": 1}]});
        assert!(refusal(&junk, 1).contains("holds 2 images but 1 was"));
        assert_eq!(
            classify(&response(200, &three.to_string(), &[]), 3)
                .unwrap()
                .items
                .len(),
            3
        );

        // 9000x9000 is 81 Mpx, over one image's 64 Mpx: refused from the header, not decoded.
        let big = |w, h| serde_json::json!({"b64_json": encode_base64(&lying_jpeg(w, h))});
        let one = serde_json::json!({"created": 1, "data": [big(9000, 9000)]});
        let message = refusal(&one, 1);
        assert!(
            message.starts_with("data[0].b64_json is 9000x9000: the answer's images would hold more than 67108864 pixels"),
            "{message}"
        );
        // The budget is the answer's, checked before any image is decoded: two 6000x6000 images
        // (72 Mpx) are over one asked for, and two 9000x9000 (162 Mpx) over two.
        let two =
            |side| serde_json::json!({"created": 1, "data": [big(side, side), big(side, side)]});
        let message = refusal(&two(6000), 1);
        assert!(message.contains("holds 2 images but 1 was"), "{message}");
        let message = refusal(&two(9000), 2);
        assert!(message.starts_with("data[1].b64_json is 9000x9000: the answer's images would hold more than 134217728 pixels"), "{message}");
        let mut budget = PixelBudget::new(2);
        budget.take(8192, 8192).unwrap();
        budget.take(8192, 4096).unwrap();
        budget.take(8192, 4096).unwrap();
        assert!(budget.take(1, 1).is_err(), "nothing is left");
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
        let answer = classify(&response(200, &ok, &[]), 2).unwrap();
        assert_eq!(answer.created, 1);
        assert!(matches!(&answer.items[0], Item::Image(i) if i.pixels == [9, 8, 7]));
        assert!(matches!(&answer.items[1], Item::Url(u) if u == "http://x/1.png"));
        assert_eq!(answer.revised_prompts, vec![Some("r".to_string()), None]);
        // Unpadded and line-wrapped base64 still decodes.
        let wrapped = format!("{}\n{}", &b64[..10], b64[10..].trim_end_matches('='));
        let body = serde_json::json!({"created": 1, "data": [{"b64_json": wrapped}]}).to_string();
        assert!(classify(&response(200, &body, &[]), 1).is_ok());

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
            let Err(Verdict::Fail(f)) = classify(&response(200, &body, &[]), 2) else {
                panic!("{body} is refused");
            };
            assert!(f.message.contains(needle), "{body}: {}", f.message);
            assert_eq!(f.error_type.as_deref(), Some("invalid_response"));
        }
    }
}
