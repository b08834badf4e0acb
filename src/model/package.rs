//! A model package on disk in the optimum/diffusers ONNX export layout, read without ONNX Runtime.
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::Family;
use crate::error::{Error, Result};

/// The JSON files and folders of one package, checked for presence and parsed.
#[derive(Debug, Clone)]
pub struct ModelPackage {
    pub dir: PathBuf,
    /// Folder name, used as the model name in PNG metadata.
    pub name: String,
    /// `_class_name` from model_index.json (e.g. `StableDiffusionPipeline`).
    pub class_name: String,
    pub scheduler_config: Value,
    /// config.json of the denoiser (`unet/`, or `transformer/` for SD3 and FLUX).
    pub denoiser_config: Value,
    pub vae_config: Value,
    /// Spatial downsampling of the VAE: 2^(number of VAE blocks - 1).
    pub vae_scale_factor: u32,
    pub family: Family,
    /// Set when `_class_name` is not one diffgentor knows and the family was taken from the
    /// denoiser's config instead: says so, for `dg doctor` and the CLI to show.
    pub family_note: Option<String>,
    /// SDXL: a missing negative prompt means zero embeddings rather than encoding "" (diffusers'
    /// `force_zeros_for_empty_prompt`, true unless model_index.json says otherwise).
    pub force_zeros_for_empty_prompt: bool,
}

/// Component folders a package of each family must have (SD3's T5 and the first text encoder of
/// SDXL are optional, as in diffusers).
fn required(family: Family) -> &'static [&'static str] {
    const SD: &[&str] = &[
        "text_encoder",
        "tokenizer",
        "unet",
        "vae_decoder",
        "scheduler",
    ];
    // SDXL refiners have only the second text encoder.
    const SDXL: &[&str] = &[
        "text_encoder_2",
        "tokenizer_2",
        "unet",
        "vae_decoder",
        "scheduler",
    ];
    const FLOW: &[&str] = &[
        "text_encoder",
        "tokenizer",
        "text_encoder_2",
        "tokenizer_2",
        "transformer",
        "vae_decoder",
        "scheduler",
    ];
    match family {
        Family::StableDiffusion | Family::Inpaint | Family::InstructPix2Pix => SD,
        Family::Sdxl => SDXL,
        Family::Sd3 | Family::Flux => FLOW,
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        // A file the layout requires is a broken package, not an I/O failure.
        std::io::ErrorKind::NotFound => Error::model(path, "is missing"),
        _ => Error::io("cannot read", path, e),
    })?;
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        Error::model(
            path,
            format!(
                "is not UTF-8 JSON (invalid byte at offset {})",
                e.valid_up_to()
            ),
        )
    })?;
    serde_json::from_str(text).map_err(|e| Error::model(path, format!("is not valid JSON: {e}")))
}

