//! Prompt enhancement: a VLM rewrites an edit instruction (reading the image it applies to) or a
//! text-to-image prompt into the detailed prompt a generator follows best. Each style is a system
//! prompt of ours, tuned to what its target model family reads well.
use std::fmt;
use std::str::FromStr;

use super::request::VlmRequest;
use crate::error::{Error, Result};
use crate::image::Image;

/// Who the rewritten prompt is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnhanceStyle {
    /// Instruction editing models (Qwen-Image-Edit, InstructPix2Pix): one precise edit instruction.
    QwenImageEdit,
    /// FLUX.2-style models: a dense natural-language scene description.
    Flux2,
    /// GLM-Image-style models: a structured description with any rendered text quoted.
    GlmImage,
    /// Any text-to-image model: a richer prompt that keeps the user's intent.
    T2i,
}

impl EnhanceStyle {
    /// cbindgen:ignore
    pub const ALL: [EnhanceStyle; 4] = [
        EnhanceStyle::QwenImageEdit,
        EnhanceStyle::Flux2,
        EnhanceStyle::GlmImage,
        EnhanceStyle::T2i,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EnhanceStyle::QwenImageEdit => "qwen_image_edit",
            EnhanceStyle::Flux2 => "flux2",
            EnhanceStyle::GlmImage => "glm_image",
            EnhanceStyle::T2i => "t2i",
        }
    }

    /// The system prompt this style sends (documented in docs/vlm.md).
    pub fn system_prompt(self) -> &'static str {
        match self {
            EnhanceStyle::QwenImageEdit => {
                "You rewrite image-editing instructions. You see the image to be edited and the \
                 user's instruction. Reply with one instruction, at most 60 words, that names \
                 exactly what to change (object, position, colour, material, text to write in \
                 quotes) and says that everything else stays as it is. Refer to things by what is \
                 visible in the image. Do not explain, do not add options, reply with the \
                 instruction only."
            }
            EnhanceStyle::Flux2 => {
                "You write prompts for a text-to-image model that reads long natural language. \
                 Given the user's request (and the reference image, if any), reply with one \
                 paragraph of 40 to 120 words describing the final picture: the subject first, \
                 then setting, composition and camera, lighting, colour palette and style. Keep \
                 every detail the user asked for; add only details that fit it. Reply with the \
                 prompt only."
            }
            EnhanceStyle::GlmImage => {
                "You write prompts for an image model that renders text and layout precisely. \
                 Given the user's request (and the reference image, if any), reply with a \
                 description of the final image in at most 120 words: the overall scene, then each \
                 element with its position, then any text to appear in the image, quoted exactly. \
                 Keep the user's wording for text. Reply with the prompt only."
            }
            EnhanceStyle::T2i => {
                "You improve prompts for a text-to-image model. Rewrite the user's prompt into \
                 one detailed prompt of at most 80 words that keeps its subject and intent and \
                 adds concrete visual detail: composition, lighting, colours and style. Reply \
                 with the prompt only."
            }
        }
    }

    /// The request that asks a VLM for the rewrite of `instruction` (about `image`, if given).
    pub fn request(self, instruction: &str, image: Option<Image>) -> Result<VlmRequest> {
        if instruction.trim().is_empty() {
            return Err(Error::InvalidArg(
                "prompt enhancement needs a non-empty instruction or prompt".into(),
            ));
        }
        let text = match (self, image.is_some()) {
            (EnhanceStyle::QwenImageEdit, true) => format!("Instruction: {instruction}"),
            (_, true) => format!("Reference image above. Request: {instruction}"),
            (_, false) => format!("Request: {instruction}"),
        };
        let mut request =
            VlmRequest::new(text, image.into_iter().collect()).with_system(self.system_prompt());
        request.max_new_tokens = 256;
        Ok(request)
    }
}

impl fmt::Display for EnhanceStyle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EnhanceStyle {
    type Err = Error;

    fn from_str(s: &str) -> Result<EnhanceStyle> {
        EnhanceStyle::ALL
            .into_iter()
            .find(|style| style.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = EnhanceStyle::ALL.iter().map(|s| s.as_str()).collect();
                Error::InvalidArg(format!(
                    "unknown enhancement style `{s}`; styles: {}",
                    names.join(", ")
                ))
            })
    }
}

/// The prompt inside a model's reply: surrounding whitespace, a code fence, a "Prompt:" style label
/// and wrapping quotes removed. `None` when nothing is left.
pub fn clean_reply(reply: &str) -> Option<String> {
    let mut text = reply.trim();
    if let Some(inner) = text.strip_prefix("```") {
        let inner = inner.split_once('\n').map_or("", |(_, rest)| rest);
        text = inner.trim_end().trim_end_matches("```").trim();
    }
    for label in [
        "enhanced prompt:",
        "rewritten prompt:",
        "prompt:",
        "instruction:",
    ] {
        if text
            .get(..label.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(label))
        {
            text = text[label.len()..].trim();
            break;
        }
    }
    for (open, close) in [('"', '"'), ('\'', '\''), ('“', '”')] {
        if let Some(inner) = text.strip_prefix(open).and_then(|t| t.strip_suffix(close)) {
            text = inner.trim();
        }
    }
    (!text.is_empty()).then(|| text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn styles_round_trip_and_unknown_ones_list_the_known() {
        for style in EnhanceStyle::ALL {
            assert_eq!(style.as_str().parse::<EnhanceStyle>().unwrap(), style);
        }
        let err = "sdxl".parse::<EnhanceStyle>().unwrap_err();
        assert!(err.to_string().contains("qwen_image_edit, flux2"), "{err}");
    }

    #[test]
    fn replies_lose_labels_fences_and_quotes() {
        assert_eq!(
            clean_reply("  Prompt: \"a red fox\" ").as_deref(),
            Some("a red fox")
        );
        assert_eq!(
            clean_reply("```text\na red fox\n```").as_deref(),
            Some("a red fox")
        );
        assert_eq!(clean_reply("“a red fox”").as_deref(), Some("a red fox"));
        assert_eq!(clean_reply(" \n "), None);
        // A label's length may fall inside a multi-byte character: no panic, nothing cut.
        assert_eq!(
            clean_reply("pr\u{FFFD}mpt x").as_deref(),
            Some("pr\u{FFFD}mpt x")
        );
    }

    #[test]
    fn a_request_carries_the_system_prompt_and_the_image() {
        let image = Image {
            width: 2,
            height: 2,
            pixels: vec![0; 12],
        };
        let request = EnhanceStyle::QwenImageEdit
            .request("make it blue", Some(image))
            .unwrap();
        assert_eq!(request.messages[0].role, "system");
        assert_eq!(request.images().count(), 1);
        assert!(EnhanceStyle::T2i.request("  ", None).is_err());
    }
}
