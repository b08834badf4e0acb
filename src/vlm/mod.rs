//! Vision-language models: captioning, visual question answering and prompt enhancement on exported
//! ONNX graphs (onnxruntime-genai / mobius, transformers.js and optimum vision-encoder-decoder
//! layouts). One loaded [`Vlm`] serves many threads: each request keeps its own cache and state.
//!
//! ```no_run
//! use diffgentor::vlm::{Vlm, VlmRequest};
//! use diffgentor::{Image, Runtime, RuntimeOptions};
//!
//! # fn main() -> diffgentor::Result<()> {
//! let runtime = Runtime::new(RuntimeOptions::default())?;
//! let vlm = Vlm::load(runtime, "models/tiny-qwen2.5-vl".as_ref())?;
//! let image = Image::load_png("photo.png".as_ref())?;
//! let output = vlm.generate(&VlmRequest::caption(vec![image], None))?;
//! println!("{}", output.text);
//! # Ok(())
//! # }
//! ```
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

mod captioner;
mod config;
mod decoder;
pub mod enhance;
mod generate;
mod layout;
pub mod pil;
pub mod processor;
mod qwen;
pub mod remote;
mod request;
pub mod rope;
pub mod sampling;
pub mod template;
pub mod text;

pub use request::{
    ChatMessage, FinishReason, Part, TokenEvent, VlmOutput, VlmRequest, VlmTimings,
    DEFAULT_CAPTION_PROMPT, KEYS, MAX_IMAGES, MAX_NEW_TOKENS, MAX_STOP_STRINGS,
};
pub use sampling::SamplingParams;

use captioner::Captioner;
use generate::{Decoding, Generated, LoopContext};
use layout::Layout;
use processor::{QwenImageProcessor, VitImageProcessor};
use qwen::{Qwen, QwenFiles, QwenIds, QwenNames};
use template::ChatTemplate;
use text::TextTokenizer;

use crate::error::{Error, Result};
use crate::runtime::{Graph, Runtime};

enum Model {
    Qwen(Box<Qwen>),
    Captioner(Box<Captioner>),
}

/// A loaded vision-language model.
pub struct Vlm {
    dir: PathBuf,
    layout: &'static str,
    model: Model,
    tokenizer: TextTokenizer,
    template: Option<ChatTemplate>,
    eos: Vec<i64>,
    _runtime: Arc<Runtime>,
}

impl std::fmt::Debug for Vlm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vlm")
            .field("dir", &self.dir)
            .field("layout", &self.layout)
            .field("eos", &self.eos)
            .finish()
    }
}

impl Vlm {
    /// Loads the package in `dir`, telling its layout from the files.
    pub fn load(runtime: Arc<Runtime>, dir: &Path) -> Result<Vlm> {
        let layout = Layout::detect(&runtime, dir)?;
        let name = layout.name();
        let tokenizer = TextTokenizer::from_dir(dir)?;
        let template = ChatTemplate::from_dir(dir)?;
        let hf_path = dir.join("config.json");
        let (model, eos) = match layout {
            Layout::Genai {
                config: genai,
                vision,
                embedding,
                decoder,
                names,
                shared_buffer,
            } => {
                let hf = config::read_json(&hf_path)?.unwrap_or(serde_json::Value::Null);
                let section = genai.get("model");
                let ids = QwenIds::read(&dir.join("genai_config.json"), &hf, section)?;
                let files = QwenFiles {
                    vision: &vision,
                    embedding: &embedding,
                    decoder: &decoder,
                    merged_embedding: true,
                    names: QwenNames::from_genai(section.unwrap_or(&serde_json::Value::Null)),
                    decoder_names: names,
                    shared_buffer,
                };
                let qwen = Qwen::load(&runtime, files, qwen_processor(dir)?, ids)?;
                (
                    Model::Qwen(Box::new(qwen)),
                    config::eos_ids(dir, &[&genai, &hf])?,
                )
            }
            Layout::TransformersJs {
                vision,
                embedding,
                decoder,
            } => {
                let hf = config::require_json(&hf_path)?;
                let ids = QwenIds::read(&hf_path, &hf, None)?;
                let files = QwenFiles {
                    vision: &vision,
                    embedding: &embedding,
                    decoder: &decoder,
                    merged_embedding: false,
                    names: QwenNames::default(),
                    decoder_names: decoder::DecoderNames::default(),
                    shared_buffer: false,
                };
                let qwen = Qwen::load(&runtime, files, qwen_processor(dir)?, ids)?;
                (Model::Qwen(Box::new(qwen)), config::eos_ids(dir, &[&hf])?)
            }
            Layout::EncoderDecoder { encoder, decoder } => {
                let hf = config::require_json(&hf_path)?;
                let start = config::int(&hf, "decoder_start_token_id")
                    .or_else(|| hf.pointer("/decoder/bos_token_id").and_then(|v| v.as_i64()))
                    .ok_or_else(|| Error::model(&hf_path, "has no `decoder_start_token_id`"))?;
                let context = hf
                    .pointer("/decoder/n_positions")
                    .or_else(|| hf.pointer("/decoder/max_position_embeddings"))
                    .and_then(|v| v.as_u64())
                    .unwrap_or(1024) as usize;
                let path = dir.join("preprocessor_config.json");
                let processor =
                    VitImageProcessor::from_config(&path, &config::require_json(&path)?)?;
                let captioner =
                    Captioner::load(&runtime, &encoder, &decoder, processor, start, context)?;
                let decoder_cfg = hf.get("decoder").cloned().unwrap_or_default();
                (
                    Model::Captioner(Box::new(captioner)),
                    config::eos_ids(dir, &[&hf, &decoder_cfg])?,
                )
            }
        };
        if eos.is_empty() {
            return Err(Error::model(
                dir,
                "no eos_token_id in genai_config.json, config.json or generation_config.json",
            ));
        }
        Ok(Vlm {
            dir: dir.to_path_buf(),
            layout: name,
            model,
            tokenizer,
            template,
            eos,
            _runtime: runtime,
        })
    }

