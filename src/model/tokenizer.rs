//! CLIP text tokenizer giving the ids diffusers' `StableDiffusionPipeline` feeds its text
//! encoder: transformers' *slow* `CLIPTokenizer` (the class diffusers loads from `vocab.json` +
//! `merges.txt`) called with `padding="max_length"`, `max_length=model_max_length`,
//! `truncation=True`.
//!
//! The slow tokenizer is mirrored step by step rather than running a `tokenizers` pipeline,
//! because `CLIPTokenizerFast`'s normalizer (NFC, `\s+`→space, per-char lowercase) differs:
//! 1. split the raw prompt on added tokens (bos/eos/unk/pad), as transformers' trie does; SD2
//!    pads with `"!"`, so there every `!` becomes id 0 rather than BPE's `!</w>`;
//! 2. clean each chunk like `whitespace_clean(ftfy.fix_text(t)).lower()` (with final sigma);
//! 3. split with CLIP's regex, map bytes to unicode, run `tokenizers`' `BPE` model (a literal
//!    `<|startoftext|>`/`<|endoftext|>` maps straight to its id, like the slow cache).
//!
//! Residual differences. transformers uses ftfy when installed (as in our reference venv);
//! reproduced here is everything `ftfy.fix_text` does except mojibake repair (`fix_encoding`:
//! e.g. `"cafÃ©"`→`"café"`, `"â€™"`→`"'"`, which needs ftfy's badness heuristics), and of the
//! HTML5 named entities only [`NAMED_ENTITIES`] are decoded (all numeric `&#..;` ones are).
//! Reproduced: HTML unescaping (off once a line contains `<`), C1 controls as Windows-1252,
//! Latin ligatures, fullwidth/halfwidth forms, curly quotes, terminal escapes, control
//! characters, NFC. Unicode tables (case, NFC, `\p{L}`/`\p{N}`) are Rust's, so characters
//! assigned in versions newer than those may tokenize differently. Without ftfy transformers
//! falls back to BERT's `BasicTokenizer`; that variant is not matched.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::models::ModelWrapper;
use tokenizers::utils::SysRegex;
use tokenizers::{Model, NormalizedString};

const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";
/// `CLIPTokenizer`'s default when the configs name none (SD 1.x also pads with it).
const DEFAULT_PAD: &str = EOS;
const DEFAULT_MAX_LENGTH: usize = 77;
/// transformers keeps only `merges[1 : 49152 - 256 - 2 + 1]` (line 0 is the header).
const MAX_MERGES: usize = 49152 - 256 - 2;
/// CLIP's pre-tokenization regex; the slow tokenizer compiles it with `re.IGNORECASE`.
const CLIP_PATTERN: &str = r"(?i)<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
/// The HTML5 named entities decoded here (ftfy decodes all ~2200 of them).
#[rustfmt::skip]
pub const NAMED_ENTITIES: &[(&str, &str)] = &[
    ("amp", "&"), ("lt", "<"), ("gt", ">"), ("quot", "\""), ("apos", "'"), ("nbsp", "\u{a0}"),
    ("AMP", "&"), ("LT", "<"), ("GT", ">"), ("QUOT", "\""), ("APOS", "'"), ("NBSP", "\u{a0}"),
    ("hellip", "…"), ("mdash", "—"), ("ndash", "–"), ("lsquo", "‘"), ("rsquo", "’"),
    ("ldquo", "“"), ("rdquo", "”"), ("copy", "©"), ("reg", "®"), ("trade", "™"), ("deg", "°"),
    ("times", "×"), ("eacute", "é"), ("EACUTE", "É"),
];
/// Windows-1252 for 0x80..=0x9F; ftfy's "sloppy" codec keeps the 5 undefined bytes as-is.
#[rustfmt::skip]
const CP1252_C1: [char; 32] = [
    '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8d}', 'Ž', '\u{8f}',
    '\u{90}', '‘', '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9d}', 'ž', 'Ÿ',
];
/// ftfy's `LIGATURES` table.
#[rustfmt::skip]
const LIGATURES: &[(char, &str)] = &[
    ('Ĳ', "IJ"), ('ĳ', "ij"), ('ŉ', "ʼn"), ('Ǳ', "DZ"), ('ǲ', "Dz"), ('ǳ', "dz"), ('Ǆ', "DŽ"),
    ('ǅ', "Dž"), ('ǆ', "dž"), ('Ǉ', "LJ"), ('ǈ', "Lj"), ('ǉ', "lj"), ('Ǌ', "NJ"), ('ǋ', "Nj"),
    ('ǌ', "nj"), ('ﬀ', "ff"), ('ﬁ', "fi"), ('ﬂ', "fl"), ('ﬃ', "ffi"), ('ﬄ', "ffl"), ('ﬅ', "ſt"),
    ('ﬆ', "st"),
];

