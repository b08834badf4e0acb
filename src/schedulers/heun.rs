//! Heun's second-order method (Karras et al. 2022), diffusers' `HeunDiscreteScheduler`.
//! Every interval but the last takes two model calls: an Euler predictor and a trapezoid
//! corrector, so the timestep list repeats each interior entry.
use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD, Zip};
use serde_json::Value;

use super::common::{
    check_index, check_shapes, check_steps, clamp, init_sigma, BetaDefaults, NoiseSchedule,
    Prediction, Spacing,
};
use super::config::Config;
use super::euler::{
    add_noise_sigma, predict_x0, scale_by_sigma, sigma_schedule, SigmaParams, SigmaRamp,
};
use super::{Scheduler, SchedulerError};
use crate::rng::NoiseSource;

const NAME: &str = "heun";

/// State carried from the predictor call to the corrector call.
struct Predictor {
    derivative: ArrayD<f32>,
    dt: f32,
    sample: ArrayD<f32>,
}

/// Heun (2nd order) sampler in sigma space.
pub struct HeunDiscreteScheduler {
    train_sigmas: Vec<f32>,
    spacing: Spacing,
    steps_offset: i64,
    prediction: Prediction,
    ramp: SigmaRamp,
    clip_sample: Option<f32>,
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
    pending: Option<Predictor>,
}

impl HeunDiscreteScheduler {
    pub fn from_config(config: &Value) -> Result<Self, SchedulerError> {
        let cfg = Config::new(config, "HeunDiscreteScheduler")?;
        let sched = NoiseSchedule::read(
            &cfg,
            BetaDefaults {
                beta_start: 0.00085,
                beta_end: 0.012,
                beta_schedule: "linear",
                allow_exp: true,
                zero_snr_key: false,
            },
        )?;
        let clip = cfg.bool("clip_sample", false)?;
        let range = cfg.f64("clip_sample_range", 1.0)? as f32;
        Ok(Self {
            train_sigmas: sched.sigmas(),
            spacing: Spacing::read(&cfg, "linspace")?,
            steps_offset: cfg.i64("steps_offset", 0)?,
            prediction: Prediction::read(&cfg, &["epsilon", "v_prediction", "sample"])?,
            ramp: SigmaRamp::read(&cfg)?,
            clip_sample: clip.then_some(range),
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            pending: None,
        })
    }

    /// Per-call sigmas (interior entries repeated) plus the final 0.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }
}

impl Scheduler for HeunDiscreteScheduler {
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<(), SchedulerError> {
        check_steps(NAME, num_inference_steps, self.train_sigmas.len())?;
        // The Heun config has no sigma_min/sigma_max keys: ramps span the interpolated range.
        let params = SigmaParams {
            train_sigmas: &self.train_sigmas,
            spacing: self.spacing,
            steps_offset: self.steps_offset,
            ramp: self.ramp,
            sigma_min: None,
            sigma_max: None,
        };
        let (ts, sig) = sigma_schedule(&params, num_inference_steps);
        let sig: Vec<f32> = sig
            .iter()
            .map(|&s| s as f32)
            .chain(std::iter::once(0.0))
            .collect();
        let n = sig.len();
        self.sigmas = std::iter::once(sig[0])
            .chain(sig[1..n - 1].iter().flat_map(|&s| [s, s]))
            .chain(std::iter::once(sig[n - 1]))
            .collect();
        self.timesteps = std::iter::once(ts[0])
            .chain(ts[1..].iter().flat_map(|&t| [t, t]))
            .collect();
        self.pending = None;
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
        _noise: &mut dyn NoiseSource,
    ) -> Result<(), SchedulerError> {
        check_index(NAME, step_index, self.timesteps.len())?;
        check_shapes(NAME, &model_output, &sample)?;
        if step_index == 0 {
            // A fresh loop always starts with a predictor call.
            self.pending = None;
        }
        let (pred, clip) = (self.prediction, self.clip_sample);
        let x0_of = |s: f32, m: f32, sigma: f32| {
            let x0 = predict_x0(pred, s, m, sigma);
            match clip {
                Some(r) => clamp(x0, -r, r),
                None => x0,
            }
        };
        match self.pending.take() {
            None => {
                let sigma = self.sigmas[step_index];
                let dt = self.sigmas[step_index + 1] - sigma;
                let mut derivative = model_output.to_owned();
                Zip::from(&mut derivative)
                    .and(&sample)
                    .for_each(|d, &s| *d = (s - x0_of(s, *d, sigma)) / sigma);
                let start = sample.to_owned();
                Zip::from(&mut sample)
                    .and(&derivative)
                    .for_each(|s, &d| *s += d * dt);
                self.pending = Some(Predictor {
                    derivative,
                    dt,
                    sample: start,
                });
            }
            Some(p) => {
                let sigma_next = self.sigmas[step_index];
                Zip::from(&mut sample)
                    .and(&model_output)
                    .and(&p.derivative)
                    .and(&p.sample)
                    .for_each(|s, &m, &d1, &start| {
                        let d2 = (*s - x0_of(*s, m, sigma_next)) / sigma_next;
                        *s = start + (d1 + d2) / 2.0 * p.dt;
                    });
            }
        }
        Ok(())
    }

    fn add_noise(&self, original: ArrayViewMutD<f32>, noise: ArrayViewD<f32>, step_index: usize) {
        add_noise_sigma(original, noise, self.sigmas.get(step_index).copied());
    }

    fn name(&self) -> &'static str {
        NAME
    }
}
