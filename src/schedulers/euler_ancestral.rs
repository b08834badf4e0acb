//! Ancestral Euler sampler, diffusers' `EulerAncestralDiscreteScheduler`: each step
//! overshoots to `sigma_down` and re-injects fresh noise of scale `sigma_up`.
use ndarray::{ArrayViewD, ArrayViewMutD, Zip};
use serde_json::Value;

use super::common::{
    check_index, check_shapes, check_steps, init_sigma, BetaDefaults, NoiseSchedule, Prediction,
    Spacing,
};
use super::config::Config;
use super::euler::{
    add_noise_sigma, predict_x0, scale_by_sigma, sigma_schedule, SigmaParams, SigmaRamp,
};
use super::{Scheduler, SchedulerError};
use crate::rng::NoiseSource;

const NAME: &str = "euler_a";

/// Stochastic Euler; draws one `randn(model_output.shape)` per step.
pub struct EulerAncestralScheduler {
    train_sigmas: Vec<f32>,
    spacing: Spacing,
    steps_offset: i64,
    prediction: Prediction,
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
}

impl EulerAncestralScheduler {
    pub fn from_config(config: &Value) -> Result<Self, SchedulerError> {
        let cfg = Config::new(config, "EulerAncestralDiscreteScheduler")?;
        let mut sched = NoiseSchedule::read(
            &cfg,
            BetaDefaults {
                beta_start: 0.0001,
                beta_end: 0.02,
                beta_schedule: "linear",
                allow_exp: false,
                zero_snr_key: true,
            },
        )?;
        sched.pin_terminal_alpha();
        Ok(Self {
            train_sigmas: sched.sigmas(),
            spacing: Spacing::read(&cfg, "linspace")?,
            steps_offset: cfg.i64("steps_offset", 0)?,
            // diffusers raises NotImplementedError for "sample".
            prediction: Prediction::read(&cfg, &["epsilon", "v_prediction"])?,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
        })
    }

    /// Sigmas per step plus the final 0.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }
}

impl Scheduler for EulerAncestralScheduler {
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<(), SchedulerError> {
        check_steps(NAME, num_inference_steps, self.train_sigmas.len())?;
        let params = SigmaParams {
            train_sigmas: &self.train_sigmas,
            spacing: self.spacing,
            steps_offset: self.steps_offset,
            ramp: SigmaRamp::Interpolated,
            sigma_min: None,
            sigma_max: None,
        };
        let (ts, sig) = sigma_schedule(&params, num_inference_steps);
        self.sigmas = sig
            .iter()
            .map(|&s| s as f32)
            .chain(std::iter::once(0.0))
            .collect();
        self.timesteps = ts;
        Ok(())
    }

    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        if self.sigmas.is_empty() {
            init_sigma(&self.train_sigmas, self.spacing)
        } else {
            init_sigma(&self.sigmas, self.spacing)
        }
    }

    fn scale_model_input(&self, sample: ArrayViewMutD<f32>, step_index: usize) {
        scale_by_sigma(sample, self.sigmas.get(step_index).copied());
    }

    fn step(
        &mut self,
        model_output: ArrayViewD<f32>,
        step_index: usize,
        mut sample: ArrayViewMutD<f32>,
        noise: &mut dyn NoiseSource,
    ) -> Result<(), SchedulerError> {
        check_index(NAME, step_index, self.timesteps.len())?;
        check_shapes(NAME, &model_output, &sample)?;
        let sigma = self.sigmas[step_index];
        let sigma_to = self.sigmas[step_index + 1];
        let sigma_up =
            (sigma_to * sigma_to * (sigma * sigma - sigma_to * sigma_to) / (sigma * sigma)).sqrt();
        let sigma_down = (sigma_to * sigma_to - sigma_up * sigma_up).sqrt();
        let dt = sigma_down - sigma;
        let pred = self.prediction;
        Zip::from(&mut sample).and(&model_output).for_each(|s, &m| {
            let x0 = predict_x0(pred, *s, m, sigma);
            let derivative = (*s - x0) / sigma;
            *s += derivative * dt;
        });
        let z = noise.randn(model_output.shape());
        Zip::from(&mut sample)
            .and(&z)
            .for_each(|s, &n| *s += n * sigma_up);
        Ok(())
    }

    fn add_noise(&self, original: ArrayViewMutD<f32>, noise: ArrayViewD<f32>, step_index: usize) {
        add_noise_sigma(original, noise, self.sigmas.get(step_index).copied());
    }

    fn name(&self) -> &'static str {
        NAME
    }
}