/// Why a tokenizer could not be loaded or a prompt not encoded.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("tokenizer directory {dir} does not exist or is not a directory")]
    NotADirectory { dir: PathBuf },
    #[error("tokenizer directory {dir} lacks {missing} (looked for tokenizer.json, else vocab.json + merges.txt)")]
    MissingFiles { dir: PathBuf, missing: String },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot parse {path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("invalid {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{role} token {token:?} is not in the vocabulary of {dir}")]
    UnknownToken {
        dir: PathBuf,
        role: &'static str,
        token: String,
    },
    #[error("BPE failed on {word:?}: {reason}")]
    Encode { word: String, reason: String },
}

type Result<T, E = TokenizerError> = std::result::Result<T, E>;

pub(super) fn invalid(path: &Path, reason: impl Into<String>) -> TokenizerError {
    let (path, reason) = (path.to_path_buf(), reason.into());
    TokenizerError::Invalid { path, reason }
}

/// CLIP BPE tokenizer; `encode` yields exactly `max_length` ids like diffusers' call.
#[derive(Debug)]
pub struct Tokenizer {
    bpe: BPE,
    /// Added tokens split out of the raw prompt, longest first (leftmost-longest match).
    added: Vec<(String, i64)>,
    /// Ids for the regex's literal `<|startoftext|>` / `<|endoftext|>` alternatives.
    literals: [(&'static str, i64); 2],
    /// bos, eos, unk, pad.
    special: [i64; 4],
    max_length: usize,
    pattern: SysRegex,
    byte_chars: [char; 256],
}

impl Tokenizer {
    /// Loads `tokenizer.json` when present, else `vocab.json` + `merges.txt`; special tokens and
    /// `model_max_length` come from `tokenizer_config.json` / `special_tokens_map.json`.
    pub fn from_dir(dir: &Path) -> Result<Tokenizer> {
        if !dir.is_dir() {
            return Err(TokenizerError::NotADirectory {
                dir: dir.to_path_buf(),
            });
        }
        let cfg = Config::read(dir)?;
        let json_path = dir.join("tokenizer.json");
        let (bpe, mut added) = if json_path.is_file() {
            load_tokenizer_json(&json_path)?
        } else {
            (load_vocab_merges(dir, &cfg.roles[2].1)?, Vec::new())
        };
        added.extend(cfg.added_decoder);
        let vocab = bpe.get_vocab();
        let find = |added: &[(String, i64)], tok: &str| {
            let hit = added.iter().find(|(t, _)| t == tok).map(|e| e.1);
            hit.or_else(|| vocab.get(tok).map(|&id| i64::from(id)))
        };
        let mut special = [0; 4];
        for (slot, (role, token)) in special.iter_mut().zip(cfg.roles) {
            let Some(id) = find(&added, &token) else {
                return Err(TokenizerError::UnknownToken {
                    dir: dir.to_path_buf(),
                    role,
                    token,
                });
            };
            *slot = id;
            added.push((token, id));
        }
        added.retain(|(t, _)| !t.is_empty());
        added.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        added.dedup_by(|a, b| a.0 == b.0);
        // Python maps a regex-produced literal through the vocab, falling back to unk.
        let literals = [BOS, EOS].map(|t| (t, find(&added, t).unwrap_or(special[2])));
        Ok(Tokenizer {
            bpe,
            added,
            literals,
            special,
            max_length: cfg.max_length,
            // A constant pattern: failing here is a programming error, not an input error.
            pattern: SysRegex::new(CLIP_PATTERN).expect("CLIP regex compiles"),
            byte_chars: byte_chars(),
        })
    }

    /// Ids for one prompt: `[bos] + tokens[..max_length-2] + [eos] + [pad; ...]`.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        let [bos, eos, _, pad] = self.special;
        let mut ids = vec![bos];
        let mut rest = text;
        // Tokens past max_length - 1 are truncated away, so encoding stops once there are enough.
        let enough = self.max_length - 1;
        while ids.len() < enough {
            let (before, hit) = self.split_added(rest);
            self.encode_chunk(before, &mut ids, enough)?;
            let Some((len, id)) = hit else { break };
            ids.push(id);
            rest = &rest[before.len() + len..];
        }
        ids.truncate(self.max_length - 1);
        ids.push(eos);
        ids.resize(self.max_length, pad);
        Ok(ids)
    }

    /// Encodes several prompts into one flat `[texts.len(), max_length]` row-major buffer.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<i64>> {
        let mut out = Vec::with_capacity(texts.len() * self.max_length);
        for text in texts {
            out.extend(self.encode(text)?);
        }
        Ok(out)
    }

