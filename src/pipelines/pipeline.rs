//! A loaded package and the request flow: resolve the task, prepare latents, denoise, decode.
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ndarray::ArrayD;
use serde_json::Value;

use super::conditioning::{self, time_ids, Conditioning};
use super::denoise::{denoise, Step, Tensor};
use super::flux;
use super::guidance::{scale_embedding, Guidance};
use super::prepare::{prepare, Pass, Prepared, Task};
use super::resample::resize;
use super::vae;
use crate::error::{Error, Result};
use crate::model::{Denoiser, Family, LoadedModel, TransformerKind};
use crate::request::{check_size, LoraUse, Output, Plan, Progress, Request, Timings};
use crate::rng;
use crate::runtime::{Adapters, ElementType, Runtime, StackWeights};
use crate::schedulers::{self, Scheduler};

/// A loaded model package on a runtime. Shared sessions; every request has its own scheduler and RNG.
#[derive(Debug)]
pub struct Pipeline {
    runtime: Arc<Runtime>,
    model: LoadedModel,
    pub(super) adapters: Adapters,
    /// The stack of requests that name none (`merge`d adapters).
    pub(super) default_loras: RwLock<Vec<LoraUse>>,
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
        Ok(Pipeline {
            runtime,
            model,
            adapters: Adapters::default(),
            default_loras: RwLock::new(Vec::new()),
        })
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

