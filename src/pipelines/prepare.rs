//! The task a request asks of a package, and the starting latents and conditioning inputs for
//! each task, drawn from the request's generator in the order diffusers draws them.
use std::time::Duration;

use ndarray::{concatenate, Array4, ArrayD, Axis, Zip};

use super::guidance::Guidance;
use super::inputs::{check_input_size, image_tensor, mask_tensor};
use super::resample::resize;
use super::vae::{self, Latent};
use crate::error::{Error, Result};
use crate::model::{Family, LoadedModel};
use crate::request::Request;
use crate::request::Resample;
use crate::rng::NoiseSource;
use crate::schedulers::Scheduler;

/// What one diffusion pass does, decided by the package's family and the request's inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Task {
    Text,
    Img2Img,
    /// Inpainting with a 9-channel UNet.
    InpaintUnet,
    /// Inpainting with a plain UNet: the known region is re-noised and blended in after every step.
    InpaintBlend,
    Pix2Pix,
}

impl Task {
    pub(crate) fn of(family: Family, request: &Request) -> Result<Task> {
        let has_image = request.init_image.is_some() || request.init_latents.is_some();
        let has_mask = request.mask.is_some();
        let task = match family {
            Family::Sdxl | Family::Sd3 | Family::Flux if has_mask => {
                return Err(Error::Unsupported(format!(
                    "inpainting with {family} packages is not run yet \
                         (text-to-image and img2img are)"
                )))
            }
            Family::Sdxl | Family::Sd3 | Family::Flux if has_image => Task::Img2Img,
            Family::Sdxl | Family::Sd3 | Family::Flux => Task::Text,
            Family::StableDiffusion if has_mask => Task::InpaintBlend,
            Family::StableDiffusion if has_image => Task::Img2Img,
            Family::StableDiffusion => Task::Text,
            Family::Inpaint if request.init_image.is_some() && has_mask => Task::InpaintUnet,
            Family::Inpaint => {
                return Err(Error::InvalidArg(
                    "this is an inpainting model: it needs an init image and a mask".into(),
                ))
            }
            Family::InstructPix2Pix if has_mask => {
                return Err(Error::InvalidArg(
                    "InstructPix2Pix edits the whole image and takes no mask".into(),
                ))
            }
            Family::InstructPix2Pix if has_image => Task::Pix2Pix,
            Family::InstructPix2Pix => {
                return Err(Error::InvalidArg(
                    "this is an InstructPix2Pix model: it needs the image to edit".into(),
                ))
            }
        };
        if request.strength.is_some() && matches!(task, Task::Text | Task::Pix2Pix) {
            return Err(Error::InvalidArg(match task {
                Task::Text => "strength needs an init image to apply to".into(),
                _ => "strength does not apply to InstructPix2Pix (it always denoises fully)".into(),
            }));
        }
        if request.latents.is_some() && !matches!(task, Task::Text | Task::Pix2Pix) {
            return Err(Error::InvalidArg(
                "initial noise latents cannot be combined with an init image".into(),
            ));
        }
        Ok(task)
    }

    /// The strength the task runs with (diffusers' defaults: img2img 0.8, 0.3 for SDXL, 0.6 for
    /// SD3 and FLUX; inpainting 1.0).
    pub(crate) fn strength(self, family: Family, request: &Request) -> Option<f64> {
        let img2img = match family {
            Family::Sdxl => 0.3,
            Family::Sd3 | Family::Flux => 0.6,
            _ => 0.8,
        };
        match self {
            Task::Img2Img => Some(request.strength.unwrap_or(img2img)),
            Task::InpaintUnet | Task::InpaintBlend => Some(request.strength.unwrap_or(1.0)),
            Task::Text | Task::Pix2Pix => None,
        }
    }
}

/// Re-imposes the known region after every step (inpainting with a plain UNet).
pub(crate) struct Blend {
    /// Clean image latents [n, c, h, w].
    image: ArrayD<f32>,
    /// 1 = repaint, broadcast over the channels: [n, c, h, w].
    mask: ArrayD<f32>,
    /// The noise the initial latents were drawn with; the known region is re-noised with it.
    noise: ArrayD<f32>,
}

