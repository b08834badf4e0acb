//! The token loop shared by every layout: pick a token, stream its text, stop at an end token, a stop
//! string, `max_new_tokens` or the context length, and honour cancellation.
use std::time::Instant;

use super::request::{FinishReason, TokenEvent, VlmRequest, VlmTimings};
use super::sampling::Sampler;
use super::text::{TextStream, TextTokenizer};
use crate::error::{Error, Result};

/// A model part way through a sequence: it has read the prompt and holds the logits of the next
/// token; `advance` feeds it the chosen one.
pub(crate) trait Decoding {
    /// Logits over the vocabulary for the next token; the sampler rewrites them in place (no copy
    /// per token: a real vocabulary is 150k floats).
    fn logits_mut(&mut self) -> &mut [f32];
    /// Appends `token` to the sequence and computes the next logits.
    fn advance(&mut self, token: i64) -> Result<()>;
    /// Whether one more token fits in the model's context.
    fn has_room(&self) -> bool;
}

/// What the loop produced.
pub(crate) struct Generated {
    pub token_ids: Vec<i64>,
    pub text: String,
    pub finish_reason: FinishReason,
}

/// Everything the loop reads besides the model state.
pub(crate) struct LoopContext<'a> {
    pub tokenizer: &'a TextTokenizer,
    pub eos: &'a [i64],
    /// The prompt's ids: the repetition penalty counts them, as transformers does.
    pub prompt: &'a [i64],
    pub started: Instant,
}

pub(crate) fn run(
    state: &mut dyn Decoding,
    cx: &LoopContext<'_>,
    request: &VlmRequest,
    timings: &mut VlmTimings,
    on_token: &mut dyn FnMut(TokenEvent<'_>) -> bool,
) -> Result<Generated> {
    let mut sampler = Sampler::new(&request.sampling)?;
    let mut stream = TextStream::new(&request.stop);
    let mut history = cx.prompt.to_vec();
    let mut new_ids = Vec::new();
    let mut first_at = None;
    let finish_reason = loop {
        if request.cancel.as_ref().is_some_and(|c| c.is_cancelled()) {
            return Err(Error::Cancelled);
        }
        let id = sampler.next(state.logits_mut(), &history);
        let now = Instant::now();
        first_at.get_or_insert_with(|| {
            timings.first_token = now - cx.started;
            now
        });
        history.push(id);
        new_ids.push(id);
        let end = cx.eos.contains(&id);
        let full = new_ids.len() == request.max_new_tokens || !state.has_room();
        let text = if end || full {
            stream.finish(cx.tokenizer, (!end).then_some(id))?
        } else {
            stream.push(cx.tokenizer, id)?
        };
        let event = TokenEvent {
            token_id: id,
            text,
            index: new_ids.len(),
        };
        if !on_token(event) {
            return Err(Error::Cancelled);
        }
        if end || stream.stopped() {
            break FinishReason::Stop;
        }
        if full {
            break FinishReason::Length;
        }
        state.advance(id)?;
    };
    if let Some(first) = first_at {
        timings.decode = first.elapsed();
    }
    let text = if stream.stopped() {
        stream.text().to_string()
    } else {
        cx.tokenizer.decode(&new_ids)?
    };
    Ok(Generated {
        token_ids: new_ids,
        text,
        finish_reason,
    })
}
