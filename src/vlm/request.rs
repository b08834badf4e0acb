//! What a caller asks a vision-language model for, and what it gets back.
use std::time::Duration;

use super::sampling::SamplingParams;
use super::template::{Content, Message};
use crate::error::{Error, Result};
use crate::image::Image;
use crate::request::CancelToken;

/// The most new tokens one request may ask for.
pub const MAX_NEW_TOKENS: usize = 32_768;
/// The most images one request may carry.
pub const MAX_IMAGES: usize = 64;
/// The most stop strings one request may carry (OpenAI allows 4; a few more cost nothing).
pub const MAX_STOP_STRINGS: usize = 16;

/// The prompt `dg caption` and [`VlmRequest::caption`] use when the caller gives none.
pub const DEFAULT_CAPTION_PROMPT: &str =
    "Describe this image in one detailed paragraph: the subject, the setting, colours, lighting and style.";

/// One message of a conversation: a role ("system", "user", "assistant") and its parts in order.
#[derive(Debug, Clone)]
pub struct ChatMessage {
    pub role: String,
    pub parts: Vec<Part>,
}

/// Text or an image, in the order the model should read them.
#[derive(Debug, Clone)]
pub enum Part {
    Text(String),
    Image(Image),
}

/// The settings a caller may name by key (the C ABI's `dg_vlm_params_set`, bindings): the one table
/// [`VlmRequest::set`] reads, with what each means.
pub const KEYS: [(&str, &str); 7] = [
    ("max_new_tokens", "new tokens at most, 1..=32768"),
    ("temperature", "0 = greedy (the default), up to 100"),
    ("top_k", "keep the k most likely tokens; 0 = off"),
    (
        "top_p",
        "keep the smallest set reaching this probability, (0, 1]; 1 = off",
    ),
    (
        "repetition_penalty",
        "penalise ids already seen, (0, 100]; 1 = off",
    ),
    ("seed", "sampling seed, an unsigned 64-bit integer"),
    (
        "stop",
        "adds a stop string (at most 16); an empty value clears them",
    ),
];

/// One generation: a conversation (images inline), how many tokens and how to pick them.
#[derive(Debug, Clone)]
pub struct VlmRequest {
    pub messages: Vec<ChatMessage>,
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation ends when the text contains one of these; the returned text stops before it.
    pub stop: Vec<String>,
    pub cancel: Option<CancelToken>,
}

impl VlmRequest {
    /// A single user turn: the images first, then the text (as Qwen's and HF's examples order them).
    pub fn new(text: impl Into<String>, images: Vec<Image>) -> VlmRequest {
        let mut parts: Vec<Part> = images.into_iter().map(Part::Image).collect();
        let text = text.into();
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        VlmRequest {
            messages: vec![ChatMessage {
                role: "user".into(),
                parts,
            }],
            max_new_tokens: 128,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            cancel: None,
        }
    }

    /// A caption request: `prompt`, or [`DEFAULT_CAPTION_PROMPT`] when it is `None`.
    pub fn caption(images: Vec<Image>, prompt: Option<&str>) -> VlmRequest {
        VlmRequest::new(prompt.unwrap_or(DEFAULT_CAPTION_PROMPT), images)
    }

    /// Puts a system message first (replacing one already there).
    pub fn with_system(mut self, text: impl Into<String>) -> VlmRequest {
        self.messages.retain(|m| m.role != "system");
        self.messages.insert(
            0,
            ChatMessage {
                role: "system".into(),
                parts: vec![Part::Text(text.into())],
            },
        );
        self
    }

    /// The request's images in the order they appear.
    pub fn images(&self) -> impl Iterator<Item = &Image> {
        self.messages
            .iter()
            .flat_map(|m| &m.parts)
            .filter_map(|p| match p {
                Part::Image(image) => Some(image),
                Part::Text(_) => None,
            })
    }

    /// The conversation as the chat template sees it (images as placeholders).
    pub fn template_messages(&self) -> Vec<Message> {
        self.messages
            .iter()
            .map(|m| Message {
                role: m.role.clone(),
                content: m
                    .parts
                    .iter()
                    .map(|p| match p {
                        Part::Text(t) => Content::Text(t.clone()),
                        Part::Image(_) => Content::Image,
                    })
                    .collect(),
            })
            .collect()
    }

