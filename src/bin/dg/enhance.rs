//! `dg enhance`, and the prompt enhancement stage of `dg generate` and `dg edit`
//! (`--enhance-prompt`): a vision-language model, local or behind an OpenAI-compatible chat
//! service, rewrites an edit instruction (reading the image) or a text-to-image prompt.
use std::path::{Path, PathBuf};

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::Args;
use diffgentor::vlm::enhance::{clean_reply, EnhanceStyle};
use diffgentor::vlm::remote::RemoteVlm;
use diffgentor::vlm::{Vlm, VlmRequest};
use diffgentor::{Error, Image, Request};
use serde::Serialize;

use crate::caption::{load_vlm, read_image, SamplingArgs};
use crate::output::Out;
use crate::RuntimeArgs;

#[derive(Args)]
pub struct EnhanceArgs {
    /// The enhancer: a VLM package directory, or `openai:MODEL` for an OpenAI-compatible
    /// chat-completions service (DG_PROMPT_ENHANCER_BASE_URL, DG_PROMPT_ENHANCER_API_KEY;
    /// `openai:` alone takes DG_PROMPT_ENHANCER_MODEL).
    #[arg(long, value_name = "DIR|openai:MODEL")]
    model: String,
    /// The image the instruction is about (PNG, JPEG or WebP); the model reads it.
    #[arg(long, value_name = "FILE")]
    image: Option<PathBuf>,
    /// The edit instruction or text-to-image prompt to rewrite.
    #[arg(long, value_name = "TEXT")]
    instruction: String,
    /// Who the rewrite is for (default: qwen_image_edit with --image, t2i without).
    #[arg(long, value_name = "STYLE", value_parser = style_parser())]
    style: Option<EnhanceStyle>,
    /// Most new tokens of the rewrite (default: 256).
    #[arg(long, value_name = "N")]
    max_new_tokens: Option<usize>,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Print one JSON object (prompt, original, style, model) instead of the prompt alone.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

/// Parses a style name, listing the styles in `--help` and in the error for an unknown one.
pub fn style_parser() -> impl TypedValueParser<Value = EnhanceStyle> {
    PossibleValuesParser::new(EnhanceStyle::ALL.map(EnhanceStyle::as_str))
        .try_map(|name| name.parse::<EnhanceStyle>())
}

/// The style for a request with or without an image, when none is asked for.
pub fn default_style(has_image: bool) -> EnhanceStyle {
    if has_image {
        EnhanceStyle::QwenImageEdit
    } else {
        EnhanceStyle::T2i
    }
}

pub fn run(args: EnhanceArgs, out: &mut Out) -> diffgentor::Result<()> {
    let image = args.image.as_deref().map(read_image).transpose()?;
    let style = args.style.unwrap_or(default_style(image.is_some()));
    // The request is built (and checked) before a model loads.
    let mut request = style.request(&args.instruction, image)?;
    if let Some(n) = args.max_new_tokens {
        request.max_new_tokens = n;
    }
    request.sampling = args.sampling.params();
    request.validate()?;
    let enhancer = Enhancer::load(&args.model, &args.runtime)?;
    let prompt = enhancer.run(&request)?;
    if args.json {
        let object = EnhanceJson {
            prompt: &prompt,
            original: &args.instruction,
            style: style.as_str(),
            model: &enhancer.name(),
        };
        outln!(
            out,
            "{}",
            serde_json::to_string(&object).unwrap_or_default()
        );
    } else {
        outln!(out, "{prompt}");
    }
    Ok(())
}

/// `dg enhance --json`'s object, its fields in this order.
#[derive(Serialize)]
struct EnhanceJson<'a> {
    prompt: &'a str,
    original: &'a str,
    style: &'static str,
    model: &'a str,
}

/// A model that rewrites prompts.
pub enum Enhancer {
    Local { vlm: Box<Vlm>, name: String },
    Remote(RemoteVlm),
}

impl Enhancer {
    /// `openai:MODEL` (a remote service, settings from `DG_PROMPT_ENHANCER_*`), else a VLM package
    /// directory loaded on `runtime`.
    pub fn load(spec: &str, runtime: &RuntimeArgs) -> diffgentor::Result<Enhancer> {
        if let Some(remote) = RemoteVlm::from_spec(spec) {
            return Ok(Enhancer::Remote(remote?));
        }
        let dir = Path::new(spec);
        Ok(Enhancer::Local {
            vlm: Box::new(load_vlm(dir, runtime)?),
            name: dir.display().to_string(),
        })
    }

    /// What the metadata records: the package directory, or `openai:MODEL`.
    pub fn name(&self) -> String {
        match self {
            Enhancer::Local { name, .. } => name.clone(),
            Enhancer::Remote(remote) => format!("openai:{}", remote.model()),
        }
    }

    /// The rewritten prompt `request` (made by [`EnhanceStyle::request`]) asks for, cleaned of
    /// labels and quotes.
    pub fn run(&self, request: &VlmRequest) -> diffgentor::Result<String> {
        match self {
            Enhancer::Local { vlm, name } => {
                let reply = vlm.generate(request)?.text;
                clean_reply(&reply).ok_or_else(|| Error::Internal {
                    component: "prompt enhancer".into(),
                    message: format!(
                        "{name}: the model's reply holds no prompt ({reply:?}); try another \
                         model or style"
                    ),
                })
            }
            Enhancer::Remote(remote) => remote.enhance(request),
        }
    }
}

/// A prompt rewritten before generation, as the output's metadata records it.
pub struct Enhancement {
    pub original: String,
    pub enhanced: String,
    /// [`Enhancer::name`].
    pub enhancer: String,
    pub style: EnhanceStyle,
}

/// Rewrites `request.prompt` with the enhancer `spec` names (reading `request.init_image` when
/// there is one), says so on stderr unless `quiet`, and returns what was done.
pub fn enhance_request(
    spec: &str,
    style: Option<EnhanceStyle>,
    runtime: &RuntimeArgs,
    request: &mut Request,
    quiet: bool,
) -> diffgentor::Result<Enhancement> {
    let image: Option<Image> = request.init_image.clone();
    let style = style.unwrap_or(default_style(image.is_some()));
    let vlm_request = style.request(&request.prompt, image)?;
    let enhancer = Enhancer::load(spec, runtime)?;
    let enhanced = enhancer.run(&vlm_request)?;
    if !quiet {
        errln!("enhanced prompt: {enhanced}");
    }
    let original = std::mem::replace(&mut request.prompt, enhanced.clone());
    Ok(Enhancement {
        original,
        enhanced,
        enhancer: enhancer.name(),
        style,
    })
}
