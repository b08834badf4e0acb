//! The JSON files of a VLM package: `genai_config.json` (onnxruntime-genai), Hugging Face
//! `config.json` and `generation_config.json`, read into the few values the runtime needs.
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};

/// Reads a JSON file of the package; `None` when it does not exist.
pub(crate) fn read_json(path: &Path) -> Result<Option<Value>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("cannot read", path, e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::model(path, format!("not valid JSON: {e}")))
}

/// A JSON file that must exist.
pub(crate) fn require_json(path: &Path) -> Result<Value> {
    read_json(path)?.ok_or_else(|| Error::model(path, "is missing"))
}

/// Token ids given as one integer or a list (`eos_token_id` is either).
pub(crate) fn ids(value: Option<&Value>) -> Vec<i64> {
    match value {
        Some(Value::Number(n)) => n.as_i64().into_iter().collect(),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_i64).collect(),
        _ => Vec::new(),
    }
}

/// `value[key]` as an integer, looked up in the object and then in its `text_config` (transformers 5
/// nests the language model's settings there).
pub(crate) fn int(config: &Value, key: &str) -> Option<i64> {
    config
        .get(key)
        .or_else(|| config.get("text_config").and_then(|t| t.get(key)))
        .and_then(Value::as_i64)
}

/// A file named by a config, relative to the package; must stay inside it.
pub(crate) fn package_file(dir: &Path, config: &Path, name: &str) -> Result<PathBuf> {
    let relative = Path::new(name);
    if relative.is_absolute()
        || relative
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(Error::model(
            config,
            format!("names `{name}`, which is outside the package"),
        ));
    }
    Ok(dir.join(relative))
}

/// End-of-sequence ids: from every config that lists some (generation_config.json often lists more
/// than config.json, e.g. both <|im_end|> and <|endoftext|>).
pub(crate) fn eos_ids(dir: &Path, configs: &[&Value]) -> Result<Vec<i64>> {
    let generation = read_json(&dir.join("generation_config.json"))?;
    let mut eos: Vec<i64> = configs
        .iter()
        .copied()
        .chain(generation.as_ref())
        .flat_map(|c| {
            let own = ids(c.get("eos_token_id"));
            let nested = ids(c.get("model").and_then(|m| m.get("eos_token_id")));
            own.into_iter().chain(nested)
        })
        .collect();
    eos.sort_unstable();
    eos.dedup();
    Ok(eos)
}
