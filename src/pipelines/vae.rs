//! VAE encoding and decoding around the graphs, with the scaling diffusers applies outside them.
use ndarray::{s, Array4, ArrayD, Ix4, Zip};

use crate::error::{Error, Result};
use crate::image::Image;
use crate::model::LoadedModel;
use crate::rng::NoiseSource;
use crate::runtime::Input;

/// What to take from the encoder's latent distribution.
pub(crate) enum Latent<'a> {
    /// `latent_dist.sample(generator)`: mean + std * randn, one draw of the latent shape.
    Sample(&'a mut dyn NoiseSource),
    /// `latent_dist.mode()`: the mean (InstructPix2Pix).
    Mode,
}

/// Runs the VAE encoder on [b, 3, H, W] pixels in [-1, 1]; returns unscaled latents [b, c, h, w].
/// Returns the ORT run time alongside.
pub(crate) fn encode(
    model: &LoadedModel,
    pixels: &Array4<f32>,
    latent: Latent<'_>,
) -> Result<(Array4<f32>, std::time::Duration)> {
    let encoder = model
        .vae_encoder
        .as_ref()
        .ok_or_else(|| no_encoder(model))?;
    let (params, ort) = encoder.graph.run(
        &[("sample", Input::F32(pixels.view().into_dyn()))],
        "latent_parameters",
    )?;
    let params = params
        .into_dimensionality::<Ix4>()
        .map_err(|e| Error::internal("vae_encoder", format!("latent_parameters: {e}")))?;
    let c = params.shape()[1] / 2;
    if c == 0 || params.shape()[1] % 2 != 0 {
        return Err(Error::internal(
            "vae_encoder",
            format!(
                "latent_parameters {:?} is not mean ++ logvar",
                params.shape()
            ),
        ));
    }
    let mut latents = params.slice(s![.., ..c, .., ..]).to_owned();
    if let Latent::Sample(noise) = latent {
        let eps = noise
            .randn(latents.shape())
            .into_dimensionality::<Ix4>()
            .map_err(|e| Error::internal("vae_encoder", e))?;
        // DiagonalGaussianDistribution: logvar clamped to [-30, 20], std = exp(0.5 * logvar).
        Zip::from(&mut latents)
            .and(&params.slice(s![.., c.., .., ..]))
            .and(&eps)
            .for_each(|m, &logvar: &f32, &e| *m += (0.5 * logvar.clamp(-30.0, 20.0)).exp() * e);
    }
    Ok((latents, ort))
}

/// The error for image inputs on a package exported without its VAE encoder.
pub(crate) fn no_encoder(model: &LoadedModel) -> Error {
    Error::Unsupported(format!(
        "{} has no vae_encoder/model.onnx; image inputs (img2img, inpainting, editing) need it \
         (optimum exports it with the rest of the pipeline)",
        model.package.dir.display()
    ))
}

/// Decodes latents (latents / scaling_factor + shift_factor) into RGB8 images.
pub(crate) fn decode(
    model: &LoadedModel,
    latents: &ArrayD<f32>,
) -> Result<(Vec<Image>, std::time::Duration)> {
    let package = &model.package;
    let (scale, shift) = (package.vae_scaling_factor(), package.vae_shift_factor());
    let scaled = latents.mapv(|v| v / scale + shift);
    let (decoded, ort) = model
        .vae_decoder
        .graph
        .run(&[("latent_sample", Input::F32(scaled.view()))], "sample")?;
    let decoded = decoded
        .into_dimensionality::<Ix4>()
        .map_err(|e| Error::internal("vae_decoder", format!("sample: {e}")))?;
    if decoded.shape()[1] != 3 {
        return Err(Error::internal(
            "vae_decoder",
            format!("expected 3 channels, got {:?}", decoded.shape()),
        ));
    }
    if decoded.iter().any(|v| !v.is_finite()) {
        return Err(Error::internal(
            "vae_decoder",
            "the decoded image is not finite (NaN or infinity): the latents overflow the VAE decoder \
             (out-of-range latents, or a float16 VAE)",
        ));
    }
    Ok((
        decoded.outer_iter().map(Image::from_vae_output).collect(),
        ort,
    ))
}
