//! The T5 tokenizer of SD3 and FLUX packages: a Hugging Face fast tokenizer (`tokenizer.json`,
//! SentencePiece unigram) run by the `tokenizers` crate, padded and truncated per call the way
//! transformers' `T5TokenizerFast(padding="max_length", truncation=True)` does.
use std::path::Path;

use tokenizers::{PaddingDirection, PostProcessor, TruncationDirection};

use super::tokenizer::{invalid, read_text, TokenizerError};

type Result<T> = std::result::Result<T, TokenizerError>;

const PAD: &str = "<pad>";

#[derive(Debug)]
pub struct T5Tokenizer {
    inner: tokenizers::Tokenizer,
    pad_id: u32,
}

impl T5Tokenizer {
    pub fn from_dir(dir: &Path) -> Result<T5Tokenizer> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(TokenizerError::MissingFiles {
                dir: dir.to_path_buf(),
                missing: "tokenizer.json".into(),
            });
        }
        let inner: tokenizers::Tokenizer = read_text(&path)?
            .parse()
            .map_err(|e| invalid(&path, format!("{e}")))?;
        let pad_id = inner.token_to_id(PAD).ok_or(TokenizerError::UnknownToken {
            dir: dir.to_path_buf(),
            role: "pad",
            token: PAD.into(),
        })?;
        Ok(T5Tokenizer { inner, pad_id })
    }

    /// Exactly `max_length` ids: the text's pieces truncated to leave room for the special tokens
    /// the post-processor adds (T5's `</s>`), then padded with `<pad>`.
    pub fn encode(&self, text: &str, max_length: usize) -> Result<Vec<i64>> {
        let failed = |e: tokenizers::Error| TokenizerError::Encode {
            word: text.to_string(),
            reason: e.to_string(),
        };
        let mut encoding = self.inner.encode(text, false).map_err(failed)?;
        let specials = self
            .inner
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(false));
        encoding.truncate(
            max_length.saturating_sub(specials),
            0,
            TruncationDirection::Right,
        );
        let mut encoding = self
            .inner
            .post_process(encoding, None, true)
            .map_err(failed)?;
        encoding.pad(max_length, self.pad_id, 0, PAD, PaddingDirection::Right);
        Ok(encoding.get_ids().iter().map(|&id| i64::from(id)).collect())
    }
}
