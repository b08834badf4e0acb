//! Which generator draws the images (`--model` for the local backend, `--backend` for a remote
//! service) and how it is loaded: shared by `dg generate`, `dg edit`, `dg serve` and the batch
//! commands.
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use diffgentor::generators::{self, Generator, GeneratorOptions};
use diffgentor::{Error, Pipeline};

use crate::RuntimeArgs;

#[derive(Args, Clone)]
pub struct BackendArgs {
    /// Model package directory (optimum/diffusers ONNX export): what the local backend runs.
    #[arg(long, value_name = "DIR", required_if_eq("backend", "local"))]
    pub model: Option<PathBuf>,
    /// Who draws the image: local (ONNX Runtime), openai or gemini (docs/backends.md; keys only
    /// from DG_OPENAI_API_KEY / DG_GEMINI_API_KEY or a pool file).
    #[arg(long, default_value = "local", value_name = "NAME")]
    pub backend: String,
    /// Remote backends: the service's base URL (else DG_<BACKEND>_BASE_URL, else its public API).
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// Remote backends: the model the service runs (else DG_<BACKEND>_MODEL, else its default).
    #[arg(long, value_name = "NAME")]
    pub remote_model: Option<String>,
    /// Remote backends: any generator option by key (docs/backends.md), e.g.
    /// `diffusion_fields=true` or `timeout_s=30` (repeatable).
    #[arg(long = "backend-option", value_name = "KEY=VALUE")]
    pub backend_options: Vec<String>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// What draws the images: a generator, and the local pipeline behind it when there is one (for
/// what only a model package knows, such as its VAE factor).
#[derive(Clone)]
pub struct Backend {
    pub generator: Arc<dyn Generator>,
    pub local: Option<Arc<Pipeline>>,
}

impl BackendArgs {
    pub fn load(&self) -> diffgentor::Result<Backend> {
        match (&self.model, self.backend.as_str()) {
            (Some(model), "local") => {
                let pipeline = Arc::new(Pipeline::load(self.runtime.build()?, model)?);
                if let Some(note) = &pipeline.model().package.family_note {
                    errln!("warning: {note}");
                }
                Ok(Backend {
                    generator: pipeline.clone(),
                    local: Some(pipeline),
                })
            }
            // clap's `required_if_eq` does not fire for the default value, so say it here.
            (None, "local") => Err(Error::InvalidArg(
                "--model DIR is required for the local backend (or choose --backend openai or \
                 gemini)"
                    .into(),
            )),
            (_, name) => {
                let mut options = GeneratorOptions::new();
                if let Some(url) = &self.endpoint {
                    options.set("base_url", url);
                }
                if let Some(model) = &self.remote_model {
                    options.set("model", model);
                }
                for option in &self.backend_options {
                    let (key, value) = option.split_once('=').ok_or_else(|| {
                        Error::InvalidArg(format!("--backend-option `{option}` is not KEY=VALUE"))
                    })?;
                    options.set(key.trim(), value.trim());
                }
                Ok(Backend {
                    generator: generators::remote(name, &options)?,
                    local: None,
                })
            }
        }
    }
}
