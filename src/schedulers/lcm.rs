//! Latent consistency models (Luo et al. 2023), diffusers' `LCMScheduler`: each step
//! jumps to a consistency-model x0 estimate and re-noises it to the next timestep.
use ndarray::{ArrayViewD, ArrayViewMutD, Zip};
use serde_json::Value;

use super::common::{
    check_index, check_shapes, check_steps, clamp, np_linspace, BetaDefaults, NoiseSchedule,
    Prediction,
};
use super::config::Config;
use super::ddim::add_noise_alpha;
use super::{Scheduler, SchedulerError};
use crate::rng::NoiseSource;

const NAME: &str = "lcm";

/// Multistep consistency sampling; draws noise on every step but the last.
pub struct LcmScheduler {
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    original_steps: usize,
    prediction: Prediction,
    clip_sample: Option<f32>,
    timestep_scaling: f32,
    timesteps_i: Vec<i64>,
    timesteps: Vec<f32>,
}

impl LcmScheduler {
    pub fn from_config(config: &Value) -> Result<Self, SchedulerError> {
        let cfg = Config::new(config, "LCMScheduler")?;
        let sched = NoiseSchedule::read(
            &cfg,
            BetaDefaults {
                beta_start: 0.00085,
                beta_end: 0.012,
                beta_schedule: "scaled_linear",
                allow_exp: false,
                zero_snr_key: true,
            },
        )?;
        cfg.require_false("thresholding")?;
        let ac = sched.alphas_cumprod;
        let clip = cfg.bool("clip_sample", false)?;
        let range = cfg.f64("clip_sample_range", 1.0)? as f32;
        Ok(Self {
            final_alpha_cumprod: if cfg.bool("set_alpha_to_one", true)? {
                1.0
            } else {
                ac[0]
            },
            original_steps: cfg.usize("original_inference_steps", 50)?,
            prediction: Prediction::read(&cfg, &["epsilon", "sample", "v_prediction"])?,
            clip_sample: clip.then_some(range),
            timestep_scaling: cfg.f64("timestep_scaling", 10.0)? as f32,
            alphas_cumprod: ac,
            timesteps_i: Vec::new(),
            timesteps: Vec::new(),
        })
    }

    fn alpha_at(&self, t: i64) -> f32 {
        usize::try_from(t)
            .ok()
            .and_then(|t| self.alphas_cumprod.get(t).copied())
            .unwrap_or(self.final_alpha_cumprod)
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
        let n_train = self.alphas_cumprod.len();
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
        self.timesteps = ts.iter().map(|&t| t as f32).collect();
        self.timesteps_i = ts;
        Ok(())
    }

    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        1.0
    }

    fn scale_model_input(&self, _sample: ArrayViewMutD<f32>, _step_index: usize) {}

    fn step(
        &mut self,
        model_output: ArrayViewD<f32>,
        step_index: usize,
        mut sample: ArrayViewMutD<f32>,
        noise: &mut dyn NoiseSource,
    ) -> Result<(), SchedulerError> {
        let len = self.timesteps_i.len();
        check_index(NAME, step_index, len)?;
        check_shapes(NAME, &model_output, &sample)?;
        let t = self.timesteps_i[step_index];
        let prev_t = self.timesteps_i.get(step_index + 1).copied().unwrap_or(t);
        let a_t = self.alpha_at(t);
        let a_prev = if prev_t >= 0 {
            self.alpha_at(prev_t)
        } else {
            self.final_alpha_cumprod
        };
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
            let x0 = match clip {
                Some(r) => clamp(x0, -r, r),
                None => x0,
            };
            *s = c_out * x0 + c_skip * *s;
        });
        if step_index != len - 1 {
            let z = noise.randn(model_output.shape());
            let (sa_p, sb_p) = (a_prev.sqrt(), (1.0 - a_prev).sqrt());
            Zip::from(&mut sample)
                .and(&z)
                .for_each(|s, &n| *s = sa_p * *s + sb_p * n);
        }
        Ok(())
    }

    fn add_noise(&self, original: ArrayViewMutD<f32>, noise: ArrayViewD<f32>, step_index: usize) {
        if let Some(&t) = self.timesteps_i.get(step_index) {
            add_noise_alpha(self.alpha_at(t), original, noise);
        }
    }

    fn name(&self) -> &'static str {
        NAME
    }
}
