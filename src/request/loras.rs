//! The LoRA stack a request names: `name:strength` lists and A1111's `<lora:name:strength>` tags.
use std::fmt;

use crate::error::{Error, Result};

/// Most adapters in one stack.
pub const MAX_STACK: usize = 10;

/// One adapter of a stack and how strongly it applies (1.0 = as trained; negative subtracts it).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraUse {
    pub name: String,
    pub strength: f32,
}

impl LoraUse {
    pub fn new(name: impl Into<String>, strength: f32) -> LoraUse {
        LoraUse {
            name: name.into(),
            strength,
        }
    }

    /// `name` or `name:strength` (strength defaults to 1.0).
    pub fn parse(item: &str) -> Result<LoraUse> {
        let item = item.trim();
        let (name, strength) = match item.rsplit_once(':') {
            Some((name, strength)) => {
                let strength = strength.trim().parse::<f32>().map_err(|_| {
                    Error::InvalidArg(format!(
                        "LoRA `{item}`: strength `{strength}` is not a number"
                    ))
                })?;
                (name.trim(), strength)
            }
            None => (item, 1.0),
        };
        if name.is_empty() {
            return Err(Error::InvalidArg(format!("LoRA `{item}` has no name")));
        }
        Ok(LoraUse::new(name, strength))
    }
}

impl fmt::Display for LoraUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.strength)
    }
}

/// A stack written as `name:0.8;other:-0.4` (`,` also separates; empty = no LoRA).
pub fn parse_stack(text: &str) -> Result<Vec<LoraUse>> {
    text.split([';', ','])
        .filter(|item| !item.trim().is_empty())
        .map(LoraUse::parse)
        .collect()
}

/// The stack as [`parse_stack`] reads it.
pub fn format_stack(stack: &[LoraUse]) -> String {
    stack
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(";")
}

/// Removes A1111-style `<lora:name>` / `<lora:name:strength>` tags from `prompt` and returns the
/// cleaned prompt with the tags' stack, in order. Whitespace left doubled by a removed tag is
/// collapsed.
pub fn take_prompt_tags(prompt: &str) -> Result<(String, Vec<LoraUse>)> {
    let mut cleaned = String::with_capacity(prompt.len());
    let mut stack = Vec::new();
    let mut rest = prompt;
    while let Some(start) = rest.find("<lora:") {
        let Some(len) = rest[start..].find('>') else {
            break;
        };
        cleaned.push_str(&rest[..start]);
        stack.push(LoraUse::parse(&rest[start + "<lora:".len()..start + len])?);
        rest = &rest[start + len + 1..];
    }
    cleaned.push_str(rest);
    let cleaned = cleaned.split_whitespace().collect::<Vec<_>>().join(" ");
    Ok((cleaned, stack))
}

/// At most [`MAX_STACK`] adapters, each once, with finite strengths.
pub fn check_stack(stack: &[LoraUse]) -> Result<()> {
    if stack.len() > MAX_STACK {
        return Err(Error::InvalidArg(format!(
            "a LoRA stack holds at most {MAX_STACK} adapters, got {}",
            stack.len()
        )));
    }
    for (i, used) in stack.iter().enumerate() {
        if !used.strength.is_finite() {
            return Err(Error::InvalidArg(format!(
                "LoRA `{}` has strength {}; it must be a finite number",
                used.name, used.strength
            )));
        }
        if stack[..i].iter().any(|u| u.name == used.name) {
            return Err(Error::InvalidArg(format!(
                "LoRA `{}` appears twice in one stack",
                used.name
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    #[test]
    fn stacks_parse_and_print_back() {
        let stack = parse_stack("style:0.8; hero , villain:-0.4").expect("valid");
        assert_eq!(
            stack,
            [
                LoraUse::new("style", 0.8),
                LoraUse::new("hero", 1.0),
                LoraUse::new("villain", -0.4)
            ]
        );
        assert_eq!(format_stack(&stack), "style:0.8;hero:1;villain:-0.4");
        assert_eq!(parse_stack(&format_stack(&stack)).expect("again"), stack);
        assert!(parse_stack("").expect("empty").is_empty());
        for bad in ["a:x", ":0.5", "a:"] {
            let err = parse_stack(bad).expect_err(bad);
            assert_eq!(err.code(), ErrorCode::InvalidArg, "{bad}: {err}");
        }
    }

    #[test]
    fn prompt_tags_are_removed_and_returned() {
        let (prompt, stack) =
            take_prompt_tags("a castle <lora:style:0.8>, at dusk <lora:hero>").expect("valid");
        assert_eq!(prompt, "a castle , at dusk");
        assert_eq!(
            stack,
            [LoraUse::new("style", 0.8), LoraUse::new("hero", 1.0)]
        );
        let (prompt, stack) = take_prompt_tags("no tags <lora:unclosed").expect("valid");
        assert_eq!(
            (prompt.as_str(), stack.len()),
            ("no tags <lora:unclosed", 0)
        );
        assert!(take_prompt_tags("<lora:a:high>").is_err());
    }
}
