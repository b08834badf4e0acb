//! Ancestral Euler sampler, diffusers' `EulerAncestralDiscreteScheduler`: each step
//! overshoots to `sigma_down` and re-injects fresh noise of scale `sigma_up`.
use ndarray::{ArrayViewD, ArrayViewMutD};
use serde_json::Value;

use super::common::{mix_noise, BetaDefaults, Prediction};
use super::config::Config;
use super::sigmas::{euler_update, SigmaRamp, SigmaSchedule};
use super::{Scheduler, SchedulerError};
use crate::rng::NoiseSource;

const NAME: &str = "euler_a";

/// Stochastic Euler; draws one `randn(model_output.shape)` per step.
pub struct EulerAncestralScheduler {
    sched: SigmaSchedule,
    prediction: Prediction,
}

impl EulerAncestralScheduler {
    pub fn from_config(config: &Value) -> Result<Self, SchedulerError> {
        let cfg = Config::new(config, "EulerAncestralDiscreteScheduler")?;
        // The class has no sigma-ramp keys.
        let sched = SigmaSchedule::read(
            &cfg,
            BetaDefaults::DDPM,
            SigmaRamp::Interpolated,
            None,
            None,
        )?;
        Ok(Self {
            sched,
            // diffusers raises NotImplementedError for "sample".
            prediction: Prediction::read(&cfg, &["epsilon", "v_prediction"])?,
        })
    }

    /// Sigmas per step plus the final 0.
    pub fn sigmas(&self) -> &[f32] {
        &self.sched.sigmas
    }
}

impl Scheduler for EulerAncestralScheduler {
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<(), SchedulerError> {
        self.sched.set_timesteps(NAME, num_inference_steps, 0.0)
    }

    fn timesteps(&self) -> &[f32] {
        &self.sched.timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        self.sched.init_noise_sigma()
    }

    fn scale_model_input(&self, sample: ArrayViewMutD<f32>, step_index: usize) {
        self.sched.scale_model_input(sample, step_index);
    }

    fn step(
        &mut self,
        model_output: ArrayViewD<f32>,
        step_index: usize,
        mut sample: ArrayViewMutD<f32>,
        noise: &mut dyn NoiseSource,
    ) -> Result<(), SchedulerError> {
        let (sigma, sigma_to) = self
            .sched
            .step_sigmas(NAME, step_index, &model_output, &sample)?;
        let sigma_up =
            (sigma_to * sigma_to * (sigma * sigma - sigma_to * sigma_to) / (sigma * sigma)).sqrt();
        let sigma_down = (sigma_to * sigma_to - sigma_up * sigma_up).sqrt();
        let dt = sigma_down - sigma;
        euler_update(&mut sample, &model_output, self.prediction, sigma, dt);
        let z = noise.randn(model_output.shape());
        mix_noise(sample, z.view(), 1.0, sigma_up);
        Ok(())
    }

    fn add_noise(&self, original: ArrayViewMutD<f32>, noise: ArrayViewD<f32>, step_index: usize) {
        self.sched.add_noise(original, noise, step_index);
    }

    fn name(&self) -> &'static str {
        NAME
    }
}
