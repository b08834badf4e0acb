//! The denoising loop shared by every task: denoiser batch in, guided prediction, scheduler step.
use std::sync::Arc;
use std::time::Instant;

use ndarray::{s, ArrayD, Axis};

use super::guidance::Guidance;
use super::prepare::Blend;
use crate::error::{Error, Result};
use crate::model::{Denoiser, TimestepShape, TransformerKind};
use crate::request::Request;
use crate::request::Timings;
use crate::rng::NoiseSource;
use crate::runtime::{ElementType, Input, WeightSet};
use crate::schedulers::Scheduler;

/// What stays fixed over the steps of one pass.
pub(crate) struct Step<'a> {
    pub denoiser: &'a Denoiser,
    /// Inputs that are the same at every step (text embeddings, SDXL's time ids, FLUX's ids...).
    pub fixed: Vec<(&'static str, Tensor)>,
    pub guidance: Guidance,
    /// Conditioning channels appended after the scaled latents (inpainting, InstructPix2Pix).
    pub extra: Option<&'a ArrayD<f32>>,
    pub blend: Option<&'a Blend>,
    /// Checked for cancellation before every step.
    pub cancel: &'a Request,
    /// The request's LoRA weights for the denoiser.
    pub weights: Option<Arc<WeightSet>>,
}

/// Runs the steps `start..` of `scheduler` over `latents` (first axis: images) in place;
/// `progress` is called after each step and cancels the pass by returning `false`.
pub(crate) fn denoise(
    step: &Step<'_>,
    scheduler: &mut dyn Scheduler,
    start: usize,
    latents: &mut ArrayD<f32>,
    noise: &mut dyn NoiseSource,
    timings: &mut Timings,
    progress: &mut dyn FnMut() -> bool,
) -> Result<()> {
    let n = latents.shape()[0];
    let batch = step.guidance.groups() * n;
    // One buffer for the whole pass: the conditioning channels are written once.
    let mut shape = latents.shape().to_vec();
    shape[0] = batch;
    let c = shape[1];
    if let Some(extra) = step.extra {
        if extra.shape()[0] != batch || shape.len() != 4 {
            return Err(Error::InvalidArg(format!(
                "conditioning {:?} does not fit the denoiser batch {shape:?}",
                extra.shape()
            )));
        }
        shape[1] += extra.shape()[1];
    }
    let mut model_input = ArrayD::<f32>::zeros(shape);
    if let Some(extra) = step.extra {
        model_input.slice_mut(s![.., c.., .., ..]).assign(extra);
    }
    let (sample_name, output_name) = match step.denoiser {
        Denoiser::Unet(_) => ("sample", "out_sample"),
        Denoiser::Transformer(_) => ("hidden_states", "out_hidden_states"),
    };
    // The fixed inputs are bound once (copied to the GPU on CUDA/TensorRT) and ONNX Runtime writes
    // every step's prediction into one reused buffer.
    let mut out_shape = latents.shape().to_vec();
    out_shape[0] = batch;
    let mut binding = step.denoiser.graph().binding(output_name, &out_shape)?;
    for (name, tensor) in &step.fixed {
        binding.fix(name, tensor.input())?;
    }
    if let Some(weights) = &step.weights {
        binding.weights(weights.clone());
    }
    let timesteps = scheduler.timesteps().to_vec();
    for (i, &t) in timesteps.iter().enumerate().skip(start) {
        step.cancel.check_cancelled()?;
        let started = Instant::now();
        {
            let mut latent_part = match step.extra {
                Some(_) => model_input.slice_mut(s![.., ..c, .., ..]).into_dyn(),
                None => model_input.view_mut(),
            };
            for mut group in latent_part.axis_chunks_iter_mut(Axis(0), n) {
                group.assign(&*latents);
            }
            scheduler.scale_model_input(latent_part, i);
        }
        let timestep = timestep_tensor(step.denoiser, batch, t);
        let (mut prediction, ort) = binding.run(&[
            (sample_name, Input::F32(model_input.view())),
            ("timestep", timestep.input()),
        ])?;
        timings.ort_run += ort;
        step.guidance.combine(prediction.view_mut());
        let guided = prediction.slice_axis(Axis(0), (0..n).into());
        scheduler.step(guided, i, latents.view_mut(), noise)?;
        if let Some(blend) = step.blend {
            blend.apply(latents, scheduler, i + 1);
        }
        timings.denoise_steps.push(started.elapsed());
        if !progress() {
            return Err(Error::Cancelled);
        }
    }
    Ok(())
}

/// The timestep as the denoiser takes it: in the UNet's declared type and rank; `[batch]` for
/// transformers, divided by 1000 for FLUX (as FluxPipeline passes `t / 1000`).
fn timestep_tensor(denoiser: &Denoiser, batch: usize, t: f32) -> Tensor {
    match denoiser {
        Denoiser::Unet(unet) => {
            let shape = match unet.timestep.shape {
                TimestepShape::Scalar => vec![],
                TimestepShape::Single => vec![1],
                TimestepShape::Batch => vec![batch],
            };
            match unet.timestep.dtype {
                ElementType::I64 => Tensor::I64(ArrayD::from_elem(shape, t as i64)),
                _ => Tensor::F32(ArrayD::from_elem(shape, t)),
            }
        }
        Denoiser::Transformer(transformer) => {
            let t = match transformer.kind {
                TransformerKind::Sd3 => t,
                TransformerKind::Flux => t / 1000.0,
            };
            Tensor::F32(ArrayD::from_elem(vec![batch], t))
        }
    }
}

/// An owned denoiser input of one of the element types graphs take.
pub(crate) enum Tensor {
    F32(ArrayD<f32>),
    I64(ArrayD<i64>),
}

impl Tensor {
    fn input(&self) -> Input<'_> {
        match self {
            Tensor::F32(a) => Input::F32(a.view()),
            Tensor::I64(a) => Input::I64(a.view()),
        }
    }

    pub(crate) fn shape(&self) -> &[usize] {
        match self {
            Tensor::F32(a) => a.shape(),
            Tensor::I64(a) => a.shape(),
        }
    }
}
