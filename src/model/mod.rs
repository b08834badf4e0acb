//! Model packages: turns a folder into typed components with the graph I/O found in them.
mod components;
mod family;
mod package;
mod t5_tokenizer;
pub mod tokenizer;

use std::sync::Arc;

pub use components::{
    Denoiser, TextEncoder, TimestepKind, TimestepShape, Transformer, TransformerKind, Unet,
    VaeDecoder, VaeEncoder,
};
pub use family::Family;
pub use package::ModelPackage;
pub use t5_tokenizer::T5Tokenizer;
pub use tokenizer::Tokenizer;

use crate::error::{Error, Result};
use crate::runtime::{Graph, Runtime};

/// A package with its sessions and tokenizer built, ready to run requests.
#[derive(Debug)]
pub struct LoadedModel {
    pub package: ModelPackage,
    /// The (first) CLIP tokenizer and text encoder; only SDXL refiners lack it.
    pub text_encoder: Option<(Tokenizer, TextEncoder)>,
    /// The second CLIP tokenizer and text encoder (CLIP-G with projection) of SDXL and SD3.
    pub second_encoder: Option<(Tokenizer, TextEncoder)>,
    /// The T5 tokenizer and encoder of SD3 (optional there) and FLUX.
    pub t5: Option<(T5Tokenizer, TextEncoder)>,
    pub denoiser: Denoiser,
    pub vae_decoder: VaeDecoder,
    /// Present when the package has one; image inputs (img2img, inpainting, editing) need it.
    pub vae_encoder: Option<VaeEncoder>,
}

impl LoadedModel {
    /// Every loaded graph, text encoders first, then the denoiser and the VAE.
    pub fn graphs(&self) -> impl Iterator<Item = &Graph> {
        [
            self.text_encoder.as_ref().map(|(_, e)| &e.graph),
            self.second_encoder.as_ref().map(|(_, e)| &e.graph),
            self.t5.as_ref().map(|(_, e)| &e.graph),
            Some(self.denoiser.graph()),
            Some(&self.vae_decoder.graph),
            self.vae_encoder.as_ref().map(|e| &e.graph),
        ]
        .into_iter()
        .flatten()
    }

    /// Opens the package and builds one session per component on `runtime`.
    pub fn load(runtime: &Arc<Runtime>, dir: &std::path::Path) -> Result<LoadedModel> {
        let package = ModelPackage::open(dir)?;
        let graph = |name: &str| runtime.load_graph(name, &package.graph_path(name));
        let family = package.family;
        let text_encoder = if package.component("text_encoder").is_dir() {
            Some((
                Tokenizer::from_dir(&package.component("tokenizer"))?,
                TextEncoder::new(graph("text_encoder")?)?,
            ))
        } else {
            None
        };
        let second_encoder = match family {
            Family::Sdxl | Family::Sd3 => Some((
                Tokenizer::from_dir(&package.component("tokenizer_2"))?,
                TextEncoder::new(graph("text_encoder_2")?)?,
            )),
            _ => None,
        };
        let t5_folders = match family {
            Family::Sd3 if package.component("text_encoder_3").is_dir() => {
                Some(("tokenizer_3", "text_encoder_3"))
            }
            Family::Flux => Some(("tokenizer_2", "text_encoder_2")),
            _ => None,
        };
        let t5 = match t5_folders {
            Some((tokenizer, encoder)) => Some((
                T5Tokenizer::from_dir(&package.component(tokenizer))?,
                TextEncoder::new(graph(encoder)?)?,
            )),
            None => None,
        };
        let denoiser =
            match family {
                Family::Sd3 => Denoiser::Transformer(Transformer::new(
                    graph("transformer")?,
                    TransformerKind::Sd3,
                )?),
                Family::Flux => Denoiser::Transformer(Transformer::new(
                    graph("transformer")?,
                    TransformerKind::Flux,
                )?),
                _ => {
                    let unet = Unet::new(graph("unet")?)?;
                    if unet.time_ids.is_some() != (family == Family::Sdxl) {
                        return Err(Error::Unsupported(format!(
                        "{}: a {family} package whose UNet {} SDXL's text_embeds/time_ids inputs",
                        package.dir.display(),
                        if unet.time_ids.is_some() { "has" } else { "lacks" }
                    )));
                    }
                    Denoiser::Unet(unet)
                }
            };
        let vae_decoder = VaeDecoder::new(graph("vae_decoder")?)?;
        let vae_encoder = if package.has_vae_encoder() {
            Some(VaeEncoder::new(graph("vae_encoder")?)?)
        } else {
            None
        };
        Ok(LoadedModel {
            package,
            text_encoder,
            second_encoder,
            t5,
            denoiser,
            vae_decoder,
            vae_encoder,
        })
    }
}