impl ModelPackage {
    /// Reads model_index.json and the component configs under `dir`.
    pub fn open(dir: &Path) -> Result<ModelPackage> {
        if !dir.is_dir() {
            return Err(Error::model(
                dir,
                "is not a directory (expected an optimum/diffusers ONNX export)",
            ));
        }
        let index = read_json(&dir.join("model_index.json"))?;
        let class_name = index
            .get("_class_name")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::model(dir.join("model_index.json"), "has no `_class_name`"))?
            .to_string();
        // Exports have one denoiser: a transformer (SD3, FLUX) or a UNet.
        let denoiser = if dir.join("transformer").is_dir() && !dir.join("unet").is_dir() {
            "transformer"
        } else {
            "unet"
        };
        let config_path = dir.join(denoiser).join("config.json");
        let denoiser_config = if dir.join(denoiser).is_dir() {
            read_json(&config_path)?
        } else {
            Value::Null // reported below with every other missing folder
        };
        let family = Family::detect(&class_name, &denoiser_config)?;
        let family_note = (!Family::is_known_class(&class_name)).then(|| {
            format!(
                "unknown pipeline class {class_name}: run as {family}, which its {denoiser}/config.json identifies"
            )
        });
        let missing: Vec<&str> = required(family)
            .iter()
            .copied()
            .filter(|c| !dir.join(c).is_dir())
            .collect();
        if !missing.is_empty() {
            return Err(Error::model(
                dir,
                format!("missing component folder(s): {}", missing.join(", ")),
            ));
        }
        let scheduler_config = read_json(&dir.join("scheduler/scheduler_config.json"))?;
        let vae_config = read_json(&dir.join("vae_decoder/config.json"))?;
        let blocks = vae_config
            .get("block_out_channels")
            .and_then(Value::as_array)
            .map(Vec::len)
            .filter(|n| (1..=8).contains(n))
            .ok_or_else(|| {
                Error::model(
                    dir.join("vae_decoder/config.json"),
                    "has no usable `block_out_channels`",
                )
            })?;
        let name = dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| dir.display().to_string());
        Ok(ModelPackage {
            dir: dir.to_path_buf(),
            name,
            class_name,
            scheduler_config,
            denoiser_config,
            vae_config,
            vae_scale_factor: 1 << (blocks - 1),
            family,
            family_note,
            force_zeros_for_empty_prompt: index
                .get("force_zeros_for_empty_prompt")
                .and_then(Value::as_bool)
                .unwrap_or(true),
        })
    }

    pub fn component(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn graph_path(&self, component: &str) -> PathBuf {
        self.dir.join(component).join("model.onnx")
    }

    fn number(config: &Value, key: &str) -> Option<f64> {
        config.get(key).and_then(Value::as_f64)
    }

    /// Default image side: the denoiser's `sample_size` x VAE factor, as diffusers computes it
    /// (FLUX's transformer has none: its pipeline uses 128).
    pub fn default_size(&self) -> Option<(u32, u32)> {
        let side = |v: &Value| v.as_u64().and_then(|s| u32::try_from(s).ok());
        let flux_default = Value::from(128);
        let sample_size = match self.denoiser_config.get("sample_size") {
            Some(v) => v,
            None if self.family == Family::Flux => &flux_default,
            None => return None,
        };
        let (h, w) = match sample_size {
            Value::Array(hw) if hw.len() == 2 => (side(&hw[0])?, side(&hw[1])?),
            v => (side(v)?, side(v)?),
        };
        Some((w * self.vae_scale_factor, h * self.vae_scale_factor))
    }

    /// What image sides must be a multiple of for the exported denoiser to run, with the reason:
    /// a UNet halves the latents once per down block but the last (an export traces the plain 2x
    /// upsampling, so odd intermediate sizes fail in its skip concatenations), SD3's transformer
    /// patchifies by `patch_size`, and FLUX packs 2x2 latent patches.
    pub fn size_multiple(&self) -> (u32, String) {
        let vae = self.vae_scale_factor;
        let config = &self.denoiser_config;
        let patch = config
            .get("patch_size")
            .and_then(Value::as_u64)
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| (1..=64).contains(p))
            .unwrap_or(1);
        match self.family {
            Family::Flux => (
                vae * 2 * patch,
                format!(
                    "the VAE factor {vae} x 2 for FLUX's 2x2 latent packing x patch size {patch}"
                ),
            ),
            Family::Sd3 => (
                vae * patch,
                format!("the VAE factor {vae} x the transformer's patch size {patch}"),
            ),
            _ => {
                let blocks = config
                    .get("down_block_types")
                    .and_then(Value::as_array)
                    .map(Vec::len)
                    .filter(|n| (1..=8).contains(n));
                match blocks {
                    Some(n) if n > 1 => (
                        vae << (n - 1),
                        format!(
                            "the VAE factor {vae} x 2^{} for the UNet's {n} down blocks",
                            n - 1
                        ),
                    ),
                    _ => (vae, format!("the VAE factor {vae}")),
                }
            }
        }
    }

    /// `scaling_factor` of the VAE (0.18215 for SD 1.x/2.x when absent, as diffusers' AutoencoderKL).
    pub fn vae_scaling_factor(&self) -> f32 {
        Self::number(&self.vae_config, "scaling_factor").unwrap_or(0.18215) as f32
    }

    /// `shift_factor` of the VAE (SD3/FLUX); zero when absent.
    pub fn vae_shift_factor(&self) -> f32 {
        Self::number(&self.vae_config, "shift_factor").unwrap_or(0.0) as f32
    }

    /// Latent channels of the VAE, which the UNet denoises (its `in_channels` also counts the
    /// conditioning channels of inpainting and InstructPix2Pix UNets).
    pub fn latent_channels(&self) -> usize {
        Self::number(&self.vae_config, "latent_channels").unwrap_or(4.0) as usize
    }

    /// Whether the package has the VAE encoder that image inputs need.
    pub fn has_vae_encoder(&self) -> bool {
        self.graph_path("vae_encoder").is_file()
    }
}
