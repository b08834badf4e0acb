//! Chat templates rendered as transformers' `apply_chat_template` renders them: Jinja with
//! `trim_blocks` and `lstrip_blocks`, loop controls, transformers' own `tojson` (Python's
//! `json.dumps`, no HTML escaping), `raise_exception`, `strftime_now`, Python string and dict
//! methods (`.strip()`, `.items()`, ... through minijinja-contrib's pycompat), and the tokenizer's
//! special tokens (`bos_token`, `eos_token`, ...) as variables.
//!
//! Messages are passed as multimodal processors pass them: `content` is always a list of
//! `{"type": "image"}` and `{"type": "text", "text": ...}` parts, keys in that order.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use minijinja::value::{Kwargs, Object, ObjectRepr, Value, ValueKind};
use minijinja::{Environment, ErrorKind};
use serde_json::Value as Json;

use crate::error::{Error, Result};

/// One part of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Text(String),
    /// An image's place; the template writes its placeholder (`<|image_pad|>`, `<image>`, ...).
    Image,
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `system`, `user` or `assistant` (passed through as given).
    pub role: String,
    pub content: Vec<Content>,
}

impl Message {
    /// A user message of images followed by a text, the usual VLM question.
    pub fn user(images: usize, text: &str) -> Message {
        let mut content = vec![Content::Image; images];
        content.push(Content::Text(text.to_string()));
        Message {
            role: "user".into(),
            content,
        }
    }

    /// A message of one text part.
    pub fn text(role: &str, text: &str) -> Message {
        Message {
            role: role.into(),
            content: vec![Content::Text(text.to_string())],
        }
    }
}

/// Name of the one template in a ChatTemplate's environment.
const NAME: &str = "chat_template";
/// The special tokens transformers passes to templates (`special_tokens_map`), when set.
const SPECIAL_TOKENS: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// A parsed chat template and the special tokens it is rendered with. Rendering is thread-safe.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Where the template came from, for errors.
    origin: PathBuf,
    /// `(name, token)` pairs such as `("bos_token", "<s>")`.
    special_tokens: Vec<(String, String)>,
}

impl ChatTemplate {
    /// Finds a model package's chat template where transformers looks, in its order:
    /// chat_template.jinja, chat_template.json (`{"chat_template": str}`), then tokenizer_config.json
    /// `chat_template` (a string, or a list of `{name, template}` of which "default" is used).
    /// Special tokens come from tokenizer_config.json (falling back to special_tokens_map.json).
    /// Ok(None) when the package has no template.
    pub fn from_dir(dir: &Path) -> Result<Option<ChatTemplate>> {
        let tokenizer_config = read_json(&dir.join("tokenizer_config.json"))?;
        let Some((source, origin)) = find_source(dir, tokenizer_config.as_ref())? else {
            return Ok(None);
        };
        let mut template = ChatTemplate::compile(source, origin)?;
        template.special_tokens = special_tokens(dir, tokenizer_config.as_ref())?;
        Ok(Some(template))
    }

    /// Parses a template given as text (no special tokens; see [`ChatTemplate::with_special_token`]).
    pub fn from_source(source: &str) -> Result<ChatTemplate> {
        ChatTemplate::compile(source.to_string(), PathBuf::from("<chat template>"))
    }

    /// Sets a variable such as `bos_token` for rendering (replacing an earlier value).
    pub fn with_special_token(mut self, name: &str, token: &str) -> ChatTemplate {
        self.special_tokens.retain(|(n, _)| n != name);
        self.special_tokens
            .push((name.to_string(), token.to_string()));
        self
    }

    /// The special tokens passed to the template, as `(name, token)`.
    pub fn special_tokens(&self) -> &[(String, String)] {
        &self.special_tokens
    }

