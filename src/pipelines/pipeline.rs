//! A loaded package and the request flow: resolve the task, prepare latents, denoise, decode.
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ndarray::{concatenate, Array2, ArrayD, Axis};
use serde_json::Value;

use super::denoise::{denoise, Step};
use super::guidance::{scale_embedding, Guidance, Text};
use super::plan::Plan;
use super::prepare::{prepare, Pass, Prepared, Task};
use super::request::{check_size, Progress, Request};
use super::resample::resize;
use super::vae;
use crate::error::{Error, Result};
use crate::image::Image;
use crate::model::{Family, LoadedModel};
use crate::rng;
use crate::runtime::{ElementType, Input, Runtime};
use crate::schedulers::{self, Scheduler};

/// Where the time of one request went. `ort_run` is the sum of all ONNX Runtime run calls.
#[derive(Debug, Clone, Default)]
pub struct Timings {
    pub tokenize: Duration,
    pub text_encode: Duration,
    pub denoise_steps: Vec<Duration>,
    pub decode: Duration,
    pub ort_run: Duration,
    pub total: Duration,
}

/// The result of one request.
#[derive(Debug, Clone)]
pub struct Output {
    pub images: Vec<Image>,
    /// Final latents before VAE decoding, [num_images, channels, h/f, w/f].
    pub latents: ArrayD<f32>,
    /// The seed actually used (drawn from the clock when the request had none).
    pub seed: u64,
    pub width: u32,
    pub height: u32,
    /// Canonical scheduler name that ran.
    pub scheduler: String,
    pub timings: Timings,
}

/// A loaded model package on a runtime. Shared sessions; every request has its own scheduler and RNG.
#[derive(Debug)]
pub struct Pipeline {
    runtime: Arc<Runtime>,
    model: LoadedModel,
}

/// Default values a request resolves to on this package.
#[derive(Debug, Clone, PartialEq)]
pub struct Defaults {
    pub width: u32,
    pub height: u32,
    pub scheduler: String,
}

