//! Model packages: turns a folder into typed components with the graph I/O found in them.
mod components;
mod family;
mod package;
pub mod tokenizer;

use std::sync::Arc;

pub use components::{TextEncoder, TimestepKind, TimestepShape, Unet, VaeDecoder, VaeEncoder};
pub use family::Family;
pub use package::ModelPackage;
pub use tokenizer::Tokenizer;

use crate::error::Result;
use crate::runtime::Runtime;

/// A package with its sessions and tokenizer built, ready to run requests.
#[derive(Debug)]
pub struct LoadedModel {
    pub package: ModelPackage,
    pub tokenizer: Tokenizer,
    pub text_encoder: TextEncoder,
    pub unet: Unet,
    pub vae_decoder: VaeDecoder,
    /// Present when the package has one; image inputs (img2img, inpainting, editing) need it.
    pub vae_encoder: Option<VaeEncoder>,
}

impl LoadedModel {
    /// Opens the package and builds one session per component on `runtime`.
    pub fn load(runtime: &Arc<Runtime>, dir: &std::path::Path) -> Result<LoadedModel> {
        let package = ModelPackage::open(dir)?;
        let tokenizer = Tokenizer::from_dir(&package.component("tokenizer"))?;
        let graph = |name: &str| runtime.load_graph(name, &package.graph_path(name));
        let text_encoder = TextEncoder::new(graph("text_encoder")?)?;
        let unet = Unet::new(graph("unet")?)?;
        let vae_decoder = VaeDecoder::new(graph("vae_decoder")?)?;
        let vae_encoder = if package.has_vae_encoder() {
            Some(VaeEncoder::new(graph("vae_encoder")?)?)
        } else {
            None
        };
        Ok(LoadedModel {
            package,
            tokenizer,
            text_encoder,
            unet,
            vae_decoder,
            vae_encoder,
        })
    }
}