    fn compile(source: String, origin: PathBuf) -> Result<ChatTemplate> {
        let mut env = environment()?;
        env.add_template_owned(NAME, without_generation_tags(&source))
            .map_err(|e| Error::Model {
                path: origin.clone(),
                message: format!("chat template does not parse: {}", describe(&e)),
            })?;
        Ok(ChatTemplate {
            env,
            origin,
            special_tokens: Vec::new(),
        })
    }

    /// Renders a conversation. An error raised by the template itself (`raise_exception`, e.g.
    /// roles that do not alternate) is INVALID_ARG with the template's message; any other failure
    /// is a MODEL error naming the template's file.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let template = self
            .env
            .get_template(NAME)
            .map_err(|e| self.model_error(&e))?;
        let mut context: BTreeMap<String, Value> = self
            .special_tokens
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        // As transformers' render_jinja_template: tools and documents are passed as None.
        context.insert("messages".into(), messages_value(messages));
        context.insert("tools".into(), Value::from(()));
        context.insert("documents".into(), Value::from(()));
        let prompt = Value::from(add_generation_prompt);
        context.insert("add_generation_prompt".into(), prompt);
        let ctx = Value::from(context);
        template.render(ctx).map_err(|e| match raised_message(&e) {
            Some(message) => Error::InvalidArg(format!("chat template: {message}")),
            None => self.model_error(&e),
        })
    }

    fn model_error(&self, e: &minijinja::Error) -> Error {
        Error::Model {
            path: self.origin.clone(),
            message: format!("chat template failed: {}", describe(e)),
        }
    }
}

/// The engine configured as transformers configures jinja2 for chat templates.
fn environment() -> Result<Environment<'static>> {
    let mut env = Environment::new();
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .keep_trailing_newline(false)
        .build()
        .map_err(|e| Error::Unsupported(format!("chat template syntax: {e}")))?;
    env.set_syntax(syntax);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_filter("tojson", tojson);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    Ok(env)
}