    /// Sequence length of every encoding (`model_max_length`, 77 for SD).
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Id used for padding (`<|endoftext|>` in SD1, `!` in SD2).
    pub fn pad_id(&self) -> i64 {
        self.special[3]
    }

    /// Text before the leftmost added token and that token's (byte length, id).
    fn split_added<'a>(&self, text: &'a str) -> (&'a str, Option<(usize, i64)>) {
        for (pos, _) in text.char_indices() {
            let tail = &text[pos..];
            if let Some((tok, id)) = self
                .added
                .iter()
                .find(|(t, _)| tail.starts_with(t.as_str()))
            {
                return (&text[..pos], Some((tok.len(), *id)));
            }
        }
        (text, None)
    }

    /// Cleans, regex-splits and BPE-encodes text that holds no added token, until `ids` holds
    /// `enough` ids.
    fn encode_chunk(&self, chunk: &str, ids: &mut Vec<i64>, enough: usize) -> Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        let cleaned = clean(chunk);
        for (start, end) in self.pattern.find_iter(&cleaned) {
            if ids.len() >= enough {
                break;
            }
            let piece = &cleaned[start..end];
            if let Some((_, id)) = self.literals.iter().find(|(t, _)| *t == piece) {
                ids.push(*id);
                continue;
            }
            let word: String = piece
                .bytes()
                .map(|b| self.byte_chars[usize::from(b)])
                .collect();
            let tokens = self
                .bpe
                .tokenize(&word)
                .map_err(|e| TokenizerError::Encode {
                    word: piece.to_string(),
                    reason: e.to_string(),
                })?;
            ids.extend(tokens.iter().map(|t| i64::from(t.id)));
        }
        Ok(())
    }
}

