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

use crate::error::{Error, Result};
use crate::runtime::Runtime;

/// A package with its sessions and tokenizer built, ready to run requests.
#[derive(Debug)]
pub struct LoadedModel {
    pub package: ModelPackage,
    pub tokenizer: Tokenizer,
    pub text_encoder: TextEncoder,
    /// SDXL's second tokenizer and text encoder (CLIP-G with projection).
    pub second_encoder: Option<(Tokenizer, TextEncoder)>,
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
        let second_encoder = if package.family == Family::Sdxl {
            Some((
                Tokenizer::from_dir(&package.component("tokenizer_2"))?,
                TextEncoder::new(graph("text_encoder_2")?)?,
            ))
        } else {
            None
        };
        let unet = Unet::new(graph("unet")?)?;
        if unet.time_ids.is_some() != (package.family == Family::Sdxl) {
            return Err(Error::Unsupported(format!(
                "{}: a {} package whose UNet {} SDXL's text_embeds/time_ids inputs",
                package.dir.display(),
                package.family,
                if unet.time_ids.is_some() {
                    "has"
                } else {
                    "lacks"
                }
            )));
        }
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
            second_encoder,
            unet,
            vae_decoder,
            vae_encoder,
        })
    }
}