    /// Sets one of [`KEYS`] from text. A bad value is INVALID_ARG naming key and value and changes
    /// nothing.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let bad = |why: &dyn std::fmt::Display| {
            Error::InvalidArg(format!(
                "invalid value `{value}` for VLM setting `{key}`: {why}"
            ))
        };
        let number = value.trim();
        let mut sampling = self.sampling;
        match key {
            "max_new_tokens" => {
                let n: usize = number.parse().map_err(|e| bad(&e))?;
                if n == 0 || n > MAX_NEW_TOKENS {
                    return Err(bad(&format!("must be 1..={MAX_NEW_TOKENS}")));
                }
                self.max_new_tokens = n;
                return Ok(());
            }
            "temperature" => sampling.temperature = number.parse().map_err(|e| bad(&e))?,
            "top_p" => sampling.top_p = number.parse().map_err(|e| bad(&e))?,
            "repetition_penalty" => {
                sampling.repetition_penalty = number.parse().map_err(|e| bad(&e))?
            }
            "top_k" => sampling.top_k = number.parse().map_err(|e| bad(&e))?,
            "seed" => sampling.seed = number.parse().map_err(|e| bad(&e))?,
            "stop" if value.is_empty() => {
                self.stop.clear();
                return Ok(());
            }
            "stop" if self.stop.len() >= MAX_STOP_STRINGS => {
                return Err(bad(&format!("at most {MAX_STOP_STRINGS} stop strings")));
            }
            "stop" => {
                self.stop.push(value.to_string());
                return Ok(());
            }
            _ => {
                let keys: Vec<&str> = KEYS.iter().map(|(k, _)| *k).collect();
                return Err(Error::InvalidArg(format!(
                    "unknown VLM setting `{key}` (expected {})",
                    keys.join(", ")
                )));
            }
        }
        sampling.validate().map_err(|e| match e {
            Error::InvalidArg(why) => bad(&why),
            other => bad(&other),
        })?;
        self.sampling = sampling;
        Ok(())
    }

    /// Checks what does not depend on the model: counts, bounds and sampling values.
    pub fn validate(&self) -> Result<()> {
        if self.max_new_tokens == 0 || self.max_new_tokens > MAX_NEW_TOKENS {
            return Err(Error::InvalidArg(format!(
                "max_new_tokens must be 1..={MAX_NEW_TOKENS}, got {}",
                self.max_new_tokens
            )));
        }
        if self.messages.is_empty() {
            return Err(Error::InvalidArg(
                "a request needs at least one message".into(),
            ));
        }
        if let Some(m) = self.messages.iter().find(|m| m.role.trim().is_empty()) {
            return Err(Error::InvalidArg(format!(
                "message role must not be empty (parts: {})",
                m.parts.len()
            )));
        }
        let images = self.images().count();
        if images > MAX_IMAGES {
            return Err(Error::InvalidArg(format!(
                "at most {MAX_IMAGES} images per request, got {images}"
            )));
        }
        if self.stop.len() > MAX_STOP_STRINGS || self.stop.iter().any(String::is_empty) {
            return Err(Error::InvalidArg(format!(
                "stop takes at most {MAX_STOP_STRINGS} non-empty strings, got {:?}",
                self.stop
            )));
        }
        self.sampling.validate()
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_new_tokens` or the model's context length.
    Length,
}

impl FinishReason {
    /// The name OpenAI's chat completions use.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// Where the time of one generation went.
#[derive(Debug, Clone, Default)]
pub struct VlmTimings {
    /// Chat template, tokenizer and image preprocessing.
    pub preprocess: Duration,
    /// Vision encoder runs.
    pub vision: Duration,
    /// From the start of the request to the first new token (time to first token).
    pub first_token: Duration,
    /// From the first new token to the last.
    pub decode: Duration,
    pub total: Duration,
}

impl VlmTimings {
    /// New tokens after the first per second of decoding (0 when fewer than two tokens).
    pub fn tokens_per_second(&self, new_tokens: usize) -> f64 {
        let secs = self.decode.as_secs_f64();
        if new_tokens < 2 || secs <= 0.0 {
            0.0
        } else {
            (new_tokens - 1) as f64 / secs
        }
    }
}

/// The result of one generation.
#[derive(Debug, Clone)]
pub struct VlmOutput {
    /// The new text, special tokens skipped, cut before a stop string.
    pub text: String,
    /// The new token ids (an end-of-sequence token that ended generation included).
    pub token_ids: Vec<i64>,
    /// Tokens in the prompt, image tokens included.
    pub prompt_tokens: usize,
    pub finish_reason: FinishReason,
    pub timings: VlmTimings,
}

/// One new token as the streaming callback sees it.
#[derive(Debug, Clone, Copy)]
pub struct TokenEvent<'a> {
    pub token_id: i64,
    /// Text this token completes (may be empty: a token in the middle of a UTF-8 character, a
    /// special token, or text held back because it may begin a stop string).
    pub text: &'a str,
    /// New tokens so far, this one included.
    pub index: usize,
}