/// transformers' `{% generation %}...{% endgeneration %}` blocks (its AssistantTracker extension,
/// which only records where assistant text lies) render their body unchanged. minijinja does not
/// know the tag, so each becomes an equivalent no-op block, `{% if true %}` / `{% endif %}`,
/// keeping the tag's whitespace-control markers so trimming stays the same.
fn without_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        match generation_tag(tag) {
            Some((len, replacement)) => {
                out.push_str(&replacement);
                rest = &tag[len..];
            }
            None => {
                out.push_str("{%");
                rest = &tag[2..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// If `tag` starts with `{%[-+] generation|endgeneration [-+]%}`, its length and replacement.
fn generation_tag(tag: &str) -> Option<(usize, String)> {
    let end = tag.find("%}")?;
    let inner = &tag[2..end];
    let (open, inner) = match inner.strip_prefix(['-', '+']) {
        Some(stripped) => (&inner[..1], stripped),
        None => ("", inner),
    };
    let (close, inner) = match inner.strip_suffix(['-', '+']) {
        Some(stripped) => (&inner[inner.len() - 1..], stripped),
        None => ("", inner),
    };
    let body = match inner.trim() {
        "generation" => "if true",
        "endgeneration" => "endif",
        _ => return None,
    };
    Some((end + 2, format!("{{%{open} {body} {close}%}}")))
}

/// An error message with the template line when minijinja knows it.
fn describe(e: &minijinja::Error) -> String {
    match e.line() {
        Some(line) => format!("{e} (line {line})"),
        None => e.to_string(),
    }
}

/// Marks errors raised by `raise_exception` so render can tell them from template bugs.
#[derive(Debug)]
struct Raised(String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(
        minijinja::Error::new(ErrorKind::InvalidOperation, message.clone())
            .with_source(Raised(message)),
    )
}

/// The `raise_exception` message in an error's chain, if it came from there.
fn raised_message(e: &minijinja::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(raised) = err.downcast_ref::<Raised>() {
            return Some(raised.0.clone());
        }
        source = err.source();
    }
    None
}

/// Read-only map with keys in insertion order (minijinja's own maps sort their keys, while
/// Python dicts, and so `tojson` and `.items()` in transformers, keep insertion order).
#[derive(Debug)]
struct OrderedMap(Vec<(&'static str, Value)>);

impl Object for OrderedMap {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let key = key.as_str()?;
        self.0
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
    }

    fn enumerate(self: &Arc<Self>) -> minijinja::value::Enumerator {
        let keys: Vec<Value> = self.0.iter().map(|(k, _)| Value::from(*k)).collect();
        minijinja::value::Enumerator::Values(keys)
    }
}

/// Messages as the template sees them: `[{role, content: [{type, text?}]}]`.
fn messages_value(messages: &[Message]) -> Value {
    let list: Vec<Value> = messages
        .iter()
        .map(|m| {
            let parts: Vec<Value> = m.content.iter().map(content_value).collect();
            Value::from_object(OrderedMap(vec![
                ("role", Value::from(m.role.as_str())),
                ("content", Value::from(parts)),
            ]))
        })
        .collect();
    Value::from(list)
}

fn content_value(part: &Content) -> Value {
    match part {
        Content::Image => Value::from_object(OrderedMap(vec![("type", Value::from("image"))])),
        Content::Text(text) => Value::from_object(OrderedMap(vec![
            ("type", Value::from("text")),
            ("text", Value::from(text.as_str())),
        ])),
    }
}

/// Reads a JSON file; Ok(None) when it does not exist.
fn read_json(path: &Path) -> Result<Option<Json>> {
    let Some(text) = read_optional(path)? else {
        return Ok(None);
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::Model {
            path: path.to_path_buf(),
            message: format!("invalid JSON: {e}"),
        })
}

/// Reads a text file; Ok(None) when it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("cannot read", path, e)),
    }
}

/// The template source and its file, in transformers' lookup order.
fn find_source(dir: &Path, tokenizer_config: Option<&Json>) -> Result<Option<(String, PathBuf)>> {
    let jinja = dir.join("chat_template.jinja");
    if let Some(source) = read_optional(&jinja)? {
        return Ok(Some((source, jinja)));
    }
    let json_path = dir.join("chat_template.json");
    if let Some(json) = read_json(&json_path)? {
        let source = template_field(&json_path, json.get("chat_template"))?;
        return Ok(source.map(|s| (s, json_path)));
    }
    let config_path = dir.join("tokenizer_config.json");
    let source = template_field(
        &config_path,
        tokenizer_config.and_then(|c| c.get("chat_template")),
    )?;
    Ok(source.map(|s| (s, config_path)))
}

/// A `chat_template` value: a string, or a list of `{name, template}` whose "default" is used.
fn template_field(path: &Path, value: Option<&Json>) -> Result<Option<String>> {
    let model_error = |message: String| Error::Model {
        path: path.to_path_buf(),
        message,
    };
    match value {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(Json::Array(list)) => {
            let named = |item: &Json| -> Option<(String, String)> {
                let name = item.get("name")?.as_str()?;
                let template = item.get("template")?.as_str()?;
                Some((name.to_string(), template.to_string()))
            };
            let templates: Vec<(String, String)> = list.iter().filter_map(named).collect();
            if let Some((_, source)) = templates.iter().find(|(n, _)| n == "default") {
                return Ok(Some(source.clone()));
            }
            let names: Vec<&str> = templates.iter().map(|(n, _)| n.as_str()).collect();
            Err(model_error(format!(
                "chat_template lists templates {names:?} but none is named \"default\""
            )))
        }
        Some(v) => Err(model_error(format!(
            "chat_template must be a string or a list of {{name, template}}, got {v}"
        ))),
    }
}

/// Special tokens from tokenizer_config.json, filling gaps from special_tokens_map.json.
fn special_tokens(dir: &Path, tokenizer_config: Option<&Json>) -> Result<Vec<(String, String)>> {
    let map_path = dir.join("special_tokens_map.json");
    let mut fallback = None;
    let mut out = Vec::new();
    for name in SPECIAL_TOKENS {
        let mut token = tokenizer_config.and_then(|c| token_text(c.get(name)));
        if token.is_none() {
            if fallback.is_none() {
                fallback = Some(read_json(&map_path)?);
            }
            token = fallback
                .as_ref()
                .and_then(|m| m.as_ref())
                .and_then(|m| token_text(m.get(name)));
        }
        if let Some(token) = token {
            out.push((name.to_string(), token));
        }
    }
    Ok(out)
}

/// A special token written as a string or as an AddedToken object `{"content": ...}`.
fn token_text(value: Option<&Json>) -> Option<String> {
    match value? {
        Json::String(s) => Some(s.clone()),
        Json::Object(map) => map.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// transformers' `tojson`: Python's `json.dumps(x, ensure_ascii=False, indent=None,
/// separators=None, sort_keys=False)`, the options also accepted by keyword.
fn tojson(
    value: &Value,
    args: &[Value],
    kwargs: Kwargs,
) -> std::result::Result<Value, minijinja::Error> {
    const NAMES: [&str; 4] = ["ensure_ascii", "indent", "separators", "sort_keys"];
    if args.len() > NAMES.len() {
        return Err(minijinja::Error::new(
            ErrorKind::TooManyArguments,
            "tojson takes at most 4 arguments",
        ));
    }
    // Python's positional order, then keywords.
    let pick = |name: &str| -> std::result::Result<Option<Value>, minijinja::Error> {
        let at = NAMES.iter().position(|n| *n == name).unwrap_or(NAMES.len());
        match args.get(at) {
            Some(v) => Ok(Some(v.clone())),
            None => kwargs.get::<Option<Value>>(name),
        }
    };
    let ensure_ascii = pick("ensure_ascii")?.is_some_and(|v| v.is_true());
    let indent = json_indent(pick("indent")?)?;
    let sort_keys = pick("sort_keys")?.is_some_and(|v| v.is_true());
    let separators = json_separators(pick("separators")?, indent.is_some())?;
    kwargs.assert_all_used()?;
    let dumper = JsonDumper {
        ensure_ascii,
        indent,
        item_sep: separators.0,
        key_sep: separators.1,
        sort_keys,
    };
    let mut out = String::new();
    dumper.dump(value, 0, &mut out)?;
    Ok(Value::from(out))
}

/// `indent`: None, a number of spaces, or a string used as-is (as Python accepts).
fn json_indent(indent: Option<Value>) -> std::result::Result<Option<String>, minijinja::Error> {
    match indent {
        None => Ok(None),
        Some(v) if v.is_none() => Ok(None),
        Some(v) if v.kind() == ValueKind::String => Ok(Some(v.as_str().unwrap_or("").to_string())),
        Some(v) => {
            let n = v.as_i64().ok_or_else(|| {
                minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be an integer",
                )
            })?;
            Ok(Some(" ".repeat(n.clamp(0, 64) as usize)))
        }
    }
}

/// `separators`: a pair of strings; Python's default is (", ", ": "), or ("," , ": ") with indent.
fn json_separators(
    separators: Option<Value>,
    indented: bool,
) -> std::result::Result<(String, String), minijinja::Error> {
    let default = (
        if indented { "," } else { ", " }.to_string(),
        ": ".to_string(),
    );
    let Some(v) = separators.filter(|v| !v.is_none()) else {
        return Ok(default);
    };
    let bad = || {
        minijinja::Error::new(
            ErrorKind::InvalidOperation,
            "tojson: separators must be two strings",
        )
    };
    let items: Vec<Value> = v.try_iter().map_err(|_| bad())?.collect();
    match items.as_slice() {
        [a, b] => Ok((
            a.as_str().ok_or_else(bad)?.to_string(),
            b.as_str().ok_or_else(bad)?.to_string(),
        )),
        _ => Err(bad()),
    }
}

/// Python's `json.dumps` over minijinja values.
struct JsonDumper {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

impl JsonDumper {
    fn dump(
        &self,
        value: &Value,
        depth: usize,
        out: &mut String,
    ) -> std::result::Result<(), minijinja::Error> {
        if depth > 256 {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                "tojson: value nested too deeply",
            ));
        }
        match value.kind() {
            ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number => out.push_str(&python_number(value)),
            ValueKind::String => self.string(value.as_str().unwrap_or(""), out),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = value.try_iter()?.collect();
                self.container(('[', ']'), &items, depth, out, |item, out| {
                    self.dump(item, depth + 1, out)
                })?;
            }
            ValueKind::Map => {
                let mut entries = Vec::new();
                for key in value.try_iter()? {
                    let item = value.get_item(&key)?;
                    entries.push((json_key(&key), item));
                }
                if self.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(&b.0));
                }
                self.container(('{', '}'), &entries, depth, out, |(key, item), out| {
                    self.string(key, out);
                    out.push_str(&self.key_sep);
                    self.dump(item, depth + 1, out)
                })?;
            }
            kind => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: a value of kind {kind} is not JSON serializable"),
                ))
            }
        }
        Ok(())
    }

    /// Writes `[a, b]` / `{...}`, one item per indented line when `indent` is set.
    fn container<T>(
        &self,
        (open, close): (char, char),
        items: &[T],
        depth: usize,
        out: &mut String,
        mut write: impl FnMut(&T, &mut String) -> std::result::Result<(), minijinja::Error>,
    ) -> std::result::Result<(), minijinja::Error> {
        out.push(open);
        if items.is_empty() {
            out.push(close);
            return Ok(());
        }
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push_str(&self.item_sep);
            }
            self.newline(depth + 1, out);
            write(item, out)?;
        }
        self.newline(depth, out);
        out.push(close);
        Ok(())
    }

    fn newline(&self, depth: usize, out: &mut String) {
        if let Some(indent) = &self.indent {
            out.push('\n');
            for _ in 0..depth {
                out.push_str(indent);
            }
        }
    }

    /// A JSON string as Python escapes it.
    fn string(&self, s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ensure_ascii && !c.is_ascii()) => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        let _ = write!(out, "\\u{unit:04x}");
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// A dict key as Python's json writes it (non-string keys are converted to strings).
fn json_key(key: &Value) -> String {
    match key.kind() {
        ValueKind::String => key.as_str().unwrap_or("").to_string(),
        ValueKind::None => "null".into(),
        ValueKind::Bool => if key.is_true() { "true" } else { "false" }.into(),
        ValueKind::Number => python_number(key),
        _ => key.to_string(),
    }
}

