//! Latent consistency models (Luo et al. 2023), diffusers' `LCMScheduler`: each step
//! jumps to a consistency-model x0 estimate and re-noises it to the next timestep.
use ndarray::{ArrayViewD, ArrayViewMutD, Zip};
use serde_json::Value;

use super::alphas::AlphaSchedule;
use super::common::{check_steps, mix_noise, np_linspace, BetaDefaults, ClipSample, Prediction};
use super::config::Config;
use super::{Scheduler, SchedulerError};
use crate::rng::NoiseSource;

const NAME: &str = "lcm";

/// Multistep consistency sampling; draws noise on every step but the last.
pub struct LcmScheduler {
    alphas: AlphaSchedule,
    original_steps: usize,
    prediction: Prediction,
    clip_sample: ClipSample,
    timestep_scaling: f32,
}

impl LcmScheduler {
    pub fn from_config(config: &Value) -> Result<Self, SchedulerError> {
        let cfg = Config::new(config, "LCMScheduler")?;
        let betas = BetaDefaults {
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: "scaled_linear",
            allow_exp: false,
            zero_snr_key: true,
        };
        let alphas = AlphaSchedule::read(&cfg, betas, true)?;
        cfg.require_false("thresholding")?;
        Ok(Self {
            alphas,
            clip_sample: ClipSample::read(&cfg, false)?,
            original_steps: cfg.usize("original_inference_steps", 50)?,
            prediction: Prediction::read(&cfg, &["epsilon", "sample", "v_prediction"])?,
            timestep_scaling: cfg.f64("timestep_scaling", 10.0)? as f32,
        })
    }

    fn invalid(reason: String) -> SchedulerError {
        SchedulerError::InvalidSchedule {
            scheduler: NAME,
            reason,
        }
    }
}

impl Scheduler for LcmScheduler {
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<(), SchedulerError> {
        let n = num_inference_steps;
        let n_train = self.alphas.n_train();
        let orig = self.original_steps;
        if orig == 0 || orig > n_train {
            return Err(Self::invalid(format!(
                "original_inference_steps {orig} must be between 1 and {n_train}"
            )));
        }
        check_steps(NAME, n, n_train)?;
        if n > orig {
            return Err(Self::invalid(format!(
                "num_inference_steps {n} cannot exceed original_inference_steps {orig}"
            )));
        }
        // The distillation schedule: every k-th training step, newest first.
        let k = (n_train / orig) as i64;
        let origin: Vec<i64> = (1..=orig as i64).rev().map(|i| i * k - 1).collect();
        let ts: Vec<i64> = np_linspace(0.0, orig as f64, n, false)
            .iter()
            .map(|&x| origin[(x.floor() as usize).min(orig - 1)])
            .collect();
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
        let ts = self.alphas.timesteps_i();
        let prev_t = ts.get(step_index + 1).copied().unwrap_or(t);
        let a_t = self.alphas.alpha_at(t);
        let a_prev = self.alphas.alpha_at(prev_t);
        let (sa_t, sb_t) = (a_t.sqrt(), (1.0 - a_t).sqrt());
        // Boundary-condition scalings with sigma_data = 0.5 (reciprocal form as torch's rdiv).
        let scaled = t as f32 * self.timestep_scaling;
        let c_skip = 1.0 / (scaled * scaled + 0.25) * 0.25;
        let c_out = scaled / (scaled * scaled + 0.25).sqrt();
        let (pred, clip) = (self.prediction, self.clip_sample);
        Zip::from(&mut sample).and(&model_output).for_each(|s, &m| {
            let x0 = match pred {
                Prediction::Epsilon => (*s - sb_t * m) / sa_t,
                Prediction::Sample => m,
                Prediction::Velocity => sa_t * *s - sb_t * m,
            };
            *s = c_out * clip.apply(x0) + c_skip * *s;
        });
        if step_index != ts.len() - 1 {
            let z = noise.randn(model_output.shape());
            mix_noise(sample, z.view(), a_prev.sqrt(), (1.0 - a_prev).sqrt());
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