/// Special tokens and length, resolved the way transformers' `from_pretrained` does.
struct Config {
    /// (role, token) for bos, eos, unk, pad.
    roles: [(&'static str, String); 4],
    max_length: usize,
    /// `added_tokens_decoder` entries of tokenizer_config.json (content, id).
    added_decoder: Vec<(String, i64)>,
}

impl Config {
    fn read(dir: &Path) -> Result<Config> {
        let cfg_path = dir.join("tokenizer_config.json");
        let tc = read_json_opt(&cfg_path)?.unwrap_or(Value::Null);
        let stm = read_json_opt(&dir.join("special_tokens_map.json"))?.unwrap_or(Value::Null);
        // special_tokens_map.json overrides the config only in the legacy format (no
        // `added_tokens_decoder` in tokenizer_config.json).
        let decoder = tc.get("added_tokens_decoder").and_then(Value::as_object);
        let legacy = decoder.map_or(&stm, |_| &Value::Null);
        let get = |key: &str, default: &str| {
            let found = legacy.get(key).and_then(token_content);
            found
                .or_else(|| tc.get(key).and_then(token_content))
                .unwrap_or_else(|| default.into())
        };
        let mut added_decoder = Vec::new();
        for (idx, tok) in decoder.into_iter().flatten() {
            let (Ok(id), Some(content)) = (idx.parse::<i64>(), token_content(tok)) else {
                let reason = format!("bad added_tokens_decoder entry {idx:?}");
                return Err(invalid(&cfg_path, reason));
            };
            added_decoder.push((content, id));
        }
        let max_length = match tc.get("model_max_length").unwrap_or(&Value::Null) {
            Value::Null => DEFAULT_MAX_LENGTH,
            v => match v.as_u64() {
                Some(n @ 2..=1_000_000) => n as usize,
                _ => return Err(invalid(&cfg_path, format!("model_max_length {v} unusable"))),
            },
        };
        let roles = [
            ("bos", get("bos_token", BOS)),
            ("eos", get("eos_token", EOS)),
            ("unk", get("unk_token", EOS)),
            ("pad", get("pad_token", DEFAULT_PAD)),
        ];
        Ok(Config {
            roles,
            max_length,
            added_decoder,
        })
    }
}

/// A special token given either as a string or as a serialized `AddedToken`.
fn token_content(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

pub(super) fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| TokenizerError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    serde_json::from_str(&read_text(path)?).map_err(|source| TokenizerError::Json {
        path: path.to_path_buf(),
        source,
    })
}

fn read_json_opt(path: &Path) -> Result<Option<Value>> {
    path.is_file().then(|| parse_json(path)).transpose()
}

/// Builds the BPE from `vocab.json` + `merges.txt`, reading merges as transformers does.
fn load_vocab_merges(dir: &Path, unk: &str) -> Result<BPE> {
    let (vocab_path, merges_path) = (dir.join("vocab.json"), dir.join("merges.txt"));
    let missing: Vec<&str> = [("vocab.json", &vocab_path), ("merges.txt", &merges_path)]
        .into_iter()
        .filter_map(|(name, p)| (!p.is_file()).then_some(name))
        .collect();
    if !missing.is_empty() {
        let (dir, missing) = (dir.to_path_buf(), missing.join(" and "));
        return Err(TokenizerError::MissingFiles { dir, missing });
    }
    let vocab: HashMap<String, u32> = parse_json(&vocab_path)?;
    let text = read_text(&merges_path)?;
    let mut merges = Vec::new();
    // `read().strip().split("\n")[1:48895]`: the first line is always dropped.
    for (n, line) in text.trim().split('\n').enumerate().skip(1).take(MAX_MERGES) {
        match line.split_whitespace().collect::<Vec<_>>()[..] {
            [] => {}
            [a, b] => merges.push((a.to_string(), b.to_string())),
            _ => {
                let reason = format!("line {} is not a pair of symbols: {line:?}", n + 1);
                return Err(invalid(&merges_path, reason));
            }
        }
    }
    BPE::builder()
        .vocab_and_merges(vocab.into_iter().collect::<Vocab>(), merges)
        .unk_token(unk.to_string())
        .end_of_word_suffix("</w>".to_string())
        .build()
        .map_err(|e| invalid(&merges_path, e.to_string()))
}

/// Takes the BPE model and added tokens out of a `tokenizer.json`; its normalizer and
/// pre-tokenizer are the fast tokenizer's and deliberately unused.
fn load_tokenizer_json(path: &Path) -> Result<(BPE, Vec<(String, i64)>)> {
    let text = read_text(path)?;
    let tok: tokenizers::Tokenizer = text.parse().map_err(|e| invalid(path, format!("{e}")))?;
    let ModelWrapper::BPE(bpe) = tok.get_model() else {
        return Err(invalid(path, "model is not BPE"));
    };
    if bpe.end_of_word_suffix.as_deref() != Some("</w>") {
        return Err(invalid(
            path,
            "BPE model lacks CLIP's \"</w>\" end-of-word suffix",
        ));
    }
    let added = tok.get_added_tokens_decoder().into_iter();
    Ok((
        bpe.clone(),
        added.map(|(id, t)| (t.content, i64::from(id))).collect(),
    ))
}

/// GPT-2/CLIP `bytes_to_unicode`: printable bytes map to themselves, the rest to U+0100.. in
/// byte order.
fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256;
    for (b, slot) in (0u8..=255).zip(table.iter_mut()) {
        let code = if matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF) {
            u32::from(b)
        } else {
            next += 1;
            next - 1
        };
        *slot = char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER);
    }
    table
}

/// `whitespace_clean(ftfy.fix_text(text)).lower()`; `split_whitespace` uses Unicode
/// White_Space, the same set as Python `regex`'s `\s`.
fn clean(text: &str) -> String {
    let fixed = fix_text(text);
    let lowered = fixed
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase();
    // Python's case-insensitive CLIP regex matches U+0345 (which case-folds to a letter) with
    // none of its classes, so it yields no token and just separates its neighbours.
    lowered.replace('\u{345}', " ")
}