/// An int as digits, a float as Python's `repr` (which `json.dumps` uses).
fn python_number(value: &Value) -> String {
    if value.is_integer() {
        return value.to_string();
    }
    match f64::try_from(value.clone()) {
        Ok(f) => python_float(f),
        Err(_) => value.to_string(),
    }
}

/// Python's `float.__repr__`: shortest round-trip digits, positional for exponents -4..16,
/// scientific (`1e-05`, `1.5e+16`) otherwise; json writes NaN/Infinity bare.
fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "-1.2345e-7".
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        return format!("{sign}{}", positional(&digits, exp));
    }
    let (head, tail) = digits.split_at(1);
    let mantissa = if tail.is_empty() {
        head.to_string()
    } else {
        format!("{head}.{tail}")
    };
    let exp_sign = if exp < 0 { '-' } else { '+' };
    format!("{sign}{mantissa}e{exp_sign}{:02}", exp.abs())
}

/// Digits d1d2d3... with the decimal point after position exp + 1, always with a fraction part.
fn positional(digits: &str, exp: i32) -> String {
    if exp < 0 {
        return format!("0.{}{digits}", "0".repeat((-exp - 1) as usize));
    }
    let point = exp as usize + 1;
    if digits.len() <= point {
        format!("{digits}{}.0", "0".repeat(point - digits.len()))
    } else {
        format!("{}.{}", &digits[..point], &digits[point..])
    }
}

