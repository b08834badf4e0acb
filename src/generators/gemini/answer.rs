//! Reading an answer while the pool classifies it: a successful one's first candidate gives the
//! image and text, or the verdict says why there is none (a blocked prompt, a finish reason);
//! error statuses go to [`super::errors`].
use serde_json::Value;

use super::errors::{classify_error, excerpt};
use crate::error::RemoteFailure;
use crate::generators::http::HttpResponse;
use crate::generators::pool::{Failure, Verdict};
use crate::generators::remote::{cut, decode_base64};
use crate::image::Image;

/// Finish reasons that mean a safety or policy system withheld the image.
const REFUSAL_REASONS: &[&str] = &[
    "SAFETY",
    "IMAGE_SAFETY",
    "PROHIBITED_CONTENT",
    "IMAGE_PROHIBITED_CONTENT",
    "RECITATION",
    "IMAGE_RECITATION",
    "BLOCKLIST",
    "SPII",
];

/// What a successful answer holds.
#[derive(Debug)]
pub(super) struct Answer {
    pub image: Image,
    pub text: Vec<String>,
    pub model_version: Option<String>,
}

/// Reads an answer: the image of a successful one, else the pool's verdict.
pub(super) fn read(response: &HttpResponse) -> Result<Answer, Verdict> {
    if !(200..300).contains(&response.status) {
        return Err(classify_error(response));
    }
    let fail = |kind, error_type: &str, message: String| {
        Verdict::Fail(Failure {
            kind,
            status: Some(response.status),
            error_type: Some(error_type.to_string()),
            message,
        })
    };
    let body: Value = serde_json::from_slice(&response.body).map_err(|e| {
        fail(
            RemoteFailure::Error,
            "invalid_response",
            format!("the answer is not JSON ({e}): {}", excerpt(response)),
        )
    })?;
    let candidate = body
        .get("candidates")
        .and_then(Value::as_array)
        .and_then(|c| c.first());
    let Some(candidate) = candidate else {
        let feedback = field(&body, "promptFeedback", "prompt_feedback");
        let reason = feedback.and_then(|f| text_field(f, "blockReason", "block_reason"));
        return Err(match reason {
            Some(reason) => {
                let detail = feedback
                    .and_then(|f| text_field(f, "blockReasonMessage", "block_reason_message"))
                    .map_or(String::new(), |m| format!(": {m}"));
                fail(
                    RemoteFailure::Refused,
                    reason,
                    format!("the prompt was blocked (blockReason {reason}){detail}"),
                )
            }
            None => fail(
                RemoteFailure::Error,
                "no_candidates",
                format!(
                    "the answer has neither candidates nor a block reason: {}",
                    excerpt(response)
                ),
            ),
        });
    };
    let (image, text) = read_candidate(candidate, &fail)?;
    Ok(Answer {
        image,
        text,
        model_version: text_field(&body, "modelVersion", "model_version").map(str::to_string),
    })
}

/// The image and text of a candidate, or why it has no usable image.
fn read_candidate(
    candidate: &Value,
    fail: &dyn Fn(RemoteFailure, &str, String) -> Verdict,
) -> Result<(Image, Vec<String>), Verdict> {
    let finish = text_field(candidate, "finishReason", "finish_reason").unwrap_or("");
    let mut text = Vec::new();
    let mut inline = None;
    let parts = candidate
        .get("content")
        .and_then(|c| c.get("parts"))
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    // Thinking models send draft images and notes marked `thought`; only the answer counts.
    for part in parts
        .iter()
        .filter(|p| p.get("thought") != Some(&Value::Bool(true)))
    {
        if let Some(t) = part.get("text").and_then(Value::as_str) {
            text.push(t.to_string());
        }
        if inline.is_none() {
            inline = field(part, "inlineData", "inline_data");
        }
    }
    // What the service said besides the reason, for the error message.
    let said = || {
        let mut said = text_field(candidate, "finishMessage", "finish_message")
            .map_or(String::new(), |m| format!(": {m}"));
        let blocked = blocked_categories(candidate);
        if !blocked.is_empty() {
            said.push_str(&format!(" (blocked: {})", blocked.join(", ")));
        }
        let words = text.join(" ");
        if !words.trim().is_empty() {
            said.push_str(&format!("; the model said: {}", cut(words.trim(), 300)));
        }
        said
    };
    if REFUSAL_REASONS.contains(&finish) {
        return Err(fail(
            RemoteFailure::Refused,
            finish,
            format!("the image was withheld (finishReason {finish}){}", said()),
        ));
    }
    let Some(inline) = inline else {
        let (reason, shown) = match finish {
            "" => ("no_image", "missing"),
            finish => (finish, finish),
        };
        return Err(fail(
            RemoteFailure::Error,
            reason,
            format!("the answer has no image (finishReason {shown}){}", said()),
        ));
    };
    let mime = text_field(inline, "mimeType", "mime_type").unwrap_or("no mimeType");
    let data = inline.get("data").and_then(Value::as_str).unwrap_or("");
    let bytes = decode_base64(data).map_err(|e| {
        fail(
            RemoteFailure::Error,
            "invalid_image",
            format!("the inlineData ({mime}) is not valid base64: {e}"),
        )
    })?;
    let image = Image::decode(&bytes).map_err(|e| {
        fail(
            RemoteFailure::Error,
            "invalid_image",
            format!(
                "the inlineData ({mime}, {} bytes) is not a usable image: {e}",
                bytes.len()
            ),
        )
    })?;
    Ok((image, text))
}