/// ftfy's `fix_text` without `fix_encoding`: per line, repeat the fixers until nothing changes.
fn fix_text(text: &str) -> String {
    let mut unescape = true;
    let mut out = String::with_capacity(text.len());
    for segment in text.split_inclusive('\n') {
        // "auto" HTML unescaping turns off for good once a line looks like HTML.
        unescape &= !segment.contains('<');
        let mut cur = segment.to_string();
        loop {
            let step = if unescape {
                unescape_html(&cur)
            } else {
                cur.clone()
            };
            let step = remove_terminal_escapes(&fix_chars(&step));
            let step: String = step.chars().filter(|&c| !is_removed_control(c)).collect();
            let next = normalize(step, NormalizedString::nfc);
            if next == cur {
                break;
            }
            cur = next;
        }
        out.push_str(&cur);
    }
    out
}

fn normalize(text: String, form: fn(&mut NormalizedString) -> &mut NormalizedString) -> String {
    let mut n = NormalizedString::from(text);
    form(&mut n);
    n.get().to_string()
}

/// ftfy's per-character fixers in its order: C1 controls, ligatures, width, curly quotes.
/// (`fix_line_breaks` only turns whitespace into `\n`, which `clean` collapses anyway.)
fn fix_chars(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let c = match u32::from(c) {
            n @ 0x80..=0x9F => CP1252_C1[(n - 0x80) as usize],
            _ => c,
        };
        let lig = LIGATURES.iter().find(|(l, _)| *l == c);
        for c in lig
            .map_or_else(|| c.to_string(), |(_, s)| s.to_string())
            .chars()
        {
            let wide = match u32::from(c) {
                0x3000 => " ".to_string(),
                0xFF01..=0xFFEF => normalize(c.to_string(), NormalizedString::nfkc),
                _ => c.to_string(),
            };
            out.extend(wide.chars().map(|c| match c {
                '\u{2BC}' | '\u{2018}'..='\u{201B}' => '\'',
                '\u{201C}'..='\u{201F}' => '"',
                _ => c,
            }));
        }
    }
    out
}

fn is_removed_control(c: char) -> bool {
    matches!(u32::from(c), 0..=8 | 0x0B | 0x0E..=0x1F | 0x7F | 0x206A..=0x206F | 0xFEFF | 0xFFF9..=0xFFFC)
}

/// Drops ANSI escapes `ESC [ [0-9;]* [A-Za-z]`.
fn remove_terminal_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("\u{1b}[") {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 2..];
        let params = after.trim_start_matches(|c: char| c.is_ascii_digit() || c == ';');
        match params.chars().next() {
            Some(c) if c.is_ascii_alphabetic() => rest = &params[1..],
            _ => {
                out.push_str("\u{1b}[");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// ftfy's `unescape_html`: replaces `&#?[0-9A-Za-z]{1,24};` when it is a known entity.
fn unescape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('&') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let body = after.strip_prefix('#');
        let name = body.unwrap_or(after);
        let n = name
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(name.len());
        let decoded = match (1..=24).contains(&n) && name[n..].starts_with(';') {
            false => None,
            true if body.is_some() => decode_charref(&name[..n]),
            true => NAMED_ENTITIES
                .iter()
                .find(|e| e.0 == &name[..n])
                .map(|e| e.1.to_string()),
        };
        match decoded {
            Some(value) => {
                out.push_str(&value);
                rest = &name[n + 1..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Python's `html.unescape` for one whole `&#...;` reference (`None`: left as is).
fn decode_charref(body: &str) -> Option<String> {
    let (digits, radix) = body
        .strip_prefix(['x', 'X'])
        .map_or((body, 10), |hex| (hex, 16));
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let c = match u32::from_str_radix(digits, radix).unwrap_or(u32::MAX) {
        0 | 0xD800..=0xDFFF | 0x110000.. => '\u{FFFD}',
        0x0D => '\r',
        n @ 0x80..=0x9F => CP1252_C1[(n - 0x80) as usize],
        0x1..=0x8 | 0xB | 0xE..=0x1F | 0x7F | 0xFDD0..=0xFDEF => return Some(String::new()),
        n if n & 0xFFFE == 0xFFFE => return Some(String::new()),
        n => char::from_u32(n).unwrap_or('\u{FFFD}'),
    };
    // ftfy keeps the reference when the result still holds a ';' (i.e. `&#59;`).
    (c != ';').then(|| c.to_string())
}
