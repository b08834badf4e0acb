//! Which pipeline family a package belongs to, from model_index.json and the denoiser's config.
use std::fmt;

use serde_json::Value;

use crate::error::{Error, Result};

/// The pipeline families this version runs. Each one decides how the denoiser's input is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// SD 1.x/2.x with a 4-channel UNet: text-to-image, img2img and latent-blend inpainting.
    StableDiffusion,
    /// SD inpainting UNet: 9 input channels (latents, mask, masked-image latents).
    Inpaint,
    /// InstructPix2Pix: 8 input channels (latents, source-image latents), text and image guidance.
    InstructPix2Pix,
    /// SDXL: two text encoders (penultimate hidden states, pooled `text_embeds`) and `time_ids`.
    Sdxl,
    /// SD3: an MMDiT transformer over CLIP-L + CLIP-G + (optional) T5 embeddings, flow matching.
    Sd3,
    /// FLUX: a transformer over packed 2x2 latents, CLIP-L pooled + T5 embeddings, flow matching.
    Flux,
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::StableDiffusion => "stable-diffusion",
            Family::Inpaint => "stable-diffusion-inpaint",
            Family::InstructPix2Pix => "instruct-pix2pix",
            Family::Sdxl => "stable-diffusion-xl",
            Family::Sd3 => "stable-diffusion-3",
            Family::Flux => "flux",
        })
    }
}

/// The diffusers pipeline classes run by name. Among the Stable Diffusion ones the UNet's channel
/// count still decides between plain, inpainting and InstructPix2Pix.
const KNOWN_CLASSES: &[&str] = &[
    "StableDiffusionPipeline",
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionInpaintPipeline",
    "StableDiffusionInstructPix2PixPipeline",
    "LatentConsistencyModelPipeline",
    "LatentConsistencyModelImg2ImgPipeline",
    "OnnxStableDiffusionPipeline",
    "OnnxStableDiffusionImg2ImgPipeline",
    "OnnxStableDiffusionInpaintPipeline",
    "StableDiffusionXLPipeline",
    "StableDiffusionXLImg2ImgPipeline",
    "StableDiffusionXLInpaintPipeline",
    "StableDiffusion3Pipeline",
    "StableDiffusion3Img2ImgPipeline",
    "FluxPipeline",
    "FluxImg2ImgPipeline",
];

