//! Progressive generation: a plan of stages joined by latent upscaling, each an img2img pass over
//! the upscaled latents of the stage before (the recipe of ComfyUI's LatentUpscale + KSampler).
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Most stages one plan may have.
pub const MAX_STAGES: usize = 8;

/// How a stage's latents are resized: the interpolation modes of `torch.nn.functional.interpolate`,
/// by its names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Resample {
    /// `nearest`: source index floor(dst * scale); diffusers sizes inpainting masks with it.
    Nearest,
    /// `nearest-exact`: source index floor((dst + 0.5) * scale), the pixel-centre rule.
    #[default]
    NearestExact,
    /// `bilinear` with align_corners=False.
    Bilinear,
}

impl FromStr for Resample {
    type Err = Error;

    fn from_str(s: &str) -> Result<Resample> {
        match s {
            "nearest" => Ok(Resample::Nearest),
            "nearest-exact" => Ok(Resample::NearestExact),
            "bilinear" => Ok(Resample::Bilinear),
            _ => Err(Error::InvalidArg(format!(
                "unknown upscale mode `{s}` (expected nearest-exact, bilinear or nearest)"
            ))),
        }
    }
}

impl fmt::Display for Resample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Resample::Nearest => "nearest",
            Resample::NearestExact => "nearest-exact",
            Resample::Bilinear => "bilinear",
        })
    }
}

/// One stage. Fields left out take the request's value; `strength` (the denoise fraction) is
/// required from the second stage on, and a first stage without it is text-to-image (or uses the
/// request's init image and strength).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    pub width: u32,
    pub height: u32,
    pub steps: Option<usize>,
    pub scheduler: Option<String>,
    pub guidance_scale: Option<f32>,
    pub strength: Option<f64>,
    pub seed: Option<u64>,
    /// How the previous stage's latents are brought to this stage's size.
    #[serde(default, deserialize_with = "resample_by_name")]
    pub upscale: Resample,
}

/// A whole plan: `{"stages": [{"width": 176, "height": 224, ...}, ...]}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub stages: Vec<Stage>,
}

fn resample_by_name<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Resample, D::Error> {
    let name = String::deserialize(d)?;
    name.parse().map_err(serde::de::Error::custom)
}

impl Plan {
    pub fn from_json(text: &str) -> Result<Plan> {
        let plan: Plan = serde_json::from_str(text)
            .map_err(|e| Error::InvalidArg(format!("plan is not a valid plan JSON: {e}")))?;
        plan.validate()?;
        Ok(plan)
    }

    pub fn load(path: &Path) -> Result<Plan> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("cannot read", path, e))?;
        Plan::from_json(&text).map_err(|e| match e {
            Error::InvalidArg(m) => Error::InvalidArg(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Checks what does not need the model (sizes against the VAE factor are checked when it runs).
    pub fn validate(&self) -> Result<()> {
        if self.stages.is_empty() || self.stages.len() > MAX_STAGES {
            return Err(Error::InvalidArg(format!(
                "a plan needs between 1 and {MAX_STAGES} stages, got {}",
                self.stages.len()
            )));
        }
        for (i, stage) in self.stages.iter().enumerate() {
            if i > 0 && stage.strength.is_none() {
                return Err(Error::InvalidArg(format!(
                    "plan stage {} needs `strength` (how much of the upscaled image to re-noise)",
                    i + 1
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    #[test]
    fn parses_the_three_stage_recipe() {
        let plan = Plan::from_json(
            r#"{"stages": [
                {"width": 176, "height": 224, "steps": 9, "scheduler": "euler_a", "guidance_scale": 2},
                {"width": 352, "height": 448, "steps": 16, "guidance_scale": 1, "strength": 0.7},
                {"width": 704, "height": 896, "steps": 16, "strength": 0.6, "upscale": "bilinear"}
            ]}"#,
        )
        .unwrap();
        assert_eq!(plan.stages.len(), 3);
        assert_eq!(plan.stages[1].upscale, Resample::NearestExact);
        assert_eq!(plan.stages[2].upscale, Resample::Bilinear);
        assert_eq!(plan.stages[0].strength, None);
        assert_eq!(plan.stages[2].strength, Some(0.6));
    }

    #[test]
    fn bad_plans_are_invalid_arguments() {
        for (json, needle) in [
            (r#"{"stages": []}"#, "between 1 and"),
            (r#"{"stages": [{"width": 64}]}"#, "height"),
            (
                r#"{"stages": [{"width": 64, "height": 64, "stepz": 3}]}"#,
                "stepz",
            ),
            (
                r#"{"stages": [{"width": 64, "height": 64}, {"width": 128, "height": 128}]}"#,
                "stage 2 needs `strength`",
            ),
            (
                r#"{"stages": [{"width": 64, "height": 64, "upscale": "bicubic"}]}"#,
                "bicubic",
            ),
            ("not json", "valid plan JSON"),
        ] {
            let err = Plan::from_json(json).unwrap_err();
            assert_eq!(err.code(), ErrorCode::InvalidArg, "{json}");
            assert!(err.to_string().contains(needle), "{json}: {err}");
        }
    }
}
