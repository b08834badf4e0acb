//! The PEFT settings diffusers stores in a safetensors header: `__metadata__` key
//! `lora_adapter_metadata`, a JSON object of `LoraConfig` fields prefixed by component
//! (`unet.lora_alpha`, `text_encoder.alpha_pattern`), or unprefixed when one model saved itself.
use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use crate::error::{Error, Result};

const KEY: &str = "lora_adapter_metadata";
/// `peft.LoraConfig`'s default, which diffusers gets when the field is absent.
const PEFT_DEFAULT_ALPHA: f32 = 8.0;

/// The fields of one component's `LoraConfig` that decide a layer's scale.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PeftConfig {
    alpha: f32,
    /// `alpha_pattern`: module-name suffix -> alpha, first match wins as in PEFT.
    patterns: Vec<(String, f32)>,
    rslora: bool,
}

/// Per metadata prefix (`unet`, `text_encoder`, `` for unprefixed) its config.
pub(crate) type Configs = HashMap<String, PeftConfig>;

pub(crate) fn read(metadata: &BTreeMap<String, String>) -> Result<Configs> {
    let Some(raw) = metadata.get(KEY) else {
        return Ok(Configs::new());
    };
    let bad = |what: String| Error::InvalidArg(format!("safetensors metadata {KEY}: {what}"));
    let fields: serde_json::Map<String, Value> =
        serde_json::from_str(raw).map_err(|e| bad(format!("not a JSON object: {e}")))?;
    let mut configs = Configs::new();
    for (key, value) in fields {
        let (prefix, field) = key.rsplit_once('.').unwrap_or(("", key.as_str()));
        let config = configs
            .entry(prefix.to_string())
            .or_insert_with(|| PeftConfig {
                alpha: PEFT_DEFAULT_ALPHA,
                patterns: Vec::new(),
                rslora: false,
            });
        match field {
            "lora_alpha" => {
                config.alpha =
                    number(&value).ok_or_else(|| bad(format!("{key} is not a number")))?;
            }
            "use_rslora" => config.rslora = value.as_bool().unwrap_or(false),
            "alpha_pattern" => {
                let Value::Object(map) = value else {
                    if value.is_null() {
                        continue;
                    }
                    return Err(bad(format!("{key} is not an object")));
                };
                for (pattern, alpha) in map {
                    // PEFT matches these as regexes; plain module paths (all that diffusers
                    // writes) behave the same as a literal suffix match, anything else is refused.
                    let literal = pattern.strip_prefix('^').unwrap_or(&pattern);
                    if !literal
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
                    {
                        return Err(Error::Unsupported(format!(
                            "{KEY}: {key} pattern {pattern:?} is a regular expression"
                        )));
                    }
                    let alpha = number(&alpha)
                        .ok_or_else(|| bad(format!("{key}[{pattern:?}] is not a number")))?;
                    config.patterns.push((pattern, alpha));
                }
            }
            _ => {}
        }
    }
    Ok(configs)
}

fn number(value: &Value) -> Option<f32> {
    value.as_f64().map(|v| v as f32).filter(|v| v.is_finite())
}

impl PeftConfig {
    /// PEFT's `scaling`: `alpha / r`, or `alpha / sqrt(r)` with rsLoRA. `r` is the factors' own
    /// rank, which PEFT's `r`/`rank_pattern` must equal for the file to load at all.
    pub fn scale(&self, module: &str, rank: usize) -> f32 {
        let alpha = self
            .patterns
            .iter()
            .find(|(pattern, _)| matches(pattern, module))
            .map_or(self.alpha, |(_, alpha)| *alpha);
        let r = rank as f32;
        if self.rslora {
            alpha / r.sqrt()
        } else {
            alpha / r
        }
    }
}

/// PEFT's `re.match(rf"(.*\.)?({pattern})$", module)` for a literal pattern.
fn matches(pattern: &str, module: &str) -> bool {
    match pattern.strip_prefix('^') {
        Some(anchored) => module == anchored,
        None => {
            module == pattern
                || module
                    .strip_suffix(pattern)
                    .is_some_and(|head| head.ends_with('.'))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    fn configs(json: &str) -> Result<Configs> {
        read(&BTreeMap::from([(KEY.to_string(), json.to_string())]))
    }

    #[test]
    fn reads_prefixed_configs_and_patterns() {
        let c = configs(
            r#"{"unet.r": 4, "unet.lora_alpha": 8, "unet.alpha_pattern": {"attn1.to_q": 2, "^mid.x": 1},
                "unet.use_rslora": false, "text_encoder.lora_alpha": 16, "text_encoder.use_rslora": true}"#,
        )
        .unwrap();
        let unet = &c["unet"];
        assert_eq!(unet.scale("down.attn1.to_k", 4), 2.0);
        assert_eq!(unet.scale("down.attn1.to_q", 4), 0.5);
        assert_eq!(
            unet.scale("xattn1.to_q", 4),
            2.0,
            "a suffix must start at a dot"
        );
        assert_eq!(unet.scale("mid.x", 4), 0.25);
        assert_eq!(unet.scale("a.mid.x", 4), 2.0, "^ anchors at the start");
        assert_eq!(
            c["text_encoder"].scale("q_proj", 4),
            8.0,
            "rsLoRA: 16 / sqrt(4)"
        );
        assert!(configs("{}").unwrap().is_empty());
        assert_eq!(
            configs(r#"{"r": 4}"#).unwrap()[""].scale("m", 4),
            2.0,
            "PEFT's default alpha 8"
        );
    }

    #[test]
    fn refuses_bad_metadata() {
        let err = configs("not json").unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidArg);
        assert!(err.to_string().contains(KEY), "{err}");
        let err = configs(r#"{"unet.lora_alpha": "x"}"#).unwrap_err();
        assert!(err.to_string().contains("unet.lora_alpha"), "{err}");
        let err = configs(r#"{"unet.alpha_pattern": {"down.*to_q": 2}}"#).unwrap_err();
        assert_eq!(err.code(), ErrorCode::Unsupported);
    }
}
