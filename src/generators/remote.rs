//! What the remote services ([`super::openai`], [`super::gemini`]) share beyond the pool and the
//! HTTP calls: the exchange that keeps a call's decoded answer, lenient base64, texts cut for
//! error messages, and what a remote generator describes, reports and returns.
use std::borrow::Cow;
use std::sync::Mutex;
use std::time::Instant;

use base64::engine::general_purpose::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use serde_json::{Map, Value};

use super::http::HttpResponse;
use super::pool::{ApiKey, Pool, Service, Verdict};
use super::{Description, Sizes, Task};
use crate::error::{Error, Result};
use crate::image::Image;
use crate::request::{Output, Progress};

/// Decodes base64 with or without padding: the services pad, but compatible servers and proxies
/// sometimes strip it.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// One call's view of a service: how it takes the key and how its answers read. A successful
/// answer is decoded once, while the pool classifies it, and kept for the caller, so a final
/// failure found in a 2xx body is not retried and carries the right attempt count.
pub(crate) struct Exchange<A> {
    service: &'static str,
    auth: fn(&ApiKey) -> (&'static str, String),
    /// A closure, so a reader can know what the call asked for (how many images).
    read: Box<ReadAnswer<A>>,
    answer: Mutex<Option<A>>,
}

type ReadAnswer<A> = dyn Fn(&HttpResponse) -> Result<A, Verdict> + Send + Sync;

impl<A> Exchange<A> {
    /// `read` decodes an answer, or says what the pool should do with it.
    pub fn new(
        service: &'static str,
        auth: fn(&ApiKey) -> (&'static str, String),
        read: impl Fn(&HttpResponse) -> Result<A, Verdict> + Send + Sync + 'static,
    ) -> Exchange<A> {
        Exchange {
            service,
            auth,
            read: Box::new(read),
            answer: Mutex::new(None),
        }
    }

    /// The answer kept from the successful call.
    pub fn into_answer(self) -> Result<A> {
        self.answer
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .ok_or_else(|| Error::internal(self.service, "a successful answer was not kept"))
    }
}

impl<A: Send> Service for Exchange<A> {
    fn name(&self) -> &'static str {
        self.service
    }

    fn auth_header(&self, key: &ApiKey) -> (&'static str, String) {
        (self.auth)(key)
    }

    fn classify(&self, response: &HttpResponse) -> Verdict {
        match (self.read)(response) {
            Ok(answer) => {
                *self.answer.lock().unwrap_or_else(|e| e.into_inner()) = Some(answer);
                Verdict::Success
            }
            Err(verdict) => verdict,
        }
    }
}

/// Decodes base64 as services send it: padded or not, line-wrapped or not.
pub(crate) fn decode_base64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    let text = text.trim();
    // Line-wrapped base64 is rare; copy only then.
    let text: Cow<'_, str> = if text.bytes().any(|b| b.is_ascii_whitespace()) {
        Cow::Owned(text.chars().filter(|c| !c.is_ascii_whitespace()).collect())
    } else {
        Cow::Borrowed(text)
    };
    BASE64.decode(text.as_bytes())
}

/// Padded standard base64, as the services take inline images.
pub(crate) fn encode_base64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// `text` cut to `max_chars` characters, marked with `...` when cut.
pub(crate) fn cut(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

/// The pool's base URLs, for what `check` found.
pub(crate) fn base_urls(pool: &Pool) -> String {
    pool.endpoints()
        .iter()
        .map(|e| e.base_url.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a remote model is and does; no remote service takes a seed or a negative prompt.
pub(crate) fn description(
    model: &str,
    kind: &'static str,
    tasks: Vec<Task>,
    sizes: Sizes,
) -> Description {
    Description {
        name: model.to_string(),
        kind,
        tasks,
        sizes,
        honours_seed: false,
        negative_prompt: false,
    }
}

/// Reports `step` of `total` calls done (a remote call is one stage); `Cancelled` when the
/// caller says stop.
pub(crate) fn report(
    progress: &mut dyn FnMut(&Progress) -> bool,
    step: usize,
    total: usize,
    started: Instant,
) -> Result<()> {
    let report = Progress {
        step,
        total,
        stage: 1,
        stages: 1,
        elapsed: started.elapsed(),
    };
    if progress(&report) {
        Ok(())
    } else {
        Err(Error::Cancelled)
    }
}

/// A remote run's output: the images, and `metadata` with the request fields not honoured (best
/// effort) listed as `ignored`.
pub(crate) fn output(
    images: Vec<Image>,
    mut metadata: Map<String, Value>,
    ignored: Vec<String>,
    started: Instant,
) -> Output {
    if !ignored.is_empty() {
        metadata.insert("ignored".into(), Value::from(ignored));
    }
    Output::from_images(images, metadata, started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_with_or_without_padding_and_line_breaks() {
        let bytes = b"hello, world!";
        let text = encode_base64(bytes);
        assert!(text.ends_with('='), "{text}");
        assert_eq!(decode_base64(&text).unwrap(), bytes);
        let unpadded = text.trim_end_matches('=');
        assert_eq!(decode_base64(unpadded).unwrap(), bytes);
        let wrapped = format!(" {}\r\n{}\n", &text[..6], &unpadded[6..]);
        assert_eq!(decode_base64(&wrapped).unwrap(), bytes);
        assert!(decode_base64("!!").is_err());
    }

    #[test]
    fn texts_are_cut_at_characters_and_marked() {
        assert_eq!(cut("short", 10), "short");
        assert_eq!(cut("exactly", 7), "exactly");
        assert_eq!(cut("éèêë", 2), "éè...");
    }
}