impl Family {
    /// The folder of the denoiser: `transformer` for SD3 and FLUX, `unet` for the rest.
    pub fn denoiser_folder(self) -> &'static str {
        if self.is_flow() {
            "transformer"
        } else {
            "unet"
        }
    }

    pub fn is_flow(self) -> bool {
        matches!(self, Family::Sd3 | Family::Flux)
    }

    /// Whether `_class_name` is one this version runs by name (see [`Family::detect`]).
    pub fn is_known_class(class_name: &str) -> bool {
        KNOWN_CLASSES.contains(&class_name)
    }

    /// Detects the family from `_class_name` and the denoiser's config.json, as diffusers would
    /// pick the pipeline: the channel count decides between plain, inpainting and pix2pix UNets.
    /// A class name this version does not know is accepted only when the denoiser's config
    /// identifies the family unambiguously ([`Family::from_denoiser`]).
    pub fn detect(class_name: &str, denoiser_config: &Value) -> Result<Family> {
        for (prefix, family) in [("StableDiffusion3", Family::Sd3), ("Flux", Family::Flux)] {
            if class_name.starts_with(prefix) && !Family::is_known_class(class_name) {
                // Their inpainting/control variants take extra inputs this version does not build.
                return Err(Error::Unsupported(format!(
                    "{class_name} is not run yet; {family} text-to-image and img2img packages are"
                )));
            }
        }
        if !Family::is_known_class(class_name) {
            return Family::from_denoiser(denoiser_config).ok_or_else(|| {
                Error::Unsupported(format!(
                    "unknown pipeline class {class_name}, and its denoiser's config.json does not \
                     identify a family; known classes: {}",
                    KNOWN_CLASSES.join(", ")
                ))
            });
        }
        if class_name.starts_with("Flux") {
            return Ok(Family::Flux);
        }
        if class_name.starts_with("StableDiffusion3") {
            return Ok(Family::Sd3);
        }
        let channels = denoiser_config.get("in_channels").and_then(Value::as_u64);
        if class_name.starts_with("StableDiffusionXL") {
            return match channels {
                None | Some(4) => Ok(Family::Sdxl),
                Some(c) => Err(Error::Unsupported(format!(
                    "{class_name} with a UNet of {c} input channels (SDXL inpainting or editing) \
                     is not run yet; SDXL text-to-image and img2img are"
                ))),
            };
        }
        match channels {
            None | Some(4) if !class_name.contains("InstructPix2Pix") => {
                Ok(Family::StableDiffusion)
            }
            Some(9) => Ok(Family::Inpaint),
            Some(8) => Ok(Family::InstructPix2Pix),
            other => Err(Error::Unsupported(format!(
                "{class_name} with a UNet of {} input channels is not a known family \
                 (4: text-to-image, 9: inpainting, 8: InstructPix2Pix)",
                other.map_or("unknown".to_string(), |c| c.to_string())
            ))),
        }
    }

    /// The family a denoiser's config.json names beyond doubt: the transformer classes of SD3 and
    /// FLUX, or a `UNet2DConditionModel` by its time embedding (SDXL's `text_time`) and channels.
    pub fn from_denoiser(config: &Value) -> Option<Family> {
        let channels = config.get("in_channels").and_then(Value::as_u64);
        let sdxl = config.get("addition_embed_type").and_then(Value::as_str) == Some("text_time");
        match config.get("_class_name").and_then(Value::as_str)? {
            "SD3Transformer2DModel" => Some(Family::Sd3),
            "FluxTransformer2DModel" => Some(Family::Flux),
            "UNet2DConditionModel" => match (sdxl, channels?) {
                (true, 4) => Some(Family::Sdxl),
                (false, 4) => Some(Family::StableDiffusion),
                (false, 9) => Some(Family::Inpaint),
                (false, 8) => Some(Family::InstructPix2Pix),
                _ => None,
            },
            _ => None,
        }
    }

    /// Channels the UNet takes besides the latents it denoises.
    pub fn extra_channels(self, latent_channels: usize) -> usize {
        match self {
            Family::StableDiffusion | Family::Sdxl | Family::Sd3 | Family::Flux => 0,
            Family::Inpaint => latent_channels + 1,
            Family::InstructPix2Pix => latent_channels,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;
    use serde_json::json;

    #[test]
    fn channel_count_decides_the_family() {
        let cases = [
            (
                "StableDiffusionPipeline",
                json!({"in_channels": 4}),
                Family::StableDiffusion,
            ),
            (
                "StableDiffusionPipeline",
                json!({}),
                Family::StableDiffusion,
            ),
            (
                "StableDiffusionInpaintPipeline",
                json!({"in_channels": 4}),
                Family::StableDiffusion,
            ),
            (
                "StableDiffusionInpaintPipeline",
                json!({"in_channels": 9}),
                Family::Inpaint,
            ),
            (
                "StableDiffusionPipeline",
                json!({"in_channels": 9}),
                Family::Inpaint,
            ),
            (
                "StableDiffusionInstructPix2PixPipeline",
                json!({"in_channels": 8}),
                Family::InstructPix2Pix,
            ),
            (
                "StableDiffusionXLPipeline",
                json!({"in_channels": 4}),
                Family::Sdxl,
            ),
            ("StableDiffusionXLImg2ImgPipeline", json!({}), Family::Sdxl),
            (
                "StableDiffusion3Pipeline",
                json!({"in_channels": 16}),
                Family::Sd3,
            ),
            (
                "FluxImg2ImgPipeline",
                json!({"in_channels": 64}),
                Family::Flux,
            ),
        ];
        for (class, config, want) in cases {
            assert_eq!(
                Family::detect(class, &config).unwrap(),
                want,
                "{class} {config}"
            );
        }
    }

    #[test]
    fn unknown_and_later_families_are_unsupported() {
        for (class, config) in [
            (
                "StableDiffusionXLInpaintPipeline",
                json!({"in_channels": 9}),
            ),
            ("StableDiffusion3InpaintPipeline", json!({})),
            ("FluxControlPipeline", json!({})),
            ("StableDiffusionPipeline", json!({"in_channels": 7})),
            (
                "StableDiffusionInstructPix2PixPipeline",
                json!({"in_channels": 4}),
            ),
        ] {
            let err = Family::detect(class, &config).unwrap_err();
            assert_eq!(err.code(), ErrorCode::Unsupported, "{class}");
            assert!(err.to_string().contains(class), "{err}");
        }
    }
}
