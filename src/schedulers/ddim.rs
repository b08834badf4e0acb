//! DDIM (Song et al. 2020), diffusers' `DDIMScheduler`.
use ndarray::{ArrayViewD, ArrayViewMutD, Zip};
use serde_json::Value;

use super::alphas::{ddim_timesteps, AlphaSchedule};
use super::common::{check_steps, mix_noise, BetaDefaults, ClipSample, Prediction, Spacing};
use super::config::Config;
use super::{Scheduler, SchedulerError};
use crate::rng::NoiseSource;

const NAME: &str = "ddim";

/// Denoising diffusion implicit models; `eta > 0` adds DDPM-style noise.
pub struct DdimScheduler {
    alphas: AlphaSchedule,
    steps_offset: i64,
    spacing: Spacing,
    prediction: Prediction,
    clip_sample: ClipSample,
    eta: f32,
    steps: usize,
}

impl DdimScheduler {
    pub fn from_config(config: &Value) -> Result<Self, SchedulerError> {
        let cfg = Config::new(config, "DDIMScheduler")?;
        let alphas = AlphaSchedule::read(&cfg, BetaDefaults::DDPM, true)?;
        cfg.require_false("thresholding")?;
        Ok(Self {
            alphas,
            clip_sample: ClipSample::read(&cfg, true)?,
            steps_offset: cfg.i64("steps_offset", 0)?,
            spacing: Spacing::read(&cfg, "leading")?,
            prediction: Prediction::read(&cfg, &["epsilon", "sample", "v_prediction"])?,
            eta: cfg.f64("eta", 0.0)? as f32,
            steps: 0,
        })
    }
}

impl Scheduler for DdimScheduler {
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<(), SchedulerError> {
        let n_train = self.alphas.n_train();
        check_steps(NAME, num_inference_steps, n_train)?;
        let ts = ddim_timesteps(
            NAME,
            self.spacing,
            n_train,
            num_inference_steps,
            self.steps_offset,
        )?;
        self.steps = num_inference_steps;
        self.alphas.set_timesteps(ts);
        Ok(())
    }

    fn timesteps(&self) -> &[f32] {
        self.alphas.timesteps()
    }

    fn step(
        &mut self,
        model_output: ArrayViewD<f32>,
        step_index: usize,
        mut sample: ArrayViewMutD<f32>,
        noise: &mut dyn NoiseSource,
    ) -> Result<(), SchedulerError> {
        let t = self
            .alphas
            .step_timestep(NAME, step_index, &model_output, &sample)?;
        // diffusers steps back by the leading stride whatever the spacing.
        let prev_t = t - (self.alphas.n_train() / self.steps) as i64;
        let a_t = self.alphas.alpha_at(t);
        let a_prev = self.alphas.alpha_at(prev_t);
        let b_t = 1.0 - a_t;
        let (sa_t, sb_t) = (a_t.sqrt(), b_t.sqrt());
        let b_prev = 1.0 - a_prev;
        let variance = (b_prev / b_t) * (1.0 - a_t / a_prev);
        let std_dev = self.eta * variance.sqrt();
        let dir_coef = (1.0 - a_prev - std_dev * std_dev).sqrt();
        let sa_prev = a_prev.sqrt();
        let (pred, clip) = (self.prediction, self.clip_sample);
        Zip::from(&mut sample).and(&model_output).for_each(|s, &m| {
            let (x0, eps) = match pred {
                Prediction::Epsilon => ((*s - sb_t * m) / sa_t, m),
                Prediction::Sample => (m, (*s - sa_t * m) / sb_t),
                Prediction::Velocity => (sa_t * *s - sb_t * m, sa_t * m + sb_t * *s),
            };
            *s = sa_prev * clip.apply(x0) + dir_coef * eps;
        });
        if self.eta > 0.0 {
            let z = noise.randn(model_output.shape());
            mix_noise(sample, z.view(), 1.0, std_dev);
        }
        Ok(())
    }

    fn add_noise(&self, original: ArrayViewMutD<f32>, noise: ArrayViewD<f32>, step_index: usize) {
        self.alphas.add_noise(original, noise, step_index);
    }

    fn name(&self) -> &'static str {
        NAME
    }
}
