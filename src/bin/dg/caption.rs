//! `dg caption`: a vision-language model describes images, or answers a question about them
//! (`--prompt`), streaming the answer to stdout as it is made; `--json` prints one object instead.
//! Also what `dg enhance` shares with it: sampling flags, image files, loading a VLM package.
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use diffgentor::vlm::{SamplingParams, Vlm, VlmOutput, VlmRequest};
use diffgentor::{Error, Image};
use serde::Serialize;

use crate::output::Out;
use crate::RuntimeArgs;

#[derive(Args)]
pub struct CaptionArgs {
    /// VLM package directory: onnxruntime-genai, transformers.js or optimum vision-encoder-decoder
    /// export (docs/vlm.md).
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// An image to read (PNG, JPEG or WebP); repeat for several in one prompt, in order. Without
    /// any, --prompt is asked as a text-only question.
    #[arg(long, value_name = "FILE", required_unless_present = "prompt")]
    image: Vec<PathBuf>,
    /// The question or instruction about the images (visual question answering); default: a
    /// request for one detailed caption paragraph.
    #[arg(long)]
    prompt: Option<String>,
    /// A system message before the prompt (default: the chat template's own).
    #[arg(long)]
    system: Option<String>,
    /// Most new tokens; generation also ends at an end-of-sequence token or a --stop string.
    #[arg(long, default_value_t = 128, value_name = "N")]
    max_new_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// End the answer where this text appears (not printed); repeatable.
    #[arg(long, value_name = "TEXT")]
    stop: Vec<String>,
    /// Print one JSON object (text, token_ids, prompt_tokens, finish_reason, timings) instead of
    /// streaming the text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

/// How tokens are chosen: greedy unless --temperature is above 0.
#[derive(Args, Clone)]
pub struct SamplingArgs {
    /// Sampling temperature; 0 picks the most likely token (greedy, reproducible).
    #[arg(long, default_value_t = 0.0, value_name = "F")]
    temperature: f32,
    /// With --temperature: keep the smallest set of likely tokens whose probability reaches F
    /// (1 = off).
    #[arg(long, default_value_t = 1.0, value_name = "F")]
    top_p: f32,
    /// With --temperature: keep only the N most likely tokens (0 = off).
    #[arg(long, default_value_t = 0, value_name = "N")]
    top_k: usize,
    /// Penalise tokens already in the sequence (1 = off).
    #[arg(long, default_value_t = 1.0, value_name = "F")]
    repetition_penalty: f32,
    /// Seed of the sampler: the same seed gives the same answer.
    #[arg(long, default_value_t = 0, value_name = "S")]
    seed: u64,
}

impl SamplingArgs {
    pub fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
        }
    }
}

pub fn run(args: CaptionArgs, out: &mut Out) -> diffgentor::Result<()> {
    let images = args
        .image
        .iter()
        .map(|path| read_image(path))
        .collect::<diffgentor::Result<Vec<_>>>()?;
    let mut request = VlmRequest::caption(images, args.prompt.as_deref());
    if let Some(system) = &args.system {
        request = request.with_system(system.as_str());
    }
    request.max_new_tokens = args.max_new_tokens;
    request.sampling = args.sampling.params();
    request.stop = args.stop.clone();
    // Bad values fail before the model loads.
    request.validate()?;
    let vlm = load_vlm(&args.model, &args.runtime)?;
    if args.json {
        let output = vlm.generate(&request)?;
        outln!(out, "{}", output_json(&output));
        return Ok(());
    }
    let mut streamed = String::new();
    let result = vlm.generate_streaming(&request, &mut |token| {
        streamed.push_str(token.text);
        out.text(token.text);
        // A reader that went away reads no more: stop generating.
        !out.failed()
    });
    match result {
        Ok(output) => {
            // Text the stream still held when generation ended (an unfinished UTF-8 character
            // the last token left), so stdout always ends as the answer does.
            if let Some(rest) = output.text.strip_prefix(streamed.as_str()) {
                out.text(rest);
            }
            outln!(out, "");
            Ok(())
        }
        // `main` reports the failed write (a closed pipe exits 0).
        Err(Error::Cancelled) if out.failed() => Ok(()),
        Err(err) => {
            if !streamed.is_empty() {
                // End the partial answer's line.
                outln!(out, "");
            }
            Err(err)
        }
    }
}

/// `dg caption --json`'s object, its fields in this order.
#[derive(Serialize)]
struct CaptionJson<'a> {
    text: &'a str,
    token_ids: &'a [i64],
    prompt_tokens: usize,
    finish_reason: &'static str,
    timings: TimingsJson,
}

#[derive(Serialize)]
struct TimingsJson {
    preprocess_ms: f64,
    vision_ms: f64,
    first_token_ms: f64,
    decode_ms: f64,
    total_ms: f64,
    tokens_per_second: f64,
}

fn output_json(output: &VlmOutput) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let t = &output.timings;
    let object = CaptionJson {
        text: &output.text,
        token_ids: &output.token_ids,
        prompt_tokens: output.prompt_tokens,
        finish_reason: output.finish_reason.as_str(),
        timings: TimingsJson {
            preprocess_ms: ms(t.preprocess),
            vision_ms: ms(t.vision),
            first_token_ms: ms(t.first_token),
            decode_ms: ms(t.decode),
            total_ms: ms(t.total),
            tokens_per_second: t.tokens_per_second(output.token_ids.len()),
        },
    };
    serde_json::to_string(&object).unwrap_or_default()
}

/// An image file (PNG, JPEG or WebP) as RGB; errors name the file.
pub fn read_image(path: &Path) -> diffgentor::Result<Image> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("cannot read", path, e))?;
    Image::decode(&bytes).map_err(|e| match e {
        Error::InvalidArg(message) => Error::InvalidArg(format!("{}: {message}", path.display())),
        Error::Unsupported(message) => Error::Unsupported(format!("{}: {message}", path.display())),
        other => other,
    })
}

/// Loads the VLM package in `dir`; a diffusion package is named as such rather than listed
/// graph by graph.
pub fn load_vlm(dir: &Path, runtime: &RuntimeArgs) -> diffgentor::Result<Vlm> {
    if dir.join("model_index.json").is_file() && !is_vlm_package(dir) {
        return Err(Error::InvalidArg(format!(
            "{} is a diffusion model package (model_index.json), not a vision-language model: \
             give a VLM package (genai_config.json, onnx/vision_encoder.onnx, or \
             encoder_model.onnx + decoder_model_merged.onnx; docs/vlm.md)",
            dir.display()
        )));
    }
    Vlm::load(runtime.build()?, dir)
}

/// Whether `dir` looks like a VLM package: genai_config.json, a transformers.js vision encoder,
/// or an optimum encoder and merged decoder (at the top or under onnx/).
pub fn is_vlm_package(dir: &Path) -> bool {
    dir.join("genai_config.json").is_file()
        || ["onnx", ""].iter().any(|sub| {
            let base = dir.join(sub);
            base.join("vision_encoder.onnx").is_file()
                || (base.join("encoder_model.onnx").is_file()
                    && base.join("decoder_model_merged.onnx").is_file())
        })
}
