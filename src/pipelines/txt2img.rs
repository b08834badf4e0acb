//! Text-to-image for SD 1.x/2.x packages, in the order diffusers' StableDiffusionPipeline runs it.
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ndarray::{concatenate, s, Array2, ArrayD, ArrayViewD, Axis, Ix3, Ix4, Zip};
use serde_json::Value;

use super::request::{check_size, Progress, Request};
use crate::error::{Error, Result};
use crate::image::Image;
use crate::model::{LoadedModel, TimestepKind, TimestepShape};
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
        let package = &self.model.package;
        let factor = package.vae_scale_factor;
        let (width, height) = match (request.width, request.height) {
            (Some(w), Some(h)) => (w, h),
            (w, h) => {
                // Only the size is needed here: building the default scheduler would be wasted work.
                let (dw, dh) = self.default_size()?;
                (w.unwrap_or(dw), h.unwrap_or(dh))
            }
        };
        check_size(width, height, factor)?;

        let mut scheduler = self.scheduler_for(request)?;
        scheduler.set_timesteps(request.steps)?;
        let mut timings = Timings::default();

        let cond = self.encode_prompts(request, &mut timings)?;
        let n = request.num_images;
        let shape = [
            n,
            package.latent_channels(),
            (height / factor) as usize,
            (width / factor) as usize,
        ];
        let seed = request.seed.unwrap_or_else(clock_seed);
        let mut noise = rng::generator(request.rng, seed);
        let mut latents = match &request.latents {
            Some(given) if given.shape() == shape => given.clone(),
            Some(given) => {
                return Err(Error::InvalidArg(format!(
                    "initial latents have shape {:?}, this request needs {shape:?}",
                    given.shape()
                )))
            }
            None => noise.randn(&shape),
        };
        latents *= scheduler.init_noise_sigma();

        let guided = request.uses_guidance();
        let batch = if guided { 2 * n } else { n };
        let mut model_input = ArrayD::<f32>::zeros(vec![batch, shape[1], shape[2], shape[3]]);
        let timesteps = scheduler.timesteps().to_vec();
        let unet = &self.model.unet;
        for (i, &t) in timesteps.iter().enumerate() {
            request.check_cancelled()?;
            let step_started = Instant::now();
            for copy in 0..batch / n {
                model_input
                    .slice_mut(s![copy * n..(copy + 1) * n, .., .., ..])
                    .assign(&latents);
            }
            scheduler.scale_model_input(model_input.view_mut(), i);
            let timestep = TimestepTensor::new(unet.timestep, batch, t);
            let (prediction, ort) = unet.graph.run(
                &[
                    ("sample", Input::F32(model_input.view())),
                    ("timestep", timestep.input()),
                    ("encoder_hidden_states", Input::F32(cond.view())),
                ],
                "out_sample",
            )?;
            timings.ort_run += ort;
            let mut prediction = prediction;
            let guided_prediction = if guided {
                apply_guidance(&mut prediction, request.guidance_scale)
            } else {
                prediction.view()
            };
            scheduler.step(guided_prediction, i, latents.view_mut(), noise.as_mut())?;
            timings.denoise_steps.push(step_started.elapsed());
            let report = Progress {
                step: i + 1,
                total: timesteps.len(),
                elapsed: started.elapsed(),
            };
            if !progress(&report) {
                return Err(Error::Cancelled);
            }
        }
        request.check_cancelled()?;

        let images = self.decode(&latents, &mut timings)?;
        timings.total = started.elapsed();
        Ok(Output {
            images,
            latents,
            seed,
            width,
            height,
            scheduler: scheduler.name().to_string(),
            timings,
        })
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

    /// Tokenizes and encodes the prompts into the UNet's `encoder_hidden_states`:
    /// [negative x N, prompt x N] with guidance, [prompt x N] without.
    fn encode_prompts(&self, request: &Request, timings: &mut Timings) -> Result<ArrayD<f32>> {
        let started = Instant::now();
        let tokenizer = &self.model.tokenizer;
        let mut texts = vec![request.prompt.as_str()];
        if request.uses_guidance() {
            texts.insert(0, request.negative_prompt.as_deref().unwrap_or(""));
        }
        let mut ids = Vec::with_capacity(texts.len() * tokenizer.max_length());
        for text in &texts {
            ids.extend(tokenizer.encode(text)?);
        }
        let ids = Array2::from_shape_vec((texts.len(), tokenizer.max_length()), ids)
            .map_err(|e| Error::InvalidArg(format!("tokenizer output: {e}")))?
            .into_dyn();
        timings.tokenize = started.elapsed();

        let started = Instant::now();
        let encoder = &self.model.text_encoder;
        let ids32;
        let input = match encoder.ids_dtype {
            ElementType::I32 => {
                ids32 = ids.mapv(|v| v as i32);
                Input::I32(ids32.view())
            }
            _ => Input::I64(ids.view()),
        };
        let (hidden, ort) = encoder
            .graph
            .run(&[("input_ids", input)], "last_hidden_state")?;
        timings.ort_run += ort;
        let hidden = hidden
            .into_dimensionality::<Ix3>()
            .map_err(|e| Error::backend("text_encoder", format!("last_hidden_state: {e}")))?;
        let n = request.num_images;
        let rows: Vec<_> = (0..texts.len())
            .flat_map(|r| std::iter::repeat_n(r, n))
            .map(|r| hidden.slice(s![r..r + 1, .., ..]))
            .collect();
        let embeddings = concatenate(Axis(0), &rows)
            .map_err(|e| Error::backend("text_encoder", e))?
            .into_dyn();
        timings.text_encode = started.elapsed();
        Ok(embeddings)
    }

    /// Decodes latents with the VAE (latents / scaling_factor + shift_factor) into RGB8 images.
    fn decode(&self, latents: &ArrayD<f32>, timings: &mut Timings) -> Result<Vec<Image>> {
        let started = Instant::now();
        let package = &self.model.package;
        let (scale, shift) = (package.vae_scaling_factor(), package.vae_shift_factor());
        let scaled = latents.mapv(|v| v / scale + shift);
        let (decoded, ort) = self
            .model
            .vae_decoder
            .graph
            .run(&[("latent_sample", Input::F32(scaled.view()))], "sample")?;
        timings.ort_run += ort;
        let decoded = decoded
            .into_dimensionality::<Ix4>()
            .map_err(|e| Error::backend("vae_decoder", format!("sample: {e}")))?;
        if decoded.shape()[1] != 3 {
            return Err(Error::backend(
                "vae_decoder",
                format!("expected 3 channels, got {:?}", decoded.shape()),
            ));
        }
        let images = decoded.outer_iter().map(Image::from_vae_output).collect();
        timings.decode = started.elapsed();
        Ok(images)
    }
}

/// Classifier-free guidance in place, without allocating: `prediction` holds [uncond; text] along
/// axis 0, and its first half becomes `uncond + scale * (text - uncond)` (diffusers' float32 order).
pub fn apply_guidance(prediction: &mut ArrayD<f32>, scale: f32) -> ArrayViewD<'_, f32> {
    let n = prediction.shape()[0] / 2;
    let (mut uncond, text) = prediction.view_mut().split_at(Axis(0), n);
    Zip::from(&mut uncond)
        .and(&text)
        .for_each(|u, &t| *u += scale * (t - *u));
    prediction.slice_axis(Axis(0), (0..n).into())
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

/// A seed for requests that did not give one; reported back so the image can be reproduced.
fn clock_seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    (nanos as u64) & 0x7fff_ffff_ffff_ffff
}
