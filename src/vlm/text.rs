//! Token ids to and from text for the VLM runtime: a `tokenizer.json` through the `tokenizers`
//! crate, and the streaming side: text that is complete, with stop strings held back and cut.
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A Hugging Face fast tokenizer (`tokenizer.json`).
#[derive(Debug)]
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
}

impl TextTokenizer {
    pub fn from_dir(dir: &Path) -> Result<TextTokenizer> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(Error::model(dir, "tokenizer.json is missing"));
        }
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| Error::model(&path, format!("cannot load the tokenizer: {e}")))?;
        Ok(TextTokenizer { inner, path })
    }

    /// Ids of `text` as a Hugging Face processor tokenizes a rendered chat (special tokens in the
    /// text are recognised; the tokenizer's post-processor runs).
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        let encoding = self
            .inner
            .encode(text, true)
            .map_err(|e| Error::InvalidArg(format!("cannot tokenize the prompt: {e}")))?;
        Ok(encoding.get_ids().iter().map(|&id| i64::from(id)).collect())
    }

    /// Text of `ids` with special tokens skipped (`skip_special_tokens=True`).
    pub fn decode(&self, ids: &[i64]) -> Result<String> {
        let ids: Vec<u32> = ids
            .iter()
            .filter_map(|&id| u32::try_from(id).ok())
            .collect();
        self.inner
            .decode(&ids, true)
            .map_err(|e| Error::internal("tokenizer", format!("{}: {e}", self.path.display())))
    }

    /// The id of a token string (added tokens included).
    pub fn token_id(&self, token: &str) -> Option<i64> {
        self.inner.token_to_id(token).map(i64::from)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// Turns generated ids into text as they arrive: only complete characters are released (a
/// byte-level token can end inside a UTF-8 character), text that may begin a stop string is held
/// back, and a stop string ends the text before it.
#[derive(Debug)]
pub struct TextStream {
    ids: Vec<i64>,
    /// `ids[prefix..read]` decoded is what was last compared against (the vLLM/TGI scheme: decoding
    /// a short window keeps each step O(window), and the window's left context keeps spaces right).
    prefix: usize,
    read: usize,
    text: String,
    released: usize,
    stop: Vec<String>,
    stopped: bool,
}

impl TextStream {
    pub fn new(stop: &[String]) -> TextStream {
        TextStream {
            ids: Vec::new(),
            prefix: 0,
            read: 0,
            text: String::new(),
            released: 0,
            stop: stop.to_vec(),
            stopped: false,
        }
    }

    /// Adds one id; returns the text it releases (often empty).
    pub fn push(&mut self, tokenizer: &TextTokenizer, id: i64) -> Result<&str> {
        self.ids.push(id);
        let before = tokenizer.decode(&self.ids[self.prefix..self.read])?;
        let after = tokenizer.decode(&self.ids[self.prefix..])?;
        if after.len() > before.len() && !after.ends_with('\u{FFFD}') {
            if let Some(new) = after.get(before.len()..) {
                self.text.push_str(new);
            }
            self.prefix = self.read;
            self.read = self.ids.len();
        }
        Ok(self.release())
    }

    /// Adds the last id (if any) and releases everything still held back: nothing follows that
    /// could complete a stop string or a character, so pending bytes are released as the full
    /// decode has them (a character cut short by the token limit decodes to U+FFFD there too).
    pub fn finish(&mut self, tokenizer: &TextTokenizer, id: Option<i64>) -> Result<&str> {
        let start = self.released;
        if let Some(id) = id {
            self.push(tokenizer, id)?;
        }
        if !self.stopped && self.read < self.ids.len() {
            let before = tokenizer.decode(&self.ids[self.prefix..self.read])?;
            let after = tokenizer.decode(&self.ids[self.prefix..])?;
            if let Some(rest) = after.get(before.len()..) {
                self.text.push_str(rest);
            }
            self.read = self.ids.len();
        }
        if let Some(cut) = self.first_stop() {
            self.text.truncate(cut);
            self.stopped = true;
        }
        self.released = self.text.len().max(start);
        Ok(&self.text[start.min(self.text.len())..self.text.len()])
    }

    /// Whether a stop string has appeared (the text now ends before it).
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// The whole text so far (cut before a stop string once one appeared).
    pub fn text(&self) -> &str {
        &self.text
    }

    fn release(&mut self) -> &str {
        let start = self.released;
        if let Some(cut) = self.first_stop() {
            self.text.truncate(cut);
            self.stopped = true;
            self.released = cut.max(start);
            return &self.text[start.min(cut)..self.released];
        }
        let end = self.text.len() - self.held_back();
        self.released = end.max(start);
        &self.text[start..self.released]
    }

    /// The byte offset of the earliest stop string in the text.
    fn first_stop(&self) -> Option<usize> {
        self.stop
            .iter()
            .filter_map(|s| self.text.find(s.as_str()))
            .min()
    }

    /// Bytes at the end of the text that could begin a stop string, kept back until it is known.
    fn held_back(&self) -> usize {
        let text = self.text.as_str();
        self.stop
            .iter()
            .flat_map(|s| {
                (1..s.len())
                    .rev()
                    .filter(|&n| s.is_char_boundary(n) && text.ends_with(&s[..n]))
                    .take(1)
            })
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_text(stop: &[&str], pieces: &[&str]) -> (String, bool) {
        // Drive the stop-string logic directly with already-decoded text.
        let stop: Vec<String> = stop.iter().map(|s| s.to_string()).collect();
        let mut stream = TextStream::new(&stop);
        let mut out = String::new();
        for piece in pieces {
            stream.text.push_str(piece);
            out.push_str(stream.release());
            if stream.stopped() {
                break;
            }
        }
        (out, stream.stopped())
    }

    #[test]
    fn text_before_a_stop_string_is_released_and_the_rest_cut() {
        let (out, stopped) = stream_text(&["END"], &["a b", " E", "N", "D more"]);
        assert_eq!(out, "a b ");
        assert!(stopped);
    }

    #[test]
    fn a_partial_stop_string_is_released_once_it_cannot_match() {
        let (out, stopped) = stream_text(&["END"], &["a E", "x"]);
        assert_eq!(out, "a Ex");
        assert!(!stopped);
    }

    #[test]
    fn the_earliest_of_several_stop_strings_wins() {
        let (out, _) = stream_text(&["zz", "b"], &["a b c zz"]);
        assert_eq!(out, "a ");
    }
}
