//! Euler sampler of Karras et al. (2022), diffusers' `EulerDiscreteScheduler`.
use ndarray::{ArrayViewD, ArrayViewMutD};
use serde_json::Value;

use super::common::{BetaDefaults, Prediction};
use super::config::Config;
use super::sigmas::{euler_update, SigmaRamp, SigmaSchedule};
use super::{Scheduler, SchedulerError};
use crate::rng::NoiseSource;

const NAME: &str = "euler";

/// Deterministic Euler steps in sigma space (no churn).
pub struct EulerDiscreteScheduler {
    sched: SigmaSchedule,
    prediction: Prediction,
    final_sigma_min: bool,
}

impl EulerDiscreteScheduler {
    pub fn from_config(config: &Value) -> Result<Self, SchedulerError> {
        let cfg = Config::new(config, "EulerDiscreteScheduler")?;
        let sched = SigmaSchedule::read(
            &cfg,
            BetaDefaults::DDPM,
            SigmaRamp::read(&cfg)?,
            cfg.f64_opt("sigma_min")?,
            cfg.f64_opt("sigma_max")?,
        )?;
        let prediction = Prediction::read(
            &cfg,
            &["epsilon", "v_prediction", "sample", "original_sample"],
        )?;
        cfg.choice("interpolation_type", "linear", &["linear"])?;
        if cfg.str("timestep_type", "discrete")? == "continuous"
            && prediction == Prediction::Velocity
        {
            return Err(cfg.unsupported(
                "timestep_type",
                "\"continuous\" with v_prediction",
                "\"discrete\"",
            ));
        }
        let final_type = cfg.choice("final_sigmas_type", "zero", &["zero", "sigma_min"])?;
        Ok(Self {
            sched,
            prediction,
            final_sigma_min: final_type == "sigma_min",
        })
    }

    /// Sigmas per step plus the final one (0, or sigma_min with `final_sigmas_type`).
    pub fn sigmas(&self) -> &[f32] {
        &self.sched.sigmas
    }
}

impl Scheduler for EulerDiscreteScheduler {
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<(), SchedulerError> {
        // diffusers' "sigma_min" final sigma is the first training sigma.
        let last = if self.final_sigma_min {
            self.sched.train_sigmas[0]
        } else {
            0.0
        };
        self.sched.set_timesteps(NAME, num_inference_steps, last)
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
        _noise: &mut dyn NoiseSource,
    ) -> Result<(), SchedulerError> {
        let (sigma, next) = self
            .sched
            .step_sigmas(NAME, step_index, &model_output, &sample)?;
        euler_update(
            &mut sample,
            &model_output,
            self.prediction,
            sigma,
            next - sigma,
        );
        Ok(())
    }

    fn add_noise(&self, original: ArrayViewMutD<f32>, noise: ArrayViewD<f32>, step_index: usize) {
        self.sched.add_noise(original, noise, step_index);
    }

    fn name(&self) -> &'static str {
        NAME
    }
}