    /// The denoiser's `sample_size` x VAE factor, as diffusers computes the default size.
    fn default_size(&self) -> Result<(u32, u32)> {
        let package = &self.model.package;
        package.default_size().ok_or_else(|| {
            Error::model(
                package.component(package.family.denoiser_folder()),
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
        let tagged;
        let request = if request.lora_prompt_tags {
            tagged = self.with_prompt_tags(request)?;
            &tagged
        } else {
            request
        };
        request.validate()?;
        let mut timings = Timings::default();
        let adapters = self.lora_weights(request)?;
        let adapters = adapters.as_deref();
        let output = match &request.plan {
            None => {
                let pass = self.resolve(request)?;
                let mut reporter = Reporter::new(started, pass.steps(), progress);
                self.run_stage(request, pass, adapters, &mut timings, &mut reporter, true)?
            }
            Some(plan) => {
                self.run_plan(request, plan, adapters, &mut timings, started, progress)?
            }
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
        adapters: Option<&StackWeights>,
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
        // Every stage is resolved (task, size, schedule) before the first runs, so a bad stage fails
        // early and progress knows the total.
        let passes = stages
            .iter()
            .enumerate()
            .map(|(i, stage)| {
                let mut probe = stage.clone();
                if i > 0 {
                    // Stands for the previous stage's latents: only their presence decides the task.
                    probe.init_latents = Some(ArrayD::zeros(vec![0]));
                }
                self.resolve(&probe)
            })
            .collect::<Result<Vec<_>>>()?;
        let total = passes.iter().map(Resolved::steps).sum();
        let mut reporter = Reporter::new(started, total, progress);
        reporter.stages = stages.len();
        let factor = self.model.package.vae_scale_factor;
        let mut previous: Option<Output> = None;
        let last = stages.len() - 1;
        for (i, (mut stage, pass)) in stages.into_iter().zip(passes).enumerate() {
            reporter.stage = i + 1;
            if let Some(prev) = previous.take() {
                let latents = prev
                    .latents
                    .into_dimensionality()
                    .map_err(|e| Error::InvalidArg(format!("stage latents: {e}")))?;
                let (width, height) = pass.size;
                let (h, w) = ((height / factor) as usize, (width / factor) as usize);
                let upscaled = resize(latents.view(), h, w, plan.stages[i].upscale);
                stage.init_latents = Some(upscaled.into_dyn());
            }
            previous =
                Some(self.run_stage(&stage, pass, adapters, timings, &mut reporter, i == last)?);
        }
        previous.ok_or_else(|| Error::InvalidArg("a plan needs at least one stage".into()))
    }

    /// Decides what a single-stage request does before anything runs: task, size and schedule.
    fn resolve(&self, request: &Request) -> Result<Resolved> {
        let task = Task::of(self.model.package.family, request)?;
        let size = self.output_size(request)?;
        let (scheduler, start) = self.schedule(request, task, size)?;
        Ok(Resolved {
            task,
            size,
            scheduler,
            start,
        })
    }

    /// Builds the request's scheduler and the index of the first step to run: diffusers'
    /// `get_timesteps`, `t_start = steps - min(int(steps * strength), steps)` (SD3 and FLUX:
    /// `int(steps - min(steps * strength, steps))`), times the scheduler's order.
    fn schedule(
        &self,
        request: &Request,
        task: Task,
        (width, height): (u32, u32),
    ) -> Result<(Box<dyn Scheduler>, usize)> {
        let package = &self.model.package;
        let mut scheduler = self.scheduler_for(request)?;
        let steps = request.steps;
        let config = &package.scheduler_config;
        let dynamic = config
            .get("use_dynamic_shifting")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let tokens = |patch: u32| {
            let f = package.vae_scale_factor * patch;
            ((height / f) * (width / f)) as usize
        };
        match package.family {
            Family::Flux => {
                // FluxPipeline's own schedule: sigmas linspace(1, 1/n, n), shifted by mu.
                let sigmas = flux::linspace(1.0, 1.0 / steps as f64, steps);
                let mu = dynamic.then(|| flux::shift_mu(config, tokens(2)));
                scheduler.set_custom_sigmas(&sigmas, mu)?;
            }
            Family::Sd3 if dynamic => {
                let patch = package
                    .denoiser_config
                    .get("patch_size")
                    .and_then(Value::as_u64)
                    .unwrap_or(2) as u32;
                scheduler.set_timesteps_with_mu(steps, flux::shift_mu(config, tokens(patch)))?;
            }
            _ => scheduler.set_timesteps(steps)?,
        }
        let Some(strength) = task.strength(package.family, request) else {
            return Ok((scheduler, 0));
        };
        let skipped = if package.family.is_flow() {
            (steps as f64 - (steps as f64 * strength).min(steps as f64)).max(0.0) as usize
        } else {
            steps - ((steps as f64 * strength) as usize).min(steps)
        };
        let start = skipped * scheduler.order();
        // diffusers refuses this too; PNDM's schedule has one entry more than steps, so the
        // length of the truncated schedule alone would let 0 requested steps through.
        if skipped >= steps || start >= scheduler.timesteps().len() {
            return Err(Error::InvalidArg(format!(
                "strength {strength} with {steps} steps leaves no denoising step to run \
                 (steps x strength must be at least 1)"
            )));
        }
        Ok((scheduler, start))
    }

    /// One diffusion pass: the whole request without a plan, or one stage of a plan.
    #[allow(clippy::too_many_arguments)]
    fn run_stage(
        &self,
        request: &Request,
        pass: Resolved,
        adapters: Option<&StackWeights>,
        timings: &mut Timings,
        reporter: &mut Reporter<'_>,
        decode: bool,
    ) -> Result<Output> {
        let model = &self.model;
        let family = model.package.family;
        let Resolved {
            task,
            size: (width, height),
            mut scheduler,
            start,
        } = pass;
        let unet = model.denoiser.unet();
        let guidance = match family {
            Family::InstructPix2Pix
                if request.guidance_scale > 1.0 && request.image_guidance_scale >= 1.0 =>
            {
                Guidance::Pix2Pix {
                    text: request.guidance_scale,
                    image: request.image_guidance_scale,
                }
            }
            // FLUX takes the scale as an input of a guidance-distilled transformer.
            Family::InstructPix2Pix | Family::Flux => Guidance::None,
            // LCM-distilled UNets take the scale as an embedding instead of a CFG batch.
            _ if unet.is_some_and(|u| u.timestep_cond.is_some()) => Guidance::None,
            _ if request.uses_guidance() => Guidance::Cfg {
                scale: request.guidance_scale,
            },
            _ => Guidance::None,
        };
        let cond = conditioning::encode(model, request, guidance, adapters, timings)?;
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
        let fixed = self.fixed_inputs(request, cond, guidance, &latents, (width, height))?;
        let packed = family == Family::Flux;
        if packed {
            latents = flux::pack(as_4d(&latents)?).into_dyn();
        }
        let step = Step {
            denoiser: &model.denoiser,
            fixed,
            guidance,
            extra: extra.as_ref(),
            blend: blend.as_ref(),
            cancel: request,
            weights: adapters
                .and_then(|a| a.for_graph(model.denoiser.graph()))
                .cloned(),
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
        // Decoding NaN or infinity would write an all-black image as if nothing went wrong; the
        // check covers the VAE's scaling, which is where huge finite latents overflow.
        let (scale, shift) = (
            model.package.vae_scaling_factor(),
            model.package.vae_shift_factor(),
        );
        if latents.iter().any(|v| !(v / scale + shift).is_finite()) {
            return Err(Error::InvalidArg(format!(
                "the latents are not finite (NaN or infinity, or overflowing float32 once scaled \
                 for the VAE) after denoising stage {} of {}: the input latents or the guidance \
                 are out of range",
                reporter.stage, reporter.stages
            )));
        }
        if packed {
            let factor = model.package.vae_scale_factor;
            let (h, w) = ((height / factor) as usize, (width / factor) as usize);
            let tokens = latents
                .into_dimensionality()
                .map_err(|e| Error::internal("transformer", e))?;
            latents = flux::unpack(tokens.view(), h, w).into_dyn();
        }

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
            metadata: Default::default(),
        })
    }

    /// The denoiser inputs that are the same at every step, by graph input name.
    fn fixed_inputs(
        &self,
        request: &Request,
        cond: Conditioning,
        guidance: Guidance,
        latents: &ArrayD<f32>,
        size: (u32, u32),
    ) -> Result<Vec<(&'static str, Tensor)>> {
        let batch = guidance.groups() * request.num_images;
        let Conditioning { hidden, pooled } = cond;
        let mut fixed = vec![("encoder_hidden_states", Tensor::F32(hidden))];
        match &self.model.denoiser {
            Denoiser::Unet(unet) => {
                if let (Some(width), Some(pooled)) = (unet.time_ids, pooled) {
                    fixed.push(("text_embeds", Tensor::F32(pooled)));
                    let ids = time_ids(width, size, guidance, request)?;
                    fixed.push(("time_ids", Tensor::F32(ids)));
                }
                if let Some(dim) = unet.timestep_cond {
                    let w = request.guidance_scale - 1.0;
                    let embedding = scale_embedding(w, dim, batch).into_dyn();
                    fixed.push(("timestep_cond", Tensor::F32(embedding)));
                }
            }
            Denoiser::Transformer(transformer) => {
                let pooled = pooled.ok_or_else(|| {
                    Error::internal("text_encoder", "no pooled embeddings for the transformer")
                })?;
                fixed.push(("pooled_projections", Tensor::F32(pooled)));
                if transformer.kind == TransformerKind::Flux {
                    let (h, w) = (latents.shape()[2], latents.shape()[3]);
                    let text_len = fixed[0].1.shape()[1];
                    let ids = |a: ndarray::Array2<f32>| match transformer.ids_dtype {
                        ElementType::I64 => Tensor::I64(a.mapv(|v| v as i64).into_dyn()),
                        _ => Tensor::F32(a.into_dyn()),
                    };
                    fixed.push(("img_ids", ids(flux::image_ids(h, w))));
                    fixed.push(("txt_ids", ids(ndarray::Array2::zeros((text_len, 3)))));
                    if transformer.guidance {
                        let g = ArrayD::from_elem(vec![batch], request.guidance_scale);
                        fixed.push(("guidance", Tensor::F32(g)));
                    }
                }
            }
        }
        Ok(fixed)
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
        check_size(width, height, self.model.package.size_multiple())?;
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
        let scheduler = schedulers::create(request.scheduler.as_deref(), &config)?;
        let family = self.model.package.family;
        let flow = scheduler.name() == "flow_match_euler";
        if flow != family.is_flow() {
            // The two kinds of denoisers predict different things (noise or v vs. velocity), so a
            // mismatched scheduler would run without error and draw garbage.
            let works_with = if flow {
                "flow-matching packages (stable-diffusion-3, flux)"
            } else {
                "UNet packages (stable-diffusion, stable-diffusion-inpaint, instruct-pix2pix, \
                 stable-diffusion-xl)"
            };
            let instead = if family.is_flow() {
                "flow_match_euler"
            } else {
                "any scheduler but flow_match_euler"
            };
            return Err(Error::Unsupported(format!(
                "scheduler {} works with {works_with}, not with this {family} package: use {instead}",
                scheduler.name()
            )));
        }
        Ok(scheduler)
    }
}

/// A pass decided before it runs.
struct Resolved {
    task: Task,
    size: (u32, u32),
    scheduler: Box<dyn Scheduler>,
    /// Index of the first scheduler step to run (strength skips the ones before).
    start: usize,
}

impl Resolved {
    /// Denoiser calls the pass makes.
    fn steps(&self) -> usize {
        self.scheduler.timesteps().len() - self.start
    }
}

/// Turns per-stage step numbers into request-wide progress and forwards them to the caller.
struct Reporter<'a> {
    started: Instant,
    done: usize,
    total: usize,
    stage: usize,
    stages: usize,
    callback: &'a mut dyn FnMut(&Progress) -> bool,
}

impl<'a> Reporter<'a> {
    fn new(started: Instant, total: usize, callback: &'a mut dyn FnMut(&Progress) -> bool) -> Self {
        Reporter {
            started,
            done: 0,
            total,
            stage: 1,
            stages: 1,
            callback,
        }
    }

    /// Counts one finished step; `false` means the caller cancelled.
    fn report(&mut self) -> bool {
        self.done += 1;
        (self.callback)(&Progress {
            step: self.done,
            total: self.total,
            stage: self.stage,
            stages: self.stages,
            elapsed: self.started.elapsed(),
        })
    }
}

/// Latents as the 4-d [n, c, h, w] view every family starts from.
fn as_4d(latents: &ArrayD<f32>) -> Result<ndarray::ArrayView4<'_, f32>> {
    latents
        .view()
        .into_dimensionality()
        .map_err(|e| Error::InvalidArg(format!("latents must be [n, c, h, w]: {e}")))
}

/// A seed for requests that did not give one; reported back so the image can be reproduced.
fn clock_seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    (nanos as u64) & 0x7fff_ffff_ffff_ffff
}