/// The safety categories a candidate reports as blocked.
fn blocked_categories(candidate: &Value) -> Vec<&str> {
    field(candidate, "safetyRatings", "safety_ratings")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .filter(|r| r.get("blocked") == Some(&Value::Bool(true)))
        .filter_map(|r| r.get("category").and_then(Value::as_str))
        .collect()
}

/// A field by its JSON (camelCase) name or the Python SDK's snake_case one.
fn field<'v>(value: &'v Value, camel: &str, snake: &str) -> Option<&'v Value> {
    value.get(camel).or_else(|| value.get(snake))
}

fn text_field<'v>(value: &'v Value, camel: &str, snake: &str) -> Option<&'v str> {
    field(value, camel, snake)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::generators::remote::encode_base64;

    fn success(body: &Value) -> HttpResponse {
        HttpResponse::fake(200, &[], body.to_string())
    }

    #[test]
    fn thought_parts_are_skipped_and_snake_case_accepted() {
        let png = Image {
            width: 2,
            height: 1,
            pixels: vec![255, 0, 0, 0, 0, 255],
        }
        .encode_png(&[])
        .unwrap();
        let draft = Image {
            width: 1,
            height: 1,
            pixels: vec![0, 0, 0],
        }
        .encode_png(&[])
        .unwrap();
        let body = json!({"candidates": [{"finish_reason": "STOP", "content": {"parts": [
            {"text": "thinking...", "thought": true},
            {"inline_data": {"mime_type": "image/png", "data": encode_base64(&draft)},
             "thought": true},
            {"text": "Here it is"},
            {"inline_data": {"mime_type": "image/png", "data": encode_base64(&png)}},
            // A second image is not asked for: the first answer image is the one.
            {"inlineData": {"mimeType": "image/png", "data": encode_base64(&draft)}}
        ]}}], "modelVersion": "gemini-x"});
        let answer = read(&success(&body)).unwrap();
        assert_eq!((answer.image.width, answer.image.height), (2, 1));
        assert_eq!(answer.text, vec!["Here it is".to_string()]);
        assert_eq!(answer.model_version.as_deref(), Some("gemini-x"));
    }

    #[test]
    fn answers_without_an_image_name_the_reason() {
        for (finish, kind) in [
            ("IMAGE_SAFETY", RemoteFailure::Refused),
            ("PROHIBITED_CONTENT", RemoteFailure::Refused),
            ("NO_IMAGE", RemoteFailure::Error),
            ("OTHER", RemoteFailure::Error),
            ("STOP", RemoteFailure::Error),
        ] {
            let body = json!({"candidates": [{"finishReason": finish,
                "content": {"parts": [{"text": "I cannot draw that"}]}}]});
            let Err(Verdict::Fail(failure)) = read(&success(&body)) else {
                panic!("{finish} must fail");
            };
            assert_eq!(failure.kind, kind, "{finish}");
            assert_eq!(failure.error_type.as_deref(), Some(finish));
            assert!(failure.message.contains(finish), "{failure:?}");
            assert!(
                failure.message.contains("I cannot draw that"),
                "{failure:?}"
            );
        }
        let Err(Verdict::Fail(failure)) = read(&success(&json!({}))) else {
            panic!("an empty answer must fail");
        };
        assert_eq!(failure.kind, RemoteFailure::Error);
        assert_eq!(failure.error_type.as_deref(), Some("no_candidates"));
    }
}
