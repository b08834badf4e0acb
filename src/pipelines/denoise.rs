//! The denoising loop shared by every task: UNet batch in, guided prediction, scheduler step.
use std::time::Instant;

use ndarray::{s, ArrayD, Axis};

use super::guidance::Guidance;
use super::pipeline::Timings;
use super::prepare::Blend;
use super::request::Request;
use crate::error::{Error, Result};
use crate::model::{TimestepKind, TimestepShape, Unet};
use crate::rng::NoiseSource;
use crate::runtime::{ElementType, Input};
use crate::schedulers::Scheduler;

/// What stays fixed over the steps of one pass.
pub(crate) struct Step<'a> {
    pub unet: &'a Unet,
    /// encoder_hidden_states for the whole UNet batch.
    pub cond: &'a ArrayD<f32>,
    /// SDXL's `text_embeds` and `time_ids`.
    pub added: Option<(&'a ArrayD<f32>, &'a ArrayD<f32>)>,
    /// The guidance-scale embedding of LCM-distilled UNets.
    pub timestep_cond: Option<&'a ArrayD<f32>>,
    pub guidance: Guidance,
    /// Conditioning channels appended after the scaled latents (inpainting, InstructPix2Pix).
    pub extra: Option<&'a ArrayD<f32>>,
    pub blend: Option<&'a Blend>,
    /// Checked for cancellation before every step.
    pub cancel: &'a Request,
}

/// Runs the steps `start..` of `scheduler` over `latents` ([n, c, h, w]) in place; `progress` is
/// called after each step and cancels the pass by returning `false`.
pub(crate) fn denoise(
    step: &Step<'_>,
    scheduler: &mut dyn Scheduler,
    start: usize,
    latents: &mut ArrayD<f32>,
    noise: &mut dyn NoiseSource,
    timings: &mut Timings,
    progress: &mut dyn FnMut() -> bool,
) -> Result<()> {
    let shape = latents.shape().to_vec();
    let (n, c) = (shape[0], shape[1]);
    let groups = step.guidance.groups();
    let batch = groups * n;
    let extra_channels = step.extra.map_or(0, |e| e.shape()[1]);
    // One buffer for the whole pass: the conditioning channels are written once.
    let mut model_input = ArrayD::<f32>::zeros(vec![batch, c + extra_channels, shape[2], shape[3]]);
    if let Some(extra) = step.extra {
        if extra.shape()[0] != batch {
            return Err(Error::InvalidArg(format!(
                "conditioning batch {} does not match the UNet batch {batch}",
                extra.shape()[0]
            )));
        }
        model_input.slice_mut(s![.., c.., .., ..]).assign(extra);
    }
    let timesteps = scheduler.timesteps().to_vec();
    for (i, &t) in timesteps.iter().enumerate().skip(start) {
        step.cancel.check_cancelled()?;
        let started = Instant::now();
        {
            let mut latent_part = model_input.slice_mut(s![.., ..c, .., ..]);
            for mut group in latent_part.axis_chunks_iter_mut(Axis(0), n) {
                group.assign(&*latents);
            }
            scheduler.scale_model_input(latent_part.into_dyn(), i);
        }
        let timestep = TimestepTensor::new(step.unet.timestep, batch, t);
        let mut inputs = vec![
            ("sample", Input::F32(model_input.view())),
            ("timestep", timestep.input()),
            ("encoder_hidden_states", Input::F32(step.cond.view())),
        ];
        if let Some((text_embeds, time_ids)) = step.added {
            inputs.push(("text_embeds", Input::F32(text_embeds.view())));
            inputs.push(("time_ids", Input::F32(time_ids.view())));
        }
        if let Some(cond) = step.timestep_cond {
            inputs.push(("timestep_cond", Input::F32(cond.view())));
        }
        let (mut prediction, ort) = step.unet.graph.run(&inputs, "out_sample")?;
        timings.ort_run += ort;
        let guided = step.guidance.combine(&mut prediction);
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

/// The timestep in the element type and rank the UNet graph declares.
enum TimestepTensor {
    F32(ArrayD<f32>),
    I64(ArrayD<i64>),
}

impl TimestepTensor {
    fn new(kind: TimestepKind, batch: usize, t: f32) -> TimestepTensor {
        let shape = match kind.shape {
            TimestepShape::Scalar => vec![],
            TimestepShape::Single => vec![1],
            TimestepShape::Batch => vec![batch],
        };
        match kind.dtype {
            ElementType::I64 => TimestepTensor::I64(ArrayD::from_elem(shape, t as i64)),
            _ => TimestepTensor::F32(ArrayD::from_elem(shape, t)),
        }
    }

    fn input(&self) -> Input<'_> {
        match self {
            TimestepTensor::F32(a) => Input::F32(a.view()),
            TimestepTensor::I64(a) => Input::I64(a.view()),
        }
    }
}