impl Blend {
    /// `latents = (1 - mask) * known + mask * latents`, where `known` is the image latents noised
    /// to the level of step `next` (clean after the last step), as diffusers' inpaint loop does.
    pub(crate) fn apply(&self, latents: &mut ArrayD<f32>, scheduler: &dyn Scheduler, next: usize) {
        let mut known = self.image.clone();
        if next < scheduler.timesteps().len() {
            scheduler.add_noise(known.view_mut(), self.noise.view(), next);
        }
        Zip::from(latents)
            .and(&known)
            .and(&self.mask)
            .for_each(|l, &k, &m| *l = (1.0 - m) * k + m * *l);
    }
}

/// What one pass is: the package, the task, the request and the decisions already made for it.
#[derive(Clone, Copy)]
pub(crate) struct Pass<'a> {
    pub model: &'a LoadedModel,
    pub task: Task,
    pub request: &'a Request,
    pub width: u32,
    pub height: u32,
    /// Index of the first scheduler step to run.
    pub start: usize,
    pub guidance: Guidance,
}

/// Everything the denoising loop starts from.
pub(crate) struct Prepared {
    pub latents: ArrayD<f32>,
    /// Channels appended to the scaled latents of the whole UNet batch, [groups * n, e, h, w].
    pub extra: Option<ArrayD<f32>>,
    pub blend: Option<Blend>,
    /// ONNX Runtime time spent in the VAE encoder.
    pub ort: Duration,
}

