//! Heun's second-order method (Karras et al. 2022), diffusers' `HeunDiscreteScheduler`.
//! Every interval but the last takes two model calls: an Euler predictor and a trapezoid
//! corrector, so the timestep list repeats each interior entry.
use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD, Zip};
use serde_json::Value;

use super::common::{BetaDefaults, ClipSample, Prediction};
use super::config::Config;
use super::sigmas::{predict_x0, SigmaRamp, SigmaSchedule};
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
    sched: SigmaSchedule,
    prediction: Prediction,
    clip_sample: ClipSample,
    pending: Option<Predictor>,
}

impl HeunDiscreteScheduler {
    pub fn from_config(config: &Value) -> Result<Self, SchedulerError> {
        let cfg = Config::new(config, "HeunDiscreteScheduler")?;
        let betas = BetaDefaults {
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: "linear",
            allow_exp: true,
            zero_snr_key: false,
        };
        // The class has no sigma_min/sigma_max keys: ramps span the interpolated range.
        let sched = SigmaSchedule::read(&cfg, betas, SigmaRamp::read(&cfg)?, None, None)?;
        Ok(Self {
            sched,
            prediction: Prediction::read(&cfg, &["epsilon", "v_prediction", "sample"])?,
            clip_sample: ClipSample::read(&cfg, false)?,
            pending: None,
        })
    }

    /// Per-call sigmas (interior entries repeated) plus the final 0.
    pub fn sigmas(&self) -> &[f32] {
        &self.sched.sigmas
    }
}

impl Scheduler for HeunDiscreteScheduler {
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<(), SchedulerError> {
        self.sched.set_timesteps(NAME, num_inference_steps, 0.0)?;
        let (ts, sig) = (&self.sched.timesteps, &self.sched.sigmas);
        let n = sig.len();
        let sigmas = std::iter::once(sig[0])
            .chain(sig[1..n - 1].iter().flat_map(|&s| [s, s]))
            .chain(std::iter::once(sig[n - 1]))
            .collect();
        let timesteps = std::iter::once(ts[0])
            .chain(ts[1..].iter().flat_map(|&t| [t, t]))
            .collect();
        self.sched.sigmas = sigmas;
        self.sched.timesteps = timesteps;
        self.pending = None;
        Ok(())
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
        if step_index == 0 {
            // A fresh loop always starts with a predictor call.
            self.pending = None;
        }
        let (pred, clip) = (self.prediction, self.clip_sample);
        let x0_of = |s: f32, m: f32, sigma: f32| clip.apply(predict_x0(pred, s, m, sigma));
        match self.pending.take() {
            None => {
                let dt = next - sigma;
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
            // The corrector call's sigma is the end of the predictor's interval.
            Some(p) => {
                Zip::from(&mut sample)
                    .and(&model_output)
                    .and(&p.derivative)
                    .and(&p.sample)
                    .for_each(|s, &m, &d1, &start| {
                        let d2 = (*s - x0_of(*s, m, sigma)) / sigma;
                        *s = start + (d1 + d2) / 2.0 * p.dt;
                    });
            }
        }
        Ok(())
    }

    fn add_noise(&self, original: ArrayViewMutD<f32>, noise: ArrayViewD<f32>, step_index: usize) {
        self.sched.add_noise(original, noise, step_index);
    }

    fn name(&self) -> &'static str {
        NAME
    }

    fn order(&self) -> usize {
        2
    }
}