    /// The export layout: "onnxruntime-genai", "transformers.js" or "optimum vision-encoder-decoder".
    pub fn layout(&self) -> &'static str {
        self.layout
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The loaded graphs (for `dg doctor` and benchmarks).
    pub fn graphs(&self) -> Vec<&Graph> {
        match &self.model {
            Model::Qwen(q) => q.graphs(),
            Model::Captioner(c) => c.graphs(),
        }
    }

    /// The most tokens (prompt and new) one sequence may have.
    pub fn context_length(&self) -> usize {
        match &self.model {
            Model::Qwen(q) => q.context_length(),
            Model::Captioner(c) => c.context_length(),
        }
    }

    pub fn eos_ids(&self) -> &[i64] {
        &self.eos
    }

    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// Whether the model reads a conversation (a chat template) rather than only an image.
    pub fn is_chat(&self) -> bool {
        matches!(self.model, Model::Qwen(_))
    }

    /// Generates the answer to `request`.
    pub fn generate(&self, request: &VlmRequest) -> Result<VlmOutput> {
        self.generate_streaming(request, &mut |_| true)
    }

    /// Generates, calling `on_token` with every new token; returning `false` cancels the request
    /// (the call then returns [`Error::Cancelled`]).
    pub fn generate_streaming(
        &self,
        request: &VlmRequest,
        on_token: &mut dyn FnMut(TokenEvent<'_>) -> bool,
    ) -> Result<VlmOutput> {
        request.validate()?;
        let started = Instant::now();
        let mut timings = VlmTimings::default();
        let (generated, prompt_tokens) = match &self.model {
            Model::Qwen(qwen) => self.run_qwen(qwen, request, started, &mut timings, on_token)?,
            Model::Captioner(c) => {
                self.run_captioner(c, request, started, &mut timings, on_token)?
            }
        };
        timings.total = started.elapsed();
        Ok(VlmOutput {
            text: generated.text,
            token_ids: generated.token_ids,
            prompt_tokens,
            finish_reason: generated.finish_reason,
            timings,
        })
    }

    /// The prompt's token ids for `request` as the model will read them (image pads expanded).
    pub fn prompt_ids(&self, request: &VlmRequest) -> Result<Vec<i64>> {
        match &self.model {
            Model::Qwen(qwen) => Ok(self.qwen_prompt(qwen, request)?.0),
            Model::Captioner(c) => self.caption_prefix(c, request),
        }
    }

    fn qwen_prompt(
        &self,
        qwen: &Qwen,
        request: &VlmRequest,
    ) -> Result<(Vec<i64>, Vec<processor::ProcessedImage>)> {
        let template = self.template.as_ref().ok_or_else(|| {
            Error::model(
                &self.dir,
                "has no chat template (chat_template.jinja, chat_template.json or \
                 tokenizer_config.json `chat_template`)",
            )
        })?;
        let text = template.render(&request.template_messages(), true)?;
        let ids = self.tokenizer.encode(&text)?;
        let images: Vec<_> = request.images().collect();
        let processed = qwen.process_images(&images)?;
        let ids = qwen.expand_image_pads(&ids, &processed)?;
        Ok((ids, processed))
    }

    fn run_qwen(
        &self,
        qwen: &Qwen,
        request: &VlmRequest,
        started: Instant,
        timings: &mut VlmTimings,
        on_token: &mut dyn FnMut(TokenEvent<'_>) -> bool,
    ) -> Result<(Generated, usize)> {
        let (ids, images) = self.qwen_prompt(qwen, request)?;
        let capacity = self.capacity(ids.len(), request)?;
        timings.preprocess = started.elapsed();
        let prepared = qwen.prepare(ids, &images)?;
        timings.vision = prepared.vision;
        let prompt = prepared.input_ids.clone();
        let mut state = qwen.start(prepared, capacity)?;
        let generated = self.decode(&mut state, &prompt, started, request, timings, on_token)?;
        Ok((generated, prompt.len()))
    }

    /// An encoder-decoder captioner has no chat: it reads one image, and text other than the default
    /// caption prompt becomes the beginning of the caption.
    fn caption_prefix(&self, captioner: &Captioner, request: &VlmRequest) -> Result<Vec<i64>> {
        let text: String = request
            .messages
            .iter()
            .filter(|m| m.role == "user")
            .flat_map(|m| &m.parts)
            .filter_map(|p| match p {
                Part::Text(t) => Some(t.as_str()),
                Part::Image(_) => None,
            })
            .collect::<Vec<_>>()
            .join(" ");
        let mut prefix = vec![captioner.start_id()];
        if !text.is_empty() && text != DEFAULT_CAPTION_PROMPT {
            prefix.extend(self.tokenizer.encode(&text)?);
        }
        Ok(prefix)
    }

    fn run_captioner(
        &self,
        captioner: &Captioner,
        request: &VlmRequest,
        started: Instant,
        timings: &mut VlmTimings,
        on_token: &mut dyn FnMut(TokenEvent<'_>) -> bool,
    ) -> Result<(Generated, usize)> {
        let images: Vec<_> = request.images().collect();
        let [image] = images.as_slice() else {
            return Err(Error::InvalidArg(format!(
                "{} reads exactly one image per request, got {}",
                self.layout,
                images.len()
            )));
        };
        let prefix = self.caption_prefix(captioner, request)?;
        let capacity = self.capacity(prefix.len(), request)?;
        timings.preprocess = started.elapsed();
        let (_, states, vision) = captioner.encode(image)?;
        timings.vision = vision;
        let mut state = captioner.start(states, &prefix, capacity)?;
        let generated = self.decode(&mut state, &prefix, started, request, timings, on_token)?;
        Ok((generated, prefix.len()))
    }

    /// Cache length for a prompt of `prompt` tokens: room for every new token, within the context.
    fn capacity(&self, prompt: usize, request: &VlmRequest) -> Result<usize> {
        let context = self.context_length();
        if prompt >= context {
            return Err(Error::InvalidArg(format!(
                "the prompt has {prompt} tokens (images included); the model's context is {context}"
            )));
        }
        Ok((prompt + request.max_new_tokens).min(context))
    }

    fn decode(
        &self,
        state: &mut dyn Decoding,
        prompt: &[i64],
        started: Instant,
        request: &VlmRequest,
        timings: &mut VlmTimings,
        on_token: &mut dyn FnMut(TokenEvent<'_>) -> bool,
    ) -> Result<Generated> {
        let cx = LoopContext {
            tokenizer: &self.tokenizer,
            eos: &self.eos,
            prompt,
            started,
        };
        generate::run(state, &cx, request, timings, on_token)
    }
}

fn qwen_processor(dir: &Path) -> Result<QwenImageProcessor> {
    let path = dir.join("preprocessor_config.json");
    QwenImageProcessor::from_config(&path, &config::require_json(&path)?)
}
