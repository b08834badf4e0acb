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
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::StableDiffusion => "stable-diffusion",
            Family::Inpaint => "stable-diffusion-inpaint",
            Family::InstructPix2Pix => "instruct-pix2pix",
            Family::Sdxl => "stable-diffusion-xl",
        })
    }
}

/// diffusers pipeline classes of families that are recognised but not run by this version.
const NOT_YET: &[(&str, &str)] = &[("StableDiffusion3", "SD3"), ("Flux", "FLUX")];

impl Family {
    /// Detects the family from `_class_name` and the UNet's `in_channels`, as diffusers would pick
    /// the pipeline: the channel count decides between plain, inpainting and pix2pix UNets.
    pub fn detect(class_name: &str, unet_config: &Value) -> Result<Family> {
        if let Some((_, family)) = NOT_YET.iter().find(|(p, _)| class_name.starts_with(p)) {
            return Err(Error::Unsupported(format!(
                "{class_name} is a {family} package; this version runs SD 1.x/2.x, SDXL, inpainting \
                 and InstructPix2Pix packages"
            )));
        }
        let channels = unet_config.get("in_channels").and_then(Value::as_u64);
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

    /// Channels the UNet takes besides the latents it denoises.
    pub fn extra_channels(self, latent_channels: usize) -> usize {
        match self {
            Family::StableDiffusion | Family::Sdxl => 0,
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
            ("StableDiffusion3Pipeline", json!({})),
            ("FluxPipeline", json!({})),
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