/// transformers' `strftime_now(format)`. Python formats the local time; the library has no time
/// zone database, so this is UTC. Supports %Y %m %d %e %H %M %S %y %j %b %B %a %A %p %I %%.
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    strftime(&format, secs)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// Formats Unix time `secs` (UTC) with the strftime directives listed at [`strftime_now`];
/// unknown directives are copied through as Python does on glibc.
fn strftime(format: &str, secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let secs_of_day = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (
        secs_of_day / 3600,
        secs_of_day % 3600 / 60,
        secs_of_day % 60,
    );
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday (index 3)
    let day_of_year = days - days_from_civil(year, 1, 1) + 1;
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let _ = match chars.next() {
            Some('Y') => write!(out, "{year}"),
            Some('y') => write!(out, "{:02}", year.rem_euclid(100)),
            Some('m') => write!(out, "{month:02}"),
            Some('d') => write!(out, "{day:02}"),
            Some('e') => write!(out, "{day:2}"),
            Some('j') => write!(out, "{day_of_year:03}"),
            Some('H') => write!(out, "{hour:02}"),
            Some('I') => write!(out, "{:02}", (hour + 11) % 12 + 1),
            Some('p') => write!(out, "{}", if hour < 12 { "AM" } else { "PM" }),
            Some('M') => write!(out, "{minute:02}"),
            Some('S') => write!(out, "{second:02}"),
            Some('B') => write!(out, "{}", MONTHS[(month - 1) as usize]),
            Some('b') => write!(out, "{}", &MONTHS[(month - 1) as usize][..3]),
            Some('A') => write!(out, "{}", WEEKDAYS[weekday]),
            Some('a') => write!(out, "{}", &WEEKDAYS[weekday][..3]),
            Some('%') => write!(out, "%"),
            Some(other) => write!(out, "%{other}"),
            None => write!(out, "%"),
        };
    }
    out
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::error::ErrorCode;

    fn repo(path: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
    }

    fn messages_from_json(value: &Json) -> Vec<Message> {
        let parts = |m: &Json| {
            m["content"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| match p["type"].as_str().unwrap() {
                    "image" => Content::Image,
                    _ => Content::Text(p["text"].as_str().unwrap().to_string()),
                })
                .collect()
        };
        value
            .as_array()
            .unwrap()
            .iter()
            .map(|m| Message {
                role: m["role"].as_str().unwrap().to_string(),
                content: parts(m),
            })
            .collect()
    }

    fn template_source(name: &str) -> String {
        let path = match name {
            "qwen2_vl" => repo("models/qwen2_vl_chat_template.jinja"),
            other => repo(&format!(
                "models/vlm-processor-goldens/templates/{other}.jinja"
            )),
        };
        std::fs::read_to_string(path).unwrap()
    }

    /// Every rendering of templates.json: the Qwen2-VL template, a strict Llama-2-style one
    /// (raise_exception, .strip(), bos/eos), a loop-control one and a tojson one; one image, two
    /// images, text only, a system message, multi-turn, with and without the generation prompt.
    #[test]
    fn renders_as_transformers() {
        let text =
            std::fs::read_to_string(repo("models/vlm-processor-goldens/templates.json")).unwrap();
        let cases: Json = serde_json::from_str(&text).unwrap();
        let cases = cases.as_array().unwrap();
        assert!(cases.len() >= 40);
        for case in cases {
            let name = case["template"].as_str().unwrap();
            let template = ChatTemplate::from_source(&template_source(name))
                .unwrap()
                .with_special_token("bos_token", case["bos_token"].as_str().unwrap())
                .with_special_token("eos_token", case["eos_token"].as_str().unwrap());
            let messages = messages_from_json(&case["messages"]);
            let got = template.render(&messages, case["add_generation_prompt"].as_bool().unwrap());
            let label = format!("{name}/{}", case["conversation"]);
            match case.get("rendered") {
                Some(want) => assert_eq!(got.unwrap(), want.as_str().unwrap(), "{label}"),
                None => {
                    let err = got.unwrap_err();
                    assert_eq!(err.code(), ErrorCode::InvalidArg, "{label}");
                    let python = case["error"].as_str().unwrap();
                    let message = python.split_once(": ").unwrap().1;
                    assert!(err.to_string().contains(message), "{label}: {err}");
                }
            }
        }
    }

    fn package(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    fn render_dir(dir: &tempfile::TempDir) -> String {
        let template = ChatTemplate::from_dir(dir.path()).unwrap().unwrap();
        template.render(&[Message::user(1, "hi")], true).unwrap()
    }

    #[test]
    fn from_dir_lookup_order() {
        let jinja = ("chat_template.jinja", "J{{ bos_token }}");
        let json = (
            "chat_template.json",
            r#"{"chat_template": "S{{ eos_token }}"}"#,
        );
        let config = (
            "tokenizer_config.json",
            r#"{"chat_template": "T", "bos_token": "<b>", "eos_token": {"content": "<e>", "lstrip": false}}"#,
        );
        assert_eq!(render_dir(&package(&[jinja, json, config])), "J<b>");
        assert_eq!(render_dir(&package(&[json, config])), "S<e>");
        assert_eq!(render_dir(&package(&[config])), "T");
        let named = r#"{"chat_template": [{"name": "tool_use", "template": "X"}, {"name": "default", "template": "D{{ messages | length }}"}]}"#;
        assert_eq!(
            render_dir(&package(&[("tokenizer_config.json", named)])),
            "D1"
        );
        assert!(ChatTemplate::from_dir(package(&[]).path())
            .unwrap()
            .is_none());
        let no_template = package(&[("tokenizer_config.json", r#"{"bos_token": "<s>"}"#)]);
        assert!(ChatTemplate::from_dir(no_template.path())
            .unwrap()
            .is_none());
    }

    #[test]
    fn special_tokens_from_config_then_map() {
        let dir = package(&[
            (
                "chat_template.jinja",
                "{{ bos_token }}|{{ eos_token }}|{{ pad_token }}|{{ unk_token is defined }}",
            ),
            (
                "tokenizer_config.json",
                r#"{"bos_token": null, "eos_token": "<|im_end|>", "pad_token": {"content": "<pad>"}}"#,
            ),
            (
                "special_tokens_map.json",
                r#"{"bos_token": {"content": "<s>", "special": true}, "eos_token": "ignored"}"#,
            ),
        ]);
        assert_eq!(render_dir(&dir), "<s>|<|im_end|>|<pad>|False");
    }

    #[test]
    fn bad_packages_are_model_errors() {
        let check = |files: &[(&str, &str)], words: &[&str]| {
            let err = ChatTemplate::from_dir(package(files).path()).unwrap_err();
            assert_eq!(err.code(), ErrorCode::Model, "{err}");
            let msg = err.to_string();
            for w in words {
                assert!(msg.contains(w), "{msg} lacks {w}");
            }
        };
        check(
            &[("chat_template.jinja", "{% for m in messages %}")],
            &["chat_template.jinja", "does not parse"],
        );
        check(
            &[("chat_template.json", "{not json")],
            &["chat_template.json", "invalid JSON"],
        );
        check(
            &[("chat_template.json", r#"{"chat_template": 3}"#)],
            &["chat_template.json", "string"],
        );
        let named = r#"{"chat_template": [{"name": "rag", "template": "R"}]}"#;
        check(
            &[("tokenizer_config.json", named)],
            &["tokenizer_config.json", "rag", "default"],
        );
        let err = ChatTemplate::from_source("{{ x ").unwrap_err();
        assert_eq!(err.code(), ErrorCode::Model);
    }

    #[test]
    fn template_bugs_are_model_errors_and_raised_ones_invalid_arg() {
        let bug = ChatTemplate::from_source("{{ messages[0].content.nope() }}").unwrap();
        let err = bug
            .render(&[Message::text("user", "x")], false)
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::Model);
        let raise = ChatTemplate::from_source(
            "{{ raise_exception('Only user messages, got ' + messages[0].role) }}",
        )
        .unwrap();
        let err = raise
            .render(&[Message::text("system", "x")], false)
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidArg);
        assert!(
            err.to_string().contains("Only user messages, got system"),
            "{err}"
        );
    }

    #[test]
    fn python_methods_and_variables() {
        let t = ChatTemplate::from_source(
            "{{ messages[0].content[0].text.strip().upper() }}|{{ tools is none }}|{{ documents is none }}|{{ add_generation_prompt }}",
        )
        .unwrap();
        assert_eq!(
            t.render(&[Message::text("user", "  hi ")], false).unwrap(),
            "HI|True|True|False"
        );
        // jinja2 drops one trailing newline of the template source.
        let t = ChatTemplate::from_source("a\n").unwrap();
        assert_eq!(t.render(&[], false).unwrap(), "a");
    }

    /// transformers' `{% generation %}` tag renders its body; whitespace control is kept.
    #[test]
    fn generation_tags_render_their_body() {
        let source = "{% for m in messages %}{%- generation -%}\n  [{{ m.role }}]  \n{%- endgeneration %}\n{% endfor %}";
        let t = ChatTemplate::from_source(source).unwrap();
        let messages = [Message::text("user", "a"), Message::text("assistant", "b")];
        assert_eq!(t.render(&messages, false).unwrap(), "[user][assistant]");
        let t =
            ChatTemplate::from_source("a {%+ generation%}  x  {% endgeneration -%}  y\n").unwrap();
        assert_eq!(t.render(&[], false).unwrap(), "a   x  y"); // as jinja2 renders it
        assert_eq!(
            without_generation_tags("{%+ generation%}x{% endgeneration -%}"),
            "{%+ if true %}x{% endif -%}"
        );
        assert_eq!(
            without_generation_tags("{% if a %}{{ '%}' }}{% endif %}{%"),
            "{% if a %}{{ '%}' }}{% endif %}{%"
        );
    }

    #[test]
    fn strftime_as_python_in_utc() {
        let fmt = "%Y-%m-%d %H:%M:%S %a %A %b %B %j %y %I %p %e %% %Q";
        let cases = [
            (
                0,
                "1970-01-01 00:00:00 Thu Thursday Jan January 001 70 12 AM  1 % %Q",
            ),
            (
                1_800_000_000,
                "2027-01-15 08:00:00 Fri Friday Jan January 015 27 08 AM 15 % %Q",
            ),
            (
                951_782_400,
                "2000-02-29 00:00:00 Tue Tuesday Feb February 060 00 12 AM 29 % %Q",
            ),
            (
                -34_560_000,
                "1968-11-27 00:00:00 Wed Wednesday Nov November 332 68 12 AM 27 % %Q",
            ),
            (
                4_102_444_799,
                "2099-12-31 23:59:59 Thu Thursday Dec December 365 99 11 PM 31 % %Q",
            ),
        ];
        for (secs, want) in cases {
            assert_eq!(strftime(fmt, secs), want);
        }
        let t = ChatTemplate::from_source("{{ strftime_now('%Y') | length }}").unwrap();
        assert_eq!(t.render(&[], false).unwrap(), "4");
    }

    #[test]
    fn python_float_repr() {
        let cases = [
            (1e16, "1e+16"),
            (1e-5, "1e-05"),
            (123456789012345.6, "123456789012345.6"),
            (0.1, "0.1"),
            (-2.5e-7, "-2.5e-07"),
            (1.5e300, "1.5e+300"),
            (100.0, "100.0"),
            (0.0001, "0.0001"),
            (-0.0, "-0.0"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Infinity"),
        ];
        for (f, want) in cases {
            assert_eq!(python_float(f), want);
        }
    }
}
