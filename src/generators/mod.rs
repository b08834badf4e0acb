//! Who draws the image: a local ONNX pipeline or a remote image service, behind one trait that
//! takes the same [`Request`] and returns the same [`Output`] and error codes.
//!
//! Remote services run through an endpoint [`pool::Pool`] (several base URLs and keys, retries with
//! backoff, a circuit breaker per endpoint, keys never shown); [`openai`] and [`gemini`] only say
//! how to build their HTTP calls and read the answers.
pub mod gemini;
pub(crate) mod http;
mod local;
pub mod openai;
pub mod options;
pub mod pool;
pub(crate) mod remote;

use std::fmt;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::request::{Output, Progress, Request};

pub use options::GeneratorOptions;

/// Something that turns a [`Request`] into images. Shared between threads: every call carries its
/// own state, so one generator serves concurrent requests.
pub trait Generator: Send + Sync + fmt::Debug {
    /// What this generator is and can do.
    fn describe(&self) -> Description;

    /// Runs a request. `progress` is called as work advances (after every denoising step for local
    /// pipelines; remote services report only the end); returning `false` cancels with
    /// [`Error::Cancelled`].
    fn generate(
        &self,
        request: &Request,
        progress: &mut dyn FnMut(&Progress) -> bool,
    ) -> Result<Output>;

    /// Checks that the generator can serve requests (a remote service is reachable and takes the
    /// key) and says what it found, for `dg doctor`. A loaded local pipeline is ready by
    /// construction.
    fn check(&self) -> Result<String> {
        let d = self.describe();
        Ok(format!("{} ({}) is loaded", d.name, d.kind))
    }

    /// The local pipeline behind this generator, for what only local models do (LoRA adapters).
    fn as_pipeline(&self) -> Option<&crate::pipelines::Pipeline> {
        None
    }
}

/// A generator's name, kind and abilities, for `dg doctor`, servers and callers that route
/// requests.
#[derive(Debug, Clone, PartialEq)]
pub struct Description {
    /// The model package's folder name, or the remote model (`gpt-image-1`).
    pub name: String,
    /// `local`, `openai` or `gemini`.
    pub kind: &'static str,
    pub tasks: Vec<Task>,
    pub sizes: Sizes,
    /// Whether the same seed gives the same image.
    pub honours_seed: bool,
    /// Whether a negative prompt is used.
    pub negative_prompt: bool,
}

/// What a request asks for, by the inputs it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// A prompt alone.
    TextToImage,
    /// An init image re-noised by `strength`.
    ImageToImage,
    /// An init image and a mask.
    Inpaint,
    /// An init image changed by an instruction (InstructPix2Pix, remote edit endpoints).
    Edit,
}

impl Task {
    /// The task a request's inputs ask for: an image with a mask inpaints, an image alone is
    /// img2img (or an edit, where the generator edits instead), nothing is text-to-image.
    pub fn of(request: &Request) -> Task {
        let has_image = request.init_image.is_some() || request.init_latents.is_some();
        match (has_image, request.mask.is_some()) {
            (true, true) => Task::Inpaint,
            (true, false) => Task::ImageToImage,
            _ => Task::TextToImage,
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Task::TextToImage => "txt2img",
            Task::ImageToImage => "img2img",
            Task::Inpaint => "inpaint",
            Task::Edit => "edit",
        })
    }
}

/// The output sizes a generator accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sizes {
    /// Any multiple of `multiple` up to `max` per side (local pipelines).
    Multiple {
        multiple: u32,
        max: u32,
        default: Option<(u32, u32)>,
    },
    /// Exactly these (width, height) pairs, or the service's own choice when none is asked.
    Listed(Vec<(u32, u32)>),
    /// Whatever the service makes of the request (an OpenAI-compatible server of unknown kind).
    Any,
}

/// A remote generator by backend name: `openai` or `gemini`. Options come from `options` first,
/// then the backend's `DG_<BACKEND>_*` environment variables (see docs/backends.md).
pub fn remote(backend: &str, options: &GeneratorOptions) -> Result<Arc<dyn Generator>> {
    match backend {
        "openai" => Ok(Arc::new(openai::OpenAi::new(options)?)),
        "gemini" => Ok(Arc::new(gemini::Gemini::new(options)?)),
        other => Err(Error::InvalidArg(format!(
            "unknown backend `{other}` (expected local, openai or gemini)"
        ))),
    }
}