/// Builds the starting latents for `task`. Draw order follows diffusers: img2img samples the
/// image latents, then the noise; inpainting samples the image latents (if it needs them), the
/// noise, then the masked-image latents; InstructPix2Pix takes the latents' mean and draws noise.
pub(crate) fn prepare(
    pass: &Pass<'_>,
    scheduler: &mut dyn Scheduler,
    noise: &mut dyn NoiseSource,
) -> Result<Prepared> {
    let Pass {
        model,
        task,
        request,
        width,
        height,
        start,
        guidance,
    } = *pass;
    let package = &model.package;
    let factor = package.vae_scale_factor;
    let n = request.num_images;
    let shape = [
        n,
        package.latent_channels(),
        (height / factor) as usize,
        (width / factor) as usize,
    ];
    let mut ort = Duration::ZERO;
    let mut encode =
        |pixels: &Array4<f32>, latent: Latent<'_>, scaled: bool| -> Result<ArrayD<f32>> {
            let (l, t) = vae::encode(model, pixels, latent)?;
            ort += t;
            if l.shape()[1..] != shape[1..] {
                return Err(Error::internal(
                    "vae_encoder",
                    format!(
                        "latents {:?} do not match the UNet's {:?}",
                        l.shape(),
                        &shape[1..]
                    ),
                ));
            }
            let l = if scaled {
                let (sf, shift) = (package.vae_scaling_factor(), package.vae_shift_factor());
                l.mapv(|v| (v - shift) * sf)
            } else {
                l
            };
            repeat(l.into_dyn(), n)
        };
    let pixels = match &request.init_image {
        Some(image) => {
            check_input_size("init image", image, width, height)?;
            if model.vae_encoder.is_none() {
                return Err(vae::no_encoder(model));
            }
            Some(image_tensor(image))
        }
        None => None,
    };
    let given_latents = match &request.init_latents {
        Some(l) if l.ndim() == 4 && l.shape()[1..] == shape[1..] => Some(repeat(l.clone(), n)?),
        Some(l) => {
            return Err(Error::InvalidArg(format!(
                "init latents have shape {:?}, this request needs [1 or {n}, {}, {}, {}]",
                l.shape(),
                shape[1],
                shape[2],
                shape[3]
            )))
        }
        None => None,
    };
    let strength_max = task.strength(package.family, request) == Some(1.0);
    let start_noise = |noise: &mut dyn NoiseSource| -> Result<ArrayD<f32>> {
        match &request.latents {
            Some(given) if given.shape() == shape => Ok(given.clone()),
            Some(given) => Err(Error::InvalidArg(format!(
                "initial latents have shape {:?}, this request needs {shape:?}",
                given.shape()
            ))),
            None => Ok(noise.randn(&shape)),
        }
    };

    let mut extra = None;
    let mut blend = None;
    let latents = match task {
        Task::Text => start_noise(noise)? * scheduler.init_noise_sigma(),
        Task::Img2Img => {
            let mut latents = match (given_latents, &pixels) {
                (Some(l), _) => l,
                (None, Some(p)) => encode(p, Latent::Sample(noise), true)?,
                (None, None) => {
                    return Err(Error::InvalidArg("img2img needs an init image".into()))
                }
            };
            let eps = noise.randn(&shape);
            scheduler.add_noise(latents.view_mut(), eps.view(), start);
            latents
        }
        Task::InpaintUnet | Task::InpaintBlend => {
            let (Some(pixels), Some(mask_image)) = (&pixels, &request.mask) else {
                return Err(Error::InvalidArg(
                    "inpainting needs an init image and a mask".into(),
                ));
            };
            check_input_size("mask", mask_image, width, height)?;
            let needs_image = task == Task::InpaintBlend || !strength_max;
            let image_latents = if needs_image {
                Some(encode(pixels, Latent::Sample(noise), true)?)
            } else {
                None
            };
            let eps = noise.randn(&shape);
            let latents = match &image_latents {
                Some(image) if !strength_max => {
                    let mut l = image.clone();
                    scheduler.add_noise(l.view_mut(), eps.view(), start);
                    l
                }
                _ => &eps * scheduler.init_noise_sigma(),
            };
            let mask = mask_tensor(mask_image);
            let masked = Zip::from(pixels)
                .and_broadcast(&mask)
                .map_collect(|&p, &m| if m < 0.5 { p } else { 0.0 });
            let latent_mask = repeat(
                resize(mask.view(), shape[2], shape[3], Resample::Nearest).into_dyn(),
                n,
            )?;
            if task == Task::InpaintUnet {
                let masked_latents = encode(&masked, Latent::Sample(noise), true)?;
                let per_image = concatenate(Axis(1), &[latent_mask.view(), masked_latents.view()])
                    .map_err(|e| Error::InvalidArg(format!("mask channels: {e}")))?;
                extra = Some(repeat_groups(&vec![per_image.view(); guidance.groups()])?);
            } else {
                // diffusers encodes the masked image here too (unused by a plain UNet); only its
                // draw from the generator matters, so take the draw and skip the encoder run.
                let _ = noise.randn(&[1, shape[1], shape[2], shape[3]]);
                let mask = latent_mask
                    .broadcast(shape.to_vec())
                    .ok_or_else(|| Error::InvalidArg("mask does not cover the latents".into()))?
                    .to_owned();
                blend = Some(Blend {
                    image: image_latents.unwrap_or_else(|| ArrayD::zeros(shape.to_vec())),
                    mask,
                    noise: eps,
                });
            }
            latents
        }
        Task::Pix2Pix => {
            let image = match (given_latents, &pixels) {
                (Some(l), _) => l,
                // InstructPix2Pix conditions on the unscaled mean of the image's latents.
                (None, Some(p)) => encode(p, Latent::Mode, false)?,
                (None, None) => {
                    return Err(Error::InvalidArg("editing needs an init image".into()))
                }
            };
            let groups = match guidance {
                Guidance::Pix2Pix { .. } => {
                    let zeros = ArrayD::zeros(image.shape());
                    repeat_groups(&[image.view(), image.view(), zeros.view()])?
                }
                _ => image,
            };
            extra = Some(groups);
            start_noise(noise)? * scheduler.init_noise_sigma()
        }
    };
    Ok(Prepared {
        latents,
        extra,
        blend,
        ort,
    })
}

/// Repeats a [1, ...] tensor to [n, ...]; an [n, ...] tensor is returned as is.
fn repeat(a: ArrayD<f32>, n: usize) -> Result<ArrayD<f32>> {
    match a.shape()[0] {
        b if b == n => Ok(a),
        1 => concatenate(Axis(0), &vec![a.view(); n])
            .map_err(|e| Error::InvalidArg(format!("repeat: {e}"))),
        b => Err(Error::InvalidArg(format!(
            "a batch of {b} cannot be spread over {n} images"
        ))),
    }
}

/// Stacks one tensor per guidance group along the batch axis.
fn repeat_groups(groups: &[ndarray::ArrayViewD<'_, f32>]) -> Result<ArrayD<f32>> {
    concatenate(Axis(0), groups).map_err(|e| Error::InvalidArg(format!("guidance groups: {e}")))
}