impl Pipeline {
    /// Loads a package directory (optimum/diffusers ONNX layout) onto `runtime`.
    pub fn load(runtime: Arc<Runtime>, dir: &Path) -> Result<Pipeline> {
        let model = LoadedModel::load(&runtime, dir)?;
        Ok(Pipeline { runtime, model })
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    pub fn model(&self) -> &LoadedModel {
        &self.model
    }

    /// The size and scheduler a request without them gets.
    pub fn defaults(&self) -> Result<Defaults> {
        let (width, height) = self.default_size()?;
        let scheduler = schedulers::create(None, &self.model.package.scheduler_config)?
            .name()
            .to_string();
        Ok(Defaults {
            width,
            height,
            scheduler,
        })
    }

    /// UNet `sample_size` x VAE factor, as diffusers computes the default size.
    fn default_size(&self) -> Result<(u32, u32)> {
        let package = &self.model.package;
        package.default_size().ok_or_else(|| {
            Error::model(
                package.component("unet"),
                "config.json has no usable `sample_size`; pass width and height",
            )
        })
    }

    /// Runs a request to completion.
    pub fn generate(&self, request: &Request) -> Result<Output> {
        self.generate_with_progress(request, &mut |_| true)
    }

    /// Runs a request, calling `progress` after every denoising step; returning `false` from it cancels
    /// the request with [`Error::Cancelled`] (nothing is decoded or returned).
    pub fn generate_with_progress(
        &self,
        request: &Request,
        progress: &mut dyn FnMut(&Progress) -> bool,
    ) -> Result<Output> {
        let started = Instant::now();
        request.validate()?;
        let mut timings = Timings::default();
        let output = match &request.plan {
            None => {
                let total = self.steps_to_run(request)?;
                let mut reporter = Reporter::new(started, total, progress);
                self.run_stage(request, &mut timings, &mut reporter, true)?
            }
            Some(plan) => self.run_plan(request, plan, &mut timings, started, progress)?,
        };
        timings.total = started.elapsed();
        Ok(Output { timings, ..output })
    }

    /// Runs the stages of a plan: each after the first is img2img over the previous stage's
    /// latents, resized to its size; only the last stage is decoded.
    fn run_plan(
        &self,
        request: &Request,
        plan: &Plan,
        timings: &mut Timings,
        started: Instant,
        progress: &mut dyn FnMut(&Progress) -> bool,
    ) -> Result<Output> {
        let stages: Vec<Request> = plan
            .stages
            .iter()
            .enumerate()
            .map(|(i, stage)| {
                let mut r = Request {
                    plan: None,
                    width: Some(stage.width),
                    height: Some(stage.height),
                    ..request.clone()
                };
                r.steps = stage.steps.unwrap_or(r.steps);
                r.scheduler = stage.scheduler.clone().or(r.scheduler);
                r.guidance_scale = stage.guidance_scale.unwrap_or(r.guidance_scale);
                r.strength = stage.strength.or(r.strength);
                r.seed = stage.seed.or(r.seed);
                if i > 0 {
                    // Later stages start from latents; the first stage's inputs are used up.
                    (r.init_image, r.mask, r.latents) = (None, None, None);
                }
                r.validate()?;
                Ok(r)
            })
            .collect::<Result<_>>()?;
        let mut total = 0;
        for (i, stage) in stages.iter().enumerate() {
            let mut probe = stage.clone();
            if i > 0 {
                // Only its shape matters for counting steps.
                probe.init_latents = Some(ArrayD::zeros(vec![0]));
            }
            total += self.steps_to_run(&probe)?;
        }
        let mut reporter = Reporter::new(started, total, progress);
        let factor = self.model.package.vae_scale_factor;
        let mut previous: Option<Output> = None;
        let last = stages.len() - 1;
        for (i, mut stage) in stages.into_iter().enumerate() {
            if let Some(prev) = previous.take() {
                check_size(stage.width.unwrap_or(0), stage.height.unwrap_or(0), factor)?;
                let latents = prev
                    .latents
                    .into_dimensionality()
                    .map_err(|e| Error::InvalidArg(format!("stage latents: {e}")))?;
                let (h, w) = (
                    (stage.height.unwrap_or(0) / factor) as usize,
                    (stage.width.unwrap_or(0) / factor) as usize,
                );
                let upscaled = resize(latents.view(), h, w, plan.stages[i].upscale);
                stage.init_latents = Some(upscaled.into_dyn());
            }
            previous = Some(self.run_stage(&stage, timings, &mut reporter, i == last)?);
        }
        previous.ok_or_else(|| Error::InvalidArg("a plan needs at least one stage".into()))
    }

    /// How many denoising steps a single-stage request runs (strength truncates the schedule).
    fn steps_to_run(&self, request: &Request) -> Result<usize> {
        let task = Task::of(self.model.package.family, request)?;
        let (scheduler, start) = self.schedule(request, task)?;
        Ok(scheduler.timesteps().len() - start)
    }

    /// Builds the request's scheduler and the index of the first step to run: diffusers'
    /// `get_timesteps`, `t_start = steps - min(int(steps * strength), steps)`, times the order.
    fn schedule(&self, request: &Request, task: Task) -> Result<(Box<dyn Scheduler>, usize)> {
        let mut scheduler = self.scheduler_for(request)?;
        scheduler.set_timesteps(request.steps)?;
        let Some(strength) = task.strength(self.model.package.family, request) else {
            return Ok((scheduler, 0));
        };
        let steps = request.steps;
        let init = ((steps as f64 * strength) as usize).min(steps);
        let start = (steps - init) * scheduler.order();
        // diffusers refuses this too; PNDM's schedule has one entry more than steps, so the
        // length of the truncated schedule alone would let 0 requested steps through.
        if init == 0 || start >= scheduler.timesteps().len() {
            return Err(Error::InvalidArg(format!(
                "strength {strength} with {steps} steps leaves no denoising step to run \
                 (steps x strength must be at least 1)"
            )));
        }
        Ok((scheduler, start))
    }

    /// One diffusion pass: the whole request without a plan, or one stage of a plan.
    fn run_stage(
        &self,
        request: &Request,
        timings: &mut Timings,
        reporter: &mut Reporter<'_>,
        decode: bool,
    ) -> Result<Output> {
        let model = &self.model;
        let family = model.package.family;
        let task = Task::of(family, request)?;
        let (width, height) = self.output_size(request)?;
        let (mut scheduler, start) = self.schedule(request, task)?;
        let guidance = match family {
            Family::InstructPix2Pix
                if request.guidance_scale > 1.0 && request.image_guidance_scale >= 1.0 =>
            {
                Guidance::Pix2Pix {
                    text: request.guidance_scale,
                    image: request.image_guidance_scale,
                }
            }
            Family::InstructPix2Pix => Guidance::None,
            // LCM-distilled UNets take the scale as an embedding instead of a CFG batch.
            _ if model.unet.timestep_cond.is_some() => Guidance::None,
            _ if request.uses_guidance() => Guidance::Cfg {
                scale: request.guidance_scale,
            },
            _ => Guidance::None,
        };
        let cond = self.encode_prompts(request, guidance, timings)?;
        let seed = request.seed.unwrap_or_else(clock_seed);
        let mut noise = rng::generator(request.rng, seed);
        let Prepared {
            mut latents,
            extra,
            blend,
            ort,
        } = prepare(
            &Pass {
                model,
                task,
                request,
                width,
                height,
                start,
                guidance,
            },
            scheduler.as_mut(),
            noise.as_mut(),
        )?;
        timings.ort_run += ort;
        let batch = guidance.groups() * request.num_images;
        let added = match (model.unet.time_ids, &cond.pooled) {
            (Some(w), Some(pooled)) => Some((pooled, time_ids(w, (width, height), batch)?)),
            _ => None,
        };
        let timestep_cond = model
            .unet
            .timestep_cond
            .map(|dim| scale_embedding(request.guidance_scale - 1.0, dim, batch).into_dyn());
        let step = Step {
            unet: &model.unet,
            cond: &cond.hidden,
            added: added.as_ref().map(|(pooled, ids)| (*pooled, ids)),
            timestep_cond: timestep_cond.as_ref(),
            guidance,
            extra: extra.as_ref(),
            blend: blend.as_ref(),
            cancel: request,
        };
        denoise(
            &step,
            scheduler.as_mut(),
            start,
            &mut latents,
            noise.as_mut(),
            timings,
            &mut || reporter.report(),
        )?;
        request.check_cancelled()?;

        let images = if decode {
            let started = Instant::now();
            let (images, ort) = vae::decode(model, &latents)?;
            timings.ort_run += ort;
            timings.decode = started.elapsed();
            images
        } else {
            Vec::new()
        };
        Ok(Output {
            images,
            latents,
            seed,
            width,
            height,
            scheduler: scheduler.name().to_string(),
            timings: Timings::default(),
        })
    }

    /// The request's size, else its init image's or init latents', else the package default;
    /// checked against the VAE factor.
    fn output_size(&self, request: &Request) -> Result<(u32, u32)> {
        let factor = self.model.package.vae_scale_factor;
        let from_input = match (&request.init_image, &request.init_latents) {
            (Some(image), _) => Some((image.width, image.height)),
            (_, Some(l)) if l.ndim() == 4 => Some((
                (l.shape()[3] as u32) * factor,
                (l.shape()[2] as u32) * factor,
            )),
            _ => None,
        };
        let (width, height) = match (request.width, request.height, from_input) {
            (Some(w), Some(h), _) => (w, h),
            (w, h, Some((iw, ih))) => (w.unwrap_or(iw), h.unwrap_or(ih)),
            (w, h, None) => {
                // Only the size is needed here: building the default scheduler would be wasted work.
                let (dw, dh) = self.default_size()?;
                (w.unwrap_or(dw), h.unwrap_or(dh))
            }
        };
        check_size(width, height, factor)?;
        Ok((width, height))
    }

    /// The package's scheduler config with the request's overrides merged over it, as diffusers'
    /// `Scheduler.from_config(pipe.scheduler.config, **overrides)`.
    fn scheduler_for(&self, request: &Request) -> Result<Box<dyn Scheduler>> {
        let mut config = self.model.package.scheduler_config.clone();
        if let Value::Object(map) = &mut config {
            for (k, v) in &request.scheduler_overrides {
                map.insert(k.clone(), v.clone());
            }
            map.insert("eta".into(), Value::from(request.eta));
        }
        Ok(schedulers::create(request.scheduler.as_deref(), &config)?)
    }

    /// Tokenizes and encodes the prompts: one group of `num_images` rows per guidance group, in the
    /// order [`Guidance::texts`] gives. SDXL concatenates the penultimate layers of both encoders
    /// and takes the second one's pooled `text_embeds`, as diffusers' `encode_prompt` does.
    fn encode_prompts(
        &self,
        request: &Request,
        guidance: Guidance,
        timings: &mut Timings,
    ) -> Result<Conditioning> {
        let model = &self.model;
        let package = &model.package;
        let sdxl = package.family == Family::Sdxl;
        let groups = guidance.texts();
        let wants_negative = groups.contains(&Text::Negative);
        // SDXL zeroes the unconditional embeddings when no negative prompt is given.
        let zero_negative = sdxl
            && wants_negative
            && request.negative_prompt.is_none()
            && package.force_zeros_for_empty_prompt;
        // Each distinct text is encoded once: row 0 the prompt, row 1 the negative prompt.
        let mut texts = vec![request.prompt.as_str()];
        if wants_negative && !zero_negative {
            texts.push(request.negative_prompt.as_deref().unwrap_or(""));
        }
        let encoders = std::iter::once((&model.tokenizer, &model.text_encoder))
            .chain(model.second_encoder.as_ref().map(|(t, e)| (t, e)));
        let (mut hidden_parts, mut pooled) = (Vec::new(), None);
        for (tokenizer, encoder) in encoders {
            let started = Instant::now();
            let mut ids = Vec::with_capacity(texts.len() * tokenizer.max_length());
            for text in &texts {
                ids.extend(tokenizer.encode(text)?);
            }
            let ids = Array2::from_shape_vec((texts.len(), tokenizer.max_length()), ids)
                .map_err(|e| Error::InvalidArg(format!("tokenizer output: {e}")))?
                .into_dyn();
            timings.tokenize += started.elapsed();

            let started = Instant::now();
            let hidden_name =
                match (sdxl, &encoder.penultimate) {
                    (false, _) => "last_hidden_state",
                    (true, Some(name)) => name.as_str(),
                    (true, None) => return Err(Error::model(
                        encoder.graph.path(),
                        "has no hidden_states.N outputs; SDXL conditions on the penultimate layer",
                    )),
                };
            let mut names = vec![hidden_name];
            if sdxl && encoder.has_text_embeds {
                names.push("text_embeds");
            }
            let ids32;
            let input = match encoder.ids_dtype {
                ElementType::I32 => {
                    ids32 = ids.mapv(|v| v as i32);
                    Input::I32(ids32.view())
                }
                _ => Input::I64(ids.view()),
            };
            let (mut outputs, ort) = encoder.graph.run_outputs(&[("input_ids", input)], &names)?;
            timings.ort_run += ort;
            if names.len() == 2 {
                pooled = outputs.pop();
            }
            hidden_parts.extend(outputs.pop());
            timings.text_encode += started.elapsed();
        }
        if sdxl && pooled.is_none() {
            return Err(Error::model(
                package.component("text_encoder_2"),
                "has no `text_embeds` output (SDXL needs CLIPTextModelWithProjection's)",
            ));
        }
        let views: Vec<_> = hidden_parts
            .iter()
            .map(|h: &ArrayD<f32>| h.view())
            .collect();
        let hidden = concatenate(Axis(2), &views)
            .map_err(|e| Error::backend("text_encoder", format!("hidden states: {e}")))?;
        let n = request.num_images;
        let spread = |encoded: &ArrayD<f32>| -> Result<ArrayD<f32>> {
            let row = |r: usize| encoded.index_axis(Axis(0), r).insert_axis(Axis(0));
            let zeros = ArrayD::zeros(row(0).shape());
            let rows: Vec<_> = groups
                .iter()
                .flat_map(|t| std::iter::repeat_n(*t, n))
                .map(|t| match t {
                    Text::Prompt => row(0),
                    Text::Negative if zero_negative => zeros.view(),
                    Text::Negative => row(1),
                })
                .collect();
            concatenate(Axis(0), &rows).map_err(|e| Error::backend("text_encoder", e))
        };
        Ok(Conditioning {
            hidden: spread(&hidden)?,
            pooled: pooled.as_ref().map(spread).transpose()?,
        })
    }
}

/// What the UNet is conditioned on, one row per item of its batch.
struct Conditioning {
    /// `encoder_hidden_states`.
    hidden: ArrayD<f32>,
    /// SDXL's pooled `text_embeds`.
    pooled: Option<ArrayD<f32>>,
}

/// SDXL's `time_ids` rows: original size, crop top-left, target size, as diffusers fills them
/// when none are given ((h, w), (0, 0), (h, w)).
fn time_ids(width: usize, (w, h): (u32, u32), batch: usize) -> Result<ArrayD<f32>> {
    if width != 6 {
        return Err(Error::Unsupported(format!(
            "UNet time_ids of width {width} (SDXL refiner aesthetic-score conditioning) is not run yet"
        )));
    }
    let row = [h as f32, w as f32, 0.0, 0.0, h as f32, w as f32];
    Ok(Array2::from_shape_fn((batch, 6), |(_, j)| row[j]).into_dyn())
}

/// Turns per-stage step numbers into request-wide progress and forwards them to the caller.
struct Reporter<'a> {
    started: Instant,
    done: usize,
    total: usize,
    callback: &'a mut dyn FnMut(&Progress) -> bool,
}

impl<'a> Reporter<'a> {
    fn new(started: Instant, total: usize, callback: &'a mut dyn FnMut(&Progress) -> bool) -> Self {
        Reporter {
            started,
            done: 0,
            total,
            callback,
        }
    }

    /// Counts one finished step; `false` means the caller cancelled.
    fn report(&mut self) -> bool {
        self.done += 1;
        (self.callback)(&Progress {
            step: self.done,
            total: self.total,
            elapsed: self.started.elapsed(),
        })
    }
}

/// A seed for requests that did not give one; reported back so the image can be reproduced.
fn clock_seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    (nanos as u64) & 0x7fff_ffff_ffff_ffff
}
